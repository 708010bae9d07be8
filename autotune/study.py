"""The study: an Optuna search over restart-requiring flags, a load search per trial, baselines first,
then re-measurement of the top candidates and the profile of the winner.

Headless: progress goes to a :class:`~autotune.progress.Progress`; the CLI renders it. What the study stores
goes through :mod:`autotune.records`.
"""
from __future__ import annotations

import datetime as dt
import math
import os
import queue
import secrets
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import optuna

from sqlalchemy.exc import SQLAlchemyError

from autotune import journal, records
from autotune.engines.launcher import stop_all
from autotune.engines.ledger import stop_leftovers
from autotune.errors import EngineStartError, Stopped, StorageUnavailable, UsageError
from autotune.gpu_ids import GpuId
from autotune.hostcpu import busy_host_caveat
from autotune.jsonsafe import json_safe
from autotune.loadsearch import estimate_level_s
from autotune.models import ModelSpec
from autotune.profile import Hardware, Profile, Software, build_profile, environment, write_profile
from autotune.progress import NULL_PROGRESS, Progress, StudyEta, StudyInterrupted, StudyStart, ThreadedProgress
from autotune.sim.faults import FaultPlan
from autotune.storage import (MAX_RETRIES, fail_as_dead, fail_dead_processes_trials, heartbeat_s, hold_study_run,
                              holds_alone, record_heartbeat_now, redact_url, retried_trial, stale_after_s,
                              trials_with_heartbeat)
from autotune.records import Measurement, StudyFingerprint, TrialRecord, TrialResult
from autotune.selection import Candidate, LeftOutTrial, LoadCurve, Selection, select_winner, serve_load, tok_s_stats
from autotune.space import SearchSpace
from autotune.trial import TrialSettings, measure_once, run_trial, runs_in_process, sim_predicted_knee

__all__ = ["StudyConfig", "StudyOutcome", "WorkerOutcome", "run_study", "run_worker", "BASELINES", "baseline_flags",
           "trial_folder", "remeasure_folder", "remeasure_folders",
           "study_fingerprint", "constraint_key", "selection_record", "SEED_PROFILE"]

# The seed write-up's hand-tuned profile; on several GPUs also the baselines' GPU layout (baseline_parallel_flags),
# expert parallel for an MoE and the vision encoder in data-parallel mode for a VLM with TP > 1 (its GLM-4.6V
# recipe: TP4 + EP + fp8 KV).
SEED_PROFILE = {"kv-cache-dtype": "fp8", "max-num-seqs": 1024, "enable-chunked-prefill": True}
BASELINES = ("vllm-defaults", "seed-profile")


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
    # With a deadline: the fresh-server re-measurements per finalist that time left over after the trials may buy,
    # a whole round of the finalists at a time (see spare_rounds)
    max_repeats: int = 2
    noise_floor: float = 0.0  # relative run-to-run noise of throughput that no interval is narrower than
    confidence: float = 0.9  # of the intervals a verdict rests on
    seed: int = 0
    out_dir: Path = Path("studies")
    tries: tuple[dict[str, Any], ...] = ()  # extra points queued after the baselines (`--try FILE`)
    gpu_slots: tuple[tuple[GpuId, ...], ...] = (("0",),)  # the GPUs of each trial that may run at once
    idle_gpus: tuple[GpuId, ...] = ()  # the run's GPUs that no trial gets (--gpus does not divide them, --parallel)
    sim_fault: FaultPlan | None = None  # sim server only: the fault some trials' servers make (`--sim-fault`)
    run_options: Mapping[str, Any] | None = None  # what the study was asked (RunOptions), for workers to join it

    def baseline_layout_note(self) -> str:
        """Why this study's baselines do not run TP over every GPU; "" where they do."""
        return baseline_layout_note(self.settings.model, self.settings.gpus)


@dataclass(frozen=True)
class StudyOutcome:
    study_name: str
    n_trials_total: int
    n_trials_run: int  # the trials this process finished (a shared study's workers finish others), not those not run
    selection: Selection
    profile: Profile | None
    profile_path: Path | None
    stopped_by: str
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    finalists: list[dict[str, Any]] = field(default_factory=list)  # finalist_summary: the others the verdict compared
    # trials other processes were running when the search ended and did not finish in the time the run waited
    left_out: tuple[LeftOutTrial, ...] = ()
    # the study's sampled trials that were not run, each with the earlier trial whose flags it had (same_flags_as)
    not_run: tuple[tuple[int, int], ...] = ()


def trial_folder(study_dir: Path, number: int) -> Path:
    """A trial's server log and, under ``levels``, its levels' requests (trial.level_records_name); under
    :data:`SIM_PREDICTION_FOLDER`, the sim's prediction its load search started from (a served engine's first
    trials)."""
    return study_dir / "trials" / str(number)


SIM_PREDICTION_FOLDER = "sim-prediction"


def remeasure_folder(study_dir: Path, trial_number: int, concurrency: int, repeat: int) -> Path:
    """One fresh-server re-measurement of a trial at a load: its server log and, under ``levels``, its requests."""
    return study_dir / "remeasure" / f"{trial_number}-c{concurrency}-{repeat}"


def remeasure_folders(study_dir: Path) -> list[tuple[int, Path]]:
    """Every re-measurement folder of a study (:func:`remeasure_folder`) with its trial's number, in name order."""
    return [(int(folder.name.split("-c")[0]), folder) for folder in sorted((study_dir / "remeasure").glob("*-c*-*"))]


def baseline_parallel_flags(model: ModelSpec, gpus: int) -> dict[str, Any]:
    """The baselines' GPU layout: TP over every GPU, as `vllm serve` is launched on N GPUs, where vLLM can split the
    model's heads so; else the largest TP that divides the GPUs and splits them, with data parallelism over the rest
    (DP = GPUs / TP). Nothing on one GPU."""
    if gpus == 1:
        return {}
    tp = model.largest_tensor_parallel_size(gpus)
    return {"tensor-parallel-size": tp, **({"data-parallel-size": gpus // tp} if gpus > tp else {})}


def baseline_layout_note(model: ModelSpec, gpus: int) -> str:
    """Why the baselines do not run TP over every GPU; "" where they do."""
    tp = model.largest_tensor_parallel_size(gpus)
    if tp == gpus:
        return ""
    return (f"the baselines run tensor-parallel-size {tp} with data-parallel-size {gpus // tp} on the {gpus} GPUs, "
            f"not TP over all of them: {model.tensor_parallel_problem(gpus)}")


def baseline_flags(name: str, model: ModelSpec, gpus: int) -> dict[str, Any]:
    """vllm-defaults: nothing set but the GPU layout (:func:`baseline_parallel_flags`).
    seed-profile: SEED_PROFILE, plus expert parallel (MoE, on several GPUs) and mm-encoder-tp-mode data (VLM,
    with TP > 1)."""
    flags = baseline_parallel_flags(model, gpus)
    if name == "seed-profile":
        flags.update(SEED_PROFILE)
        if gpus > 1 and model.is_moe:
            flags["enable-expert-parallel"] = True
        if flags.get("tensor-parallel-size", 1) > 1 and model.is_vlm:
            flags["mm-encoder-tp-mode"] = "data"
    return flags


def baseline_launch_flags(name: str, model: ModelSpec, gpus: int, fixed: Mapping[str, Any]) -> dict[str, Any]:
    """The flags a baseline's trial launches: its own, with the fixed flags (the space's and --set) over them, since
    those hold in every trial."""
    return {**baseline_flags(name, model, gpus), **fixed}


def constraint_key(metric: str) -> str:
    """The name of a limit's Optuna constraint (P99 - limit in ms, <= 0 feasible): one per limit."""
    return f"p99_{metric}_minus_limit_ms"


def study_fingerprint(cfg: StudyConfig) -> StudyFingerprint:
    s = cfg.settings
    return StudyFingerprint(model=s.model.name, gpus=s.gpus, limits_ms=dict(s.search.limits_ms),
                            workload=s.workload.describe(), engine=s.engine, gpu_type=s.gpu.name, preset=cfg.preset,
                            space=str(cfg.space.source), weight_dtype=s.model.weight_dtype,
                            sim_model=s.sim_model())


def open_study(cfg: StudyConfig, storage: optuna.storages.BaseStorage, worker: bool = False) -> optuna.Study:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = optuna.create_study(study_name=cfg.study_name, storage=storage, direction="maximize",
                                sampler=_sampler(cfg.seed), load_if_exists=True)
    records.check_fingerprint(study, study_fingerprint(cfg))
    _check_heartbeat(study, worker)
    if not worker:  # before the options a worker waits for: its estimates rest on it (_StopRules._worker_eta)
        records.write_search_left(study, records.SearchLeft(trials_left=cfg.n_trials, trials=cfg.n_trials,
                                                            search_left_s=None, timeout=cfg.timeout_s is not None))
    if cfg.run_options is not None:
        records.write_run_options(study, cfg.run_options)
    if not worker:  # the run's pace is the study's
        records.write_heartbeat_s(study, heartbeat_s())
    trials_so_far = len(study.get_trials(deepcopy=False))
    if trials_so_far or worker:
        study.sampler = _sampler(sampler_seed(cfg.seed, trials_so_far, worker))
    return study


def _check_heartbeat(study: optuna.Study, worker: bool) -> None:
    """Refuse a worker whose trials' heartbeats (AUTOTUNE_HEARTBEAT_S) come at another pace than its study's run's,
    and a run resumed at another pace while trials of the study are running. Each process fails a trial as dead
    three of its own heartbeats after that trial's last one: a run beating every second failed a live worker's trial
    beating every 30 s within seconds (its result kept only in the worker's pending folder, left out of the verdict,
    its flags queued again), and a process beating faster than another would fail that one's trials so. A running
    trial may be a worker's, still beating at the study's pace, or one a dead run left, which that pace fails."""
    study_s = records.read_heartbeat_s(study)
    if study_s is None or study_s == heartbeat_s():
        return
    if worker:
        raise UsageError(f"this worker's trials send a heartbeat every {heartbeat_s()} s, the run of study "
                         f"{study.study_name!r} every {study_s} s, and each process takes the other's running trials "
                         f"for dead after three of its own: set AUTOTUNE_HEARTBEAT_S={study_s} here, as where the "
                         "run runs")
    running = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))]
    if running:
        raise UsageError(f"study {study.study_name!r} was run with a heartbeat every {study_s} s and trial"
                         f"{'s' if len(running) > 1 else ''} {', '.join(map(str, running))} of it still run (a "
                         f"worker's, or left by a run that died): set AUTOTUNE_HEARTBEAT_S={study_s} to resume it; "
                         "another pace, once no trial of it runs")


