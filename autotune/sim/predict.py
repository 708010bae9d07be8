"""``predict``: a modelled benchmark -- the sim engine in-process on a virtual clock (:mod:`autotune.sim.inproc`).

The same request stream (:func:`autotune.loadgen.workload.parse_workload`), the same load generator and the
same engine as a study's trial and as the served sim, so a prediction is what they would measure; no HTTP and
no waiting.
"""
from __future__ import annotations

from typing import Any

from autotune.gpus import GpuSpec
from autotune.loadgen.runner import LoadConfig
from autotune.loadgen.workload import Workload, parse_workload
from autotune.metrics import BenchResult
from autotune.models import ModelSpec
from autotune.sim.engine import setup_engine
from autotune.sim.inproc import bench_in_process

__all__ = ["predict", "predict_workload"]


def predict_workload(model: ModelSpec, gpu: GpuSpec, flags: dict[str, Any], workload: Workload,
                     cfg: LoadConfig) -> BenchResult:
    """Modelled benchmark of ``workload`` under ``cfg`` (modelled seconds). Raises EngineStartError where vLLM
    would not start."""
    setup = setup_engine(model, gpu, flags)
    result = bench_in_process(setup, workload.requests(cfg.warmup_prompts + cfg.num_prompts), cfg)
    result.extra["workload"] = workload.describe()
    return result


def predict(model: ModelSpec, gpu: GpuSpec, flags: dict[str, Any], input_len: int, output_len: int,
            concurrency: int | None, num_prompts: int, rate: float | None = None, seed: int = 0,
            input_range: float = 0.0, warmup_prompts: int = 0) -> BenchResult:
    """Modelled benchmark of ``num_prompts`` requests of workload ``random:IN:OUT[:RANGE]`` (ignore_eos): closed
    loop with ``concurrency`` clients (all starting at t=0), or open loop with Poisson arrivals at ``rate`` req/s
    (optionally capped by ``concurrency``). Raises EngineStartError where vLLM would not start.

    ``warmup_prompts`` more requests are sent first and left out of the figures; a closed loop's throughput is
    then counted over its steady window, as a trial's load level does (`autotune/trial.py`)."""
    spec = f"random:{input_len}:{output_len}" + (f":{input_range!r}" if input_range else "")
    if concurrency is None and rate is None:
        concurrency = num_prompts + warmup_prompts  # everyone at once
    cfg = LoadConfig(concurrency=concurrency, rate=rate, num_prompts=num_prompts, warmup_prompts=warmup_prompts,
                     steady_state=warmup_prompts > 0, seed=seed)
    return predict_workload(model, gpu, flags, parse_workload(spec, seed=seed), cfg)
