"""How much one load level's figures move between runs on one server and between fresh servers, beside the
interval that a single run gives its P99 (`autotune.stats.p99_interval`, what the load search decides with).

Reads `autotune bench --records FILE.jsonl.gz --records-itl` files named `<server>-<run>.jsonl.gz` (as
`benchmarks/gpu/noise_repeats.sh` writes them) and prints, per run: output tok/s over the steady window, P99
TTFT and P99 ITL each with its interval; then per metric the spread of the runs (min, max, coefficient of
variation) within each server and over all, and how often one run's interval holds the other runs' pooled P99.

    python benchmarks/noise_table.py DIR [--confidence 0.9] [--json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from _shared import load_records, window_tok_s
from autotune.stats import p99_interval


def _values(rows: list[dict], metric: str) -> tuple[np.ndarray, np.ndarray]:
    ok = [r for r in rows if r["ok"] and not r["warmup"]]
    if metric == "ttft":
        return np.array([r["ttft_ms"] for r in ok], dtype=float), np.array([r["start_s"] for r in ok], dtype=float)
    gaps = [np.asarray(r["itl_ms"], dtype=float) for r in ok]
    times = [r["start_s"] + r["ttft_ms"] / 1e3 + np.cumsum(g) / 1e3 for r, g in zip(ok, gaps)]
    return np.concatenate(gaps), np.concatenate(times)


def run_row(path: Path, confidence: float) -> dict:
    rows = load_records(path)
    server, run = path.name.removesuffix(".jsonl.gz").rsplit("-", 1)
    out = {"server": server, "run": int(run), "output_tok_s": window_tok_s(rows)[0],
           "measured": sum(1 for r in rows if not r["warmup"])}
    for metric in ("ttft", "itl"):
        iv = p99_interval(*_values(rows, metric), confidence=confidence)
        out[metric] = {"p99_ms": iv.value, "low_ms": iv.low, "high_ms": iv.high}
    return out


def spread(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=float)
    return {"n": int(arr.size), "min": float(arr.min()), "max": float(arr.max()), "mean": float(arr.mean()),
            "cv_pct": float(arr.std(ddof=1) / arr.mean() * 100) if arr.size > 1 else float("nan")}


def coverage(runs: list[dict], files: list[Path], metric: str) -> dict:
    """How often a run's interval holds the P99 of all the other runs (on every server) pooled."""
    held = 0
    for i, run in enumerate(runs):
        others = [_values(load_records(f), metric) for j, f in enumerate(files) if j != i]
        pooled = float(np.quantile(np.concatenate([v for v, _ in others]), 0.99))
        held += run[metric]["low_ms"] <= pooled <= run[metric]["high_ms"]
    return {"held": held, "runs": len(runs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("--confidence", type=float, default=0.9)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    files = sorted(args.dir.glob("*-*.jsonl.gz"))
    runs = [run_row(f, args.confidence) for f in files]
    servers = sorted({r["server"] for r in runs})
    table = {"runs": runs, "spread": {}, "coverage": {}}
    for name, get in (("output_tok_s", lambda r: r["output_tok_s"]), ("p99_ttft_ms", lambda r: r["ttft"]["p99_ms"]),
                      ("p99_itl_ms", lambda r: r["itl"]["p99_ms"])):
        table["spread"][name] = {"all": spread([get(r) for r in runs]),
                                 **{s: spread([get(r) for r in runs if r["server"] == s]) for s in servers}}
    for metric in ("ttft", "itl"):
        table["coverage"][metric] = coverage(runs, files, metric)
    if args.json:
        print(json.dumps(table, indent=1))
        return
    for r in runs:
        print(f"{r['server']} run {r['run']}: {r['output_tok_s']:,.0f} tok/s, "
              f"P99 TTFT {r['ttft']['p99_ms']:.0f} ms [{r['ttft']['low_ms']:.0f}, {r['ttft']['high_ms']:.0f}], "
              f"P99 ITL {r['itl']['p99_ms']:.1f} ms [{r['itl']['low_ms']:.1f}, {r['itl']['high_ms']:.1f}]")
    for name, by in table["spread"].items():
        print(name, {k: {kk: round(vv, 1) for kk, vv in v.items()} for k, v in by.items()})
    print("a run's interval holds the other runs' pooled P99:", table["coverage"])


if __name__ == "__main__":
    main()
