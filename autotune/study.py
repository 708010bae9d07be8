"""The study: an Optuna search over restart-requiring flags, a load search per trial, baselines first,
then re-measurement of the top candidates and the profile of the winner.

Headless: progress goes to a sink of events; the CLI renders them.
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from autotune.errors import EngineStartError, Stopped, UsageError
from autotune.jsonsafe import json_safe
from autotune.loadsearch import estimate_level_s
from autotune.metrics import BenchResult
from autotune.models import ModelSpec
from autotune.progress import NULL_SINK, Event, ProgressSink
from autotune.selection import Candidate, Measurement, Selection, select_winner
from autotune.space import SearchSpace
from autotune.trial import TrialOutcome, TrialSettings, measure_once, run_trial

__all__ = ["StudyConfig", "StudyOutcome", "run_study", "BASELINES", "baseline_flags", "trial_record",
           "study_fingerprint"]

# The seed write-up's hand-tuned profile; on several GPUs also TP over all of them, expert parallel for an
# MoE and the vision encoder in data-parallel mode for a VLM (its GLM-4.6V recipe: TP4 + EP + fp8 KV).
SEED_PROFILE = {"kv-cache-dtype": "fp8", "max-num-seqs": 1024, "enable-chunked-prefill": True}
BASELINES = ("vllm-defaults", "seed-profile")
# Study attributes that must not change when a study is resumed: its figures would not compare.
FINGERPRINT_KEYS = ("model", "gpus", "metric", "limit_ms", "workload", "engine", "gpu_type")


@dataclass(frozen=True)
class StudyConfig:
    study_name: str
    storage_url: str
    space: SearchSpace
    settings: TrialSettings
    preset: str | None
    n_trials: int = 20
    timeout_s: float | None = None
    patience: int = 12  # stop after this many finished trials without a 1% better feasible value
    top_k: int = 3
    repeats: int = 2
    noise_floor: float = 0.0  # relative run-to-run noise assumed on top of the measured spread
    seed: int = 0
    out_dir: Path = Path("studies")
    tries: tuple[dict[str, Any], ...] = ()  # extra points queued after the baselines (`--try FILE`)


@dataclass
class StudyOutcome:
    study_name: str
    n_trials_total: int
    n_trials_run: int
    selection: Selection
    profile: dict[str, Any] | None
    profile_path: Path | None
    stopped_by: str
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)


def baseline_flags(name: str, model: ModelSpec, gpus: int) -> dict[str, Any]:
    """vllm-defaults: nothing set but TP over every GPU (how `vllm serve` is launched on N GPUs).
    seed-profile: SEED_PROFILE, plus expert parallel (MoE) and mm-encoder-tp-mode data (VLM) with TP > 1."""
    flags: dict[str, Any] = {"tensor-parallel-size": gpus} if gpus > 1 else {}
    if name == "seed-profile":
        flags.update(SEED_PROFILE)
        if gpus > 1 and model.is_moe:
            flags["enable-expert-parallel"] = True
        if gpus > 1 and model.is_vlm:
            flags["mm-encoder-tp-mode"] = "data"
    return flags


def study_fingerprint(cfg: StudyConfig) -> dict[str, Any]:
    s = cfg.settings
    return {"model": s.model.name, "gpus": s.gpus, "metric": s.search.metric, "limit_ms": s.search.limit_ms,
            "workload": s.workload.describe(), "engine": s.engine, "gpu_type": s.gpu.name,
            "preset": cfg.preset, "space": cfg.space.source}


def open_study(cfg: StudyConfig, storage: optuna.storages.BaseStorage) -> optuna.Study:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=6, multivariate=True, group=True,
                                         constant_liar=True)
    study = optuna.create_study(study_name=cfg.study_name, storage=storage, direction="maximize",
                                sampler=sampler, load_if_exists=True)
    fp = study_fingerprint(cfg)
    old = study.user_attrs.get("fingerprint")
    if old is None:
        study.set_user_attr("fingerprint", fp)
    else:
        changed = [k for k in FINGERPRINT_KEYS if json.dumps(old.get(k), sort_keys=True) != json.dumps(fp.get(k), sort_keys=True)]
        if changed:
            k = changed[0]
            raise UsageError(f"study {cfg.study_name!r} was created with {k}={old.get(k)!r}, not {fp.get(k)!r}; "
                             "use another --study name to tune a different setup")
    return study


def _enqueue_baselines(study: optuna.Study, cfg: StudyConfig) -> None:
    """Baselines run first; one whose trial never completed (interrupted) is queued again."""
    trials = study.get_trials(deepcopy=False)
    for name in BASELINES:
        done = any(t.user_attrs.get("baseline") == name and t.state in (
            optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING)
            for t in trials)
        if done:
            continue
        flags = baseline_flags(name, cfg.settings.model, cfg.settings.gpus)
        params = cfg.space.params_for(flags, cfg.settings.model, cfg.settings.gpus)
        study.enqueue_trial(params, user_attrs={"baseline": name}, skip_if_exists=False)
    for flags in cfg.tries:  # skip_if_exists: a resumed run does not queue the same point twice
        study.enqueue_trial(cfg.space.params_for(flags, cfg.settings.model, cfg.settings.gpus),
                            user_attrs={"tried": True}, skip_if_exists=True)


def trial_record(outcome: TrialOutcome, limit_ms: float) -> dict[str, Any]:
    """What a trial stores about itself (user attrs), JSON-safe."""
    best = outcome.best.to_json() if outcome.best else None
    return json_safe({
        "flags": outcome.flags, "feasible": outcome.feasible, "output_tok_s": outcome.output_tok_s,
        "p99_ms": outcome.p99_ms, "concurrency": outcome.concurrency, "best_metrics": best,
        "levels": outcome.levels, "failure_class": outcome.failure_class, "failure_reason": outcome.failure_reason,
        "log_tail": outcome.log_tail[-4000:], "log_path": outcome.log_path, "startup": outcome.startup,
        "memory": outcome.memory, "vllm_serve_cmd": outcome.vllm_serve_cmd, "stop_reason": outcome.stop_reason,
        "engine_wall_s": outcome.engine_wall_s, "load_wall_s": outcome.load_wall_s,
        "constraint_ms": outcome.constraint(limit_ms),
    })



def _objective(cfg: StudyConfig, sink: ProgressSink, deadline: float | None = None):
    limit = cfg.settings.search.limit_ms

    def objective(trial: optuna.Trial) -> float:
        flags = cfg.space.sample(trial, cfg.settings.model, cfg.settings.gpus)
        baseline = trial.user_attrs.get("baseline", "")
        if baseline:  # the baseline's own flags, not only their projection on the space
            flags = {**cfg.space.fixed, **baseline_flags(baseline, cfg.settings.model, cfg.settings.gpus)}
        trial_dir = cfg.out_dir / cfg.study_name / "trials" / str(trial.number)
        name = f"autotune-{cfg.study_name}-{trial.number}"
        sink(Event("trial_started", {"number": trial.number, "flags": flags, "baseline": baseline}))
        started = time.perf_counter()
        try:
            outcome = run_trial(cfg.settings, flags, name, trial_dir / "server.log", sink, deadline)
        except SystemExit as e:  # SIGTERM/SIGHUP (the launcher's handler); the server is already down
            raise Stopped(e.code if isinstance(e.code, int) else 143) from e
        record = trial_record(outcome, limit)
        record["trial_wall_s"] = time.perf_counter() - started
        for key, value in record.items():
            trial.set_user_attr(key, value)
        trial.set_constraint("p99_minus_limit_ms", outcome.constraint(limit))
        sink(Event("trial_finished", {"number": trial.number, "baseline": baseline, "flags": flags,
                                      "value": outcome.output_tok_s, "p99_ms": outcome.p99_ms,
                                      "feasible": outcome.feasible, "concurrency": outcome.concurrency,
                                      "failure_class": outcome.failure_class,
                                      "failure_reason": outcome.failure_reason,
                                      "stop_reason": outcome.stop_reason, "wall_s": record["trial_wall_s"]}))
        return float(outcome.output_tok_s)

    return objective


def _feasible(t: optuna.trial.FrozenTrial) -> bool:
    return t.state == optuna.trial.TrialState.COMPLETE and bool(t.user_attrs.get("feasible"))


class _StopRules:
    """Stagnation and a deadline that leaves room for the next trial (Optuna checks timeout only between
    trials, so a trial that starts late would overrun). The next trial is assumed to take as long as the
    longest so far, counting those of earlier runs of a resumed study: on the H100 a median let a slow trial
    start that then ran past the deadline."""

    def __init__(self, patience: int, deadline: float | None, earlier_durations: list[float] = (),
                 reserve_s: Callable[[], float] = lambda: 0.0) -> None:
        self.patience = patience
        self.deadline = deadline
        self.reason = ""
        self.durations: list[float] = list(earlier_durations)
        self.reserve_s = reserve_s  # kept free after the trials: the re-measurements still to make

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.user_attrs.get("trial_wall_s"):
            self.durations.append(float(trial.user_attrs["trial_wall_s"]))
        done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
        best, since = 0.0, 0
        for t in sorted(done, key=lambda t: t.number):
            value = float(t.value or 0.0) if _feasible(t) else 0.0
            if value > best * 1.01:
                best, since = value, 0
            else:
                since += 1
        if self.patience and since >= self.patience and best > 0:
            self.reason = f"stagnation: no 1% gain in {since} trials"
            study.stop()
        elif self.would_overrun():
            self.reason = "timeout"
            study.stop()

    def would_overrun(self) -> bool:
        return self.deadline is not None and bool(self.durations) and \
            time.monotonic() + max(self.durations) + self.reserve_s() > self.deadline


def run_study(cfg: StudyConfig, storage: optuna.storages.BaseStorage, sink: ProgressSink = NULL_SINK) -> StudyOutcome:
    # Optuna logs an interrupted or crashed trial's traceback as a warning: our one-line errors say it instead.
    optuna.logging.set_verbosity(optuna.logging.WARNING if os.environ.get("AUTOTUNE_DEBUG") == "1"
                                 else optuna.logging.ERROR)
    study = open_study(cfg, storage)
    # A trial left RUNNING by a killed run (no heartbeat for the grace period) is failed now, so that an
    # interrupted baseline is queued again instead of counting as done.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    _enqueue_baselines(study, cfg)
    start = time.monotonic()
    deadline = start + cfg.timeout_s if cfg.timeout_s else None
    before = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    sink(Event("study_started", {"study": cfg.study_name, "n_trials": cfg.n_trials, "timeout_s": cfg.timeout_s,
                                 "existing_trials": before, "engine": cfg.settings.engine,
                                 "metric": cfg.settings.search.metric, "limit_ms": cfg.settings.search.limit_ms}))
    earlier = [float(t.user_attrs["trial_wall_s"]) for t in study.get_trials(deepcopy=False)
               if t.user_attrs.get("trial_wall_s")]
    rules = _StopRules(cfg.patience, deadline, earlier, lambda: remeasure_reserve_s(study, cfg))
    if rules.would_overrun():  # a resumed study whose earlier trials show the next one cannot fit
        rules.reason = "timeout"
    elif cfg.n_trials > 0:
        study.optimize(_objective(cfg, sink, deadline), n_trials=cfg.n_trials, timeout=cfg.timeout_s, callbacks=[rules],
                       catch=(), gc_after_trial=False)
    ran = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))) - before
    stopped_by = rules.reason or ("timeout" if deadline and time.monotonic() >= deadline else "trials")
    selection = remeasure_and_select(study, cfg, deadline, sink)
    from autotune.profile import build_profile, write_profile  # profile depends on study, not the reverse

    profile = profile_path = None
    if selection.winner is not None:
        profile = build_profile(study, cfg, selection)
        profile_path = write_profile(profile, cfg.out_dir / cfg.study_name / "profile.yaml")
    outcome = StudyOutcome(cfg.study_name, len(study.trials), ran, selection, profile, profile_path, stopped_by,
                           baselines=baseline_summary(study, selection, cfg))
    sink(Event("study_finished", {"study": cfg.study_name, "stopped_by": stopped_by,
                                  "profile_path": str(profile_path) if profile_path else None,
                                  "verdict": selection.verdict}))
    return outcome


def candidates_from_study(study: optuna.Study, top_k: int) -> list[Candidate]:
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    feasible = sorted((t for t in trials if _feasible(t)), key=lambda t: -(t.value or 0.0))
    chosen: list[optuna.trial.FrozenTrial] = []
    seen: set[str] = set()
    for t in feasible:
        key = json.dumps(t.user_attrs.get("flags"), sort_keys=True)
        if key not in seen and len(chosen) < top_k:
            chosen.append(t)
            seen.add(key)
    for name in BASELINES:  # the latest completed trial of each baseline
        bl = [t for t in trials if t.user_attrs.get("baseline") == name]
        if bl and bl[-1] not in chosen:
            chosen.append(bl[-1])
    if not chosen and feasible:
        chosen = feasible[:1]
    return [_candidate(t) for t in chosen]


def _candidate(t: optuna.trial.FrozenTrial) -> Candidate:
    a = t.user_attrs
    c = Candidate(trial_number=t.number, flags=a.get("flags") or {}, concurrency=a.get("concurrency"),
                  search_output_tok_s=float(a.get("output_tok_s") or 0.0),
                  search_p99_ms=float(a["p99_ms"]) if a.get("p99_ms") is not None else math.nan,
                  baseline=a.get("baseline", ""), vllm_serve_cmd=a.get("vllm_serve_cmd", ""))
    if not a.get("feasible"):
        c.concurrency = None  # SLO-meeting throughput is 0: nothing to re-measure
        return c
    c.remeasure_s = remeasure_s(a, int(c.concurrency))
    c.lower_levels = sorted(((int(lv["concurrency"]), float(lv["output_tok_s"]), float(lv["p99_ms"]))
                             for lv in a.get("levels") or []
                             if lv.get("feasible") and int(lv["concurrency"]) < int(c.concurrency)), reverse=True)
    return c


def remeasure_s(attrs: dict[str, Any], concurrency: int) -> float:
    """Expected wall seconds of re-measuring a trial at ``concurrency``: its server start and stop as in the
    trial, plus the level's time estimated from the trial's own levels."""
    levels = attrs.get("levels") or []
    walls = [(int(lv["concurrency"]), float(lv["wall_s"])) for lv in levels if lv.get("wall_s")]
    level_s = estimate_level_s(concurrency, walls) if walls else \
        float(attrs.get("load_wall_s") or 0.0) / max(1, len(levels))  # a study written before levels had wall_s
    return float(attrs.get("engine_wall_s") or 0.0) + level_s


def remeasure_reserve_s(study: optuna.Study, cfg: StudyConfig) -> float:
    """Wall seconds the re-measurement stage still needs for the current candidates, plus one more candidate
    while the top-k is not full (the next trial may join it). The study's --timeout covers this stage too."""
    if cfg.repeats <= 0:
        return 0.0
    candidates = [c for c in candidates_from_study(study, cfg.top_k) if c.concurrency is not None]
    pending = [max(0, cfg.repeats - len(stored_remeasurement(study, c.trial_number).get("repeats", []))) * c.remeasure_s
               for c in candidates]
    if candidates and sum(1 for c in candidates if not c.baseline) < cfg.top_k:
        pending.append(cfg.repeats * max(c.remeasure_s for c in candidates))
    return sum(pending)


