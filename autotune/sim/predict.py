"""``predict``: the sim engine's scheduler in pure virtual time, driven by a closed- or open-loop client.

No HTTP and no sleeping: one loop of scheduler steps, per-token times kept in numpy arrays, then the same
:func:`autotune.metrics.summarize` the load generator uses.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from autotune.gpus import GpuSpec
from autotune.metrics import BenchResult, RequestOutput, steady_window, summarize
from autotune.models import ModelSpec
from autotune.sim.engine import setup_engine

__all__ = ["predict"]


def _lengths(rng: np.random.Generator, mean: int, range_ratio: float, n: int) -> np.ndarray:
    """vLLM's random dataset: uniform in [mean·(1−r), mean·(1+r)], at least 1."""
    if range_ratio <= 0:
        return np.full(n, max(1, mean), dtype=np.int64)
    lo, hi = max(1, int(mean * (1 - range_ratio))), max(1, int(mean * (1 + range_ratio)))
    return rng.integers(lo, hi + 1, size=n, dtype=np.int64)


def predict(model: ModelSpec, gpu: GpuSpec, flags: dict[str, Any], input_len: int, output_len: int,
            concurrency: int | None, num_prompts: int, rate: float | None = None, seed: int = 0,
            input_range: float = 0.0, warmup_prompts: int = 0) -> BenchResult:
    """Modelled benchmark of ``num_prompts`` random requests (ignore_eos): closed loop with ``concurrency``
    clients (all starting at t=0), or open loop with Poisson arrivals at ``rate`` req/s (optionally capped by
    ``concurrency``). Raises EngineStartError where vLLM would not start.

    ``warmup_prompts`` more requests are sent first and left out of the figures; a closed loop's throughput is
    then counted over its steady window, as a trial's load level does (`autotune/trial.py`)."""
    num_prompts += warmup_prompts
    setup = setup_engine(model, gpu, flags)
    dp = int(setup.flags["data-parallel-size"] or 1)
    # DP replicas are independent and symmetric: model one with its share of the load, count it dp times.
    n = max(1, math.ceil(num_prompts / dp))
    conc = None if concurrency is None else max(1, math.ceil(concurrency / dp))
    rng = np.random.default_rng(seed)
    in_lens = _lengths(rng, input_len, input_range, n)
    out_lens = _lengths(rng, output_len, input_range, n)
    limit = setup.plan.max_model_len
    too_long = in_lens + out_lens > limit
    if rate is not None and rate > 0:
        arrivals = np.cumsum(rng.exponential(dp / rate, size=n))
        arrivals -= arrivals[0]
    else:
        arrivals = np.zeros(n)
        if conc is None:
            conc = n
    sched = setup.new_scheduler()
    first_t = np.full(n, np.nan)
    last_t = np.full(n, np.nan)
    start_t = np.zeros(n)
    itl_req: list[np.ndarray] = []
    itl_val: list[np.ndarray] = []
    in_flight = 0
    next_req = 0
    t = 0.0
    slot_req = np.full(16, -1, dtype=np.int64)

    def issue(now: float) -> None:
        nonlocal next_req, in_flight, slot_req
        while next_req < n and (conc is None or in_flight < conc) and arrivals[next_req] <= now + 1e-12:
            i = next_req
            next_req += 1
            if too_long[i]:
                continue  # vLLM answers 400; a failed request
            start_t[i] = max(arrivals[i], now) if rate else now
            # a closed-loop client's next request answers the last step's output: it arrives after the next
            # step has started
            slot = sched.add(int(in_lens[i]), int(out_lens[i]), after_step_start=not rate and now > 0)
            if slot >= len(slot_req):
                slot_req = np.concatenate([slot_req, np.full(max(slot + 1, 2 * len(slot_req)) - len(slot_req), -1)])
            slot_req[slot] = i
            in_flight += 1

    issue(0.0)
    while sched.has_work or next_req < n:
        if not sched.has_work:
            t = max(t, float(arrivals[next_req]))
            issue(t)
            continue
        horizon = float(arrivals[next_req]) - t if (rate and next_req < n) else float("inf")
        run = sched.decode_run(1 << 30, horizon) if horizon > 0 else None
        if run is not None:
            reqs = slot_req[run.slots]
            times = t + np.cumsum(run.durations_s)
            k = len(times)
            vals = np.empty((len(reqs), k))
            vals[:, 0] = times[0] - last_t[reqs]
            vals[:, 1:] = run.durations_s[1:]
            itl_req.append(np.repeat(reqs, k))
            itl_val.append(vals.ravel())
            t = float(times[-1])
            last_t[reqs] = t
            in_flight -= len(run.finished)
            issue(t)
            continue
        res = sched.step()
        if res is None:  # cannot schedule anything (should not happen with a feasible plan)
            break
        t += res.duration_s
        reqs = slot_req[res.emitted]
        first = res.first
        if first.any():
            first_t[reqs[first]] = t
        rest = reqs[~first]
        if len(rest):
            itl_req.append(rest)
            itl_val.append(t - last_t[rest])
        last_t[reqs] = t
        if len(res.finished):
            in_flight -= len(res.finished)
        issue(t)
    return _summarize(n, dp, in_lens, out_lens, too_long, start_t, first_t, last_t, itl_req, itl_val,
                      concurrency, rate, math.ceil(warmup_prompts / dp))


def _summarize(n: int, dp: int, in_lens: np.ndarray, out_lens: np.ndarray, too_long: np.ndarray,
               start_t: np.ndarray, first_t: np.ndarray, last_t: np.ndarray, itl_req: list[np.ndarray],
               itl_val: list[np.ndarray], concurrency: int | None, rate: float | None,
               warmup: int = 0) -> BenchResult:
    if itl_req:
        reqs = np.concatenate(itl_req)
        vals = np.concatenate(itl_val)
        order = np.argsort(reqs, kind="stable")
        reqs, vals = reqs[order], vals[order]
        bounds = np.searchsorted(reqs, np.arange(n + 1))
    else:
        vals, bounds = np.zeros(0), np.zeros(n + 1, dtype=np.int64)
    outputs: list[RequestOutput] = []
    for i in range(n):
        if too_long[i]:
            outputs.append(RequestOutput(success=False, prompt_tokens=int(in_lens[i]), error_kind="http_4xx",
                                         error="prompt + max_tokens exceeds max_model_len"))
            continue
        itl = tuple(vals[bounds[i]:bounds[i + 1]].tolist())
        outputs.append(RequestOutput(
            success=True, prompt_tokens=int(in_lens[i]), output_tokens=int(out_lens[i]),
            ttft_s=float(first_t[i] - start_t[i]), itl_s=itl, e2el_s=float(last_t[i] - start_t[i]),
            start_s=float(start_t[i])))
    done = ~too_long
    done[:warmup] = False
    duration = float(np.nanmax(last_t[done]) - start_t[done].min()) if done.any() else 0.0
    extra: dict[str, Any] = {"concurrency": concurrency, "rate": rate, "engine": "sim-predict"}
    measured = outputs[warmup:]
    window = steady_window(measured, duration) if warmup and rate is None else None
    return summarize(measured * dp, duration, extra=extra, window=window, window_outputs=outputs * dp)
