#!/bin/bash
# On the GPU machine (device kit installed, /tmp/st/env.sh): the README's main command on real vLLM while other
# work takes every CPU of the host (HOG busy loops, nproc by default), then, on the same lease, held-out levels for
# the card `autotune sim calibrate` fits on that study. Three questions (docs/results/sim-accuracy.md, "A host's own
# card"):
# - does the study say that the host was busy (at its start, per level, in the winner's notes)?
# - what does `sim calibrate --fit host_step_ms` (the host's time as a floor under the GPU's work) fit on a busy
#   host's study, next to the default fit (an added constant)?
# - which card then follows the same lease's held-out levels: host_contention.sh's quiet and busy pairs at prompts of
#   HELDOUT's sizes on a fresh server (ROUNDS=1), in DIR-heldout?
#   bash benchmarks/gpu/busy_study.sh start [DIR]   # returns at once
#   bash benchmarks/gpu/busy_study.sh status [DIR]  # "done" when the study and the held-out levels finished
# Variables (defaults): HOG=$(nproc) STUDY_ARGS="--trials 1 --repeats 2 --timeout 16m" (the trial's server and two
#   fresh-server re-measurements: a card wants 3 servers or more; spare time buys no more for a lone finalist)
#   ENGINE_ARGS="--engine vllm
#   --load-format dummy" HELDOUT="random:1024:128:0.1 random:2048:128:0.1 random:3072:128:0.1"
# ENGINE_ARGS "--engine sim --sim-server --gpu-type h200" rehearses it on a CPU (a model folder at /tmp/model and a
# stand-in nvidia-smi on the PATH, as for smoke_study.sh).
# Expected time on one H200: the study ~10 min (vLLM's defaults: 7.4 min with one fresh-server re-measurement, each
# more ~2.4), the held-out levels ~5 min (a cold start, then six levels).
# Analysis on any machine, afterwards:
#   autotune sim calibrate --study busy --storage sqlite:///DIR/autotune.db --out DIR --model /tmp/model \
#     [--fit host_step_ms] --to card.yaml
#   python benchmarks/step_counts_table.py DIR-heldout --constants NAME=VALUE ...
set -uo pipefail
dir=${2:-/tmp/busy-study}; progress=run.log
hog=${HOG:-$(nproc)}
study_args=${STUDY_ARGS:---trials 1 --repeats 2 --timeout 16m}
engine_args=${ENGINE_ARGS:---engine vllm --load-format dummy}
heldout=${HELDOUT:-random:1024:128:0.1 random:2048:128:0.1 random:3072:128:0.1}
job_vars="hog study_args engine_args heldout"
job() {
  local hogs=() engine=vllm
  [[ " $engine_args " == *" --engine sim "* ]] && engine=sim
  printf 'hog=%s\nstudy_args=%s\nengine_args=%s\n' "$hog" "$study_args" "$engine_args" > "$dir/settings.txt"
  date +%s > "$dir/t0"
  hog_start "$hog" 1500
  # shellcheck disable=SC2086  # the two are lists of options
  python3 -m autotune run --model /tmp/model $engine_args --gpus 1 --p99-ms 500 \
    $study_args --study busy --storage "sqlite:///$dir/autotune.db" --out "$dir" > "$dir/run.out" 2> "$dir/run.log"
  echo $? > "$dir/run.rc"
  hog_stop
  date +%s > "$dir/t1"
  python3 -m autotune best --study busy --storage "sqlite:///$dir/autotune.db" --json > "$dir/best.json" 2>&1
  leftovers_check
  hogs_left >> "$dir/procs-after.txt"
  echo "held-out levels in ${dir%/}-heldout" >> "$dir/run.log"
  ROUNDS=1 HOG=$hog WORKLOADS=$heldout ENGINE=$engine bash benchmarks/gpu/host_contention.sh start "${dir%/}-heldout"
  until [ -f "${dir%/}-heldout/state" ]; do sleep 5; done
}
source "$(dirname "$0")/background.sh"
background_main "$@"
