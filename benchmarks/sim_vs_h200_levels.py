"""The sim engine against every steady-state level the H200 reproducibility pairs measured (issue #21).

Three studies of docs/results/raw, each run twice side by side (one H200 per copy; vLLM 0.26.0, the weightless
GLM-4-9B-shaped model `autotune.testing.models.WEIGHTLESS_FLASH_CONFIG`, `--load-format dummy`):
`h200-pair3-ttft500-short` (random:1024:128:0.5, P99 TTFT <= 500 ms), `h200-pair2-ttft500` (random:1024:512:0.5,
the same limit) and `h200-pair4-itl50-short` (random:1024:128:0.5, P99 ITL <= 50 ms). Every run of every level,
trials' and fresh-server re-measurements' alike, is replayed on the in-process sim engine (exact: no sim noise)
with the trial's flags, the level's concurrency, the study's level protocol (`autotune.trial.level_load_config`:
1 x C warm-up, 3 x C measured, 2 s ramp, output tok/s over the steady window) and the very requests the GPU run
sent: a trial's levels take consecutive slices of the workload's stream (seed 0) in the order they ran, a
re-measurement's fresh server starts from its beginning (`autotune.trial._measure_fn`). Each GPU run's prompt and
output lengths are checked against its slice. GPU and sim figures come from per-request records of the same shape
(the sim writes them through the load generator's `records_path`), read by one function; the GPU's P99 ITL, which
the records do not keep, from the study database.

Printed: the calibration / held-out split (vLLM's defaults calibrate, every other configuration is held out) with
the errors per study; at the GPU's knee (at the study's own limit) each P99 and the throughput of the sim's own
load search; whether the sim ranks the configurations as the GPU does; per (configuration, concurrency) the GPU's
mean over its runs and the sim's over the same request streams; and what sets the P99 TTFT (`ttft_anatomy`, and
vLLM's own split of a run's mean TTFT where the study database kept its latency histograms: `server_split`).

    python benchmarks/sim_vs_h200_levels.py [--json] [--datasets NAME ...]
    python benchmarks/sim_vs_h200_levels.py --constants NAME=VALUE ...   # other calibration/h200.yaml constants
    python benchmarks/sim_vs_h200_levels.py --fit EVALS                  # fit FIT_BOUNDS' constants first
    python benchmarks/sim_vs_h200_levels.py --sim-noise h200             # each replay with the sim's noise

About 2 minutes on the 2-core development machine (a fit: ~30 s per replay of the calibration runs).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import importlib.util
import json
import math
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from _shared import add_card_constants_option, load_records, parse_args_with_constants, window_tok_s

from autotune import records
from autotune.cli.ui import short_flags
from autotune.flags import changed_flags, deploy_flags
from autotune.gpus import load_gpu
from autotune.jsonsafe import json_safe
from autotune.loadgen.workload import parse_workload
from autotune.config import REAL_GPU_NOISE_FLOOR
from autotune.loadsearch import LoadSearchConfig
from autotune.models import spec_from_config
from autotune.records import Measurement
from autotune.selection import Candidate, LoadCurve, RunSpread, gain_over
from autotune.sim import inproc
from autotune.sim.calibrate import recorded_runs
from autotune.sim.engine import setup_engine
from autotune.sim.inproc import bench_in_process
from autotune.sim.noise import NOISE_MODELS, RunNoise, noise_rng
from autotune.testing.models import WEIGHTLESS_FLASH_CONFIG
from autotune.trial import LevelShape, TrialSettings, level_load_config, level_records_concurrency, run_trial

RAW = Path(__file__).resolve().parent.parent / "docs" / "results" / "raw"
DATASETS = ("h200-pair3-ttft500-short", "h200-pair2-ttft500", "h200-pair4-itl50-short")
# Datasets of another model than the pairs' weightless Flash: (label prefixed to their study key, config.json, GPUs
# per trial). Never calibrated on (every run held out).
_MKMODEL_GLM46V = Path(__file__).resolve().parent / "gpu" / "mkmodel_glm46v.py"
OTHER_MODELS = {"h200x2-glm46v-study": ("GLM-4.6V on 2 H200s", _MKMODEL_GLM46V, 2)}
BURST_S = 0.2  # "started together": within this many seconds
# The GPU runs that judge a configuration's throughput at the knee: those within this factor of its knee's
# concurrency, where a study's chosen level, its re-measurements and the levels stepped down from lie
KNEE_BAND = 1.5
METRICS = ("output_tok_s", "p99_ttft_ms", "p99_tpot_ms", "p99_itl_ms")  # compared level by level
# The fit's calibration subset: every run of pair 2 (random:1024:512:0.5, 3 configurations) and vLLM's defaults of
# pair 3 (random:1024:128:0.5); the other four configurations of pair 3 are held out.
CALIBRATION = "vLLM's defaults in every pair (both workloads, both limits)"
# What --fit adjusts in calibration/h200.yaml, with its bounds: the API server's costs (autotune/sim/frontend.py)
# and the steps' efficiencies (autotune/sim/perf.py: prefill compute, decode HBM reads).
FIT_BOUNDS = {"frontend_request_ms": (0.0, 30.0), "frontend_output_us": (0.0, 100.0),
              "frontend_chunk_us": (0.0, 400.0), "hbm_efficiency": (0.4, 0.95), "compute_efficiency": (0.3, 0.9)}


@dataclass
class Run:
    """One GPU run of one level and its sim replay."""

    dataset: str
    workload: str
    copy: int
    trial: int
    source: str  # the records' path under the copy's study folder
    concurrency: int
    first_request: int  # index of its first request in the workload's stream
    path: Path
    flags: dict[str, Any]
    label: str
    server: dict[str, Any] = field(default_factory=dict)  # vLLM's /metrics over the run, where the database kept it
    # The run's P99 ITL as the study stored it (the request records keep only each request's largest gap): a
    # re-measurement's own; a searched level's, pooled over its runs where the search extended it
    gpu_p99_itl_ms: float = math.nan
    gpu: dict[str, Any] = field(default_factory=dict)
    sim: dict[str, Any] = field(default_factory=dict)

    @property
    def role(self) -> str:
        if is_calibration(self):
            return "calibration"
        return "MoE terms' fit" if self.dataset in OTHER_MODELS else "held out"


def config_label(flags: dict[str, Any], baseline: str) -> str:
    """vLLM's defaults, the seed profile, or the flags changed from vLLM's defaults (measurement-only ones left out)."""
    if baseline:
        return {"vllm-defaults": "vLLM defaults", "seed-profile": "seed profile"}.get(baseline, baseline)
    kept = deploy_flags(flags)[0]
    return short_flags({name: value for name, (value, _) in changed_flags(kept).items()})


def gpu_runs(dataset: str, tmp: Path) -> tuple[list[Run], dict[str, TrialSettings]]:
    """Every run of the dataset's two copies, with its flags and where its requests start in the stream; and the
    sim's trial settings for the dataset's workload, by workload spec."""
    folder = RAW / dataset
    runs: list[Run] = []
    settings: dict[str, TrialSettings] = {}
    for db in sorted(folder.glob("gpu*.db.gz")):
        copy = int(db.name[3:-6])
        plain = tmp / f"{dataset}-{db.name[:-3]}"
        with gzip.open(db, "rb") as src, open(plain, "wb") as dst:  # a temp copy: the committed file is never opened
            shutil.copyfileobj(src, dst)
        storage = f"sqlite:///{plain}"
        study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
        fingerprint = records.read_fingerprint(study)
        options = records.read_run_options(study) or {}
        spec = fingerprint.workload["spec"]
        # the pairs' studies by workload and limit (the third and fourth pair share a workload)
        study_key = f"{spec}, " + ", ".join(f"P99 {m.upper()} <= {v:g} ms" for m, v in fingerprint.limits_ms.items())
        if dataset in OTHER_MODELS:
            study_key = f"{OTHER_MODELS[dataset][0]}: {study_key}"
        if study_key not in settings:
            settings[study_key] = sim_settings(spec, int(fingerprint.workload["seed"]), dict(fingerprint.limits_ms),
                                               float(options.get("prompts_per_level", 3.0)), dataset)
        s = settings[study_key]
        trials = {t.number: t for t in records.read_trials(study) if t.result is not None}
        for t in [t for t in trials.values() if t.result.failure_class]:  # nothing measured to compare
            print(f"{dataset}: trial {t.number} left out, it failed on the GPU ({t.result.failure_class})",
                  file=sys.stderr)
            del trials[t.number]
        root = folder / f"gpu{copy}" / study.study_name
        server = {f"{rm.trial_number}-c{rm.concurrency}-{i}": dict(m.metrics.get("server_metrics") or {})
                  for rm in records.read_remeasurements(study) for i, m in enumerate(rm.repeats)}
        remeasured = remeasurement_runs(records.read_remeasurements(study))

        for number, path, first in recorded_runs(root, list(trials), s):
            t = trials[number]
            c = level_records_concurrency(path)
            if path.parts[-4] == "remeasure":
                # a run at a load stepped down from is missing where the study predates keeping them
                m = remeasured.get(path.parent.parent.name)
                itl = m.p99_ms.get("itl", math.nan) if m is not None else math.nan
            else:
                level = t.result.level(c)
                itl = level.p99_of("itl") if level is not None else math.nan
            runs.append(Run(dataset, study_key, copy, number, str(path.relative_to(root)), c, first,
                            path, dict(t.result.flags), config_label(dict(t.result.flags), t.baseline),
                            server.get(path.parent.parent.name, {}) if path.parts[-4] == "remeasure" else {}, itl))
    return runs, settings


def remeasurement_runs(remeasurements: list[records.Remeasurement]) -> dict[str, records.Measurement]:
    """Each fresh-server run by the folder its records are in (``<trial>-c<C>-<i>``: the i-th at load C), those at
    loads a candidate stepped down from included."""
    out: dict[str, records.Measurement] = {}
    for rm in remeasurements:
        at: dict[int, list[records.Measurement]] = defaultdict(list)
        for c, m in rm.earlier:
            at[c].append(m)
        at[rm.concurrency] += list(rm.repeats)
        for c, ms in at.items():
            out.update({f"{rm.trial_number}-c{c}-{i}": m for i, m in enumerate(ms)})
    return out


def sim_settings(spec: str, seed: int, limits_ms: dict[str, float], prompts_per_level: float,
                 dataset: str) -> TrialSettings:
    config, name, gpus = WEIGHTLESS_FLASH_CONFIG, "weightless-flash", 1
    if dataset in OTHER_MODELS:
        _, script, gpus = OTHER_MODELS[dataset]
        loader = importlib.util.spec_from_file_location("mkmodel", script)
        assert loader is not None and loader.loader is not None
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
        config, name = module.CONFIG, script.stem
    model = spec_from_config(config, name, name)
    return TrialSettings(engine="sim", model=model, gpu=load_gpu("h200"), gpus=gpus,
                         workload=parse_workload(spec, seed=seed), search=LoadSearchConfig(limits_ms=limits_ms),
                         level=LevelShape(prompts_per_level=prompts_per_level), sim_noise=None)


def _p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) if values else math.nan


def figures(rows: list[dict]) -> dict[str, Any]:
    """A run's figures from its per-request records: output tok/s over the steady window (every request's tokens in
    it, as a level reports), P99 TTFT, TPOT and E2E of the measured requests, the mean TTFT of every request (warm-up
    included: what vLLM's latency histograms cover), and how its TTFTs came about (:func:`ttft_anatomy`)."""
    ok = [r for r in rows if not r["warmup"] and r["ok"]]
    return {"output_tok_s": window_tok_s(rows)[0], "p99_ttft_ms": _p99([r["ttft_ms"] for r in ok]),
            "p99_tpot_ms": _p99([r["tpot_ms"] for r in ok if r["tpot_ms"] is not None]),
            "p99_e2el_ms": _p99([r["e2el_ms"] for r in ok]),
            "mean_ttft_all_ms": float(np.mean([r["ttft_ms"] for r in rows if r["ok"]])),
            "failed": sum(not r["ok"] for r in rows), **ttft_anatomy(rows)}


def ttft_anatomy(rows: list[dict], window_s: float = BURST_S, same_step_s: float = 0.002) -> dict[str, Any]:
    """How a run's TTFTs came about, from its requests' start times and TTFTs (measured requests; the warm-up's
    count where they are ahead of one):

    - ``top``: the top 1% of the TTFTs (ceil(1% of n): 2-10 here); ``top_together``: the most of them that started
      within ``window_s`` of each other;
    - ``tail_burst``: the most requests (warm-up included) that started in the ``window_s`` up to and including the
      start of one of the top 1% -- the burst it arrived in; ``p99_per_burst_ms``: P99 TTFT / ``tail_burst``;
    - ``queue_*``: prefills queued ahead of a request -- requests started before it and still without their first
      token when it started (mean, P99, max);
    - ``batched_share``: share of the requests whose first token came in the same step (within ``same_step_s``) as
      at least 4 other requests' first tokens;
    - ``start_fano``: variance / mean of the starts counted in consecutive ``window_s`` bins over the steady window
      (about 1 for independent arrivals, more when they come in bursts);
    - ``p10_ttft_ms``, ``p50_ttft_ms``; ``p50_ttft_empty_queue_ms``: median TTFT of the requests that found no
      prefill queued ahead (NaN where none did).
    """
    ok = [r for r in rows if not r["warmup"] and r["ok"]]
    ttft = np.array([r["ttft_ms"] for r in ok], dtype=float)
    start = np.array([r["start_s"] for r in ok], dtype=float)
    every = [r for r in rows if r["ok"]]
    every_start = np.array([r["start_s"] for r in every], dtype=float)
    every_first = every_start + np.array([r["ttft_ms"] for r in every], dtype=float) / 1e3
    every_sorted = np.sort(every_start)
    k = math.ceil(0.01 * len(ok))
    top = np.argsort(ttft, kind="stable")[-k:]
    top_starts = np.sort(start[top])
    together = max(int(np.searchsorted(top_starts, x + window_s, side="left") - i) for i, x in enumerate(top_starts))
    burst = max(int(np.searchsorted(every_sorted, x, side="right") - np.searchsorted(every_sorted, x - window_s,
                                                                                      side="right"))
                for x in start[top])
    queue = np.array([int(np.sum((every_start < x) & (every_first > x))) for x in start])
    first = start + ttft / 1e3
    group = np.array([int(np.sum(np.abs(every_first - f) < same_step_s)) for f in first])
    counts = np.histogram(start, np.arange(start.min(), start.max() + window_s, window_s))[0]
    p99 = _p99(list(ttft))
    return {"top": k, "top_together": together, "tail_burst": burst, "p99_per_burst_ms": p99 / burst,
            "queue_mean": float(queue.mean()), "queue_p99": float(np.percentile(queue, 99)),
            "queue_max": int(queue.max()), "batched_share": float(np.mean(group >= 5)),
            "start_fano": float(counts.var() / counts.mean()) if counts.mean() > 0 else math.nan,
            "p10_ttft_ms": float(np.percentile(ttft, 10)), "p50_ttft_ms": float(np.median(ttft)),
            "p50_ttft_empty_queue_ms": float(np.median(ttft[queue == 0])) if (queue == 0).any() else math.nan}


def replay(run: Run, settings: TrialSettings, setups: dict[str, Any], tmp: Path) -> None:
    """The GPU run's figures, and the sim's on the same requests and level protocol."""
    rows = load_records(run.path)
    cfg = level_load_config(settings, run.concurrency, tmp / "sim.jsonl.gz")
    total = cfg.warmup_prompts + cfg.num_prompts
    requests = settings.workload.requests(run.first_request + total, start=run.first_request)
    by_i = {r["i"]: r for r in rows}
    same = len(rows) == total and all(by_i[i]["prompt_tokens"] == q.prompt_len and by_i[i]["output_tokens"] in
                                      (q.output_len, None) for i, q in enumerate(requests) if by_i[i]["ok"])
    if not same:
        raise SystemExit(f"{run.dataset} copy {run.copy} {run.source}: the records are not the stream's requests "
                         f"{run.first_request}..{run.first_request + total - 1}")
    key = json.dumps(run.flags, sort_keys=True)
    if key not in setups:
        setups[key] = setup_engine(settings.model, settings.gpu, run.flags)
    result = bench_in_process(setups[key], requests, cfg)
    run.gpu, run.sim = figures(rows), figures(load_records(Path(cfg.records_path)))
    run.gpu["p99_itl_ms"], run.sim["p99_itl_ms"] = run.gpu_p99_itl_ms, result.itl_ms.p99


CALIBRATE_ON: set[str] = set()  # --calibrate-on: datasets every run of which calibrates (else: CALIBRATION)


def calibration_text() -> str:
    return "every run of " + ", ".join(sorted(CALIBRATE_ON)) if CALIBRATE_ON else CALIBRATION


def is_calibration(run: Run) -> bool:
    if CALIBRATE_ON:
        return run.dataset in CALIBRATE_ON
    return run.label == "vLLM defaults" and run.dataset not in OTHER_MODELS


def with_constants(settings: dict[str, TrialSettings], constants: dict[str, float]) -> dict[str, TrialSettings]:
    """The settings with the card's calibration constants overridden (the fit's trial values)."""
    out = {}
    for spec, s in settings.items():
        gpu = dataclasses.replace(s.gpu, extra={**(s.gpu.extra or {}), **constants})
        out[spec] = dataclasses.replace(s, gpu=gpu)
    return out


@contextlib.contextmanager
def card_constants(gpu: Any):
    """The sim's own load search (`run_trial`) with ``gpu``'s constants: the in-process engine loads its card by
    name from the calibration YAML, so --constants and --fit reach it only through this."""
    original = inproc.load_gpu
    inproc.load_gpu = lambda name: gpu if name == gpu.name else original(name)
    try:
        yield
    finally:
        inproc.load_gpu = original


def add_noise(run: Run, noise: RunNoise) -> None:
    """The replay's figures as a noisy sim run has them: its latency figures and throughput scaled by one draw of
    ``noise`` (what :meth:`RunNoise.apply` does to a run's summaries), seeded by the run itself."""
    f, f_tput = noise.factors(noise_rng(0, f"{run.dataset}/{run.copy}/{run.source}"))
    sim = run.sim
    for key in ("p99_ttft_ms", "p10_ttft_ms", "p50_ttft_ms", "p50_ttft_empty_queue_ms", "mean_ttft_all_ms"):
        sim[key] = sim[key] * f["ttft"]
    sim["p99_itl_ms"] *= f["itl"]
    sim["p99_tpot_ms"] *= f["tpot"]
    sim["p99_e2el_ms"] *= f["e2el"]
    sim["output_tok_s"] *= f_tput


FIT_LOSSES = ("all", "steps", "steps+p50ttft")
FIT_LOSS: list[str] = ["all"]  # --fit-loss


def fit_loss(runs: list[Run]) -> float:
    """Mean over runs of the squared log errors: output tok/s (weighted 4x, as the H100 fit), P99 and P50 TTFT,
    P99 TPOT and P99 ITL. With --fit-loss steps, output tok/s (4x) and P99 TPOT alone: what the engine's step times
    set. In a closed loop TTFT rises as steps get faster (requests return sooner, more prefills queue), so a fit
    that counts a TTFT the sim under-predicts for other reasons would slow the steps down to raise it.
    steps+p50ttft adds the P50 TTFT: the typical request's wait behind the prefills queued ahead of it."""
    def sq(side_key: str, r: Run) -> float:
        return math.log(r.sim[side_key] / r.gpu[side_key]) ** 2
    if FIT_LOSS[0] != "all":
        p50 = FIT_LOSS[0] == "steps+p50ttft"
        return float(np.mean([4 * sq("output_tok_s", r) + sq("p99_tpot_ms", r) + (sq("p50_ttft_ms", r) if p50 else 0)
                              for r in runs]))
    return float(np.mean([4 * sq("output_tok_s", r) + sq("p99_ttft_ms", r) + sq("p50_ttft_ms", r)
                          + sq("p99_tpot_ms", r) + (sq("p99_itl_ms", r) if math.isfinite(r.gpu["p99_itl_ms"]) else 0.0)
                          for r in runs]))


def fit(runs: list[Run], settings: dict[str, TrialSettings], tmp: Path, max_evals: int,
        bounds: dict[str, tuple[float, float]] = FIT_BOUNDS) -> dict[str, Any]:
    """Nelder-Mead over ``bounds`` (each constant scaled to [0, 1] of its bounds, clipped there) on the calibration
    runs, from the constants of calibration/h200.yaml (or --constants); every evaluation replays them all."""
    from scipy.optimize import minimize

    calibration = [r for r in runs if is_calibration(r)]
    extra = settings[next(iter(settings))].gpu.extra or {}
    names = list(bounds)
    lo = np.array([bounds[n][0] for n in names])
    span = np.array([bounds[n][1] - bounds[n][0] for n in names])
    start = np.array([float(extra.get(n, 0.0)) for n in names])
    trace: list[dict[str, float]] = []

    def loss(x: np.ndarray) -> float:
        constants = dict(zip(names, (lo + np.clip(x, 0.0, 1.0) * span).tolist()))
        trial = with_constants(settings, constants)
        setups: dict[str, Any] = {}
        for r in calibration:
            replay(r, trial[r.workload], setups, tmp)
        value = fit_loss(calibration)
        trace.append({**constants, "loss": value})
        print(f"fit {len(trace)}: " + ", ".join(f"{k} {v:.4g}" for k, v in trace[-1].items()), file=sys.stderr,
              flush=True)
        return value

    x0 = (start - lo) / span
    simplex = [x0]
    for i in range(len(names)):
        x = x0.copy()
        x[i] += 0.1 if x0[i] < 0.5 else -0.1
        simplex.append(x)
    res = minimize(loss, x0, method="Nelder-Mead",
                   options={"maxfev": max_evals, "initial_simplex": np.array(simplex), "xatol": 0.005, "fatol": 1e-4})
    best = min(trace, key=lambda t: t["loss"])
    return {"constants": {k: best[k] for k in names}, "loss": best["loss"], "start_loss": trace[0]["loss"],
            "evaluations": len(trace), "calibration_runs": len(calibration), "message": str(res.message),
            "trace": trace}


def err(sim: float, gpu: float) -> float:
    return 100.0 * (sim / gpu - 1.0)


def level_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per (workload, configuration, concurrency): the GPU's runs and the sim's replays of them."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        groups[(r.workload, r.label, r.concurrency)].append(r)
    out = []
    for (workload, label, c), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        row: dict[str, Any] = {"workload": workload, "config": label, "flags": rs[0].flags, "concurrency": c,
                               "runs": len(rs), "copies": sorted({r.copy for r in rs}), "role": rs[0].role}
        for side in ("gpu", "sim"):
            for m in METRICS:
                # over the runs that have it on both sides (a GPU run's P99 ITL is missing where the study kept none)
                values = [getattr(r, side)[m] for r in rs if math.isfinite(r.gpu[m]) and math.isfinite(r.sim[m])]
                row[f"{side}_{m}"] = float(np.mean(values)) if values else math.nan
                row[f"{side}_{m}_range"] = [float(min(values)), float(max(values))] if values else [math.nan] * 2
        for m in METRICS:
            row[f"err_{m}"] = err(row[f"sim_{m}"], row[f"gpu_{m}"])
        out.append(row)
    return out


def _stats(values: list[float]) -> dict[str, float]:
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values)), "n": len(values)}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per workload: the errors' median and range over the (configuration, concurrency) rows; the GPU's own
    run-to-run spread at a fixed load ((max - min) / mean over the runs of rows measured more than once), and the
    sim's over the same request streams."""
    out = {}
    for workload in sorted({r["workload"] for r in rows}):
        rs = [r for r in rows if r["workload"] == workload]
        multi = [r for r in rs if r["runs"] > 1]
        spread = ({side: {m: _stats([100 * (r[f"{side}_{m}_range"][1] - r[f"{side}_{m}_range"][0]) / r[f"{side}_{m}"]
                                    for r in multi])
                         for m in ("p99_ttft_ms", "p99_itl_ms", "output_tok_s")} for side in ("gpu", "sim")}
                  if multi else {})
        out[workload] = {"rows": len(rs), "runs": sum(r["runs"] for r in rs),
                         "errors_pct": {m: _stats([r[f"err_{m}"] for r in rs])
                                        for m in METRICS},
                         "spread_at_fixed_load_pct": spread, "levels_measured_more_than_once": len(multi)}
    return out


