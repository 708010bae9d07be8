#!/bin/bash
# On a two-GPU machine (nvidia-h200-x2; device kit installed, /tmp/st/env.sh): the weightless GLM-4.6V folder
# (106.9 B parameters, text backbone only; benchmarks/gpu/mkmodel_glm46v.py) served by real vLLM with
# --load-format dummy in each parallel layout of LAYOUTS, one server at a time on both GPUs (issue #20). Per layout:
# the seconds until it serves, its start-up lines (model GiB per rank, KV cache per engine, max concurrency, init
# time), GPU memory while it serves, and optionally a short closed-loop load; then the server's process group is
# stopped and the next one waits until the port and both GPUs' memory are free. A layout that fails to start is
# recorded (its log tail) and the job goes on. Everything lands in DIR; commands.txt lists every command as it ran.
#   bash benchmarks/gpu/moe_layouts.sh start [DIR]    # returns at once
#   bash benchmarks/gpu/moe_layouts.sh status [DIR]   # progress; "done" when finished
#   bash benchmarks/gpu/moe_layouts.sh plan [DIR]     # no server: the commands and the memory plan's figures only
# Compare with the memory plan:  python benchmarks/moe_layouts_table.py DIR [--json]
#
# Layouts: names of dash-joined parts, each one flag: tpN --tensor-parallel-size N, dpN --data-parallel-size N,
# ep --enable-expert-parallel, fp8w --quantization fp8 (online fp8 weights), kvfp8 --kv-cache-dtype fp8, lenNk
# --max-model-len N*1024. The default six, in order of importance (bf16 weights are 199 GiB: TP2 puts 99.6 GiB on
# each H200; DP2 replicates everything but the routed experts, 106.3 GiB per GPU in bf16, whose KV cache (109k
# tokens) is then below the default max-model-len 131,072: the issue's DP2 layouts use fp8 weights, 54.3 GiB):
#   1 tp2                 TP2, bf16 weights, bf16 KV: vLLM's default for two GPUs; the plan's TP-sharded experts
#   2 dp2-ep-fp8w         DP2 + EP, fp8 weights: experts spread over the DP ranks, online fp8 (embedding, LM head bf16)
#   3 tp2-ep              TP2 + EP: the plan says the same bytes as tp2; EP against TP in throughput
#   4 tp2-kvfp8           fp8 KV: twice the tokens in the plan
#   5 dp2-ep-fp8w-kvfp8
#   6 tp2-ep-kvfp8
# Also worth a run when time is left: dp2-ep-kvfp8 (bf16 weights, planned to fit with fp8 KV), dp2-ep (bf16 weights
# and KV: planned to be refused, "To serve at least one request with the models's max seq len"), tp2-fp8w.
#
# Expected time (estimated, not measured: no model of this size has started on these machines yet): the 9B dense
# model started cold in 89-134 s on an H200; this one initialises ~100 GiB of dummy weights per GPU, compiles 46
# layers, JIT-compiles the Triton MoE kernels (no tuned config for this shape) and captures CUDA graphs over two
# ranks: assume 3-5 min per cold start, ~1 min of load (BENCH), ~0.5 min to stop and free the GPUs: 4.5-6.5 min
# per layout, 27-39 min for the six. That does not fit one 30-minute session (machine start and kit install take
# ~3 min of it): a layout starts only while LAYOUT_S (330 s) fits before BUDGET_S (1,320 s after the job's start);
# expect the first four in one session, the others later with LAYOUTS="dp2-ep-fp8w-kvfp8 tp2-ep-kvfp8".
# Variables (defaults): LAYOUTS (the six above) MODEL_DIR=/tmp/glm46v TOKENIZER_FROM=/tmp/model PORT=8051
#   SERVE_FLAGS="" (more `vllm serve` flags for every layout) READY_TIMEOUT_S=900 (or until the budget ends)
#   BUDGET_S=1320 LAYOUT_S=330
#   BENCH=1 C=64 WAVES=3 (measured requests: WAVES x C, after a warm-up wave of C) WORKLOAD=random:1024:128:0.5
#   MEM_FREE_MIB=1024 (a GPU counts as free below this)
#   ENGINE=vllm, or sim to rehearse the whole protocol on a CPU against `autotune sim serve` (TIME_SCALE=20).
# shellcheck source-path=SCRIPTDIR
set -uo pipefail
cmd=${1:-status}
dir=${2:-/tmp/moe-layouts}; progress=times.txt; status_lines=6
layouts=${LAYOUTS:-"tp2 dp2-ep-fp8w tp2-ep tp2-kvfp8 dp2-ep-fp8w-kvfp8 tp2-ep-kvfp8"}
model=${MODEL_DIR:-/tmp/glm46v}; tokenizer_from=${TOKENIZER_FROM-/tmp/model}; port=${PORT:-8051}
serve_flags=${SERVE_FLAGS:-}; engine=${ENGINE:-vllm}
ready_timeout_s=${READY_TIMEOUT_S:-900}; budget_s=${BUDGET_S:-1320}; layout_s=${LAYOUT_S:-330}
bench_on=${BENCH:-1}; c=${C:-64}; waves=${WAVES:-3}; workload=${WORKLOAD:-random:1024:128:0.5}
mem_free_mib=${MEM_FREE_MIB:-1024}
case "$engine" in
  vllm) serve="vllm serve" ;;
  sim) serve="python3 -m autotune sim serve"; serve_flags="$serve_flags --gpu-type h200 --time-scale ${TIME_SCALE:-20}" ;;
  *) echo "ENGINE must be vllm or sim, got $engine" >&2; exit 2 ;;
