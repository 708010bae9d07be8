#!/bin/bash
# Sourced by the GPU scripts: `start` runs the script's `job` function in its own session in the background
# (a command on the GPU machine may run 10 minutes at most; the job outlives it), `status` prints the tail of
# the job's progress file and "done" when it finished. The job runs with the device kit's environment in the
# project root, with $dir its output folder; it must leave nothing running behind (its own teardown).
#   source benchmarks/gpu/background.sh; background_main "$@"    # after defining job() and dir/progress
background_main() {
  local cmd=${1:-status} src
  case "$cmd" in
    start)
      mkdir -p "$dir"
      # the machine the job ran on: hosts differ in what a prefill step costs (docs/results/sim-accuracy.md)
      { lscpu; nproc; free -g
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
        nvidia-smi -q -d CLOCK,POWER,PERFORMANCE,TEMPERATURE
      } > "$dir/host.txt" 2>&1
      src=$(snapshot_tree "$dir") || return 1
      # the job, the functions it calls and the variables it reads travel into the new session by value
      setsid bash -c "$(declare -p dir progress ${job_vars:-} 2>/dev/null); $(declare -f)
        . /tmp/st/env.sh || exit 1; cd '$src'; export PYTHONPATH=\$PWD\${PYTHONPATH:+:\$PYTHONPATH}; job; echo done > \"\$dir/state\"" > "$dir/driver.log" 2>&1 < /dev/null &
      echo started ;;
    status)
      tail -n "${status_lines:-3}" "$dir/$progress" 2>/dev/null; cat "$dir/state" 2>/dev/null || echo running ;;
    *)
      echo "usage: $0 start|status [DIR]" >&2; return 2 ;;
  esac
}

# A copy of the project tree for a job to run from (DIR.src, beside the job's output folder; its path printed): the device tool copies the working
# tree in again at every call, and a job that imports from it meanwhile can find a module missing (seen: a level of
# vlm_images.sh failed with "No module named autotune.study" while the next call's copy was under way).
snapshot_tree() {
  local to="${1%/}.src"
  rm -rf "$to" && mkdir -p "$to" &&
    tar --exclude=./.device-stage --exclude=./.git --exclude=./.venv --exclude='*.pyc' -cf - . | tar -xf - -C "$to" &&
    echo "$to"
}

# Every vLLM or autotune process on the machine but this shell's session: "pid sid args" lines. Case-insensitive,
# as vLLM titles its engine core "VLLM::EngineCore" (setproctitle); the device tool's own shell, whose command line
# names the kit's vllm.tar.zst parts, is not one.
engine_processes() {
  ps -eo pid,sid,args | grep -iE 'vllm|autotune' |
    grep -v -e grep -e 'vllm\.tar' -e "^ *[0-9]* *$(ps -o sid= $$) "
}

# What a finished job must show: no vLLM or autotune process of ours, GPU memory back.
leftovers_check() {
  sleep 2
  nvidia-smi --query-gpu=index,memory.used --format=csv,noheader > "$dir/gpu-after.txt"
  engine_processes > "$dir/procs-after.txt"
}

# True, with a line on stderr, when a server already answers on PORT: a new server there would die with "Address
# already in use" while the old one kept answering, and the benchmark would measure the old one (seen twice).
port_taken() {
  curl -s -o /dev/null --max-time 2 "localhost:$1/" || return 1
  echo "port $1 already answers: stop the server on it first" >&2
}

# True once the server started as PID answers on PORT under NAME (a name no earlier server had: one still holding
# the port must not pass for it); false when it exits first or has not answered in 10 minutes.
server_ready() {  # PORT NAME PID
  local i
  for i in $(seq 300); do
    curl -sf "localhost:$1/v1/models" | grep -q "\"$2\"" && return 0
    kill -0 "$3" 2>/dev/null || return 1
    sleep 2
  done
  return 1
}

# Starts the server (vLLM; ENGINE=sim: `autotune sim serve`, to rehearse on a CPU) on $model with dummy weights, in
# a session of its own, as NAME on PORT, its output in LOG, FLAGS after it and the array server_env (an `env ...`
# prefix), where set, before it. Its pid in server_pid.
start_server() {  # PORT NAME LOG [FLAGS...]
  local port=$1 name=$2 log=$3 serve=(vllm serve) extra=()
  shift 3
  if [ "$engine" = sim ]; then serve=(python3 -m autotune sim serve); extra=(--gpu-type h200 --time-scale 20); fi
  setsid ${server_env[@]+"${server_env[@]}"} "${serve[@]}" "$model" --load-format dummy --port "$port" \
    --served-model-name "$name" "$@" ${extra[@]+"${extra[@]}"} > "$log" 2>&1 &
  server_pid=$!
}

# One level shaped like a study's at concurrency C (a warm-up wave of C, the first wave ramped over 2 s, 3 x C
# measured requests) of $workload, seeded by SEED: OUT.json (`autotune bench --json`), OUT.jsonl.gz (every
# request, its inter-token gaps too), OUT.err; ARGS go to `autotune bench`.
bench_level() {  # OUT PORT NAME C SEED [ARGS...]
  local out=$1 port=$2 name=$3 c=$4 seed=$5
  shift 5
  python3 -m autotune bench --url "http://127.0.0.1:$port" --model "$name" --workload "$workload" \
    --tokenizer "$model" --concurrency "$c" --warmup "$c" --ramp-s 2 --num-prompts $((3 * c)) --whole-run --seed "$seed" \
    --records "$out.jsonl.gz" --records-itl --json "$@" > "$out.json" 2> "$out.err"
}

