#!/bin/bash
# On the GPU machine (device kit installed, /tmp/st/env.sh): the run-to-run spread of one load level, the
# figure every verdict must clear. SERVERS fresh vLLM servers (default flags, the weightless model) one after
# the other; on each, RUNS runs of `autotune bench` shaped like a study's level (closed loop at concurrency C,
# a warm-up wave of C requests, the first wave ramped over 2 s, 3 x C measured requests, random 1024/512 +-50%,
# fresh prompts each run), keeping every request's timings. Summarise with benchmarks/noise_table.py DIR.
#   SERVERS=2 RUNS=4 C=64 bash benchmarks/gpu/noise_repeats.sh start [DIR]   # returns at once
#   bash benchmarks/gpu/noise_repeats.sh status [DIR]
set -uo pipefail
cmd=${1:-status}; dir=${2:-/tmp/noise}
servers=${SERVERS:-2}; runs=${RUNS:-4}; c=${C:-64}; port=${PORT:-8031}
case "$cmd" in
  start)
    mkdir -p "$dir"
    setsid bash -c "
      . /tmp/st/env.sh
      cd '$PWD'
      for s in \$(seq $servers); do
        setsid vllm serve /tmp/model --load-format dummy --port $port --served-model-name m > $dir/server-\$s.log 2>&1 &
        srv=\$!
        t0=\$(date +%s)
        for i in \$(seq 300); do curl -sf localhost:$port/health > /dev/null && break; sleep 2; done
        echo server \$s ready after \$((\$(date +%s) - t0)) s >> '$dir/times.txt'
        for r in \$(seq $runs); do
          python3 -m autotune bench --url http://127.0.0.1:$port --model m --workload random:1024:512:0.5 \
            --concurrency $c --warmup $c --ramp-s 2 --num-prompts \$((3 * $c)) --seed \$((${SEED0:-0} + 100 * s + r)) \
            --records $dir/s\$s-\$r.jsonl.gz --records-itl --json > $dir/s\$s-\$r.json 2> $dir/s\$s-\$r.err
          echo server \$s run \$r done at \$((\$(date +%s) - t0)) s >> '$dir/times.txt'
        done
        kill -TERM -\$srv; sleep 8; kill -KILL -\$srv 2>/dev/null
        for i in \$(seq 30); do curl -sf localhost:$port/health > /dev/null || break; sleep 1; done
      done
      nvidia-smi --query-gpu=memory.used --format=csv,noheader > '$dir/gpu-after.txt'
      echo done > '$dir/state'
    " > "$dir/driver.log" 2>&1 < /dev/null &
    echo started ;;
  status)
    tail -2 "$dir/times.txt" 2>/dev/null; cat "$dir/state" 2>/dev/null || echo running ;;
esac