def _sampler(seed: int) -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=6, multivariate=True, group=True,
                                      constant_liar=True)


def sampler_seed(seed: int, trials_so_far: int, worker: bool) -> int:
    """The sampler's seed for a process opening a study that holds ``trials_so_far`` trials: ``--seed`` itself for
    a new study's run, so that one seed gives one study. Seeded alike, a resumed run's sampler would draw its
    first run's random start-up points again (not run again, they would still use up --trials), and every worker
    joining at once the same points as each other; so a resumed run's seed is drawn from ``--seed`` and the study's
    size (the same history, the same points), and a worker's from fresh entropy too (several processes' trials
    interleave in no set order, so a shared study is not reproducible anyway)."""
    if not trials_so_far and not worker:
        return seed
    entropy = [seed, trials_so_far] + ([secrets.randbits(64)] if worker else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _enqueue_baselines(study: optuna.Study, cfg: StudyConfig) -> None:
    """Baselines run first; one whose trial never completed (interrupted) is queued again."""
    alive = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING)
    queued = {t.baseline for t in records.read_trials(study) if t.state in alive}
    for name in BASELINES:
        if name in queued:
            continue
        flags = baseline_flags(name, cfg.settings.model, cfg.settings.gpus)
        params = cfg.space.params_for(flags, cfg.settings.model, cfg.settings.gpus)
        study.enqueue_trial(params, user_attrs=records.queue_attrs(baseline=name), skip_if_exists=False)
    trials = study.get_trials(deepcopy=False)
    tried = [records.queued_try(t) for t in trials]
    # an older study's points are known by their projection only: matched on it, as they were queued
    tried_unkept = [records.queued_try_unkept(t) for t in trials]
    for flags in cfg.tries:  # a resumed run does not queue the same point twice
        params = cfg.space.params_for(flags, cfg.settings.model, cfg.settings.gpus)
        if flags in tried or params in tried_unkept:
            continue
        tried.append(flags)
        # The sampler learns the point as its projection on the space; the trial runs the point as given.
        study.enqueue_trial(params, user_attrs=records.queue_attrs(tried=flags), skip_if_exists=False)


class _SearchDone(Exception):
    """A worker's trial that Optuna's ask created once the study's run had ended its search: not run."""


def _objective(cfg: StudyConfig, slot: tuple[GpuId, ...], progress: ThreadedProgress, deadline: float | None,
               cancel: threading.Event, remeasure_baselines: bool = True, until_search_done: bool = False,
               failed_elsewhere: list[int] | None = None):
    """One trial on the GPUs of ``slot``. Once ``cancel`` is set (the study was interrupted) a trial in flight
    ends with what it measured: recorded as ``interrupted`` with its levels, then failed (``Stopped``).

    It starts by recording a heartbeat: a trial without one never got past Optuna's ask, and a trial whose process
    died there has no heartbeat for Optuna's stale check to find stopped (_wait_for_others_trials judges those).
    Where another process failed the trial under this one (taken for dead), its number goes to
    ``failed_elsewhere`` and Optuna's tell, refused, raises (_one_trial).

    ``until_search_done`` (a worker): a trial that Optuna's ask created once the run had ended its search is not
    run (``_SearchDone``), its queued point queued again.

    ``remeasure_baselines``: a baseline is a finalist whatever the search finds, so its fresh-server
    re-measurements run right after its trial, on its slot, rather than at the end. The comparison is the same;
    the study then knows what a re-measurement really costs (a warm restart: 55-78 s on an H200 against the first
    start's 148 s) before it decides whether the next trial still fits with the final comparison, instead of
    reserving the cold start's time for each of them (on the H200 that reserve left no room for a second trial
    in 21 minutes). Off for workers: the run that owns the study does its final comparison."""
    limits_ms = cfg.settings.search.limits_ms

    def objective(trial: optuna.Trial) -> float:
        if cancel.is_set():
            raise Stopped(130)  # the main thread re-raises the signal's own exit code
        try:
            return measure(trial)
        except optuna.exceptions.UpdateFinishedTrialError:  # a write to the trial, failed by another process
            if failed_elsewhere is not None:
                failed_elsewhere.append(trial.number)
            raise

    def measure_flags(trial: optuna.Trial, flags: dict[str, Any], baseline: str,
                      trials: list[TrialRecord]) -> TrialResult:
        """Launch ``flags`` on the slot's GPUs and measure them: the trial's result, kept in the journal and then
        stored."""
        trial_dir = trial_folder(cfg.out_dir / cfg.study_name, trial.number)
        name = f"autotune-{cfg.study_name}-{trial.number}"
        progress.trial_started(trial.number, flags, baseline)
        settings = replace(cfg.settings, gpu_ids=slot,
                           sim_fault=cfg.sim_fault.for_trial(trial.number) if cfg.sim_fault else "")
        started = time.perf_counter()
        result = run_trial(settings, flags, name, trial_dir / "server.log", progress.for_trial(trial.number), deadline,
                           cancel, _start_concurrency(cfg.settings, flags, trials, trial_dir / SIM_PREDICTION_FOLDER))
        result = replace(result, trial_wall_s=time.perf_counter() - started)
        if cancel.is_set() and (result.stop_reason == "interrupted" or result.failure_class):
            records.write_trial_result(trial, replace(
                result, feasible=False, output_tok_s=0.0, failure_class="interrupted",
                failure_reason=f"the study was interrupted during this trial ({len(result.levels)} load levels "
                               "measured, kept here)"))
            raise Stopped(130)
        constraints = _constraints(result, limits_ms)
        journal.keep(_journal_dir(cfg), trial, records.finished_trial_attrs(trial, result), constraints,
                     float(result.output_tok_s))
        records.write_trial_result(trial, result)
        records.write_constraints(trial, constraints)
        progress.trial_finished(trial.number, baseline, result)
        return result

    def measure(trial: optuna.Trial) -> float:
        record_heartbeat_now(trial)  # first: from here its process's death is Optuna's stale check's to find
        # The run writes search_done and then reads the RUNNING trials (_wait_for_others_trials); a worker's ask
        # commits the RUNNING trial and then this reads search_done. Each storage call is its own transaction, and
        # PostgreSQL's read committed lets each statement see every commit made before it began. So either the
        # trial's commit came before the run's read began, and the run waits for it; or it came after, and then
        # the run's write, committed before that read, is seen here: no trial escapes both.
        if until_search_done and records.read_search_done(trial.study):
            _not_started(trial, "the study's run had ended its search when this worker's ask created it")
        flags = cfg.space.sample(trial, cfg.settings.model, cfg.settings.gpus)
        baseline, tried = records.queued_baseline(trial), records.queued_try(trial)
        # a baseline's or a --try point's own flags, not only their projection on the space
        if baseline:  # the fixed flags (the space's and --set) hold in every trial, a baseline's too
            flags = baseline_launch_flags(baseline, cfg.settings.model, cfg.settings.gpus, cfg.space.fixed)
        elif tried is not None:
            flags = cfg.space.try_flags(tried, cfg.settings.gpus)
        frozen = trial.study.get_trials(deepcopy=False)  # read once the sampler has chosen: see _known_outcome
        trials = [records.read_trial(t) for t in frozen]
        if (earlier := _known_outcome(trial.number, frozen, trials, flags,
                                      cfg.settings.search.max_concurrency)) is not None:
            return _not_run(trial, earlier, limits_ms, progress)
        if (measured := _measured_before(trial.number, frozen, trials, flags)) is not None:
            result = _take_result(trial, measured, baseline, limits_ms, progress)
        else:
            result = measure_flags(trial, flags, baseline, trials)
        if remeasure_baselines and baseline and result.feasible and cfg.repeats > 0:
            trials = records.read_trials(trial.study)
            [record] = [t for t in trials if t.number == trial.number]
            cand = _with_stored_remeasurements(trial.study, _candidate(record, observed_restart_s(trial.study)))
            _remeasure(trial.study, cfg, cand, slot, deadline, progress, cancel)
        return float(result.output_tok_s)

    return objective


