"""Trial overhead: the wall time of a trial outside the engine's own start and the load search itself.

Target (issue): under 2 s a trial.

Runs a real short study on the sim engine through ``autotune.cli.main(["run", ...])`` in a temporary folder
(its own SQLite storage), then reads each trial from the Optuna storage:

    overhead = trial_wall_s - (startup.ready_s + load_wall_s)

``ready_s`` is the launcher's spawn-to-ready time (the engine's own start); teardown counts as overhead.
``trial_wall_s`` is what the study records, i.e. the objective from just before ``run_trial`` to after the
trial's result is built; the study's own work around it (sampling, writing the user attrs and the constraint,
``tell``, the stop-rule callback, ``ask`` of the next trial) is measured too, from timing wrappers installed
in this process around the functions that do it (measurement only: nothing is changed), and reported as the
"full" overhead per trial: the whole trial window (objective entry to the next objective entry) minus
``ready_s`` and ``load_wall_s``.

    python benchmarks/trial_overhead.py                      # 4 trials, random:256:32
    python benchmarks/trial_overhead.py --trials 8 --json-out /tmp/overhead.json
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import optuna

import autotune.study as study_mod
from autotune import records
import autotune.trial as trial_mod
from autotune.cli import main as cli_main
from autotune.engines.launcher import EngineServer
from autotune.space import SearchSpace

TARGET_S = 2.0

# ---------------------------------------------------------------- timing wrappers (measurement only)

_EVENTS: list[tuple[str, float, float]] = []  # (component, start perf_counter, duration s)
_WINDOWS: list[tuple[int, float, float]] = []  # (trial number, objective entry, objective exit)


def _timed(component: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _EVENTS.append((component, t0, time.perf_counter() - t0))
    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


@contextlib.contextmanager
def instrumented():
    """Wrap the functions whose cost makes up the overhead; restore them afterwards."""
    patches: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, component: str) -> None:
        original = getattr(owner, name)
        patches.append((owner, name, original))
        setattr(owner, name, _timed(component, original))

    rdb = optuna.storages.RDBStorage
    patch(SearchSpace, "sample", "sampling (suggest + param writes)")
    patch(trial_mod, "plan_memory", "memory plan")
    patch(EngineServer, "start", "engine start (launcher)")
    patch(EngineServer, "stop", "teardown")
    patch(trial_mod, "search_load", "load search")
    patch(rdb, "set_trial_user_attr", "storage: user attrs")
    patch(rdb, "set_trial_system_attr", "storage: constraint / system attrs")
    patch(rdb, "set_trial_state_values", "storage: tell (state, value)")
    patch(rdb, "create_new_trial", "storage: ask (new trial)")
    patch(study_mod._StopRules, "__call__", "stop-rule callback")
    original_objective = study_mod._objective

    def objective_factory(*args: Any, **kwargs: Any) -> Callable[[optuna.Trial], float]:
        inner = original_objective(*args, **kwargs)

        def objective(trial: optuna.Trial) -> float:
            t0 = time.perf_counter()
            try:
                return inner(trial)
            finally:
                _WINDOWS.append((trial.number, t0, time.perf_counter()))
        return objective

    patches.append((study_mod, "_objective", original_objective))
    study_mod._objective = objective_factory  # type: ignore[assignment]
    try:
        yield
    finally:
        for owner, name, original in reversed(patches):
            setattr(owner, name, original)


# ---------------------------------------------------------------- run and read back

def run_study(workdir: Path, trials: int, workload: str, seed: int) -> tuple[int, dict[str, Any], float, list[str]]:
    storage = f"sqlite:///{workdir / 'study.db'}"
    # --sim-server: the launcher's whole path (a subprocess per trial), which the overhead is about
    argv = ["run", "--model", "flash", "--gpus", "1", "--p99-ms", "500", "--engine", "sim", "--sim-server",
            "--trials", str(trials), "--workload", workload, "--json", "--repeats", "0",
            "--storage", storage, "--out", str(workdir / "out"), "--study", "overhead", "--seed", str(seed)]
    stdout = io.StringIO()
    t0 = time.perf_counter()
    with instrumented(), contextlib.redirect_stdout(stdout):
        rc = cli_main(argv)
    wall = time.perf_counter() - t0
    try:
        report = json.loads(stdout.getvalue())
    except ValueError:
        report = {"raw_stdout": stdout.getvalue()[-2000:]}
    return rc, report, wall, ["autotune", *argv]


def per_trial(storage_url: str, run_end: float) -> list[dict[str, Any]]:
    study = optuna.load_study(study_name="overhead", storage=storage_url)
    windows = sorted(_WINDOWS, key=lambda w: w[1])
    rows: list[dict[str, Any]] = []
    for i, (number, enter, exit_) in enumerate(windows):
        record = records.read_trial(study.trials[number])
        res = record.result
        ready = float(((res.startup if res else None) or {}).get("ready_s") or 0.0)
        load = res.load_wall_s if res else 0.0
        trial_wall = res.trial_wall_s if res else 0.0
        engine_wall = res.engine_wall_s if res else 0.0
        # The trial's window: objective entry to the next objective entry (tell, callback and the next ask
        # belong to this trial); the last one ends at the first event after it that is not the study's end.
        window_end = windows[i + 1][1] if i + 1 < len(windows) else _last_trial_end(exit_, run_end)
        parts: dict[str, float] = defaultdict(float)
        for comp, start, dur in _EVENTS:
            if enter - 1e-6 <= start < window_end:
                parts[comp] += dur
        window = window_end - enter
        rows.append({
            "number": number, "baseline": record.baseline, "feasible": res.feasible if res else None,
            "output_tok_s": res.output_tok_s if res else None, "concurrency": res.concurrency if res else None,
            "levels": len(res.levels) if res else 0,
            "trial_wall_s": trial_wall, "engine_wall_s": engine_wall, "ready_s": ready, "load_wall_s": load,
            "teardown_s": parts.get("teardown", 0.0),
            "overhead_s": trial_wall - ready - load,
            "window_s": window, "full_overhead_s": window - ready - load,
            "parts": dict(parts),
        })
    return rows


def _last_trial_end(exit_: float, run_end: float) -> float:
    """End of the last trial's window: its tell and callback, not the study's wrap-up (selection, profile)."""
    after = [(start + dur) for comp, start, dur in _EVENTS
             if start >= exit_ and comp in ("storage: tell (state, value)", "stop-rule callback")]
    return max(after) if after else min(exit_, run_end)


# ---------------------------------------------------------------- report

def print_report(rows: list[dict[str, Any]], command: list[str], wall: float, rc: int) -> None:
    print(f"command: {' '.join(command)}")
    print(f"exit code {rc}, study wall {wall:.1f} s (CLI start to JSON report, in-process)\n")
    print("| trial | baseline | levels | trial_wall_s | ready_s | load_wall_s | teardown s | overhead s "
          "(trial_wall − ready − load) | full overhead s (window − ready − load) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['number']} | {r['baseline'] or '-'} | {r['levels']} | {r['trial_wall_s']:.3f} "
              f"| {r['ready_s']:.3f} | {r['load_wall_s']:.3f} | {r['teardown_s']:.3f} | {r['overhead_s']:.3f} "
              f"| {r['full_overhead_s']:.3f} |")
    ov = [r["overhead_s"] for r in rows]
    full = [r["full_overhead_s"] for r in rows]
    print(f"\noverhead: median {statistics.median(ov):.3f} s, max {max(ov):.3f} s; full: median "
          f"{statistics.median(full):.3f} s, max {max(full):.3f} s; target < {TARGET_S:g} s: "
          f"{'met' if max(full) < TARGET_S else 'NOT met'} (on the full figure, every trial)")
    comps: list[str] = []
    for r in rows:
        comps += [c for c in r["parts"] if c not in comps]
    skip = {"load search"}
    print("\nbreakdown per trial window (s; 'engine start (launcher)' contains ready_s):")
    print("| component | " + " | ".join(f"trial {r['number']}" for r in rows) + " | median |")
    print("|---|" + "---:|" * (len(rows) + 1))
    for c in comps:
        if c in skip:
            continue
        vals = [r["parts"].get(c, 0.0) for r in rows]
        print(f"| {c} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {statistics.median(vals):.3f} |")
    launcher_extra = [r["parts"].get("engine start (launcher)", 0.0) - r["ready_s"] for r in rows]
    print("| engine start outside ready_s (port check, log parse) | "
          + " | ".join(f"{v:.3f}" for v in launcher_extra) + f" | {statistics.median(launcher_extra):.3f} |")
    accounted = [sum(v for c, v in r["parts"].items() if c not in ("engine start (launcher)", "load search"))
                 + r["ready_s"] + launcher_extra[i] + r["load_wall_s"] for i, r in enumerate(rows)]
    rest = [r["window_s"] - a for r, a in zip(rows, accounted)]
    print("| unaccounted (Optuna internals, sink events, GC, …) | " + " | ".join(f"{v:.3f}" for v in rest)
          + f" | {statistics.median(rest):.3f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--workload", default="random:256:32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="run in this folder and keep it (default: a temp dir)")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="autotune-overhead-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        rc, report, wall, command = run_study(workdir, args.trials, args.workload, args.seed)
        run_end = time.perf_counter()
        rows = per_trial(f"sqlite:///{workdir / 'study.db'}", run_end)
    print_report(rows, command, wall, rc)
    if args.json_out:
        args.json_out.write_text(json.dumps({"command": command, "rc": rc, "wall_s": wall, "trials": rows,
                                             "best": report.get("best")}, indent=1, default=str))
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