def split_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per workload and role (calibration, held out): the errors' median and range over the (configuration,
    concurrency) rows, and how many rows have output tok/s within 10%."""
    out = []
    for key in sorted({(r["workload"], r["role"]) for r in rows}):
        rs = [r for r in rows if (r["workload"], r["role"]) == key]
        out.append({"workload": key[0], "role": key[1], "rows": len(rs), "runs": sum(r["runs"] for r in rs),
                    "configs": sorted({r["config"] for r in rs}),
                    "tok_s_within_10pct": sum(abs(r["err_output_tok_s"]) <= 10.0 for r in rs),
                    "errors_pct": {m: _stats([r[f"err_{m}"] for r in rs])
                                   for m in METRICS}})
    return out


def _at_load(loads: list[int], values: list[float], c: float) -> float:
    """A level curve's value at concurrency ``c``, interpolated in log-log (held flat beyond the loads measured)."""
    return float(np.exp(np.interp(math.log(c), np.log(loads), np.log(values))))


def curve_knee(levels: list[tuple[int, float, float, int]], metric: str, limit_ms: float) -> dict[str, Any]:
    """The knee of (concurrency, output tok/s, P99 ms, runs) levels at ``limit_ms``: their curve made non-decreasing
    (`LoadCurve`, levels weighted by their runs) and carried to the limit from a run lying on it (a run on the curve
    itself is carried to the curve's own crossing, within the loads measured). ``capped``: the curve never reaches
    the limit within them; ``below``: it is over the limit at the lowest load (carried below it)."""
    curve = level_curve(levels, metric)
    c0 = float(math.exp(curve.log_concurrency[0]))
    on_curve = Measurement(float(math.exp(curve.log_output_tok_s[0])),
                           {metric: float(math.exp(curve.log_p99_ms[metric][0]))})
    limits = {metric: limit_ms}
    x = curve.log_knee(round(c0), on_curve, limits)
    p99 = np.exp(curve.log_p99_ms[metric])
    return {"concurrency": float(math.exp(x)), "output_tok_s": curve.at_limit_tok_s(round(c0), on_curve, limits),
            "capped": bool(p99[-1] <= limit_ms), "below": bool(p99[0] > limit_ms),
            "loads": [round(math.exp(v)) for v in curve.log_concurrency]}


