"""How long the commands that read a storage take on a large one: `studies`, `best`, `compare` of two studies and
`export`, on a SQLite storage of N finished studies of M trials each (the readers' tests' study factory: levels,
baselines, re-measurements, a selection and a run record per study, as `autotune run` writes them), and
`--help` (the CLI's start alone). Each command runs in a fresh interpreter, as a user runs it; the median wall
time of ``--repeats`` runs is printed with its range. Then the dashboard's index page: its first request and the
next two, in an app started in a fresh interpreter ``--repeats`` times.

    python benchmarks/readers_scale.py --studies 30 --trials 100 [--tree DIR] [--json]

``--tree DIR``: run the commands of another source tree (e.g. a `git worktree` of an older commit), to compare.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the study factory lives with the tests

from tests.study_factory import make_study, throwaway_storage  # noqa: E402


def timed(argv: list[str], tree: Path, repeats: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    walls = []
    for _ in range(repeats):
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "autotune", *argv], capture_output=True, text=True, env=env,
                              cwd=tempfile.gettempdir())
        walls.append(time.perf_counter() - started)
        if proc.returncode != 0:
            raise SystemExit(f"autotune {' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return {"median_s": statistics.median(walls), "min_s": min(walls), "max_s": max(walls)}


_DASHBOARD_PROBE = """
import asyncio, json, sys, time
from aiohttp.test_utils import TestClient, TestServer
from autotune.dashboard import build_app
from autotune.storage import open_storage_readonly

async def go(url, requests):
    async with TestClient(TestServer(build_app(open_storage_readonly(url), url, None))) as client:
        walls = []
        for _ in range(requests):
            started = time.perf_counter()
            assert (await client.get("/")).status == 200
            walls.append(time.perf_counter() - started)
        return walls

print(json.dumps(asyncio.run(go(sys.argv[1], int(sys.argv[2])))))
"""


def dashboard_index(url: str, tree: Path, repeats: int) -> dict[str, dict[str, float]]:
    """The dashboard's index page, one app per fresh interpreter: its first request and the next ones (the app keeps
    what it read of finished trials)."""
    first, later = [], []
    for _ in range(repeats):
        proc = subprocess.run([sys.executable, "-c", _DASHBOARD_PROBE, url, "3"], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tempfile.gettempdir())
        if proc.returncode != 0:
            raise SystemExit(f"dashboard index: exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
        walls = json.loads(proc.stdout.strip().splitlines()[-1])
        first.append(walls[0])
        later.extend(walls[1:])

    def summary(walls: list[float]) -> dict[str, float]:
        return {"median_s": statistics.median(walls), "min_s": min(walls), "max_s": max(walls)}
    return {"dashboard index, first request": summary(first), "dashboard index, next requests": summary(later)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=30)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tree", type=Path, default=ROOT, help="the source tree whose commands run (default: this one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="readers-scale-") as folder:
        url = f"sqlite:///{folder}/s.db"
        storage = throwaway_storage(url)
        started = time.perf_counter()
        for i in range(args.studies):
            make_study(storage, f"study-{i:03d}", n_trials=args.trials, seed=i)
        made_s = time.perf_counter() - started
        storage.engine.dispose()
        subprocess.run(["git", "init", "-q", f"{folder}/deploy"], check=True)  # export writes into a work tree
        commands = {
            "--help": ["--help"],
            "studies": ["studies", "--storage", url],
            "best": ["best", "--study", "study-000", "--storage", url],
            "compare (2 studies)": ["compare", "study-000", "study-001", "--storage", url],
            "export": ["export", "--study", "study-000", "--to", f"{folder}/deploy", "--force", "--storage", url],
        }
        figures = {name: timed(argv, args.tree.resolve(), args.repeats) for name, argv in commands.items()}
        figures.update(dashboard_index(url, args.tree.resolve(), args.repeats))
        size_mb = Path(folder, "s.db").stat().st_size / 1e6
    if args.json:
        print(json.dumps({"studies": args.studies, "trials": args.trials, "storage_mb": size_mb, "commands": figures}))
        return
    print(f"{args.studies} studies x {args.trials} trials ({size_mb:.1f} MB, made in {made_s:.0f} s), "
          f"tree {args.tree}; median of {args.repeats} runs [range]:")
    for name, f in figures.items():
        print(f"  {name:<32} {f['median_s']:6.2f} s  [{f['min_s']:.2f}, {f['max_s']:.2f}]")


if __name__ == "__main__":
    main()
