from __future__ import annotations

from autotune.records import Measurement
from autotune.selection import Candidate, select_winner


def cand(n, values, p99=100.0, baseline=""):
    c = Candidate(n, {"max-num-seqs": n}, 64, values[0], p99, baseline=baseline)
    c.repeats = [Measurement(v, p99) for v in values]
    return c


def test_gain_only_significant_beyond_spread():
    tuned = cand(5, [1100, 1110])
    defaults = cand(0, [1000, 1005], baseline="vllm-defaults")
    seed = cand(1, [1090, 1120], baseline="seed-profile")
    sel = select_winner([tuned, defaults, seed], limit_ms=500)
    assert sel.winner is tuned
    assert sel.gains["vllm-defaults"].significant is True
    assert sel.gains["seed-profile"].significant is False
    assert "not better than seed-profile" in sel.verdict


def test_noise_floor_widens_spread():
    tuned = cand(5, [1020, 1020])
    defaults = cand(0, [1000, 1000], baseline="vllm-defaults")
    assert select_winner([tuned, defaults], 500).gains["vllm-defaults"].significant is True
    assert select_winner([tuned, defaults], 500, noise_floor=0.03).gains["vllm-defaults"].significant is False


def test_baseline_can_win_and_limit_is_rechecked():
    fast_but_slow_p99 = cand(7, [2000, 2000], p99=900)
    defaults = cand(0, [1000, 1000], baseline="vllm-defaults")
    sel = select_winner([fast_but_slow_p99, defaults], limit_ms=500)
    assert sel.winner is defaults
    assert "already the best" in sel.verdict


def test_nothing_meets():
    sel = select_winner([cand(1, [10], p99=900)], limit_ms=500)
    assert sel.winner is None