def level_curve(levels: list[tuple[int, float, float, int]], metric: str) -> LoadCurve:
    """(concurrency, output tok/s, P99 ms, runs) levels as the load curve a study carries runs along (`LoadCurve`,
    levels weighted by their runs)."""
    return LoadCurve.from_levels([(c, t, {metric: p}) for c, t, p, _ in levels], [n for *_, n in levels])


def knee_candidate(rs: list[Run], levels: list[tuple[int, float, float, int]], metric: str, knee_c: float) -> Candidate:
    """The GPU's runs of one configuration near its knee (within ``KNEE_BAND`` of ``knee_c``; the nearest level's
    where none is) as autotune's verdict counts a finalist's fresh-server runs: each carried to its own knee along
    the curve of the configuration's ``levels`` (both copies' runs pooled)."""
    key = f"p99_{metric}_ms"
    near = [r for r in rs if abs(math.log(r.concurrency / knee_c)) <= math.log(KNEE_BAND)]
    if not near:
        nearest = min({r.concurrency for r in rs}, key=lambda c: abs(math.log(c / knee_c)))
        near = [r for r in rs if r.concurrency == nearest]
    runs = [(r.concurrency, Measurement(r.gpu["output_tok_s"], {metric: r.gpu[key]})) for r in near]
    return Candidate(trial_number=0, flags={}, concurrency=round(knee_c), search_output_tok_s=math.nan,
                     search_p99_ms={metric: math.nan}, earlier_runs=runs,
                     curve=level_curve(levels, metric))


