#!/bin/bash
# On the GPU machine (device kit installed, /tmp/st/env.sh): what `autotune sim calibrate` needs from a host, and
# what judges it (issue #21: the sim's step constants differ between H200 hosts). Two parts, one after the other:
#   1. steps/: the engine's own steps on this host (benchmarks/gpu/step_counts.sh, vLLM's defaults, LOADS), for
#      `python benchmarks/step_counts_table.py DIR/steps/*/`: the decode step and what a prefill adds here;
#   2. a real study (`autotune run`, vLLM 0.26.0, the kit's weightless model, TRIALS trials, P99 TTFT <= 500 ms on
#      WORKLOAD, no re-measurement): the study a user would calibrate the sim from (DIR/autotune.db, DIR/host/).
#   bash benchmarks/gpu/host_calibration.sh start [DIR]   # returns at once
#   bash benchmarks/gpu/host_calibration.sh status [DIR]  # "done" when finished
# Variables (defaults): LOADS="16 24" TRIALS=3 WORKLOAD=random:1024:256:0.5
# Time on one H200 (2026-12-02): 3.6 min for the steps (a cold start of 151 s), 3.5-4.3 min per trial.
set -uo pipefail
dir=${2:-/tmp/host-cal}; progress=progress.txt
loads=${LOADS:-"16 24"}; trials=${TRIALS:-3}; workload=${WORKLOAD:-random:1024:256:0.5}
job_vars="loads trials workload"
job() {
  echo "steps: $(date +%T)" >> "$dir/$progress"
  LOADS="$loads" CONFIGS=defaults bash benchmarks/gpu/step_counts.sh start "$dir/steps" > /dev/null
  until grep -q done "$dir/steps/state" 2>/dev/null; do sleep 5; done
  echo "study: $(date +%T)" >> "$dir/$progress"
  python3 -m autotune run --model /tmp/model --engine vllm --load-format dummy --gpus 1 --p99-ms 500 \
    --workload "$workload" --trials "$trials" --top-k 0 --repeats 0 --max-concurrency 256 --study host \
    --storage "sqlite:///$dir/autotune.db" --out "$dir" > "$dir/run.out" 2> "$dir/run.log"
  echo "study rc $?: $(date +%T)" >> "$dir/$progress"
  leftovers_check
}
source "$(dirname "$0")/background.sh"
background_main "$@"
