"""Shrink kept request records (`autotune bench --records ... --records-itl`, one JSON line per request, gzipped):
every token's arrival time rounded to STEP ms (0.1 by default), in place.

The times are rounded on the request's own time line (TTFT, then TTFT + each gap) and the gaps written back as
differences of the rounded times, so no rounding error accumulates along a stream: each token's time moves by at
most STEP / 2. Five times smaller at 0.1 ms, for figures that group tokens 1 ms apart or more
(benchmarks/step_counts_table.py).

    python benchmarks/quantize_records.py FILE.jsonl.gz [...] [--step-ms 0.1]
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np


def quantize(record: dict, step_ms: float) -> dict:
    decimals = max(0, -int(np.floor(np.log10(step_ms))))
    out = dict(record)
    for key in ("ttft_ms", "tpot_ms", "e2el_ms", "itl_max_ms"):
        if isinstance(out.get(key), float):
            out[key] = round(round(out[key] / step_ms) * step_ms, decimals)
    gaps = out.get("itl_ms")
    if gaps and isinstance(out.get("ttft_ms"), float):
        times = np.round((record["ttft_ms"] + np.cumsum(np.r_[0.0, gaps])) / step_ms) * step_ms
        out["ttft_ms"] = round(float(times[0]), decimals)
        out["itl_ms"] = [round(float(g), decimals) for g in np.diff(times)]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", type=Path, nargs="+")
    ap.add_argument("--step-ms", type=float, default=0.1)
    args = ap.parse_args()
    for path in args.files:
        lines = [json.dumps(quantize(json.loads(line), args.step_ms), separators=(",", ":"))
                 for line in gzip.open(path, "rt") if line.strip()]
        before = path.stat().st_size
        with gzip.open(path, "wt", compresslevel=9) as f:
            f.write("\n".join(lines) + "\n")
        print(f"{path}: {before:,} -> {path.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