def verdict_pairs(candidates: dict[str, Candidate], metric: str, limit_ms: float) -> dict[tuple[str, str], Any]:
    """For every pair of configurations, autotune's verdict on the GPU's runs near their knees (`gain_over`:
    Student's t on the log ratio with the run-to-run spread pooled over every configuration, never narrower than the
    real-GPU noise floor), the better one first: the pair is told apart where the gain is significant."""
    limits = {metric: limit_ms}
    spread = RunSpread.pooled([c.at_limit_tok_s(limits) for c in candidates.values()])
    out = {}
    for a, ca in candidates.items():
        for b, cb in candidates.items():
            if a < b:
                better, worse = (a, b) if ca.at_limit_mean_tok_s(limits) >= cb.at_limit_mean_tok_s(limits) else (b, a)
                out[(a, b)] = (better, gain_over(candidates[better], candidates[worse], limits, REAL_GPU_NOISE_FLOOR,
                                                 spread=spread), spread)
    return out


def knees(runs: list[Run], settings: dict[str, TrialSettings], tmp: Path) -> dict[str, Any]:
    """Per workload and configuration: the GPU's knee (both copies pooled, and each copy), the sim's on the same
    loads and streams, and the sim's own load search (`run_trial` in-process, as a sim study runs it); the ranking
    of the configurations by throughput at the knee: the GPU's (pooled, and each copy that ran every configuration)
    and the sim's own search's; how many pairs of configurations the sim's search orders as the pooled GPU does,
    and how many the two GPU copies order alike."""
    out: dict[str, Any] = {}
    for workload, s in settings.items():
        (metric, limit), = s.search.limits_ms.items()  # the study's one limit: the knee compared is at it
        key = f"p99_{metric}_ms"
        configs: dict[str, list[Run]] = defaultdict(list)
        for r in runs:
            if r.workload == workload:
                configs[r.label].append(r)
        rows = {}
        candidates: dict[str, Candidate] = {}
        for label, rs in configs.items():
            def levels(side: str, subset: list[Run], m: str = key) -> list[tuple[int, float, float, int]]:
                by_c: dict[int, list[Run]] = defaultdict(list)
                for r in subset:
                    by_c[r.concurrency].append(r)
                return [(c, float(np.mean([getattr(r, side)["output_tok_s"] for r in v])),
                         float(np.mean([getattr(r, side)[m] for r in v])), len(v))
                        for c, v in sorted(by_c.items())]
            row = {"role": rs[0].role, "gpu": curve_knee(levels("gpu", rs), metric, limit),
                   "sim": curve_knee(levels("sim", rs), metric, limit),
                   "gpu_by_copy": {g: curve_knee(levels("gpu", [r for r in rs if r.copy == g]), metric, limit)
                                   for g in sorted({r.copy for r in rs})}}
            # The P99s at the GPU's knee: each side's levels (means over their runs) at that concurrency
            knee_c = row["gpu"]["concurrency"]
            at_knee: dict[str, Any] = {"concurrency": knee_c}
            for m in METRICS[1:]:
                for side in ("gpu", "sim"):
                    lv = levels(side, rs, m)
                    at_knee[f"{side}_{m}"] = _at_load([x[0] for x in lv], [x[2] for x in lv], knee_c)
                at_knee[f"err_{m}"] = err(at_knee[f"sim_{m}"], at_knee[f"gpu_{m}"])
            row["at_gpu_knee"] = at_knee
            candidates[label] = knee_candidate(rs, levels("gpu", rs), metric, knee_c)
            with card_constants(s.gpu):
                own = run_trial(s, rs[0].flags, "sim", tmp / "search" / "server.log")
            row["sim_search"] = {"concurrency": own.concurrency, "output_tok_s": own.output_tok_s,
                                 "feasible": own.feasible,
                                 "levels": [(lv.concurrency, round(lv.output_tok_s), round(lv.p99_ttft_ms))
                                            for lv in own.levels]}
            rows[label] = row
        tok_s = {"gpu": {lab: row["gpu"]["output_tok_s"] for lab, row in rows.items()},
                 "sim_search": {lab: row["sim_search"]["output_tok_s"] for lab, row in rows.items()}}
        for g in sorted({g for row in rows.values() for g in row["gpu_by_copy"]}):
            if all(g in row["gpu_by_copy"] for row in rows.values()):
                tok_s[f"gpu_copy{g}"] = {lab: row["gpu_by_copy"][g]["output_tok_s"] for lab, row in rows.items()}
        rank = {side: sorted(v, key=lambda lab, v=v: -v[lab]) for side, v in tok_s.items()}
        for row in rows.values():
            row["err_knee_tok_s"] = err(row["sim_search"]["output_tok_s"], row["gpu"]["output_tok_s"])
            row["err_knee_tok_s_same_loads"] = err(row["sim"]["output_tok_s"], row["gpu"]["output_tok_s"])
        out[workload] = {"limit": f"P99 {metric.upper()} <= {limit:g} ms", "configs": rows, "ranking": rank,
                         "pairs": ranked_pairs(rank, verdict_pairs(candidates, metric, limit), tok_s["sim_search"]),
                         "sim_pairs_ordered_as_gpu": concordant(rank["gpu"], rank["sim_search"]),
                         "gpu_copies_pairs_agreeing": concordant(rank["gpu_copy0"], rank["gpu_copy1"])
                         if "gpu_copy0" in rank and "gpu_copy1" in rank else None}
    return out


