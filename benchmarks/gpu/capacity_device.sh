#!/bin/bash
# Client capacity on the GPU machine's quiet host (no vLLM, no server kit needed): ours against vLLM 0.26.0's
# own benchmark module, with each aiohttp in AIOHTTP_SETS, on the core sets in CORE_SETS (client core first,
# then one server process per further core).
# Needs .device-stage/cap/ carried: common/*.whl (aiohttp's dependencies, orjson, regex, tqdm; Python 3.12),
# <set>/aiohttp-*.whl per set, and vsrc/vllm/benchmarks/lib/endpoint_request_func.py from the vLLM wheel.
#   bash benchmarks/gpu/capacity_device.sh > $OUT/capacity.txt 2>&1
set -uo pipefail
cap=.device-stage/cap
for v in ${AIOHTTP_SETS:-a145 a143}; do
  mkdir -p "/tmp/cap/$v"
  for w in "$cap"/common/*.whl "$cap/$v"/*.whl; do python3 -m zipfile -e "$w" "/tmp/cap/$v"; done
done
nproc; uptime; lscpu | grep -E "Model name|MHz" | head -3
for cores in ${CORE_SETS:-2,3 2,3,4,5 8,9,10,11}; do
  for v in ${AIOHTTP_SETS:-a145 a143}; do
    PYTHONPATH="/tmp/cap/$v:$cap/vsrc:$PWD" python3 -c "import sys, aiohttp, orjson; print('== python', sys.version.split()[0], 'aiohttp', aiohttp.__version__, 'orjson', orjson.__version__)"
    PYTHONPATH="/tmp/cap/$v:$cap/vsrc:$PWD" python3 benchmarks/loadgen_capacity.py --vllm-client real --repeats 3 --cores "$cores" ${CAPACITY_ARGS-}
  done
done
