#!/bin/bash
# On the GPU machine (device kit installed, /tmp/st/env.sh): does a busy host slow vLLM's steps, and which ones?
# One fresh server (vLLM's defaults, the weightless model), then ROUNDS rounds of two levels shaped like
# step_counts.sh's at concurrency C: one with the host quiet, one with HOG busy-loop processes on its CPUs (nproc by
# default), alternating so that a drift over time falls on both. Every level has prompts of its own (seeded by its
# place), so vLLM's prefix cache serves none. The levels are written as step_counts.sh writes configurations
# (quiet.N / busy.N, configs.txt, levels.txt, GPU telemetry), so the same table reads them:
#   python benchmarks/step_counts_table.py DIR
# Servers differ from level to level in what a prefill adds while their decode steps agree, and their GPUs stay
# as busy (docs/results/sim-accuracy.md): a host whose CPU time is taken should show where that time goes.
# With WORKLOADS (several, e.g. prompts of 256 to 4,096 tokens) each round runs the quiet and busy pair for each in
# turn, named MODE.inLEN.ROUND: where a prefill's GPU work outgrows the host's time, the busy loops should stop
# mattering if the step takes the longer of the two, and keep adding if it takes their sum.
#   bash benchmarks/gpu/host_contention.sh start [DIR]    # returns at once
#   bash benchmarks/gpu/host_contention.sh status [DIR]
# Variables (defaults): ROUNDS=3 C=16 HOG=$(nproc) WORKLOAD=random:1024:128:0.5 WORKLOADS=$WORKLOAD PORT=8062
#   MODEL_DIR=/tmp/model
#   ENGINE=vllm, or sim to rehearse on a CPU against `autotune sim serve`
# Expected time on one H200: a cold start of ~1-3 min, then ~30 s per level: ~5 min for three rounds of one workload.
set -uo pipefail
dir=${2:-/tmp/host-contention}; progress=times.txt; status_lines=3
rounds=${ROUNDS:-3}; c=${C:-16}; hog=${HOG:-$(nproc)}; workload=${WORKLOAD:-random:1024:128:0.5}
workloads=${WORKLOADS:-$workload}
port=${PORT:-8062}; engine=${ENGINE:-vllm}; model=${MODEL_DIR:-/tmp/model}
job_vars="rounds c hog workload workloads port engine model"

job() {
  printf 'loads=%s\nworkload=%s\nengine=%s\nmodel=%s\nhog=%s\n' "$c" "$workloads" "$engine" "$model" "$hog" \
    > "$dir/settings.txt"
  telemetry_start
  if port_taken "$port" 2>> "$dir/times.txt"; then echo "not started" >> "$dir/times.txt"; telemetry_stop; return; fi
  local name srv t0 ready=0 round mode level=0 hogs=() size workload cfg lengths
  # several workloads: each level named by its prompt length, which must then tell them apart
  lengths=$(for workload in $workloads; do cut -d: -f2 <<< "$workload"; done)
  if [ "$(wc -w <<< "$lengths")" -gt 1 ] && [ -n "$(sort <<< "$lengths" | uniq -d)" ]; then
    echo "WORKLOADS: two workloads with one prompt length" >> "$dir/times.txt"; return
  fi
  name="m-contention-$(date +%s%N)"
  start_server "$port" "$name" "$dir/server.log"
  srv=$server_pid
  t0=$(date +%s)
  server_ready "$port" "$name" "$srv" && ready=1
  echo "ready=$ready after $(($(date +%s) - t0)) s" >> "$dir/times.txt"
  if [ "$ready" = 1 ]; then
    for round in $(seq "$rounds"); do
      for workload in $workloads; do  # bench_level reads $workload
        size=""
        [ "$(wc -w <<< "$lengths")" -gt 1 ] && size=".in$(cut -d: -f2 <<< "$workload")"
        for mode in quiet busy; do
          level=$((level + 1))
          cfg="$mode$size.$round"
          echo "$cfg: " >> "$dir/configs.txt"
          hogs=()
          [ "$mode" = busy ] && hog_start "$hog"
          timed_level "$cfg" "$port" "$name" "$c" $((1000 + level))
          hog_stop
          echo "$cfg: c$c done at $(($(date +%s) - t0)) s" >> "$dir/times.txt"
        done
      done
    done
  fi
  stop_server "$srv"
  telemetry_stop
  if command -v nvidia-smi > /dev/null; then leftovers_check; fi
  hogs_left >> "$dir/procs-after.txt"
}
source "$(dirname "$0")/background.sh"
background_main "$@"