esac
tag=$(date +%s)  # served names moe-LAYOUT-TAG: unique to this job
job_vars="layouts model tokenizer_from port serve serve_flags ready_timeout_s budget_s layout_s bench_on c waves
  workload mem_free_mib tag srv srv_start served"
srv=""; srv_start=""; served=""

layout_flags() {  # NAME -> its `vllm serve` flags; fails on a part it does not know
  local part n out=""
  for part in ${1//-/ }; do
    case "$part" in
      tp[1-9]|tp[1-9][0-9]) out+=" --tensor-parallel-size ${part#tp}" ;;
      dp[1-9]|dp[1-9][0-9]) out+=" --data-parallel-size ${part#dp}" ;;
      ep) out+=" --enable-expert-parallel" ;;
      fp8w) out+=" --quantization fp8" ;;
      kvfp8) out+=" --kv-cache-dtype fp8" ;;
      len*k) n=${part#len}; n=${n%k}; [[ $n =~ ^[0-9]+$ ]] || return 1; out+=" --max-model-len $((n * 1024))" ;;
      *) return 1 ;;
    esac
  done
  echo "${out# }"
}

run() {  # a command, logged in commands.txt as it runs
  echo "$*" >> "$dir/commands.txt"
  "$@"
}

say() {  # a progress line with the time
  echo "$(date +%T) $*" >> "$dir/times.txt"
}

serve_cmd() {  # NAME -> the server's command line, as run and as moe_layouts_table.py reads it (cmd.txt)
  echo "$serve $model --load-format dummy --port $port --served-model-name moe-$1-$tag $(layout_flags "$1") $serve_flags"
}

gpus_busy() {  # prints why the port or the GPUs are not free; nothing when both are
  local used u busy=""
  curl -s -o /dev/null -m 2 "http://127.0.0.1:$port/" && busy="port $port answers;"
  if command -v nvidia-smi > /dev/null; then
    used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | tr -d ' ' | tr '\n' ' ')
    for u in $used; do
      [ "$u" -gt "$mem_free_mib" ] 2> /dev/null && { busy="$busy GPU memory used (MiB): $used"; break; }
    done
  fi
  echo "$busy"
}

wait_released() {  # until the port and both GPUs are free (3 min at most); 1 if they are not
  local t0 busy
  t0=$(date +%s)
  for _ in $(seq 90); do
    busy=$(gpus_busy)
    [ -z "$busy" ] && { say "port and GPUs free after $(($(date +%s) - t0)) s"; return 0; }
    sleep 2
  done
  say "NOT free after $(($(date +%s) - t0)) s: $busy"
  return 1
}

