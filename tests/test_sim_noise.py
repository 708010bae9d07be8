"""The sim's run-to-run noise: the spread measured on the H200, seeded, reproducible, one generator per server,
off by default; a sim study with it is judged as a GPU study."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from autotune.config import REAL_GPU_NOISE_FLOOR, REAL_GPU_P99_RUN_CV, RunOptions, build_study_config
from autotune.errors import UsageError
from autotune.metrics import BenchResult, Distribution
from autotune.sim.inproc import InProcessSim
from autotune.sim.noise import NOISE_MODELS, noise_rng
from autotune.trial import level_load_config

from tests.test_sim_inproc import settings, spec


def _level(tmp_path: Path, noise: str, name: str = "m", runs: int = 2, seed: int = 0):
    s = dataclasses.replace(settings(), sim_noise=NOISE_MODELS[noise])
    cfg = level_load_config(s, 16)
    requests = s.workload.requests(cfg.warmup_prompts + cfg.num_prompts)
    launch = dataclasses.replace(spec(tmp_path, {}), served_model_name=name, sim_noise=s.sim_noise,
                                 sim_noise_seed=seed)
    with InProcessSim(launch) as engine:
        return [engine.bench(requests, cfg) for _ in range(runs)]


def test_noise_is_off_by_default_and_seeded_per_server(tmp_path):
    exact = _level(tmp_path, "off")
    assert exact[0].output_tok_s == exact[1].output_tok_s and exact[0].ttft_ms == exact[1].ttft_ms
    noisy = _level(tmp_path, "h200")
    assert noisy[0].output_tok_s != noisy[1].output_tok_s  # each run draws its own factors
    again = _level(tmp_path, "h200")
    assert [r.output_tok_s for r in again] == [r.output_tok_s for r in noisy]  # reproducible
    other = _level(tmp_path, "h200", name="another-server")
    assert other[0].output_tok_s != noisy[0].output_tok_s
    # the noise scales a run as a whole: the requests' TTFTs and the summary move by the same factor
    factor = noisy[0].ttft_ms.p99 / exact[0].ttft_ms.p99
    ttfts = np.array([o.ttft_s for o in noisy[0].outputs]) / np.array([o.ttft_s for o in exact[0].outputs])
    assert np.allclose(ttfts, factor)


def test_the_spread_of_many_runs_is_the_measured_one():
    """2,000 runs of one result: the coefficients of variation are the H200's within sampling error."""
    model = NOISE_MODELS["h200"]
    d = Distribution(100.0, 100.0, 100.0, 100.0, 100.0)
    r = BenchResult(100, 0, 10.0, 1000.0, 2000.0, 10.0, d, d, d, d)
    rng = noise_rng(7, "m")
    runs = [model.apply(r, rng) for _ in range(2000)]
    cv = {m: np.std([getattr(x, m + "_ms").p99 for x in runs]) / 100.0 for m in ("ttft", "itl", "tpot", "e2el")}
    for metric, expected in model.latency_cv.items():
        assert math.isclose(cv[metric], expected, rel_tol=0.1), (metric, cv[metric])
    assert math.isclose(np.std([x.output_tok_s for x in runs]) / 1000.0, model.throughput_cv, rel_tol=0.1)
    assert math.isclose(np.mean([x.ttft_ms.p99 for x in runs]), 100.0, rel_tol=0.02)  # mean 1: no bias


def test_a_noisy_sim_study_is_judged_as_a_gpu_study():
    cfg = build_study_config(RunOptions(model="flash", p99_ms=500, engine="sim", sim_noise="h200"))
    assert cfg.noise_floor == REAL_GPU_NOISE_FLOOR and cfg.settings.search.p99_run_cv == REAL_GPU_P99_RUN_CV
    exact = build_study_config(RunOptions(model="flash", p99_ms=500, engine="sim"))
    assert exact.noise_floor == 0.0 and not exact.settings.search.p99_run_cv and exact.settings.sim_noise is None
    # time left before --timeout buys more runs where runs vary, not on the noiseless sim
    assert (cfg.repeats, cfg.max_repeats) == (1, 3) and (exact.repeats, exact.max_repeats) == (1, 1)
    assert build_study_config(RunOptions(model="flash", p99_ms=500, engine="sim", sim_noise="h200", repeats=4,
                                         max_repeats=2)).max_repeats == 4  # never fewer than --repeats
    with pytest.raises(UsageError, match="--sim-noise is for the in-process sim"):
        build_study_config(RunOptions(model="flash", p99_ms=500, engine="sim", sim_noise="h200", sim_server=True))
