"""Which host term on the sim's card fits a set of levels: a grid over card constants (issue #21).

Replays the levels of `benchmarks/gpu/step_counts.sh` or `host_contention.sh` folders (step_counts_table.py's
table: the same requests and load shape on the in-process sim, card h200) once per combination of the constants'
values, and scores each by the mean squared log error, sim against GPU, of the three figures a step's constants set:
what one prefill adds to its step, output tok/s and P50 TPOT. Prints every combination's loss; then, for the best
combination and for the best that moves one constant alone (the others at the card's value, which each axis gets if
it lacks it), every level's errors. With host_step_ms and eager_step_overhead_ms it tells whether a host's time
adds to each step carrying a prefill (the additive card), or is a floor that longer GPU work hides, or both.

    python benchmarks/host_card_grid.py DIR [DIR ...] [--levels busy] \
        --grid host_step_ms=0,20,40,60 eager_step_overhead_ms=1.5,5,10,20
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path
from typing import Any

from step_counts_table import table

from autotune.gpus import load_gpu

SCORED = ("a prefill adds", "output tok/s", "P50 TPOT")


def level_errors(row: dict[str, Any]) -> tuple[float, float, float]:
    """Log errors, sim against GPU, of a level's scored figures."""
    gpu, sim = row["gpu"], row["sim"]
    return (math.log(sim["client_steps"]["prefill_adds_ms"] / gpu["client_steps"]["prefill_adds_ms"]),
            math.log(sim["output_tok_s"] / gpu["output_tok_s"]),
            math.log(sim["p50_tpot_ms"] / gpu["p50_tpot_ms"]))


def parse_grid(texts: list[str], ap: argparse.ArgumentParser) -> dict[str, list[float]]:
    """``NAME=V1,V2,...`` per constant, each axis with the card's value added when it lacks it."""
    card = load_gpu("h200").extra or {}
    grid: dict[str, list[float]] = {}
    for text in texts:
        name, _, values = text.partition("=")
        if name not in card:
            ap.error(f"--grid: the h200 card has no constant {name!r}")
        try:
            axis = [float(v) for v in values.split(",")]
        except ValueError:
            ap.error("--grid takes NAME=V1,V2,... with numeric values")
        grid[name] = sorted(set(axis) | {float(card[name])})
    return grid


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", type=Path, nargs="+")
    ap.add_argument("--grid", nargs="+", required=True, metavar="NAME=V1,V2,...")
    ap.add_argument("--levels", default="", metavar="PREFIX", help="only configurations so named (e.g. busy)")
    args = ap.parse_args()
    grid = parse_grid(args.grid, ap)
    card = load_gpu("h200").extra or {}
    names = list(grid)
    scored: dict[tuple[float, ...], tuple[float, list[tuple[str, tuple[float, float, float]]]]] = {}
    for values in itertools.product(*grid.values()):
        constants = dict(zip(names, values, strict=True))
        rows = [row for folder in args.dirs for row in table(folder, constants, args.levels)]
        if not rows:
            ap.error(f"no levels named {args.levels!r}... in {', '.join(map(str, args.dirs))}")
        errors = [(f"{row['folder']}/{row['config']}", level_errors(row)) for row in rows]
        loss = sum(e * e for _, errs in errors for e in errs) / (3 * len(errors))
        scored[values] = (loss, errors)
        print("loss " + " ".join(f"{n}={v:g}" for n, v in constants.items()) + f": {loss:.4f}", flush=True)
    shown = {"the best combination": min(scored, key=lambda v: scored[v][0])}
    for i, name in enumerate(names):
        alone = [v for v in scored if all(v[j] == float(card[n]) for j, n in enumerate(names) if j != i)]
        shown[f"the best with {name} alone"] = min(alone, key=lambda v: scored[v][0])
    for title, values in shown.items():
        loss, errors = scored[values]
        print(f"\n{title}: " + " ".join(f"{n}={v:g}" for n, v in zip(names, values, strict=True))
              + f", loss {loss:.4f}; each level's error, sim against GPU: " + ", ".join(SCORED))
        for level, errs in errors:
            print(f"- {level}: " + " ".join(f"{math.expm1(e):+.0%}" for e in errs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