ANATOMY = ("top_together_share", "tail_burst", "p99_per_burst_ms", "queue_mean", "queue_p99", "batched_share",
           "start_fano", "p10_ttft_ms", "p50_ttft_ms", "p50_ttft_empty_queue_ms")


def ranked_pairs(rank: dict[str, list[str]], verdicts: dict[tuple[str, str], Any],
                 sim_tok_s: dict[str, float]) -> list[dict[str, Any]]:
    """Every pair of configurations, the better by the GPU's runs at their knees first: whether the GPU tells them
    apart (autotune's verdict on those runs, `verdict_pairs`: the gain's interval lies above 0), the gain with its
    interval, whether both copies order them so (None where a copy did not run every configuration), and the sim's
    gain (``sim_tok_s``: its own search's throughput at the knee by configuration): whether it orders them as the
    GPU does (a tie does not), and whether by more than the real-GPU noise floor."""
    out = []
    copies = [rank[k] for k in ("gpu_copy0", "gpu_copy1") if k in rank]
    for (a, b), (better, gain, spread) in sorted(verdicts.items()):
        worse = b if better == a else a
        sim_ratio = sim_tok_s[better] / sim_tok_s[worse]
        out.append({"better": better, "worse": worse, "gpu_tells_apart": bool(gain.significant),
                    "gain_pct": gain.gain_pct, "gain_pct_low": gain.gain_pct_low, "gain_pct_high": gain.gain_pct_high,
                    "spread_log_std": spread.log_std, "spread_dof": spread.dof,
                    "copies_agree": all(c.index(better) < c.index(worse) for c in copies) if len(copies) == 2 else None,
                    "sim_gain_pct": (sim_ratio - 1) * 100.0, "sim_agrees": sim_ratio > 1,
                    "sim_agrees_beyond_floor": sim_ratio > 1 + REAL_GPU_NOISE_FLOOR})
    return out


