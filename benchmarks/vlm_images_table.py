"""What `benchmarks/gpu/vlm_images.sh` measured, beside what the sim engine predicts for the same points, and the
vision constants those measurements imply (autotune/calibration/<card>.yaml; docs/results/vlm-images.md).

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

from autotune.engines.base import parse_startup_log
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
    runs = sorted(folder.glob("level-c*-img*.json"), key=lambda p: int(re.search(r"img(\d+)", p.name)[1]))
    for path in runs + sorted(folder.glob("skip-profiling-c*-img*.json")):  # the second server's level last
        bench = _bench(path)
        if bench is None:
            continue
        sim = _predict(model, gpu, bench, {"skip-mm-profiling": True} if path.name.startswith("skip") else {})
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


def _engine_ms(bench: dict[str, Any]) -> float | None:
    """Mean milliseconds a run's requests spent in the engine before their first token: vLLM's queue and prefill
    histograms (waiting, then scheduled until the first token; the tower runs in the prefill), from the scrape."""
    sm = bench.get("server_metrics") or {}
    if "server_mean_queue_ms" not in sm or "server_mean_prefill_ms" not in sm:
        return None
    return float(sm["server_mean_queue_ms"]) + float(sm["server_mean_prefill_ms"])


def _fit_line(x: list[float], y: list[float], relative: bool) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line; ``relative``: every point weighted by 1/y, so each one's
    relative error counts alike (the per-image times span 14x)."""
    w = 1.0 / np.asarray(y) if relative else None
    slope, intercept = np.polyfit(np.asarray(x), np.asarray(y), 1, w=w)
    return float(slope), float(intercept)


