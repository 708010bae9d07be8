#!/bin/bash
# On the GPU machine (device kit installed, /tmp/st/env.sh, the weightless model in /tmp/model): does real vLLM
# accept the file `autotune export --format config` writes? A short sim study of /tmp/model over a space whose every
# point turns booleans off as well as on and sets a JSON-valued flag gives a winner; `autotune export` writes it
# into a scratch git work tree; `vllm serve --config FILE --load-format dummy` starts from that file alone (its
# `model:` key names /tmp/model), must answer /health, list its served name and complete one request, and is
# stopped through its process group. vLLM's own "non-default args" line is kept, and every key of the file is
# checked against it (export_serve_check.py). Runs in the background; results in $DIR (result.json, serve.log, the exported files).
#   bash benchmarks/gpu/export_serve.sh start [DIR]   # returns at once
#   bash benchmarks/gpu/export_serve.sh status [DIR]  # prints progress; "done" when finished
set -uo pipefail
cmd=${1:-status}; dir=${2:-/tmp/export-serve}
port=8123
case "$cmd" in
  start)
    rm -rf "$dir" && mkdir -p "$dir"
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
    setsid bash -c "
      . /tmp/st/env.sh
      cd '$PWD'
      echo study > '$dir/state'
      python3 -m autotune run --model /tmp/model --engine sim --gpus 1 --p99-ms 500 --space '$dir/space.yaml' \
        --trials 4 --top-k 1 --repeats 1 --workload random:512:128 --study export-check \
        --storage sqlite:///$dir/autotune.db --out '$dir/out' > '$dir/run.out' 2> '$dir/run.log'
      echo \$? > '$dir/run.rc'
      git init -q '$dir/deploy'
      python3 -m autotune export --study export-check --to '$dir/deploy' --format config,sh \
        --storage sqlite:///$dir/autotune.db > '$dir/export.out' 2>&1
      echo \$? > '$dir/export.rc'
      config=\$(ls '$dir'/deploy/*.vllm.yaml 2>/dev/null)
      if [ -z \"\$config\" ]; then
        echo '{\"error\": \"no exported config: see run.log and export.out\"}' > '$dir/result.json'
        echo done > '$dir/state'
        exit 1
      fi
      echo serve > '$dir/state'
      t0=\$(date +%s)
      setsid vllm serve --config \"\$config\" --load-format dummy --port $port --served-model-name export-check \
        > '$dir/serve.log' 2>&1 < /dev/null &
      echo \$! > '$dir/serve.pid'
      health=0
      for i in \$(seq 1 180); do
        kill -0 \$(cat '$dir/serve.pid') 2>/dev/null || break
        if curl -sf localhost:$port/health > /dev/null; then health=1; break; fi
        sleep 5
      done
      echo \$(( \$(date +%s) - t0 )) > '$dir/ready_s'
      curl -s localhost:$port/v1/models > '$dir/models.json'
      curl -s localhost:$port/v1/completions -H 'Content-Type: application/json' \
        -d '{\"model\": \"export-check\", \"prompt\": \"Hello\", \"max_tokens\": 16, \"ignore_eos\": true}' \
        > '$dir/completion.json'
      kill -TERM -\$(cat '$dir/serve.pid') 2>/dev/null
      for i in \$(seq 1 60); do kill -0 \$(cat '$dir/serve.pid') 2>/dev/null || break; sleep 1; done
      kill -KILL -\$(cat '$dir/serve.pid') 2>/dev/null
      sleep 3
      python3 benchmarks/gpu/export_serve_check.py '$dir' \"\$config\" \$health $port > '$dir/result.json'
      echo done > '$dir/state'
    " > "$dir/driver.log" 2>&1 < /dev/null &
    echo started ;;
  status)
    cat "$dir/state" 2>/dev/null || echo "not started"
    tail -2 "$dir/serve.log" 2>/dev/null
    [ -f "$dir/result.json" ] && cat "$dir/result.json" ;;
esac
