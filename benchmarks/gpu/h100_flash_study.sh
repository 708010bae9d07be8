#!/bin/bash
# One part of the real H100 study (run on the lent GPU machine after the device kit is installed; see
# ../shared/device/README.md). Resumable: every part opens the same SQLite study in /tmp/st and adds trials.
#   bash benchmarks/gpu/h100_flash_study.sh HARD_LIMIT_S [more `autotune run` options]
# No trial starts that would end later than HARD_LIMIT_S - 30 s; at HARD_LIMIT_S, SIGTERM (clean teardown).
# Copies the study database, the run log and the server logs to $OUT after every part.
set -uo pipefail
. /tmp/st/env.sh
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
hard_limit_s=$1; shift
mkdir -p /tmp/st/studies
save() {
  cp /tmp/st/study.db "$OUT/" 2>/dev/null
  cp /tmp/st/run.log "$OUT/" 2>/dev/null
  tar czf "$OUT/studies.tgz" -C /tmp/st studies 2>/dev/null
  { nvidia-smi --query-gpu=memory.used --format=csv; ss -ltnp 2>/dev/null | grep -v "^State" ;
    ps -eo pid,args | grep -E "vllm|autotune" | grep -v grep; } > "$OUT/after.txt" 2>&1
}
trap save EXIT
timeout -s TERM -k 20 "$hard_limit_s" python3 -m autotune run --model /tmp/model --gpus 1 --p99-ms 500 \
  --engine vllm --load-format dummy --storage sqlite:////tmp/st/study.db --out /tmp/st/studies \
  --study h100-flash --timeout "$((hard_limit_s - 30))" "$@" 2>&1 | tee -a /tmp/st/run.log
echo "autotune exit: ${PIPESTATUS[0]}" | tee -a /tmp/st/run.log
