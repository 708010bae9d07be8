#!/bin/bash
# On a two-GPU machine (device kit installed, /tmp/st/env.sh): the same study twice, side by side, one copy per
# GPU (issue #16, item 5): do both copies reach the same verdict, and the winner's throughput at the limit
# within 5%? Each copy: real vLLM on the weightless model, its own storage and output folder, the study's
# --timeout as its whole GPU budget. Summarise with benchmarks/reproducibility_table.py DIR.
#   METRIC=ttft LIMIT=500 TIMEOUT=25m bash benchmarks/gpu/reproducibility.sh start [DIR]   # returns at once
#   WORKLOAD=random:1024:128:0.5 ...   # another workload than autotune run's default
#   bash benchmarks/gpu/reproducibility.sh status [DIR]
# COPIES=1 runs one copy on a one-GPU machine: a study in the layout benchmarks/sim_vs_h200_levels.py reads (gpu0.db,
# gpu0/). ENGINE_ARGS (default "--engine vllm --load-format dummy"): "--engine sim --sim-server --gpu-type h100"
# rehearses it on a CPU (a model folder at /tmp/model).
set -uo pipefail
dir=${2:-/tmp/repro}; progress=progress.txt; status_lines=4
metric=${METRIC:-ttft}; limit=${LIMIT:-500}; timeout=${TIMEOUT:-25m}; workload=${WORKLOAD:-}; copies=${COPIES:-2}
engine_args=${ENGINE_ARGS:---engine vllm --load-format dummy}
job_vars="metric limit timeout workload copies engine_args"
job() {
  date +%s > "$dir/t0"
  for g in $(seq 0 $((copies - 1))); do
    CUDA_VISIBLE_DEVICES=$g python3 -m autotune run --model /tmp/model $engine_args --gpus 1 \
      --p99-ms "$limit" --p99-metric "$metric" --timeout "$timeout" --study "repro-$metric-gpu$g" \
      ${workload:+--workload "$workload"} \
      --storage "sqlite:///$dir/gpu$g.db" --out "$dir/gpu$g" --json > "$dir/gpu$g.json" 2> "$dir/gpu$g.log" &
  done
  while [ "$(jobs -rp | wc -l)" -gt 0 ]; do
    # --json keeps the console quiet: the servers started so far tell how far each copy is
    { date +%T; for g in $(seq 0 $((copies - 1))); do
        echo "gpu$g: $(ls -d "$dir"/gpu$g/*/trials/* 2>/dev/null | wc -l) trials," \
             "$(ls -d "$dir"/gpu$g/*/remeasure/* 2>/dev/null | wc -l) re-measurements started"; done; } > "$dir/$progress"
    sleep 10
  done
  wait
  date +%s > "$dir/t1"
  for g in $(seq 0 $((copies - 1))); do
    python3 -m autotune best --study "repro-$metric-gpu$g" --storage "sqlite:///$dir/gpu$g.db" --json \
      > "$dir/best-gpu$g.json" 2>&1
  done
  leftovers_check
}
source "$(dirname "$0")/background.sh"
background_main "$@"