# bench_level as $dir/CFG-cC with vLLM's /metrics scraped, its wall-clock span a line of levels.txt ("CFG cC START
# END", what benchmarks/step_counts_table.py puts the telemetry on).
timed_level() {  # CFG PORT NAME C SEED
  local start
  start=$(date +%s.%N)
  bench_level "$dir/$1-c$4" "$2" "$3" "$4" "$5" --scrape-metrics
  echo "$1 c$4 $start $(date +%s.%N)" >> "$dir/levels.txt"
}

# Stops the server started with setsid as PID, its whole session (TERM, up to a minute's grace, KILL), then waits
# until the job's GPUs have their memory back, so that the next server starts on a free GPU (no GPU: at once).
stop_server() {  # PID
  local i
  kill -TERM -"$1" 2>/dev/null
  for i in $(seq 60); do kill -0 -"$1" 2>/dev/null || break; sleep 1; done
  kill -KILL -"$1" 2>/dev/null
  for i in $(seq 60); do
    command -v nvidia-smi > /dev/null || break
    # shellcheck disable=SC2086  # only the GPUs this job was given (another job may hold the others)
    [ "$(nvidia-smi ${CUDA_VISIBLE_DEVICES:+-i $CUDA_VISIBLE_DEVICES} --query-gpu=memory.used --format=csv,noheader,nounits | sort -n | tail -1)" -lt 1000 ] && break
    sleep 1
  done
}

# What the GPU and the host do while the job runs, every 250 ms until telemetry_stop (then gzipped):
# - gpu-telemetry.csv: the GPU's SM and memory clocks, power, temperature, throttle reasons and utilization;
#   gpu-telemetry-clock.txt pairs `date +%s` with nvidia-smi's local timestamp format, to put its rows on the job's
#   time line (levels.txt). No nvidia-smi: none.
# - host-cpu.txt: the epoch and /proc/stat's "cpu" line (jiffies busy, idle, stolen by the hypervisor, ...).
# A step that carries a prefill waits on the host's CPU (docs/results/sim-accuracy.md, "A host's own card"): these
# say what the GPU and the host's CPUs did in each level.
telemetry_start() {
  # bash's own clock, so the sampler forks nothing but sleep; it ends with the job's shell ($$), should
  # telemetry_stop never come
  while kill -0 $$ 2>/dev/null; do
    read -r line < /proc/stat; echo "${EPOCHREALTIME:-$(date +%s.%N)} $line"; sleep 0.25
  done > "$dir/host-cpu.txt" 2>/dev/null &
  host_cpu_pid=$!
  command -v nvidia-smi > /dev/null || return 0
  local reasons=clocks_event_reasons.active  # its name since driver 535; clocks_throttle_reasons before
  nvidia-smi --query-gpu=$reasons --format=csv > /dev/null 2>&1 || reasons=clocks_throttle_reasons.active
  date '+%s %Y/%m/%d %H:%M:%S' > "$dir/gpu-telemetry-clock.txt"
  # shellcheck disable=SC2086  # only the GPUs this job was given
  # at most 2 hours, should telemetry_stop never come (a lent machine is reclaimed after 30 minutes)
  timeout 2h nvidia-smi ${CUDA_VISIBLE_DEVICES:+-i $CUDA_VISIBLE_DEVICES} -lms 250 --format=csv,nounits \
    --query-gpu=timestamp,index,clocks.sm,clocks.mem,power.draw,temperature.gpu,$reasons,pstate,utilization.gpu \
    > "$dir/gpu-telemetry.csv" 2> "$dir/gpu-telemetry.err" &
  telemetry_pid=$!
}

telemetry_stop() {
  local pid
  for pid in ${host_cpu_pid:-} ${telemetry_pid:-}; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  [ -n "${host_cpu_pid:-}" ] && gzip -f "$dir/host-cpu.txt"
  [ -n "${telemetry_pid:-}" ] && gzip -f "$dir/gpu-telemetry.csv"
  return 0
}

# N processes that spin on the CPU until hog_stop (each for at most SECONDS, 600 by default, should the job die
# first), children of the job's shell (so that it can wait for them); their pids in the array hogs. Busy loops on
# all of an H200 host's CPUs double what a prefill adds to its step (docs/results/sim-accuracy.md).
hog_start() {  # N [SECONDS]
  local i
  hogs=()
  for i in $(seq "$1"); do timeout "${2:-600}" python3 -c "while True: pass" > /dev/null 2>&1 & hogs+=($!); done
}

hog_stop() {
  if [ ${#hogs[@]} -gt 0 ]; then kill "${hogs[@]}" 2>/dev/null; wait "${hogs[@]}" 2>/dev/null; fi
  hogs=()
}

# A busy loop left behind, one line each ([w]: not this line)
hogs_left() {
  pgrep -af "python3 -c [w]hile True"
}
