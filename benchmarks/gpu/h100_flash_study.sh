#!/bin/bash
# One part of the real H100 study (run on the lent GPU machine after the device kit is installed; see
# ../shared/device/README.md). Resumable: every part opens the same SQLite study in /tmp/st and adds trials.
#   bash benchmarks/gpu/h100_flash_study.sh TIMEOUT [more `autotune run` options]
# Copies the study database, the run log and the server logs to $OUT after every part.
set -uo pipefail
. /tmp/st/env.sh
export PYTHONPATH=$PWD:$PYTHONPATH
timeout_arg=$1; shift
mkdir -p /tmp/st/studies
save() {
  cp /tmp/st/study.db "$OUT/" 2>/dev/null
  cp /tmp/st/run.log "$OUT/" 2>/dev/null
  tar czf "$OUT/studies.tgz" -C /tmp/st studies 2>/dev/null
  nvidia-smi --query-gpu=memory.used --format=csv > "$OUT/gpu-after.csv" 2>/dev/null
  ps -eo pid,args | grep -E "vllm|autotune" | grep -v grep > "$OUT/procs-after.txt"
}
trap save EXIT
python3 -m autotune run --model /tmp/model --gpus 1 --p99-ms 500 --engine vllm --load-format dummy \
  --storage sqlite:////tmp/st/study.db --out /tmp/st/studies --study h100-flash \
  --timeout "$timeout_arg" "$@" 2>&1 | tee -a /tmp/st/run.log
echo "autotune exit: ${PIPESTATUS[0]}" | tee -a /tmp/st/run.log
