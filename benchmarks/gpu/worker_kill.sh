#!/bin/bash
# On a GPU machine (device kit installed, /tmp/st/env.sh, /tmp/model): `autotune run` on GPU 0 and `autotune
# worker` on GPU 1 of one study (SQLite serves one process, so the study lives in a throwaway PostgreSQL from
# autotune/testing/postgres.py, or in $STORAGE). The worker is SIGKILLed mid-trial, once its vLLM server holds GPU
# memory; the script prints GPU 1's memory every second until it is back, how long that took, and what the run
# recorded for the killed trial (failed by the heartbeat, queued again).
#   bash benchmarks/gpu/worker_kill.sh [DIR]        # runs in the foreground, about 10-20 minutes
# The GPU machine has no PostgreSQL: build .device-stage/pg.tar.zst here first (bash benchmarks/gpu/pg_bundle.sh),
# carry it, and unpack it to /tmp/pg there (its header says how); this script sources /tmp/pg/env.sh.
set -uo pipefail
dir=${1:-/tmp/worker-kill}
mkdir -p "$dir"
. /tmp/st/env.sh
[ -f /tmp/pg/env.sh ] && . /tmp/pg/env.sh  # PostgreSQL and psycopg carried in (pg_bundle.sh); the kit has neither
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} AUTOTUNE_HEARTBEAT_S=10
python3 - "$dir" <<'PY'
import os, signal, subprocess, sys, time
import optuna
from autotune.testing.postgres import TempPostgres

d = sys.argv[1]
def smi():
    out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout
    return {int(i): int(m) for i, m in (line.split(",") for line in out.strip().splitlines())}
with TempPostgres() as pg:
    url = os.environ.get("STORAGE", pg.url)
    run = subprocess.Popen([sys.executable, "-m", "autotune", "run", "--model", "/tmp/model", "--engine", "vllm",
                            "--load-format", "dummy", "--gpus", "1", "--gpu-ids", "0", "--p99-ms", "500",
                            "--trials", "4", "--top-k", "0", "--repeats", "0", "--max-concurrency", "256",
                            "--study", "kill", "--storage", url, "--out", f"{d}/run"],
                           stdout=open(f"{d}/run.out", "w"), stderr=open(f"{d}/run.log", "w"))
    time.sleep(30)
    worker = subprocess.Popen([sys.executable, "-m", "autotune", "worker", "--study", "kill", "--storage", url,
                               "--gpu-ids", "1", "--out", f"{d}/worker"],
                              stdout=open(f"{d}/worker.out", "w"), stderr=open(f"{d}/worker.log", "w"))
    while smi()[1] < 10_000:  # the worker's vLLM holds GPU 1
        time.sleep(2)
    time.sleep(20)  # mid-trial
    print(f"GPU memory before the kill: {smi()} MiB", flush=True)
    worker.send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    while smi()[1] > 1024 and time.monotonic() - t0 < 300:
        print(f"{time.monotonic() - t0:5.1f} s after SIGKILL: GPU 1 {smi()[1]} MiB", flush=True)
        time.sleep(1)
    print(f"GPU 1 back to {smi()[1]} MiB {time.monotonic() - t0:.1f} s after the worker's SIGKILL", flush=True)
    print(subprocess.run(["bash", "-c", ". benchmarks/gpu/background.sh; engine_processes"],
                         capture_output=True, text=True).stdout or "no vllm or autotune process left")
    run.wait()
    study = optuna.load_study(study_name="kill", storage=url)
    for t in study.trials:
        print(t.number, t.state.name, "retry of", t.system_attrs.get("failed_trial"))
PY
