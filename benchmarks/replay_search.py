"""The load search replayed on a GPU trial's recorded runs: which levels would today's search measure, how often,
where would it put the knee, and how many seconds of that trial's load would it spend?

A trial keeps every run's requests (`trials/N/levels/NN-cC.jsonl.gz`, one file per run, in order) and its level
records (wall seconds, throughput). Here ``measure(c)`` hands the search the next recorded run at concurrency c,
rebuilt from its requests (TTFT, TPOT, E2E per request; a level's ITL gaps are not kept, so an ITL-limited trial
cannot be replayed), with the level's recorded throughput; the time a run costs is its level's recorded wall.
The replay stops where the search asks for a run that was never recorded. The search's settings are the
study's (limits, GPU run-to-run spread, cap, extensions) with the start given here.

    python benchmarks/replay_search.py STORAGE_URL STUDY TRIAL [--start C ...] [--max-extensions N] [--doubling]
        [--prompts-per-level P] [--json]

On the H200 pair of docs/results/h200-reproducibility.md, e.g.:
    python benchmarks/replay_search.py sqlite:///gpu0.db repro-ttft-gpu0 0 --levels-dir gpu0/repro-ttft-gpu0/trials/0/levels --start 8 128 256
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import optuna

from autotune import records
from autotune.config import REAL_GPU_P99_RUN_CV
from autotune.loadsearch import LoadSearchConfig, search_load
from autotune.metrics import RequestOutput, summarize


class Unrecorded(Exception):
    pass


def recorded_runs(levels_dir: Path) -> dict[int, list[list[RequestOutput]]]:
    """Each concurrency's recorded runs in the order they ran, as the measured (non-warm-up) requests."""
    runs: dict[int, list[list[RequestOutput]]] = defaultdict(list)
    for path in sorted(levels_dir.glob("*-c*.jsonl.gz")):
        c = int(re.search(r"-c(\d+)\.jsonl\.gz$", path.name).group(1))
        outs = []
        with gzip.open(path, "rt") as f:
            for line in f:
                r = json.loads(line)
                if r.get("warmup") or not r.get("ok"):
                    continue
                ttft_s = r["ttft_ms"] / 1000.0
                outs.append(RequestOutput(True, r["prompt_tokens"], r["output_tokens"], ttft_s, (),
                                          r["e2el_ms"] / 1000.0, start_s=r["start_s"]))
        runs[c].append(outs)
    return runs


def replay(trial: records.TrialRecord, levels_dir: Path, cfg: LoadSearchConfig,
           prompts_per_level: float | None = None, recorded_prompts_per_level: float = 3.0) -> dict:
    """``prompts_per_level`` below the recorded one: each run keeps only its first measured requests by start
    time, as a shorter level would have sent them (in a closed loop the later ones only add to the same load), and
    costs its level's wall scaled by its waves (one warm-up wave and the measured ones)."""
    level_of = {lv.concurrency: lv for lv in trial.result.levels}
    runs = recorded_runs(levels_dir)
    wall_scale = 1.0
    if prompts_per_level is not None:
        for c, level_runs in runs.items():
            keep = max(32, int(prompts_per_level * c))
            runs[c] = [sorted(outs, key=lambda o: o.start_s)[:keep] for outs in level_runs]
        wall_scale = (1.0 + prompts_per_level) / (1.0 + recorded_prompts_per_level)
    used: dict[int, int] = defaultdict(int)
    spent_s = 0.0

    def measure(c: int):
        nonlocal spent_s
        if used[c] >= len(runs.get(c, [])):
            raise Unrecorded(f"run {used[c] + 1} at concurrency {c} was never recorded")
        outs = runs[c][used[c]]
        used[c] += 1
        spent_s += level_of[c].wall_s * wall_scale
        tokens = sum(o.output_tokens for o in outs)
        return replace(summarize(outs, duration_s=tokens / level_of[c].output_tok_s), output_tok_s=level_of[c].output_tok_s)

    try:
        res = search_load(measure, cfg)
        stopped = res.stop_reason
    except Unrecorded as e:
        return {"start": cfg.start_concurrency, "unrecorded": str(e), "runs": dict(used), "load_s": spent_s}
    metric = next(iter(cfg.limits_ms))
    return {"start": cfg.start_concurrency, "stop_reason": stopped, "knee": res.best.concurrency if res.best else None,
            "levels": [(lv.concurrency, lv.runs, round(lv.p99_ms[metric]), round(lv.judged_p99_ms(metric)), lv.feasible)
                       for lv in res.levels],
            "runs": sum(lv.runs for lv in res.levels), "load_s": spent_s}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("storage")
    p.add_argument("study")
    p.add_argument("trial", type=int)
    p.add_argument("--levels-dir", type=Path, required=True, help="the trial's levels folder (NN-cC.jsonl.gz)")
    p.add_argument("--start", type=int, nargs="+", default=[8])
    p.add_argument("--max-extensions", type=int, help="in place of the study's")
    p.add_argument("--doubling", action="store_true",
                   help="steps up from a start above 8 double, as before near_growth (not x1.41 up to twice the start)")
    p.add_argument("--prompts-per-level", type=float,
                   help="replay shorter levels: each run cut to its first P x concurrency measured requests")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=args.study, storage=args.storage)
    [trial] = [t for t in records.read_trials(study) if t.number == args.trial]
    stored = records.read_run_options(study) or {}
    limits = {metric: float((stored.get("slo_ms") or {}).get(metric) or stored["p99_ms"])
              for metric in trial.result.levels[0].p99}
    if "itl" in limits:
        print("an ITL limit cannot be replayed: the levels keep no ITL gaps", file=sys.stderr)
        return 2
    recorded = {"levels": [(lv.concurrency, lv.runs, round(lv.p99_ms[m]), lv.feasible)
                           for lv in trial.result.levels for m in list(limits)[:1]],
                "runs": sum(lv.runs for lv in trial.result.levels),
                "load_s": trial.result.load_wall_s, "knee": trial.result.concurrency}
    out = {"recorded": recorded, "replays": []}
    for start in args.start:
        cfg = LoadSearchConfig(limits_ms=limits,
                               max_concurrency=int(stored.get("max_concurrency", 1024)),
                               max_extensions=args.max_extensions if args.max_extensions is not None
                               else int(stored.get("max_extensions", 2)),
                               confidence=float(stored.get("confidence", 0.9)),
                               p99_run_cv={m: REAL_GPU_P99_RUN_CV[m] for m in limits}).starting_at(start)
        if args.doubling:
            cfg = replace(cfg, near_growth=None)
        out["replays"].append(replay(trial, args.levels_dir, cfg, args.prompts_per_level,
                                     float(stored.get("prompts_per_level", 3.0))))
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"recorded: {recorded['runs']} runs over {len(recorded['levels'])} levels, {recorded['load_s']:.0f} s, "
          f"knee {recorded['knee']}: {recorded['levels']}")
    for r in out["replays"]:
        if "unrecorded" in r:
            print(f"start {r['start']}: stopped, {r['unrecorded']} ({r['load_s']:.0f} s replayed)")
            continue
        print(f"start {r['start']}: {r['runs']} runs over {len(r['levels'])} levels, {r['load_s']:.0f} s, knee "
              f"{r['knee']} ({r['stop_reason']}): {r['levels']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
