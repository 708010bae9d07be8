#!/bin/bash
# On a two-GPU machine (nvidia-h200-x2, device kit installed, /tmp/st/env.sh): the study of issue #19 on real vLLM
# with the weightless GLM-4.6V-Flash (its vision tower included): DP2 against TP2, and TP2 with the vision encoder
# in data mode against weights mode, at a P99 TTFT limit, under an image workload. The space
# (vlm_tp2_space.yaml) searches nothing else; the study runs its two baselines (TP2 weights, TP2 data), the DP2
# point (vlm_tp2_try.yaml), then re-measures all three on fresh servers (--top-k 3 --repeats 2) and states its
# verdict with the same rules as a text study (the same repeats for every finalist, the 3% noise floor).
#   [RESUME=DIR] [P99_MS=2000] [WORKLOAD=...] OUT=DIR bash benchmarks/gpu/vlm_tp2_study.sh HARD_LIMIT_S [more options]
# One resumable part of the study, run by h100_flash_study.sh (the H100 study's runner, its options overridden here:
# the last of an option wins): no trial starts that would end later than HARD_LIMIT_S - 30 s, SIGTERM at
# HARD_LIMIT_S, and the study database, run log and trial folders copied to $OUT/$STUDY/ after the part. A lent
# machine is held 30 min at most: on a fresh one, RESUME=$OUT/$STUDY (an earlier part's copy) restores them first.
# Later parts take more options, e.g. "--trials 0" to only re-measure once the three trials are done.
# Expected: a TP2 cold start 3-4 min, each trial's load search 5-10 min; the whole study 60-90 min of GPU time.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export STUDY=${STUDY:-vlm-tp2}
model=${MODEL_DIR:-/tmp/vlm}
hard_limit_s=$1; shift
mkdir -p "$OUT/$STUDY"
[ -f "$model/config.json" ] || (. /tmp/st/env.sh && python3 -m autotune.testing.weightless_vlm "$model" --check) \
  > "$OUT/$STUDY/model-check.txt" 2>&1
args=(--model "$model" --gpus 2 --space "$here/vlm_tp2_space.yaml" --try "$here/vlm_tp2_try.yaml"
      --workload "${WORKLOAD:-mm:256:128:1-4:896x896:range=0.5}" --p99-ms "${P99_MS:-2000}"
      --trials 3 --top-k 3 --repeats 2 "$@")
exec bash "$here/h100_flash_study.sh" "$hard_limit_s" "${args[@]}"
