#!/bin/bash
# On the GPU (device kit installed): vLLM defaults, then our bench and `vllm bench serve` on that one server,
# same workload and protocol (concurrency 64, 128 prompts, synchronized start), server-default temperature.
set -uo pipefail
. /tmp/st/env.sh
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
(setsid vllm serve /tmp/model --load-format dummy --port 8011 --served-model-name m > "$OUT/server.log" 2>&1 & echo $! > /tmp/srv.pid)
for i in $(seq 150); do curl -sf localhost:8011/health >/dev/null && break; sleep 2; done; echo "ready after $((i*2)) s"
B="--url http://127.0.0.1:8011 --model m --workload random:1024:512 --concurrency 64 --num-prompts 128 --json"
python3 -m autotune bench $B > "$OUT/ours-1.json"
vllm bench serve --backend vllm --base-url http://127.0.0.1:8011 --model m --tokenizer /tmp/model \
  --dataset-name random --random-input-len 1024 --random-output-len 512 --num-prompts 128 --max-concurrency 64 \
  --ignore-eos --seed 0 --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,90,95,99 \
  --save-result --result-dir "$OUT" --result-filename vllm-bench.json > "$OUT/vllm-bench.log" 2>&1
python3 -m autotune bench $B > "$OUT/ours-2.json"
kill -TERM -"$(cat /tmp/srv.pid)"; sleep 3
python3 - "$OUT" <<'PY'
import json, sys, os
o = sys.argv[1]
for f in ("ours-1.json", "ours-2.json"):
    d = json.load(open(os.path.join(o, f)))
    print(f, round(d["output_tok_s"]), {m: round(d[m + "_ms"]["p99"], 1) for m in ("ttft", "tpot", "itl", "e2el")},
          {m: round(d[m + "_ms"]["p50"], 1) for m in ("ttft", "tpot", "itl", "e2el")})
v = json.load(open(os.path.join(o, "vllm-bench.json")))
print("vllm", round(v["output_throughput"]), {m: round(v[f"p99_{m}_ms"], 1) for m in ("ttft", "tpot", "itl", "e2el")},
      {m: round(v[f"p50_{m}_ms"], 1) for m in ("ttft", "tpot", "itl", "e2el")})
PY
nvidia-smi --query-gpu=memory.used --format=csv
