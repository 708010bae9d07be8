#!/bin/bash
# On a two-GPU machine (nvidia-h200-x2, device kit installed, /tmp/st/env.sh, /tmp/model): the study of issue #20 on
# real vLLM with the weightless GLM-4.6V text backbone (benchmarks/gpu/mkmodel_glm46v.py, 106.9 B parameters):
# `autotune run --gpus 2` over glm46v_h200x2_space.yaml (TP2 or DP2, expert parallel, fp8 weights, fp8 KV, batch
# knobs) at a P99 TTFT limit, its baselines vLLM's TP2 defaults and the seed recipe on two GPUs (TP2 + EP + fp8 KV +
# chunked prefill), then the DP2 + EP + fp8 point (glm46v_h200x2_try.yaml), then what the sampler proposes; the
# verdict under the same rules as a text study (the same repeats for every finalist, the 3% noise floor).
#   [RESUME=DIR] [P99_MS=500] [WORKLOAD=random:1024:128:0.5] OUT=DIR bash benchmarks/gpu/glm46v_study.sh HARD_LIMIT_S [more options]
# One resumable part, run by h100_flash_study.sh (its options overridden here: the last of an option wins): no
# trial starts that would end later than HARD_LIMIT_S - 30 s, SIGTERM at HARD_LIMIT_S, the study database, run log
# and trial folders copied to $OUT/$STUDY/ after the part. On a fresh machine RESUME=$OUT/$STUDY (an earlier part's
# copy) restores them first. Later parts take more options, e.g. "--trials 0" to only re-measure.
# The limit: P99 TTFT <= 500 ms on 1,024-token prompts, as the text studies (their verdicts compare). The sim (h200
# card, this folder; its MoE step terms uncalibrated) puts TP2 defaults at P99 TTFT 300 ms at concurrency 128 and
# 424 ms at 192 (2,569 and 3,073 output tok/s), so each load search stays within a few levels of a few hundred
# requests (the sim's high-load TTFT ran low on the 9B: the GPU's knee may lie lower still).
# Measured (docs/results/glm-4.6v-h200x2.md): ready in 132-192 s, a trial 208-370 s, a fresh-server
# re-measurement ~2.3 min; one ~9-min part holds one trial. A part that ends by its timeout spends the time left on
# the final comparison: search parts take --repeats 0, the last part --trials 0 --repeats N.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export STUDY=${STUDY:-glm46v-h200x2}
model=${MODEL_DIR:-/tmp/glm46v}
hard_limit_s=$1; shift
mkdir -p "$OUT/$STUDY"
[ -f "$model/config.json" ] || (. /tmp/st/env.sh && python3 "$here/mkmodel_glm46v.py" "$model" --tokenizer-from /tmp/model) \
  > "$OUT/$STUDY/mkmodel.txt" 2>&1
args=(--model "$model" --gpus 2 --space "$here/glm46v_h200x2_space.yaml" --try "$here/glm46v_h200x2_try.yaml"
      --workload "${WORKLOAD:-random:1024:128:0.5}" --p99-ms "${P99_MS:-500}"
      --trials 6 --top-k 3 --repeats 1 "$@")
exec bash "$here/h100_flash_study.sh" "$hard_limit_s" "${args[@]}"
