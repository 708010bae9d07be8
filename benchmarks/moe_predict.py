"""Sim-engine predictions for GLM-4.6V (106B MoE) on 4× H100: memory plan and SLO-bounded throughput.

SIM PREDICTIONS, NOT MEASUREMENTS. For each parallel layout (TP4, TP4+EP, TP2×DP2 ± EP with bf16 or fp8
weights, DP4) and KV dtype (auto = bf16, fp8) this prints the memory plan (fits?, weights GiB per GPU,
KV cache tokens per engine) and runs the load search (``autotune.loadsearch.search_load``) with the sim
engine's virtual-time ``predict`` as the measure: random 1024/512 tokens, num_prompts = 3 × concurrency,
P99 TTFT ≤ each limit. Also the seed write-up's recipe (TP4 + EP + fp8 KV + chunked prefill +
max-num-seqs 1024) as the reference and the predicted gain of the best point over it.

    python benchmarks/moe_predict.py [--model glm-4.6v|MODEL_DIR] [--limits 2000,500] [--json OUT.json]

``--model glm-4.6v`` (default) is the preset: it counts the vision tower's weights (~1.2 B parameters).
A folder from ``benchmarks/gpu/mkmodel_glm46v.py`` is the text backbone only (what ``--load-format dummy``
would load on a GPU).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

from autotune.errors import EngineStartError
from autotune.flags import effective_flags
from autotune.gpus import load_gpu
from autotune.loadsearch import LoadSearchConfig, search_load
from autotune.memory import plan_memory
from autotune.models import resolve_model
from autotune.sim.engine import engine_failure_under_load
from autotune.sim.predict import predict

INPUT_LEN, OUTPUT_LEN = 1024, 512
SEED_RECIPE = {"tensor-parallel-size": 4, "enable-expert-parallel": True, "kv-cache-dtype": "fp8",
               "enable-chunked-prefill": True, "max-num-seqs": 1024}

# (label, flags); kv-cache-dtype is added per row. Other flags stay at vLLM's defaults.
LAYOUTS: list[tuple[str, dict[str, Any]]] = [
    ("TP4 bf16", {"tensor-parallel-size": 4}),
    ("TP4+EP bf16", {"tensor-parallel-size": 4, "enable-expert-parallel": True}),
    ("TP2xDP2 bf16", {"tensor-parallel-size": 2, "data-parallel-size": 2}),
    ("TP2xDP2+EP bf16", {"tensor-parallel-size": 2, "data-parallel-size": 2, "enable-expert-parallel": True}),
    ("TP2xDP2 fp8w", {"tensor-parallel-size": 2, "data-parallel-size": 2, "quantization": "fp8"}),
    ("TP2xDP2+EP fp8w", {"tensor-parallel-size": 2, "data-parallel-size": 2, "enable-expert-parallel": True,
                         "quantization": "fp8"}),
    ("DP4 bf16", {"tensor-parallel-size": 1, "data-parallel-size": 4}),
    ("DP4 bf16 len4k", {"tensor-parallel-size": 1, "data-parallel-size": 4, "max-model-len": 4096}),
    ("DP4 fp8w", {"tensor-parallel-size": 1, "data-parallel-size": 4, "quantization": "fp8"}),
    ("TP4 fp8w", {"tensor-parallel-size": 4, "quantization": "fp8"}),
]
# A few batch-knob variants around the layouts, to find a "best point" beyond vLLM's defaults.
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("", {}),
    (" mbt16k", {"max-num-batched-tokens": 16384}),  # max-num-seqs is already 1024 (vLLM's H100 default)
]


def _measure(model, gpu, flags):
    def measure(c: int):
        return predict(model, gpu, flags, INPUT_LEN, OUTPUT_LEN, c, 3 * c)
    return measure


def evaluate(model, gpu, flags: dict[str, Any], limits: list[float]) -> dict[str, Any]:
    f = effective_flags(flags)
    dp = int(f["data-parallel-size"] or 1)
    plan = plan_memory(model, gpu, f)
    row: dict[str, Any] = {"flags": flags, "fits": plan.fits, "failure": plan.failure_class,
                           "reason": plan.reason, "weights_gib_per_gpu": round(plan.weights_gib_per_gpu, 2),
                           "kv_cache_gib_per_gpu": round(plan.kv_cache_gib_per_gpu, 2),
                           "kv_tokens_per_engine": plan.kv_cache_tokens, "engines": dp, "search": {}}
    if not plan.fits:
        return row
    ceiling = min(4096, int(f["max-num-seqs"]) * dp)
    for limit in limits:
        cfg = LoadSearchConfig(limits_ms={"ttft": limit}, start_concurrency=8, max_concurrency=ceiling,
                               max_levels=12)
        try:
            res = search_load(_measure(model, gpu, flags), cfg)
        except EngineStartError as exc:  # pragma: no cover - plan said it fits
            row["search"][str(int(limit))] = {"error": str(exc)}
            continue
        best = res.best
        row["search"][str(int(limit))] = {
            "output_tok_s": best.result.output_tok_s if best else math.nan,
            "total_tok_s": best.result.total_tok_s if best else math.nan,
            "concurrency": best.concurrency if best else None,
            "p99_ttft_ms": best.p99_ms["ttft"] if best else math.nan,
            "p99_tpot_ms": best.result.tpot_ms.p99 if best else math.nan,
            "stop": res.stop_reason, "levels": len(res.levels),
        }
        if best is None and res.stop_reason == "requests_failed" and engine_failure_under_load(model, f):
            row["search"][str(int(limit))]["dies_under_load"] = engine_failure_under_load(model, f)
    return row


def _fmt(x: Any, nd: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:,.{nd}f}" if isinstance(x, (int, float)) else str(x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="glm-4.6v")
    ap.add_argument("--gpu-type", default="h100")
    ap.add_argument("--limits", default="2000,500", help="P99 TTFT limits in ms, comma separated")
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args(argv)
    model, gpu = resolve_model(args.model), load_gpu(args.gpu_type)
    limits = [float(x) for x in args.limits.split(",")]
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for label, base in LAYOUTS:
        for vlabel, var in VARIANTS:
            for kv in ("auto", "fp8"):
                row = evaluate(model, gpu, {**base, **var, "kv-cache-dtype": kv}, limits)
                row["label"] = f"{label}{vlabel} kv={kv}"
                rows.append(row)
    ref = evaluate(model, gpu, dict(SEED_RECIPE), limits)
    ref["label"] = "seed recipe: TP4+EP kv=fp8 chunked mns1024"
    wall = time.perf_counter() - t0

    keys = [str(int(x)) for x in limits]
    head = "| config | fits | weights GiB/GPU | KV tokens/engine | " + " | ".join(
        f"≤{k} ms: out tok/s @ conc (P99 TTFT ms)" for k in keys) + " |"
    print(f"SIM PREDICTIONS, NOT MEASUREMENTS — model {args.model} ({model.architecture}, "
          f"{model.total_params / 1e9:.1f} B params), 4× {gpu.name}, random {INPUT_LEN}/{OUTPUT_LEN}")
    print(head)
    print("|" + "---|" * (4 + len(keys)))
    for row in rows + [ref]:
        cells = [row["label"], "yes" if row["fits"] else f"no ({row['failure']})",
                 _fmt(row["weights_gib_per_gpu"], 1), _fmt(row["kv_tokens_per_engine"])]
        for k in keys:
            s = row["search"].get(k)
            if s and s.get("dies_under_load"):
                cells.append("dies under load (vLLM 0.26.0: DP with fp8 weights)")
                continue
            cells.append("—" if not s else f"{_fmt(s['output_tok_s'])} @ {_fmt(s['concurrency'])} "
                                           f"({_fmt(s['p99_ttft_ms'])})")
        print("| " + " | ".join(cells) + " |")
    summary: dict[str, Any] = {}
    for k in keys:
        ref_tput = ref["search"].get(k, {}).get("output_tok_s", math.nan)
        # fp8 weights are outside the search space (and change the model's numerics): report both bests.
        for scope, pick in (("any", lambda r: True), ("bf16 weights", lambda r: not r["flags"].get("quantization"))):
            feasible = [r for r in rows if pick(r) and r["search"].get(k)
                        and not math.isnan(r["search"][k]["output_tok_s"])]
            best = max(feasible, key=lambda r: r["search"][k]["output_tok_s"]) if feasible else None
            if not best:
                continue
            gain = best["search"][k]["output_tok_s"] / ref_tput - 1 if ref_tput and not math.isnan(ref_tput) else math.nan
            summary[f"{k} {scope}"] = {"best": best["label"], "best_output_tok_s": best["search"][k]["output_tok_s"],
                                       "seed_output_tok_s": ref_tput, "gain": gain}
            print(f"P99 TTFT ≤ {k} ms, best ({scope}): {best['label']}: "
                  f"{best['search'][k]['output_tok_s']:,.0f} out tok/s; seed recipe {_fmt(ref_tput)}; "
                  f"predicted gain {gain * 100:+.1f}%")
    print(f"({len(rows) + 1} configurations in {wall:.1f} s)")
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump({"model": args.model, "gpu": gpu.name, "workload": f"random:{INPUT_LEN}:{OUTPUT_LEN}",
                       "limits_ms": limits, "rows": rows, "seed_recipe": ref, "summary": summary,
                       "wall_s": wall}, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
