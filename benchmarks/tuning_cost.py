"""Tuning cost: how many trials the study's sampler needs to get within 2% of the exhaustive-grid optimum.

Target (issue): with the flash search space on one GPU, reach within 2% of the grid optimum in <= 20 trials
(median over 10 seeds), where the grid needs all of its points; random search at the same budget reported.

One point's objective is what a study trial measures: the load search's best SLO-meeting output tok/s
(P99 TTFT <= 500 ms, random 1024 in / 512 out, closed loop), each level modelled by the sim's ``predict``
in virtual time (the model the ``sim`` engine serves) with the study's prompt count per level
(3 x concurrency, at least 32, at most 1500). A point whose memory plan does not fit, or that the sim
refuses to start, scores 0 with a violated constraint, like the study.

The grid (every point of ``space.grid``) is evaluated once and cached in ``benchmarks/.cache/`` keyed by
the full flag dict, under a fingerprint of the setup and of the sim's sources (a changed sim model starts a
fresh cache). The samplers then run through real ``optuna.create_study`` / ``study.optimize`` with the
objective reading the cache (the space is finite, so every sampled point is a grid point).

    python benchmarks/tuning_cost.py                       # grid (cached) + study TPE, random, TPE w/o baselines
    python benchmarks/tuning_cost.py --methods tpe-study,tpe-startup10 --seeds 10 --trials 20
    python benchmarks/tuning_cost.py --json-out /tmp/tuning_cost.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna

import autotune
from autotune.errors import EngineStartError
from autotune.gpus import GpuSpec, load_gpu
from autotune.loadsearch import LoadSearchConfig, search_load
from autotune.memory import plan_memory
from autotune.metrics import BenchResult
from autotune.models import PRESETS, ModelSpec
from autotune.sim.predict import predict
from autotune.space import SearchSpace, load_space
from autotune.study import BASELINES, baseline_flags, baseline_launch_flags
from autotune.trial import LevelShape

SOURCE_ROOT = Path(autotune.__file__).resolve().parents[1]  # the folder that holds the installed package
CACHE_DIR = Path(__file__).resolve().parent / ".cache"
PRESET = "flash"
GPUS = 1
GPU_TYPE = "h100"
INPUT_LEN, OUTPUT_LEN = 1024, 512
METRIC, LIMIT_MS = "ttft", 500.0
START_CONCURRENCY, MAX_CONCURRENCY = 8, 1024  # the CLI's defaults
LEVEL = LevelShape()  # a study's level, as `autotune run` runs it
WITHIN = 0.98  # "within 2%"
AT_OPTIMUM = 0.999  # a stricter, secondary bar: the optimum itself (within 0.1%)
PATIENCE = 12  # the study's stagnation rule: stop after this many trials without a 1% gain
# Sources whose change changes the figures: part of the cache fingerprint.
FINGERPRINT_SOURCES = ("autotune/sim", "autotune/memory.py", "autotune/loadsearch.py", "autotune/metrics.py",
                       "autotune/flags.py", "autotune/models.py", "autotune/gpus.py", "autotune/calibration",
                       "autotune/search_spaces/flash.yaml")


# ---------------------------------------------------------------- one point

@dataclass(frozen=True)
class Setup:
    model: ModelSpec
    gpu: GpuSpec
    space: SearchSpace


def make_setup() -> Setup:
    # The `flash` preset (GLM-4.6V-Flash: GLM-4-9B backbone + vision tower), as `autotune run --model flash`.
    model = PRESETS[PRESET]
    return Setup(model, load_gpu(GPU_TYPE), load_space(None, model, GPUS, preset=PRESET))


def num_prompts(concurrency: int) -> int:
    return LEVEL.load_config(concurrency).num_prompts


def evaluate(setup: Setup, flags: dict[str, Any]) -> dict[str, Any]:
    """What one study trial would record for ``flags``: value (SLO-meeting output tok/s), constraint (ms)."""
    plan = plan_memory(setup.model, setup.gpu, flags)
    if not plan.fits:
        return {"output_tok_s": 0.0, "feasible": False, "constraint_ms": 10.0 * LIMIT_MS, "concurrency": None,
                "p99_ms": None, "failure_class": plan.failure_class, "levels": 0}

    def measure(concurrency: int) -> BenchResult:
        return predict(setup.model, setup.gpu, flags, INPUT_LEN, OUTPUT_LEN, concurrency, num_prompts(concurrency))

    ceiling = int(flags.get("max-num-seqs") or 1024) * int(flags.get("data-parallel-size") or 1)
    cfg = LoadSearchConfig(limits_ms={METRIC: LIMIT_MS}, start_concurrency=START_CONCURRENCY,
                           max_concurrency=min(MAX_CONCURRENCY, ceiling))
    try:
        result = search_load(measure, cfg)
    except EngineStartError as e:
        return {"output_tok_s": 0.0, "feasible": False, "constraint_ms": 10.0 * LIMIT_MS, "concurrency": None,
                "p99_ms": None, "failure_class": e.failure_class, "levels": 0}
    best = result.best
    if best is None:
        lowest = result.lowest
        p99 = lowest.p99_ms[METRIC] if lowest else math.nan
        return {"output_tok_s": 0.0, "feasible": False,
                "constraint_ms": max(p99 - LIMIT_MS, 1e-3) if not math.isnan(p99) else 10.0 * LIMIT_MS,
                "concurrency": lowest.concurrency if lowest else None, "p99_ms": None if math.isnan(p99) else p99,
                "failure_class": "no_feasible_load", "levels": len(result.levels)}
    return {"output_tok_s": float(best.result.output_tok_s), "feasible": True,
            "constraint_ms": float(best.p99_ms[METRIC] - LIMIT_MS), "concurrency": best.concurrency,
            "p99_ms": float(best.p99_ms[METRIC]), "failure_class": "", "levels": len(result.levels),
            "stop_reason": result.stop_reason}


def point_key(flags: dict[str, Any]) -> str:
    return json.dumps(flags, sort_keys=True)


def grid_flags(setup: Setup) -> list[dict[str, Any]]:
    """Full flag dicts of the grid, as the study's ``space.sample`` builds them (fixed flags included)."""
    return [{**setup.space.fixed, **params} for params in setup.space.grid(setup.model, GPUS)]


