"""What the core reports while it works: one method per event. The core never prints; it calls these.

:class:`Progress` does nothing: it is what the core gets when nobody listens (tests, ``--json``), and the
base a UI overrides (the rich console in :mod:`autotune.cli.ui`). Every event the core emits is a method
here, with typed arguments, so that the reader and the type checker see each one.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotune.gpu_ids import GpuId

if TYPE_CHECKING:
    from autotune.records import LevelRecord, Measurement, SearchLeft, TrialResult
    from autotune.selection import LeftOutTrial

__all__ = ["Progress", "StudyStart", "StudyEta", "StudyInterrupted", "BenchProgress", "CalibrationStep",
           "NULL_PROGRESS", "ThreadedProgress"]


@dataclass(frozen=True)
class StudyStart:
    study: str
    engine: str
    limits_ms: Mapping[str, float]  # P99 limit by metric, in the order given
    gpus: int  # held by every trial: a trial's GPU-minutes are its wall minutes times this
    n_trials: int  # trials this invocation may run
    timeout_s: float | None
    existing_trials: int  # finished trials of earlier runs of a resumed study
    gpu_slots: tuple[tuple[GpuId, ...], ...] = ()  # the GPUs of each trial that may run at once
    idle_gpus: tuple[GpuId, ...] = ()  # the run's GPUs that no trial gets
    served: bool = False  # each trial's engine is a server (vLLM, or the sim over HTTP): minutes per trial
    # what the figures may get wrong: on the sim engine, its known errors under these limits on this card; on a
    # served engine, a host whose CPUs other processes are using
    caveats: tuple[str, ...] = ()
    baseline_layout: str = ""  # why the baselines do not run TP over every GPU; "" where they do
    # a worker's start (``n_trials``: its own --trials): its trials end with its run's search, of which the run
    # recorded this (None: nothing recorded, an older autotune)
    worker: bool = False
    run_search: SearchLeft | None = None


@dataclass(frozen=True)
class StudyEta:
    """After each trial: how much of the study is left, as the stop rules see it."""

    trials_left: int  # at most: the --trials budget and the stagnation stop, whichever is nearer
    trial_s: float  # the expected wall seconds of one more trial (the longest so far)
    remeasure_s: float  # the re-measurements still to make: the fair final comparison (none for a worker)
    # a run's: trials_left x trial_s + remeasure_s, within --timeout. A worker's: until its run's search ends (as the
    # run recorded it: run_search), or its own trials_left or --timeout, if sooner; None where that is not known
    eta_s: float | None
    time_left_s: float | None  # until --timeout (None: no timeout); no trial starts that would leave too little
    worker: bool = False  # a worker's estimate
    run_search: SearchLeft | None = None  # a worker's: what its run has left of its search (None: not recorded)
    worker_stops_first: bool = False  # a worker's: its own trials_left end before its run's search does


@dataclass(frozen=True)
class StudyInterrupted:
    """A signal (Ctrl-C, SIGTERM, SIGHUP) stopped the study: what it kept."""

    study: str
    storage: str  # without its password
    complete_trials: int  # finished trials in the study, earlier runs' included: all kept
    interrupted_trials: tuple[int, ...]  # cut short: failed, their flags queued again, their measured levels kept
    levels_kept: int  # load levels the interrupted trials had measured, recorded with them


@dataclass(frozen=True)
class BenchProgress:
    done: int  # requests finished, warm-up included
    total: int
    warmup: int
    failed: int


@dataclass(frozen=True)
class CalibrationStep:
    """One evaluation of `autotune sim calibrate`'s fit: the constants tried and how far the sim then is."""

    evaluation: int  # 1-based
    max_evaluations: int
    constants: Mapping[str, float]
    loss: float  # mean over the measured runs of 4 x log(throughput ratio)^2 + log(P99 TPOT ratio)^2
    best_loss: float  # the lowest so far


