"""What several benchmark scripts share: a process's CPU time, reading a load level's per-request records, and
replaying a level that `autotune bench` ran on the GPU in the in-process sim.

A module, not a script: the scripts beside it import it (`from _shared import ...`), which works when they are
run as `python benchmarks/SCRIPT.py` (that puts this folder first on the module path).
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from autotune.gpus import load_gpu
from autotune.loadgen.runner import LoadConfig, record_output
from autotune.loadgen.workload import parse_workload
from autotune.metrics import BenchResult, steady_window, summarize
from autotune.models import spec_from_config
from autotune.sim.engine import setup_engine
from autotune.sim.inproc import bench_in_process
from autotune.testing.models import WEIGHTLESS_FLASH_CONFIG


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class Level:
    """One level of a `benchmarks/gpu/step_counts.sh` folder, on the job's wall clock (its `levels.txt`)."""
    config: str
    concurrency: int
    start_s: float
    end_s: float


def read_levels(run_dir: Path) -> list[Level]:
    """The folder's levels, from `levels.txt` ("CONFIG cC START_S END_S" lines); none without the file."""
    path = run_dir / "levels.txt"
    if not path.is_file():
        return []
    levels = []
    for line in path.read_text().splitlines():
        cfg, c, start, end = line.split()
        levels.append(Level(cfg, int(c.lstrip("c")), float(start), float(end)))
    return levels


def load_records(path: Path) -> list[dict]:
    """A level's per-request records (`studies/<study>/trials/N/levels/NN-cC.jsonl.gz`, `bench --records`)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# In a raw data folder whose levels' per-request records were moved to git history to keep the tree small: how to
# restore them in place
RESTORE_NOTE = "RESTORE.txt"
_restore_hinted: set[Path] = set()


def level_records(path: Path) -> list[dict] | None:
    """A level's per-request records, or None where its folder keeps none. Where the folder (or one above it) has a
    RESTORE.txt, stderr says once how to restore them: the figures that need them are left out until then."""
    if path.exists():
        return load_records(path)
    for folder in path.parents:
        note = folder / RESTORE_NOTE
        if note.is_file():
            if folder not in _restore_hinted:
                _restore_hinted.add(folder)
                print(f"{folder}: no request records here, figures from them left out. "
                      + " ".join(note.read_text().split()), file=sys.stderr)
            break
    return None


def window_tok_s(rows: list[dict]) -> tuple[float, float]:
    """Output tok/s over a level's steady window, counted two ways: (every request's tokens in the window, as a
    level reports it; the measured requests' tokens only, which leaves out the warm-up requests still decoding
    in the window's first part)."""
    everyone = [record_output(r) for r in rows]
    measured = [o for o, r in zip(everyone, rows) if not r["warmup"]]
    ok = [o for o in measured if o.success]
    if not ok:
        return float("nan"), float("nan")
    full_s = max(o.start_s + o.e2el_s for o in ok) - min(o.start_s for o in ok)
    window = steady_window(measured, full_s)
    return (summarize(measured, full_s, window=window, window_outputs=everyone).output_tok_s,
            summarize(measured, full_s, window=window).output_tok_s)


def add_card_constants_option(ap: argparse.ArgumentParser, help_text: str) -> None:
    """``--constants NAME=VALUE ...``, read back with :func:`parse_args_with_constants`."""
    ap.add_argument("--constants", nargs="+", default=[], metavar="NAME=VALUE", help=help_text)


def parse_args_with_constants(ap: argparse.ArgumentParser, argv: list[str] | None = None,
                              card_name: str = "h200") -> tuple[argparse.Namespace, dict[str, float]]:
    """The parsed arguments and the card constants of their ``--constants``."""
    args = ap.parse_args(argv)
    return args, parse_card_constants(args.constants, ap, card_name=card_name)


def parse_card_constants(texts: list[str], ap: argparse.ArgumentParser, option: str = "--constants",
                         card_name: str = "h200") -> dict[str, float]:
    """``--constants NAME=VALUE ...``: the built-in card's calibration constants to override (the sim's
    ``GpuSpec.extra``). A malformed pair, a value that is not a finite number, a constant the card does not name (as
    a card file may set only those) or one named twice is the parser's one-line error."""
    card = load_gpu(card_name).extra or {}
    constants: dict[str, float] = {}
    for text in texts:
        name, sep, value = text.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not math.isfinite(number):
            ap.error(f"{option} takes NAME=VALUE pairs with finite numeric values, not {text!r}")
        if name not in card:
            ap.error(f"{option}: the {card_name} card has no constant {name!r}")
        if name in constants:
            ap.error(f"{option}: {name} given twice")
        constants[name] = number
    return constants


def replay_bench_level(flags: dict[str, Any], gpu_run: dict[str, Any], constants: dict[str, float],
                       records_path: Path) -> BenchResult:
    """A level as `autotune bench --json` ran it on the H200 with the weightless Flash model (its workload and
    seed, warm-up wave, measured requests, ramp: the same requests), replayed in the in-process sim with the h200
    card (``constants`` overriding its calibration); every request kept with its gaps in ``records_path``."""
    model = spec_from_config(WEIGHTLESS_FLASH_CONFIG, "weightless-flash", "weightless-flash")
    card = load_gpu("h200")
    card = dataclasses.replace(card, extra={**(card.extra or {}), **constants})
    cfg = LoadConfig(concurrency=int(gpu_run["concurrency"]), num_prompts=int(gpu_run["num_prompts"]),
                     warmup_prompts=int(gpu_run["warmup_prompts"]), ramp_s=float(gpu_run["ramp_s"]),
                     seed=int(gpu_run["workload"]["seed"]), records_path=str(records_path), records_itl=True)
    requests = parse_workload(gpu_run["workload"]["spec"], seed=cfg.seed).requests(cfg.warmup_prompts
                                                                                   + cfg.num_prompts)
    return bench_in_process(setup_engine(model, card, flags), requests, cfg)
