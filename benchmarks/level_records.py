"""Where a load level's P99 came from: read the per-request records a trial keeps
(`studies/<study>/trials/N/levels/NN-cC.jsonl.gz`, or `autotune bench --records`) and print, per level,
the TTFT of the measured requests in four quarters of their start times, next to the warm-up's. A P99 set
by a start-up transient shows as a first quarter far above the others.

Also the level's output tok/s over its steady window (first to last measured start), counted two ways: the
tokens of every request in the window ("all", what a level reports now) and of the measured requests only
("measured only": the warm-up requests still decoding in the window's first part left out, which is how
study databases written before commit c1c3974 stored a level's throughput).

    python benchmarks/level_records.py studies/<study>/trials/0/levels/*.jsonl.gz
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from _shared import load_records, window_tok_s


def summary(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["ok"] and r["ttft_ms"] is not None]
    warm = [r["ttft_ms"] for r in ok if r["warmup"]]
    measured = sorted((r for r in ok if not r["warmup"]), key=lambda r: r["start_s"])
    quarters = [q for q in np.array_split(np.array([r["ttft_ms"] for r in measured], dtype=float), 4) if q.size]
    return {"requests": len(rows), "failed": sum(not r["ok"] for r in rows), "warmup": len(warm),
            "warmup_p99_ttft_ms": float(np.percentile(warm, 99)) if warm else None,
            "measured": len(measured),
            "p99_ttft_ms": float(np.percentile([r["ttft_ms"] for r in measured], 99)) if measured else None,
            "p99_ttft_ms_by_quarter": [float(np.percentile(q, 99)) for q in quarters],
            **dict(zip(("output_tok_s", "output_tok_s_measured_only"), window_tok_s(rows)))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", type=Path, nargs="+")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    for path in args.files:
        s = summary(load_records(path))
        if args.json:
            print(json.dumps({"file": str(path), **s}))
            continue
        fmt = lambda v: "-" if v is None else f"{v:,.0f}"  # noqa: E731
        quarters = " ".join(f"{fmt(v):>7}" for v in s["p99_ttft_ms_by_quarter"])
        print(f"{path.name:>22}  {s['measured']:5d} measured ({s['failed']} failed)  P99 TTFT {fmt(s['p99_ttft_ms']):>7} ms"
              f"  by start-time quarter: {quarters}  warm-up ({s['warmup']}): {fmt(s['warmup_p99_ttft_ms'])} ms"
              f"  tok/s all {fmt(s['output_tok_s'])} measured only {fmt(s['output_tok_s_measured_only'])}")


if __name__ == "__main__":
    main()