class Progress:
    """Receives the core's progress. Every method is a no-op here; override the ones a UI shows."""

    def study_started(self, start: StudyStart) -> None:
        """A study begins (or resumes)."""

    def trial_started(self, number: int, flags: Mapping[str, Any], baseline: str) -> None:
        """A trial begins: ``baseline`` names a baseline, else empty."""

    # The events of one trial's engine and load search carry ``trial``, its number, when a study runs it (several
    # trials may run at once); None outside a study.
    def engine_starting(self, engine: str, port: int | None, command: str, log_path: Path,
                        gpu_ids: tuple[GpuId, ...] = (), trial: int | None = None) -> None:
        """A server is being launched (again, on another port, when its first port was taken) on ``gpu_ids``;
        ``port`` None: the sim engine in-process."""

    def engine_ready(self, startup: Mapping[str, Any], trial: int | None = None) -> None:
        """The server answers; ``startup`` holds the figures read from its log (StartupInfo's fields, ready_s
        included)."""

    def engine_stopped(self, port: int, gpu_ids: tuple[GpuId, ...], problems: tuple[str, ...],
                       trial: int | None = None) -> None:
        """A server's process group is gone and its port and GPU memory are free (``problems``: what could not be
        confirmed); only then do its GPUs go to another trial."""

    def leftover_stopped(self, served_model_name: str, port: int, gpu_ids: tuple[GpuId, ...]) -> None:
        """A server that a dead run left behind was found in the study's ledger and stopped."""

    def dead_run_trials_failed(self, numbers: tuple[int, ...]) -> None:
        """Trials a dead run left RUNNING were failed and queued again."""

    def trial_failed_elsewhere(self, number: int, why: str) -> None:
        """Another process failed trial ``number`` under this one, which ran it: a run took it for dead (``why``,
        as that run stored it) or its heartbeats came too late (``why`` empty). Not recorded here; this process
        goes on."""

    def kept_trials_added(self, numbers: tuple[int, ...], folder: Path) -> None:
        """Finished trials that a run kept in ``folder`` before it died or lost its database (:mod:`autotune.journal`)
        were added to the study as they were measured, not measured again."""

    def load_level(self, level: LevelRecord, limits_ms: Mapping[str, float], trial: int | None = None) -> None:
        """The load search measured one level."""

    def trial_finished(self, number: int, baseline: str, result: TrialResult) -> None:
        """A trial ended, feasible or not; ``result`` is what the study stores."""

    def trial_not_run(self, number: int, same_flags_as: int, earlier: TrialResult) -> None:
        """The sampler proposed, as trial ``number``, the launch flags of finished trial ``same_flags_as``, whose
        result is ``earlier``: the trial is not run again; Optuna is told that trial's value and constraints."""

    def trial_result_taken(self, number: int, baseline: str, measured_as: int, result: TrialResult) -> None:
        """Trial ``number``, the copy queued of a failed trial whose result trial ``measured_as`` had measured before
        its process died, takes that ``result``: it is not measured again."""

    def study_eta(self, eta: StudyEta) -> None:
        """After each trial's stop rules: what is left."""

    def remeasure_started(self, trial: int, repeat: int, of: int, concurrency: int, baseline: str) -> None:
        """A candidate is re-measured on a fresh server."""

    def remeasured(self, trial: int, measurement: Measurement, limits_ms: Mapping[str, float]) -> None:
        """One re-measurement is done."""

    def remeasure_skipped(self, trial: int, repeat: int, of: int, expected_s: float) -> None:
        """A re-measurement would run past --timeout."""

    def remeasure_stepped_down(self, trial: int, from_concurrency: int, concurrency: int) -> None:
        """A re-measurement broke a limit: the candidate moves to a lower load."""

    def spare_round(self, finalists: int, repeat: int) -> None:
        """Time left before --timeout buys one more fresh-server run of each of ``finalists`` compared finalists
        (the ``repeat``-th re-measurement of most)."""

    def waiting_for_trials(self, numbers: tuple[int, ...], at_most_s: float) -> None:
        """The search is done, and other processes (workers) are still running trials ``numbers``: the final
        comparison waits for them, ``at_most_s`` seconds at most."""

    def waited_for_trials(self, finished: tuple[int, ...], left_out: tuple[LeftOutTrial, ...], waited_s: float) -> None:
        """The wait for other processes' trials is over: ``finished`` are in the final comparison, ``left_out`` are
        not."""

    def study_finished(self, study: str, stopped_by: str, verdict: str, profile_path: Path | None,
                       gpu_minutes: float) -> None:
        """The study ended; ``verdict`` is the selection's sentence; ``gpu_minutes``: this invocation's wall
        time times the GPUs it held."""

    def study_interrupted(self, interrupted: StudyInterrupted) -> None:
        """A signal stopped the study; every server is down and what was measured is recorded."""

    def bench_progress(self, progress: BenchProgress) -> None:
        """A benchmark run's requests so far (about ten times a second)."""

    def calibration_step(self, step: CalibrationStep) -> None:
        """`autotune sim calibrate` replayed the measured runs with one set of constants."""


NULL_PROGRESS = Progress()


