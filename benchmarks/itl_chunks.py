"""How many of a request's tokens reach the client merged into one chunk, on the H200 and in the sim replaying the
same requests: vLLM's output collector merges a request's outputs while its stream has fallen behind, and the
client counts one inter-token gap per chunk, so the share of merged tokens sets how many gaps a P99 ITL is taken
over (issue #21).

For each run of a `benchmarks/gpu/noise_repeats.sh` folder whose records keep the gaps (``itl_ms``): its measured
requests' tokens after the first, the chunks after the first (the gaps), their ratio, and the P99 ITL; beside it
the sim's on the same requests, load shape and server flags (`noise_pooled.replayed_runs`).

    python benchmarks/itl_chunks.py docs/results/raw/h200-noise-fresh/seed-profile-c48-c128 \
        docs/results/raw/h200-noise-fresh/batch2048-c128 [--constants NAME=VALUE ...] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from _shared import add_card_constants_option, parse_args_with_constants
from noise_pooled import replayed_runs


def chunk_figures(rows: list[dict]) -> dict[str, float]:
    """Tokens after the first, gaps (chunks after the first), their ratio and the P99 gap (ms) over the measured
    requests that kept their gaps."""
    measured = [r for r in rows if r["ok"] and not r["warmup"] and "itl_ms" in r]
    gaps = np.array([g for r in measured for g in r["itl_ms"]], dtype=float)
    tokens = sum(r["output_tokens"] - 1 for r in measured)
    return {"tokens": tokens, "gaps": int(gaps.size), "gaps_per_token": gaps.size / tokens if tokens else float("nan"),
            "p99_itl_ms": float(np.percentile(gaps, 99)) if gaps.size else float("nan")}


def folder_runs(folder: Path, constants: dict[str, float]) -> list[dict[str, Any]]:
    """The folder's runs whose records kept their gaps, with the sim's on the same requests."""
    return [{"folder": folder.name, "run": r["path"].stem, "config": r["config"],
             "concurrency": int(r["gpu"]["concurrency"]), "gpu": chunk_figures(r["rows"]),
             "sim": chunk_figures(r["sim_rows"])}
            for r in replayed_runs(folder, constants, keep=lambda rows: any("itl_ms" in row for row in rows))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path)
    add_card_constants_option(ap, "the h200 card's calibration constants to override in the sim (e.g. "
                                  "frontend_chunk_us=150)")
    ap.add_argument("--json", action="store_true")
    args, constants = parse_args_with_constants(ap)
    runs = [run for folder in args.folders for run in folder_runs(folder, constants)]
    if not runs:
        print("no run with its gaps kept (records with itl_ms) in " + ", ".join(map(str, args.folders)),
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(runs, indent=1))
        return 0
    print("| run | configuration | C | tokens after the first | GPU: gaps per token | sim | GPU P99 ITL ms | sim |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        g, s = r["gpu"], r["sim"]
        print(f"| {r['run']} | {r['config']} | {r['concurrency']} | {g['tokens']:,} | {g['gaps_per_token']:.3f} | "
              f"{s['gaps_per_token']:.3f} | {g['p99_itl_ms']:.1f} | {s['p99_itl_ms']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
