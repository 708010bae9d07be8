"""What `benchmarks/gpu/vlm_images.sh` measured, beside what the sim engine predicts for the same points, and the
vision constants those measurements imply (to replace the PROVISIONAL ones in autotune/calibration/<card>.yaml).

    python benchmarks/vlm_images_table.py DIR [--gpu-type h200] [--model flash] [--json]

Tables:
- levels (closed loop at concurrency C): per image count, output and total tok/s, the mean prompt tokens the
  server's usage reported, P50/P99 TTFT and P99 ITL, measured and predicted;
- single requests (concurrency 1): median TTFT per image count and per image size, measured and predicted, and
  the tower time a request's images imply: its TTFT minus the text-only request's, less the prefill of the
  images' tokens as the sim models it (the text model's constants are fitted, the tower's are not);
- the fit: tower seconds = FLOPs / (peak × vision_compute_efficiency) + vision_step_overhead_ms, least squares
  over the single-image sizes;
- start-up: the KV cache memory and init time with and without --skip-mm-profiling (vision_profile_gib and
  vision_profile_s are their differences).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from _shared import load_records
from autotune.gpus import load_gpu
from autotune.loadgen.runner import LoadConfig
from autotune.loadgen.workload import parse_workload
from autotune.models import resolve_model
from autotune.sim.perf import PerfModel
from autotune.sim.predict import predict_workload


def _bench(path: Path) -> dict[str, Any] | None:
    """A run's figures, or None (and its error's last line on stderr) where the run left no JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        err = path.with_suffix(".err")
        last = err.read_text().strip().splitlines()[-1:] if err.exists() else ["no .err file"]
        print(f"{path.stem}: no figures ({last[0] if last else 'empty .err'})", file=sys.stderr)
        return None


def _prompt_tokens_mean(path: Path) -> float:
    rows = [r for r in load_records(path.with_suffix("").with_suffix(".jsonl.gz")) if r["ok"] and not r["warmup"]]
    return float(np.mean([r["prompt_tokens"] for r in rows])) if rows else math.nan


