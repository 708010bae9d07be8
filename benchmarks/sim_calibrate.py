"""Fit the sim engine's timing constants to real H100 runs and print the accuracy table.

    python benchmarks/sim_calibrate.py            # accuracy of the constants in calibration/h100.yaml
    python benchmarks/sim_calibrate.py --fit      # refit on the FIT points, print the new constants
    python benchmarks/sim_calibrate.py --constants NAME=VALUE ...   # other calibration/h100.yaml constants

Real figures: vLLM 0.26.0, one H100 80GB, weightless GLM-4-9B shape (`autotune.testing.models.WEIGHTLESS_FLASH_CONFIG`), random
1024 in / 512 out, ignore_eos, closed loop, 4x concurrency prompts, all starting at t=0. Only points marked
"fit" are used for fitting; the others are held out. Add new measurements to REAL as they arrive.

STEADY: the steady-state load levels of the 2026-11-25 H100 study (docs/results/h100-flash.md): random
1024/512 with ±50% lengths, 1 x C warm-up then 1.5 x C measured, throughput over the steady window; P99 TTFT
and P99 TPOT from the levels' per-request records (`benchmarks/sim_vs_h100_levels.py` reads the raw data).

KV: the KV cache size vLLM logged at start-up ("GPU KV cache size: N tokens") for every configuration of the H100
studies, against the memory plan (`autotune.memory.plan_memory`, which the study uses to refuse what would not
fit). Not fitted: printed with the table.
"""
from __future__ import annotations

import argparse
import dataclasses
import math

import numpy as np

from autotune.gpus import load_gpu
from autotune.memory import plan_memory
from autotune.models import spec_from_config
from autotune.sim.predict import predict
from autotune.study import baseline_flags

from autotune.testing.models import WEIGHTLESS_FLASH_CONFIG

from _shared import add_card_constants_option, parse_args_with_constants

# (label, flags, concurrency, role, output tok/s, P99 TTFT ms, P99 ITL ms)
REAL = [
    ("defaults", {}, 128, "fit", 8024.0, 2494.0, 162.0),
    ("defaults", {}, 256, "fit", 9140.0, 7130.0, 225.0),
    ("kv fp8", {"kv-cache-dtype": "fp8"}, 128, "held out", 8304.0, 1777.0, 194.0),
    ("kv fp8", {"kv-cache-dtype": "fp8"}, 256, "held out", 9506.0, 6053.0, 226.0),
]
# (label, flags, concurrency, role, output tok/s, P99 TTFT ms, P99 TPOT ms): the steady-state levels of the
# 2026-11-25 H100 study (docs/results/h100-flash.md, trials 0 and 4)
FP8 = baseline_flags("seed-profile", spec_from_config(WEIGHTLESS_FLASH_CONFIG, "w", "w"), 1)
# The defaults at 128 and 512 are fit points (since the step model's split roofline and async admission);
# the defaults at 64 and 256 and every seed-profile (fp8 KV) level are held out.
STEADY = [  # output tok/s over the steady window counting every request in it (level_records.py "all")
    ("defaults", {}, 64, "held out", 5135.0, 93.0, 13.7),
    ("defaults", {}, 128, "fit", 7794.0, 240.0, 18.8),
    ("defaults", {}, 256, "held out", 9800.0, 445.0, 30.9),
    ("defaults", {}, 512, "fit", 10382.0, 718.0, 59.8),
    ("seed profile (fp8 KV)", FP8, 64, "held out", 5204.0, 98.0, 13.6),
    ("seed profile (fp8 KV)", FP8, 128, "held out", 8068.0, 167.0, 18.1),
    ("seed profile (fp8 KV)", FP8, 256, "held out", 10380.0, 326.0, 29.5),
    ("seed profile (fp8 KV)", FP8, 512, "held out", 11159.0, 476.0, 56.8),
]
_TRIED = {"gpu-memory-utilization": 0.9, "enable-prefix-caching": True, "async-scheduling": True,
          "max-cudagraph-capture-size": 512}
# (label, flags, measured KV tokens on each server that started them), from the studies' server logs
KV = [
    ("defaults", {}, (1409648, 1421040)),
    ("kv fp8, max-num-seqs 1024 (seed profile)", {"kv-cache-dtype": "fp8", "max-num-seqs": 1024}, (2817680, 2840464)),
    ("max-num-seqs 768, kv fp8, capture 512", {**_TRIED, "max-num-seqs": 768, "kv-cache-dtype": "fp8"},
     (2757440, 2734656)),
    ("max-num-seqs 512, batched 16384, kv fp8, capture 512",
     {**_TRIED, "max-num-seqs": 512, "max-num-batched-tokens": 16384, "kv-cache-dtype": "fp8"}, (2712176,)),
    ("max-num-seqs 640, batched 2048, gmu 0.95, capture 512",
     {**_TRIED, "max-num-seqs": 640, "max-num-batched-tokens": 2048, "gpu-memory-utilization": 0.95}, (1474384,)),
    ("max-num-seqs 128, kv fp8, gmu 0.95, capture 512",
     {"max-num-seqs": 128, "kv-cache-dtype": "fp8", "gpu-memory-utilization": 0.95, "max-cudagraph-capture-size": 512},
     (2942224,)),
    ("max-num-seqs 128, batched 16384, kv fp8, gmu 0.85, capture 512",
     {"max-num-seqs": 128, "max-num-batched-tokens": 16384, "kv-cache-dtype": "fp8", "gpu-memory-utilization": 0.85,
      "max-cudagraph-capture-size": 512}, (2504608,)),
    ("max-num-seqs 384, batched 16384, kv fp8, gmu 0.9, capture 512",
     {"max-num-seqs": 384, "max-num-batched-tokens": 16384, "kv-cache-dtype": "fp8", "gpu-memory-utilization": 0.9,
      "max-cudagraph-capture-size": 512}, (2714736,)),
]
FITTED = ("compute_efficiency", "hbm_efficiency", "graph_step_overhead_ms", "eager_step_overhead_ms")


