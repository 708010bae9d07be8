"""Which host term on the sim's card fits a set of levels: a grid over card constants (issue #21).

Replays the levels of `benchmarks/gpu/step_counts.sh` or `host_contention.sh` folders (step_counts_table.py's
table: the same requests and load shape on the in-process sim, card h200) once per combination of the constants'
values, and scores each by the mean squared log error, sim against GPU, of the three figures a step's constants set:
what one prefill adds to its step, output tok/s and P50 TPOT, each level weighed alike. (`sim calibrate` and
sim_vs_h200_levels.py --fit score a study's runs on what a study keeps, throughput and P99s; a step level keeps every
token's time, so its steps can be scored directly.) Levels whose prompts the server had already cached, or whose
GPU side kept no request records, are left out. Prints every combination's loss; then each level's errors for the
best combination, for the best that moves one constant alone (the others at the card's value, which each axis gets
if it lacks it) and for the card as it is; with --each, for every combination. A best value at the end of its axis
is flagged. With host_step_ms and eager_step_overhead_ms it tells whether a host's time adds to each step carrying a
prefill (the additive card), or is a floor that longer GPU work hides, or both.

    python benchmarks/host_card_grid.py DIR [DIR ...] [--config-prefix busy] [--each] \
        --grid host_step_ms=0,20,40,60 eager_step_overhead_ms=1.5,5,10,20
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path
from typing import Any

from _shared import parse_card_constants
from step_counts_table import RANGED, table

from autotune.gpus import load_gpu

SCORED = ("a prefill adds", "tok/s", "P50 TPOT")  # figures of step_counts_table.RANGED


def scored(row: dict[str, Any]) -> bool:
    """Whether a level can be scored: its prompts were new to the server and its GPU side has the steps rebuilt
    from request records, with a prefill that adds time."""
    steps = row["gpu"]["client_steps"]
    return not row["cached"] and bool(steps) and (steps.get("prefill_adds_ms") or 0.0) > 0.0


def level_log_errors(row: dict[str, Any]) -> tuple[float, ...]:
    """Log errors, sim against GPU, of a level's SCORED figures."""
    errors = []
    for name in SCORED:
        table_key, key = RANGED[name]
        gpu, sim = ((row[side][table_key] if table_key else row[side]) for side in ("gpu", "sim"))
        errors.append(math.log(sim[key] / gpu[key]))
    return tuple(errors)


def parse_grid(texts: list[str], card: dict[str, Any], ap: argparse.ArgumentParser) -> dict[str, list[float]]:
    """``NAME=V1,V2,...`` per constant (each value checked as ``--constants`` checks it), each axis with the card's
    value added when it lacks it."""
    grid: dict[str, list[float]] = {}
    for text in texts:
        name, _, values = text.partition("=")
        if name in grid:
            ap.error(f"--grid: {name} given twice")
        axis = {parse_card_constants([f"{name}={value}"], ap, "--grid")[name] for value in values.split(",")}
        grid[name] = sorted(axis | {float(card[name])})
    return grid


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", type=Path, nargs="+")
    ap.add_argument("--grid", nargs="+", required=True, metavar="NAME=V1,V2,...")
    ap.add_argument("--config-prefix", default="", metavar="PREFIX",
                    help="only the configurations whose names start so (e.g. busy)")
    ap.add_argument("--each", action="store_true", help="every combination's errors level by level")
    args = ap.parse_args()
    for folder in args.dirs:
        if not (folder / "settings.txt").is_file() or not (folder / "configs.txt").is_file():
            ap.error(f"{folder}: not a folder of step_counts.sh or host_contention.sh (no settings.txt, configs.txt)")
    card = load_gpu("h200").extra or {}
    grid = parse_grid(args.grid, card, ap)
    names = list(grid)
    results: dict[tuple[float, ...], tuple[float, list[tuple[str, tuple[float, ...]]]]] = {}
    for values in itertools.product(*grid.values()):
        constants = dict(zip(names, values, strict=True))
        rows = [row for folder in args.dirs for row in table(folder, constants, args.config_prefix)]
        errors = [(f"{row['folder']}/{row['config']} c{row['concurrency']}", level_log_errors(row))
                  for row in rows if scored(row)]
        if not errors:
            ap.error(f"no level to score among the configurations named {args.config_prefix!r}... of "
                     f"{', '.join(map(str, args.dirs))} (cached, without records, or none)")
        loss = sum(e * e for _, errs in errors for e in errs) / (len(SCORED) * len(errors))
        results[values] = (loss, errors)
        print("loss " + _label(names, values) + f": {loss:.4f}", flush=True)
    best = min(results, key=lambda v: results[v][0])
    shown = {best: "the best combination"}
    as_card = tuple(float(card[n]) for n in names)
    for i, name in enumerate(names):
        alone = [v for v in results if all(v[j] == as_card[j] for j in range(len(names)) if j != i)]
        shown.setdefault(min(alone, key=lambda v: results[v][0]), f"the best with {name} alone")
    shown.setdefault(as_card, "the card as it is")
    if args.each:
        for values in results:
            shown.setdefault(values, "")
    edges = [n for i, n in enumerate(names) if len(grid[n]) > 2 and best[i] in (grid[n][0], grid[n][-1])]
    if edges:
        print(f"\nthe best combination lies at the end of the grid for {', '.join(edges)}: widen it")
    for values, title in shown.items():
        loss, errors = results[values]
        print(f"\n{title + ': ' if title else ''}{_label(names, values)}, loss {loss:.4f}; each level's error, "
              f"sim against GPU: {', '.join(SCORED)}")
        for level, errs in errors:
            print(f"- {level}: " + " ".join(f"{math.expm1(e):+.0%}" for e in errs))
    return 0


def _label(names: list[str], values: tuple[float, ...]) -> str:
    return " ".join(f"{n}={v:g}" for n, v in zip(names, values, strict=True))


if __name__ == "__main__":
    sys.exit(main())
