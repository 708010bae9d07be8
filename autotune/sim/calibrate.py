"""A host's own card: `autotune sim calibrate` refits the sim engine's step constants on a study measured on that
host, so that its what-ifs and warm starts start from that host's steps rather than those of the machine the
built-in card was measured on.

Why a host needs its own: H200 hosts with the same software, model and load run the same step differently. A step
that carries a ~1,000-token prefill added 21.8-24.7 ms on one host and 28.6-39.3 ms on five others, with the
decode-only step alike (6.3-6.5 ms): the part of a mixed step that runs outside full CUDA graphs is launched by the
host's CPU (docs/results/sim-accuracy.md, "A host's own card"). Fresh servers on one host differ too (a CV of
2-14% over a host's servers sent the same requests), so a card is fitted on many servers' runs: a study's trials
and re-measurements, each a fresh server (:data:`FEW_SERVERS`).

What is fitted: the constants that set the engine's step times (:data:`CALIBRATED_CONSTANTS`), on what the step
times set: each measured run's steady output throughput (weighted 4x) and P99 TPOT. Not its TTFT: in a closed loop
the TTFT rises as the steps get faster (requests come back sooner, more prefills queue), so a fit that counted the
TTFT the sim under-predicts for other reasons (the API server's wait, sim-accuracy.md) would slow the steps down
to raise it. Every run is replayed on the in-process sim with its own requests (the slice of the study's request
stream it sent, checked against its records), its trial's flags and the study's level protocol.

The fit is a coordinate search: each constant in turn on a grid over its bounds, then each in turn by a pattern
search around the best point so far (the two points half a step either side of it, the step halved each time).
Not a golden section: the sim's loss is not smooth at a fine scale (a constant that moves a step by a fraction of
a millisecond moves which requests share a step), and a bracketing search followed a local dip to 8.2 ms where the
loss was exactly 0 at 9.5 (tests/test_sim_calibrate.py). Hand-written (about 15 lines): scipy's bounded scalar
minimiser is Brent's method, a bracketing search of the same kind.

How sure a fitted constant is: its interval over the study's servers (:func:`server_interval`), scipy's bootstrap
resampling the servers, each resample refitted on the replays the search already made (:func:`refit`; so is ``--spread``, each trial's
runs left out in turn).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from scipy import stats as scipy_stats

from autotune import records
from autotune.config import check_workload_model
from autotune.errors import UsageError
from autotune.gpus import GpuSpec
from autotune.loadgen.runner import read_records, steady_level_result
from autotune.loadgen.workload import parse_workload
from autotune.loadsearch import LoadSearchConfig
from autotune.models import ModelSpec
from autotune.progress import NULL_PROGRESS, CalibrationStep, Progress
from autotune.sim.engine import EngineStartError, setup_engine
from autotune.sim.inproc import bench_in_process
from autotune.sim.perf import PerfConstants
from autotune.study import remeasure_folders, trial_folder
from autotune.trial import LevelShape, TrialSettings, level_load_config, level_records_concurrency

__all__ = ["CALIBRATED_CONSTANTS", "DEFAULT_FIT", "MeasuredRun", "Calibration", "study_fingerprint", "study_settings",
           "recorded_runs",
           "measured_runs", "calibrate", "card_header"]

# The step constants a host's measurements can refit (autotune/sim/perf.py), with the bounds of the fit.
CALIBRATED_CONSTANTS: dict[str, tuple[float, float]] = {
    "hbm_efficiency": (0.3, 1.0),  # the decode step: weights and KV read at this share of the card's bandwidth
    "eager_step_overhead_ms": (0.0, 30.0),  # a step that carries a prefill: launched partly by the host's CPU
    "compute_efficiency": (0.2, 1.0),  # a prefill's GEMMs at this share of the card's peak
    "host_step_ms": (0.0, 80.0),  # a step outside CUDA graphs lasts at least this long: the host's time for it
}
# What a study's runs need for the fit to pin each constant (the caution where they do not).
PINNED_BY: dict[str, str] = {
    "hbm_efficiency": "levels hold decode-only steps",
    "eager_step_overhead_ms": "levels hold steps that carry a prefill",
    "compute_efficiency": "prefills are long enough for their GEMMs to set their steps",
    "host_step_ms": "steps wait on the host (low load, short prompts)",
}
# The one a host's own measurements pin down, by default: the hosts differed in it, not in the decode-only step;
# and a study's levels do not tell the two apart (fitted together on the H200 pairs' study, the decode step came out
# 24% longer than the engine's own decode steps measure: docs/results/sim-accuracy.md, "A host's own card").
DEFAULT_FIT = ("eager_step_overhead_ms",)
THROUGHPUT_WEIGHT = 4.0  # in the loss, against P99 TPOT's 1: throughput is what a study ranks by
_GRID_POINTS = 9  # the first pass, per constant, its bounds included
_TOLERANCE = 0.005  # the pattern search stops when its step is this share of the bounds
# Fewer fresh servers than this and a card carries their luck: on one H200 lease, five fresh servers sent the same
# requests differed by up to 40% in what a prefill adds to its step, and two leases' means by 18%
# (docs/results/sim-accuracy.md, "A host's own card"); a study's trials and re-measurements are each a fresh server.
FEW_SERVERS = 3
# A constant whose loss moves by less than this share over its whole range is not pinned by the runs: e.g. the
# host's step time where every step's GPU work outlasts it, at any value in its bounds.
FLAT_LOSS_SHARE = 0.01
SIM_STUDY_CAUTION = ("the study ran on the sim engine: this refits the sim on its own runs (a check of the fit), not "
                     "a host's steps; calibrate on a study run on vLLM on the host to model")


@dataclass(frozen=True)
class MeasuredRun:
    """One run of one load level as the study measured it (a trial's level, or a fresh-server re-measurement)."""

    trial_number: int
    flags: Mapping[str, Any]
    concurrency: int
    first_request: int  # its first request's index in the study's request stream
    records_path: Path
    output_tok_s: float  # over the steady window, as the level reported it
    p99_tpot_ms: float

    @property
    def server(self) -> Path:
        """The folder of the fresh server that ran it: its trial's, or its re-measurement's."""
        return self.records_path.parent.parent


@dataclass(frozen=True)
class Calibration:
    base: str  # the card the constants started from
    start: dict[str, float]
    constants: dict[str, float]  # fitted
    loss_start: float
    loss: float
    runs: tuple[MeasuredRun, ...]
    # per figure (output_tok_s, p99_tpot_ms): the sim against each run, in %, with the start's and the fitted constants
    errors_start_pct: dict[str, tuple[float, ...]]
    errors_pct: dict[str, tuple[float, ...]]
    evaluations: int
    left_out: tuple[str, ...]  # runs not used, each with why
    # with --spread: the constants fitted without each trial's runs, by trial
    without_trial: dict[int, dict[str, float]] = dataclasses.field(default_factory=dict)
    # each constant's 90% interval over the study's servers (server_interval); none below FEW_SERVERS servers
    interval_90: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    # the fitted constants whose loss moved by less than FLAT_LOSS_SHARE over their bounds: the runs do not pin them
    unpinned: tuple[str, ...] = ()
    engine: str = "vllm"  # the study's: "sim" refits the sim on its own runs, not on a host's

    @property
    def servers(self) -> int:
        """How many fresh servers the fitted runs came from."""
        return len({r.server for r in self.runs})

    def caution(self) -> str | None:
        """What to keep in mind about this card: runs from too few servers, constants the runs do not pin."""
        cautions = []
        if self.servers < FEW_SERVERS:
            cautions.append(
                f"fitted on the runs of {self.servers} fresh server{'s' if self.servers > 1 else ''}: on one H200 host "
                "what a prefill adds to a step differs from one fresh server to the next, not only between hosts, so "
                f"calibrate on a study with {FEW_SERVERS} or more trials or re-measurements")
        for name in self.unpinned:
            lo, hi = CALIBRATED_CONSTANTS[name]
            cautions.append(f"the runs do not pin {name}: the sim fits them as well anywhere from {lo:g} to {hi:g} "
                            f"(loss within {FLAT_LOSS_SHARE:.0%}), so the card keeps a value they do not tell; "
                            f"calibrate on a study whose {PINNED_BY[name]}")
        if self.engine == "sim":
            cautions.append(SIM_STUDY_CAUTION)
        return "; ".join(cautions) or None

    def summary(self) -> dict[str, Any]:
        """What the card file records of its calibration."""
        def spread(errors: tuple[float, ...]) -> dict[str, float]:
            finite = [e for e in errors if math.isfinite(e)]
            return {"median_pct": round(float(np.median(finite)), 2), "min_pct": round(min(finite), 2),
                    "max_pct": round(max(finite), 2)} if finite else {}
        return {
            "runs": len(self.runs), "trials": len({r.trial_number for r in self.runs}), "servers": self.servers,
            "concurrency": sorted({r.concurrency for r in self.runs}),
            "loss": {"start": round(self.loss_start, 5), "fitted": round(self.loss, 5)},
            "start": {k: round(v, 4) for k, v in self.start.items()},
            "errors": {figure: {"start": spread(self.errors_start_pct[figure]), "fitted": spread(errors)}
                       for figure, errors in self.errors_pct.items()},
            **({"without_trial": {number: {k: round(v, 4) for k, v in constants.items()}
                                  for number, constants in self.without_trial.items()}} if self.without_trial else {}),
            **({"interval_90": {k: [round(lo, 4), round(hi, 4)] for k, (lo, hi) in self.interval_90.items()}}
               if self.interval_90 else {}),
        }


def study_fingerprint(study: optuna.Study) -> records.StudyFingerprint:
    """What the study was run with (its model, card, workload, limits); a study `autotune run` did not create is a
    one-line error."""
    fingerprint = records.read_fingerprint(study)
    if fingerprint is None:
        raise UsageError(f"study {study.study_name!r} was not created by `autotune run` (no fingerprint stored)")
    return fingerprint


def study_settings(study: optuna.Study, model: ModelSpec, card: GpuSpec) -> TrialSettings:
    """The in-process sim's settings that replay the study's levels: its request stream and level protocol, on
    ``card``."""
    fingerprint = study_fingerprint(study)
    options = records.read_run_options(study) or {}
    workload = parse_workload(fingerprint.workload["spec"], seed=int(fingerprint.workload["seed"])).without_times()
    try:  # else every replayed request is refused and no constant fits
        check_workload_model(workload, model)
    except UsageError as e:
        raise UsageError(f"{e} (the study's workload; give --model the study's model)") from None
    return TrialSettings(engine="sim", model=model, gpu=card, gpus=fingerprint.gpus, workload=workload,
                         search=LoadSearchConfig(limits_ms=dict(fingerprint.limits_ms)),
                         level=LevelShape(prompts_per_level=float(options.get("prompts_per_level",
                                                                              LevelShape.prompts_per_level))))


def recorded_runs(study_dir: Path, trial_numbers: list[int], settings: TrialSettings) -> list[tuple[int, Path, int]]:
    """Every run of these trials whose requests the study's folder keeps: (trial, its records, the index of its first
    request in the study's stream). A trial's levels take consecutive slices of the stream in the order they ran; a
    fresh server's re-measurement starts from the stream's beginning (trial._measure_fn)."""
    placed: list[tuple[int, Path, int]] = []
    for number in sorted(trial_numbers):
        used = 0
        for path in sorted((trial_folder(study_dir, number) / "levels").glob("*-c*.jsonl.gz")):
            placed.append((number, path, used))
            cfg = level_load_config(settings, level_records_concurrency(path))
            used += cfg.warmup_prompts + cfg.num_prompts
    for number, folder in remeasure_folders(study_dir):
        if number in trial_numbers:
            placed += [(number, path, 0) for path in sorted((folder / "levels").glob("*-c*.jsonl.gz"))]
    return placed


def measured_runs(study: optuna.Study, study_dir: Path, settings: TrialSettings) -> tuple[list[MeasuredRun],
                                                                                             list[str]]:
    """Every run the study's folder keeps the requests of (:func:`recorded_runs`), checked against the stream slice
    it sent; and the runs left out, each with why."""
    trials = {t.number: t for t in records.read_trials(study) if t.result is not None}
    placed = recorded_runs(study_dir, list(trials), settings)
    runs: list[MeasuredRun] = []
    left_out: list[str] = []
    images = settings.workload.max_images_per_request > 0
    for number, path, first in placed:
        where = str(path.relative_to(study_dir))
        c = level_records_concurrency(path)
        cfg = level_load_config(settings, c)
        total = cfg.warmup_prompts + cfg.num_prompts
        rows = read_records(path)
        requests = settings.workload.requests(first + total, start=first)
        if len(rows) != total:
            left_out.append(f"{where}: {len(rows)} requests, the level sends {total}")
            continue
        if not all(out.success for out, _ in rows):
            left_out.append(f"{where}: some requests failed")
            continue
        # the server's usage counts image tokens in the prompt: with images only the outputs can be checked
        if any(out.output_tokens != q.output_len or (not images and out.prompt_tokens != q.prompt_len)
               for (out, _), q in zip(rows, requests)):
            left_out.append(f"{where}: its requests are not the study's stream {first}..{first + total - 1}")
            continue
        measured = steady_level_result(rows)
        runs.append(MeasuredRun(number, dict(trials[number].result.flags), c, first, path, measured.output_tok_s,
                                measured.tpot_ms.p99))
    return runs, left_out


def _spread_pick(runs: list[MeasuredRun], most: int) -> list[MeasuredRun]:
    """At most ``most`` runs, spread evenly over the study's order (trials, then their levels)."""
    if len(runs) <= most:
        return runs
    return [runs[i] for i in sorted({int(round(x)) for x in np.linspace(0, len(runs) - 1, most)})]


def _replay_errors(runs: list[MeasuredRun], settings: TrialSettings,
                   constants: Mapping[str, float]) -> tuple[dict[str, tuple[float, ...]], np.ndarray]:
    """The sim's error against each run (% per figure) with ``constants`` on the settings' card, and each run's
    term of the loss (the loss is their mean)."""
    card = dataclasses.replace(settings.gpu, extra={**(settings.gpu.extra or {}), **constants})
    setups: dict[str, Any] = {}
    tput: list[float] = []
    tpot: list[float] = []
    for run in runs:
        key = _flags_key(run.flags)
        if key not in setups:
            setups[key] = setup_engine(settings.model, card, dict(run.flags))
        cfg = level_load_config(settings, run.concurrency)
        requests = settings.workload.requests(run.first_request + cfg.warmup_prompts + cfg.num_prompts,
                                              start=run.first_request)
        # summarized as the measured run's records are (steady_level_result; equal to 1e-4, tests)
        sim = bench_in_process(setups[key], requests, cfg)
        tput.append(sim.output_tok_s / run.output_tok_s)
        tpot.append(sim.tpot_ms.p99 / run.p99_tpot_ms)
    terms = np.array([THROUGHPUT_WEIGHT * math.log(a) ** 2 + (math.log(b) ** 2 if math.isfinite(b) else 0.0)
                      for a, b in zip(tput, tpot)])
    return {"output_tok_s": tuple(100.0 * (a - 1.0) for a in tput),
            "p99_tpot_ms": tuple(100.0 * (b - 1.0) for b in tpot)}, terms


def _flags_key(flags: Mapping[str, Any]) -> str:
    return repr(sorted(flags.items()))


def _startable(runs: list[MeasuredRun], settings: TrialSettings, study_dir: Path) -> tuple[list[MeasuredRun],
                                                                                           list[str]]:
    """The runs whose flags the sim engine starts on the settings' card; and the others, each with why (its memory
    plan or a flag it refuses: the fitted constants do not change that)."""
    why: dict[str, str] = {}
    for run in runs:
        key = _flags_key(run.flags)
        if key not in why:
            try:
                setup_engine(settings.model, settings.gpu, dict(run.flags))
                why[key] = ""
            except EngineStartError as e:
                why[key] = str(e)
    return ([r for r in runs if not why[_flags_key(r.flags)]],
            [f"{r.records_path.relative_to(study_dir)}: the sim engine does not start trial {r.trial_number}'s flags "
             f"({why[_flags_key(r.flags)]})" for r in runs if why[_flags_key(r.flags)]])


def _pattern_search(loss: Callable[[float], float], best: Callable[[], float], lo: float, hi: float,
                    half_width: float, tolerance: float) -> None:
    """Around the best point so far, try the points ``half_width`` / 2 either side of it (within [lo, hi]), halve
    the width, and again, until it is below ``tolerance`` (``loss`` keeps the best)."""
    while half_width > tolerance:
        half_width /= 2
        centre = best()
        for x in (centre - half_width, centre + half_width):
            if lo <= x <= hi:
                loss(x)


@dataclass(frozen=True)
class _Fit:
    start: dict[str, float]
    constants: dict[str, float]
    loss: float
    errors: dict[str, tuple[float, ...]]
    loss_start: float
    errors_start: dict[str, tuple[float, ...]]
    evaluations: int
    # every point the search replayed: its constants and each run's term of the loss there
    evaluated: tuple[tuple[dict[str, float], np.ndarray], ...]
    # each constant's losses over its first pass's grid, its bounds included
    grid_losses: dict[str, tuple[float, ...]]

    @property
    def unpinned(self) -> tuple[str, ...]:
        """The constants whose loss moved by less than FLAT_LOSS_SHARE over their bounds."""
        return tuple(name for name, losses in self.grid_losses.items()
                     if max(losses) - min(losses) < FLAT_LOSS_SHARE * min(losses))


def _fit(runs: list[MeasuredRun], settings: TrialSettings, fit: tuple[str, ...], progress: Progress) -> _Fit:
    """The coordinate search (module docstring) from the settings' card's constants over ``runs``."""
    card_constants = PerfConstants.from_gpu(settings.gpu)  # the card's value, else the model's default
    start = {name: float(getattr(card_constants, name)) for name in fit}
    best: dict[str, Any] = {"constants": dict(start), "loss": math.inf}
    evaluated: list[tuple[dict[str, float], np.ndarray]] = []
    halvings = math.ceil(math.log2(1.0 / (_TOLERANCE * (_GRID_POINTS - 1))))
    max_evaluations = 1 + (_GRID_POINTS + 2 * halvings) * len(fit)

    def evaluate(name: str, value: float) -> float:
        constants = {**best["constants"], name: value}
        errors, terms = _replay_errors(runs, settings, constants)
        evaluated.append((constants, terms))
        loss = float(terms.mean())
        if loss < best["loss"]:
            best.update(constants=constants, loss=loss, errors=errors)
        progress.calibration_step(CalibrationStep(len(evaluated), max_evaluations, constants, loss, best["loss"]))
        return loss

    evaluate(fit[0], start[fit[0]])
    errors_start, loss_start = best["errors"], best["loss"]
    grid_losses: dict[str, list[float]] = {}
    for name in fit:
        lo, hi = CALIBRATED_CONSTANTS[name]
        grid_losses[name] = [evaluate(name, float(value)) for value in np.linspace(lo, hi, _GRID_POINTS)]
    for name in fit:
        lo, hi = CALIBRATED_CONSTANTS[name]
        _pattern_search(lambda x, n=name: evaluate(n, x), lambda n=name: best["constants"][n], lo, hi,
                        (hi - lo) / (_GRID_POINTS - 1), _TOLERANCE * (hi - lo))
    return _Fit(start, best["constants"], best["loss"], best["errors"], loss_start, errors_start, len(evaluated),
                tuple(evaluated), {name: tuple(losses) for name, losses in grid_losses.items()})


def refit(evaluated: tuple[tuple[dict[str, float], np.ndarray], ...], weights: np.ndarray) -> dict[str, float]:
    """The fit again with each run weighted (0: left out), on the replays the search already made: the evaluated
    point of least weighted loss. Its grain is that of the points the search evaluated, finest around the fitted
    value."""
    terms = np.stack([t for _, t in evaluated])  # points x runs
    return evaluated[int(np.argmin(terms @ weights))][0]


def server_interval(runs: list[MeasuredRun], evaluated: tuple[tuple[dict[str, float], np.ndarray], ...],
                    confidence: float = 0.9, resamples: int = 999, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Each fitted constant's ``confidence`` interval over the study's fresh servers: the servers resampled with
    replacement (scipy's percentile bootstrap, seeded), each resample :func:`refit` with each run weighted by how
    often its server was drawn: no replay."""
    servers = sorted({r.server for r in runs})
    run_server = np.array([servers.index(r.server) for r in runs])

    def fitted(name: str) -> Callable[[np.ndarray], float]:
        def statistic(drawn: np.ndarray) -> float:
            return refit(evaluated, np.bincount(drawn, minlength=len(servers))[run_server])[name]
        return statistic
    out = {}
    for name in evaluated[0][0]:
        result = scipy_stats.bootstrap((np.arange(len(servers)),), fitted(name), n_resamples=resamples,
                                       vectorized=False, method="percentile", confidence_level=confidence,
                                       rng=np.random.default_rng(seed))
        out[name] = (float(result.confidence_interval.low), float(result.confidence_interval.high))
    return out


def calibrate(study: optuna.Study, study_dir: Path, settings: TrialSettings, fit: tuple[str, ...] = DEFAULT_FIT,
              max_runs: int = 24, progress: Progress = NULL_PROGRESS, spread: bool = False) -> Calibration:
    """Fit ``fit``'s constants of the settings' card to the study's measured runs (at most ``max_runs`` of them,
    spread over its trials and loads). ``spread``: :func:`refit` without each trial's runs in turn, to show how
    much the constants depend on which configurations were measured."""
    unknown = [name for name in fit if name not in CALIBRATED_CONSTANTS]
    if unknown or not fit:
        raise UsageError(f"--fit takes some of {', '.join(CALIBRATED_CONSTANTS)}"
                         + (f", not {unknown[0]!r}" if unknown else ""))
    all_runs, left_out = measured_runs(study, study_dir, settings)
    all_runs, refused = _startable(all_runs, settings, study_dir)
    left_out += refused
    if not all_runs:
        why = f" ({left_out[0]})" if left_out else f": no level records under {study_dir}"
        raise UsageError(f"study {study.study_name!r} has no measured run to calibrate on{why}")
    runs = _spread_pick(all_runs, max_runs)
    trials = sorted({r.trial_number for r in runs})
    if spread and len(trials) < 2:
        raise UsageError(f"--spread refits without each trial in turn: study {study.study_name!r} has runs of one "
                         "trial only")
    result = _fit(runs, settings, fit, progress)
    without = {number: refit(result.evaluated, np.array([float(r.trial_number != number) for r in runs]))
               for number in (trials if spread else [])}
    servers = len({r.server for r in runs})
    interval = server_interval(runs, result.evaluated) if servers >= FEW_SERVERS else {}
    return Calibration(settings.gpu.base or settings.gpu.name, result.start, result.constants, result.loss_start,
                       result.loss, tuple(runs), result.errors_start, result.errors, result.evaluations,
                       tuple(left_out) + tuple(f"{r.records_path.relative_to(study_dir)}: more than --max-runs"
                                               for r in all_runs if r not in runs), without, interval, result.unpinned,
                       study_fingerprint(study).engine)


def card_header(calibration: Calibration, study: str, storage: str) -> str:
    """The comment at the top of a host's card file: what it is, how to use it, what it does not mend."""
    return (f"The {calibration.base} card with its step constants refitted by `autotune sim calibrate` on the "
            f"{len(calibration.runs)} measured runs of study {study!r} ({storage}): the sim engine's steps as this "
            "host runs them.\nUse it as --gpu-type with this file's path (autotune sim predict, autotune run "
            "--engine sim, autotune sim serve).\nIt sets the sim's throughput and knees on this host; it does not "
            "order configurations better than the built-in card (docs/results/sim-accuracy.md, \"A host's own "
            "card\")." + (f"\nCaution: {calibration.caution()}." if calibration.caution() else ""))