# Physically plausible ranges: GEMM efficiency of an H100 at most ~0.9 of the datasheet peak; a step without
# CUDA graphs costs at most a few ms of launches and input preparation beyond its GPU time.
BOUNDS = [(0.5, 0.9), (0.5, 0.95), (0.3, 5.0), (1.0, 5.0)]


def run(gpu, flags, conc):
    model = spec_from_config(WEIGHTLESS_FLASH_CONFIG, "weightless-flash", "weightless-flash")
    r = predict(model, gpu, flags, 1024, 512, conc, 4 * conc)
    return r.output_tok_s, r.ttft_ms.p99, r.itl_ms.p99


def run_steady(gpu, flags, conc):
    model = spec_from_config(WEIGHTLESS_FLASH_CONFIG, "weightless-flash", "weightless-flash")
    r = predict(model, gpu, flags, 1024, 512, conc, int(1.5 * conc), input_range=0.5, warmup_prompts=conc)
    return r.output_tok_s, r.ttft_ms.p99, r.tpot_ms.p99


def with_constants(gpu, values):
    extra = dict(gpu.extra or {})
    extra.update(dict(zip(FITTED, values)))
    return dataclasses.replace(gpu, extra=extra)


def loss(values, gpu):
    g = with_constants(gpu, values)
    err = 0.0
    for _, flags, conc, role, tok_s, ttft, itl in REAL:
        if role != "fit":
            continue
        p = run(g, flags, conc)
        err += 4 * math.log(p[0] / tok_s) ** 2 + math.log(p[1] / ttft) ** 2 + math.log(p[2] / itl) ** 2
    for _, flags, conc, role, tok_s, ttft, tpot in STEADY:
        if role != "fit":
            continue
        p = run_steady(g, flags, conc)
        err += 4 * math.log(p[0] / tok_s) ** 2 + math.log(p[1] / ttft) ** 2 + math.log(p[2] / tpot) ** 2
    return err


def table(gpu) -> str:
    rows = ["| point | role | metric | measured | predicted | error |", "|---|---|---|---:|---:|---:|"]
    for label, flags, conc, role, *real in REAL:
        pred = run(gpu, flags, conc)
        for name, r, p in zip(("output tok/s", "P99 TTFT ms", "P99 ITL ms"), real, pred):
            rows.append(f"| {label} @ c={conc} | {role} | {name} | {r:,.0f} | {p:,.0f} | {100 * (p - r) / r:+.1f}% |")
    rows += ["", "Steady-state levels of the H100 study:", "",
             "| point | role | metric | measured | predicted | error |", "|---|---|---|---:|---:|---:|"]
    for label, flags, conc, role, *real in STEADY:
        pred = run_steady(gpu, flags, conc)
        for name, r, p in zip(("output tok/s", "P99 TTFT ms", "P99 TPOT ms"), real, pred):
            rows.append(f"| {label} @ c={conc} | {role} | {name} | {r:,.0f} | {p:,.0f} | {100 * (p - r) / r:+.1f}% |")
    return "\n".join(rows)


def kv_table(gpu) -> str:
    model = spec_from_config(WEIGHTLESS_FLASH_CONFIG, "weightless-flash", "weightless-flash")
    rows = ["| flags (besides chunked prefill) | measured KV tokens | planned | error |", "|---|---:|---:|---:|"]
    for label, flags, measured in KV:
        planned = plan_memory(model, gpu, {"enable-chunked-prefill": True, **flags}).kv_cache_tokens
        errors = " / ".join(f"{100 * (planned / m - 1):+.2f}%" for m in measured)
        rows.append(f"| {label} | {' / '.join(f'{m:,}' for m in measured)} | {planned:,} | {errors} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fit", action="store_true")
    ap.add_argument("--max-evals", type=int, default=150, help="loss evaluations of the fit (~1.5 s each)")
    add_card_constants_option(ap, "calibration/h100.yaml constants to override (fitted ones are the fit's start)")
    args, overrides = parse_args_with_constants(ap, card_name="h100")
    gpu = load_gpu("h100")
    gpu = dataclasses.replace(gpu, extra={**(gpu.extra or {}), **overrides})
    if args.fit:
        from scipy.optimize import minimize  # benchmark-only dependency

        x0 = np.array([float((gpu.extra or {}).get(k, v)) for k, v in
                       zip(FITTED, (0.8, 0.8, 1.0, 4.0))])
        res = minimize(loss, np.clip(x0, *zip(*BOUNDS)), args=(gpu,), method="Powell", bounds=BOUNDS,
                       options={"maxiter": 30, "maxfev": args.max_evals, "xtol": 1e-3, "ftol": 1e-5})
        print("loss", res.fun, "evaluations", res.nfev, "start loss", loss(np.clip(x0, *zip(*BOUNDS)), gpu))
        for k, v in zip(FITTED, res.x):
            print(f"{k}: {v:.4g}")
        gpu = with_constants(gpu, res.x)
    print(table(gpu))
    print("\nKV cache capacity:\n")
    print(kv_table(gpu))


if __name__ == "__main__":
    main()
