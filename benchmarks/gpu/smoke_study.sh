#!/bin/bash
# On the GPU machine (device kit installed, /tmp/st/env.sh): a one-trial study on real vLLM, to check that the
# launcher and the study records behave on the real engine as on the sim: the trial's record, startup figures
# read from vLLM's log, `autotune best` and `autotune studies` reading the storage, the profile, and nothing left
# behind (no process, the port free, GPU memory back to 0 MiB). Runs in the background; results in $DIR.
#   bash benchmarks/gpu/smoke_study.sh start [DIR]   # returns at once
#   bash benchmarks/gpu/smoke_study.sh status [DIR]  # prints progress; "done" when finished
set -uo pipefail
dir=${2:-/tmp/smoke}; progress=run.log
job() {
  date +%s > "$dir/t0"
  python3 -m autotune run --model /tmp/model --engine vllm --load-format dummy --gpus 1 --p99-ms 500 \
    --trials 1 --top-k 0 --repeats 0 --max-concurrency 256 --study smoke \
    --storage "sqlite:///$dir/autotune.db" --out "$dir" > "$dir/run.out" 2> "$dir/run.log"
  echo $? > "$dir/run.rc"
  date +%s > "$dir/t1"
  python3 -m autotune best --study smoke --storage "sqlite:///$dir/autotune.db" --json > "$dir/best.json" 2>&1
  python3 -m autotune studies --storage "sqlite:///$dir/autotune.db" --json > "$dir/studies.json" 2>&1
  leftovers_check
}
source "$(dirname "$0")/background.sh"
background_main "$@"
