"""Kill `autotune run` at random points, again and again, on one study, and check after each kill what issue #18
asks: the exit (130 for SIGINT, 143 for SIGTERM), no traceback, every server of the killed run gone with its
process group within seconds and its port free, no finished trial lost, no trial left RUNNING once the next run
has opened the study, and at the end a run that finishes normally with nothing left behind.

The engine is the sim as a real server subprocess per trial (`--sim-server`), so every kill meets a real process
group to stop; the random delays fall in engine starts, load levels, teardowns, between trials and in the final
comparison alike. Prints one line per kill and a summary; exits 1 if any check failed.

    python benchmarks/kill_campaign.py --rounds 30 --seed 1 [--out DIR]
    python benchmarks/kill_campaign.py --worker --rounds 30 --seed 1    # workers beside a run, in PostgreSQL

With --worker, `autotune worker` is the process killed, beside one `autotune run` that keeps the study going; a
worker's RUNNING trials are checked as its own servers name them, and a SIGKILLed one's must be failed within three
heartbeats (AUTOTUNE_HEARTBEAT_S=1) plus a margin.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import optuna

from autotune import records
from autotune.engines.launcher import WATCHDOG_GRACE_S
from autotune.engines.ledger import ServerEntry, group_members
from autotune.testing.postgres import TempPostgres

STUDY = "campaign"
SIGNALS = {"SIGINT": (signal.SIGINT, 130), "SIGTERM": (signal.SIGTERM, 143), "SIGKILL": (signal.SIGKILL, -9)}
HEARTBEAT_S = 1  # --worker: a killed worker's trial is stale 3 heartbeats after its last
GONE_WITHIN_S = WATCHDOG_GRACE_S + 5.0  # the watchdog's grace after a SIGKILL, plus a margin for a loaded machine


def run_command(storage: str, out: Path, trials: int) -> list[str]:
    return [sys.executable, "-m", "autotune", "run", "--model", "flash", "--engine", "sim", "--p99-ms", "500",
            "--storage", storage, "--study", STUDY, "--trials", str(trials), "--workload", "random:256:32",
            "--repeats", "1", "--top-k", "2", "--max-concurrency", "64", "--sim-server", "--sim-time-scale", "50",
            "--out", str(out)]


def ledger(out: Path) -> list[ServerEntry]:
    folder = out / STUDY / "servers"
    entries = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            entries.append(ServerEntry.from_json(json.loads(path.read_text())))
        except (OSError, ValueError):
            pass  # being written or removed right now
    return entries


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def trial_states(storage: str) -> dict[int, optuna.trial.TrialState]:
    try:
        study = optuna.load_study(study_name=STUDY, storage=storage)
    except KeyError:
        return {}
    return {t.number: t.state for t in study.trials}


def complete_trials(storage: str) -> set[int]:
    try:
        study = optuna.load_study(study_name=STUDY, storage=storage)
    except KeyError:
        return set()
    return {t.number for t in records.read_trials(study) if t.complete}


def trial_of(entry: ServerEntry) -> int:
    """The trial a server ran: autotune-<study>-<trial>, or autotune-<study>-<trial>-r<i> for a re-measurement."""
    return int(entry.served_model_name.removeprefix(f"autotune-{STUDY}-").split("-")[0])


def kill_round(i: int, rng: random.Random, storage: str, command: list[str], out: Path, max_delay_s: float,
               dead_left: set[int], sole: bool, stale_after_s: float) -> tuple[list[str], set[int]]:
    """One process (``command``; ``out`` its --out) killed at a random point. ``sole``: it is the only process on
    the study (`autotune run` alone), so any trial RUNNING after it ended by SIGINT or SIGTERM is its fault;
    else (a worker beside a run) only the trials of its own servers are. ``dead_left``: trials a SIGKILLed process
    left RUNNING in the round before, which must not be RUNNING once this process has been up ``stale_after_s``.
    Returns the problems found (empty: every check held) and the trials this process leaves RUNNING if SIGKILLed."""
    problems = []
    before = complete_trials(storage)
    running_before = {n for n, s in trial_states(storage).items() if s == optuna.trial.TrialState.RUNNING}
    name = rng.choice(sorted(SIGNALS))
    sig, expected_code = SIGNALS[name]
    delay_s = rng.uniform(0.3, max_delay_s)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + delay_s
    seen: dict[str, ServerEntry] = {}
    while time.monotonic() < deadline and proc.poll() is None:
        for entry in ledger(out):
            seen[entry.served_model_name] = entry
        time.sleep(0.05)
    if proc.poll() is None:
        for entry in ledger(out):
            seen[entry.served_model_name] = entry
        proc.send_signal(sig)
        killed = True
    else:
        killed = False  # it ended before the signal: the study's normal end (or, for a worker, its search done)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        problems.append("did not exit within 120 s of the signal")
    t_exit = time.monotonic()
    code = proc.returncode
    # a signal that lands before the CLI's handlers ends the process by its default action: -2 and -15, which a
    # shell reports as 130 and 143
    if killed and code not in (expected_code, -sig, 0, 3):
        problems.append(f"exit {code}, expected {expected_code}: " + " | ".join(err.strip().splitlines()[-2:]))
    if "Traceback" in err:
        problems.append("a traceback: " + err[err.index("Traceback"):][:300].replace("\n", " | "))
    # every server the killed process started: its group gone within the watchdog's grace, its port free
    mine = [e for e in seen.values() if e.tuner_pid == proc.pid]
    while any(group_members(e.pgid) for e in mine) and time.monotonic() - t_exit < GONE_WITHIN_S:
        time.sleep(0.1)
    gone_s = time.monotonic() - t_exit
    for e in mine:
        if group_members(e.pgid):
            problems.append(f"server {e.served_model_name} (group {e.pgid}) alive {GONE_WITHIN_S:.0f} s after exit")
        elif not port_free(e.port):
            problems.append(f"port {e.port} of {e.served_model_name} still answers")
    after = complete_trials(storage)
    if not before <= after:
        problems.append(f"finished trials lost: {sorted(before - after)}")
    running = {n for n, s in trial_states(storage).items() if s == optuna.trial.TrialState.RUNNING}
    its = (running - running_before) if sole else (running & {trial_of(e) for e in mine})
    if killed and name != "SIGKILL" and its:
        problems.append(f"trials left RUNNING after {name}: {sorted(its)}")
    if delay_s > stale_after_s and dead_left & running:
        problems.append(f"trials a SIGKILLed process left RUNNING still RUNNING: {sorted(dead_left & running)}")
    what = f"{name} after {delay_s:5.1f} s" if killed else f"ended before the signal ({delay_s:.1f} s)"
    print(f"round {i:3d}: {what}: exit {code}, {len(mine)} servers of it, groups gone {gone_s:4.1f} s after exit, "
          f"{len(after)} trials finished, RUNNING {sorted(running) or 'none'}"
          + ("" if not problems else "; PROBLEMS: " + "; ".join(problems)), flush=True)
    return problems, (its if killed and name == "SIGKILL" else set())


def campaign(args: argparse.Namespace, out: Path, storage: str) -> Counter[str]:
    """The rounds, then the last run; the problems found, counted by kind."""
    rng = random.Random(args.seed)
    problems: Counter[str] = Counter()
    coordinator = None
    if args.worker:  # a run that keeps the study going while the workers beside it are killed
        coordinator = subprocess.Popen([*run_command(storage, out / "run", 400), "--patience", "0"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while not trial_states(storage):
            time.sleep(0.2)
        command = [sys.executable, "-m", "autotune", "worker", "--study", STUDY, "--storage", storage,
                   "--out", str(out / "worker")]
        killed_out, stale_after_s = out / "worker", 3 * HEARTBEAT_S + 2.0
    else:
        command, killed_out, stale_after_s = run_command(storage, out, 50), out, 5.0
    dead_left: set[int] = set()
    for i in range(args.rounds):
        found, dead_left = kill_round(i, rng, storage, command, killed_out, args.max_delay_s, dead_left,
                                      sole=not args.worker, stale_after_s=stale_after_s)
        for p in found:
            problems[p.split(":")[0]] += 1
    if coordinator is not None:
        coordinator.send_signal(signal.SIGINT)
        _, err = coordinator.communicate(timeout=120)
        print(f"the run beside the workers: SIGINT, exit {coordinator.returncode}: "
              + " | ".join(err.strip().splitlines()[-2:]), flush=True)
        if os.environ.get("AUTOTUNE_DEBUG") == "1":
            print(err[-4000:])
        if coordinator.returncode != 130 or "Traceback" in err:
            problems["the run beside the workers"] += 1
    # the last run: resumes, finishes, leaves nothing RUNNING and no server behind
    final = subprocess.run(run_command(storage, out / "run" if args.worker else out, 1), capture_output=True,
                           text=True, timeout=600)
    running = [n for n, s in trial_states(storage).items() if s == optuna.trial.TrialState.RUNNING]
    entries = [*ledger(out), *ledger(out / "run"), *ledger(out / "worker")]
    left = [e.served_model_name for e in entries if group_members(e.pgid)]
    print(f"final run: exit {final.returncode}; RUNNING left {running or 'none'}; servers left {left or 'none'}; "
          f"ledger entries {len(entries)}; states {Counter(s.name for s in trial_states(storage).values())}")
    if final.returncode not in (0, 3) or running or left or "Traceback" in final.stderr:
        problems["final run"] += 1
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-delay-s", type=float, default=20.0, help="kill at a uniform time in (0.3, this)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the study (default: a temporary one)")
    parser.add_argument("--worker", action="store_true",
                        help="kill `autotune worker`s beside one `autotune run`, in a throwaway PostgreSQL")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="kill-campaign-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.worker:
        os.environ["AUTOTUNE_HEARTBEAT_S"] = str(HEARTBEAT_S)  # every process of the study, ours included
        with TempPostgres() as pg:
            problems = campaign(args, out, pg.url)
    else:
        problems = campaign(args, out, f"sqlite:///{out}/study.db")
    print(f"{args.rounds} rounds, seed {args.seed}: " + (", ".join(f"{k}: {v}" for k, v in problems.items())
                                                        if problems else "every check held"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