class ThreadedProgress(Progress):
    """What a study hands each thread it runs trials or re-measurements on: every event reaches ``inner`` under
    one lock (a UI need not be thread-safe), and a trial's engine and load-search events carry its number."""

    def __init__(self, inner: Progress, lock: threading.Lock, trial: int | None = None) -> None:
        self.inner, self.lock, self.trial = inner, lock, trial

    def for_trial(self, trial: int) -> ThreadedProgress:
        return ThreadedProgress(self.inner, self.lock, trial)

    def study_started(self, start: StudyStart) -> None:
        with self.lock:
            self.inner.study_started(start)

    def trial_started(self, number: int, flags: Mapping[str, Any], baseline: str) -> None:
        with self.lock:
            self.inner.trial_started(number, flags, baseline)

    def engine_starting(self, engine: str, port: int | None, command: str, log_path: Path,
                        gpu_ids: tuple[GpuId, ...] = (), trial: int | None = None) -> None:
        with self.lock:
            self.inner.engine_starting(engine, port, command, log_path, gpu_ids, trial=self.trial)

    def engine_ready(self, startup: Mapping[str, Any], trial: int | None = None) -> None:
        with self.lock:
            self.inner.engine_ready(startup, trial=self.trial)

    def engine_stopped(self, port: int, gpu_ids: tuple[GpuId, ...], problems: tuple[str, ...],
                       trial: int | None = None) -> None:
        with self.lock:
            self.inner.engine_stopped(port, gpu_ids, problems, trial=self.trial)

    def leftover_stopped(self, served_model_name: str, port: int, gpu_ids: tuple[GpuId, ...]) -> None:
        with self.lock:
            self.inner.leftover_stopped(served_model_name, port, gpu_ids)

    def dead_run_trials_failed(self, numbers: tuple[int, ...]) -> None:
        with self.lock:
            self.inner.dead_run_trials_failed(numbers)

    def trial_failed_elsewhere(self, number: int, why: str) -> None:
        with self.lock:
            self.inner.trial_failed_elsewhere(number, why)

    def kept_trials_added(self, numbers: tuple[int, ...], folder: Path) -> None:
        with self.lock:
            self.inner.kept_trials_added(numbers, folder)

    def load_level(self, level: LevelRecord, limits_ms: Mapping[str, float], trial: int | None = None) -> None:
        with self.lock:
            self.inner.load_level(level, limits_ms, trial=self.trial)

    def trial_finished(self, number: int, baseline: str, result: TrialResult) -> None:
        with self.lock:
            self.inner.trial_finished(number, baseline, result)

    def trial_not_run(self, number: int, same_flags_as: int, earlier: TrialResult) -> None:
        with self.lock:
            self.inner.trial_not_run(number, same_flags_as, earlier)

    def trial_result_taken(self, number: int, baseline: str, measured_as: int, result: TrialResult) -> None:
        with self.lock:
            self.inner.trial_result_taken(number, baseline, measured_as, result)

    def study_eta(self, eta: StudyEta) -> None:
        with self.lock:
            self.inner.study_eta(eta)

    def remeasure_started(self, trial: int, repeat: int, of: int, concurrency: int, baseline: str) -> None:
        with self.lock:
            self.inner.remeasure_started(trial, repeat, of, concurrency, baseline)

    def remeasured(self, trial: int, measurement: Measurement, limits_ms: Mapping[str, float]) -> None:
        with self.lock:
            self.inner.remeasured(trial, measurement, limits_ms)

    def remeasure_skipped(self, trial: int, repeat: int, of: int, expected_s: float) -> None:
        with self.lock:
            self.inner.remeasure_skipped(trial, repeat, of, expected_s)

    def remeasure_stepped_down(self, trial: int, from_concurrency: int, concurrency: int) -> None:
        with self.lock:
            self.inner.remeasure_stepped_down(trial, from_concurrency, concurrency)

    def spare_round(self, finalists: int, repeat: int) -> None:
        with self.lock:
            self.inner.spare_round(finalists, repeat)

    def waiting_for_trials(self, numbers: tuple[int, ...], at_most_s: float) -> None:
        with self.lock:
            self.inner.waiting_for_trials(numbers, at_most_s)

    def waited_for_trials(self, finished: tuple[int, ...], left_out: tuple[LeftOutTrial, ...], waited_s: float) -> None:
        with self.lock:
            self.inner.waited_for_trials(finished, left_out, waited_s)

    def study_finished(self, study: str, stopped_by: str, verdict: str, profile_path: Path | None,
                       gpu_minutes: float) -> None:
        with self.lock:
            self.inner.study_finished(study, stopped_by, verdict, profile_path, gpu_minutes)

    def study_interrupted(self, interrupted: StudyInterrupted) -> None:
        with self.lock:
            self.inner.study_interrupted(interrupted)

    def bench_progress(self, progress: BenchProgress) -> None:
        with self.lock:
            self.inner.bench_progress(progress)