def singles(folder: Path, model: Any, gpu: Any) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Single-request runs, the split of each request's image time between the API server and the engine, and
    the fits over the one-image runs.

    A request's mean TTFT less its mean time in the engine (:func:`_engine_ms`) is its time before the engine:
    the HTTP body and the API server's preprocessing. Less the text-only request's, per image, it is what
    ``frontend_image_ms`` + ``frontend_image_ms_per_mpx`` model; the engine's extra time less the prefill of the
    images' tokens as the sim models it is the tower's (``vision_compute_efficiency``,
    ``vision_step_overhead_ms``). Two images in one request are left out of the fits: they check that the
    per-image costs add up."""
    base_path = folder / "single-img0.json"
    if not base_path.exists():
        return [], {}
    perf = PerfModel(model, gpu, {})
    base = _bench(base_path)
    if base is None:
        return [], {}
    base_sim = _predict(model, gpu, base, {})
    # the sim with a free tower and free preprocessing: what the images' tokens alone add to the first token
    free_images = replace(gpu, extra={**(gpu.extra or {}), "vision_compute_efficiency": 1e12,
                                      "vision_step_overhead_ms": 0.0, "frontend_image_ms": 0.0,
                                      "frontend_image_ms_per_mpx": 0.0})
    base_engine_ms = _engine_ms(base)
    base_front_ms = base["ttft_ms"]["mean"] - base_engine_ms if base_engine_ms is not None else None
    rows, tower_x, tower_y, front_x, front_y = [], [], [], [], []
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
        prefill_only = _predict(model, free_images, bench, {})
        extra_prefill_ms = prefill_only["ttft_ms"]["p50"] - base_sim["ttft_ms"]["p50"]
        images_ms = bench["ttft_ms"]["p50"] - base["ttft_ms"]["p50"] - extra_prefill_ms
        work = perf.encoder_work(sizes * count)
        modelled_ms = 1e3 * perf.encoder_step_s(work.total_s, work.longest_s)
        row = {"run": path.stem, "images": count, "size": wl["sizes"][0],
               "ttft_p50_ms": bench["ttft_ms"]["p50"], "sim_ttft_p50_ms": sim["ttft_ms"]["p50"],
               "images_ms_implied": images_ms, "tower_ms_modelled": modelled_ms,
               "front_ms_per_image": None, "tower_ms_implied": None}
        engine_ms = _engine_ms(bench)
        if engine_ms is not None and base_front_ms is not None:
            row["front_ms_per_image"] = (bench["ttft_ms"]["mean"] - engine_ms - base_front_ms) / count
            row["tower_ms_implied"] = engine_ms - base_engine_ms - extra_prefill_ms
            if count == 1:
                front_x.append(sizes[0][0] * sizes[0][1] / 1e6)
                front_y.append(row["front_ms_per_image"])
                tower_x.append(model.vision.encoder_flops(*sizes[0]))
                tower_y.append(row["tower_ms_implied"] / 1e3)
        rows.append(row)
    fit: dict[str, float] = {}
    if len(tower_x) >= 2:
        slope, intercept = _fit_line(tower_x, tower_y, relative=False)  # seconds per FLOP, fixed seconds
        if slope > 0:
            fit |= {"vision_compute_efficiency": 1.0 / (slope * gpu.bf16_tflops * 1e12),
                    "vision_step_overhead_ms": 1e3 * intercept}
        slope, intercept = _fit_line(front_x, front_y, relative=True)  # ms per megapixel, fixed ms
        fit |= {"frontend_image_ms": intercept, "frontend_image_ms_per_mpx": slope, "points": len(tower_x)}
    return rows, fit


def startup(folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in sorted(folder.glob("startup-*.txt")):
        info = parse_startup_log(path.read_text())
        out[path.stem.removeprefix("startup-")] = {
            "kv_cache_gib": info.available_kv_gib, "kv_tokens": info.kv_cache_tokens,
            "init_s": info.engine_init_s, "profile_run_s": info.profile_run_s}
    default, skipped = out.get("default", {}), out.get("skip-profiling", {})
    if default.get("kv_cache_gib") is not None and skipped.get("kv_cache_gib") is not None:
        out["vision_profile_gib"] = skipped["kv_cache_gib"] - default["kv_cache_gib"]
    if default.get("profile_run_s") is not None and skipped.get("profile_run_s") is not None:
        # the profiling run's own time: init_s also holds torch.compile, whose cache the second start finds warm
        out["vision_profile_s"] = default["profile_run_s"] - skipped["profile_run_s"]
    return out


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}"


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
    print("| run | images | C | output tok/s (sim) | total tok/s (sim) | prompt tokens | P50 TTFT ms (sim) "
          "| P99 TTFT ms (sim) | P99 ITL ms (sim) |\n|---|---|---|---|---|---|---|---|---|")
    for r in level_rows:
        m, s = r["measured"], r["sim"]
        print(f"| {r['run']} | {r['images']} | {r['concurrency']} | {m['output_tok_s']:,.0f} ({s['output_tok_s']:,.0f}) "
              f"| {m['total_tok_s']:,.0f} ({s['total_tok_s']:,.0f}) | {r['prompt_tokens_mean']:,.0f} "
              f"| {m['ttft_p50_ms']:,.0f} ({s['ttft_p50_ms']:,.0f}) "
              f"| {m['ttft_p99_ms']:,.0f} ({s['ttft_p99_ms']:,.0f}) "
              f"| {m['itl_p99_ms']:,.1f} ({s['itl_p99_ms']:,.1f}) |")
    print("\n| run | images | size | P50 TTFT ms (sim) | images ms implied | API server ms per image "
          "| tower ms implied | tower ms modelled |\n|---|---|---|---|---|---|---|---|")
    for r in single_rows:
        print(f"| {r['run']} | {r['images']} | {r['size']} | {r['ttft_p50_ms']:,.1f} ({r['sim_ttft_p50_ms']:,.1f}) "
              f"| {r['images_ms_implied']:,.1f} | {_num(r['front_ms_per_image'])} | {_num(r['tower_ms_implied'])} "
              f"| {r['tower_ms_modelled']:,.1f} |")
    print(f"\nfit over the one-image runs: {fit or 'needs two sizes or more and the server scrape'}")
    print(f"start-up: {result['startup']}")


if __name__ == "__main__":
    main()
