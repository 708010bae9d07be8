"""Typed records of a study, and the only code that reads or writes them in Optuna's storage.

A study stores, as Optuna user attributes:
- on the study: its :class:`StudyFingerprint` (what its figures were measured on; a resumed study must match),
  the options it was run with (``autotune worker`` builds the same trials from them; no storage URL among them),
  whether its run has finished searching (workers then take no new trial) and what it has left of its search
  (:class:`SearchLeft`: a worker's estimate rests on it), the seconds between its run's trial
  heartbeats (a worker must beat as often: each process fails the others' trials by its own), why a run failed
  another process's trial as dead before its first heartbeat (key ``dead.<trial>``: on the study, so that the copy
  of the trial queued again does not carry it),
  one :class:`Remeasurement` per re-measured candidate (key ``remeasure.<trial>``, one key each so that
  several processes never rewrite each other's), the :class:`SelectionRecord`, and one :class:`RunRecord` per
  invocation of ``autotune run`` (key ``run.<id>``: its GPU-minutes and the hardware and software it ran on);
- on each trial: the queue tag set when it was enqueued (a baseline's name, or a ``--try`` point), why it ended
  before it started where it did (the search was done), and once it ran, its :class:`TrialResult` (flags, every
  load level as a :class:`LevelRecord`, startup figures, failure); a sampled trial whose launch flags an earlier
  finished trial had holds that trial's number instead (:attr:`TrialRecord.same_flags_as`): it was not run again.
  The note why it ended before it started names the trial it was written on: Optuna's retry callback copies a
  trial's attributes to the copy it queues, which must not inherit it. A result measured as another trial, whose
  process died before Optuna was told, names that trial (:attr:`TrialRecord.measured_as`).

Everything is JSON in storage; NaN and infinity are stored as null and read back as NaN. Every reader of a
study (the study itself, the profile, ``best``, ``studies``, ``export``, ``compare``, the dashboard) goes through
:func:`read_trials` and friends.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import optuna

from autotune.errors import UsageError
from autotune.jsonsafe import json_safe
from autotune.storage import retried_trial

__all__ = [
    "RECORDS_VERSION", "STOPPED_AT_MAX_CONCURRENCY", "P99Record", "HostCpuRecord", "LevelRecord", "TrialResult",
    "TrialRecord", "Measurement", "Remeasurement",
    "GainRecord", "ThroughputRecord", "ServeLoadRecord", "SelectionRecord", "StudyFingerprint", "RunRecord",
    "SearchLeft", "queue_attrs",
    "queued_baseline", "queued_try", "queued_try_unkept", "write_trial_result", "trial_result_attrs",
    "finished_trial_attrs", "replayed_attrs", "take_result", "read_trial", "read_trials", "count_finished",
    "read_remeasurement", "write_remeasurement", "read_selection", "write_selection",
    "read_fingerprint", "check_fingerprint", "write_search_done", "read_search_done", "write_run_options",
    "read_run_options", "write_run", "read_runs", "read_remeasurements", "remeasurements_in", "selection_in",
    "runs_in", "fingerprint_in", "MEMORY_PLAN_REFUSED", "flags_key",
    "sampled", "known_trial_with_flags", "write_same_flags", "not_run", "not_run_text", "describe_not_run",
    "write_not_started", "requeue_user_attrs", "write_declared_dead",
    "read_declared_dead", "write_heartbeat_s", "read_heartbeat_s", "write_constraints", "write_search_left",
    "read_search_left",
]

# Stored with the fingerprint. A study written by another version of these records is refused on resume
# instead of being read through shims. 3: several P99 limits at once (one P99 interval and fit per limit).
# 4: the winner's figures in the selection, one run record per invocation, the model's weight dtype.
RECORDS_VERSION = 4
# a trial's load search stop reason where every limit held up to --max-concurrency, below what the engine runs at
# once (max-num-seqs x DP): its knee may lie higher
STOPPED_AT_MAX_CONCURRENCY = "max_concurrency"

_TRIAL_KEY = "result"
_QUEUE_BASELINE = "baseline"
_QUEUE_TRIED = "tried"
_FINGERPRINT_KEY = "fingerprint"
_SELECTION_KEY = "selection"
_REMEASURE_PREFIX = "remeasure."
_SEARCH_DONE_KEY = "search_done"
_RUN_OPTIONS_KEY = "run_options"
_HEARTBEAT_KEY = "heartbeat_s"
_SEARCH_LEFT_KEY = "search_left"
_REPLAYED_FROM = "replayed_from_trial"
_SAME_FLAGS_AS = "same_flags_as_trial"
_RUN_PREFIX = "run."
_NOT_STARTED = "not_started"
_DECLARED_DEAD_PREFIX = "dead."

# A trial's stop reason when autotune's memory plan refused its flags before any launch (trial.run_trial).
MEMORY_PLAN_REFUSED = "not launched: memory plan does not fit"


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _floats(data: Mapping[str, Any]) -> dict[str, float]:
    return {str(k): _num(v) for k, v in data.items()}


@dataclass(frozen=True)
class P99Record:
    """A level's P99 of one limited metric, over all the level's runs: what its verdict on that limit rests on."""

    value_ms: float
    low_ms: float  # its confidence interval (NaN: too few values for one)
    high_ms: float
    fitted_ms: float  # the trial's levels fitted non-decreasing in concurrency (NaN: fewer than two levels)

    @property
    def judged_ms(self) -> float:
        """The P99 the level's feasibility rests on: the fit over the trial's levels where there is one."""
        return self.value_ms if math.isnan(self.fitted_ms) else self.fitted_ms

    def to_json(self) -> dict[str, Any]:
        return json_safe({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> P99Record:
        return cls(_num(data["value_ms"]), _num(data["low_ms"]), _num(data["high_ms"]), _num(data["fitted_ms"]))


@dataclass(frozen=True)
class HostCpuRecord:
    """The host's CPUs over one level (autotune.hostcpu): how many were busy on average, how many of those with
    other processes than the tuner and the server's, and the share of their time the hypervisor gave elsewhere."""

    cpus: int
    busy_cores: float
    others_cores: float
    steal_share: float

    def to_json(self) -> dict[str, Any]:
        return json_safe({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HostCpuRecord:
        return cls(cpus=int(data["cpus"]), busy_cores=_num(data["busy_cores"]),
                   others_cores=_num(data["others_cores"]), steal_share=_num(data["steal_share"]))


@dataclass(frozen=True)
class LevelRecord:
    """One load level of a trial's load search: figures over its measured requests."""

    concurrency: int
    output_tok_s: float
    total_tok_s: float
    request_s: float
    p99: Mapping[str, P99Record]  # of each limited metric, by metric, in the limits' order
    runs: int  # runs pooled: more than one when the first run's interval straddled a limit
    feasible: bool  # every limit met by its fitted P99, throughput measured, error rate within bounds
    p99_ttft_ms: float  # the run summary's P99s of every metric, limited or not
    p99_tpot_ms: float
    p99_itl_ms: float
    p99_e2el_ms: float
    completed: int
    failed: int
    duration_s: float
    wall_s: float  # the level's wall time, warm-up included (what a re-measurement at this level costs)
    status: str
    # What the host's CPUs did meanwhile (the busiest of pooled runs); None where nothing measured them: the
    # in-process sim, a host without /proc, a level recorded before autotune measured it.
    host_cpu: HostCpuRecord | None = None

    @property
    def p99_ms(self) -> dict[str, float]:
        """Each limited metric's P99 as measured at this level."""
        return {metric: p.value_ms for metric, p in self.p99.items()}

    def p99_of(self, metric: str) -> float:
        """Any metric's P99 here: over all the level's runs for a limited metric, else the run summary's."""
        return self.p99[metric].value_ms if metric in self.p99 else float(getattr(self, f"p99_{metric}_ms"))

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["p99"] = {metric: p.to_json() for metric, p in self.p99.items()}
        data["host_cpu"] = self.host_cpu.to_json() if self.host_cpu else None
        return json_safe(data)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LevelRecord:
        return cls(concurrency=int(data["concurrency"]), output_tok_s=_num(data["output_tok_s"]),
                   total_tok_s=_num(data["total_tok_s"]), request_s=_num(data["request_s"]),
                   p99={str(m): P99Record.from_json(p) for m, p in data["p99"].items()},
                   runs=int(data["runs"]), feasible=bool(data["feasible"]),
                   p99_ttft_ms=_num(data["p99_ttft_ms"]), p99_tpot_ms=_num(data["p99_tpot_ms"]),
                   p99_itl_ms=_num(data["p99_itl_ms"]), p99_e2el_ms=_num(data["p99_e2el_ms"]),
                   completed=int(data["completed"]), failed=int(data["failed"]),
                   duration_s=_num(data["duration_s"]), wall_s=_num(data["wall_s"]), status=str(data["status"]),
                   host_cpu=HostCpuRecord.from_json(h) if (h := data.get("host_cpu")) else None)

    def metrics(self) -> dict[str, Any]:
        """This level's figures in the shape of a full run's metrics (only the P99s are known)."""
        return {"concurrency": self.concurrency, "output_tok_s": self.output_tok_s, "total_tok_s": self.total_tok_s,
                "request_s": self.request_s, "completed": self.completed, "failed": self.failed,
                **{f"{m}_ms": {"p99": getattr(self, f"p99_{m}_ms")} for m in ("ttft", "tpot", "itl", "e2el")}}


@dataclass(frozen=True)
class TrialResult:
    """What one trial measured: its flags, the load search's levels and chosen level, or why it failed."""

    flags: Mapping[str, Any]
    feasible: bool
    output_tok_s: float  # SLO-meeting throughput (0 when nothing met the limits)
    concurrency: int | None  # the chosen level (or the lowest level tried, when none met the limits)
    best_metrics: Mapping[str, Any] | None = None  # the chosen level's full metrics (BenchResult.to_json)
    levels: tuple[LevelRecord, ...] = ()
    failure_class: str = ""  # "", oom, kv_too_small, crash, timeout, port_in_use, bad_flags, no_feasible_load
    failure_reason: str = ""
    log_tail: str = ""
    log_path: str = ""
    startup: Mapping[str, Any] = field(default_factory=dict)
    memory: Mapping[str, Any] = field(default_factory=dict)
    vllm_serve_cmd: str = ""
    # why the load search ended (limit, saturated, ceiling: the engine's max-num-seqs x DP, deadline,
    # STOPPED_AT_MAX_CONCURRENCY, ...)
    stop_reason: str = ""
    engine_wall_s: float = 0.0  # engine start + teardown
    load_wall_s: float = 0.0  # load search
    trial_wall_s: float = 0.0  # the whole trial, as the study timed it

    @property
    def knee_may_lie_higher(self) -> bool:
        """Every limit held up to --max-concurrency, below what the engine runs at once: the search stopped short of
        the knee."""
        return self.stop_reason == STOPPED_AT_MAX_CONCURRENCY

    @property
    def top_concurrency(self) -> int | None:
        """The highest load level the search measured (where :attr:`knee_may_lie_higher`, the --max-concurrency it
        ran under); None where it measured none."""
        return max((lv.concurrency for lv in self.levels), default=None)

    @property
    def measurement_failure(self) -> str:
        """Why the trial measured nothing (its server failed to start, crashed, hung...): its failure class; "" where
        it measured its load levels, whether one met the limits or none did (no_feasible_load)."""
        return "" if self.failure_class == "no_feasible_load" else self.failure_class

    def outcome_known(self, max_concurrency: int) -> bool:
        """Running these flags again under ``max_concurrency`` (the load search's ceiling now) would only repeat what
        this trial found (a point the sampler proposes again is then not run: :func:`known_trial_with_flags`): its
        load search ran to its end, to a knee or to no level within the limits, or the flags were refused for what
        they are (autotune's memory plan before any launch, vLLM's own argument check). Not a load search cut short by
        --timeout (the knee may lie higher), nor one that stopped at a lower --max-concurrency with every limit held
        (a resumed study given a higher one, as the profile's note advises, is to look above it), nor a failure that
        another try may not meet: a crash, a start that timed out, a port taken, failed requests, or out of memory or
        too small a KV cache at the server's start (memory another process held can cause those)."""
        if self.stop_reason == "deadline":
            return False
        if self.knee_may_lie_higher and (self.top_concurrency or 0) < max_concurrency:
            return False
        return (self.failure_class in ("", "no_feasible_load", "bad_flags")
                or self.stop_reason == MEMORY_PLAN_REFUSED)

    @property
    def p99_ms(self) -> dict[str, float]:
        """Each limited metric's P99 at ``concurrency`` as measured there; empty when no level ran."""
        level = self.level(self.concurrency) if self.concurrency is not None else None
        return level.p99_ms if level else {}

    def constraints_ms(self, limits_ms: Mapping[str, float]) -> dict[str, float]:
        """One value per limit, by metric: P99 - limit in ms, <= 0 where the limit holds.

        A feasible trial's values are those its verdict rests on (each P99 fitted over its levels, at the chosen
        level), so every one is <= 0 and Optuna agrees that it is feasible. A trial with no level within the limits
        gets its lowest level's values, and when none of them is over (the level failed on its error rate, or by the
        fit) each is raised to at least 1e-3, so that Optuna sees it infeasible. Any other failure, or a P99 never
        measured, is a large violation."""
        level = self.level(self.concurrency) if self.concurrency is not None else None
        if level is None or not (self.feasible or self.failure_class == "no_feasible_load"):
            return {metric: 10.0 * limit for metric, limit in limits_ms.items()}
        values = {}
        for metric, limit in limits_ms.items():
            p99 = level.p99[metric].judged_ms if metric in level.p99 else math.nan
            values[metric] = 10.0 * limit if math.isnan(p99) else p99 - limit
        if self.feasible or any(v > 0 for v in values.values()):
            return values
        return {metric: max(v, 1e-3) for metric, v in values.items()}

    def level(self, concurrency: int) -> LevelRecord | None:
        return next((lv for lv in self.levels if lv.concurrency == concurrency), None)

    def metrics_at(self, concurrency: int, runs: Sequence[Measurement] = ()) -> dict[str, Any]:
        """The full metrics at ``concurrency``, a load its candidate settled at (the profile's ``at_chosen_load``,
        ``best``'s ``metrics``): the last of ``runs`` (its fresh-server re-measurements there) that has them, a
        server that failed having none; else the chosen level's; else, at a level a re-measurement stepped down to
        and never measured again, the level's summary (only its P99s known); empty at a load no level measured."""
        measured = [m.metrics for m in runs if m.metrics]
        if measured:
            return dict(measured[-1])
        if concurrency == self.concurrency:
            return dict(self.best_metrics or {})
        level = self.level(concurrency)
        return json_safe(level.metrics()) if level else {}

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["levels"] = [lv.to_json() for lv in self.levels]
        data["log_tail"] = self.log_tail[-4000:]
        return json_safe(data)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrialResult:
        return cls(flags=dict(data["flags"]), feasible=bool(data["feasible"]), output_tok_s=_num(data["output_tok_s"]),
                   concurrency=_opt_int(data["concurrency"]),
                   best_metrics=data["best_metrics"], levels=tuple(LevelRecord.from_json(x) for x in data["levels"]),
                   failure_class=str(data["failure_class"]), failure_reason=str(data["failure_reason"]),
                   log_tail=str(data["log_tail"]), log_path=str(data["log_path"]), startup=dict(data["startup"]),
                   memory=dict(data["memory"]), vllm_serve_cmd=str(data["vllm_serve_cmd"]),
                   stop_reason=str(data["stop_reason"]), engine_wall_s=_num(data["engine_wall_s"]),
                   load_wall_s=_num(data["load_wall_s"]), trial_wall_s=_num(data["trial_wall_s"]))


@dataclass(frozen=True)
class TrialRecord:
    """A stored trial: its Optuna number and state, its queue tag, and its result once it ran."""

    number: int
    state: optuna.trial.TrialState
    baseline: str  # "", vllm-defaults, seed-profile
    tried: bool  # queued from --try
    result: TrialResult | None  # None: not run (waiting, running, interrupted before it finished, or not_run)
    # A sampled trial whose launch flags were those of this earlier finished trial: COMPLETE with that trial's value
    # and constraints (what Optuna's sampler learns), and no result of its own. None for every other trial.
    same_flags_as: int | None = None
    # Why the trial ended before it started, a trial of the study in no count (the search was done when a worker's
    # ask created it; its queued point, if any, queued again); "" for every other trial.
    not_started: str = ""
    # The trial whose server measured this one's result, where that is another: a process died after measuring it,
    # and its result was added from the process's journal, or taken by the copy of it queued again
    # (:func:`take_result`). None for a trial measured as itself, or not measured.
    measured_as: int | None = None

    @property
    def complete(self) -> bool:
        """Finished with a result of its own (measured, or failed as a result); not a trial that was not_run."""
        return self.state == optuna.trial.TrialState.COMPLETE and self.result is not None

    @property
    def not_run(self) -> bool:
        """Sampled with the launch flags of an earlier finished trial (``same_flags_as``), so not run again."""
        return self.same_flags_as is not None

    def not_run_text(self) -> str:
        """``trial 5: the same flags as trial 2, not run again`` (only for a trial that was not_run)."""
        return describe_not_run(self.number, int(self.same_flags_as))  # type: ignore[arg-type]

    @property
    def feasible(self) -> bool:
        return self.complete and self.result.feasible  # type: ignore[union-attr]

    @property
    def value(self) -> float:
        """SLO-meeting throughput; 0 for a trial that met no limit or did not finish."""
        return self.result.output_tok_s if self.feasible else 0.0  # type: ignore[union-attr]


def describe_not_run(number: int, same_flags_as: int) -> str:
    """How every report names a trial that was not run: ``trial 5: the same flags as trial 2, not run again``."""
    return f"trial {number}: the same flags as trial {same_flags_as}, not run again"


@dataclass(frozen=True)
class Measurement:
    """One fresh-server measurement of a candidate at its chosen load."""

    output_tok_s: float
    p99_ms: Mapping[str, float]  # of each limited metric, by metric (NaN when the server did not start)
    metrics: Mapping[str, Any] = field(default_factory=dict, compare=False)  # BenchResult.to_json
    # where the server did not start: its class (errors.EngineStartError's: oom, kv_too_small, crash, timeout, ...)
    # and what it said
    failure_class: str = ""
    failure_reason: str = ""
    wall_s: float = 0.0  # server start to stop (0: not recorded); less the level's own wall, a warm restart's cost

    @property
    def failure(self) -> str:
        """``oom: CUDA out of memory``: the failure as the reports print it ("" where the server started)."""
        return f"{self.failure_class}: {self.failure_reason}" if self.failure_class else ""

    @property
    def restart_s(self) -> float:
        """The server's start and stop: the wall less the level's (0 where either is unknown)."""
        level_s = float(self.metrics.get("wall_s") or 0.0)
        return max(0.0, self.wall_s - level_s) if self.wall_s > 0 and level_s > 0 else 0.0

    @property
    def host_cpu(self) -> HostCpuRecord | None:
        """What the host's CPUs did during the level (autotune.hostcpu), where it was measured."""
        host = self.metrics.get("host_cpu")
        return HostCpuRecord.from_json(host) if host else None

    def over_limits(self, limits_ms: Mapping[str, float]) -> list[str]:
        """The metrics whose P99 here broke their limit (none for a failed measurement: no P99 was seen)."""
        return [metric for metric, limit in limits_ms.items() if self.p99_ms.get(metric, math.nan) > limit]

    def to_json(self) -> dict[str, Any]:
        return json_safe({"output_tok_s": self.output_tok_s, "p99_ms": dict(self.p99_ms),
                          "metrics": dict(self.metrics), "failure_class": self.failure_class,
                          "failure_reason": self.failure_reason, "wall_s": self.wall_s})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Measurement:
        if "failure_class" in data:
            failure_class, failure_reason = str(data["failure_class"]), str(data["failure_reason"])
        else:  # recorded before the class was kept apart: "<class>: <reason>" in one text
            failure_class, _, failure_reason = str(data.get("failure", "")).partition(": ")
        return cls(_num(data["output_tok_s"]), _floats(data["p99_ms"]), dict(data["metrics"]), failure_class,
                   failure_reason, float(data.get("wall_s", 0.0)))  # absent in studies recorded before it was kept


@dataclass(frozen=True)
class Remeasurement:
    """A candidate's re-measurements: at ``concurrency``, after stepping down from ``stepped_down_from`` (in
    order) where a re-measurement broke the limit; ``earlier``: those made at the loads stepped down from."""

    trial_number: int
    concurrency: int
    stepped_down_from: tuple[int, ...] = ()
    repeats: tuple[Measurement, ...] = ()
    earlier: tuple[tuple[int, Measurement], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"trial_number": self.trial_number, "concurrency": self.concurrency,
                "stepped_down_from": list(self.stepped_down_from), "repeats": [m.to_json() for m in self.repeats],
                "earlier": [{"concurrency": c, "measurement": m.to_json()} for c, m in self.earlier]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Remeasurement:
        return cls(int(data["trial_number"]), int(data["concurrency"]),
                   tuple(int(c) for c in data["stepped_down_from"]),
                   tuple(Measurement.from_json(m) for m in data["repeats"]),
                   # absent in studies recorded before they were kept
                   tuple((int(e["concurrency"]), Measurement.from_json(e["measurement"]))
                         for e in data.get("earlier", ())))


@dataclass(frozen=True)
class GainRecord:
    """The winner's gain over one baseline, with its confidence interval (selection.gain_over says how)."""

    baseline_trial: int
    baseline_output_tok_s: float  # 0 when the baseline missed a limit
    baseline_meets_limit: bool  # every limit
    gain_output_tok_s: float
    gain_pct: float  # inf when the baseline missed a limit
    gain_pct_low: float  # the interval of the gain, at ``confidence``; -inf to inf: no finalist measured twice
    gain_pct_high: float
    confidence: float
    significant: bool  # the whole interval lies above 0
    # the finalists the interval is simultaneous over (selection.critical_value); 2: one comparison, as every
    # interval stored before simultaneous intervals was
    finalists_compared: int = 2

    def to_json(self) -> dict[str, Any]:
        return json_safe({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GainRecord:
        meets = bool(data["baseline_meets_limit"])

        def pct(key: str, unbounded: float = math.inf) -> float:
            # stored as null: an infinite gain (the baseline met no limit), or, of a baseline that met them, an
            # interval's bound that no second run of any finalist bounded (selection.gain_over)
            return (math.inf if not meets else unbounded) if data[key] is None else float(data[key])

        return cls(int(data["baseline_trial"]), _num(data["baseline_output_tok_s"]), meets,
                   _num(data["gain_output_tok_s"]), pct("gain_pct"), pct("gain_pct_low", -math.inf),
                   pct("gain_pct_high"), float(data["confidence"]), bool(data["significant"]),
                   int(data.get("finalists_compared", 2)))


@dataclass(frozen=True)
class ServeLoadRecord:
    """Where a deployment of the winner keeps each limited P99 within its limit in ``runs_within_limits`` of its
    runs, and what it is expected to give there (selection.serve_load says how): derived from its trial's load curve
    and the run-to-run P99 spread, not measured at that load."""

    concurrency: int
    runs_within_limits: float  # the share of runs whose P99 of each limited metric stays within its limit
    output_tok_s: float  # expected at ``concurrency``
    p99_ms: Mapping[str, float]  # each limited metric's P99 expected there (the runs' geometric mean, carried)
    p99_run_cv: Mapping[str, float]  # the run-to-run spread of each limited P99 it allows for (log sd), by metric
    below_searched_loads: bool  # further below the trial's lowest load than the search resolves: an extrapolation

    def to_json(self) -> dict[str, Any]:
        return json_safe({"concurrency": self.concurrency, "runs_within_limits": self.runs_within_limits,
                          "output_tok_s": self.output_tok_s, "p99_ms": dict(self.p99_ms),
                          "p99_run_cv": dict(self.p99_run_cv), "below_searched_loads": self.below_searched_loads})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServeLoadRecord:
        return cls(int(data["concurrency"]), float(data["runs_within_limits"]), _num(data["output_tok_s"]),
                   _floats(data["p99_ms"]), _floats(data["p99_run_cv"]), bool(data["below_searched_loads"]))


@dataclass(frozen=True)
class ThroughputRecord:
    """Output tok/s over a candidate's measurements (its re-measurements, else the search's one figure), with the
    half width of the mean's t interval at ``confidence`` (never below the noise floor; NaN with one measurement,
    which bounds nothing, or when no interval was computed)."""

    mean: float
    std: float
    min: float
    max: float
    n: int
    half_width: float
    confidence: float

    def to_json(self) -> dict[str, Any]:
        return json_safe({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ThroughputRecord:
        return cls(_num(data["mean"]), _num(data["std"]), _num(data["min"]), _num(data["max"]), int(data["n"]),
                   _num(data["half_width"]), float(data["confidence"]))


@dataclass(frozen=True)
class SelectionRecord:
    winner_trial: int | None  # the recommended configuration
    verdict: str
    gains: Mapping[str, GainRecord] = field(default_factory=dict)  # by baseline name
    equal_within_noise: tuple[int, ...] = ()  # trials the winner does not beat beyond noise (itself included)
    unconfirmed: tuple[int, ...] = ()  # finalists cut short before they were measured as the others
    # The winner's figures as the verdict saw them: output tok/s as measured at ``winner_concurrency`` (lower than
    # its trial's chosen level after a step-down), the same runs carried to the limit (selection.py: what finalists
    # are compared by), and each limited metric's mean P99 over those runs.
    winner_concurrency: int | None = None
    winner_output_tok_s: ThroughputRecord | None = None
    winner_at_limit_tok_s: ThroughputRecord | None = None
    winner_p99_ms: Mapping[str, float] = field(default_factory=dict)
    # the lower load where the winner's P99s stay within the limits in most runs (None: its runs do not spread, as
    # the noiseless sim's, or a study selected before it was kept)
    winner_serve: ServeLoadRecord | None = None

    def to_json(self) -> dict[str, Any]:
        return {"winner_trial": self.winner_trial, "verdict": self.verdict,
                "gains": {k: g.to_json() for k, g in self.gains.items()},
                "equal_within_noise": list(self.equal_within_noise), "unconfirmed": list(self.unconfirmed),
                "winner_concurrency": self.winner_concurrency,
                "winner_output_tok_s": self.winner_output_tok_s.to_json() if self.winner_output_tok_s else None,
                "winner_at_limit_tok_s": self.winner_at_limit_tok_s.to_json() if self.winner_at_limit_tok_s else None,
                "winner_p99_ms": json_safe(dict(self.winner_p99_ms)),
                "winner_serve": self.winner_serve.to_json() if self.winner_serve else None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SelectionRecord:
        def tput(key: str) -> ThroughputRecord | None:
            return ThroughputRecord.from_json(data[key]) if data[key] else None

        return cls(_opt_int(data["winner_trial"]), str(data["verdict"]),
                   {k: GainRecord.from_json(g) for k, g in data["gains"].items()},
                   tuple(int(n) for n in data["equal_within_noise"]), tuple(int(n) for n in data["unconfirmed"]),
                   _opt_int(data["winner_concurrency"]), tput("winner_output_tok_s"), tput("winner_at_limit_tok_s"),
                   _floats(data["winner_p99_ms"]),
                   ServeLoadRecord.from_json(data["winner_serve"]) if data.get("winner_serve") else None)


@dataclass(frozen=True)
class StudyFingerprint:
    """What a study's figures were measured on. Resuming with another one is refused: they would not compare."""

    model: str
    gpus: int
    limits_ms: Mapping[str, float]  # P99 limit by metric
    workload: Mapping[str, Any]
    engine: str
    gpu_type: str
    preset: str | None = None
    space: str = ""  # where the search space came from (not compared: a space may grow)
    # What ``--dtype auto`` means for this model (config.json's torch_dtype): an export to a runtime that reads
    # ``auto`` otherwise (KServe's huggingface server: float16) states the measured dtype.
    weight_dtype: str = "bfloat16"
    records_version: int = RECORDS_VERSION
    # On the sim engine: its card's constants and its noise model (TrialSettings.sim_model). A card file rewritten
    # by a new calibration, or another --sim-noise, between runs of one study would put two models' figures under
    # one name. None: a study written before this was recorded (not compared).
    sim_model: Mapping[str, Any] | None = None

    COMPARED = ("records_version", "model", "gpus", "limits_ms", "workload", "engine", "gpu_type", "sim_model")

    def to_json(self) -> dict[str, Any]:
        return json_safe({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StudyFingerprint:
        return cls(model=str(data["model"]), gpus=int(data["gpus"]), limits_ms=_floats(data["limits_ms"]),
                   workload=dict(data["workload"]), engine=str(data["engine"]),
                   gpu_type=str(data["gpu_type"]), preset=data.get("preset"), space=str(data.get("space") or ""),
                   weight_dtype=str(data["weight_dtype"]), records_version=int(data["records_version"]),
                   sim_model=data.get("sim_model"))


@dataclass(frozen=True)
class RunRecord:
    """One invocation of ``autotune run`` on a study, interrupted or not: what it cost and what it ran on. A study's
    GPU-minutes are the sum over its runs; its latest run's software is what the winner was re-measured with."""

    started_at: str  # ISO 8601, UTC
    finished_at: str
    wall_s: float
    gpus: int  # held for the whole run
    trials_run: int
    stopped_by: str  # trials, timeout, stagnation: ..., interrupted
    engine: str
    gpu_name: str | None  # as nvidia-smi names the card; the sim engine says which card it modelled
    vllm_version: str | None  # None on the sim engine
    autotune_version: str
    # This run re-measured the finalists and stored the study's selection (each run that gets that far replaces
    # it): the winner's figures, verdict and gains are this run's. An interrupted resume and a worker make none.
    made_selection: bool = False
    # Other processes' trials this run saw RUNNING without a heartbeat yet (still in Optuna's ask) and left so,
    # by number, with the seconds it saw them so on its own clock: a later run adds them to its own (a trial silent
    # for three heartbeats, summed over the runs that saw it, is failed as its process's death).
    silent_trials_s: Mapping[int, float] = field(default_factory=dict)

    @property
    def gpu_minutes(self) -> float:
        return self.wall_s / 60.0 * self.gpus

    def to_json(self) -> dict[str, Any]:
        return json_safe({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunRecord:
        return cls(started_at=str(data["started_at"]), finished_at=str(data["finished_at"]),
                   wall_s=_num(data["wall_s"]), gpus=int(data["gpus"]), trials_run=int(data["trials_run"]),
                   stopped_by=str(data["stopped_by"]), engine=str(data["engine"]), gpu_name=data["gpu_name"],
                   vllm_version=data["vllm_version"], autotune_version=str(data["autotune_version"]),
                   made_selection=bool(data.get("made_selection", False)),
                   silent_trials_s={int(n): float(s) for n, s in (data.get("silent_trials_s") or {}).items()})


@dataclass(frozen=True)
class SearchLeft:
    """What the study's run has left of its search, as it last recorded it (as it starts, and after each of its
    trials). A worker stops once that search ends, so what a worker has left rests on this: the run's --trials and
    --timeout are the run's own, not among the options it stores for workers."""

    trials_left: int  # at most: the run's --trials not yet started and its stagnation stop, whichever is nearer
    trials: int  # the run's --trials (its invocation's)
    # the run's trials left times its longest trial so far, within the time its --timeout leaves the search; None
    # while no trial is timed and no --timeout bounds it
    search_left_s: float | None
    timeout: bool  # the run has a --timeout: its search may end before its trials do
    # ISO 8601, UTC: a worker counts search_left_s down from it on its own clock
    recorded_at: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))

    def search_left_s_now(self) -> float | None:
        """``search_left_s`` less the time since it was recorded (machines' clocks agree to within seconds, trials
        take minutes)."""
        if self.search_left_s is None:
            return None
        since_s = (dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(self.recorded_at)).total_seconds()
        return max(0.0, self.search_left_s - max(0.0, since_s))

    def to_json(self) -> dict[str, Any]:
        return json_safe({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SearchLeft:
        return cls(trials_left=int(data["trials_left"]), trials=int(data["trials"]),
                   search_left_s=None if data["search_left_s"] is None else float(data["search_left_s"]),
                   timeout=bool(data["timeout"]), recorded_at=str(data["recorded_at"]))


# -- trials ------------------------------------------------------------------------------------------------------
def queue_attrs(baseline: str = "", tried: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """User attributes for ``study.enqueue_trial``: what the queued point is. ``tried``: a ``--try`` point's flags,
    kept whole because the trial runs them as given, not their projection on the space (a worker elsewhere, or
    the retry of an interrupted trial, reads them from here)."""
    attrs: dict[str, Any] = {}
    if baseline:
        attrs[_QUEUE_BASELINE] = baseline
    if tried is not None:
        attrs[_QUEUE_TRIED] = json_safe(dict(tried))
    return attrs


def queued_baseline(trial: optuna.Trial | optuna.trial.FrozenTrial) -> str:
    return str(trial.user_attrs.get(_QUEUE_BASELINE) or "")


def queued_try(trial: optuna.Trial | optuna.trial.FrozenTrial) -> dict[str, Any] | None:
    """The flags of the ``--try`` point a trial was queued for, as given; None for any other trial, and for one
    queued before the flags were kept (:func:`queued_try_unkept`)."""
    flags = trial.user_attrs.get(_QUEUE_TRIED)
    return dict(flags) if isinstance(flags, dict) else None


def queued_try_unkept(trial: optuna.trial.FrozenTrial) -> dict[str, Any] | None:
    """The projection on the space of a ``--try`` point an older autotune queued, which kept only that; None for
    any other trial. As queued: Optuna keeps it in ``fixed_params`` (a waiting trial has no params yet, and a
    finished one may have more, sampled where the projection left a flag out), where its own skip_if_exists reads
    it."""
    if trial.user_attrs.get(_QUEUE_TRIED) is not True:
        return None
    return dict(trial.system_attrs.get("fixed_params", trial.params))


def trial_result_attrs(result: TrialResult) -> dict[str, Any]:
    """The user attributes a trial's result is stored as."""
    return {_TRIAL_KEY: result.to_json()}


def finished_trial_attrs(trial: optuna.Trial, result: TrialResult) -> dict[str, Any]:
    """Every user attribute a trial holds once its result is written: its queue tags and its result (what the
    journal keeps while the storage does not have them yet)."""
    return {**trial.user_attrs, **trial_result_attrs(result)}


def replayed_attrs(attrs: Mapping[str, Any], original_number: int) -> dict[str, Any]:
    """A journaled trial's attributes as added again to its study, naming the trial it was measured as
    (TrialRecord.measured_as)."""
    return {**attrs, _REPLAYED_FROM: original_number}


def take_result(trial: optuna.Trial, measured: TrialRecord) -> int:
    """Store on ``trial`` the result of ``measured``, a finished measurement of the same flags, naming the trial that
    measured it (TrialRecord.measured_as), whose number is returned: ``trial`` is not measured again."""
    assert measured.result is not None
    measured_as = measured.measured_as if measured.measured_as is not None else measured.number
    for key, value in replayed_attrs(trial_result_attrs(measured.result), measured_as).items():
        trial.set_user_attr(key, value)
    return measured_as


def write_trial_result(trial: optuna.Trial, result: TrialResult) -> None:
    """Store the result ``trial`` measured. A queued copy may hold the name of the trial its original's result was
    measured as (TrialRecord.measured_as, copied with the rest of its attributes): the result measured here is its
    own."""
    if trial.user_attrs.get(_REPLAYED_FROM) is not None:
        trial.set_user_attr(_REPLAYED_FROM, None)
    for key, value in trial_result_attrs(result).items():
        trial.set_user_attr(key, value)


def flags_key(flags: Mapping[str, Any]) -> str:
    """Launch flags as one comparable string: equal for two dicts that give ``vllm serve`` the same flags (a flag set
    to None is not given: flags.flags_to_argv), whatever their order."""
    return json.dumps({k: v for k, v in json_safe(dict(flags)).items() if v is not None}, sort_keys=True)


def sampled(trial: optuna.trial.FrozenTrial) -> bool:
    """The sampler chose the trial's point: it was not taken from the queue (a baseline, a ``--try`` point: Optuna
    keeps what they were queued with as ``fixed_params``) and is not the copy of a failed trial that the retry
    callback queued (storage.retried_trial)."""
    return "fixed_params" not in trial.system_attrs and retried_trial(trial) is None


def known_trial_with_flags(trials: Sequence[TrialRecord], flags: Mapping[str, Any],
                           max_concurrency: int) -> TrialRecord | None:
    """The latest finished trial that launched ``flags`` and whose outcome they settle under the load search's
    ceiling ``max_concurrency`` (:meth:`TrialResult.outcome_known`), as Optuna's FAQ ("How can I ignore duplicated
    samples?") matches a new trial against the completed ones; None where there is none. A trial still running, or
    one that failed on something another try may not meet, is not one: those flags run again."""
    key = flags_key(flags)
    return next((t for t in reversed(trials) if t.complete
                 and t.result.outcome_known(max_concurrency)  # type: ignore[union-attr]
                 and flags_key(t.result.flags) == key), None)  # type: ignore[union-attr]


def write_same_flags(trial: optuna.Trial, earlier: int) -> None:
    """Mark ``trial`` as not run: its launch flags were those of trial ``earlier`` (TrialRecord.same_flags_as)."""
    trial.set_user_attr(_SAME_FLAGS_AS, earlier)


def read_trial(trial: optuna.trial.FrozenTrial) -> TrialRecord:
    data = trial.user_attrs.get(_TRIAL_KEY)
    # Only a COMPLETE trial without a result of its own was not run: a trial whose process died between the mark and
    # Optuna's tell is retried, and the copy inherits the mark with the rest of its user attributes.
    same = trial.user_attrs.get(_SAME_FLAGS_AS) if data is None and trial.state == optuna.trial.TrialState.COMPLETE \
        else None
    not_started = _own_note(trial, _NOT_STARTED)
    return TrialRecord(number=trial.number, state=trial.state, baseline=queued_baseline(trial),
                       tried=_QUEUE_TRIED in trial.user_attrs,
                       result=TrialResult.from_json(data) if data is not None else None, same_flags_as=_opt_int(same),
                       not_started=str(not_started["why"]) if not_started else "",
                       measured_as=_opt_int(trial.user_attrs.get(_REPLAYED_FROM)))


def _own_note(trial: optuna.trial.FrozenTrial, key: str) -> dict[str, Any] | None:
    """A note written on ``trial`` itself, not one its queued copy inherited from the trial it copies."""
    note = trial.user_attrs.get(key)
    return note if isinstance(note, dict) and note.get("trial") == trial.number else None


def write_not_started(trial: optuna.Trial, why: str) -> None:
    """The trial ends before it started (TrialRecord.not_started)."""
    trial.set_user_attr(_NOT_STARTED, {"trial": trial.number, "why": why})


def requeue_user_attrs(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The user attributes of a copy of ``trial`` queued again: its own, less the note about this trial."""
    return {k: v for k, v in trial.user_attrs.items() if k != _NOT_STARTED}


def read_trials(study: optuna.Study) -> list[TrialRecord]:
    return [read_trial(t) for t in study.get_trials(deepcopy=False)]


def count_finished(trials: list[TrialRecord]) -> int:
    """A study's trials as every report counts them (the profile, ``studies``, ``compare``, the dashboard, ``run``):
    those that finished, measured or failed, not the baselines and ``--try`` points still queued, nor a trial
    running, nor one that was not run (:func:`not_run`: each report names those beside this count), nor one that
    ended before it started (TrialRecord.not_started)."""
    return sum(1 for t in trials if t.state.is_finished() and not t.not_run and not t.not_started)


def not_run(trials: list[TrialRecord]) -> list[TrialRecord]:
    """The sampled trials that were not run: their launch flags were an earlier finished trial's."""
    return [t for t in trials if t.not_run]


def not_run_text(trials: list[TrialRecord]) -> str:
    """``trial 5: the same flags as trial 2, not run again; trial 7: ...``; empty when every trial ran."""
    return "; ".join(t.not_run_text() for t in not_run(trials))


# -- re-measurements and selection ------------------------------------------------------------------------------
def read_remeasurement(study: optuna.Study, trial_number: int) -> Remeasurement | None:
    data = study.user_attrs.get(f"{_REMEASURE_PREFIX}{trial_number}")
    return Remeasurement.from_json(data) if data is not None else None


def read_remeasurements(study: optuna.Study) -> list[Remeasurement]:
    """Every candidate's re-measurements the study holds (one read of its attributes)."""
    return remeasurements_in(study.user_attrs)


def remeasurements_in(attrs: Mapping[str, Any]) -> list[Remeasurement]:
    """:func:`read_remeasurements` from the study's attributes already read (``study.user_attrs``)."""
    return [Remeasurement.from_json(data) for key, data in attrs.items() if key.startswith(_REMEASURE_PREFIX)]


def write_remeasurement(study: optuna.Study, record: Remeasurement) -> None:
    study.set_user_attr(f"{_REMEASURE_PREFIX}{record.trial_number}", record.to_json())


def read_selection(study: optuna.Study) -> SelectionRecord | None:
    return selection_in(study.user_attrs)


def selection_in(attrs: Mapping[str, Any]) -> SelectionRecord | None:
    """:func:`read_selection` from the study's attributes already read (``study.user_attrs``)."""
    data = attrs.get(_SELECTION_KEY)
    return SelectionRecord.from_json(data) if data is not None else None


def write_selection(study: optuna.Study, record: SelectionRecord) -> None:
    study.set_user_attr(_SELECTION_KEY, record.to_json())


# -- runs --------------------------------------------------------------------------------------------------------
def write_run(study: optuna.Study, record: RunRecord) -> None:
    """One key per run (its start time and a random suffix): concurrent runs never rewrite each other's."""
    stamp = re.sub(r"[^0-9]", "", record.started_at)
    study.set_user_attr(f"{_RUN_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}", record.to_json())


def read_runs(study: optuna.Study) -> list[RunRecord]:
    """The study's runs, oldest first."""
    return runs_in(study.user_attrs)


def runs_in(attrs: Mapping[str, Any]) -> list[RunRecord]:
    """:func:`read_runs` from the study's attributes already read (``study.user_attrs``)."""
    runs = [RunRecord.from_json(v) for k, v in attrs.items() if k.startswith(_RUN_PREFIX)]
    return sorted(runs, key=lambda r: r.started_at)


# -- fingerprint -------------------------------------------------------------------------------------------------
def read_fingerprint(study: optuna.Study) -> StudyFingerprint | None:
    return fingerprint_in(study.user_attrs, study.study_name)


def fingerprint_in(attrs: Mapping[str, Any], study_name: str) -> StudyFingerprint | None:
    """:func:`read_fingerprint` from the attributes already read (``study.user_attrs``) of the study named
    ``study_name`` (which a refusal names)."""
    data = attrs.get(_FINGERPRINT_KEY)
    if data is None:
        return None
    if data.get("records_version") != RECORDS_VERSION:
        raise UsageError(f"study {study_name!r} was written by another version of autotune's records "
                         f"({data.get('records_version', 1)}, this one reads {RECORDS_VERSION}); "
                         "start a new study with another --study name")
    return StudyFingerprint.from_json(data)


def check_fingerprint(study: optuna.Study, fingerprint: StudyFingerprint) -> None:
    """Store the fingerprint on a new study; refuse to resume a study created for another setup."""
    old = read_fingerprint(study)
    if old is None:
        study.set_user_attr(_FINGERPRINT_KEY, fingerprint.to_json())
        return
    for key in StudyFingerprint.COMPARED:
        before, now = json_safe(getattr(old, key)), json_safe(getattr(fingerprint, key))
        if before is None:  # not recorded by the version that created the study (sim_model)
            continue
        if key == "workload" and "sha256" in now and "sha256" not in before:  # nor its file's content
            now = {k: v for k, v in now.items() if k != "sha256"}
        if before != now:
            raise UsageError(f"study {study.study_name!r} was created with {_difference(key, before, now)}; "
                             "use another --study name to tune a different setup")


def _difference(key: str, before: Any, now: Any) -> str:
    """``key=before, not now``, narrowed to the first entry that differs where both are mappings of the same
    keys (a card's constants: the one that changed, not the whole card)."""
    if isinstance(before, dict) and isinstance(now, dict) and before.keys() == now.keys():
        name = next(k for k in before if before[k] != now[k])
        return _difference(f"{key}.{name}", before[name], now[name])
    return f"{key}={before!r}, not {now!r}"


# -- what workers read -------------------------------------------------------------------------------------------
def write_search_done(study: optuna.Study, done: bool) -> None:
    """The study's run has stopped searching (True) or is searching again (a resumed run: False)."""
    study.set_user_attr(_SEARCH_DONE_KEY, done)


def read_search_done(study: optuna.Study) -> bool:
    return bool(study.user_attrs.get(_SEARCH_DONE_KEY))  # read from the storage each time


def write_declared_dead(study: optuna.Study, number: int, why: str) -> None:
    """Why a run failed trial ``number``, another process's, as that process's death (written before the trial is
    failed: its process, if it still lives, reads it there)."""
    study.set_user_attr(f"{_DECLARED_DEAD_PREFIX}{number}", why)


def read_declared_dead(study: optuna.Study) -> dict[int, str]:
    """Each trial a run failed as its process's death, with why (:func:`write_declared_dead`)."""
    return {int(key[len(_DECLARED_DEAD_PREFIX):]): str(why) for key, why in study.user_attrs.items()
            if key.startswith(_DECLARED_DEAD_PREFIX)}


def write_run_options(study: optuna.Study, options: Mapping[str, Any]) -> None:
    study.set_user_attr(_RUN_OPTIONS_KEY, json_safe(dict(options)))


def read_run_options(study: optuna.Study) -> dict[str, Any] | None:
    data = study.user_attrs.get(_RUN_OPTIONS_KEY)
    return dict(data) if data is not None else None


def write_search_left(study: optuna.Study, left: SearchLeft) -> None:
    study.set_user_attr(_SEARCH_LEFT_KEY, left.to_json())


def read_search_left(study: optuna.Study) -> SearchLeft | None:
    """:func:`write_search_left`'s record; None for a study whose run did not record it (an older version)."""
    data = study.user_attrs.get(_SEARCH_LEFT_KEY)
    return SearchLeft.from_json(data) if data is not None else None


def write_heartbeat_s(study: optuna.Study, heartbeat_s: int) -> None:
    """The seconds between the trial heartbeats of the study's run (AUTOTUNE_HEARTBEAT_S where it runs)."""
    study.set_user_attr(_HEARTBEAT_KEY, heartbeat_s)


def read_heartbeat_s(study: optuna.Study) -> int | None:
    """:func:`write_heartbeat_s`'s seconds; None for a study whose run did not record them (an older version)."""
    data = study.user_attrs.get(_HEARTBEAT_KEY)
    return int(data) if data is not None else None


# How Optuna stores a trial's constraint (Trial.set_constraint) among its system attrs: "constraints:<key>".
_OPTUNA_CONSTRAINT_PREFIX = "constraints:"


def write_constraints(trial: optuna.Trial, constraints: Mapping[str, float]) -> None:
    """Store the trial's constraints, one per limit. A copy that Optuna's retry callback queued holds the failed
    trial's system attrs, its constraints among them where they were stored (a baseline whose process died in its
    re-measurement, which runs inside its trial): Optuna's set_constraint keeps a constraint already set, with a
    UserWarning on the console, so the sampler would learn the dead trial's figures for this one. Those are
    replaced."""
    inherited = trial.storage.get_trial_system_attrs(trial._trial_id)  # noqa: SLF001 - the trial's own id
    for key, value in constraints.items():
        if _OPTUNA_CONSTRAINT_PREFIX + key in inherited:
            trial.storage.set_trial_system_attr(trial._trial_id, _OPTUNA_CONSTRAINT_PREFIX + key,  # noqa: SLF001
                                                float(value))
        else:
            trial.set_constraint(key, value)
