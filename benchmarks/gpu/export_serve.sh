#!/bin/bash
# On the GPU machine (device kit installed, /tmp/st/env.sh, the weightless model in /tmp/model): does real vLLM
# accept the file `autotune export --format config` writes? A short sim study of /tmp/model over a space whose every
# point turns a boolean off and sets a JSON-valued flag gives a winner; `autotune export` writes it into a scratch
# git work tree; `vllm serve --config FILE --load-format dummy` starts from that file alone (its `model:` key names
# /tmp/model), must answer /health, list its served name and complete one request, and is stopped through its
# process group. vLLM's own "non-default args" line is kept and every key of the file is checked against it
# (export_serve_check.py). Runs in the background; results in $DIR (result.json, serve.log, the exported files).
#   bash benchmarks/gpu/export_serve.sh start [DIR]   # returns at once
#   bash benchmarks/gpu/export_serve.sh status [DIR]  # prints progress; "done" when finished
set -uo pipefail
dir=${2:-/tmp/export-serve}; progress=progress.log
port=8123
job_vars=port
job() {
  cat > "$dir/space.yaml" <<'EOF'
description: every point turns a boolean off and sets a JSON flag, so the exported file has every kind of value
params:
  max-num-seqs: {type: int, low: 128, high: 1024, step: 128}
  async-scheduling: {type: categorical, choices: [true, false]}
fixed:
  enable-prefix-caching: false
  kv-cache-dtype: fp8
  enable-chunked-prefill: true
  max-num-batched-tokens: 4096
  gpu-memory-utilization: 0.85
  compilation-config: {cudagraph_capture_sizes: [1, 2, 4, 8, 16, 32, 64, 128]}
EOF
  echo "sim study" > "$dir/$progress"
  python3 -m autotune run --model /tmp/model --engine sim --gpus 1 --p99-ms 500 --space "$dir/space.yaml" \
    --trials 4 --top-k 1 --repeats 1 --workload random:512:128 --study export-check \
    --storage "sqlite:///$dir/autotune.db" --out "$dir/out" > "$dir/run.out" 2> "$dir/run.log"
  git init -q "$dir/deploy"
  python3 -m autotune export --study export-check --to "$dir/deploy" --format config,sh \
    --storage "sqlite:///$dir/autotune.db" > "$dir/export.out" 2>&1
  local config
  config=$(ls "$dir"/deploy/*.vllm.yaml 2>/dev/null)
  if [ -z "$config" ]; then
    echo '{"error": "no exported config: see run.log and export.out"}' > "$dir/result.json"
    return
  fi
  echo "vllm serve --config $config" >> "$dir/$progress"
  local t0 healthy=0 pid
  if port_taken "$port" 2>> "$dir/$progress"; then
    echo "{\"error\": \"port $port already answers: another server is running\"}" > "$dir/result.json"
    return
  fi
  t0=$(date +%s)
  setsid vllm serve --config "$config" --load-format dummy --port "$port" --served-model-name export-check \
    > "$dir/serve.log" 2>&1 < /dev/null &
  pid=$!
  for _ in $(seq 1 180); do
    kill -0 "$pid" 2>/dev/null || break
    if curl -sf "localhost:$port/health" > /dev/null; then healthy=1; break; fi
    sleep 5
  done
  echo $(( $(date +%s) - t0 )) > "$dir/ready_s"
  curl -s "localhost:$port/v1/models" > "$dir/models.json"
  curl -s "localhost:$port/v1/completions" -H 'Content-Type: application/json' \
    -d '{"model": "export-check", "prompt": "Hello", "max_tokens": 16, "ignore_eos": true}' > "$dir/completion.json"
  echo "stopping" >> "$dir/$progress"
  kill -TERM -"$pid" 2>/dev/null
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -KILL -"$pid" 2>/dev/null
  leftovers_check
  PYTHONPATH=$PWD python3 benchmarks/gpu/export_serve_check.py "$dir" "$config" "$healthy" "$port" > "$dir/result.json"
  cat "$dir/result.json" >> "$dir/$progress"
}
source "$(dirname "$0")/background.sh"
background_main "$@"