def _known_outcome(number: int, frozen: list[optuna.trial.FrozenTrial], trials: list[TrialRecord],
                   flags: Mapping[str, Any], max_concurrency: int) -> TrialRecord | None:
    """The earlier trial whose outcome trial ``number``'s launch flags already have under the load search's ceiling
    ``max_concurrency`` (records.known_trial_with_flags), where the sampler chose that trial's point; None for a
    baseline, a ``--try`` point and a retried copy of a failed trial, which run as queued (a copy of a trial that had
    measured its flags takes that trial's result instead: _measured_before).

    ``frozen`` is read after the sampler chose, so a trial that finished meanwhile is seen, on another process or
    machine sharing the study in PostgreSQL too. A trial still RUNNING elsewhere with the same flags is not: both run
    (Optuna hands out points, not locks; its constant liar makes the sampler avoid running ones, not never propose
    them), and the candidates keep only one trial per flags."""
    [me] = [t for t in frozen if t.number == number]
    return records.known_trial_with_flags(trials, flags, max_concurrency) if records.sampled(me) else None


def _not_run(trial: optuna.Trial, earlier: TrialRecord, limits_ms: Mapping[str, float],
             progress: Progress) -> float:
    """Complete ``trial`` at once, without a server, as a repeat of ``earlier``: Optuna's FAQ answer to duplicated
    samples ("How can I ignore duplicated samples?"), the earlier trial's value and, since the sampler is
    constraint-aware, its constraints too (a failed or zero-valued trial would teach the sampler that the point is
    bad). The trial holds the earlier one's number and no result: no report counts it as a measurement."""
    result = earlier.result
    assert result is not None
    records.write_same_flags(trial, earlier.number)
    records.write_constraints(trial, _constraints(result, limits_ms))
    progress.trial_not_run(trial.number, earlier.number, result)
    return float(result.output_tok_s)


def _measured_before(number: int, frozen: list[optuna.trial.FrozenTrial], trials: list[TrialRecord],
                     flags: Mapping[str, Any]) -> TrialRecord | None:
    """The failed trial that trial ``number``, a copy the retry callback queued, runs again, where that one had
    measured the same launch ``flags`` to the end: its result stored, then its process dead (SIGKILL, a crash, its
    machine or its database lost) in what follows a measurement inside the trial (a baseline's fresh-server
    re-measurement, minutes long; Optuna's tell), and the trial failed by a heartbeat check. The copy takes that
    result (:func:`_take_result`) rather than spend the GPU time again, whichever process took it from the queue: the
    result is in the study's storage, which every process sees, where the dead process's journal of it is on its
    own machine only. None for any other trial, and for a copy of a trial cut short in its measurement
    (``interrupted``: measured again, its levels kept on the original) or that launched other flags (the fixed ones
    changed since)."""
    [me] = [t for t in frozen if t.number == number]
    original = retried_trial(me)
    measured = next((t for t in trials if t.number == original), None)
    if measured is None or measured.result is None or measured.result.failure_class == "interrupted" \
            or records.flags_key(measured.result.flags) != records.flags_key(flags):
        return None
    return measured


def _take_result(trial: optuna.Trial, measured: TrialRecord, baseline: str, limits_ms: Mapping[str, float],
                 progress: Progress) -> TrialResult:
    """Complete ``trial`` with the result ``measured`` stored (:func:`_measured_before`), as Optuna would have been
    told it had its process lived: its value and its constraints (the copy holds those already where they were
    stored: write_constraints replaces them)."""
    result = measured.result
    assert result is not None
    measured_as = records.take_result(trial, measured)
    records.write_constraints(trial, _constraints(result, limits_ms))
    progress.trial_result_taken(trial.number, baseline, measured_as, result)
    return result


def _constraints(result: TrialResult, limits_ms: Mapping[str, float]) -> dict[str, float]:
    """A trial's Optuna constraints, one per limit, by key (:func:`constraint_key`)."""
    return {constraint_key(metric): value for metric, value in result.constraints_ms(limits_ms).items()}


def _not_started(trial: optuna.Trial, why: str) -> NoReturn:
    """End ``trial`` before it starts: a copy of its queued point (a baseline, a ``--try`` point, a retry's
    flags) queued again first, so that a death here loses nothing, then the note, then ``_SearchDone``, which Optuna
    records as the trial's FAIL. A trial sampled afresh has no point to keep: its flags were not drawn yet."""
    frozen = next((t for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                   if t.number == trial.number), None)
    if frozen is None:  # another process failed it meanwhile, taken for dead, and queued its copy there
        raise optuna.exceptions.UpdateFinishedTrialError(f"trial {trial.number} was failed by another process")
    if frozen.params or frozen.system_attrs or records.requeue_user_attrs(frozen):
        trial.study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING, params=frozen.params, distributions=frozen.distributions,
            user_attrs=records.requeue_user_attrs(frozen), system_attrs=frozen.system_attrs))
        why += "; its queued point queued again"
    records.write_not_started(trial, why)
    raise _SearchDone(why)


class _SlotRunner:
    """Runs tasks on threads, each on a GPU slot of its own; a slot goes to the next task only once the task is
    over, its server stopped and its port and GPU memory free (the launcher's stop waits for both).

    The main thread only hands out slots and waits, so a signal (Ctrl-C, SIGTERM, SIGHUP) lands there, in
    :meth:`interruptible`: it sets ``cancel`` (no level or trial starts any more), stops every live server (the
    trials in flight end at once with the levels they measured) and waits for the threads before re-raising."""

    def __init__(self, slots: tuple[tuple[GpuId, ...], ...]) -> None:
        self.cancel = threading.Event()
        self.errors: list[BaseException] = []
        self._free: queue.Queue[tuple[GpuId, ...]] = queue.Queue()
        for slot in slots:
            self._free.put(slot)
        self._threads: list[threading.Thread] = []

    def take_slot(self) -> tuple[GpuId, ...] | None:
        """A free slot, waiting for one; None once a task has failed."""
        while not self.errors:
            try:
                return self._free.get(timeout=0.2)
            except queue.Empty:
                continue
        return None

    def give_back(self, slot: tuple[GpuId, ...]) -> None:
        self._free.put(slot)

    def start(self, task: Callable[[tuple[GpuId, ...]], None], slot: tuple[GpuId, ...]) -> None:
        def run() -> None:
            try:
                task(slot)
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                if not (self.cancel.is_set() and isinstance(e, KeyboardInterrupt)):
                    self.errors.append(e)
            finally:
                self._free.put(slot)

        thread = threading.Thread(target=run, name=f"autotune-gpus-{','.join(slot)}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def join(self) -> None:
        """Wait for every task; raise the first error one of them raised."""
        for thread in self._threads:
            while thread.is_alive():
                thread.join(0.2)
        if self.errors:
            raise self.errors[0]

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.cancel.set()
            stop_all()  # every server this process started: the trials in flight end now
            for thread in self._threads:
                while thread.is_alive():
                    thread.join(0.2)
            raise


def _run_trials(study: optuna.Study, cfg: StudyConfig, progress: ThreadedProgress, deadline: float | None,
                rules: _StopRules, runner: _SlotRunner, until_search_done: bool = False) -> None:
    """Up to ``cfg.n_trials`` trials, as many at once as there are GPU slots. Optuna's ``optimize`` runs each one
    (one trial per call, on its slot's thread): its heartbeat, its FAIL on an exception, the sampler's constant
    liar for the trials still running. ``until_search_done``: a worker also stops once the study's run has moved
    on to its final comparison."""
    while rules.trials_started() < cfg.n_trials and not rules.reason:
        slot = runner.take_slot()
        if slot is None:
            break
        if rules.reason or (until_search_done and records.read_search_done(study)):
            runner.give_back(slot)
            break
        if rules.would_overrun() or (deadline is not None and time.monotonic() >= deadline):
            rules.reason = "timeout"
            runner.give_back(slot)
            break
        rules.launched += 1
        failed_elsewhere: list[int] = []
        objective = _objective(cfg, slot, progress, deadline, runner.cancel,
                               remeasure_baselines=not until_search_done, until_search_done=until_search_done,
                               failed_elsewhere=failed_elsewhere)
        runner.start(lambda _slot, f=objective, failed=failed_elsewhere: _one_trial(study, f, rules, progress, failed),
                     slot)
    runner.join()


def _one_trial(study: optuna.Study, objective: Callable[[optuna.Trial], float], rules: _StopRules,
               progress: Progress, failed_elsewhere: list[int]) -> None:
    """One trial through Optuna's ``optimize``. A worker's trial not run because the search was done ends here. A
    trial that another process failed under this one (a run took it for dead, or its heartbeats came late) is
    said, and this process goes on: Optuna refuses its tell ("Cannot tell a FAIL trial"), and what it measured,
    kept in the journal, goes into the copy queued of it when this process next opens the study."""
    try:
        study.optimize(objective, n_trials=1, callbacks=[rules], catch=(), gc_after_trial=False)
    except _SearchDone:
        return
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
        if not failed_elsewhere:
            raise
        number = failed_elsewhere[0]
        progress.trial_failed_elsewhere(number, records.read_declared_dead(study).get(number, ""))


@contextmanager
def _failing_interrupted(study: optuna.Study, storage: optuna.storages.BaseStorage, alone: bool) -> Iterator[None]:
    """Mark FAIL the trials that became RUNNING inside the block when it ends in an exception. Optuna fails a
    trial interrupted inside the objective itself, but a signal inside its ``ask`` (the trial is created or an
    enqueued baseline popped, the objective not yet called) or ``tell`` leaves it RUNNING; with in-process sim
    trials of about a second that window is often hit. Only where this process runs the study alone (SQLite,
    ``alone``): in a shared one a trial that became RUNNING meanwhile may be a live worker's, and one of ours cut
    inside ``ask`` is failed by the others through its stopped heartbeat."""
    running = (optuna.trial.TrialState.RUNNING,)
    before = {t.number for t in study.get_trials(deepcopy=False, states=running)}
    try:
        yield
    except BaseException:
        if alone:
            for t in study.get_trials(deepcopy=False, states=running):
                if t.number not in before:
                    storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)  # noqa: SLF001 - its id
        raise


