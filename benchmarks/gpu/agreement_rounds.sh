#!/bin/bash
# On the GPU (device kit installed): one vLLM server with its default flags, then ROUNDS rounds of our
# `autotune bench` and `vllm bench serve`, alternating, on that server: same workload (random 1024/512 text
# prompts from the model's tokenizer, fixed lengths, ignore_eos), same protocol (concurrency 64, PROMPTS prompts (default 256),
# synchronized start, no warm-up), server-default temperature. Every run has its own seed, so no run sees
# prompts an earlier one sent (vLLM's prefix cache stays cold). Results in $OUT/agreement/.
# With RATE, both tools send open-loop Poisson arrivals at RATE requests/s instead (a TTFT that is a property
# of the server, not of a synchronized wave): `--rate` in ours, `--request-rate` in vLLM's.
# MORE_PHASES="ROUNDS:RATE:PROMPTS ...": more rounds on the same server afterwards (e.g. a low load, where a P99
# is a property of the server rather than of a few bursts). With MORE_PHASES every phase writes to
# /tmp/st/agreement/rate<RATE>-n<PROMPTS>/, and a phase that repeats a rate and count adds rounds to its folder.
# STREAM=identical (needs RATE): both tools send the identical stream in a round: vLLM's `custom` dataset and our
# jsonl trace with the same text prompts, and vLLM's own Poisson send times for its --seed (identical_stream.py).
# The prefix cache is reset before every run (the server runs with VLLM_SERVER_DEV_MODE=1 for that), and the
# tools take turns going first. Each round's stream check lands in check-N.json. PAIR=ours-ours or vllm-vllm runs
# one tool twice on each stream instead (files ours2-N / vllm2-N): the server's own spread between identical runs.
# PAIR may list several, one per round in turn (PAIR="ours-ours vllm-vllm ours-vllm"); in an ours-ours round
# ours2 goes first in even rounds. NO_SCRAPE="ours2" runs those names without --scrape-metrics (its effect on the
# server, by the pair's difference). Both tools keep each request's inter-token gaps (ours --records-itl, vLLM's
# --save-detailed); `itl_gaps.py pack DIR` shrinks them.
# Around every run of either tool the server's latency histograms are saved (NAME-N.prom0 before, .prom1 after):
# `server_side.py DIR` gives each run's server-side means beside the tool's own.
# FAKE_LATENCY=TTFT_MS:ITL_MS: the same rounds against autotune's fixed-latency fake server (on core FAKE_CPU,
# default 12) instead of vLLM, results in /tmp/st/truth/: each tool's error against a known truth.
#   [CUDA_VISIBLE_DEVICES=i] [MORE_PHASES=...] [STREAM=identical] [FAKE_LATENCY=50:8] bash benchmarks/gpu/agreement_rounds.sh [ROUNDS] [PORT] [RATE] [PROMPTS]
# Summarise here with: python3 benchmarks/gpu/agreement_table.py DIR
set -uo pipefail
. /tmp/st/env.sh
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
rounds=${1:-3}; port=${2:-8011}; rate=${3:-}; prompts=${4:-256}
out=/tmp/st/agreement; mkdir -p "$out"
stream=${STREAM:-own}
[ "$stream" = identical ] && export VLLM_SERVER_DEV_MODE=1
if [ -n "${FAKE_LATENCY-}" ]; then  # TTFT_MS:ITL_MS: our fixed-latency fake server instead of vLLM (the truth is known)
  IFS=: read -r fake_ttft fake_itl <<< "$FAKE_LATENCY"
  out=/tmp/st/truth; mkdir -p "$out"
  setsid python3 -m autotune.testing.fakeserver --port "$port" --cpu "${FAKE_CPU:-12}" \
    --config "{\"models\": [\"m\"], \"ttft_ms\": $fake_ttft, \"itl_ms\": $fake_itl}" > "$out/server.log" 2>&1 &
  health=/v1/models
else
  setsid vllm serve /tmp/model --load-format dummy --port "$port" --served-model-name m > "$out/server.log" 2>&1 &
  health=/health
