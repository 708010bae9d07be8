#!/bin/bash
# The real H100 measurements of one device session on a 2-GPU machine (nvidia-h100-x2), as background jobs
# that outlive a single 10-minute `run` call (started with setsid; they run until the machine goes back):
#   GPU 0: the study `h100-flash` (benchmarks/gpu/h100_flash_study.sh).
#   GPU 1: our bench vs `vllm bench serve` (benchmarks/gpu/agreement_rounds.sh; Poisson arrivals at
#          AGREEMENT_RATE requests/s, default 8, AGREEMENT_PROMPTS prompts a run, default 960, AGREEMENT_ROUNDS
#          rounds, default 2, then the phases of AGREEMENT_MORE (default "2:3:360 1:8:960": two rounds at a
#          low load, then a third at the first rate); then `h100-flash-replica`,
#          the same study settings on the other card: independent re-measurements of the same configurations.
# Each GPU's server processes use their own vLLM compile cache (VLLM_CACHE_ROOT), so no two compilations race.
# STUDY_OPTS: more `autotune run` options for GPU 0's study (later ones win, e.g. "--trials 0 --repeats 2" to only
# re-measure a resumed study). REMEASURE_AFRESH=1: a resumed study's stored re-measurements are set aside
# (kept in remeasurements-before.json) so that its candidates are re-measured on this machine's card.
#   [RESUME=DIR] [SKIP_AGREEMENT=1] [GPU0_ONLY=1] bash benchmarks/gpu/h100_session.sh start TOTAL_S  # launch both; all ends by TOTAL_S
#   bash benchmarks/gpu/h100_session.sh collect [WAIT_S]  # after WAIT_S (or when all ended), copy results to $OUT
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# Session 2 ran with --start-concurrency 32 --prompts-per-level 2 and a 0.5 x C warm-up; with the whole first
# wave as warm-up levels are longer and the knee higher (session 3: 64, 1.5, every knee at 152-512, 4-6 min a
# trial). Session 4: the baselines, then TPE, and the top candidate and both baselines re-measured on the same
# card (the study keeps the time for that from its --timeout).
study_opts=(--trials 4 --top-k 1 --repeats 1 --workload random:1024:512:0.5 --start-concurrency 128
            --prompts-per-level 1.5)
case "$1" in
start)
  total_s=$2
  echo $(( $(date +%s) + total_s )) > /tmp/st/deadline
  # RESUME=DIR: DIR/<study>/{study.db,studies.tgz} of an earlier machine (a collect's output) are restored first,
  # so a study cut off by a lost machine goes on where its last copy ended.
  for s in h100-flash h100-flash-replica; do
    r=${RESUME:-/nonexistent}/$s; [ -f "$r/study.db" ] || continue
    mkdir -p "/tmp/st/$s/studies" && cp "$r/study.db" "/tmp/st/$s/" && cp "$r/run.log" "/tmp/st/$s/" 2>/dev/null
    [ -f "$r/studies.tgz" ] && tar xzf "$r/studies.tgz" -C "/tmp/st/$s"
  done
  if [ -n "${REMEASURE_AFRESH-}" ] && [ -f /tmp/st/h100-flash/study.db ]; then
    . /tmp/st/env.sh && python3 -c "
import json, sys, optuna
s = optuna.load_study(study_name='h100-flash', storage='sqlite:////tmp/st/h100-flash/study.db')
json.dump({k: s.user_attrs.get(k) for k in ('remeasurements', 'selection')}, open(sys.argv[1], 'w'), indent=1)
s.set_user_attr('remeasurements', {})" /tmp/st/h100-flash/remeasurements-before.json
  fi
  (cd "$here/../.." && CUDA_VISIBLE_DEVICES=0 VLLM_CACHE_ROOT=/tmp/st/vcache0 STUDY=h100-flash \
     setsid bash benchmarks/gpu/h100_flash_study.sh "$total_s" "${study_opts[@]}" ${STUDY_OPTS-} > /tmp/st/gpu0.out 2>&1 &)
  [ -n "${GPU0_ONLY-}" ] || (cd "$here/../.." && export CUDA_VISIBLE_DEVICES=1 VLLM_CACHE_ROOT=/tmp/st/vcache1 STUDY=h100-flash-replica &&
     setsid bash -c "[ -n \"\${SKIP_AGREEMENT-}\" ] || MORE_PHASES=\"\${AGREEMENT_MORE-2:3:360 1:8:960}\" bash benchmarks/gpu/agreement_rounds.sh \${AGREEMENT_ROUNDS-2} 8011 \${AGREEMENT_RATE-8} \${AGREEMENT_PROMPTS-960};
       bash benchmarks/gpu/h100_flash_study.sh \$(( \$(cat /tmp/st/deadline) - \$(date +%s) )) ${study_opts[*]} --seed 1" \
     > /tmp/st/gpu1.out 2>&1 &)
  sleep 2; pgrep -af "autotune|agreement" | head ;;
collect)
  end=$(( $(date +%s) + ${2:-0} ))
  while [ "$(date +%s)" -lt "$end" ] && pgrep -f "h100_flash_study|agreement_rounds" >/dev/null; do sleep 5; done
  for s in h100-flash h100-flash-replica; do
    d=/tmp/st/$s; [ -d "$d" ] || continue; mkdir -p "$OUT/$s"
    [ -f "$d/study.db" ] && python3 -c "import sqlite3,sys; sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))" \
      "$d/study.db" "$OUT/$s/study.db"
    cp "$d/run.log" "$d/remeasurements-before.json" "$OUT/$s/" 2>/dev/null; tar czf "$OUT/$s/studies.tgz" -C "$d" studies 2>/dev/null
  done
  [ -d /tmp/st/agreement ] && cp -r /tmp/st/agreement "$OUT/"
  cp /tmp/st/gpu0.out /tmp/st/gpu1.out "$OUT/" 2>/dev/null
  { date; nvidia-smi --query-gpu=index,memory.used --format=csv; ps -eo pid,etimes,args | grep -E "vllm|autotune|bench" |
    grep -v grep; } > "$OUT/state.txt" 2>&1
  tail -4 /tmp/st/gpu0.out /tmp/st/gpu1.out 2>/dev/null; cat "$OUT/state.txt" | head -20 ;;
esac