def _start_concurrency(settings: TrialSettings, flags: dict[str, Any], trials: list[TrialRecord],
                       prediction_dir: Path) -> Callable[[], int]:
    """Where the trial's load search starts (:func:`start_concurrency`), as a callable the trial asks once its server
    is ready. A served engine's first trial starts near the sim's prediction, computed on a thread while the engine
    starts: seconds to a minute of CPU (an image workload), which the engine's minutes of start-up hide. A daemon
    thread, so that an interrupted study does not wait for it; its log and levels are kept in ``prediction_dir``."""
    default = settings.search.start_concurrency
    if runs_in_process(settings) or any(t.feasible for t in trials):
        return lambda: start_concurrency(trials, default)
    predicted: list[int | None] = []

    def predict() -> None:
        try:
            predicted.append(sim_predicted_knee(settings, flags, prediction_dir))
        except Exception:  # noqa: BLE001 - advisory: without a prediction the search starts at the default
            predicted.append(None)

    thread = threading.Thread(target=predict, name="autotune-prior", daemon=True)
    thread.start()

    def start_at() -> int:
        thread.join()
        return start_concurrency(trials, default, predicted[0] if predicted else None)
    return start_at


def start_concurrency(trials: list[TrialRecord], default: int, predicted_knee: int | None = None) -> int:
    """Where a trial's load search starts, never below ``default``: at the best knee found so far (the levels
    below it would only confirm what every trial shows, at 20-60 s each on an H200); before any knee, at half
    the sim engine's predicted knee when there is one. Half, because where a card's calibration has no API
    server (the H100's) the sim's P99 TTFT runs low at high load and its knees lie high (uncalibrated, it put
    vLLM's defaults on an H200 at 512 for P99 TTFT <= 500 ms, where the GPU's knee was near 140); the H200's
    calibration puts TTFT knees within about 15% and ITL knees low, so there half costs a level or two.
    From 8, the H200's first trial took 8 levels to its knee; from a start within a factor of two, 4."""
    best = max((t for t in trials if t.feasible), key=lambda t: t.value, default=None)
    if best is not None and best.result is not None and best.result.concurrency is not None:
        return max(default, best.result.concurrency)
    if predicted_knee:
        return max(default, predicted_knee // 2)
    return default


class _StopRules:
    """Stagnation and a deadline that leaves room for the next trial (Optuna checks timeout only between
    trials, so a trial that starts late would overrun). The next trial is assumed to take as long as the
    longest so far, counting those of earlier runs of a resumed study: on the H100 a median let a slow trial
    start that then ran past the deadline.

    A trial that was not run (the flags of an earlier finished trial: _not_run) counts towards --trials and towards
    the stagnation stop, and not towards the trials' durations. It costs no GPU time, but a sampler that keeps
    proposing points it has seen has stopped finding new ones: uncounted, a converged sampler or a small space
    (every point seen) would ask for points without end; a repeat is no gain either. A queued copy that took the
    result its failed original had measured (_take_result) is no trial of this process, launched or run: that
    measurement was the dead process's."""

    def __init__(self, cfg: StudyConfig, deadline: float | None, earlier_durations: list[float],
                 reserve_s: Callable[[], float], progress: Progress = NULL_PROGRESS, worker: bool = False) -> None:
        self.worker = worker  # a worker's trials end with its run's search: its estimate follows that (_worker_eta)
        self.slots = max(1, len(cfg.gpu_slots))  # trials at once: the estimates count rounds of them
        self.patience = cfg.patience
        self.n_trials = cfg.n_trials
        self.deadline = deadline
        self.reason = ""
        self.durations: list[float] = list(earlier_durations)
        self.ran = 0  # trials finished, those not run included (--trials counts them)
        self.not_run = 0  # of those, the trials not run: the flags of an earlier finished trial
        self.launched = 0  # trials this run started (_run_trials counts them): the deadline stops only one to come
        self.taken = 0  # of those, queued copies that took a dead process's measurement (_take_result): not ours
        # kept free after the trials: the re-measurements still to make (the run's: a worker makes none)
        self.reserve_s = (lambda: 0.0) if worker else reserve_s
        self.progress = progress
        self.journal_dir = _journal_dir(cfg)
        self._lock = threading.Lock()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        with self._lock:  # trials end on several threads
            self._after_trial(study, trial)

    def _after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        journal.settled(self.journal_dir, trial.number)  # told: the storage has it
        record = records.read_trial(trial)
        if record.measured_as is not None:  # a dead process's measurement recorded (_take_result): no trial of ours
            self.taken += 1
        else:
            self.ran += 1
            self.not_run += record.not_run
        if record.result is not None and record.result.trial_wall_s:
            self.durations.append(record.result.trial_wall_s)
        since = _trials_since_gain(records.read_trials(study))
        reserve_s = self.reserve_s()
        if self.patience and since[0] >= self.patience and since[1] > 0:
            repeats = (f" ({since[2]} of them the flags of an earlier trial, not run again)" if since[2] else "")
            self.reason = f"stagnation: no 1% gain in {since[0]} trials{repeats}"
        elif self.trials_started() < self.n_trials and self.would_overrun(reserve_s):
            self.reason = "timeout"
        left = self.trials_left(since)
        trial_s = max(self.durations, default=0.0)
        time_left_s = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
        if self.worker:
            self.progress.study_eta(self._worker_eta(study, left, trial_s, time_left_s))
            return
        self.record_search_left(study, left, reserve_s)
        eta_s = (_trials_time_s(left, trial_s, self.slots) or 0.0) + reserve_s
        if time_left_s is not None:
            eta_s = min(eta_s, time_left_s)
        self.progress.study_eta(StudyEta(left, trial_s, reserve_s, eta_s, time_left_s))

    def trials_started(self) -> int:
        """The trials this process started that count towards its --trials."""
        return self.launched - self.taken

    def trials_left(self, since: tuple[int, float, int]) -> int:
        """Trials this process may still run, at most: its --trials, and the stagnation stop (``since``:
        _trials_since_gain)."""
        left = 0 if self.reason else max(0, self.n_trials - self.ran)
        if self.patience and since[1] > 0:
            left = max(0, min(left, self.patience - since[0]))
        return left

    def record_search_left(self, study: optuna.Study, left: int, reserve_s: float) -> None:
        """The run's: what it has left of its search, for its workers' estimates (records.SearchLeft): its trials
        left times the longest trial so far, within what its --timeout leaves before the final comparison."""
        search_left_s = _trials_time_s(left, max(self.durations, default=0.0), self.slots)
        if self.deadline is not None:
            room_s = max(0.0, self.deadline - time.monotonic() - reserve_s)
            search_left_s = room_s if search_left_s is None else min(search_left_s, room_s)
        records.write_search_left(study, records.SearchLeft(trials_left=left, trials=self.n_trials,
                                                            search_left_s=search_left_s,
                                                            timeout=self.deadline is not None))

    def _worker_eta(self, study: optuna.Study, left: int, trial_s: float, time_left_s: float | None) -> StudyEta:
        """A worker's estimate: it takes trials until the study's run ends its search (what the run last recorded
        of it), or its own --trials or --timeout ends it sooner; the run's final comparison is not its to make. Not
        known where the run recorded nothing (an older autotune), nor while the run has timed no trial and has no
        --timeout."""
        run = records.read_search_left(study)
        run_s = run.search_left_s_now() if run is not None else None
        own_s = _trials_time_s(left, trial_s, self.slots)
        eta_s = None if run_s is None else min(s for s in (run_s, own_s, time_left_s) if s is not None)
        return StudyEta(left, trial_s, 0.0, eta_s, time_left_s, worker=True, run_search=run,
                        worker_stops_first=run_s is not None and own_s is not None and own_s < run_s)

    def would_overrun(self, reserve_s: float | None = None) -> bool:
        if self.deadline is None or not self.durations:
            return False
        reserve_s = self.reserve_s() if reserve_s is None else reserve_s
        return time.monotonic() + max(self.durations) + reserve_s > self.deadline


def _trials_time_s(trials: int, trial_s: float, slots: int = 1) -> float | None:
    """Seconds that ``trials`` more trials take, ``slots`` of them at once, each as long as the longest so far
    (``trial_s``); None while no trial is timed and some are left."""
    return math.ceil(trials / slots) * trial_s if trial_s > 0 or trials == 0 else None


def _trials_since_gain(trials: list[TrialRecord]) -> tuple[int, float, int]:
    """Finished trials since the last 1% gain of the best feasible value (those not run included: a repeat is no
    gain, see _StopRules), that best value, and how many of those trials were not run."""
    best, since, not_run = 0.0, 0, 0
    for t in sorted((t for t in trials if t.complete or t.not_run), key=lambda t: t.number):
        if t.value > best * 1.01:
            best, since, not_run = t.value, 0, 0
        else:
            since += 1
            not_run += t.not_run
    return since, best, not_run


def _prepare(cfg: StudyConfig, storage: optuna.storages.BaseStorage, progress: ThreadedProgress,
             worker: bool = False) -> optuna.Study:
    """Open the study, stop what a dead run of it left on this machine, fail its trials whose heartbeat stopped
    (re-queued by the storage's stale-trial callback, a baseline included), and on SQLite, which this process holds
    alone, every trial left RUNNING at once."""
    # Optuna logs an interrupted or crashed trial's traceback as a warning: our one-line errors say it instead.
    optuna.logging.set_verbosity(optuna.logging.WARNING if os.environ.get("AUTOTUNE_DEBUG") == "1"
                                 else optuna.logging.ERROR)
    study = open_study(cfg, storage, worker)
    if cfg.settings.ledger_dir is not None:
        for entry in stop_leftovers(cfg.settings.ledger_dir):
            progress.leftover_stopped(entry.served_model_name, entry.port, entry.gpu_ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    if dead := fail_dead_processes_trials(study, cfg.storage_url):
        progress.dead_run_trials_failed(tuple(dead))
    if kept := journal.replay(study, _journal_dir(cfg)):  # what a run that died or lost its database measured
        progress.kept_trials_added(tuple(kept), _journal_dir(cfg))
    return study


def _journal_dir(cfg: StudyConfig) -> Path:
    return cfg.out_dir / cfg.study_name / "pending"


@contextmanager
def _storage_loss(cfg: StudyConfig) -> Iterator[None]:
    """A database lost mid-study: one clear error (exit 1), and where the finished trials it did not take wait.
    The storage's error may come wrapped: Optuna's trial loop, failing to record a trial's end, raises an error of
    its own from inside its handling of the storage's."""
    try:
        yield
    except Exception as raised:
        e = _storage_error_in(raised)
        if e is None:
            raise
        kept = journal.pending(_journal_dir(cfg))
        what = (f"the results of {len(kept)} finished trials are kept in {_journal_dir(cfg)} and are written to "
                "the study when it resumes" if kept else "nothing measured was lost")
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise StorageUnavailable(f"storage {redact_url(cfg.storage_url)} lost during study {cfg.study_name!r} "
                                 f"({first}); every server is stopped and {what}: run the same command again once "
                                 "the database is back") from None


def _storage_error_in(error: BaseException) -> BaseException | None:
    """The storage's error in ``error`` or in the errors it was raised from or while handling, if any: the innermost
    one, the database's own words. Optuna's wrapper of a failed commit says "This typically happens due to invalid
    data in the commit", which a lost database is not."""
    seen: set[int] = set()
    found: BaseException | None = None
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, (optuna.exceptions.StorageInternalError, SQLAlchemyError)):
            found = current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return found


def _start(study: optuna.Study, cfg: StudyConfig, progress: Progress, deadline: float | None,
           worker: bool = False) -> _StopRules:
    """The stop rules of this process's trials, once it has said what it starts. A run reserves the time of its
    final comparison and records what it has left of its search, for its workers; a worker makes no final
    comparison, and its trials end with the run's search."""
    earlier = records.read_trials(study)
    before = sum(1 for t in earlier if t.complete)
    caveats = cfg.settings.card_caveats() + cfg.settings.sim_caveats()
    if not runs_in_process(cfg.settings) and (busy := busy_host_caveat()):
        caveats.append(busy)
    progress.study_started(StudyStart(study=cfg.study_name, engine=cfg.settings.engine,
                                      limits_ms=cfg.settings.search.limits_ms, gpus=cfg.settings.gpus,
                                      n_trials=cfg.n_trials, timeout_s=cfg.timeout_s, existing_trials=before,
                                      gpu_slots=cfg.gpu_slots, idle_gpus=cfg.idle_gpus,
                                      served=not runs_in_process(cfg.settings), caveats=tuple(caveats),
                                      baseline_layout=cfg.baseline_layout_note(), worker=worker,
                                      run_search=records.read_search_left(study) if worker else None))
    rules = _StopRules(cfg, deadline, _trial_walls_s(earlier), lambda: remeasure_reserve_s(study, cfg), progress,
                       worker=worker)
    if not worker:
        rules.record_search_left(study, rules.trials_left(_trials_since_gain(earlier)), rules.reserve_s())
    return rules


def _trial_walls_s(trials: list[TrialRecord]) -> list[float]:
    """The wall seconds of each trial that ran to its end (a server start, its load search and a stop)."""
    return [t.result.trial_wall_s for t in trials if t.result is not None and t.result.trial_wall_s]


# How often the wait for other processes' trials looks at the study: one query of its running trials each time.
_WAIT_POLL_S = 1.0


@dataclass(frozen=True)
class _Waited:
    """What the wait for other processes' trials leaves: the trials the final comparison goes without, and those
    still RUNNING that the run saw without a heartbeat (RunRecord.silent_trials_s)."""

    left_out: tuple[LeftOutTrial, ...] = ()
    silent_trials_s: Mapping[int, float] = field(default_factory=dict)


def _wait_for_others_trials(study: optuna.Study, storage: optuna.storages.RDBStorage, cfg: StudyConfig,
                            deadline: float | None, progress: Progress) -> _Waited:
    """Once the search is done, wait for the trials other processes (workers) are still running, so that the final
    comparison includes them; return those it goes without, each with why.

    Called once this process's own trials are over (their threads joined): every trial still RUNNING is another
    process's, live or dead (on SQLite, which one process holds, there is none). A dead process's trial is failed
    by Optuna's heartbeat check, run here at each poll since nobody else may be looking (Optuna looks when a process
    starts a trial, and the workers start none now). The copy of it that the storage's retry callback queues
    (WAITING) is neither waited for nor run now: no process takes a trial once the search is done, and the verdict
    would wait a whole trial more for a point whose process died under it; it stays queued and the study's next run
    measures it first (a baseline's too: _enqueue_baselines counts it as queued).

    Optuna's check finds only trials with a heartbeat. A trial is created RUNNING in Optuna's ask (with the
    sampler's work) before its first one, so a process that died there leaves a trial RUNNING that no check ever
    fails. It has no heartbeat (storage.trials_with_heartbeat): a trial seen so for
    three heartbeats (the grace a heartbeat gets; an ask takes seconds), counted on this run's clock and added to
    what earlier runs saw of it, is failed as its process's death and queued again through the same callback.

    A live process may hang, so the wait is bounded: by the study's longest trial so far plus the time a heartbeat
    check takes to find a dead process (its grace period and one heartbeat more, the checks' resolution), counted
    from now (each trial waited for started before now, so one still running then has run longer than any trial of
    the study, by more than a heartbeat check allows; counted on this clock because the trials' start times are
    their own machines'), and by --timeout less the re-measurements the final comparison still needs."""
    def running() -> list[optuna.trial.FrozenTrial]:
        return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))

    still = [t.number for t in running()]
    if not still:
        return _Waited()
    longest_s = max(_trial_walls_s(records.read_trials(study)), default=0.0)
    find_dead_s = stale_after_s() + heartbeat_s()
    started = time.monotonic()
    until = started + longest_s + find_dead_s
    comparison_from = None if deadline is None else deadline - remeasure_reserve_s(study, cfg)
    bound_by_timeout = comparison_from is not None and comparison_from < until
    if comparison_from is not None:
        until = min(until, comparison_from)
    silent_before_s: dict[int, float] = {}
    for run in records.read_runs(study):
        for number, seen_s in run.silent_trials_s.items():
            silent_before_s[number] = silent_before_s.get(number, 0.0) + seen_s
    silent_since: dict[int, float] = {}  # this run's clock: when it first saw each one without a heartbeat
    silent_s: dict[int, float] = {}
    waited: list[int] = []
    while True:
        # a worker that looked before the search was done may start one more trial: waited for too
        if new := tuple(n for n in still if n not in waited):
            waited.extend(new)
            progress.waiting_for_trials(new, max(0.0, until - time.monotonic()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        now = time.monotonic()
        beating = trials_with_heartbeat(storage, study.study_name)
        for trial in running():
            if trial.number in beating:  # past its ask: its death is Optuna's stale check's to find
                continue
            silent_s[trial.number] = now - silent_since.setdefault(trial.number, now)
            if silent_before_s.get(trial.number, 0.0) + silent_s[trial.number] >= stale_after_s():
                _fail_silent_trial(study, storage, trial.number,
                                   silent_before_s.get(trial.number, 0.0) + silent_s[trial.number])
        still = [t.number for t in running()]
        if not still or time.monotonic() >= until:
            break
        time.sleep(max(0.0, min(_WAIT_POLL_S, until - time.monotonic())))
    still_running = ("still running when --timeout left only the final comparison's time" if bound_by_timeout else
                     f"still running after {longest_s + find_dead_s:.0f} s, the study's longest trial "
                     f"({longest_s:.0f} s) plus the {find_dead_s} s a heartbeat check takes to find a dead process")
    beating = trials_with_heartbeat(storage, study.study_name)
    finished, left_out = _waited_trials(study, sorted(waited), still_running, beating)
    progress.waited_for_trials(finished, left_out, time.monotonic() - started)
    silent_left = {t.number for t in running() if t.number not in beating}
    return _Waited(left_out, {n: seen_s for n, seen_s in silent_s.items() if n in silent_left})


def _fail_silent_trial(study: optuna.Study, storage: optuna.storages.RDBStorage, number: int, silent_s: float) -> None:
    """Fail trial ``number``, seen RUNNING for ``silent_s`` without a heartbeat, as its process's death, and queue it
    again (storage.fail_as_dead), unless one was recorded meanwhile (looked at once more right before: its process
    lives). Its process, if it was only slow in its ask, finds the trial failed at its first write and goes
    on (_one_trial)."""
    [trial] = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if trial.state != optuna.trial.TrialState.RUNNING or number in trials_with_heartbeat(storage, study.study_name):
        return
    records.write_declared_dead(study, number, f"its process died before its first heartbeat (RUNNING for "
                                               f"{silent_s:.0f} s without one, counted over the runs that saw it)")
    fail_as_dead(study, storage, number)


def _waited_trials(study: optuna.Study, waited: list[int], still_running: str,
                   beating: set[int]) -> tuple[tuple[int, ...], tuple[LeftOutTrial, ...]]:
    """Of the trials waited for, those that finished, and the others with what became of them. A worker's trial
    that ended before it started because the search was done (TrialRecord.not_started) is neither: nothing of it
    was measured or lost, its queued point is queued again; nor is a trial with an earlier trial's flags, not run
    again (TrialRecord.not_run): it measured nothing."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    requeued = {retried_trial(t) for t in trials.values() if t.state == optuna.trial.TrialState.WAITING}
    declared_dead = records.read_declared_dead(study)
    finished, left_out = [], []
    for number in waited:
        record = records.read_trial(trials[number])
        if record.not_started or record.not_run:
            continue
        if record.state == optuna.trial.TrialState.COMPLETE:
            finished.append(number)
            continue
        if record.state == optuna.trial.TrialState.RUNNING:
            why = still_running
            if number not in beating:
                why += " (and without a first heartbeat so far)"
        elif record.result is not None and record.result.failure_class == "interrupted":
            why = "interrupted on the process running it"
        elif number in declared_dead:
            why = declared_dead[number]
        else:
            why = "failed without a result (its process stopped sending heartbeats, or an error there)"
        if number in requeued:
            why += ", its flags queued again for the study's next run"
        left_out.append(LeftOutTrial(number, record.baseline, why))
    return tuple(finished), tuple(left_out)


@contextmanager
def _reporting_interrupts(study: optuna.Study, cfg: StudyConfig, progress: Progress) -> Iterator[None]:
    """On a signal: queue again the trials it cut short (Optuna's retry callback, the same one the storage runs
    for a dead worker's trials), and say what the study kept."""
    failed_before = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))}
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
        trials = records.read_trials(study)
        cut = [t for t in trials if t.state == optuna.trial.TrialState.FAIL and t.number not in failed_before
               and t.result is not None and t.result.failure_class == "interrupted"]
        for t in cut:
            retry(study, study.trials[t.number])
        progress.study_interrupted(StudyInterrupted(
            study=cfg.study_name, storage=redact_url(cfg.storage_url), complete_trials=sum(t.complete for t in trials),
            interrupted_trials=tuple(t.number for t in cut),
            levels_kept=sum(len(t.result.levels) for t in cut if t.result is not None)))
        raise