def _predict(model: Any, gpu: Any, bench: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """The sim's figures for the same workload and load as a measured run (same seed, same level shape)."""
    wl = parse_workload(bench["workload"]["spec"], seed=bench["workload"]["seed"])
    c = int(bench["concurrency"])
    cfg = LoadConfig(concurrency=c, num_prompts=int(bench["num_prompts"]), warmup_prompts=int(bench["warmup_prompts"]),
                     ramp_s=float(bench["ramp_s"]), endpoint="chat")  # as `autotune bench` runs it
    return predict_workload(model, gpu, flags, wl, cfg).to_json()


def levels(folder: Path, model: Any, gpu: Any) -> list[dict[str, Any]]:
    out = []
    for path in sorted(folder.glob("level-c*-img*.json"), key=lambda p: int(re.search(r"img(\d+)", p.name)[1])):
        bench = _bench(path)
        if bench is None:
            continue
        sim = _predict(model, gpu, bench, {})
        out.append({"run": path.stem, "images": bench["workload"]["images_max"], "concurrency": bench["concurrency"],
                    "completed": bench["completed"], "failed": bench["failed"],
                    "prompt_tokens_mean": _prompt_tokens_mean(path),
                    "measured": {k: bench[k] for k in ("output_tok_s", "total_tok_s")}
                    | {"ttft_p50_ms": bench["ttft_ms"]["p50"], "ttft_p99_ms": bench["ttft_ms"]["p99"],
                       "itl_p99_ms": bench["itl_ms"]["p99"]},
                    "sim": {k: sim[k] for k in ("output_tok_s", "total_tok_s")}
                    | {"ttft_p50_ms": sim["ttft_ms"]["p50"], "ttft_p99_ms": sim["ttft_ms"]["p99"],
                       "itl_p99_ms": sim["itl_ms"]["p99"]}})
    return out


def singles(folder: Path, model: Any, gpu: Any) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Single-request runs, and the tower fit over the one-image sizes."""
    base_path = folder / "single-img0.json"
    if not base_path.exists():
        return [], {}
    perf = PerfModel(model, gpu, {})
    base = _bench(base_path)
    if base is None:
        return [], {}
    base_sim = _predict(model, gpu, base, {})
    # the sim with a free tower: what the images' tokens alone add to the first token
    free_tower = replace(gpu, extra={**(gpu.extra or {}), "vision_compute_efficiency": 1e12,
                                     "vision_step_overhead_ms": 0.0})
    rows, fit_x, fit_y = [], [], []
    for path in sorted(folder.glob("single-img*.json")):
        if path == base_path:
            continue
        bench = _bench(path)
        if bench is None:
            continue
        wl = bench["workload"]
        sizes = [tuple(int(x) for x in s.split("x")) for s in wl["sizes"]]
        count = wl["images_max"]
        sim = _predict(model, gpu, bench, {})
        prefill_only = _predict(model, free_tower, bench, {})
        extra_prefill_ms = prefill_only["ttft_ms"]["p50"] - base_sim["ttft_ms"]["p50"]
        tower_ms = bench["ttft_ms"]["p50"] - base["ttft_ms"]["p50"] - extra_prefill_ms
        modelled_ms = 1e3 * perf.encoder_step_s(*(lambda w: (w.total_s, w.longest_s))(perf.encoder_work(sizes * count)))
        rows.append({"run": path.stem, "images": count, "size": wl["sizes"][0],
                     "ttft_p50_ms": bench["ttft_ms"]["p50"], "sim_ttft_p50_ms": sim["ttft_ms"]["p50"],
                     "tower_ms_implied": tower_ms, "tower_ms_modelled": modelled_ms})
        if re.fullmatch(r"single-img1-\d+x\d+", path.stem):  # the size sweep: one image each
            fit_x.append(model.vision.encoder_flops(*sizes[0]))
            fit_y.append(tower_ms / 1e3)
    fit: dict[str, float] = {}
    if len(fit_x) >= 2:
        slope, intercept = np.polyfit(np.asarray(fit_x), np.asarray(fit_y), 1)  # seconds per FLOP, fixed seconds
        if slope > 0:
            fit = {"vision_compute_efficiency": float(1.0 / (slope * gpu.bf16_tflops * 1e12)),
                   "vision_step_overhead_ms": float(1e3 * intercept), "points": len(fit_x)}
    return rows, fit


def startup(folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in sorted(folder.glob("startup-*.txt")):
        text = path.read_text()
        kv = re.search(r"Available KV cache memory: ([\d.]+) GiB", text)
        tokens = re.search(r"GPU KV cache size: ([\d,]+) tokens", text)
        init = re.search(r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) seconds", text)
        out[path.stem.removeprefix("startup-")] = {
            "kv_cache_gib": float(kv[1]) if kv else None,
            "kv_tokens": int(tokens[1].replace(",", "")) if tokens else None,
            "init_s": float(init[1]) if init else None}
    default, skipped = out.get("default", {}), out.get("skip-profiling", {})
    if default.get("kv_cache_gib") is not None and skipped.get("kv_cache_gib") is not None:
        out["vision_profile_gib"] = skipped["kv_cache_gib"] - default["kv_cache_gib"]
    if default.get("init_s") is not None and skipped.get("init_s") is not None:
        out["vision_profile_s"] = default["init_s"] - skipped["init_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--gpu-type", default="h200")
    ap.add_argument("--model", default="flash", help="the sim's model (the weightless folder is the flash preset)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    model, gpu = resolve_model(args.model), load_gpu(args.gpu_type)
    level_rows = levels(args.folder, model, gpu)
    single_rows, fit = singles(args.folder, model, gpu)
    result = {"levels": level_rows, "singles": single_rows, "fit": fit, "startup": startup(args.folder)}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print("| images | C | output tok/s (sim) | total tok/s (sim) | prompt tokens | P50 TTFT ms (sim) "
          "| P99 TTFT ms (sim) | P99 ITL ms (sim) |\n|---|---|---|---|---|---|---|---|")
    for r in level_rows:
        m, s = r["measured"], r["sim"]
        print(f"| {r['images']} | {r['concurrency']} | {m['output_tok_s']:,.0f} ({s['output_tok_s']:,.0f}) "
              f"| {m['total_tok_s']:,.0f} ({s['total_tok_s']:,.0f}) | {r['prompt_tokens_mean']:,.0f} "
              f"| {m['ttft_p50_ms']:,.0f} ({s['ttft_p50_ms']:,.0f}) "
              f"| {m['ttft_p99_ms']:,.0f} ({s['ttft_p99_ms']:,.0f}) "
              f"| {m['itl_p99_ms']:,.1f} ({s['itl_p99_ms']:,.1f}) |")
    print("\n| run | images | size | P50 TTFT ms (sim) | tower ms implied | tower ms modelled |\n"
          "|---|---|---|---|---|---|")
    for r in single_rows:
        print(f"| {r['run']} | {r['images']} | {r['size']} | {r['ttft_p50_ms']:,.1f} ({r['sim_ttft_p50_ms']:,.1f}) "
              f"| {r['tower_ms_implied']:,.1f} | {r['tower_ms_modelled']:,.1f} |")
    print(f"\nfit over the one-image sizes: {fit or 'needs two sizes or more'}")
    print(f"start-up: {result['startup']}")


if __name__ == "__main__":
    main()
