"""What the core reports while it works: one method per event. The core never prints; it calls these.

:class:`Progress` does nothing: it is what the core gets when nobody listens (tests, ``--json``), and the
base a UI overrides (the rich console in :mod:`autotune.cli.ui`). Every event the core emits is a method
here, with typed arguments, so that the reader and the type checker see each one.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autotune.records import LevelRecord, Measurement, TrialResult

__all__ = ["Progress", "StudyStart", "StudyEta", "BenchProgress", "NULL_PROGRESS"]


@dataclass(frozen=True)
class StudyStart:
    study: str
    engine: str
    limits_ms: Mapping[str, float]  # P99 limit by metric, in the order given
    gpus: int  # held by every trial: a trial's GPU-minutes are its wall minutes times this
    n_trials: int  # trials this invocation may run
    timeout_s: float | None
    existing_trials: int  # finished trials of earlier runs of a resumed study


@dataclass(frozen=True)
class StudyEta:
    """After each trial: how much of the study is left, as the stop rules see it."""

    trials_left: int  # at most: the --trials budget and the stagnation stop, whichever is nearer
    trial_s: float  # the expected wall seconds of one more trial (the longest so far)
    remeasure_s: float  # the re-measurements still to make: the fair final comparison
    eta_s: float  # trials_left x trial_s + remeasure_s, within --timeout
    time_left_s: float | None  # until --timeout (None: no timeout); no trial starts that would leave too little


@dataclass(frozen=True)
class BenchProgress:
    done: int  # requests finished, warm-up included
    total: int
    warmup: int
    failed: int


class Progress:
    """Receives the core's progress. Every method is a no-op here; override the ones a UI shows."""

    def study_started(self, start: StudyStart) -> None:
        """A study begins (or resumes)."""

    def trial_started(self, number: int, flags: Mapping[str, Any], baseline: str) -> None:
        """A trial begins: ``baseline`` names a baseline, else empty."""

    def engine_starting(self, engine: str, port: int | None, command: str, log_path: Path) -> None:
        """A server is being launched (again, on another port, when its first port was taken); ``port`` None:
        the sim engine in-process."""

    def engine_ready(self, startup: Mapping[str, Any]) -> None:
        """The server answers; ``startup`` holds the figures read from its log (StartupInfo's fields, ready_s
        included)."""

    def load_level(self, level: LevelRecord, limits_ms: Mapping[str, float]) -> None:
        """The load search measured one level."""

    def trial_finished(self, number: int, baseline: str, result: TrialResult) -> None:
        """A trial ended, feasible or not; ``result`` is what the study stores."""

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

    def study_finished(self, study: str, stopped_by: str, verdict: str, profile_path: Path | None,
                       gpu_minutes: float) -> None:
        """The study ended; ``verdict`` is the selection's sentence; ``gpu_minutes``: this invocation's wall
        time times the GPUs it held."""

    def bench_progress(self, progress: BenchProgress) -> None:
        """A benchmark run's requests so far (about ten times a second)."""


NULL_PROGRESS = Progress()