@dataclass
class _Run:
    """This invocation: what it ran on, and what its run record will say."""

    measured_on: tuple[Hardware, Software]
    stopped_by: str = "interrupted"
    # the trials this process finished: in a shared study the trials that workers finish meanwhile are theirs
    trials_run: int = 0
    made_selection: bool = False  # stored the study's selection (RunRecord.made_selection)
    silent_trials_s: dict[int, float] = field(default_factory=dict)  # RunRecord.silent_trials_s
    record: records.RunRecord | None = None


@contextmanager
def _recording_run(study: optuna.Study, cfg: StudyConfig) -> Iterator[_Run]:
    """Store this invocation's :class:`~autotune.records.RunRecord` when it ends, interrupted too: its GPU time
    was spent either way. A storage error while an interrupt unwinds is dropped: the interrupt is the news."""
    s = cfg.settings
    started_at = dt.datetime.now(dt.timezone.utc)
    start = time.monotonic()
    run = _Run(measured_on=environment(s.engine, s.gpu.name, s.gpus))
    unwinding = False
    try:
        yield run
    except BaseException:
        unwinding = True
        raise
    finally:
        hardware, software = run.measured_on
        try:
            run.record = records.RunRecord(
                started_at=started_at.isoformat(timespec="seconds"),
                finished_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                wall_s=time.monotonic() - start, gpus=s.gpus * len(cfg.gpu_slots),  # every GPU it held
                trials_run=run.trials_run,
                stopped_by=run.stopped_by, engine=s.engine,
                gpu_name=hardware.gpu_name, vllm_version=software.vllm, autotune_version=software.autotune,
                made_selection=run.made_selection, silent_trials_s=dict(run.silent_trials_s))
            records.write_run(study, run.record)
        except Exception:  # noqa: BLE001 - see the docstring
            if not unwinding:
                raise


