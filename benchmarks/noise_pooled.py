"""How much the H200's figures move between runs of one load, pooled over every point the reproducibility pairs
measured more than once, against the sim's own spread over the same request streams and the sim with its noise
model (issue #21).

At each point (workload, configuration, concurrency) measured 2-6 times (runs of one trial's level, re-measurements
on fresh servers, the pair's two studies) the spread is the standard deviation of the log figure around the point's
mean; pooled over the points with their degrees of freedom (sum of squares over sum of runs - 1), it is a
coefficient of variation with a chi-square interval. The sim replays the same requests, so its pooled spread is
what the request streams alone give; what the GPU has beyond it, sqrt(gpu^2 - sim^2), is what a noise model should
add. Judged held out: that residual from two workloads, added to the third's own stream spread, against the
third's GPU spread and its 90% interval; beside it the shipped model (`autotune/sim/noise.py`). And judged on
fresh measurements that no fit saw: folders of `benchmarks/gpu/noise_repeats.sh` (fresh vLLM servers with its
defaults, fresh prompts every run), each run replayed in the sim with the same requests and load shape.

    python benchmarks/sim_vs_h200_levels.py --json > levels.json     # ~1 min
    python benchmarks/noise_pooled.py levels.json [--held-out DIR ...] [--json]

P99 ITL: a searched level that the search extended stores one P99 ITL pooled over its runs; such a level counts
once (its runs would otherwise show no spread).
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from _shared import (add_card_constants_option, level_records, load_records,
                     parse_args_with_constants, replay_bench_level)
from scipy import stats
from sim_vs_h200_levels import figures

from autotune.sim.args import parse_serve_args
from autotune.sim.noise import NOISE_MODELS

METRICS = {"output_tok_s": "throughput", "p99_ttft_ms": "ttft", "p99_tpot_ms": "tpot", "p99_itl_ms": "itl",
           "p99_e2el_ms": "e2el"}
CONFIDENCE = 0.90


def model_cv(metric: str, model: str = "h200") -> float:
    noise = NOISE_MODELS[model]
    kind = METRICS[metric]
    return noise.throughput_cv if kind == "throughput" else noise.latency_cv[kind]


def point_values(runs: list[dict[str, Any]], metric: str) -> list[dict[str, list[float]]]:
    """Per point, the GPU's and the sim's values of ``metric`` over the runs that have it on both sides."""
    points: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: {"gpu": [], "sim": []})
    seen = set()
    for r in runs:
        gpu, sim = r["gpu"].get(metric), r["sim"].get(metric)
        if not (gpu and sim and math.isfinite(gpu) and math.isfinite(sim)):
            continue
        if metric == "p99_itl_ms":
            level = (r["dataset"], r["copy"], r["trial"], r["concurrency"], gpu)
            if level in seen:  # the same pooled value again: one extended level
                continue
            seen.add(level)
        p = points[(r["workload"], r["config"], r["concurrency"])]
        p["gpu"].append(gpu)
        p["sim"].append(sim)
    return list(points.values())


def pooled(groups: list[list[float]]) -> tuple[float, int]:
    """(sum of squared log deviations from each group's mean, degrees of freedom) over groups of two or more."""
    ss, dof = 0.0, 0
    for values in groups:
        if len(values) > 1:
            logs = np.log(values)
            ss += float(((logs - logs.mean()) ** 2).sum())
            dof += len(logs) - 1
    return ss, dof


def cv_interval(ss: float, dof: int) -> list[float]:
    """The CONFIDENCE chi-square interval of a pooled CV whose sum of squared log deviations is ``ss``."""
    tail = (1 - CONFIDENCE) / 2
    return [math.sqrt(ss / stats.chi2.ppf(1 - tail, dof)), math.sqrt(ss / stats.chi2.ppf(tail, dof))]


def log_ratio_interval(a: Any, b: Any) -> tuple[float, tuple[float, float]]:
    """The ratio of ``a``'s geometric mean to ``b``'s (positive figures, two or more each) and Welch's CONFIDENCE
    interval on the logs; a zero-width interval where neither side spreads (Welch's t has none)."""
    log_a, log_b = np.log(a), np.log(b)
    diff = float(log_a.mean() - log_b.mean())
    if np.ptp(log_a) == np.ptp(log_b) == 0:
        return math.exp(diff), (math.exp(diff), math.exp(diff))
    lo, hi = stats.ttest_ind(log_a, log_b, equal_var=False).confidence_interval(CONFIDENCE)
    return math.exp(diff), (math.exp(lo), math.exp(hi))


def difference_interval(a: Any, b: Any) -> tuple[float, tuple[float, float]]:
    """``a``'s mean less ``b``'s (two or more values each) and Welch's CONFIDENCE interval on it; a zero-width one
    where neither side spreads."""
    diff = float(np.mean(a) - np.mean(b))
    if np.ptp(a) == np.ptp(b) == 0:
        return diff, (diff, diff)
    lo, hi = stats.ttest_ind(a, b, equal_var=False).confidence_interval(CONFIDENCE)
    return diff, (float(lo), float(hi))


def spread(runs: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The GPU's and the sim's pooled CV of ``metric`` (fractions), the GPU's interval, and the degrees of freedom."""
    points = point_values(runs, metric)
    g_ss, dof = pooled([p["gpu"] for p in points])
    s_ss, _ = pooled([p["sim"] for p in points])
    if not dof:
        return {"dof": 0}
    return {"dof": dof, "gpu": math.sqrt(g_ss / dof), "sim": math.sqrt(s_ss / dof), "gpu_interval": cv_interval(g_ss, dof)}


def residual(s: dict[str, Any]) -> float:
    """What the GPU spreads beyond the request streams (0 where the sim's own spread is as large)."""
    return math.sqrt(max(s["gpu"] ** 2 - s["sim"] ** 2, 0.0))


def served_flags(folder: Path) -> tuple[str, dict[str, Any]]:
    """The vLLM flags a `noise_repeats.sh` folder's servers ran with (its settings.txt's FLAGS, parsed as `vllm
    serve` parses them): a name for the configuration and the flags."""
    settings = folder / "settings.txt"
    lines = settings.read_text().splitlines() if settings.exists() else []
    argv = shlex.split(next((line.split("=", 1)[1] for line in lines if line.startswith("flags=")), ""))
    return " ".join(argv) or "vLLM defaults", parse_serve_args(["model", *argv]).flags


def replayed_runs(folder: Path, constants: dict[str, float] | None = None,
                  keep: Callable[[list[dict]], bool] = lambda rows: True) -> Iterator[dict[str, Any]]:
    """The runs of a `noise_repeats.sh` folder whose records ``keep`` accepts, each replayed in the sim under the
    servers' flags (and the h200 card's ``constants`` overridden): the configuration's name, the run's path, its
    `autotune bench --json`, its records and the sim's, and the sim's result."""
    config, flags = served_flags(folder)
    for path in sorted(folder.glob("s*-c*-*.json")):
        try:
            gpu = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue  # the run failed: its .err says why
        records = path.with_suffix(".jsonl.gz")
        rows = level_records(records) or []
        if not keep(rows):
            continue
        with tempfile.TemporaryDirectory(prefix="noise-") as tmp:
            result = replay_bench_level(flags, gpu, constants or {}, Path(tmp) / "sim.jsonl.gz")
            sim_rows = load_records(Path(tmp) / "sim.jsonl.gz")
        yield {"config": config, "path": path, "gpu": gpu, "rows": rows, "sim_rows": sim_rows, "sim": result}


def fresh_runs(folder: Path, constants: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """The runs of a `noise_repeats.sh` folder with their replays (`replayed_runs`): a run of the levels' format (one
    point per workload, configuration and concurrency; each server is a copy)."""
    return [{"dataset": folder.name, "workload": r["gpu"]["workload"]["spec"], "copy": r["path"].stem.split("-")[0],
             "trial": 0, "config": r["config"], "concurrency": int(r["gpu"]["concurrency"]), "source": r["path"].name,
             "gpu": {**figures(r["rows"]), "p99_itl_ms": r["gpu"]["itl_ms"]["p99"]},
             "sim": {**figures(r["sim_rows"]), "p99_itl_ms": r["sim"].itl_ms.p99}}
            for r in replayed_runs(folder, constants)]


def judge_fresh(runs: list[dict[str, Any]], residuals: dict[str, float]) -> dict[str, Any]:
    """Per metric, the GPU's pooled spread over ``runs`` with its interval, the sim's over the same requests, and the
    sim with the shipped model and with ``residuals`` (the studies' spread beyond the streams) on top."""
    out = {}
    for m in METRICS:
        s = spread(runs, m)
        if not s["dof"]:
            continue
        lo, hi = s["gpu_interval"]
        s["with_model"] = math.hypot(s["sim"], model_cv(m))
        s["with_residual"] = math.hypot(s["sim"], residuals[m])
        s["model_inside"], s["residual_inside"] = lo <= s["with_model"] <= hi, lo <= s["with_residual"] <= hi
        out[m] = s
    return out


def accuracy(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per metric, the GPU's mean and range over ``runs`` and the sim's mean over the same requests (no noise)."""
    out = {}
    for m in METRICS:
        pairs = [(r["gpu"][m], r["sim"][m]) for r in runs if r["gpu"].get(m) and r["sim"].get(m)]
        if pairs:
            gpu, sim = (np.array(side) for side in zip(*pairs))
            out[m] = {"gpu_mean": float(gpu.mean()), "gpu_min": float(gpu.min()), "gpu_max": float(gpu.max()),
                      "sim_mean": float(sim.mean()), "error": float(sim.mean() / gpu.mean() - 1)}
    return out


def compare_configs(fresh: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """At each fresh (workload, concurrency) run with vLLM's defaults and another configuration: per metric, the
    GPU's ratio of the other's geometric mean to the defaults' with Welch's 90% interval on the logs (two runs per
    server; a fresh server adds little to one server's spread), the sim's ratio over the same requests, and whether
    the sim orders them as the GPU does where the GPU's interval excludes 1."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for w, c in sorted({(r["workload"], r["concurrency"]) for r in fresh}):
        here = [r for r in fresh if (r["workload"], r["concurrency"]) == (w, c)]
        base = [r for r in here if r["config"] == "vLLM defaults"]
        for config in sorted({r["config"] for r in here} - {"vLLM defaults"}):
            other = [r for r in here if r["config"] == config]
            cells = {}
            for m in METRICS:
                values = {side: [[r[side][m] for r in group if r[side].get(m)] for group in (other, base)]
                          for side in ("gpu", "sim")}
                if min(len(g) for g in values["gpu"]) < 2:
                    continue
                gpu, (lo, hi) = log_ratio_interval(*values["gpu"])
                sim = float(np.exp(np.mean(np.log(values["sim"][0])) - np.mean(np.log(values["sim"][1]))))
                apart = not lo <= 1 <= hi
                cells[m] = {"gpu": gpu, "gpu_interval": [lo, hi], "sim": sim,
                            "gpu_tells_apart": apart, "same_order": (sim > 1) == (gpu > 1) if apart else None}
            out[f"{w} C={c}, {config} / vLLM defaults"] = cells
    return out


def report(runs: list[dict[str, Any]], fresh: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    workloads = sorted({r["workload"] for r in runs})
    out: dict[str, Any] = {"pooled": {}, "held_out": {}, "fresh": {}, "fresh_within_server": {}, "all_gpu_repeats": {},
                           "fresh_accuracy": {}, "fresh_configs": {}}
    for name, subset in [("all", runs)] + [(w, [r for r in runs if r["workload"] == w]) for w in workloads]:
        out["pooled"][name] = {}
        for m in METRICS:
            s = spread(subset, m)
            if s["dof"]:
                s["residual"] = residual(s)
                s["with_model"] = math.hypot(s["sim"], model_cv(m))
            out["pooled"][name][m] = s
    for held in workloads:
        out["held_out"][held] = {}
        for m in METRICS:
            fit = spread([r for r in runs if r["workload"] != held], m)
            judged = out["pooled"][held][m]
            if not (fit["dof"] and judged["dof"]):
                continue
            lo, hi = judged["gpu_interval"]
            with_residual = math.hypot(judged["sim"], residual(fit))
            out["held_out"][held][m] = {
                "gpu": judged["gpu"], "gpu_interval": [lo, hi], "dof": judged["dof"],
                "residual_from_the_others": residual(fit), "sim_with_that_residual": with_residual,
                "residual_inside": lo <= with_residual <= hi,
                "sim_with_model": judged["with_model"], "model_inside": lo <= judged["with_model"] <= hi}
    if fresh:
        residuals = {m: s["residual"] for m, s in out["pooled"]["all"].items() if s["dof"]}
        by_point: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in sorted(fresh, key=lambda r: (r["workload"], r["config"], r["concurrency"])):
            by_point[f"{r['workload']} C={r['concurrency']}, {r['config']}"].append(r)
        out["fresh"]["all"] = judge_fresh(fresh, residuals)
        for name, point in by_point.items():
            out["fresh"][name] = judge_fresh(point, residuals)
        out["fresh_accuracy"] = {name: accuracy(point) for name, point in by_point.items()}
        out["fresh_configs"] = compare_configs(fresh)
        # each fresh server as a point of its own: what one server's runs spread, the rest is between servers
        per_server = [{**r, "config": f"{r['config']} {r['dataset']}/{r['copy']}"} for r in fresh]
        out["fresh_within_server"] = {m: spread(per_server, m) for m in METRICS}
        # the figure a verdict on real GPUs widens a P99 by (REAL_GPU_P99_RUN_CV): every repeat the GPU has run
        out["all_gpu_repeats"] = {m: spread(runs + fresh, m) for m in METRICS}
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def print_report(out: dict[str, Any]) -> None:
    model = ", ".join(f"{METRICS[m]} {_pct(model_cv(m))}" for m in METRICS)
    print(f"Pooled run-to-run CV at a fixed load (90% interval of the GPU's); shipped model h200: {model}")
    print("| workload | metric | dof | GPU | sim (streams) | GPU beyond the streams | sim + model |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, by_metric in out["pooled"].items():
        for m, s in by_metric.items():
            if s["dof"]:
                lo, hi = s["gpu_interval"]
                print(f"| {name} | {METRICS[m]} | {s['dof']} | {_pct(s['gpu'])} [{_pct(lo)}, {_pct(hi)}] | "
                      f"{_pct(s['sim'])} | {_pct(s['residual'])} | {_pct(s['with_model'])} |")
    print("\nHeld out: the residual from the other two workloads added to this one's stream spread")
    print("| workload | metric | GPU [90%] | sim + residual of the others | sim + model |")
    print("|---|---|---:|---:|---:|")
    inside = {"residual": 0, "model": 0}
    cells = 0
    for held, by_metric in out["held_out"].items():
        for m, h in by_metric.items():
            lo, hi = h["gpu_interval"]
            cells += 1
            inside["residual"] += h["residual_inside"]
            inside["model"] += h["model_inside"]
            mark = {True: "", False: " (outside)"}
            print(f"| {held} | {METRICS[m]} | {_pct(h['gpu'])} [{_pct(lo)}, {_pct(hi)}] | "
                  f"{_pct(h['sim_with_that_residual'])}{mark[h['residual_inside']]} | "
                  f"{_pct(h['sim_with_model'])}{mark[h['model_inside']]} |")
    print(f"\ninside the GPU's 90% interval: residual of the others {inside['residual']} of {cells}, "
          f"shipped model {inside['model']} of {cells}")
    if not out["fresh"]:
        return
    print("\nFresh servers and prompts (--held-out), against the sim on the same requests; the residual: the studies'"
          " spread beyond the streams, pooled (the first table's 'all')")
    print("| point | metric | dof | GPU [90%] | sim (streams) | sim + model | sim + residual |")
    print("|---|---|---:|---:|---:|---:|---:|")
    counts = {"model": 0, "residual": 0, "cells": 0}
    mark = {True: "", False: " (outside)"}
    for name, by_metric in out["fresh"].items():
        for m, s in by_metric.items():
            lo, hi = s["gpu_interval"]
            if name != "all":
                counts["cells"] += 1
                counts["model"] += s["model_inside"]
                counts["residual"] += s["residual_inside"]
            print(f"| {name} | {METRICS[m]} | {s['dof']} | {_pct(s['gpu'])} [{_pct(lo)}, {_pct(hi)}] | "
                  f"{_pct(s['sim'])} | {_pct(s['with_model'])}{mark[s['model_inside']]} | "
                  f"{_pct(s['with_residual'])}{mark[s['residual_inside']]} |")
    print(f"\ninside the GPU's 90% interval, by point: shipped model {counts['model']} of {counts['cells']}, "
          f"the studies' residual {counts['residual']} of {counts['cells']}")
    print("\nThe sim against the GPU at the fresh points: GPU mean [range] / sim mean (error of the means)")
    print("| point | " + " | ".join(METRICS.values()) + " |")
    print("|---|" + "---|" * len(METRICS))
    for name, by_metric in out["fresh_accuracy"].items():
        cells = [f"{a['gpu_mean']:,.1f} [{a['gpu_min']:,.1f}, {a['gpu_max']:,.1f}] / {a['sim_mean']:,.1f} "
                 f"({100 * a['error']:+.1f}%)" for a in by_metric.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if out["fresh_configs"]:
        print("\nTwo configurations at the fresh points: the GPU's ratio [90% Welch] / the sim's ratio; '=' where the GPU's"
              " interval holds 1, 'same' or 'OPPOSITE' the sim's order where it does not")
        print("| comparison | " + " | ".join(METRICS.values()) + " |")
        print("|---|" + "---|" * len(METRICS))
        for name, cells in out["fresh_configs"].items():
            shown = [f"{100 * (x['gpu'] - 1):+.1f}% [{100 * (x['gpu_interval'][0] - 1):+.1f}, "
                     f"{100 * (x['gpu_interval'][1] - 1):+.1f}] / {100 * (x['sim'] - 1):+.1f}% "
                     f"{ {None: '=', True: 'same', False: 'OPPOSITE'}[x['same_order']] }" for x in cells.values()]
            print(f"| {name} | " + " | ".join(shown) + " |")
    print("\nThe GPU's spread: fresh servers' runs within one server, all fresh runs, and every repeat pooled (the"
          " studies' and the fresh ones)")
    print("| metric | within one server: dof, CV | fresh: dof, CV | every repeat: dof | every repeat [90%] |")
    print("|---|---:|---:|---:|---:|")
    for m, s in out["all_gpu_repeats"].items():
        within, fresh = out["fresh_within_server"][m], out["fresh"]["all"][m]
        lo, hi = s["gpu_interval"]
        print(f"| {METRICS[m]} | {within['dof']}, {_pct(within['gpu'])} | {fresh['dof']}, {_pct(fresh['gpu'])} | "
              f"{s['dof']} | {_pct(s['gpu'])} [{_pct(lo)}, {_pct(hi)}] |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("levels", type=Path, help="the output of sim_vs_h200_levels.py --json")
    ap.add_argument("--held-out", type=Path, nargs="*", default=[], metavar="DIR",
                    help="folders of benchmarks/gpu/noise_repeats.sh, judged against the sim with the model")
    add_card_constants_option(ap, "the h200 card's constants to override in the replays of --held-out folders (e.g. "
                                  "fp8_kv_read_efficiency=1.0)")
    ap.add_argument("--json", action="store_true")
    args, constants = parse_args_with_constants(ap)
    fresh = [r for folder in args.held_out for r in fresh_runs(folder, constants)]
    out = report(json.loads(args.levels.read_text())["runs"], fresh)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print_report(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
