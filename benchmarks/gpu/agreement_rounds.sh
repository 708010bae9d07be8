#!/bin/bash
# On the GPU (device kit installed): one vLLM server with its default flags, then ROUNDS rounds of our
# `autotune bench` and `vllm bench serve`, alternating, on that server: same workload (random 1024/512 text
# prompts from the model's tokenizer, fixed lengths, ignore_eos), same protocol (concurrency 64, PROMPTS prompts (default 256),
# synchronized start, no warm-up), server-default temperature. Every run has its own seed, so no run sees
# prompts an earlier one sent (vLLM's prefix cache stays cold). Results in $OUT/agreement/.
# With RATE, both tools send open-loop Poisson arrivals at RATE requests/s instead (a TTFT that is a property
# of the server, not of a synchronized wave): `--rate` in ours, `--request-rate` in vLLM's.
#   [CUDA_VISIBLE_DEVICES=i] bash benchmarks/gpu/agreement_rounds.sh [ROUNDS] [PORT] [RATE] [PROMPTS]
# Summarise here with: python3 benchmarks/gpu/agreement_table.py DIR
set -uo pipefail
. /tmp/st/env.sh
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
rounds=${1:-3}; port=${2:-8011}; rate=${3:-}; prompts=${4:-256}
if [ -n "$rate" ]; then ours_load=(--rate "$rate"); vllm_load=(--request-rate "$rate" --burstiness 1.0)
else ours_load=(--concurrency 64); vllm_load=(--max-concurrency 64); fi
out=/tmp/st/agreement; mkdir -p "$out"
setsid vllm serve /tmp/model --load-format dummy --port "$port" --served-model-name m > "$out/server.log" 2>&1 &
srv=$!
cleanup() { kill -TERM -- -$srv 2>/dev/null; sleep 5; kill -KILL -- -$srv 2>/dev/null; }
trap cleanup EXIT; trap "exit 143" TERM INT
for i in $(seq 200); do curl -sf "localhost:$port/health" >/dev/null && break; sleep 2; done
echo "server ready after ~$((i * 2)) s" | tee "$out/times.txt"
for r in $(seq "$rounds"); do
  t0=$(date +%s)
  python3 -m autotune bench --url "http://127.0.0.1:$port" --model m --workload random:1024:512 --tokenizer /tmp/model \
    "${ours_load[@]}" --num-prompts "$prompts" --seed "$r" --scrape-metrics --records "$out/ours-$r.jsonl.gz" --json > "$out/ours-$r.json" 2> "$out/ours-$r.err"
  t1=$(date +%s)
  vllm bench serve --backend vllm --base-url "http://127.0.0.1:$port" --model m --tokenizer /tmp/model \
    --dataset-name random --random-input-len 1024 --random-output-len 512 --num-prompts "$prompts" "${vllm_load[@]}" \
    --ignore-eos --seed "$((100 + r))" --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,90,95,99 \
    --save-result --save-detailed --result-dir "$out" --result-filename "vllm-$r.json" > "$out/vllm-$r.log" 2>&1
  t2=$(date +%s)
  echo "round $r: ours $((t1 - t0)) s, vllm $((t2 - t1)) s" | tee -a "$out/times.txt"
done