def run_study(cfg: StudyConfig, storage: optuna.storages.BaseStorage,
              progress: Progress = NULL_PROGRESS) -> StudyOutcome:
    threaded = ThreadedProgress(progress, threading.Lock())
    hold_study_run(storage, cfg.study_name)
    study = _prepare(cfg, storage, threaded)
    with _recording_run(study, cfg) as run:
        outcome = _run_opened_study(study, cfg, storage, threaded, run)
    threaded.study_finished(cfg.study_name, outcome.stopped_by, outcome.selection.verdict, outcome.profile_path,
                            run.record.gpu_minutes if run.record else 0.0)
    return outcome


def _run_opened_study(study: optuna.Study, cfg: StudyConfig, storage: optuna.storages.BaseStorage,
                      threaded: ThreadedProgress, run: _Run) -> StudyOutcome:
    _enqueue_baselines(study, cfg)
    records.write_search_done(study, False)
    start = time.monotonic()
    deadline = start + cfg.timeout_s if cfg.timeout_s else None
    rules = _start(study, cfg, threaded, deadline)
    runner = _SlotRunner(cfg.gpu_slots)
    with _storage_loss(cfg), _reporting_interrupts(study, cfg, threaded):
        if rules.would_overrun():  # a resumed study whose earlier trials show the next one cannot fit
            rules.reason = "timeout"
        elif cfg.n_trials > 0:
            alone = holds_alone(cfg.storage_url)
            with _failing_interrupted(study, storage, alone), runner.interruptible():  # Ctrl-C, SIGTERM/SIGHUP
                try:
                    _run_trials(study, cfg, threaded, deadline, rules, runner)
                finally:
                    run.trials_run = rules.ran - rules.not_run
        # the study's end of search and final comparison are this run's alone: a run whose hold another took stops
        # here, before it tells that run's workers the search is done and waits for that run's trials
        hold_study_run(storage, cfg.study_name, again=True)
        records.write_search_done(study, True)  # workers take no new trial from here on
        stopped_by = rules.reason or ("timeout" if deadline and time.monotonic() >= deadline else "trials")
        waited = _wait_for_others_trials(study, storage, cfg, deadline, threaded)
        left_out, run.silent_trials_s = waited.left_out, dict(waited.silent_trials_s)
        searched = records.read_trials(study)  # every trial the search ended with
        finished, not_run = records.count_finished(searched), records.not_run(searched)
        with runner.interruptible():
            selection = remeasure_and_select(study, cfg, deadline, threaded, runner, left_out)
        run.made_selection = True
    run.stopped_by = stopped_by
    profile = profile_path = None
    if selection.winner is not None:
        winner = records.read_trial(study.trials[selection.winner.trial_number])
        stored = records.read_selection(study)  # as remeasure_and_select wrote it, and best reads it
        assert stored is not None
        profile = build_profile(cfg, selection, stored, winner, finished, run.measured_on, not_run)
        profile_path = write_profile(profile, cfg.out_dir / cfg.study_name / "profile.yaml")
    return StudyOutcome(cfg.study_name, finished, run.trials_run, selection, profile, profile_path, stopped_by,
                        baselines=baseline_summary(selection, cfg, records.read_trials(study)),
                        finalists=finalist_summary(selection, cfg), left_out=left_out,
                        not_run=tuple((t.number, int(t.same_flags_as)) for t in not_run))  # type: ignore[arg-type]