start_server() {  # NAME TIMEOUT_S: start it, wait until it serves its own name; 0 ready, 1 exited, 2 timed out
  local name=$1 timeout_s=$2 ldir=$dir/$1 t0
  served="moe-$name-$tag"
  serve_cmd "$name" > "$ldir/cmd.txt"
  echo "setsid $(cat "$ldir/cmd.txt")" >> "$dir/commands.txt"
  # shellcheck disable=SC2086,SC2046  # serve, the layout's flags and serve_flags are words
  setsid $serve "$model" --load-format dummy --port "$port" --served-model-name "$served" \
    $(layout_flags "$name") $serve_flags > "$ldir/server.log" 2>&1 &
  srv=$!
  srv_start=$(proc_start "$srv")
  t0=$(date +%s)
  while :; do
    # our server: its unique name on /v1/models (a server left on the port would answer another), our child alive
    if curl -s -m 5 "http://127.0.0.1:$port/v1/models" | grep -q "\"$served\""; then
      echo "ready_s=$(($(date +%s) - t0))" >> "$ldir/result.txt"
      say "$name: ready after $(($(date +%s) - t0)) s"
      return 0
    fi
    if ! kill -0 "$srv" 2> /dev/null; then
      wait "$srv"
      echo "exit_code=$?" >> "$ldir/result.txt"
      say "$name: server exited after $(($(date +%s) - t0)) s"
      return 1
    fi
    if [ $(($(date +%s) - t0)) -ge "$timeout_s" ]; then
      say "$name: not ready after $timeout_s s"
      return 2
    fi
    sleep 3
  done
}

proc_start() {  # PID -> its start time in clock ticks since boot (/proc/PID/stat field 22; the name may hold spaces)
  sed 's/.*) //' "/proc/$1/stat" 2> /dev/null | awk '{print $20}'
}

stop_server() {  # NAME: TERM our server's process group, KILL it after 90 s; nothing by pattern
  local ldir=$dir/$1 t0 signal=TERM
  [ -n "$srv" ] || return 0
  t0=$(date +%s)
  ps -eo pid,pgid,args | awk -v g="$srv" '$2 == g' > "$ldir/procs-at-stop.txt"
  # the group's leader is the server this job started: the same pid and start time (vLLM may retitle its processes,
  # so not by its arguments); once the leader is gone its group id cannot be reused while members are left
  if kill -0 "$srv" 2> /dev/null && [ "$(proc_start "$srv")" != "$srv_start" ]; then
    say "$1: pid $srv is not our server any more; left alone"
    srv=""
    return 1
  fi
  kill -TERM -"$srv" 2> /dev/null
  for _ in $(seq 90); do kill -0 -"$srv" 2> /dev/null || break; sleep 1; done
  if kill -0 -"$srv" 2> /dev/null; then
    signal=KILL
    kill -KILL -"$srv" 2> /dev/null
    for _ in $(seq 15); do kill -0 -"$srv" 2> /dev/null || break; sleep 1; done
  fi
  wait "$srv" 2> /dev/null
  echo "stop_s=$(($(date +%s) - t0))" >> "$ldir/result.txt"
  say "$1: stopped (SIG$signal) in $(($(date +%s) - t0)) s"
  srv=""
}

keep_startup_lines() {  # NAME: vLLM's start-up figures, every rank's line (Worker_TP0/TP1, EngineCore_DP0/DP1)
  grep -E "non-default args|rank [0-9]+ in world size|Model loading took|Available KV cache memory|GPU KV cache size|\
Maximum concurrency|torch\.compile take|Graph capturing finished|init engine|MoE config|Starting vLLM|\
Estimated CUDA graph memory|Desired GPU memory utilization" \
    "$dir/$1/server.log" > "$dir/$1/startup.txt"
}

