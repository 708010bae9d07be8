#!/bin/bash
# On the GPU machine (device kit installed, /tmp/st/env.sh): the load generator's two measurements, as one
# background job that outlives the `run` call that starts it.
#   1. Client capacity on the quiet host, before any server starts: ours against vLLM's own benchmark module
#      (`loadgen_capacity.py --vllm-client real`), once on each core pair in CAPACITY_CORES.
#   2. TRUTH_ROUNDS (default 2) identical-stream rounds of both tools against autotune's fixed-latency fake server
#      (TTFT 50 ms, ITL 8 ms; TRUTH_PROMPTS, default 480): each tool's error against a known truth.
#   3. Agreement on identical streams: `STREAM=identical agreement_rounds.sh ROUNDS 8011 RATE PROMPTS`, rounds
#      until ROUNDS are done or the job is stopped.
# Start:   setsid nohup bash benchmarks/gpu/loadgen_session.sh > /tmp/st/loadgen.log 2>&1 < /dev/null &
#          echo $! > /tmp/st/loadgen.pid
# Collect: bash benchmarks/gpu/loadgen_session.sh collect   (copies results to $OUT; repeat in every call)
# Stop:    kill -TERM -$(cat /tmp/st/loadgen.pid)   (agreement_rounds.sh stops its server on TERM)
set -uo pipefail
. /tmp/st/env.sh
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
out=/tmp/st/loadgen; mkdir -p "$out"
if [ "${1-}" = collect ]; then  # one archive (a call brings back few files); vLLM's texts left out, gaps packed
  nvidia-smi --query-gpu=memory.used --format=csv,noheader > "$out/gpu-memory.txt" 2>&1
  ps -eo pid,pgid,etimes,args | grep -E "vllm|autotune|loadgen_capacity" | grep -v grep > "$out/processes.txt"
  for d in $(find /tmp/st/agreement /tmp/st/truth -type d 2>/dev/null); do  # gap lists to .npz, texts dropped
    python3 benchmarks/gpu/itl_gaps.py pack "$d" > /dev/null
  done
  cd /tmp/st
  find loadgen loadgen.log agreement truth -type f ! -name 'vllm-prompts.jsonl*' ! -name trace.jsonl 2>/dev/null \
    | tar czf "$OUT/results.tgz" -T -
  exit 0
fi
{
  python3 -c "import sys, aiohttp, orjson; print('python', sys.version.split()[0], 'aiohttp', aiohttp.__version__, 'orjson', orjson.__version__)"
  nproc; uptime
  for cores in ${CAPACITY_CORES-2,3 6,7 10,11}; do
    python3 benchmarks/loadgen_capacity.py --vllm-client real --repeats 3 --cores "$cores"
  done
} > "$out/capacity.txt" 2>&1
if [ "${TRUTH_ROUNDS:-2}" -gt 0 ]; then
  FAKE_LATENCY=50:8 STREAM=identical bash benchmarks/gpu/agreement_rounds.sh "${TRUTH_ROUNDS:-2}" 8021 "${RATE:-8}" \
    "${TRUTH_PROMPTS:-480}"
fi
STREAM=identical bash benchmarks/gpu/agreement_rounds.sh "${ROUNDS:-20}" 8011 "${RATE:-8}" "${PROMPTS:-960}"
