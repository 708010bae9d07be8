"""Would a host time drawn per run give the sim the GPU's run-to-run spread? The sim's spread with the card's
`host_step_ms` drawn per run, against the spread of fresh H200 servers sent the same requests (issue #21's noise
model at low load; docs/results/sim-accuracy.md, "The host's time as a floor under the GPU's work").

Folders of `benchmarks/gpu/step_counts.sh` with one configuration on several fresh servers (NAME.1, NAME.2, ...:
the same requests at each load, so the request streams add no spread; servers-lease3..5 of
docs/results/raw/h200-host-calibration/). For each load, the GPU's spread: the SD of each figure's log around its
own folder's (lease's) mean, pooled over the folders, with its 90% interval (noise_pooled). The sim's: the level
replayed in-process on the same requests (the first server's run) `--draws` times, each with the card's
`host_step_ms` times a lognormal factor of mean 1 and CV `--host-cv` (the host's time for a step outside CUDA
graphs, drawn per run as `--sim-noise` draws its factors), and nothing else drawn: the SD of the log over the
draws, with its 90% interval. `--high-load` folders (benchmarks/gpu/noise_repeats.sh's, e.g. raw/h200-noise-fresh/c48-c128) are
replayed the same way at their loads: where a step's GPU work outlasts the host's time, the draw should change
nothing.

    python benchmarks/host_noise.py DIR [DIR ...] --constants host_step_ms=37.81 --host-cv 0.05 0.08 0.1 \\
        [--high-load DIR ...] [--draws 16]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from _shared import add_card_constants_option, level_records, parse_args_with_constants
from noise_pooled import cv_interval, pooled, served_flags
from step_counts_table import client_steps, configs, sim_level

from autotune.sim.noise import lognormal_factor

FIGURES = {"output_tok_s": "output tok/s", "p99_ttft_ms": "P99 TTFT", "p99_tpot_ms": "P99 TPOT",
           "p99_itl_ms": "P99 ITL", "prefill_adds_ms": "a prefill adds"}


def gpu_figures(path: Path, run: dict[str, Any]) -> dict[str, float]:
    """The figures of the GPU's level ``run`` (`path`, its `autotune bench --json`), what a prefill adds from its
    requests' records beside it."""
    records = level_records(path.with_suffix(".jsonl.gz"))
    return {"output_tok_s": run["output_tok_s"], "p99_ttft_ms": run["ttft_ms"]["p99"],
            "p99_tpot_ms": run["tpot_ms"]["p99"], "p99_itl_ms": run["itl_ms"]["p99"],
            "prefill_adds_ms": client_steps(records)["prefill_adds_ms"] if records else float("nan")}


def sim_figures(flags: dict[str, Any], run: dict[str, Any], constants: dict[str, float]) -> dict[str, float]:
    sim = sim_level(flags, run, constants)
    return {**{key: sim[key] for key in FIGURES if key in sim}, "prefill_adds_ms": sim["client_steps"]["prefill_adds_ms"]}


def gpu_spread(folders: list[Path]) -> dict[int, dict[str, Any]]:
    """Per load: each figure's pooled CV over the folders' fresh servers (around each folder's mean), and one
    server's run and flags to replay."""
    by_load: dict[int, dict[str, Any]] = {}
    for folder in folders:
        flags_by_config = configs(folder)
        bases = {name.rpartition(".")[0] or name for name in flags_by_config}
        if len(bases) != 1:  # the servers of one configuration, sent the same requests: their spread is the servers'
            raise SystemExit(f"{folder}: one configuration on fresh servers (NAME.1, NAME.2, ...), not {sorted(bases)}")
        for path in sorted(folder.glob("*-c*.json")):
            config = path.name.rsplit("-c", 1)[0]
            c = int(path.stem.rsplit("-c", 1)[1])
            run = json.loads(path.read_text())
            load = by_load.setdefault(c, {"hosts": {}, "template": None})
            load["hosts"].setdefault(str(folder), []).append(gpu_figures(path, run))
            if load["template"] is None:
                load["template"] = (flags_by_config[config], run)
    for load in by_load.values():
        load["cv"] = {}
        for key in FIGURES:
            ss, dof = pooled([[run[key] for run in runs] for runs in load["hosts"].values()])
            load["cv"][key] = (math.sqrt(ss / dof), cv_interval(ss, dof), dof) if dof else None
    return by_load


def sim_spread(flags: dict[str, Any], run: dict[str, Any], constants: dict[str, float], host_cv: float,
               draws: int, seed: int) -> dict[str, tuple[float, tuple[float, float], int]]:
    """Each figure's CV over ``draws`` replays of the level, the host's step time drawn for each."""
    rng = np.random.default_rng(seed)
    host_ms = constants["host_step_ms"]
    runs = [sim_figures(flags, run, {**constants, "host_step_ms": host_ms * lognormal_factor(rng, host_cv)})
            for _ in range(draws)]
    out = {}
    for key in FIGURES:
        ss, dof = pooled([[r[key] for r in runs]])
        out[key] = (math.sqrt(ss / dof), cv_interval(ss, dof), dof)
    return out


def _cell(cv: tuple[float, tuple[float, float], int] | None) -> str:
    if cv is None:
        return "—"
    value, (lo, hi), _ = cv
    return f"{100 * value:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", type=Path, nargs="+", help="step_counts.sh folders of fresh servers (NAME.N)")
    ap.add_argument("--host-cv", type=float, nargs="+", required=True, help="CVs of the host time to draw")
    ap.add_argument("--draws", type=int, default=16, help="replays per level and CV")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--high-load", type=Path, nargs="*", default=[], metavar="DIR",
                    help="noise_repeats.sh folders: their loads replayed the same way (no GPU spread given)")
    add_card_constants_option(ap, "the h200 card's constants to override; host_step_ms is required")
    args, constants = parse_args_with_constants(ap)
    if constants.get("host_step_ms", 0) <= 0:
        ap.error("--constants host_step_ms=MS is required: the draw scales the card's host step time")
    loads = gpu_spread(args.dirs)
    print(f"Spread (CV of the log [90%]) over fresh servers sent the same requests: the GPU pooled over "
          f"{len(args.dirs)} folders, and the sim with host_step_ms {constants['host_step_ms']:g} ms drawn per run "
          f"({args.draws} draws), nothing else drawn.")
    print("| load | source | " + " | ".join(FIGURES.values()) + " |")
    print("|---|---|" + "---:|" * len(FIGURES))
    for c, load in sorted(loads.items()):
        dof = next(v[2] for v in load["cv"].values() if v)
        print(f"| C = {c} | GPU, {dof} dof | " + " | ".join(_cell(load["cv"][k]) for k in FIGURES) + " |")
        for cv in args.host_cv:
            s = sim_spread(*load["template"], constants, cv, args.draws, args.seed)
            print(f"| C = {c} | sim, host CV {100 * cv:g}% | " + " | ".join(_cell(s[k]) for k in FIGURES) + " |")
    for folder in args.high_load:
        config, flags = served_flags(folder)
        first: dict[int, dict[str, Any]] = {}
        for path in sorted(folder.glob("*-c*-*.json")):
            run = json.loads(path.read_text())
            first.setdefault(int(run["concurrency"]), run)
        for c, run in sorted(first.items()):
            for cv in args.host_cv:
                s = sim_spread(flags, run, constants, cv, args.draws, args.seed)
                print(f"| C = {c}, {folder.name} ({config}) | sim, host CV {100 * cv:g}% | "
                      + " | ".join(_cell(s[k]) for k in FIGURES) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