fi
srv=$!
cleanup() { kill -TERM -- -$srv 2>/dev/null; sleep 5; kill -KILL -- -$srv 2>/dev/null; }
trap cleanup EXIT; trap "exit 143" TERM INT
for i in $(seq 200); do curl -sf "localhost:$port$health" >/dev/null && break; sleep 2; done
echo "server ready after ~$((i * 2)) s" | tee "$out/times.txt"
reset_cache() { echo "$(date +%T) reset_prefix_cache: $(curl -s -X POST "localhost:$port/reset_prefix_cache")" >> "$1"; }
histograms() {  # FILE: the server's latency histograms' sums and counts now
  curl -s "localhost:$port/metrics" | grep -E '^vllm:[a-z0-9_]+_seconds_(sum|count)' > "$1"
}
identical_round() {  # DIR ROUND RATE PROMPTS SEED
  local dir=$1 r=$2 rate=$3 prompts=$4 seed=$5 sdir=$1/stream-$2 t0 t1 t2
  python3 benchmarks/gpu/identical_stream.py make --tokenizer /tmp/model --num-prompts "$prompts" --rate "$rate" \
    --seed "$seed" --input-len 1024 --output-len 512 --dir "$sdir" > "$sdir.make.json"
  ours() {  # NAME: the files' prefix (ours, or ours2 for a second run of ours)
    local scrape=--scrape-metrics
    [[ " ${NO_SCRAPE-} " == *" $1 "* ]] && scrape=
    reset_cache "$dir/$1-$r.err"; histograms "$dir/$1-$r.prom0"
    python3 -m autotune bench --url "http://127.0.0.1:$port" --model m --workload "jsonl:$sdir/trace.jsonl" \
      --num-prompts "$prompts" $scrape --records "$dir/$1-$r.jsonl.gz" --records-itl --json \
      > "$dir/$1-$r.json" 2>> "$dir/$1-$r.err"
    sleep 1; histograms "$dir/$1-$r.prom1"  # a second after the last request ended: all recorded
  }
  theirs() {  # NAME: vllm, or vllm2
    reset_cache "$dir/$1-$r.log"; histograms "$dir/$1-$r.prom0"
    vllm bench serve --backend vllm --base-url "http://127.0.0.1:$port" --model m --tokenizer /tmp/model \
      --dataset-name custom --dataset-path "$sdir/vllm-prompts.jsonl" --disable-shuffle --skip-chat-template \
      --custom-output-len 512 --ignore-eos --num-prompts "$prompts" --request-rate "$rate" --burstiness 1.0 \
      --seed "$seed" --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,90,95,99 \
      --save-result --save-detailed --result-dir "$dir" --result-filename "$1-$r.json" >> "$dir/$1-$r.log" 2>&1
    sleep 1; histograms "$dir/$1-$r.prom1"  # a second after the last request ended: all recorded
  }
  local pairs=(${PAIR:-ours-vllm}); local pair=${pairs[$(((r - 1) % ${#pairs[@]}))]}
  t0=$(date +%s)
  case "$pair" in  # the controls run one tool twice on the stream: the server's own run-to-run spread
    ours-ours) if [ $((r % 2)) -eq 1 ]; then ours ours; t1=$(date +%s); ours ours2
               else ours ours2; t1=$(date +%s); ours ours; fi ;;
    vllm-vllm) theirs vllm; t1=$(date +%s); theirs vllm2 ;;
    *) if [ $((r % 2)) -eq 1 ]; then ours ours; t1=$(date +%s); theirs vllm; else theirs vllm; t1=$(date +%s); ours ours; fi ;;
  esac
  t2=$(date +%s)
  [ -f "$dir/vllm-$r.json" ] && [ -f "$dir/ours-$r.jsonl.gz" ] && python3 benchmarks/gpu/identical_stream.py check \
    "$sdir/trace.jsonl" "$dir/vllm-$r.json" "$dir/ours-$r.jsonl.gz" > "$dir/check-$r.json" 2>&1
  gzip -f "$sdir/vllm-prompts.jsonl"; rm -f "$sdir/trace.jsonl"  # the trace is the same prompts plus times
  local order; order=$([ $((r % 2)) -eq 1 ] && echo "ours first" || echo "vllm first")
  case "$pair" in
    ours-ours) order="ours-ours control, $([ $((r % 2)) -eq 1 ] && echo ours || echo ours2) first${NO_SCRAPE:+, no scrape: $NO_SCRAPE}" ;;
    vllm-vllm) order="vllm-vllm control" ;;
  esac
  echo "$dir round $r (identical stream, rate $rate, $prompts prompts, $order): $((t1 - t0)) s + $((t2 - t1)) s" | tee -a "$out/times.txt"
}
phase() {  # DIR ROUNDS RATE PROMPTS SEED_BASE
  local dir=$1 n=$2 rate=$3 prompts=$4 base=$5 ours_load vllm_load r i t0 t1 t2
  if [ -n "$rate" ]; then ours_load=(--rate "$rate"); vllm_load=(--request-rate "$rate" --burstiness 1.0)
  else ours_load=(--concurrency 64 --warmup 0 --ramp-s 0 --whole-run); vllm_load=(--max-concurrency 64); fi
  mkdir -p "$dir"
  local done_before; done_before=$(ls "$dir"/ours-*.json 2>/dev/null | wc -l)
  [ "$stream" = identical ] && done_before=$(ls "$dir"/stream-*.make.json 2>/dev/null | wc -l)
  for i in $(seq "$n"); do
    r=$((done_before + i))
    if [ "$stream" = identical ]; then identical_round "$dir" "$r" "$rate" "$prompts" "$((base + r))"; continue; fi
    t0=$(date +%s)
    python3 -m autotune bench --url "http://127.0.0.1:$port" --model m --workload random:1024:512 --tokenizer /tmp/model \
      "${ours_load[@]}" --num-prompts "$prompts" --seed "$((base + r))" --scrape-metrics --records "$dir/ours-$r.jsonl.gz" \
      --json > "$dir/ours-$r.json" 2> "$dir/ours-$r.err"
    t1=$(date +%s)
    vllm bench serve --backend vllm --base-url "http://127.0.0.1:$port" --model m --tokenizer /tmp/model \
      --dataset-name random --random-input-len 1024 --random-output-len 512 --num-prompts "$prompts" "${vllm_load[@]}" \
      --ignore-eos --seed "$((base + 100 + r))" --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,90,95,99 \
      --save-result --save-detailed --result-dir "$dir" --result-filename "vllm-$r.json" > "$dir/vllm-$r.log" 2>&1
    t2=$(date +%s)
    echo "$dir round $r (rate ${rate:-closed loop 64}, $prompts prompts): ours $((t1 - t0)) s, vllm $((t2 - t1)) s" | tee -a "$out/times.txt"
  done
}
if [ -z "${MORE_PHASES-}" ]; then phase "$out" "$rounds" "$rate" "$prompts" 0; exit; fi
k=0
for spec in "$rounds:$rate:$prompts" $MORE_PHASES; do
  IFS=: read -r n r p <<< "$spec"
  phase "$out/rate$r-n$p" "$n" "$r" "$p" $((1000 * k)); k=$((k + 1))
done
