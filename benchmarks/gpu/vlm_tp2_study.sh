#!/bin/bash
# On a two-GPU machine (nvidia-h200-x2, device kit installed, /tmp/st/env.sh): the study of issue #19 on real vLLM
# with the weightless GLM-4.6V-Flash (its vision tower included): DP2 against TP2, and TP2 with the vision encoder
# in data mode against weights mode, at a P99 TTFT limit, under an image workload. The space
# (vlm_tp2_space.yaml) searches nothing else; the study runs its two baselines (TP2 weights, TP2 data), the DP2
# point (vlm_tp2_try.yaml), then re-measures all three on fresh servers (--top-k 3 --repeats 2) and states its
# verdict with the same rules as a text study (the same repeats for every finalist, the 3% noise floor).
#   [RESUME=DIR] [P99_MS=2000] [WORKLOAD=...] bash benchmarks/gpu/vlm_tp2_study.sh HARD_LIMIT_S [more `autotune run` options]
# Resumable, part by part (a lent machine is held 30 min at most): no trial starts that would end later than
# HARD_LIMIT_S - 30 s; at HARD_LIMIT_S, SIGTERM (clean teardown). After every part the study database, the run log
# and the per-trial folders are copied to $OUT/$STUDY/; on a fresh machine RESUME=that-copy restores them first.
# Later parts take more options, e.g. "--trials 0" to only re-measure once the three trials are done.
# Expected: a TP2 cold start 3-4 min, each trial's load search 5-10 min; the whole study 60-90 min of GPU time.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ -f "${ENV_SH:-/tmp/st/env.sh}" ] && . "${ENV_SH:-/tmp/st/env.sh}"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
study=${STUDY:-vlm-tp2}
model=${MODEL_DIR:-/tmp/vlm}
workload=${WORKLOAD:-mm:256:128:1-4:896x896:range=0.5}
hard_limit_s=$1; shift
dir=/tmp/st/$study
out=${OUT:-/tmp/out}/$study
mkdir -p "$dir/studies" "$out"
r=${RESUME:-/nonexistent}
if [ -f "$r/study.db" ] && [ ! -f "$dir/study.db" ]; then
  cp "$r/study.db" "$dir/" && cp "$r/run.log" "$dir/" 2>/dev/null
  [ -f "$r/studies.tgz" ] && tar xzf "$r/studies.tgz" -C "$dir"
fi
[ -f "$model/config.json" ] || python3 -m autotune.testing.weightless_vlm "$model" --check > "$out/model-check.txt" 2>&1
save() {
  cp "$dir/study.db" "$dir/run.log" "$out/" 2>/dev/null
  tar czf "$out/studies.tgz" -C "$dir" studies 2>/dev/null
  { date; nvidia-smi --query-gpu=index,memory.used --format=csv; ss -ltnp 2>/dev/null | grep -v "^State";
    ps -eo pid,args | grep -E "vllm|autotune" | grep -v grep; } > "$out/after.txt" 2>&1
}
trap save EXIT
cmd=(python3 -m autotune run --model "$model" --gpus 2 --engine vllm --load-format dummy
     --space "$here/vlm_tp2_space.yaml" --try "$here/vlm_tp2_try.yaml" --workload "$workload"
     --p99-ms "${P99_MS:-2000}" --trials 3 --top-k 3 --repeats 2
     --storage "sqlite:///$dir/study.db" --out "$dir/studies" --study "$study" --timeout "$((hard_limit_s - 30))" "$@")
echo "${cmd[*]}" >> "$out/commands.txt"
timeout -s TERM -k 20 "$hard_limit_s" "${cmd[@]}" 2>&1 | tee -a "$dir/run.log"
echo "autotune exit: ${PIPESTATUS[0]} ($(date))" | tee -a "$dir/run.log"
