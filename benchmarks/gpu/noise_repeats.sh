#!/bin/bash
# On the GPU machine (device kit installed, /tmp/st/env.sh): the run-to-run spread of one load level, the
# figure every verdict must clear. SERVERS fresh vLLM servers (default flags, the weightless model) one after
# the other; on each, RUNS runs of `autotune bench` shaped like a study's level (closed loop at concurrency C,
# a warm-up wave of C requests, the first wave ramped over 2 s, 3 x C measured requests, random 1024/512 +-50%,
# fresh prompts each run), keeping every request's timings. Summarise with benchmarks/noise_table.py DIR.
#   SERVERS=2 RUNS=4 C=64 bash benchmarks/gpu/noise_repeats.sh start [DIR]   # returns at once
#   bash benchmarks/gpu/noise_repeats.sh status [DIR]
set -uo pipefail
dir=${2:-/tmp/noise}; progress=times.txt; status_lines=2
servers=${SERVERS:-2}; runs=${RUNS:-4}; c=${C:-64}; port0=${PORT:-8031}; seed0=${SEED0:-0}
job_vars="servers runs c port0 seed0"
job() {
  for s in $(seq "$servers"); do
    # each server on its own port: a server still releasing the previous port cannot answer for the next
    local port=$((port0 + s)) t0
    if port_taken "$port" 2>> "$dir/times.txt"; then echo "server $s: not started" >> "$dir/times.txt"; continue; fi
    setsid vllm serve /tmp/model --load-format dummy --port "$port" --served-model-name "m$s" \
      > "$dir/server-$s.log" 2>&1 &
    local srv=$!
    t0=$(date +%s)
    for i in $(seq 300); do curl -sf "localhost:$port/v1/models" | grep -q "\"m$s\"" && break; sleep 2; done
    echo "server $s ready after $(($(date +%s) - t0)) s" >> "$dir/times.txt"
    for r in $(seq "$runs"); do
      python3 -m autotune bench --url "http://127.0.0.1:$port" --model "m$s" --workload random:1024:512:0.5 \
        --concurrency "$c" --warmup "$c" --ramp-s 2 --num-prompts $((3 * c)) --seed $((seed0 + 100 * s + r)) \
        --records "$dir/s$s-$r.jsonl.gz" --records-itl --json > "$dir/s$s-$r.json" 2> "$dir/s$s-$r.err"
      echo "server $s run $r done at $(($(date +%s) - t0)) s" >> "$dir/times.txt"
    done
    kill -TERM -"$srv"
    for i in $(seq 60); do kill -0 -"$srv" 2>/dev/null || break; sleep 1; done
    kill -KILL -"$srv" 2>/dev/null
    # the next server starts once this one's GPU memory is back
    for i in $(seq 60); do
      [ "$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | sort -n | tail -1)" -lt 1000 ] && break
      sleep 1
    done
  done
  leftovers_check
}
source "$(dirname "$0")/background.sh"
background_main "$@"