bench() {  # NAME: a short closed-loop level against the server that is up
  local name=$1 tok=()
  [ -f "$model/tokenizer.json" ] && tok=(--tokenizer "$model")
  run python3 -m autotune bench --url "http://127.0.0.1:$port" --model "$served" "${tok[@]}" \
    --workload "$workload" --concurrency "$c" --warmup "$c" --ramp-s 2 --num-prompts $((waves * c)) --whole-run --seed 1 \
    --records "$dir/$name/bench.jsonl.gz" --json > "$dir/$name/bench.json" 2> "$dir/$name/bench.err"
  local rc=$?
  echo "bench_exit=$rc" >> "$dir/$name/result.txt"
  say "$name: load done (exit $rc)"
}

one_layout() {  # NAME SECONDS_LEFT: the wait for the server ends with the budget, at READY_TIMEOUT_S at most
  local name=$1 ldir=$dir/$1 rc timeout_s=$ready_timeout_s
  [ "$2" -lt "$timeout_s" ] && timeout_s=$2
  say "$name: starting (waits $timeout_s s at most)"
  start_server "$name" "$timeout_s"
  rc=$?
  keep_startup_lines "$name"
  if [ "$rc" -eq 0 ]; then
    echo "state=ready" >> "$ldir/result.txt"
    command -v nvidia-smi > /dev/null && \
      nvidia-smi --query-gpu=index,memory.used,memory.total --format=csv,noheader > "$ldir/gpu-serving.txt"
    [ "$bench_on" = 1 ] && bench "$name"
  else
    if [ "$rc" -eq 1 ]; then echo "state=exited" >> "$ldir/result.txt"; else echo "state=timeout" >> "$ldir/result.txt"; fi
    tail -n 60 "$ldir/server.log" > "$ldir/log-tail.txt"
  fi
  stop_server "$name"
}

write_commands() {  # every layout's folder and the command it runs (cmd.txt), so that a skipped one has its plan
  local name
  echo "$layouts" > "$dir/layouts.txt"
  for name in $layouts; do
    mkdir -p "$dir/$name"
    serve_cmd "$name" > "$dir/$name/cmd.txt"
  done
}

build_model() {
  run python3 benchmarks/gpu/mkmodel_glm46v.py "$model" ${tokenizer_from:+--tokenizer-from "$tokenizer_from"} \
    > "$dir/mkmodel.txt" 2>&1 || return 1
  cp "$model/config.json" "$dir/config.json"
}

job() {
  local t0 name left freed=1
  t0=$(date +%s)
  date > "$dir/times.txt"
  say "layouts: $layouts (budget $budget_s s, $layout_s s per layout)"
  build_model || { say "model folder failed: $(tail -n 3 "$dir/mkmodel.txt")"; leftovers_check; return; }
  write_commands
  { python3 -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } > "$dir/versions.txt" 2>&1
  wait_released || freed=0
  for name in $layouts; do
    left=$((budget_s - ($(date +%s) - t0)))
    if [ "$freed" = 0 ]; then
      echo "state=skipped" > "$dir/$name/result.txt"; say "$name: skipped (port or GPUs not free)"; continue
    fi
    if [ "$left" -lt "$layout_s" ]; then
      echo "state=skipped" > "$dir/$name/result.txt"; say "$name: skipped ($left s of the budget left)"; continue
    fi
    : > "$dir/$name/result.txt"
    one_layout "$name" "$left"
    wait_released || freed=0
  done
  say "all layouts done after $(($(date +%s) - t0)) s"
  leftovers_check
}

for name in $layouts; do
  layout_flags "$name" > /dev/null || { echo "unknown layout $name (parts: tpN dpN ep fp8w kvfp8 lenNk)" >&2; exit 2; }
done
if [ "$cmd" = plan ]; then  # no GPU: the model folder, each layout's command, the plan's figures
  mkdir -p "$dir"
  build_model && write_commands && python3 benchmarks/moe_layouts_table.py "$dir"
  exit
fi
# shellcheck source=background.sh
source "$(dirname "$0")/background.sh"
background_main "$@"