@dataclass(frozen=True)
class WorkerOutcome:
    study_name: str
    n_trials_run: int  # trials this worker finished, not those it did not run
    stopped_by: str  # trials (its --trials), search done (the study's run moved on), stagnation, timeout
    n_trials_not_run: int = 0  # sampled trials it did not run: the flags of an earlier finished trial


def run_worker(cfg: StudyConfig, storage: optuna.storages.BaseStorage,
               progress: Progress = NULL_PROGRESS) -> WorkerOutcome:
    """Join a study that an `autotune run` created and run its trials beside it, coordinating only through the
    storage: Optuna hands each trial to one process, its heartbeat lets the others fail and re-queue the trials
    of a worker that died. A worker neither queues the baselines nor makes the final comparison (the run does),
    and takes no new trial once the run has moved on to it."""
    threaded = ThreadedProgress(progress, threading.Lock())
    study = _prepare(cfg, storage, threaded, worker=True)
    with _recording_run(study, cfg) as run:  # a worker's GPU time is the study's too
        start = time.monotonic()
        deadline = start + cfg.timeout_s if cfg.timeout_s else None
        rules = _start(study, cfg, threaded, deadline, worker=True)
        runner = _SlotRunner(cfg.gpu_slots)
        with _storage_loss(cfg), _reporting_interrupts(study, cfg, threaded), \
            _failing_interrupted(study, storage, holds_alone(cfg.storage_url)), \
                runner.interruptible():
            try:
                _run_trials(study, cfg, threaded, deadline, rules, runner, until_search_done=True)
            finally:
                run.trials_run = rules.ran - rules.not_run
        stopped_by = run.stopped_by = rules.reason or ("search done" if records.read_search_done(study) else "trials")
    threaded.study_finished(cfg.study_name, stopped_by, "", None, run.record.gpu_minutes if run.record else 0.0)
    return WorkerOutcome(cfg.study_name, rules.ran - rules.not_run, stopped_by, rules.not_run)


def candidates_from_study(trials: list[TrialRecord], top_k: int, restart_s: float = 0.0) -> list[Candidate]:
    """The ``top_k`` best feasible trials with distinct flags, and the latest finished trial of each baseline.
    ``restart_s``: a re-measurement's server start and stop as seen so far (0: none seen yet)."""
    complete = [t for t in trials if t.complete]
    feasible = sorted((t for t in complete if t.feasible), key=lambda t: -t.value)
    chosen: list[TrialRecord] = []
    seen: set[str] = set()
    for t in feasible:
        key = records.flags_key(t.result.flags)  # type: ignore[union-attr]
        if key not in seen and len(chosen) < top_k:
            chosen.append(t)
            seen.add(key)
    for name in BASELINES:
        of_baseline = [t for t in complete if t.baseline == name]
        if of_baseline and of_baseline[-1] not in chosen:
            chosen.append(of_baseline[-1])
    if not chosen and feasible:  # --top-k 0 and no baseline finished
        chosen = feasible[:1]
    return [_candidate(t, restart_s) for t in chosen]


def _candidate(t: TrialRecord, restart_s: float = 0.0) -> Candidate:
    r = t.result
    assert r is not None
    c = Candidate(trial_number=t.number, flags=dict(r.flags), concurrency=r.concurrency,
                  search_output_tok_s=r.output_tok_s, search_p99_ms=r.p99_ms, baseline=t.baseline,
                  vllm_serve_cmd=r.vllm_serve_cmd)
    if not r.feasible:
        c.concurrency = None  # SLO-meeting throughput is 0: nothing to re-measure
        c.met_no_limit = r.failure_class == "no_feasible_load"
        return c
    c.remeasure_s = remeasure_s(r, int(r.concurrency), restart_s)  # type: ignore[arg-type]
    c.search_level = (int(r.concurrency), r.output_tok_s, dict(r.p99_ms))  # type: ignore[arg-type]
    c.lower_levels = sorted(((lv.concurrency, lv.output_tok_s, lv.p99_ms) for lv in r.levels
                             if lv.feasible and lv.concurrency < int(r.concurrency)),  # type: ignore[arg-type]
                            key=lambda level: level[0], reverse=True)
    c.curve = LoadCurve.from_levels([(lv.concurrency, lv.output_tok_s, lv.p99_ms) for lv in r.levels],
                                  [lv.runs for lv in r.levels])
    return c


def remeasure_s(result: TrialResult, concurrency: int, restart_s: float = 0.0) -> float:
    """Expected wall seconds of re-measuring a trial at ``concurrency``: a server start and stop (``restart_s``,
    the slowest seen in the study's re-measurements; before any, the trial's own), plus the level's time
    estimated from the trial's own levels. A restart of flags already served hits vLLM's compile cache: on an
    H200 it took 55-78 s where the trial's first start took 148 s."""
    walls = [(lv.concurrency, lv.wall_s) for lv in result.levels if lv.wall_s > 0]
    return (restart_s or result.engine_wall_s) + (estimate_level_s(concurrency, walls) if walls else 0.0)


def observed_restart_s(study: optuna.Study) -> float:
    """The slowest server start and stop among the study's re-measurements so far (0: none recorded)."""
    return max((m.restart_s for stored in records.read_remeasurements(study)
                for m in (*stored.repeats, *(m for _, m in stored.earlier))), default=0.0)


def remeasure_reserve_s(study: optuna.Study, cfg: StudyConfig) -> float:
    """Wall seconds the re-measurement stage still needs for the current candidates, plus one more candidate
    while the top-k is not full (the next trial may join it). The study's --timeout covers this stage too."""
    if cfg.repeats <= 0:
        return 0.0
    trials = records.read_trials(study)
    candidates = [c for c in candidates_from_study(trials, cfg.top_k, observed_restart_s(study))
                  if c.concurrency is not None]
    pending = []
    for c in candidates:
        stored = records.read_remeasurement(study, c.trial_number)
        pending.append(max(0, cfg.repeats - (len(stored.repeats) if stored else 0)) * c.remeasure_s)
    if candidates and sum(1 for c in candidates if not c.baseline) < cfg.top_k:
        pending.append(cfg.repeats * max(c.remeasure_s for c in candidates))
    return sum(pending)


def remeasure_and_select(study: optuna.Study, cfg: StudyConfig, deadline: float | None,
                         progress: Progress = NULL_PROGRESS, runner: _SlotRunner | None = None,
                         left_out: tuple[LeftOutTrial, ...] = ()) -> Selection:
    """Re-measure each candidate ``repeats`` times on a fresh server at its chosen load, the candidates side by side
    on the GPU slots (one candidate's repeats follow each other: a step-down depends on the last one).
    Re-measurements are stored on the study, so a resumed study does not pay for them twice. ``left_out``: trials
    of other processes the comparison goes without (:func:`_wait_for_others_trials`), named in the verdict."""
    runner = runner or _SlotRunner(cfg.gpu_slots)
    candidates = stored_finalists(study, cfg.top_k)
    limits_ms = cfg.settings.search.limits_ms
    for cand in candidates:
        if cand.concurrency is None or cfg.repeats <= 0 or len(cand.repeats) >= cfg.repeats:
            continue
        slot = runner.take_slot()
        if slot is None:
            break
        runner.start(lambda s, c=cand: _remeasure(study, cfg, c, s, deadline, progress, runner.cancel), slot)
    runner.join()
    spare_rounds(study, cfg, candidates, deadline, progress, runner)
    selection = select_winner(candidates, limits_ms, cfg.repeats, cfg.noise_floor, cfg.confidence,
                              finished_trials=records.count_finished(records.read_trials(study)), left_out=left_out)
    records.write_selection(study, selection_record(selection, limits_ms, cfg.noise_floor, cfg.confidence,
                                                    cfg.settings.search.p99_run_cv))
    return selection


def stored_finalists(study: optuna.Study, top_k: int) -> list[Candidate]:
    """The study's finalists as its records hold them: the top trials and the baselines, each with the
    re-measurements already stored (what the final comparison starts from, and what a recorded study is judged
    by)."""
    candidates = candidates_from_study(records.read_trials(study), top_k, observed_restart_s(study))
    return [_with_stored_remeasurements(study, c) for c in candidates]


