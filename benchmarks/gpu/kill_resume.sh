#!/bin/bash
# On one GPU (nvidia-h200; device kit installed, /tmp/st/env.sh, /tmp/model, the PostgreSQL bundle at /tmp/pg):
# the dead-tuner cases of issue #18 on the real engine, one study in a throwaway PostgreSQL:
#   1. `autotune run` is SIGKILLed once its first trial's vLLM holds the GPU: how long until the GPU's memory is
#      back (the server's watchdog), and which processes are left;
#   2. `autotune worker` joins the study: it fails the dead run's trial through Optuna's heartbeat and queues it
#      again, takes it, and is SIGKILLed mid-trial the same way;
#   3. `autotune run` again on the study: it runs the queued trial to its end; every trial's state is printed.
#   bash benchmarks/gpu/kill_resume.sh start [DIR]     # returns at once; ~10 min on an H200 (the trial ~5)
#   bash benchmarks/gpu/kill_resume.sh status [DIR]    # "done" when finished; kill.txt holds the figures
# Rehearsal on a CPU, the sim server as the engine (its processes stand in for GPU memory):
#   AUTOTUNE_HEARTBEAT_S=10 python benchmarks/gpu/kill_resume.py DIR sim
set -uo pipefail
dir=${2:-/tmp/kill-resume}
progress=kill.txt
job() {
  [ -f /tmp/pg/env.sh ] && . /tmp/pg/env.sh  # PostgreSQL and psycopg carried in (pg_bundle.sh); the kit has neither
  AUTOTUNE_HEARTBEAT_S=10 python3 benchmarks/gpu/kill_resume.py "$dir" vllm > "$dir/kill.txt" 2>&1
  leftovers_check
}
. "$(dirname "$0")/background.sh"
background_main "$@"
