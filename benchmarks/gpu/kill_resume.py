"""A tuner killed mid-trial on one GPU, then a worker killed mid-trial, then the study resumed (kill_resume.sh says
how to run it on the GPU). Prints, for each SIGKILL, how long the trial's server and its GPU memory outlived the
killed process, and at the end every trial's state and which trial it retried.
    python benchmarks/gpu/kill_resume.py DIR vllm|sim"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna

from autotune import records
from autotune.testing.postgres import TempPostgres

STUDY = "kill"
SERVED_NAME = f"autotune-{STUDY}-"  # a trial's server (and its watchdog) carry it in their command lines
GPU_HELD_MIB = 100_000  # past weights and KV cache: the server is about to serve
GPU_FREE_MIB = 1024
HEARTBEAT_S = int(os.environ.get("AUTOTUNE_HEARTBEAT_S", "60"))
STALE_AFTER_S = 3 * HEARTBEAT_S + 5  # Optuna fails a trial whose heartbeat stopped this long ago

T0 = time.monotonic()


def say(text: str) -> None:
    print(f"{time.monotonic() - T0:7.1f} s  {text}", flush=True)


def gpu0_mib() -> int | None:
    if not shutil.which("nvidia-smi"):
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                         capture_output=True, text=True).stdout
    return int(out.split()[0])


def server_processes() -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [line.strip()[:160] for line in out.splitlines() if SERVED_NAME in line]


def study_args(engine: str, url: str, out: Path, trials: int) -> list[str]:
    common = ["--p99-ms", "500", "--trials", str(trials), "--top-k", "0", "--repeats", "0", "--patience", "0",
              "--study", STUDY, "--storage", url, "--out", str(out)]
    if engine == "vllm":
        return ["--model", "/tmp/model", "--engine", "vllm", "--load-format", "dummy", "--gpus", "1",
                "--gpu-ids", "0", "--max-concurrency", "256", *common]
    return ["--model", "flash", "--engine", "sim", "--sim-server", "--sim-time-scale", "5",
            "--workload", "random:256:32", "--max-concurrency", "16", *common]


def start(argv: list[str], name: str, d: Path) -> subprocess.Popen:
    say(f"start {name}: autotune {' '.join(argv[:1])} ...")
    return subprocess.Popen([sys.executable, "-m", "autotune", *argv], stdout=open(d / f"{name}.out", "w"),
                            stderr=open(d / f"{name}.log", "w"))


def wait_for_serving(proc: subprocess.Popen, name: str) -> bool:
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            say(f"{name} ended (exit {proc.returncode}) before its server came up")
            return False
        mib = gpu0_mib()
        if server_processes() and (mib is None or mib > GPU_HELD_MIB):
            say(f"{name}'s trial server is up" + (f", GPU 0 holds {mib} MiB" if mib is not None else ""))
            return True
        time.sleep(1)
    say(f"{name}'s server did not come up in 400 s")
    return False


def kill_and_watch(proc: subprocess.Popen, name: str, mid_trial_s: float) -> None:
    time.sleep(mid_trial_s)
    say(f"SIGKILL {name} (pid {proc.pid}); servers: {len(server_processes())}, GPU 0: {gpu0_mib()} MiB")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t_kill = time.monotonic()
    servers_gone_s = memory_back_s = None
    while time.monotonic() - t_kill < 180 and (servers_gone_s is None or memory_back_s is None):
        now = time.monotonic() - t_kill
        mib = gpu0_mib()
        if servers_gone_s is None and not server_processes():
            servers_gone_s = now
        if memory_back_s is None and (mib is None or mib < GPU_FREE_MIB):
            memory_back_s = now
        time.sleep(0.5)
    def seconds(s: float | None) -> str:
        return "more than 180 s" if s is None else f"{s:.1f} s"
    say(f"after {name}'s SIGKILL: its server's processes gone after {seconds(servers_gone_s)}, GPU 0 memory back "
        f"under {GPU_FREE_MIB} MiB after {seconds(memory_back_s)} (now {gpu0_mib()} MiB); "
        f"left: {server_processes() or 'none'}")


def main() -> None:
    d, engine = Path(sys.argv[1]), sys.argv[2]
    d.mkdir(parents=True, exist_ok=True)
    say(f"heartbeat {HEARTBEAT_S} s; GPU 0 at start: {gpu0_mib()} MiB")
    with TempPostgres() as pg:
        run = start(["run", *study_args(engine, pg.url, d / "run1", 3)], "run1", d)
        if wait_for_serving(run, "run1"):
            kill_and_watch(run, "run1", 30 if engine == "vllm" else 3)
        time.sleep(STALE_AFTER_S)  # so the worker finds the dead run's trial stale and queues it again
        worker = start(["worker", "--study", STUDY, "--storage", pg.url, "--trials", "1",
                        *(["--gpu-ids", "0"] if engine == "vllm" else []), "--out", str(d / "worker")], "worker", d)
        if wait_for_serving(worker, "worker"):
            kill_and_watch(worker, "worker", 30 if engine == "vllm" else 3)
        time.sleep(STALE_AFTER_S)
        resumed = start(["run", *study_args(engine, pg.url, d / "run2", 1)], "run2", d)
        try:
            resumed.wait(timeout=900)
        except subprocess.TimeoutExpired:
            resumed.send_signal(signal.SIGINT)
            resumed.wait(timeout=120)
        say(f"run2 ended, exit {resumed.returncode}; servers left: {server_processes() or 'none'}; "
            f"GPU 0: {gpu0_mib()} MiB")
        study = optuna.load_study(study_name=STUDY, storage=pg.url)
        for trial, record in zip(study.trials, records.read_trials(study)):
            wall_s = (trial.datetime_complete - trial.datetime_start).total_seconds() \
                if trial.datetime_complete and trial.datetime_start else None
            say(f"trial {record.number} {record.baseline or ''}: {record.state.name}, retry of trial "
                f"{trial.system_attrs.get('failed_trial')}, {'not run' if wall_s is None else f'{wall_s:.0f} s'}"
                + (f", {record.result.failure_class}" if record.result and record.result.failure_class else ""))
        print(open(d / "run2.out").read()[-1500:], flush=True)


if __name__ == "__main__":
    main()