def _with_stored_remeasurements(study: optuna.Study, cand: Candidate) -> Candidate:
    """``cand`` with the re-measurements the study already holds (a baseline's, made after its trial, or a resumed
    study's), its step-downs replayed along the path they took."""
    stored = records.read_remeasurement(study, cand.trial_number)
    if stored is not None:
        for concurrency in (*stored.stepped_down_from[1:], stored.concurrency) if stored.stepped_down_from else ():
            cand.move_to(concurrency)
        cand.repeats = list(stored.repeats)
        cand.earlier_runs = list(stored.earlier)
    return cand


def spare_rounds(study: optuna.Study, cfg: StudyConfig, candidates: list[Candidate], deadline: float | None,
                 progress: Progress, runner: _SlotRunner) -> None:
    """Spend the time a deadline leaves after the planned comparison on more fresh-server runs: while a whole round
    fits, one more for every finalist that is compared (measured as the others and within the limits), up to
    ``max_repeats`` each. A finalist's throughput at the limit moves about 4.8% from one fresh server to the next
    on an H200, so two runs a finalist resolve only gains of about 15% (docs/results/h200-reproducibility.md); the
    time left after the last trial that fitted is otherwise idle. Every compared finalist gets the round, whatever
    the figures so far say: adding runs only where a comparison looks undecided, and stopping once it looks
    decided, would bias the verdict toward the claims it happened to see early."""
    if deadline is None or cfg.repeats <= 0:
        return
    limits_ms = cfg.settings.search.limits_ms
    while not runner.cancel.is_set():
        round_ = [c for c in candidates if c.concurrency is not None and c.confirmed(cfg.repeats)
                  and c.meets(limits_ms) and len(c.repeats) < cfg.max_repeats]
        compared = [c for c in candidates if c.confirmed(cfg.repeats) and c.meets(limits_ms)]
        if not round_ or len(compared) < 2:
            return
        # priced as the slowest of the finalist's expected and measured re-measurements so far
        seconds = [max([c.remeasure_s, *(m.wall_s for m in c.repeats)]) for c in round_]
        if time.monotonic() + max(max(seconds), sum(seconds) / len(cfg.gpu_slots)) > deadline:
            return
        progress.spare_round(len(round_), len(round_[0].repeats) + 1)
        for cand in round_:
            slot = runner.take_slot()
            if slot is None:
                break
            runner.start(lambda s, c=cand: _remeasure(study, cfg, c, s, deadline, progress, runner.cancel,
                                                      runs_at_load=len(c.repeats) + 1), slot)
        runner.join()


def _remeasure(study: optuna.Study, cfg: StudyConfig, cand: Candidate, slot: tuple[GpuId, ...],
               deadline: float | None, progress: Progress, cancel: threading.Event,
               runs_at_load: int | None = None) -> None:
    """Fresh-server re-measurements of ``cand`` until it has ``runs_at_load`` (default: ``repeats``) at its load;
    after a step-down, ``repeats`` at the new load, as for every finalist."""
    limits_ms = cfg.settings.search.limits_ms
    settings = replace(cfg.settings, gpu_ids=slot)
    wanted, load = runs_at_load or cfg.repeats, cand.concurrency
    while cand.concurrency is not None and not cancel.is_set():
        if cand.concurrency != load:
            wanted, load = cfg.repeats, cand.concurrency
        if len(cand.repeats) >= wanted:
            break
        if deadline is not None and time.monotonic() + cand.remeasure_s > deadline:
            progress.remeasure_skipped(cand.trial_number, len(cand.repeats) + 1, wanted, cand.remeasure_s)
            break
        i = len(cand.repeats)
        progress.remeasure_started(cand.trial_number, i + 1, wanted, cand.concurrency, cand.baseline)
        # one folder per server: a step-down re-measures at a new level with the repeat count back at 0
        log_path = remeasure_folder(cfg.out_dir / cfg.study_name, cand.trial_number, cand.concurrency, i) / "server.log"
        name = f"autotune-{cfg.study_name}-{cand.trial_number}-r{i}"
        started = time.monotonic()
        try:
            r = measure_once(settings, cand.flags, cand.concurrency, name, log_path)
            m = Measurement(r.output_tok_s, {metric: r.p99_ms(metric) for metric in limits_ms},
                            json_safe(r.to_json()), wall_s=time.monotonic() - started)
        except EngineStartError as e:
            m = Measurement(math.nan, {metric: math.nan for metric in limits_ms},
                            failure_class=e.failure_class, failure_reason=str(e))
        if cancel.is_set():
            return  # measured against a server stopped under it: not a measurement
        cand.repeats.append(m)
        progress.remeasured(cand.trial_number, m, limits_ms)
        # marginal knee: over any limit steps down (see Candidate.step_down)
        if m.over_limits(limits_ms) and cand.step_down():
            progress.remeasure_stepped_down(cand.trial_number, cand.stepped_down_from[-1], cand.concurrency)
        records.write_remeasurement(study, cand.remeasurement())


def selection_record(selection: Selection, limits_ms: Mapping[str, float], noise_floor: float,
                     confidence: float, p99_run_cv: Mapping[str, float]) -> records.SelectionRecord:
    """What the study stores of the verdict, the winner's figures included (export and compare read them), and
    its serve load (selection.serve_load: its P99s' run-to-run spread ``p99_run_cv``)."""
    winner = selection.winner
    figures: dict[str, Any] = {}
    if winner is not None:
        def record(stats: dict[str, float]) -> records.ThroughputRecord:
            return records.ThroughputRecord(stats["mean"], stats["std"], stats["min"], stats["max"], int(stats["n"]),
                                            stats["half_width"], confidence)

        at_limit = [v for v in winner.at_limit_tok_s(limits_ms) if math.isfinite(v)]
        figures = {"winner_concurrency": winner.concurrency,
                   "winner_output_tok_s": record(winner.stats(noise_floor, confidence)),
                   "winner_at_limit_tok_s": record(tok_s_stats(at_limit, noise_floor, confidence)),
                   "winner_p99_ms": {metric: winner.p99_mean_ms(metric) for metric in limits_ms},
                   "winner_serve": serve_load(winner, limits_ms, p99_run_cv, confidence)}
    return records.SelectionRecord(winner.trial_number if winner else None, selection.verdict, selection.gains,
                                   tuple(selection.equal_within_noise), tuple(selection.unconfirmed), **figures)


def _candidate_summary(cand: Candidate, cfg: StudyConfig) -> dict[str, Any]:
    """A finalist as the comparison saw it: its load, its throughput there and at the limit (each run carried to
    its own knee along its trial's curve, what the verdict compares), and how many runs those rest on."""
    limits_ms = cfg.settings.search.limits_ms
    return json_safe({"trial": cand.trial_number, "flags": cand.flags, "meets_limit": cand.meets(limits_ms),
                      "concurrency": cand.concurrency, "output_tok_s": cand.stats(cfg.noise_floor, cfg.confidence),
                      "output_tok_s_at_limit": cand.at_limit_mean_tok_s(limits_ms),
                      "runs_at_limit": sum(math.isfinite(v) for v in cand.at_limit_tok_s(limits_ms))})


def baseline_summary(selection: Selection, cfg: StudyConfig,
                     trials: list[TrialRecord]) -> dict[str, dict[str, Any]]:
    """Each baseline as the comparison saw it, with its gain, and why it measured nothing where its server failed
    (``failure_class``: a baseline that did not start did not miss a limit; ``remeasurement_failure``: the failure
    class of its fresh servers when every one of them failed, which is no gain either)."""
    results = {t.number: t.result for t in trials if t.result is not None}
    out: dict[str, dict[str, Any]] = {}
    for cand in selection.candidates:
        if cand.baseline:
            gain = selection.gains.get(cand.baseline)
            result = results.get(cand.trial_number)
            out[cand.baseline] = {**_candidate_summary(cand, cfg), **({"gain": gain.to_json()} if gain else {}),
                                  "failure_class": result.measurement_failure if result is not None else "",
                                  "remeasurement_failure": (cand.repeats[-1].failure_class or "failed")
                                  if cand.remeasurements_failed else ""}
    return out


def finalist_summary(selection: Selection, cfg: StudyConfig) -> list[dict[str, Any]]:
    """The finalists that are neither a baseline nor the winner, each with where the verdict put it: unconfirmed
    (not measured as the others), its re-measurements failed, no claim (no finalist measured twice), equal within
    noise to the best measured, beaten beyond noise by it, or missing a limit."""
    out = []
    best = selection.best_measured
    for cand in selection.candidates:
        if cand.baseline or cand.concurrency is None or cand is selection.winner:
            continue
        standing = ("unconfirmed" if cand.trial_number in selection.unconfirmed else
                    "its fresh-server re-measurements failed" if cand.remeasurements_failed else
                    ("equal within noise" if selection.spread_measured else "no claim: no finalist was measured twice")
                    if cand.trial_number in selection.equal_within_noise else
                    "misses a limit" if best is None or not cand.meets(cfg.settings.search.limits_ms) else
                    f"beaten beyond noise by trial {best}")
        out.append({**_candidate_summary(cand, cfg), "standing": standing})
    return out
