"""Decision quality: under GPU-like run-to-run noise, how often is a study's winner within noise of the true
best, and how often does its verdict claim a gain over a baseline that does not exist? (issue #16, item 6)

Each seed runs one small but complete study (``run_study``: baselines, TPE trials, re-measurement of the
finalists, ``select_winner``) on the in-process sim engine with ``--sim-noise h200``: every measurement run
(every level of every trial's load search and every re-measurement) gets the run-to-run noise measured on an
H200 beyond what the request streams give (``autotune.sim.noise``: each run's request latencies scaled by one
lognormal factor per metric, its throughput by another), and the study is judged as a real-GPU study is (the
same P99 widening and throughput noise floor).

The truth: the sim is deterministic, so each configuration the study compared (its finalists and baselines)
is run again as a noise-free trial (``run_trial``, the sim engine's own settings, the seed's workload); its
output tok/s at the limit (its chosen level carried to the knee along its own levels) is its true value.

    python benchmarks/decision_quality.py --seeds 20
    python benchmarks/decision_quality.py --seeds 20 --all-trials     # truth also for every trial run
    python benchmarks/decision_quality.py --rejudge A-0.json A-20.json  # the stored runs judged again (see rejudge)
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from scipy import stats as scipy_stats

import autotune.trial as trial_mod
from autotune import records
from autotune.config import RunOptions, build_study_config
from autotune.records import Measurement
from autotune.selection import LoadCurve, flags_changed
from autotune.study import StudyConfig, run_study
from autotune.trial import LevelShape, run_trial

WITHIN_NOISE = 0.03  # "within noise of the best": the winner's true value >= (1 - 3%) x the true best
TARGET_FALSE_CLAIMS = 0.05
TARGET_WITHIN = 0.90


def study_config(seed: int, args: argparse.Namespace, out: Path) -> StudyConfig:
    opts = RunOptions(model="flash", gpus=1, p99_ms=args.p99_ms, engine="sim", trials=args.trials, top_k=args.top_k,
                      repeats=args.repeats, workload=args.workload, seed=seed, max_concurrency=args.max_concurrency,
                      out=str(out), study=f"dq-{seed}", storage="sqlite:///:memory:", sim_noise="h200",
                      **({"max_extensions": args.max_extensions} if args.max_extensions is not None else {}),
                      **({"prompts_per_level": args.prompts_per_level} if args.prompts_per_level else {}))
    return build_study_config(opts)


def true_value(cfg: StudyConfig, flags: dict[str, Any], out: Path, tag: str) -> float:
    """The configuration's noise-free output tok/s at the limit: a trial with the sim engine's own settings, its
    chosen level carried to the knee between it and the next level up along its own levels (what the verdict
    estimates). The level itself would understate the truth by up to the search's bisection step (20% in
    concurrency), more than the differences judged here."""
    # the truth does not depend on the study's level length: always autotune run's default
    settings = dataclasses.replace(cfg.settings, sim_noise=None,
                                   level=LevelShape(),
                                   search=dataclasses.replace(cfg.settings.search, p99_run_cv={}))
    r = run_trial(settings, flags, f"truth-{tag}", out / "truth" / tag / "server.log")
    if not r.feasible or r.concurrency is None:
        return 0.0
    curve = LoadCurve.from_levels([(lv.concurrency, lv.output_tok_s, lv.p99_ms) for lv in r.levels],
                                  [lv.runs for lv in r.levels])
    assert curve is not None
    limits = cfg.settings.search.limits_ms
    return curve.at_limit_tok_s(r.concurrency, Measurement(r.output_tok_s, r.p99_ms), limits)


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dq-") as tmp:
        out = Path(tmp)
        cfg = study_config(seed, args, out)
        t0 = time.perf_counter()
        storage = optuna.storages.InMemoryStorage()
        outcome = run_study(cfg, storage)
        study_s = time.perf_counter() - t0
        study = optuna.load_study(study_name=cfg.study_name, storage=storage)
        runs = sum(lv.runs for t in records.read_trials(study) if t.result for lv in t.result.levels) + sum(
            len(c.repeats) for c in outcome.selection.candidates)
        sel = outcome.selection
        cache: dict[str, float] = {}

        def truth(flags: dict[str, Any]) -> float:
            key = json.dumps(flags, sort_keys=True, default=str)
            if key not in cache:
                cache[key] = true_value(cfg, flags, out, str(len(cache)))
            return cache[key]

        t1 = time.perf_counter()
        compared = {c.trial_number: truth(c.flags) for c in sel.candidates}
        all_trials: dict[int, float] = {}
        if args.all_trials:
            study_trials = [t for t in records.read_trials(optuna.load_study(study_name=cfg.study_name, storage=storage)) if t.complete and t.result]
            all_trials = {t.number: truth(dict(t.result.flags)) for t in study_trials}  # type: ignore[union-attr]
        winner_load: dict[str, float] = {}
        if sel.winner is not None and sel.winner.concurrency is not None:  # the winner's chosen load, noise-free
            r = trial_mod.measure_once(dataclasses.replace(cfg.settings, sim_noise=None), sel.winner.flags,
                                       sel.winner.concurrency,
                                       "truth-winner", out / "truth" / "winner" / "server.log")
            winner_load = {"concurrency": sel.winner.concurrency, "output_tok_s": r.output_tok_s,
                           **{f"p99_{m}_ms": r.p99_ms(m) for m in cfg.settings.search.limits_ms}}
        truth_s = time.perf_counter() - t1
    winner = sel.winner
    w_true = compared.get(winner.trial_number, 0.0) if winner else 0.0
    best_compared = max(compared.values(), default=0.0)
    claims = []
    for name, g in sel.gains.items():
        b = next(c for c in sel.candidates if c.baseline == name)
        true_gain = (w_true - compared[b.trial_number]) / compared[b.trial_number] if compared[b.trial_number] > 0 \
            else (math.inf if w_true > 0 else 0.0)
        claims.append({"baseline": name, "significant": g.significant, "claimed_pct": g.gain_pct,
                       "claimed_low_pct": g.gain_pct_low, "claimed_high_pct": g.gain_pct_high,
                       "true_pct": true_gain * 100.0})
    return {
        "seed": seed, "study_s": study_s, "truth_s": truth_s, "noisy_runs": runs, "trials": outcome.n_trials_run,
        "winner": winner.trial_number if winner else None, "winner_baseline": winner.baseline if winner else "",
        "winner_true": w_true, "best_compared": best_compared,
        "best_all": max(all_trials.values(), default=math.nan),
        "within_compared": winner is not None and w_true >= (1 - WITHIN_NOISE) * best_compared,
        "within_all": (winner is not None and w_true >= (1 - WITHIN_NOISE) * max(all_trials.values()))
        if all_trials else None,
        "equal_within_noise": len(sel.equal_within_noise) > 1, "claims": claims, "verdict": sel.verdict,
        "compared": compared, "winner_load": winner_load,
        "winner_load_meets": bool(winner_load) and all(
            winner_load[f"p99_{m}_ms"] <= lim for m, lim in cfg.settings.search.limits_ms.items()),
        "candidates": [{"trial": c.trial_number, "baseline": c.baseline, "flags_changed": flags_changed(c.flags),
                        "concurrency": c.concurrency, "stepped_down_from": c.stepped_down_from,
                        "repeats_tok_s": [m.output_tok_s for m in c.repeats],
                        "repeats_p99_ms": [dict(m.p99_ms) for m in c.repeats],
                        "at_limit_tok_s": c.at_limit_tok_s(cfg.settings.search.limits_ms),
                        "true_tok_s": compared[c.trial_number]}
                       for c in sel.candidates],
    }


def clopper_pearson(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    if n == 0:
        return math.nan, math.nan
    lo = scipy_stats.beta.ppf((1 - conf) / 2, k, n - k + 1) if k > 0 else 0.0
    hi = scipy_stats.beta.ppf(1 - (1 - conf) / 2, k + 1, n - k) if k < n else 1.0
    return float(lo), float(hi)


def rate(label: str, k: int, n: int) -> str:
    lo, hi = clopper_pearson(k, n)
    return f"{label}: {k}/{n} = {100 * k / n if n else math.nan:.0f}% [95% CI {100 * lo:.0f}-{100 * hi:.0f}%]"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--repeats", type=int, default=RunOptions.model_fields["repeats"].default,
                   help="fresh-server re-measurements per finalist (default: autotune run's)")
    p.add_argument("--p99-ms", type=float, default=500.0)
    p.add_argument("--workload", default="random:1024:256:0.5")
    p.add_argument("--max-concurrency", type=int, default=256)
    p.add_argument("--max-extensions", type=int, help="in place of autotune run's default")
    p.add_argument("--prompts-per-level", type=float, help="in place of autotune run's default (measured requests "
                   "per level = this x concurrency)")
    p.add_argument("--all-trials", action="store_true", help="truth also for every trial the study ran (slower)")
    p.add_argument("--json-out", help="write every seed's figures here")
    p.add_argument("--summarize", nargs="+", metavar="JSON", help="print the rates over earlier --json-out files (.gz too) "
                   "(seeds run in several processes) and run nothing")
    p.add_argument("--rejudge", nargs="+", metavar="JSON", help="judge the finalists' stored runs of earlier --json-out "
                   "files again, with gain intervals joint over the finalists and one pair at a time, and run nothing")
    args = p.parse_args()
    if args.rejudge:
        rejudge([row for path in args.rejudge for row in _read_json(Path(path))])
        return 0
    if args.summarize:
        rows = [row for path in args.summarize for row in _read_json(Path(path))]
        summarize(sorted(rows, key=lambda r: r["seed"]), all_trials=rows[0]["within_all"] is not None)
        return 0
    rows = []
    print("seed  trials  runs  winner         true tok/s  best compared  within  equal  claims (baseline: claimed "
          "[low] / true)        study_s truth_s", flush=True)
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        row = run_seed(seed, args)
        rows.append(row)
        claims = "; ".join(f"{c['baseline']}: {'*' if c['significant'] else ''}{c['claimed_pct']:+.1f}% "
                           f"[{c['claimed_low_pct']:+.1f}] / {c['true_pct']:+.1f}%" for c in row["claims"])
        wname = f"{row['winner']}" + (f" ({row['winner_baseline']})" if row["winner_baseline"] else "")
        print(f"{row['seed']:4d}  {row['trials']:6d}  {row['noisy_runs']:4d}  {wname:13s}  {row['winner_true']:10.0f}"
              f"  {row['best_compared']:13.0f}  {'yes' if row['within_compared'] else 'NO':6s}  "
              f"{'yes' if row['equal_within_noise'] else '-':5s}  {claims:45s}  {row['study_s']:6.1f} "
              f"{row['truth_s']:6.1f}", flush=True)
    summarize(rows, args.all_trials)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1, default=str))
    return 0


# Flags that vLLM's defaults do not set, each counted by selection.flags_changed: the stored finalists keep only
# how many of theirs were changed, which is all the recommendation rule reads of them.
_FLAGS_CHANGED = {"max-num-seqs": 100, "kv-cache-dtype": "fp8", "max-num-batched-tokens": 3000,
                  "gpu-memory-utilization": 0.95, "max-cudagraph-capture-size": 128, "enable-prefix-caching": False}


def rejudge(rows: list[dict]) -> None:
    """The same runs judged by both interval rules: each seed's finalists rebuilt from their stored runs carried to
    the limit (the trial's own run first, then the re-measurements; every one at a P99 within the limit, as the
    stored finalists met it), then ``select_winner`` with the real-GPU noise floor, once as it is (intervals joint
    over the finalists) and once with Student's t for every pair (``selection.critical_value`` replaced). A paired
    comparison: only the rule differs, not the noise draws. Finalists that met no limit are left out (their
    gains are unbounded under either rule)."""
    from scipy.special import stdtrit

    from autotune import selection
    from autotune.config import REAL_GPU_NOISE_FLOOR

    joint_value = selection.critical_value

    def pairwise(finalists: int, dof: int, confidence: float) -> float:
        return float(stdtrit(dof, 0.5 + confidence / 2))

    def judged(row: dict) -> dict:
        finalists, truth = [], {}
        for c in row["candidates"]:
            values = [v for v in c["at_limit_tok_s"] if v and math.isfinite(v)]
            if not values:
                continue
            flags = dict(list(_FLAGS_CHANGED.items())[:c["flags_changed"]])  # as many changed as it had
            cand = selection.Candidate(c["trial"], flags, c["concurrency"], values[0], {"ttft": 1.0},
                                       baseline=c["baseline"])
            cand.search_level = (c["concurrency"], values[0], {"ttft": 1.0})
            cand.repeats = [Measurement(v, {"ttft": 1.0}) for v in values[1:]]
            finalists.append(cand)
            truth[c["trial"]] = c["true_tok_s"]
        repeats = min(len(c.repeats) for c in finalists)
        sel = selection.select_winner(finalists, {"ttft": 2.0}, repeats, noise_floor=REAL_GPU_NOISE_FLOOR)
        won = truth[sel.winner.trial_number]
        gains = list(sel.gains.values())
        return {"within": won >= (1 - WITHIN_NOISE) * max(truth.values()),
                "claims": sum(g.significant for g in gains),
                "false": sum(g.significant and won <= truth[g.baseline_trial] for g in gains),
                "covered": sum(g.gain_pct_low <= 100 * (won / truth[g.baseline_trial] - 1) <= g.gain_pct_high
                               for g in gains), "gains": len(gains),
                "equal": bool(sel.equal_within_noise), "finalists": len(finalists)}

    for name, value in (("joint over the finalists (now)", joint_value), ("one pair at a time (before)", pairwise)):
        selection.critical_value = value
        out = [judged(row) for row in rows]
        n = len(out)
        print(f"{name}: {n} seeds, {np.mean([o['finalists'] for o in out]):.1f} finalists on average")
        print("  " + rate("winner within 3% of the true best", sum(o["within"] for o in out), n))
        print("  " + rate("false gain claims, of significant claims", sum(o["false"] for o in out),
                          sum(o["claims"] for o in out)))
        print("  " + rate("seeds with a false gain claim", sum(o["false"] > 0 for o in out), n))
        print("  " + rate("gain intervals that hold the true gain", sum(o["covered"] for o in out),
                          sum(o["gains"] for o in out)))
        print("  " + rate("verdict 'equal within noise'", sum(o["equal"] for o in out), n))
    selection.critical_value = joint_value


def _read_json(path: Path) -> list[dict]:
    """A --json-out file, gzipped or not (the kept ones in docs/results/raw/decision-quality/ are)."""
    return json.loads(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes())


def summarize(rows: list[dict], all_trials: bool) -> None:
    n = len(rows)
    claims = [c for r in rows for c in r["claims"]]
    sig = [c for c in claims if c["significant"]]
    false = [c for c in sig if c["true_pct"] <= 0]
    small = [c for c in sig if 0 < c["true_pct"] < 100 * WITHIN_NOISE]
    seeds_false = sum(1 for r in rows if any(c["significant"] and c["true_pct"] <= 0 for c in r["claims"]))
    print()
    print(rate("winner within 3% of the true best of the compared configurations", sum(r["within_compared"] for r in rows), n))
    if all_trials:
        print(rate("winner within 3% of the true best of all trials run", sum(bool(r["within_all"]) for r in rows), n))
    print(rate("false gain claims (claimed significant, true gain <= 0), of claims", len(false), len(sig)))
    print(rate("false gain claims, of winner-vs-baseline comparisons", len(false), len(claims)))
    print(rate("seeds with at least one false gain claim", seeds_false, n))
    print(rate("claims that were true gains under 3%", len(small), len(sig)))
    print(rate("verdict 'equal within noise'", sum(r["equal_within_noise"] for r in rows), n))
    print(rate("winner's chosen load meets the limit noise-free", sum(r["winner_load_meets"] for r in rows), n))
    print(rate("winner was a baseline", sum(bool(r["winner_baseline"]) for r in rows), n))
    covered = [c for c in claims if c.get("claimed_high_pct") is not None and math.isfinite(c["true_pct"])
               and c["claimed_low_pct"] <= c["true_pct"] <= c["claimed_high_pct"]]
    finite = [c for c in claims if c.get("claimed_high_pct") is not None and math.isfinite(c["true_pct"])]
    print(rate("gain intervals that hold the true gain", len(covered), len(finite)))
    print(f"study wall s: median {np.median([r['study_s'] for r in rows]):.1f}; noisy measurement runs per study: "
          f"median {np.median([r['noisy_runs'] for r in rows]):.0f}")


if __name__ == "__main__":
    sys.exit(main())