def baseline_point(setup: Setup, name: str) -> dict[str, Any]:
    """The flags the study launches for a baseline (its own flags, not their projection on the space)."""
    flags = baseline_launch_flags(name, setup.model, GPUS, setup.space.fixed)
    if not setup.model.is_vlm or int(flags.get("tensor-parallel-size", 1)) <= 1:
        flags.pop("mm-encoder-tp-mode", None)
    return flags


# ---------------------------------------------------------------- cache

def fingerprint() -> dict[str, Any]:
    h = hashlib.sha256()
    for rel in FINGERPRINT_SOURCES:
        p = SOURCE_ROOT / rel
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        for f in files:
            if f.is_file() and f.suffix in (".py", ".yaml"):
                h.update(str(f.relative_to(SOURCE_ROOT)).encode())
                h.update(f.read_bytes())
    return {"preset": PRESET, "gpus": GPUS, "gpu_type": GPU_TYPE, "workload": f"random:{INPUT_LEN}:{OUTPUT_LEN}",
            "metric": METRIC, "limit_ms": LIMIT_MS, "start_concurrency": START_CONCURRENCY,
            "max_concurrency": MAX_CONCURRENCY,
            "prompts": [LEVEL.prompts_per_level, LEVEL.min_prompts, LEVEL.max_prompts],
            "sources_sha256": h.hexdigest()[:16]}


class Cache:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fp = fingerprint()
        self.points: dict[str, dict[str, Any]] = {}
        if path.is_file():
            try:
                raw = json.loads(path.read_text())
            except (OSError, ValueError):
                raw = {}
            if raw.get("fingerprint") == self.fp:
                self.points = raw.get("points", {})
            else:
                print(f"cache {path}: setup or sim sources changed, starting afresh", file=sys.stderr)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fp, "points": self.points}))
        os.replace(tmp, self.path)


_WORKER_SETUP: Setup | None = None


def _worker_init() -> None:
    global _WORKER_SETUP
    _WORKER_SETUP = make_setup()


