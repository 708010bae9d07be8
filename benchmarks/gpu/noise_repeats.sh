#!/bin/bash
# On the GPU machine (device kit installed, /tmp/st/env.sh): the run-to-run spread of load levels, the figure
# every verdict must clear and the sim's noise model must reproduce. SERVERS fresh vLLM servers (FLAGS, the
# weightless model) one after the other; on each, at every concurrency C of LOADS, RUNS runs of `autotune bench`
# shaped like a study's level (closed loop at C, a warm-up wave of C requests, the first wave ramped over 2 s,
# 3 x C measured requests, fresh prompts each run: no run repeats another's, so vLLM's prefix cache serves none),
# keeping every request's timings in DIR/sS-cC-R.json[l.gz].
# Summarise with benchmarks/noise_table.py DIR (one load), or set the runs beside the sim's noise model with
# benchmarks/noise_pooled.py LEVELS.json --held-out DIR.
#   SERVERS=2 RUNS=4 LOADS=64 bash benchmarks/gpu/noise_repeats.sh start [DIR]   # returns at once
#   bash benchmarks/gpu/noise_repeats.sh status [DIR]
# Variables (defaults): SERVERS=2 RUNS=4 LOADS=64 (C=64 is read as LOADS=64) WORKLOAD=random:1024:512:0.5
#   PORT=8031 (server S on PORT+S) SEED0=0 MODEL_DIR=/tmp/model (its tokenizer makes the prompts)
#   FLAGS= (vLLM serve flags for every server, e.g. "--kv-cache-dtype fp8"; none: vLLM's defaults)
#   ENGINE=vllm, or sim to rehearse on a CPU against `autotune sim serve`
set -uo pipefail
dir=${2:-/tmp/noise}; progress=times.txt; status_lines=2
servers=${SERVERS:-2}; runs=${RUNS:-4}; loads=${LOADS:-${C:-64}}; workload=${WORKLOAD:-random:1024:512:0.5}
port0=${PORT:-8031}; seed0=${SEED0:-0}; model=${MODEL_DIR:-/tmp/model}; engine=${ENGINE:-vllm}; flags=${FLAGS:-}
job_vars="servers runs loads workload port0 seed0 model engine flags"
job() {
  printf 'servers=%s\nruns=%s\nloads=%s\nworkload=%s\nengine=%s\nflags=%s\n' "$servers" "$runs" "$loads" "$workload" \
    "$engine" "$flags" > "$dir/settings.txt"
  for s in $(seq "$servers"); do
    # each server on its own port and with a name no earlier server has: a server still releasing the previous
    # port cannot answer for the next
    local port=$((port0 + s)) name t0 ready=0
    name="m$s-$(date +%s%N)"
    if port_taken "$port" 2>> "$dir/times.txt"; then echo "server $s: not started" >> "$dir/times.txt"; continue; fi
    # shellcheck disable=SC2086  # flags are words
    start_server "$port" "$name" "$dir/server-$s.log" $flags
    local srv=$server_pid
    t0=$(date +%s)
    server_ready "$port" "$name" "$srv" && ready=1
    echo "server $s: ready=$ready after $(($(date +%s) - t0)) s" >> "$dir/times.txt"
    if [ "$ready" = 1 ]; then
      for c in $loads; do
        for r in $(seq "$runs"); do
          bench_level "$dir/s$s-c$c-$r" "$port" "$name" "$c" $((seed0 + 1000 * s + 10 * c + r))
          echo "server $s c$c run $r done at $(($(date +%s) - t0)) s" >> "$dir/times.txt"
        done
      done
    fi
    stop_server "$srv"
  done
  if command -v nvidia-smi > /dev/null; then leftovers_check; fi
}
source "$(dirname "$0")/background.sh"
background_main "$@"