def stored_remeasurement(study: optuna.Study, trial_number: int) -> dict[str, Any]:
    """A candidate's stored re-measurements: ``{"repeats": [...], "concurrency": C, "stepped_down_from":
    [...]}`` (the last two absent for a study written before step-downs, or never re-measured)."""
    entry = (study.user_attrs.get("remeasurements") or {}).get(str(trial_number)) or {}
    return {"repeats": entry} if isinstance(entry, list) else entry  # a list: the format before step-downs


def remeasure_and_select(study: optuna.Study, cfg: StudyConfig, deadline: float | None,
                         sink: ProgressSink = NULL_SINK) -> Selection:
    """Re-measure each candidate ``repeats`` times on a fresh server at its chosen load. Re-measurements are
    stored on the study, so a resumed study does not pay for them twice."""
    candidates = candidates_from_study(study, cfg.top_k)
    limit = cfg.settings.search.limit_ms
    metric = cfg.settings.search.metric
    stored: dict[str, Any] = study.user_attrs.get("remeasurements", {})
    for cand in candidates:
        key = str(cand.trial_number)
        entry = stored_remeasurement(study, cand.trial_number)
        stepped = entry.get("stepped_down_from", [])
        for concurrency in (stepped[1:] + [entry["concurrency"]]) if stepped else []:
            cand.move_to(int(concurrency))  # replay a resumed study's step-downs, along the path it took
        cand.repeats = [Measurement(m["output_tok_s"] if m["output_tok_s"] is not None else math.nan,
                                    m["p99_ms"] if m["p99_ms"] is not None else math.nan, m.get("metrics") or {})
                        for m in entry.get("repeats", [])]
        if cand.concurrency is None or cfg.repeats <= 0:
            continue
        while len(cand.repeats) < cfg.repeats:
            if deadline is not None and time.monotonic() + cand.remeasure_s > deadline:
                sink(Event("remeasure_skipped", {"trial": cand.trial_number, "repeat": len(cand.repeats) + 1,
                                                 "of": cfg.repeats, "expected_s": cand.remeasure_s}))
                break
            i = len(cand.repeats)
            sink(Event("remeasure", {"trial": cand.trial_number, "repeat": i + 1, "of": cfg.repeats,
                                     "concurrency": cand.concurrency, "baseline": cand.baseline}))
            # one folder per server: a step-down re-measures at a new level with the repeat count back at 0
            log_path = (cfg.out_dir / cfg.study_name / "remeasure" / f"{cand.trial_number}-c{cand.concurrency}-{i}"
                        / "server.log")
            name = f"autotune-{cfg.study_name}-{cand.trial_number}-r{i}"
            try:
                r: BenchResult = measure_once(cfg.settings, cand.flags, cand.concurrency, name, log_path)
                m = Measurement(r.output_tok_s, r.p99_ms(metric), json_safe(r.to_json()))
            except EngineStartError as e:
                cand.failure = f"{e.failure_class}: {e}"
                m = Measurement(math.nan, math.nan, {"failure_class": e.failure_class})
            cand.repeats.append(m)
            sink(Event("remeasured", {"trial": cand.trial_number, "output_tok_s": m.output_tok_s,
                                      "p99_ms": m.p99_ms, "limit_ms": limit}))
            if m.p99_ms > limit and cand.step_down():  # marginal knee: step down (see Candidate.step_down)
                sink(Event("remeasure_step_down", {"trial": cand.trial_number, "concurrency": cand.concurrency,
                                                   "from_concurrency": cand.stepped_down_from[-1]}))
            stored[key] = json_safe({
                "concurrency": cand.concurrency, "stepped_down_from": cand.stepped_down_from,
                "repeats": [{"output_tok_s": x.output_tok_s, "p99_ms": x.p99_ms, "metrics": x.metrics}
                            for x in cand.repeats]})
            study.set_user_attr("remeasurements", stored)
    selection = select_winner(candidates, limit, cfg.noise_floor)
    study.set_user_attr("selection", json_safe({
        "winner_trial": selection.winner.trial_number if selection.winner else None,
        "verdict": selection.verdict, "gains": selection.gains}))
    return selection


def baseline_summary(study: optuna.Study, selection: Selection, cfg: StudyConfig) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for cand in selection.candidates:
        if cand.baseline:
            s = cand.stats(cfg.noise_floor)
            out[cand.baseline] = json_safe({"trial": cand.trial_number, "flags": cand.flags,
                                             "meets_limit": cand.meets(cfg.settings.search.limit_ms),
                                             "concurrency": cand.concurrency, "output_tok_s": s,
                                             **({"gain": selection.gains[cand.baseline]}
                                                if cand.baseline in selection.gains else {})})
    return out
