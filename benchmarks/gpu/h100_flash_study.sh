#!/bin/bash
# One part of a real H100 study (run on the lent GPU machine after the device kit is installed; see
# ../shared/device/README.md). Resumable: every part opens the same SQLite study in /tmp/st and adds trials.
#   [STUDY=name] [RESUME=DIR] [CUDA_VISIBLE_DEVICES=i] bash benchmarks/gpu/h100_flash_study.sh HARD_LIMIT_S [more `autotune run` options]
# No trial starts that would end later than HARD_LIMIT_S - 30 s; at HARD_LIMIT_S, SIGTERM (clean teardown).
# Copies the study database, the run log and the server logs to $OUT/$STUDY/ after every part.
set -uo pipefail
. /tmp/st/env.sh
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
study=${STUDY:-h100-flash}
hard_limit_s=$1; shift
dir=/tmp/st/$study
# RESUME=DIR: an earlier part's copy ($OUT/$study of a machine since given back) is restored on a fresh machine;
# or a published raw-data folder (docs/results/raw/NAME, its database as gpu0.db.gz)
r=${RESUME:-/nonexistent}
if [ -f "$r/study.db" ] && [ ! -f "$dir/study.db" ]; then
  mkdir -p "$dir/studies" && cp "$r/study.db" "$dir/" && cp "$r/run.log" "$dir/" 2>/dev/null
  [ -f "$r/studies.tgz" ] && tar xzf "$r/studies.tgz" -C "$dir"
elif [ -f "$r/gpu0.db.gz" ] && [ ! -f "$dir/study.db" ]; then
  mkdir -p "$dir/studies" && gunzip -c "$r/gpu0.db.gz" > "$dir/study.db" && cat "$r/run.log" > "$dir/run.log" 2>/dev/null
fi
mkdir -p "$dir/studies" "$OUT/$study"
echo "STUDY=$study bash $0 $hard_limit_s $*" >> "$OUT/$study/commands.txt"  # each part's command, as it ran
. "$(dirname "$0")/background.sh"  # engine_processes
save() {
  cp "$dir/study.db" "$dir/run.log" "$OUT/$study/" 2>/dev/null
  tar czf "$OUT/$study/studies.tgz" -C "$dir" studies 2>/dev/null
  { date; nvidia-smi --query-gpu=index,memory.used --format=csv; ss -ltnp 2>/dev/null | grep -v "^State";
    engine_processes; } > "$OUT/$study/after.txt" 2>&1
}
trap save EXIT
timeout -s TERM -k 20 "$hard_limit_s" python3 -m autotune run --model /tmp/model --gpus 1 --p99-ms 500 \
  --engine vllm --load-format dummy --storage "sqlite:///$dir/study.db" --out "$dir/studies" \
  --study "$study" --timeout "$((hard_limit_s - 30))" "$@" 2>&1 | tee -a "$dir/run.log"
echo "autotune exit: ${PIPESTATUS[0]} ($(date))" | tee -a "$dir/run.log"
