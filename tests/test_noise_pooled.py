"""benchmarks/noise_pooled.py: the pooled run-to-run spread at a fixed load, and an extended level's one P99 ITL
counted once."""
from __future__ import annotations

import math

import numpy as np

from tests.benchmark_scripts import load_benchmark

npool = load_benchmark("noise_pooled")


def _run(workload: str, config: str, c: int, gpu: dict, sim: dict, trial: int = 0, copy: int = 0) -> dict:
    return {"dataset": "d", "workload": workload, "config": config, "concurrency": c, "trial": trial, "copy": copy,
            "gpu": gpu, "sim": sim}


def test_the_pooled_spread_is_the_gpus_and_what_it_has_beyond_the_streams() -> None:
    """Many points of four runs each, GPU log-figures spread by 5%, the sim's by 3%: the pooled CVs come back
    within sampling error, the residual is sqrt(5^2 - 3^2) = 4%, and the degrees of freedom are runs - points."""
    rng = np.random.default_rng(1)
    runs = []
    for point in range(200):
        base = 1000.0 * (1 + point)  # points of very different size: each is taken around its own mean
        for k in range(4):
            runs.append(_run("w", f"cfg{point}", 8, {"output_tok_s": base * math.exp(rng.normal(0, 0.05))},
                             {"output_tok_s": base * math.exp(rng.normal(0, 0.03))}, trial=k))
    s = npool.spread(runs, "output_tok_s")
    assert s["dof"] == 600
    assert math.isclose(s["gpu"], 0.05, rel_tol=0.1) and math.isclose(s["sim"], 0.03, rel_tol=0.1)
    assert s["gpu_interval"][0] < s["gpu"] < s["gpu_interval"][1]
    assert math.isclose(npool.residual(s), 0.04, rel_tol=0.15)
    assert npool.residual({"gpu": 0.02, "sim": 0.03}) == 0.0


def test_an_extended_levels_pooled_p99_itl_counts_once() -> None:
    """Two runs of one searched level store the same pooled P99 ITL: one value, so the point has no spread to
    pool; a re-measurement (another trial number) adds its own."""
    level = [_run("w", "a", 16, {"p99_itl_ms": 50.0}, {"p99_itl_ms": 40.0 + k}) for k in range(2)]
    assert npool.spread(level, "p99_itl_ms")["dof"] == 0
    again = level + [_run("w", "a", 16, {"p99_itl_ms": 55.0}, {"p99_itl_ms": 44.0}, trial=3)]
    s = npool.spread(again, "p99_itl_ms")
    assert s["dof"] == 1
    assert math.isclose(s["gpu"], abs(math.log(55 / 50)) / math.sqrt(2), rel_tol=1e-9)
