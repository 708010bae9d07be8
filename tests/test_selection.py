"""The verdict: finalists measured alike, gains with their intervals, "equal within noise" as a verdict."""
from __future__ import annotations

import math

from autotune.records import Measurement
from autotune.selection import Candidate, flags_changed, select_winner


LIMIT = {"ttft": 500.0}


def cand(n, values, p99=100.0, baseline="", flags=None, itl=None):
    """A finalist re-measured with ``values`` tok/s, each time at P99 TTFT ``p99`` (and ITL ``itl`` when given)."""
    p99s = {"ttft": p99, **({"itl": itl} if itl is not None else {})}
    c = Candidate(n, flags if flags is not None else {"max-num-seqs": 100 + n}, 64, values[0], p99s, baseline=baseline)
    c.repeats = [Measurement(v, p99s) for v in values]
    return c


def test_a_gain_is_claimed_only_when_its_interval_lies_above_zero():
    tuned = cand(5, [1100, 1110, 1105])
    defaults = cand(0, [1000, 1005, 1002], baseline="vllm-defaults", flags={})
    seed = cand(1, [1090, 1120, 1060], baseline="seed-profile", flags={"kv-cache-dtype": "fp8"})
    sel = select_winner([tuned, defaults, seed], limits_ms=LIMIT, repeats=3)
    g = sel.gains["vllm-defaults"]
    assert sel.winner is tuned and g.significant and 0 < g.gain_pct_low < g.gain_pct < g.gain_pct_high
    assert g.gain_pct == (1105 - 1002.3333333333334) / 1002.3333333333334 * 100
    # Welch's interval with 3 + 3 repeats: t(0.95, ~4 dof) x the standard error of the difference
    assert 0.3 < g.gain_pct_high - g.gain_pct < 1.0
    assert "trial 1 (seed-profile)" in sel.verdict and "equal within noise" in sel.verdict


def test_equal_within_noise_recommends_the_fewest_flags_changed():
    tuned = cand(5, [1030, 990], flags={"max-num-seqs": 512, "kv-cache-dtype": "fp8"})
    defaults = cand(0, [1000, 1010], baseline="vllm-defaults", flags={})
    sel = select_winner([tuned, defaults], limits_ms=LIMIT, repeats=2)
    assert sel.winner is defaults and sorted(sel.equal_within_noise) == [0, 5]
    assert sel.verdict.startswith("equal within noise: trial 5, trial 0 (vllm-defaults); recommended: trial 0")
    assert flags_changed({}) == 0 and flags_changed({"max-num-seqs": 512, "kv-cache-dtype": "fp8"}) == 2
    assert flags_changed({"max-num-seqs": 1024}) == 0  # vLLM's own default, given explicitly


def test_noise_floor_widens_the_interval():
    tuned = cand(5, [1020, 1020])
    defaults = cand(0, [1000, 1000], baseline="vllm-defaults", flags={})
    assert select_winner([tuned, defaults], LIMIT, repeats=2).gains["vllm-defaults"].significant is True
    sel = select_winner([tuned, defaults], LIMIT, repeats=2, noise_floor=0.03)
    assert sel.winner is defaults and "equal within noise" in sel.verdict  # 2% < the 3% floor


def test_a_finalist_never_remeasured_is_named_unconfirmed_and_no_claim_rests_on_it():
    """The H200 case: the defaults stepped down and re-measured four times, the seed profile never re-measured
    (the deadline), its single search figure 36% higher. No "beyond spread" claim may rest on that."""
    defaults = cand(0, [6100, 5900, 6050, 6000], p99=45.0, baseline="vllm-defaults", flags={})
    defaults.stepped_down_from = [91]
    seed = Candidate(1, {"kv-cache-dtype": "fp8", "max-num-seqs": 1024}, 64, 8200.0, {"ttft": 42.0},
                     baseline="seed-profile")
    sel = select_winner([defaults, seed], limits_ms={"ttft": 50.0}, repeats=4)
    assert sel.unconfirmed == [1] and sel.winner is defaults
    assert "seed-profile" not in sel.gains  # no gain is stated against a finalist measured differently
    assert "unconfirmed (cut short, no claim rests on them): trial 1 (seed-profile)" in sel.verdict


def test_nothing_confirmed_gives_the_best_figure_without_a_claim():
    seed = Candidate(1, {"kv-cache-dtype": "fp8"}, 64, 8200.0, {"ttft": 42.0}, baseline="seed-profile")
    sel = select_winner([seed], limits_ms={"ttft": 50.0}, repeats=2)
    assert sel.winner is seed and sel.gains == {} and "no claim" in sel.verdict


def test_baseline_can_win_and_limit_is_rechecked():
    fast_but_slow_p99 = cand(7, [2000, 2000], p99=900)
    defaults = cand(0, [1000, 1000], baseline="vllm-defaults", flags={})
    sel = select_winner([fast_but_slow_p99, defaults], limits_ms=LIMIT, repeats=2)
    assert sel.winner is defaults and "the only configuration that met the limit" in sel.verdict
    slower = cand(8, [900, 905])
    sel = select_winner([slower, defaults], limits_ms=LIMIT, repeats=2)
    assert sel.winner is defaults and "is the best configuration found, beyond noise" in sel.verdict


def test_a_baseline_over_the_limit_gives_an_unbounded_gain():
    tuned = cand(5, [1000, 1010])
    defaults = cand(0, [2000, 2000], p99=900, baseline="vllm-defaults", flags={})
    g = select_winner([tuned, defaults], limits_ms=LIMIT, repeats=2).gains["vllm-defaults"]
    assert g.significant and math.isinf(g.gain_pct) and not g.baseline_meets_limit


def test_nothing_meets():
    sel = select_winner([cand(1, [10], p99=900)], limits_ms=LIMIT, repeats=1)
    assert sel.winner is None


def test_with_several_limits_a_finalist_must_meet_every_one():
    limits = {"ttft": 500.0, "itl": 50.0}
    fast_but_slow_itl = cand(7, [2000, 2000], p99=300, itl=60)
    defaults = cand(0, [1000, 1000], baseline="vllm-defaults", flags={}, itl=40)
    assert fast_but_slow_itl.meets({"ttft": 500.0}) and not fast_but_slow_itl.meets(limits)
    sel = select_winner([fast_but_slow_itl, defaults], limits_ms=limits, repeats=2)
    assert sel.winner is defaults
    sel = select_winner([cand(5, [1500, 1510], itl=45), fast_but_slow_itl], limits, repeats=2)
    assert sel.winner.trial_number == 5
    # the mean over the re-measurements decides: ITL 48 and 54 average 51, over 50
    mixed = cand(3, [1500, 1500], itl=48)
    mixed.repeats[1] = Measurement(1500, {"ttft": 100.0, "itl": 54.0})
    assert mixed.p99_mean_ms("itl") == 51.0 and not mixed.meets(limits)


def test_a_single_finalist_claims_nothing():
    defaults = cand(0, [1000, 1010], baseline="vllm-defaults", flags={})
    sel = select_winner([defaults], LIMIT, repeats=2)
    assert sel.winner is defaults and sel.verdict.endswith("nothing to compare") and "beyond" not in sel.verdict