def concordant(a: list[str], b: list[str]) -> list[int]:
    """[pairs of configurations that ``b`` orders as ``a`` does, pairs]."""
    pairs = [(x, y) for i, x in enumerate(a) for y in a[i + 1:]]
    return [sum(b.index(x) < b.index(y) for x, y in pairs), len(pairs)]


def diagnosis(runs: list[Run]) -> dict[str, Any]:
    """Per workload, GPU and sim over the same runs: :func:`ttft_anatomy`'s figures (median and range over the runs),
    in how many runs the top 1% all started together, the least-squares line P99 TTFT = a + b x tail burst over the
    runs; and per run the sim's figures over the GPU's (paired: the same requests)."""
    out: dict[str, Any] = {}
    for workload in sorted({r.workload for r in runs}):
        rs = [r for r in runs if r.workload == workload]
        d: dict[str, Any] = {"runs": len(rs)}
        for side in ("gpu", "sim"):
            f = [{**getattr(r, side), "top_together_share": getattr(r, side)["top_together"] / getattr(r, side)["top"]}
                 for r in rs]
            burst = np.array([x["tail_burst"] for x in f], dtype=float)
            p99 = np.array([x["p99_ttft_ms"] for x in f])
            b, a = np.polyfit(burst, p99, 1)
            d[side] = {"all_top_together": sum(x["top_together"] == x["top"] for x in f),
                       **{key: _stats([x[key] for x in f if not math.isnan(x[key])]) for key in ANATOMY},
                       "fit_p99_vs_burst": {"intercept_ms": float(a), "ms_per_request": float(b),
                                            "r2": float(np.corrcoef(burst, p99)[0, 1] ** 2)}}
        d["sim_over_gpu"] = {key: _stats([r.sim[key] / r.gpu[key] for r in rs if r.gpu[key] > 0])
                             for key in ("p10_ttft_ms", "p50_ttft_ms", "p99_ttft_ms", "tail_burst", "queue_mean")}
        d["gpu_minus_sim_empty_queue_ms"] = _stats([r.gpu["p50_ttft_empty_queue_ms"] - r.sim["p50_ttft_empty_queue_ms"]
                                                    for r in rs if not math.isnan(r.gpu["p50_ttft_empty_queue_ms"])
                                                    and not math.isnan(r.sim["p50_ttft_empty_queue_ms"])])
        out[workload] = d
    return out


def server_split(runs: list[Run]) -> list[dict[str, Any]]:
    """vLLM's own split of the mean TTFT, for the runs whose database record kept the server's latency histograms
    (the fresh-server re-measurements): every request the server saw during the run, warm-up included, from its
    arrival at the API server: ``queue`` (waiting in the engine's scheduler) + ``prefill`` (scheduled to first token)
    is the engine's part, the rest of the server's TTFT lies outside it (API server, inter-process hand-offs); the
    client's mean over the same requests adds the HTTP side. The sim, which models the engine only, beside them."""
    out = []
    for r in runs:
        sm = r.server
        if not all(f"server_mean_{k}_ms" in sm for k in ("ttft", "queue", "prefill")):
            continue
        engine = sm["server_mean_queue_ms"] + sm["server_mean_prefill_ms"]
        out.append({"workload": r.workload, "copy": r.copy, "source": r.source, "config": r.label,
                    "concurrency": r.concurrency, "client_mean_ttft_ms": r.gpu["mean_ttft_all_ms"],
                    "server_mean_ttft_ms": sm["server_mean_ttft_ms"], "queue_ms": sm["server_mean_queue_ms"],
                    "prefill_ms": sm["server_mean_prefill_ms"], "engine_ms": engine,
                    "outside_engine_ms": sm["server_mean_ttft_ms"] - engine,
                    "client_minus_server_ms": r.gpu["mean_ttft_all_ms"] - sm["server_mean_ttft_ms"],
                    "sim_mean_ttft_ms": r.sim["mean_ttft_all_ms"]})
    return out


def _fmt_range(lo: float, hi: float, spec: str = ",.0f") -> str:
    return format(lo, spec) if lo == hi else f"{format(lo, spec)}–{format(hi, spec)}"


