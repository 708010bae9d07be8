#!/bin/bash
# On the GPU machine (device kit installed, /tmp/st/env.sh): the load generator's two measurements, as one
# background job that outlives the `run` call that starts it.
#   1. Client capacity on the quiet host, before any server starts: ours against vLLM's own benchmark module
#      (`loadgen_capacity.py --vllm-client real`), once on each core pair in CAPACITY_CORES.
#   2. Agreement on identical streams: `STREAM=identical agreement_rounds.sh ROUNDS 8011 RATE PROMPTS`, rounds
#      until ROUNDS are done or the job is stopped.
# Start:   setsid nohup bash benchmarks/gpu/loadgen_session.sh > /tmp/st/loadgen.log 2>&1 < /dev/null &
#          echo $! > /tmp/st/loadgen.pid
# Collect: bash benchmarks/gpu/loadgen_session.sh collect   (copies results to $OUT; repeat in every call)
# Stop:    kill -TERM -$(cat /tmp/st/loadgen.pid)   (agreement_rounds.sh stops its server on TERM)
set -uo pipefail
. /tmp/st/env.sh
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
out=/tmp/st/loadgen; mkdir -p "$out"
if [ "${1-}" = collect ]; then
  mkdir -p "$OUT/agreement"
  cp -r "$out" "$OUT/"
  [ -d /tmp/st/agreement ] && (cd /tmp/st/agreement &&
    find . -type f ! -name 'vllm-prompts.jsonl*' ! -name 'trace.jsonl' -exec cp --parents {} "$OUT/agreement/" \;)
  cp /tmp/st/loadgen.log "$OUT/" 2>/dev/null
  nvidia-smi --query-gpu=memory.used --format=csv,noheader > "$OUT/gpu-memory.txt" 2>&1
  ps -eo pid,pgid,etimes,args | grep -E "vllm|autotune|loadgen_capacity" | grep -v grep > "$OUT/processes.txt"
  exit 0
fi
{
  python3 -c "import sys, aiohttp, orjson; print('python', sys.version.split()[0], 'aiohttp', aiohttp.__version__, 'orjson', orjson.__version__)"
  nproc; uptime
  for cores in ${CAPACITY_CORES-2,3 6,7 10,11}; do
    python3 benchmarks/loadgen_capacity.py --vllm-client real --repeats 3 --cores "$cores"
  done
} > "$out/capacity.txt" 2>&1
STREAM=identical bash benchmarks/gpu/agreement_rounds.sh "${ROUNDS:-20}" 8011 "${RATE:-8}" "${PROMPTS:-960}"
