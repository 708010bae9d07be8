#!/bin/bash
# On the GPU machine (device kit installed, /tmp/st/env.sh): a one-trial study on real vLLM, to check that the
# launcher and the study records behave on the real engine as on the sim: the trial's record, startup figures
# read from vLLM's log, `autotune best` and `autotune studies` reading the storage, the profile, and nothing left
# behind (no process, the port free, GPU memory back to 0 MiB). Runs in the background; results in $DIR.
# STUDY_ARGS (default "--trials 1 --top-k 0 --repeats 0 --max-concurrency 256") shape the study: e.g. "--timeout
# 11m" for the README's main command as a user runs it, trials and fresh-server re-measurement within 11 minutes
# (docs/results/h200-noise.md). ENGINE_ARGS (default "--engine vllm --load-format dummy"): "--engine sim
# --sim-server --gpu-type h200" rehearses the job on a CPU, with a model folder at /tmp/model (a config.json, e.g.
# autotune.testing.models.WEIGHTLESS_FLASH_CONFIG's) and a stand-in nvidia-smi on the PATH.
#   bash benchmarks/gpu/smoke_study.sh start [DIR]   # returns at once
#   bash benchmarks/gpu/smoke_study.sh status [DIR]  # prints progress; "done" when finished
set -uo pipefail
dir=${2:-/tmp/smoke}; progress=run.log
study_args=${STUDY_ARGS:---trials 1 --top-k 0 --repeats 0 --max-concurrency 256}
engine_args=${ENGINE_ARGS:---engine vllm --load-format dummy}
job_vars="study_args engine_args"
job() {
  date +%s > "$dir/t0"
  # shellcheck disable=SC2086  # the two are lists of options
  python3 -m autotune run --model /tmp/model $engine_args --gpus 1 --p99-ms 500 \
    $study_args --study smoke --storage "sqlite:///$dir/autotune.db" --out "$dir" > "$dir/run.out" 2> "$dir/run.log"
  echo $? > "$dir/run.rc"
  date +%s > "$dir/t1"
  python3 -m autotune best --study smoke --storage "sqlite:///$dir/autotune.db" --json > "$dir/best.json" 2>&1
  python3 -m autotune studies --storage "sqlite:///$dir/autotune.db" --json > "$dir/studies.json" 2>&1
  leftovers_check
}
source "$(dirname "$0")/background.sh"
background_main "$@"
