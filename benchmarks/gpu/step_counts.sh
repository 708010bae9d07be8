#!/bin/bash
# On the GPU machine (device kit installed, /tmp/st/env.sh): how vLLM packs prefills beside decodes at the loads
# of an ITL-limited study (issue #21). For each configuration of CONFIGS, one fresh server (the weightless model),
# then a level shaped like a study's at each concurrency of LOADS (a warm-up wave of C, the first wave ramped over
# 2 s, 3 x C measured requests; seeded by C, so that no level repeats an earlier one's prompts, which vLLM's prefix
# cache would serve without their prefill), keeping every request's timings and inter-token gaps and, from vLLM's /metrics,
# the engine steps the level took by tokens per step (server_metrics.steps_by_tokens in the level's JSON).
# On a GPU, its clocks, power and temperature every 250 ms (gpu-telemetry.csv.gz; background.sh telemetry_start).
# Compare with the sim on the same requests: python benchmarks/step_counts_table.py DIR
#   bash benchmarks/gpu/step_counts.sh start [DIR]    # returns at once
#   bash benchmarks/gpu/step_counts.sh status [DIR]
# Variables (defaults): LOADS="16 40 64 128" WORKLOAD=random:1024:128:0.5 PORT=8061
#   CONFIGS="defaults batch2048" (defaults: no flag; batch2048: --max-num-batched-tokens 2048; batch16384 too;
#   NAME.N is NAME again on a server of its own, e.g. "defaults.1 defaults.2": server against server on one host)
#   MODEL_DIR=/tmp/model (the kit's weightless model; its tokenizer makes the prompts)
#   TRACE=1: vLLM runs with benchmarks/gpu/vllm_trace on its path, writing per-request timestamps into
#   DIR/trace-CONFIG/ (read with python benchmarks/vllm_trace_table.py DIR); TRACE=loop: also the API server's
#   tokenizations, output batches and stream chunks
#   ENGINE=vllm, or sim to rehearse on a CPU against `autotune sim serve` (its /metrics has the step, queue and
#   prefill histograms as vLLM's)
# Expected time on one H200: a cold start of ~2 min per configuration, then ~20-40 s per level: ~7 min for two.
set -uo pipefail
dir=${2:-/tmp/step-counts}; progress=times.txt; status_lines=3
loads=${LOADS:-"16 40 64 128"}; workload=${WORKLOAD:-random:1024:128:0.5}; port=${PORT:-8061}
configs=${CONFIGS:-"defaults batch2048"}; engine=${ENGINE:-vllm}; model=${MODEL_DIR:-/tmp/model}
trace=${TRACE:-0}
job_vars="loads workload port configs engine model trace"

config_flags() {  # NAME: its vllm serve flags (NAME.N: NAME again, on a fresh server of its own)
  case "${1%%.*}" in
    defaults) echo "" ;;
    batch*) local name=${1%%.*}; echo "--max-num-batched-tokens ${name#batch}" ;;
    *) echo "unknown configuration $1" >&2; return 1 ;;
  esac
}

job() {
  printf 'loads=%s\nworkload=%s\nengine=%s\nmodel=%s\n' "$loads" "$workload" "$engine" "$model" > "$dir/settings.txt"
  telemetry_start
  for cfg in $configs; do
    local flags srv t0 ready=0
    flags=$(config_flags "$cfg") || continue
    echo "$cfg: $flags" >> "$dir/configs.txt"
    local server_env=()
    if [ "$trace" != 0 ]; then
      server_env=(env "PYTHONPATH=$PWD/benchmarks/gpu/vllm_trace:$PYTHONPATH" "VLLM_TRACE_DIR=$dir/trace-$cfg")
      [ "$trace" = loop ] && server_env+=(VLLM_TRACE_LOOP=1)
    fi
    if port_taken "$port" 2>> "$dir/times.txt"; then echo "$cfg: not started" >> "$dir/times.txt"; continue; fi
    # a name no earlier server has: one still holding the port (this server then dies) must not pass for it
    local name; name="m-$cfg-$(date +%s%N)"
    # shellcheck disable=SC2086  # flags are words
    start_server "$port" "$name" "$dir/server-$cfg.log" $flags
    srv=$server_pid
    t0=$(date +%s)
    server_ready "$port" "$name" "$srv" && ready=1
    echo "$cfg: ready=$ready after $(($(date +%s) - t0)) s" >> "$dir/times.txt"
    if [ "$ready" = 1 ]; then
      for c in $loads; do
        timed_level "$cfg" "$port" "$name" "$c" "$c"
        echo "$cfg: c$c done at $(($(date +%s) - t0)) s" >> "$dir/times.txt"
      done
    fi
    stop_server "$srv"
  done
  telemetry_stop
  if command -v nvidia-smi > /dev/null; then leftovers_check; fi
}
source "$(dirname "$0")/background.sh"
background_main "$@"
