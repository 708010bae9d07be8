#!/bin/bash
# On the GPU machine (device kit installed, /tmp/st/env.sh, the weightless model in /tmp/model): does a profile hold
# when a user deploys it and checks it with `autotune bench`? A short study on real vLLM writes a profile; its exact
# `vllm_serve_cmd` then starts a fresh server (as a deployment would, with only --port and --served-model-name
# added), and `autotune bench --profile` runs the profile's level (its concurrency and workload: warm-up wave, ramp,
# steady window; token-id prompts, as the study sent) and judges it against the profile. profile_check.py puts the bench's output tok/s and P99s beside the
# profile's runs at that concurrency (result.json). Nothing may be left running (procs-after.txt, gpu-after.txt).
# STUDY_ARGS shape the study (default: one trial, its fresh-server re-measurement); ENGINE_ARGS (default "--engine
# vllm --load-format dummy"): "--engine sim --sim-server --gpu-type h200" rehearses the job on a CPU, with a model
# folder at /tmp/model and a stand-in nvidia-smi on the PATH, the server then being `autotune sim serve`. SERVERS
# (default 1): how many fresh servers to start from the profile's command, one after another, each benched with its
# own seed (7, 8, ...): bench.json, bench2.json, ... and result.json, result2.json, .... BENCH_ARGS (default none) go to
# each bench: "--serve-load" benches the profile's serve load instead of its concurrency, "--max-runs 1" one run each.
# BENCHES (default 1): benches on each server, seeds +10 apart: bench.json, bench-2.json, bench2-2.json, ....
#   bash benchmarks/gpu/profile_check.sh start [DIR]   # returns at once
#   bash benchmarks/gpu/profile_check.sh status [DIR]  # prints progress; "done" when finished
set -uo pipefail
dir=${2:-/tmp/profile-check}; progress=progress.log
study_args=${STUDY_ARGS:---trials 1 --top-k 0 --repeats 1 --max-concurrency 128 --workload random:1024:128:0.5}
engine_args=${ENGINE_ARGS:---engine vllm --load-format dummy}
port=8124
servers=${SERVERS:-1}  # fresh servers started one after another from the profile's command, each benched once
bench_args=${BENCH_ARGS:-}
benches=${BENCHES:-1}  # bench runs on each server, each with its own seed (the server's, +10, +20, ...)
job_vars="study_args engine_args port servers bench_args benches"
job() {
  echo "study" > "$dir/$progress"
  # shellcheck disable=SC2086  # the two are lists of options
  python3 -m autotune run --model /tmp/model $engine_args --gpus 1 --p99-ms 500 $study_args --study check \
    --storage "sqlite:///$dir/autotune.db" --out "$dir" > "$dir/run.out" 2> "$dir/run.log"
  echo "run exit $?" >> "$dir/$progress"
  local profile="$dir/check/profile.yaml" cmd concurrency pid
  if [ ! -f "$profile" ]; then
    echo '{"error": "no profile: see run.log"}' > "$dir/result.json"; leftovers_check; return
  fi
  concurrency=$(python3 -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['concurrency'])" "$profile")
  cmd=$(python3 -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['vllm_serve_cmd'])" "$profile")
  case "$engine_args" in  # the rehearsal serves the same flags with the sim engine
    *sim*) cmd="python3 -m autotune sim serve ${cmd#vllm serve } --gpu-type h200 --time-scale 20" ;;
  esac
  if port_taken "$port" 2>> "$dir/$progress"; then
    echo "{\"error\": \"port $port already answers\"}" > "$dir/result.json"; leftovers_check; return
  fi
  echo "serve: $cmd" >> "$dir/$progress"
  local t0 n suffix
  for n in $(seq 1 "$servers"); do  # each a fresh server, as another deployment of the profile would be
    suffix=$([ "$n" = 1 ] || echo "$n")
    t0=$(date +%s)
    # shellcheck disable=SC2086  # the profile's command, word by word, as a user pastes it
    setsid $cmd --port "$port" --served-model-name profile-check > "$dir/serve$suffix.log" 2>&1 < /dev/null &
    pid=$!
    if server_ready "$port" profile-check "$pid"; then
      echo $(( $(date +%s) - t0 )) > "$dir/ready_s$suffix"
      local b seed name
      for b in $(seq 1 "$benches"); do
        seed=$((6 + n + 10 * (b - 1))); name=bench$suffix$([ "$b" = 1 ] || echo "-$b")
        echo "bench of the profile (concurrency $concurrency) $bench_args: server $n, seed $seed" >> "$dir/$progress"
        # shellcheck disable=SC2086  # a list of options
        python3 -m autotune bench --url "http://127.0.0.1:$port" --model profile-check --profile "$profile" \
          --seed "$seed" $bench_args --json > "$dir/$name.json" 2> "$dir/$name.err"
        echo "bench exit $?" >> "$dir/$progress"
      done
    else
      echo "server $n did not start" >> "$dir/$progress"
    fi
    stop_server "$pid"
    python3 benchmarks/gpu/profile_check.py "$profile" "$dir/bench$suffix.json" > "$dir/result$suffix.json" \
      2>> "$dir/$progress"
    cat "$dir/result$suffix.json" >> "$dir/$progress"
  done
  leftovers_check
}
source "$(dirname "$0")/background.sh"
background_main "$@"
