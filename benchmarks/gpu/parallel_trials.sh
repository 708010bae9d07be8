#!/bin/bash
# On a 2-GPU machine (nvidia-h200-x2; device kit installed, /tmp/st/env.sh, /tmp/model): the same short study of
# the weightless Flash model twice, first one trial at a time on GPU 0, then two at once (--parallel 2, one GPU
# each), and the wall-clock per trial of each (from the trials' records), with what was left behind after each.
# Then the question a user with two GPUs asks first: a --gpus 2 study (TP2 against DP2 and the rest of the space)
# against vLLM's TP2 default, with the gain and its interval (the verdict line and `best --json`).
#   [TP2_TRIALS=12] [TP2_TIMEOUT=20m] bash benchmarks/gpu/parallel_trials.sh start [DIR] [TRIALS]   # returns at once
# One 30-minute session holds TRIALS=2 (a Flash trial is ~4.5 min on an H200: serial ~9 min, parallel ~5) and the
# --gpus 2 study with TP2_TIMEOUT=12m, after the kit's install.
#   bash benchmarks/gpu/parallel_trials.sh status [DIR]           # "done" when finished; then the summary
set -uo pipefail
cmd=${1:-status}; dir=${2:-/tmp/parallel}; trials=${3:-6}
common="--model /tmp/model --engine vllm --load-format dummy --p99-ms 500 --top-k 0 --repeats 0 --patience 0
        --max-concurrency 256 --trials $trials"
case "$cmd" in
  start)
    mkdir -p "$dir"
    . "$(dirname "$0")/background.sh"
    src=$(snapshot_tree "$dir") || exit 1
    setsid bash -c "$(declare -f engine_processes)
      . /tmp/st/env.sh
      cd '$src'
      export PYTHONPATH=\$PWD
      for mode in serial parallel; do
        if [ \$mode = serial ]; then extra='--gpu-ids 0'; else extra='--gpu-ids 0,1 --parallel 2'; fi
        date +%s > '$dir/'\$mode.t0
        python3 -m autotune run $common --gpus 1 \$extra --study \$mode \
          --storage sqlite:///$dir/\$mode.db --out '$dir/'\$mode > '$dir/'\$mode.out 2> '$dir/'\$mode.log
        echo \$? > '$dir/'\$mode.rc
        date +%s > '$dir/'\$mode.t1
        sleep 2
        nvidia-smi --query-gpu=index,memory.used --format=csv,noheader > '$dir/'\$mode.gpu-after.txt
        engine_processes > '$dir/'\$mode.procs-after.txt
      done
      python3 -m autotune run --model /tmp/model --engine vllm --load-format dummy --gpus 2 --p99-ms 500 \
        --trials ${TP2_TRIALS:-12} --timeout ${TP2_TIMEOUT:-20m} --study tp2 --storage sqlite:///$dir/tp2.db \
        --out '$dir/tp2' > '$dir/tp2.out' 2> '$dir/tp2.log'
      echo \$? > '$dir/tp2.rc'
      python3 -m autotune best --study tp2 --storage sqlite:///$dir/tp2.db --json > '$dir/tp2-best.json' 2>&1
      echo done > '$dir/state'
    " > "$dir/driver.log" 2>&1 < /dev/null &
    echo started ;;
  status)
    cat "$dir/state" 2>/dev/null || { echo running; tail -2 "$dir"/*.log 2>/dev/null; exit 0; }
    PYTHONPATH=$PWD python3 - "$dir" <<'PY'
import sys, optuna
from autotune import records
d = sys.argv[1]
for mode in ("serial", "parallel"):
    study = optuna.load_study(study_name=mode, storage=f"sqlite:///{d}/{mode}.db")
    walls = [t.result.trial_wall_s for t in records.read_trials(study) if t.complete]
    t0, t1 = (int(open(f"{d}/{mode}.{x}").read()) for x in ("t0", "t1"))
    print(f"{mode}: {len(walls)} trials in {t1 - t0} s wall ({(t1 - t0) / max(1, len(walls)):.0f} s per trial); "
          f"each trial {min(walls):.0f}-{max(walls):.0f} s; GPU memory after: "
          + open(f"{d}/{mode}.gpu-after.txt").read().replace(chr(10), '; '))
PY
    grep -E "beats|equal within noise|is the best" "$dir/tp2.out" || tail -5 "$dir/tp2.out" ;;
esac
