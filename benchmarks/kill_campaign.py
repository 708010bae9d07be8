"""Kill `autotune run` at random points, again and again, on one study, and check after each kill what issue #18
asks: the exit (130 for SIGINT, 143 for SIGTERM), no traceback, every server of the killed run gone with its
process group within seconds and its port free, no finished trial lost, no trial left RUNNING once the next run
has opened the study, and at the end a run that finishes normally with nothing left behind.

The engine is the sim as a real server subprocess per trial (`--sim-server`), so every kill meets a real process
group to stop; the random delays fall in engine starts, load levels, teardowns, between trials and in the final
comparison alike. Prints one line per kill and a summary; exits 1 if any check failed.

    python benchmarks/kill_campaign.py --rounds 30 --seed 1 [--out DIR] [--storage URL]
"""
from __future__ import annotations

import argparse
import json
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

STUDY = "campaign"
SIGNALS = {"SIGINT": (signal.SIGINT, 130), "SIGTERM": (signal.SIGTERM, 143), "SIGKILL": (signal.SIGKILL, -9)}
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


def kill_round(i: int, rng: random.Random, storage: str, out: Path, max_delay_s: float) -> list[str]:
    """One run killed at a random point; the problems found (empty: every check held)."""
    problems = []
    before = complete_trials(storage)
    left_running = [n for n, s in trial_states(storage).items() if s == optuna.trial.TrialState.RUNNING]
    name = rng.choice(sorted(SIGNALS))
    sig, expected_code = SIGNALS[name]
    delay_s = rng.uniform(0.3, max_delay_s)
    proc = subprocess.Popen(run_command(storage, out, 50), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # the study opened by this run: from here on nothing may be left RUNNING by an earlier killed run
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
        killed = False  # it finished before the signal: a round of the study's normal end
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
        problems.append(f"exit {code}, expected {expected_code}")
    if "Traceback" in err:
        problems.append("a traceback: " + err[err.index("Traceback"):][:300].replace("\n", " | "))
    # every server the killed run started: its group gone within the watchdog's grace, its port free
    mine = [e for e in seen.values() if e.tuner_pid == proc.pid]
    gone_s = 0.0
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
    running = [n for n, s in trial_states(storage).items() if s == optuna.trial.TrialState.RUNNING]
    if name != "SIGKILL" and killed and set(running) - set(left_running):
        problems.append(f"trials left RUNNING after {name}: {sorted(set(running) - set(left_running))}")
    if delay_s > 5 and set(left_running) & set(running):  # this run opened the study: a dead run's trials failed
        problems.append(f"trials a killed run left RUNNING still RUNNING: {sorted(set(left_running) & set(running))}")
    what = f"{name} after {delay_s:5.1f} s" if killed else f"finished before the signal ({delay_s:.1f} s)"
    print(f"round {i:3d}: {what}: exit {code}, {len(mine)} servers of it, groups gone {gone_s:4.1f} s after exit, "
          f"{len(after)} trials finished, RUNNING left {running or 'none'}"
          + ("" if not problems else "; PROBLEMS: " + "; ".join(problems)), flush=True)
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-delay-s", type=float, default=20.0, help="kill at a uniform time in (0.3, this)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the study (default: a temporary one)")
    parser.add_argument("--storage", default=None, help="default: SQLite in --out")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="kill-campaign-"))
    out.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{out}/study.db"
    rng = random.Random(args.seed)
    problems: Counter[str] = Counter()
    for i in range(args.rounds):
        for p in kill_round(i, rng, storage, out, args.max_delay_s):
            problems[p.split(":")[0]] += 1
    # the last run: resumes, finishes, leaves nothing RUNNING and no server behind
    final = subprocess.run(run_command(storage, out, 1), capture_output=True, text=True, timeout=600)
    running = [n for n, s in trial_states(storage).items() if s == optuna.trial.TrialState.RUNNING]
    left = [e.served_model_name for e in ledger(out) if group_members(e.pgid)]
    print(f"final run: exit {final.returncode}; RUNNING left {running or 'none'}; servers left {left or 'none'}; "
          f"ledger entries {len(ledger(out))}; states {Counter(s.name for s in trial_states(storage).values())}")
    if final.returncode not in (0, 3) or running or left or "Traceback" in final.stderr:
        problems["final run"] += 1
    print(f"{args.rounds} rounds, seed {args.seed}: " + (", ".join(f"{k}: {v}" for k, v in problems.items())
                                                        if problems else "every check held"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
