#!/bin/bash
# On the GPU machine (device kit installed, /tmp/st/env.sh): GLM-4.6V-Flash with its vision tower on real vLLM
# (the weightless folder of autotune.testing.weightless_vlm, --load-format dummy), requests with 0, 1, 2 and 4
# images, and the figures the sim's vision constants (autotune/calibration/h200.yaml) are fitted to and judged on.
# Runs in the background; everything lands in DIR, commands.txt lists every command as it ran.
#   bash benchmarks/gpu/vlm_images.sh start [DIR]    # returns at once
#   bash benchmarks/gpu/vlm_images.sh status [DIR]   # progress; "done" when finished
# What it measures, on one server with vLLM's defaults:
#   - levels like a study's (closed loop at concurrency C, a warm-up wave of C, the first wave ramped over 2 s,
#     3 x C measured requests, text lengths +-50%) with IMAGES_LIST images of SIZE per request;
#   - one request at a time (concurrency 1) with the same image counts, then 1 image of each of SWEEP_SIZES:
#     the first token's wait without queueing, which the tower's time per image and resolution is fitted to;
# and on a second server with --skip-mm-profiling: its start-up time and KV cache, then the level with the most
# images (does it run out of memory?). Start-up lines (KV cache, encoder budget, init time) go to startup-*.txt.
# The prompts' text is token ids of the folder's tokenizer (--tokenizer): words it does not know would all be the
# same <unk> id, and identical prompts would hit vLLM's prefix cache.
# Variables (defaults): C=32 SIZE=896x896 IMAGES_LIST="0 1 2 4" SWEEP_SIZES="448x448 896x896 1344x1344 1792x1792"
#   IN_LEN=256 OUT_LEN=128 PORT=8041 MODEL_DIR=/tmp/vlm SERVE_FLAGS="" (more `vllm serve` flags for both servers)
#   PARTS="levels singles sweep skip" (which of the above to run: levels, single requests, the size sweep, the
#   --skip-mm-profiling server)
#   ENGINE=vllm, or sim to rehearse the whole protocol on a CPU against `autotune sim serve` (TIME_SCALE=20).
# Expected time on one H200: two cold starts of 2-3 min, 4 levels of 1-2 min, ~2 min of single requests.
# Summarise with: python benchmarks/vlm_images_table.py DIR
set -uo pipefail
dir=${2:-/tmp/vlm-images}; progress=times.txt
c=${C:-32}; size=${SIZE:-896x896}; images_list=${IMAGES_LIST:-"0 1 2 4"}
sweep_sizes=${SWEEP_SIZES:-"448x448 896x896 1344x1344 1792x1792"}
in_len=${IN_LEN:-256}; out_len=${OUT_LEN:-128}; port=${PORT:-8041}; model=${MODEL_DIR:-/tmp/vlm}
serve_flags=${SERVE_FLAGS:-}; engine=${ENGINE:-vllm}; parts=${PARTS:-"levels singles sweep skip"}
case "$engine" in
  vllm) serve="vllm serve" ;;
  sim) serve="python3 -m autotune sim serve"; serve_flags="$serve_flags --gpu-type h200 --time-scale ${TIME_SCALE:-20}" ;;
  *) echo "ENGINE must be vllm or sim, got $engine" >&2; exit 2 ;;
esac
job_vars="c size images_list sweep_sizes in_len out_len port model serve serve_flags srv parts"
srv=""

run() {  # a command, logged in commands.txt as it runs
  echo "$*" >> "$dir/commands.txt"
  "$@"
}

start_server() {  # NAME [flags]: start, wait until it serves (15 min at most), keep its start-up lines
  local name=$1 t0
  shift
  port_taken "$port" 2>> "$dir/times.txt" && { echo "server $name: not started" >> "$dir/times.txt"; return 1; }
  echo "setsid $serve $model --load-format dummy --port $port --served-model-name m $serve_flags $*" >> "$dir/commands.txt"
  # shellcheck disable=SC2086  # serve and serve_flags are words
  setsid $serve "$model" --load-format dummy --port "$port" --served-model-name m $serve_flags "$@" \
    > "$dir/server-$name.log" 2>&1 &
  srv=$!
  t0=$(date +%s)
  for i in $(seq 450); do
    curl -sf "localhost:$port/v1/models" | grep -q '"m"' && break
    kill -0 "$srv" 2> /dev/null || { echo "server $name exited" >> "$dir/times.txt"; return 1; }
    sleep 2
  done
  echo "server $name ready after $(($(date +%s) - t0)) s" >> "$dir/times.txt"
  grep -E "Model loading took|KV cache|Maximum concurrency|[Ee]ncoder cache|profil|init engine" \
    "$dir/server-$name.log" > "$dir/startup-$name.txt"
}

stop_server() {  # the process group, then wait for the port to close
  kill -TERM -"$srv" 2> /dev/null
  for i in $(seq 60); do kill -0 -"$srv" 2> /dev/null || break; sleep 1; done
  kill -KILL -"$srv" 2> /dev/null
  for i in $(seq 30); do curl -sf "localhost:$port/health" > /dev/null || break; sleep 1; done
}

has_part() { [[ " $parts " == *" $1 "* ]]; }

bench() {  # NAME WORKLOAD CONCURRENCY WARMUP MEASURED SEED
  local ramp=0
  [ "$3" -gt 1 ] && ramp=2
  run python3 -m autotune bench --url "http://127.0.0.1:$port" --model m --endpoint chat --tokenizer "$model" \
    --workload "$2" --concurrency "$3" --warmup "$4" --ramp-s "$ramp" --num-prompts "$5" --whole-run --seed "$6" \
    --scrape-metrics --records "$dir/$1.jsonl.gz" --json > "$dir/$1.json" 2> "$dir/$1.err"
  echo "$1 done (exit $?) at $(date +%T)" >> "$dir/times.txt"
}

job() {
  date > "$dir/times.txt"
  run python3 -m autotune.testing.weightless_vlm "$model" --check > "$dir/model-check.txt" 2>&1
  { python3 -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__,
                'transformers', transformers.__version__)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } > "$dir/versions.txt" 2>&1
  if { has_part levels || has_part singles || has_part sweep; } && start_server default; then
    if has_part levels; then
      for n in $images_list; do
        bench "level-c$c-img$n" "mm:$in_len:$out_len:$n:$size:range=0.5" "$c" "$c" $((3 * c)) $((100 + n))
      done
    fi
    if has_part singles; then
      for n in $images_list; do
        bench "single-img$n" "mm:$in_len:$out_len:$n:$size" 1 2 10 $((200 + n))
      done
    fi
    if has_part sweep; then
      for s in $sweep_sizes; do
        bench "single-img1-$s" "mm:$in_len:$out_len:1:$s" 1 2 10 300
      done
    fi
    stop_server
  fi
  local most
  most=$(printf '%s\n' $images_list | sort -n | tail -1)
  if has_part skip && start_server skip-profiling --skip-mm-profiling; then
    bench "skip-profiling-c$c-img$most" "mm:$in_len:$out_len:$most:$size:range=0.5" "$c" "$c" $((3 * c)) 400
    stop_server
  fi
  leftovers_check
}
source "$(dirname "$0")/background.sh"
background_main "$@"
