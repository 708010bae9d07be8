#!/bin/bash
# On the GPU (device kit installed): one vLLM server with its default flags, then ROUNDS rounds of our
# `autotune bench` and `vllm bench serve`, alternating, on that server: same workload (random 1024/512 text
# prompts from the model's tokenizer, fixed lengths, ignore_eos), same protocol (concurrency 64, 256 prompts,
# synchronized start, no warm-up), server-default temperature. Every run has its own seed, so no run sees
# prompts an earlier one sent (vLLM's prefix cache stays cold). Results in $OUT/agreement/.
#   [CUDA_VISIBLE_DEVICES=i] bash benchmarks/gpu/agreement_rounds.sh [ROUNDS] [PORT]
# Summarise here with: python3 benchmarks/gpu/agreement_table.py DIR
set -uo pipefail
. /tmp/st/env.sh
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
rounds=${1:-3}; port=${2:-8011}
out=/tmp/st/agreement; mkdir -p "$out"
setsid vllm serve /tmp/model --load-format dummy --port "$port" --served-model-name m > "$out/server.log" 2>&1 &
srv=$!
cleanup() { kill -TERM -- -$srv 2>/dev/null; sleep 5; kill -KILL -- -$srv 2>/dev/null; }
trap cleanup EXIT; trap "exit 143" TERM INT
for i in $(seq 200); do curl -sf "localhost:$port/health" >/dev/null && break; sleep 2; done
echo "server ready after ~$((i * 2)) s" | tee "$out/times.txt"
for r in $(seq "$rounds"); do
  t0=$(date +%s.%N)
  python3 -m autotune bench --url "http://127.0.0.1:$port" --model m --workload random:1024:512 --tokenizer /tmp/model \
    --concurrency 64 --num-prompts 256 --seed "$r" --scrape-metrics --json > "$out/ours-$r.json" 2> "$out/ours-$r.err"
  t1=$(date +%s.%N)
  vllm bench serve --backend vllm --base-url "http://127.0.0.1:$port" --model m --tokenizer /tmp/model \
    --dataset-name random --random-input-len 1024 --random-output-len 512 --num-prompts 256 --max-concurrency 64 \
    --ignore-eos --seed "$((100 + r))" --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,90,95,99 \
    --save-result --result-dir "$out" --result-filename "vllm-$r.json" > "$out/vllm-$r.log" 2>&1
  t2=$(date +%s.%N)
  echo "round $r: ours $(echo "$t1 - $t0" | bc) s, vllm $(echo "$t2 - $t1" | bc) s" | tee -a "$out/times.txt"
done