def print_split(roles: list[dict], knee: dict, fitted: dict | None) -> None:
    """The calibration / held-out split, its errors, and #21's targets on the held-out points."""
    if fitted:
        print(f"Fitted on the calibration runs ({fitted['calibration_runs']} runs, {fitted['evaluations']} replays of "
              f"them; loss {fitted['start_loss']:.4f} -> {fitted['loss']:.4f}): "
              + ", ".join(f"{k} {v:.4g}" for k, v in fitted["constants"].items()))
    print(f"Calibration: {calibration_text()}; the rest held out.")
    print("| workload | role | configs | points | runs | tok/s err, median [range] | within 10% | P99 TTFT err | "
          "P99 TPOT err | P99 ITL err |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for x in roles:
        e = x["errors_pct"]
        print(f"| {x['workload']} | {x['role']} | {len(x['configs'])} | {x['rows']} | {x['runs']} | "
              f"{e['output_tok_s']['median']:+.1f}% [{e['output_tok_s']['min']:+.1f}, {e['output_tok_s']['max']:+.1f}] | "
              f"{x['tok_s_within_10pct']} of {x['rows']} | {e['p99_ttft_ms']['median']:+.0f}% "
              f"[{e['p99_ttft_ms']['min']:+.0f}, {e['p99_ttft_ms']['max']:+.0f}] | {e['p99_tpot_ms']['median']:+.1f}% "
              f"[{e['p99_tpot_ms']['min']:+.1f}, {e['p99_tpot_ms']['max']:+.1f}] | {e['p99_itl_ms']['median']:+.0f}% "
              f"[{e['p99_itl_ms']['min']:+.0f}, {e['p99_itl_ms']['max']:+.0f}] |")
    print()
    print("At the GPU's knee (each side's level means interpolated at the GPU's knee concurrency) and throughput at "
          "the knee (the sim's own search; the sim on the GPU's loads):")
    print("| workload | limit | config | role | GPU knee C | P99 TTFT GPU / sim | err | P99 TPOT GPU / sim | err | "
          "P99 ITL GPU / sim | err | knee tok/s GPU / sim search | err | sim, same loads | err |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for workload, k in knee.items():
        for label, row in k["configs"].items():
            a = row["at_gpu_knee"]
            p99s = " | ".join(f"{a[f'gpu_{m}']:{fmt}} / {a[f'sim_{m}']:{fmt}} | {a[f'err_{m}']:+.0f}%"
                              for m, fmt in (("p99_ttft_ms", ".0f"), ("p99_tpot_ms", ".1f"), ("p99_itl_ms", ".1f")))
            print(f"| {workload} | {k['limit']} | {label} | {row['role']} | {a['concurrency']:.0f} | {p99s} | "
                  f"{row['gpu']['output_tok_s']:,.0f} / {row['sim_search']['output_tok_s']:,.0f} | "
                  f"{row['err_knee_tok_s']:+.1f}% | {row['sim']['output_tok_s']:,.0f} | "
                  f"{row['err_knee_tok_s_same_loads']:+.1f}% |")
    print()
    for workload, k in knee.items():
        pairs = k["pairs"]
        if not pairs:
            continue
        apart = [p for p in pairs if p["gpu_tells_apart"]]
        print(f"{workload}: the GPU tells {len(apart)} of {len(pairs)} pairs apart (autotune's verdict on its runs "
              f"within {KNEE_BAND:g}x of each knee, carried to it; spread {pairs[0]['spread_log_std']:.1%} pooled "
              f"over {pairs[0]['spread_dof']} dof, floor {REAL_GPU_NOISE_FLOOR:.0%}); the sim's own search orders "
              f"{sum(p['sim_agrees'] for p in apart)} of those as the GPU "
              f"({sum(p['sim_agrees_beyond_floor'] for p in apart)} by more than the floor), "
              f"{sum(p['sim_agrees'] for p in pairs)} of all {len(pairs)}:")
        for p in pairs:
            mark = "told apart" if p["gpu_tells_apart"] else "equal within noise"
            copies = {None: "", True: "; both copies so", False: "; the copies differ"}[p["copies_agree"]]
            print(f"  {p['better']} > {p['worse']}: {p['gain_pct']:+.1f}% [{p['gain_pct_low']:+.1f}, "
                  f"{p['gain_pct_high']:+.1f}] ({mark}{copies}); sim {p['sim_gain_pct']:+.1f}%: "
                  f"{'agrees' if p['sim_agrees'] else 'disagrees'}")
    print()


def print_report(rows: list[dict], summ: dict, knee: dict, diag: dict, split: list[dict], runs: list[Run],
                 wall_s: float, noise: str = "") -> None:
    print("| workload | config | C | runs | GPU tok/s | sim tok/s | err | GPU P99 TTFT ms (range) | sim P99 TTFT ms "
          "(range) | err | GPU P99 TPOT ms | sim P99 TPOT ms | err |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['workload']} | {r['config']} | {r['concurrency']} | {r['runs']} | {r['gpu_output_tok_s']:,.0f} | "
              f"{r['sim_output_tok_s']:,.0f} | {r['err_output_tok_s']:+.1f}% | {r['gpu_p99_ttft_ms']:,.0f} "
              f"({_fmt_range(*r['gpu_p99_ttft_ms_range'])}) | {r['sim_p99_ttft_ms']:,.0f} "
              f"({_fmt_range(*r['sim_p99_ttft_ms_range'])}) | {r['err_p99_ttft_ms']:+.0f}% | "
              f"{r['gpu_p99_tpot_ms']:.1f} | {r['sim_p99_tpot_ms']:.1f} | {r['err_p99_tpot_ms']:+.1f}% |")
    print()
    for workload, s in summ.items():
        e = s["errors_pct"]
        print(f"{workload}: {s['rows']} (configuration, concurrency) points, {s['runs']} GPU runs. Sim error, median "
              f"[range]: output tok/s {e['output_tok_s']['median']:+.1f}% [{e['output_tok_s']['min']:+.1f}, "
              f"{e['output_tok_s']['max']:+.1f}]; P99 TTFT {e['p99_ttft_ms']['median']:+.0f}% "
              f"[{e['p99_ttft_ms']['min']:+.0f}, {e['p99_ttft_ms']['max']:+.0f}]; P99 TPOT "
              f"{e['p99_tpot_ms']['median']:+.1f}% [{e['p99_tpot_ms']['min']:+.1f}, {e['p99_tpot_ms']['max']:+.1f}]")
        for side in ("gpu", "sim"):
            sp = s["spread_at_fixed_load_pct"].get(side)
            if sp:
                print(f"  {side.upper()} run-to-run spread at a fixed load ((max - min) / mean, "
                      f"{s['levels_measured_more_than_once']} levels run 2-{max(r['runs'] for r in rows)}x), median "
                      f"[range]: P99 TTFT {sp['p99_ttft_ms']['median']:.0f}% [{sp['p99_ttft_ms']['min']:.0f}, "
                      f"{sp['p99_ttft_ms']['max']:.0f}]; P99 ITL {sp['p99_itl_ms']['median']:.0f}% "
                      f"[{sp['p99_itl_ms']['min']:.0f}, {sp['p99_itl_ms']['max']:.0f}]; "
                      f"output tok/s {sp['output_tok_s']['median']:.1f}% "
                      f"[{sp['output_tok_s']['min']:.1f}, {sp['output_tok_s']['max']:.1f}]"
                      + (f"  (sim: the same request streams{', with ' + noise + ' noise' if noise else ''})"
                         if side == "sim" else ""))
    print()
    for workload, k in knee.items():
        print(f"{workload}: throughput at the knee ({k['limit']}), knee concurrency in brackets "
              "(≥: never reached within the loads measured; <: carried below the lowest)")
        print("| config | GPU (both copies) | GPU copy 0 | GPU copy 1 | sim, same loads | sim's own search |")
        print("|---|---:|---:|---:|---:|---:|")

        def cell(x: dict | None) -> str:
            if x is None:
                return "-"
            mark = "≥" if x["capped"] else "<" if x["below"] else ""
            return f"{x['output_tok_s']:,.0f} ({mark}{x['concurrency']:.0f})"
        for label, row in k["configs"].items():
            own = row["sim_search"]
            print(f"| {label} | {cell(row['gpu'])} | {cell(row['gpu_by_copy'].get(0))} | "
                  f"{cell(row['gpu_by_copy'].get(1))} | {cell(row['sim'])} | "
                  f"{own['output_tok_s']:,.0f} ({own['concurrency']}) |")
        for side, order in k["ranking"].items():
            print(f"  ranking, {side}: " + " > ".join(order))
        same = k["sim_pairs_ordered_as_gpu"]
        print(f"  the sim's own search orders {same[0]} of {same[1]} pairs of configurations as the GPU (pooled)"
              + (f"; the two GPU copies order {k['gpu_copies_pairs_agreeing'][0]} of "
                 f"{k['gpu_copies_pairs_agreeing'][1]} alike" if k["gpu_copies_pairs_agreeing"] else ""))
    print()
    labels = {"top_together_share": "share of the top 1% started within 0.2 s of each other",
              "tail_burst": "tail burst (requests started in the 0.2 s up to a top-1% request)",
              "p99_per_burst_ms": "P99 TTFT / tail burst, ms", "queue_mean": "prefills queued ahead, mean",
              "queue_p99": "prefills queued ahead, P99", "batched_share": "share of first tokens in a step with >= 4 others",
              "start_fano": "starts per 0.2 s, variance / mean", "p10_ttft_ms": "P10 TTFT, ms",
              "p50_ttft_ms": "P50 TTFT, ms", "p50_ttft_empty_queue_ms": "P50 TTFT with nothing queued ahead, ms"}
    for workload, d in diag.items():
        print(f"{workload}: what sets P99 TTFT ({d['runs']} runs; median [range] over runs)")
        print("| | GPU | sim |")
        print("|---|---:|---:|")
        print(f"| runs whose top 1% all started within 0.2 s | {d['gpu']['all_top_together']} | "
              f"{d['sim']['all_top_together']} |")
        for key, text in labels.items():
            spec = ".2f" if key in ("top_together_share", "batched_share") else ".1f" if key in (
                "queue_mean", "start_fano") else ".0f"
            print(f"| {text} | " + " | ".join(f"{format(d[side][key]['median'], spec)} [{format(d[side][key]['min'], spec)}, "
                                              f"{format(d[side][key]['max'], spec)}]" for side in ("gpu", "sim")) + " |")
        print("| P99 TTFT = a + b x tail burst (least squares over runs) | " + " | ".join(
            f"{d[side]['fit_p99_vs_burst']['intercept_ms']:.0f} ms + {d[side]['fit_p99_vs_burst']['ms_per_request']:.1f} "
            f"ms x burst, R² {d[side]['fit_p99_vs_burst']['r2']:.2f}" for side in ("gpu", "sim")) + " |")
        ratio = d["sim_over_gpu"]
        print("  sim / GPU, run by run, median [range]: " + "; ".join(
            f"{key.replace('_ms', '').replace('_', ' ')} {v['median']:.2f} [{v['min']:.2f}, {v['max']:.2f}]"
            for key, v in ratio.items()))
        e = d["gpu_minus_sim_empty_queue_ms"]
        print(f"  GPU - sim, P50 TTFT with nothing queued ahead: {e['median']:+.0f} ms [{e['min']:+.0f}, {e['max']:+.0f}]")
    if split:
        print("\nvLLM's own split of the mean TTFT (every request of the run, warm-up included; ms):")
        print("| workload | config | C | client | server | engine: queue + prefill | outside the engine | "
              "client - server | sim |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for x in split:
            print(f"| {x['workload']} | {x['config']} | {x['concurrency']} | {x['client_mean_ttft_ms']:.0f} | "
                  f"{x['server_mean_ttft_ms']:.0f} | {x['queue_ms']:.0f} + {x['prefill_ms']:.0f} = {x['engine_ms']:.0f} | "
                  f"{x['outside_engine_ms']:.0f} | {x['client_minus_server_ms']:.0f} | {x['sim_mean_ttft_ms']:.0f} |")
    print(f"\n{len(runs)} GPU runs replayed on the sim; every run's records matched its slice of the request stream; "
          f"{wall_s:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), help="folders of docs/results/raw")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.add_argument("--fit", type=int, metavar="EVALS", default=0,
                    help="fit FIT_BOUNDS' constants on the calibration runs (EVALS replays of them; needs scipy) "
                         "and print them, then the tables with them")
    ap.add_argument("--sim-noise", choices=[k for k, v in NOISE_MODELS.items() if v], default="",
                    help="each replay as a noisy sim run gives it (autotune/sim/noise.py; seeded by the run): does the "
                         "sim's spread at a fixed load match the GPU's?")
    ap.add_argument("--fit-bounds", nargs="+", default=[], metavar="NAME=LOW:HIGH",
                    help="fit only these constants, within these bounds (default: every constant of FIT_BOUNDS)")
    ap.add_argument("--calibrate-on", nargs="+", default=[], metavar="DATASET",
                    help="calibrate on every run of these datasets instead (e.g. the MoE constants on "
                         "h200x2-glm46v-study, with --fit-bounds moe_hbm_efficiency=...)")
    ap.add_argument("--fit-loss", choices=FIT_LOSSES, default="all",
                    help="what the fit's loss counts (see fit_loss): every figure, the steps' (output tok/s and P99 "
                         "TPOT), or those and P50 TTFT")
    add_card_constants_option(ap, "override calibration/h200.yaml's constants (e.g. the sim before the API "
                                  "server's: frontend_request_ms=0 frontend_output_us=0 frontend_chunk_us=0 "
                                  "hbm_efficiency=0.765)")
    args, overrides = parse_args_with_constants(ap)
    try:
        fit_bounds = {k: (float(v.split(":")[0]), float(v.split(":")[1]))
                      for k, v in (b.split("=", 1) for b in args.fit_bounds)}
    except (ValueError, IndexError):
        ap.error("--fit-bounds takes NAME=LOW:HIGH with numeric bounds")
    CALIBRATE_ON.update(args.calibrate_on)
    FIT_LOSS[0] = args.fit_loss
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sim-vs-h200-") as folder:
        tmp = Path(folder)
        runs: list[Run] = []
        settings: dict[str, TrialSettings] = {}
        for dataset in args.datasets:
            r, s = gpu_runs(dataset, tmp)
            runs += r
            settings.update(s)
        if overrides:
            settings = with_constants(settings, overrides)
        fitted = None
        if args.fit:
            fitted = fit(runs, settings, tmp, args.fit, fit_bounds or FIT_BOUNDS)
            settings = with_constants(settings, fitted["constants"])
            print("fitted on " + calibration_text() + ": " + json.dumps(fitted["constants"]), file=sys.stderr, flush=True)
        setups: dict[str, Any] = {}
        for run in runs:
            replay(run, settings[run.workload], setups, tmp)
            if args.sim_noise:
                add_noise(run, NOISE_MODELS[args.sim_noise])
        rows = level_rows(runs)
        summ = summary(rows)
        roles = split_summary(rows)
        knee = knees(runs, settings, tmp)
        diag = diagnosis(runs)
        split = server_split(runs)
    wall_s = time.monotonic() - t0
    if args.json:
        print(json.dumps(json_safe({"fit": fitted, "calibration": calibration_text(), "split_summary": roles,
                                    "rows": rows, "summary": summ, "knees": knee, "diagnosis": diag, "server_split": split,
                          "runs": [{"dataset": r.dataset, "workload": r.workload, "copy": r.copy, "trial": r.trial,
                                    "source": r.source, "config": r.label, "concurrency": r.concurrency,
                                    "first_request": r.first_request, "gpu": r.gpu, "sim": r.sim} for r in runs],
                          "wall_s": wall_s}), indent=1))
    else:
        print_split(roles, knee, fitted)
        print_report(rows, summ, knee, diag, split, runs, wall_s, args.sim_noise)


if __name__ == "__main__":
    main()