def _worker_eval(flags: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    assert _WORKER_SETUP is not None
    t0 = time.perf_counter()
    rec = evaluate(_WORKER_SETUP, flags)
    rec["wall_s"] = time.perf_counter() - t0
    return point_key(flags), rec


def fill_cache(cache: Cache, points: list[dict[str, Any]], workers: int) -> float:
    """Evaluate the points missing from the cache; returns the wall time spent."""
    missing = [p for p in points if point_key(p) not in cache.points]
    if not missing:
        return 0.0
    t0 = time.perf_counter()
    print(f"evaluating {len(missing)} of {len(points)} points on {workers} worker(s)...", file=sys.stderr)
    with mp.get_context("fork").Pool(workers, initializer=_worker_init) as pool:
        for i, (key, rec) in enumerate(pool.imap_unordered(_worker_eval, missing, chunksize=8), 1):
            cache.points[key] = rec
            if i % 128 == 0 or i == len(missing):
                cache.save()
                el = time.perf_counter() - t0
                print(f"  {i}/{len(missing)}  {el:.0f} s  (eta {el / i * (len(missing) - i):.0f} s)", file=sys.stderr)
    return time.perf_counter() - t0


# ---------------------------------------------------------------- grid analysis

def grid_analysis(setup: Setup, cache: Cache) -> dict[str, Any]:
    points = grid_flags(setup)
    values = [cache.points[point_key(p)]["output_tok_s"] for p in points]
    best_i = max(range(len(points)), key=lambda i: values[i])
    optimum = values[best_i]
    names = [n for n, s in setup.space.params.items() if setup.space.conditions_hold(s.when, setup.model, 1)]
    flags_effect: dict[str, dict[str, Any]] = {}
    for name in names:
        groups: dict[str, list[float]] = {}
        for p, v in zip(points, values):
            rest = point_key({k: x for k, x in p.items() if k != name})
            groups.setdefault(rest, []).append(v)
        spreads = [(max(g) - min(g)) / max(g) if max(g) > 0 else 0.0 for g in groups.values()]
        by_value: dict[str, float] = {}
        for p, v in zip(points, values):
            k = json.dumps(p[name])
            by_value[k] = max(by_value.get(k, 0.0), v)
        flags_effect[name] = {"groups_changed": sum(s > 1e-9 for s in spreads), "groups": len(groups),
                              "max_spread": max(spreads), "median_spread": statistics.median(spreads),
                              "best_by_value": {k: v / optimum for k, v in by_value.items()}}
    feasible = [v for v in values if v > 0]
    return {
        "n_points": len(points), "n_feasible": len(feasible), "optimum_tok_s": optimum,
        "optimum_flags": points[best_i], "optimum_record": cache.points[point_key(points[best_i])],
        "n_optimal": sum(v >= optimum * (1 - 1e-9) for v in values),
        "n_within": sum(v >= WITHIN * optimum for v in values),
        "distinct_values": len({round(v, 6) for v in values}),
        "distinct_concurrency": sorted({cache.points[point_key(p)]["concurrency"] for p in points},
                                       key=lambda c: (c is None, c)),
        "median_tok_s": statistics.median(values), "min_tok_s": min(values),
        "flags": flags_effect,
        "eval_wall_s_total": sum(cache.points[point_key(p)].get("wall_s", 0.0) for p in points),
    }


# ---------------------------------------------------------------- samplers

def _tpe(n_startup: int = 6, multivariate: bool = True, group: bool = True, **extra: Any):
    def make(seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup, multivariate=multivariate,
                                          group=group, constant_liar=True, **extra)
    return make


METHODS: dict[str, tuple[str, Callable[[int], optuna.samplers.BaseSampler], bool]] = {
    # name: (description, sampler factory(seed), baselines enqueued first)
    "tpe-study": ("TPE as autotune/study.py configures it (6 startup, multivariate, group), baselines first",
                  _tpe(), True),
    "random": ("RandomSampler, baselines first", lambda seed: optuna.samplers.RandomSampler(seed=seed), True),
    "tpe-nobaselines": ("TPE as the study, no baselines", _tpe(), False),
    "random-nobaselines": ("RandomSampler, no baselines", lambda seed: optuna.samplers.RandomSampler(seed=seed),
                           False),
    "tpe-startup10": ("TPE, n_startup_trials=10, baselines first", _tpe(n_startup=10), True),
    "tpe-startup3": ("TPE, n_startup_trials=3, baselines first", _tpe(n_startup=3), True),
    "tpe-independent": ("TPE, multivariate=False (independent), baselines first",
                        _tpe(multivariate=False, group=False), True),
}


def run_method(setup: Setup, cache: Cache, sampler_factory: Callable[[int], optuna.samplers.BaseSampler],
               with_baselines: bool, seed: int, n_trials: int) -> list[dict[str, Any]]:
    """One study; returns the trials in order (value, feasible, flags)."""
    study = optuna.create_study(direction="maximize", sampler=sampler_factory(seed))
    if with_baselines:
        for name in BASELINES:
            params = setup.space.params_for(baseline_flags(name, setup.model, GPUS), setup.model, GPUS)
            study.enqueue_trial(params, user_attrs={"baseline": name}, skip_if_exists=False)
    trials: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        flags = setup.space.sample(trial, setup.model, GPUS)
        baseline = trial.user_attrs.get("baseline", "")
        if baseline:
            flags = baseline_point(setup, baseline)
        key = point_key(flags)
        if key not in cache.points:  # only a baseline's exact flags can miss; evaluated up front
            cache.points[key] = evaluate(setup, flags)
        rec = cache.points[key]
        trial.set_constraint("p99_minus_limit_ms", rec["constraint_ms"])
        trial.set_user_attr("feasible", rec["feasible"])
        trials.append({"value": rec["output_tok_s"] if rec["feasible"] else 0.0, "feasible": rec["feasible"],
                       "flags": flags, "baseline": baseline})
        return float(rec["output_tok_s"])

    study.optimize(objective, n_trials=n_trials, catch=())
    return trials


def trajectory_stats(trials: list[dict[str, Any]], optimum: float) -> dict[str, Any]:
    best, first_within, first_opt, since, stopped_at = 0.0, None, None, 0, None
    best_at_stop = None
    for i, t in enumerate(trials, 1):
        v = t["value"] if t["feasible"] else 0.0
        if v > best * 1.01:  # the study's stagnation rule counts 1% gains
            since = 0
        else:
            since += 1
        best = max(best, v)
        if first_within is None and best >= WITHIN * optimum:
            first_within = i
        if first_opt is None and best >= AT_OPTIMUM * optimum:
            first_opt = i
        if stopped_at is None and since >= PATIENCE and best > 0:
            stopped_at, best_at_stop = i, best
    return {"ratio": best / optimum, "first_within": first_within, "first_optimum": first_opt,
            "distinct_points": len({point_key(t["flags"]) for t in trials}),
            "patience_stop": stopped_at, "ratio_with_patience": (best_at_stop if stopped_at else best) / optimum}


def summarize_method(stats: list[dict[str, Any]], n_trials: int) -> dict[str, Any]:
    ratios = [s["ratio"] for s in stats]
    firsts = [s["first_within"] if s["first_within"] is not None else math.inf for s in stats]
    opts = [s["first_optimum"] if s["first_optimum"] is not None else math.inf for s in stats]
    return {"median_ratio": statistics.median(ratios), "min_ratio": min(ratios), "max_ratio": max(ratios),
            "frac_within": sum(r >= WITHIN for r in ratios) / len(ratios),
            "median_trials_to_within": statistics.median(firsts),
            "frac_optimum": sum(r >= AT_OPTIMUM for r in ratios) / len(ratios),
            "median_trials_to_optimum": statistics.median(opts),
            "frac_within_with_patience": sum(s["ratio_with_patience"] >= WITHIN for s in stats) / len(stats),
            "patience_stops": sum(s["patience_stop"] is not None for s in stats),
            "median_distinct_points": statistics.median(s["distinct_points"] for s in stats),
            "target_met": statistics.median(ratios) >= WITHIN and statistics.median(firsts) <= n_trials}


# ---------------------------------------------------------------- report

def _fmt_trials(x: float) -> str:
    return "never" if math.isinf(x) else f"{x:g}"


def print_report(setup: Setup, grid: dict[str, Any], baselines: dict[str, dict[str, Any]],
                 results: dict[str, dict[str, Any]], per_seed: dict[str, list[dict[str, Any]]], args: Any) -> None:
    opt = grid["optimum_tok_s"]
    print(f"\n## Grid: {grid['n_points']} points, {grid['n_feasible']} feasible, optimum {opt:,.1f} output tok/s")
    print(f"distinct objective values: {grid['distinct_values']}; points at the optimum: {grid['n_optimal']}; "
          f"within 2%: {grid['n_within']} ({grid['n_within'] / grid['n_points']:.1%}); "
          f"median point {grid['median_tok_s'] / opt:.3f} of the optimum, worst {grid['min_tok_s'] / opt:.3f}")
    print(f"chosen concurrency over the grid: {grid['distinct_concurrency']}")
    rec = grid["optimum_record"]
    print(f"optimum flags: {json.dumps(grid['optimum_flags'])}  (c={rec['concurrency']}, "
          f"P99 TTFT {rec['p99_ms']:.0f} ms)")
    for name, b in baselines.items():
        print(f"baseline {name}: {b['output_tok_s']:,.1f} tok/s = {b['output_tok_s'] / opt:.3f} of the optimum "
              f"(c={b['concurrency']}, P99 TTFT {b['p99_ms'] or float('nan'):.0f} ms)")
    print("\n| flag | groups where it changes the value | max effect | median effect | best value by choice "
          "(/ optimum) |")
    print("|---|---:|---:|---:|---|")
    for name, f in grid["flags"].items():
        by = ", ".join(f"{k}: {v:.3f}" for k, v in f["best_by_value"].items())
        print(f"| {name} | {f['groups_changed']}/{f['groups']} | {f['max_spread']:.1%} | {f['median_spread']:.1%} "
              f"| {by} |")
    p_random = 1 - (1 - grid["n_within"] / grid["n_points"]) ** (args.trials - 2)
    p_opt = 1 - (1 - grid["n_optimal"] / grid["n_points"]) ** (args.trials - 2)
    print(f"\n(random search, analytic: P(at least one of {args.trials - 2} uniform draws within 2%) = "
          f"{p_random:.1%}, at the optimum = {p_opt:.1%}, baselines aside)")
    print(f"\n## Samplers: {args.trials} trials (baselines included), seeds 0..{args.seeds - 1}")
    print("| method | median best/opt | min | max | seeds within 2% | median trials to 2% | "
          "within 2% with patience=12 | seeds at optimum (0.1%) | median trials to optimum | target met |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, r in results.items():
        print(f"| {name} | {r['median_ratio']:.4f} | {r['min_ratio']:.4f} | {r['max_ratio']:.4f} | "
              f"{r['frac_within']:.0%} | {_fmt_trials(r['median_trials_to_within'])} | "
              f"{r['frac_within_with_patience']:.0%} | {r['frac_optimum']:.0%} | "
              f"{_fmt_trials(r['median_trials_to_optimum'])} | {'yes' if r['target_met'] else 'no'} |")
    for key, label in (("first_within", "within 2%"), ("first_optimum", "the optimum (0.1%)")):
        print(f"\nper seed, trials to {label} ('-': not reached):")
        for name, stats in per_seed.items():
            cells = " ".join(f"{s[key]:>2}" if s[key] else " -" for s in stats)
            print(f"  {name:18s} {cells}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--methods", default="tpe-study,random,tpe-nobaselines",
                    help=f"comma-separated, of: {', '.join(METHODS)}")
    ap.add_argument("--cache", type=Path, default=CACHE_DIR / "tuning_cost_grid.json")
    ap.add_argument("--json-out", type=Path, default=None, help="write every figure and trajectory as JSON")
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown method {unknown[0]!r}; known: {', '.join(METHODS)}")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t_start = time.perf_counter()
    setup = make_setup()
    cache = Cache(args.cache)
    points = grid_flags(setup)
    sizes = [len(s.domain_values()) for n, s in setup.space.params.items()
             if setup.space.conditions_hold(s.when, setup.model, 1)]
    assert len(points) == math.prod(sizes) * len(setup.space.tp_choices), (len(points), sizes)
    base_points = {name: baseline_point(setup, name) for name in BASELINES}
    grid_wall = fill_cache(cache, points + list(base_points.values()), args.workers)
    cache.save()
    grid = grid_analysis(setup, cache)
    baselines = {name: cache.points[point_key(f)] | {"flags": f} for name, f in base_points.items()}
    opt = grid["optimum_tok_s"]
    t_samplers = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    per_seed: dict[str, list[dict[str, Any]]] = {}
    trajectories: dict[str, list[list[dict[str, Any]]]] = {}
    for name in methods:
        _, factory, with_bl = METHODS[name]
        runs = [run_method(setup, cache, factory, with_bl, seed, args.trials) for seed in range(args.seeds)]
        trajectories[name] = [[{"value": t["value"], "baseline": t["baseline"]} for t in r] for r in runs]
        per_seed[name] = [trajectory_stats(r, opt) for r in runs]
        results[name] = summarize_method(per_seed[name], args.trials)
    sampler_wall = time.perf_counter() - t_samplers
    print_report(setup, grid, baselines, results, per_seed, args)
    total = time.perf_counter() - t_start
    print(f"\nwall: grid evaluation {grid_wall:.0f} s this run ({'cached' if grid_wall == 0 else 'computed'}; "
          f"sum of per-point walls {grid['eval_wall_s_total']:.0f} s of CPU), samplers {sampler_wall:.0f} s, "
          f"total {total:.0f} s")
    if args.json_out:
        args.json_out.write_text(json.dumps({
            "fingerprint": cache.fp, "grid": grid, "baselines": baselines, "results": results,
            "per_seed": per_seed, "trajectories": trajectories,
            "methods": {m: METHODS[m][0] for m in methods},
            "wall_s": {"grid": grid_wall, "samplers": sampler_wall, "total": total}}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
