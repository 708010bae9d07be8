"""benchmarks/sim_vs_h200_levels.py: whether the GPU tells two configurations apart at their knees is autotune's own
verdict on the GPU's runs there, not whether two copies happen to order them alike."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tests.benchmark_scripts import load_benchmark

svl = load_benchmark("sim_vs_h200_levels")
LIMIT_MS = 500.0


def _runs(label: str, speed: float, rng: np.random.Generator, cv: float = 0.02) -> list:
    """A configuration's levels at C = 32..256, P99 TTFT crossing 500 ms near C = 128, throughput ``speed`` x a
    saturating curve, three runs per level, every figure spread by ``cv`` (P99 TTFT by 15%)."""
    out = []
    for c in (32, 64, 96, 128, 160, 256):
        for k in range(3):
            run = svl.Run(dataset="d", workload="w", copy=k % 2, trial=0, source="", concurrency=c, first_request=0,
                          path=Path("x"), flags={}, label=label)
            run.gpu = {"output_tok_s": speed * 6000 * c / (c + 64) * math.exp(rng.normal(0, cv)),
                       "p99_ttft_ms": 500 * (c / 128) ** 2 * math.exp(rng.normal(0, 0.15))}
            out.append(run)
    return out


def _levels(rs: list) -> list[tuple[int, float, float, int]]:
    """(concurrency, mean output tok/s, mean P99 TTFT, runs), as the script's levels."""
    loads = sorted({r.concurrency for r in rs})
    at = {c: [r for r in rs if r.concurrency == c] for c in loads}
    return [(c, float(np.mean([r.gpu["output_tok_s"] for r in at[c]])),
             float(np.mean([r.gpu["p99_ttft_ms"] for r in at[c]])), len(at[c])) for c in loads]


def test_a_configuration_ten_percent_faster_is_told_apart_and_an_equal_one_is_not() -> None:
    rng = np.random.default_rng(3)
    configs = {"base": _runs("base", 1.0, rng), "fast": _runs("fast", 1.10, rng), "same": _runs("same", 1.0, rng)}
    candidates = {label: svl.knee_candidate(rs, _levels(rs), "ttft", 128.0) for label, rs in configs.items()}
    # only the runs within 1.5x of the knee count: 96, 128 and 160, three runs each
    assert all(len(c.at_limit_tok_s({"ttft": LIMIT_MS})) == 9 for c in candidates.values())
    verdicts = svl.verdict_pairs(candidates, "ttft", LIMIT_MS)
    better, gain, _ = verdicts[("base", "fast")]
    assert better == "fast" and gain.significant and 5 < gain.gain_pct < 15
    _, gain, _ = verdicts[("base", "same")]
    assert not gain.significant and gain.gain_pct_low < 0 < gain.gain_pct_high
    rank = {"gpu": ["fast", "base", "same"], "sim_search": ["base", "fast", "same"]}
    sim_tok_s = {"base": 3000.0, "fast": 2950.0, "same": 2900.0}
    pairs = {(p["better"], p["worse"]): p for p in svl.ranked_pairs(rank, verdicts, sim_tok_s)}
    assert pairs[("fast", "base")]["gpu_tells_apart"] and not pairs[("fast", "base")]["sim_agrees"]
    assert pairs[("fast", "same")]["sim_agrees"] and pairs[("fast", "same")]["copies_agree"] is None
    # the sim's 1.7% is its order, but not beyond the noise floor a real study decides with
    assert math.isclose(pairs[("fast", "same")]["sim_gain_pct"], 100 * (2950 / 2900 - 1))
    assert not pairs[("fast", "same")]["sim_agrees_beyond_floor"]


def test_without_runs_near_the_knee_the_nearest_level_judges() -> None:
    rng = np.random.default_rng(4)
    rs = [r for r in _runs("base", 1.0, rng) if r.concurrency in (32, 256)]
    candidate = svl.knee_candidate(rs, _levels(rs), "ttft", 128.0)
    assert {c for c, _ in candidate.earlier_runs} == {256}
