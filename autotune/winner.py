"""A study's winner as its records hold it: what ``best``, ``export``, ``compare`` and the dashboard report.

The winner is the selection's (re-measured on fresh servers, with the interval of its throughput and its gains
over the baselines) once the study has made one; before that, the best feasible trial so far, whose one figure
has no interval. A selection that found nothing within the limits has no winner, whatever the search saw.
"""
from __future__ import annotations

import math
from datetime import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import optuna

from autotune import records
from autotune.errors import NoFeasibleConfigError
from autotune.metrics import describe_limits, fmt_ms
from autotune.records import (GainRecord, Measurement, RunRecord, ServeLoadRecord, StudyFingerprint,
                              ThroughputRecord, TrialRecord)

__all__ = ["Winner", "StudyRecords", "read_study", "find_winner", "require_winner", "describe_gain",
           "describe_throughput", "describe_p99s", "describe_serve"]


@dataclass(frozen=True)
class Winner:
    """The recommended configuration of a study and its figures at the load it was chosen at."""

    study: str
    trial: int
    selected: bool  # chosen by the final comparison (re-measured unless --repeats 0); False: the best
    # feasible trial so far, one measurement
    flags: Mapping[str, Any]
    vllm_serve_cmd: str
    concurrency: int  # the load it was measured at
    output_tok_s: ThroughputRecord  # as measured at ``concurrency``; half_width NaN: one measurement, no interval
    at_limit_tok_s: ThroughputRecord  # the same runs carried to the limit: what the verdict compares
    p99_ms: Mapping[str, float]  # each limited metric's P99 over the same measurements, by metric
    limits_ms: Mapping[str, float]
    baseline: str = ""  # the baseline's name when a baseline won
    stepped_down_from: tuple[int, ...] = ()
    metrics: Mapping[str, Any] | None = None  # the full metrics at ``concurrency`` (TrialResult.metrics_at)
    remeasurements: tuple[Measurement, ...] = ()
    verdict: str | None = None
    gains: Mapping[str, GainRecord] = field(default_factory=dict)
    serve: ServeLoadRecord | None = None  # the lower load where its P99s stay within the limits in most runs

    @property
    def source(self) -> str:
        return ("the final comparison's winner" if self.selected
                else "best feasible trial, before the final comparison")

    @property
    def has_interval(self) -> bool:
        return not math.isnan(self.at_limit_tok_s.half_width)

    def throughput_text(self) -> str:
        """``9,240 output tok/s at the limit ± 277 (90% interval, 2 fresh-server runs); measured 9,119 at
        concurrency 128``: each run carried to its own knee (selection.py), and as measured."""
        return describe_throughput(self.at_limit_tok_s, self.output_tok_s, self.concurrency, selected=self.selected,
                                   remeasured=bool(self.remeasurements), stepped_down_from=self.stepped_down_from)

    def p99_text(self) -> str:
        """``P99 ttft 430 ms (limit 500 ms), P99 itl 41.2 ms (limit 50 ms)``."""
        return describe_p99s(self.p99_ms, self.limits_ms)

    def serve_text(self) -> str | None:
        """``serve at concurrency ≤ 76 for its P99s within the limits in 19 runs of 20 (...)``; None without one."""
        return None if self.serve is None else describe_serve(self.serve, self.concurrency, self.at_limit_tok_s.mean)

    def gain_texts(self) -> dict[str, str]:
        """Each baseline's line: ``+12.3% (90% interval +8.0% to +16.6%, beyond noise)``, by baseline name."""
        return {name: describe_gain(g) for name, g in self.gains.items()}


def describe_throughput(at_limit: ThroughputRecord, at_load: ThroughputRecord, concurrency: int, *, selected: bool,
                        remeasured: bool, stepped_down_from: Sequence[int] = ()) -> str:
    """A winner's throughput as every command states it (`run`'s summary, `best`, `export`'s header, `compare`): at
    the limit with its interval, what the verdict compared, then as measured at its load, with the runs behind that
    figure where they are fewer than the interval's (a step-down starts the count again at a lower load)."""
    t, m = at_limit, at_load
    if not selected:
        return (f"{m.mean:,.0f} output tok/s at concurrency {concurrency} (the search's one measurement, "
                "not re-measured: no interval)")
    if math.isnan(t.half_width):  # one run: Student's t bounds nothing (selection.tok_s_stats)
        whose = "" if remeasured else ", the search's"
        head = f"{t.mean:,.0f} output tok/s at the limit (one run{whose}: no interval)"
    else:
        runs = f"{t.n} fresh-server run{'s' if t.n != 1 else ''}" if remeasured else "the search's figure"
        head = f"{t.mean:,.0f} output tok/s at the limit ± {t.half_width:,.0f} ({t.confidence:.0%} interval, {runs})"
    there = []
    if m.n != t.n or stepped_down_from:
        there.append(f"{m.n} run{'s' if m.n != 1 else ''} there")
    if stepped_down_from:
        there.append(f"stepped down from {', '.join(str(c) for c in stepped_down_from)}, where a fresh server broke "
                     "a limit")
    return f"{head}; measured {m.mean:,.0f} at concurrency {concurrency}" + (f" ({'; '.join(there)})" if there else "")


def describe_p99s(p99_ms: Mapping[str, float], limits_ms: Mapping[str, float],
                  values_ms: Mapping[str, Sequence[float]] | None = None) -> str:
    """``P99 ttft 430 ms (limit 500 ms), P99 itl 41.2 ms (limit 50 ms)``: each the mean over the runs at the
    winner's load (``values_ms``, each run's, where given). A finalist over a limit there still meets it when every
    run's knee lies within the search's resolution below (selection.Candidate.meets): then said so, not "within"."""
    parts = []
    for metric, p99 in p99_ms.items():
        runs = [v for v in (values_ms or {}).get(metric, ()) if not math.isnan(v)]
        notes = [f"mean of {', '.join(fmt_ms(v) for v in runs)}"] if len(runs) > 1 else []
        limit = limits_ms.get(metric)
        if limit is not None:
            notes.append(f"over its {limit:g} ms limit at this load: its knee lies below it" if p99 > limit
                         else f"limit {limit:g} ms")
        parts.append(f"P99 {metric} {fmt_ms(p99)} ms" + (f" ({'; '.join(notes)})" if notes else ""))
    return ", ".join(parts)


def describe_serve(serve: ServeLoadRecord, concurrency: int, at_limit_tok_s: float) -> str:
    """``serve at concurrency ≤ 76 for its P99s within the limits in 19 runs of 20 (P99 ttft 352 ms expected there,
    run-to-run spread 17.2%): about 3,310 output tok/s, 2.0% below its throughput at the limit``: the winner's serve
    load (selection.serve_load) as `run`, `best`, `export`, `compare` and `bench --profile` state it, against the
    winner's ``concurrency`` and ``at_limit_tok_s``, what the verdict ranks."""
    share = Fraction(serve.runs_within_limits).limit_denominator(1000)
    spread = ", ".join(f"P99 {metric} {fmt_ms(p99)} ms expected there, run-to-run spread "
                       f"{serve.p99_run_cv.get(metric, 0.0):.1%}" for metric, p99 in serve.p99_ms.items())
    within = f"within the limits in {share.numerator} runs of {share.denominator} ({spread})"
    if serve.concurrency >= concurrency:
        return f"serve at concurrency ≤ {serve.concurrency}, the load it was chosen at: its P99s stay {within}"
    cost = 1.0 - serve.output_tok_s / at_limit_tok_s if at_limit_tok_s > 0 else math.nan
    against = (f", {cost:.1%} below its throughput at the limit" if cost > 0
               else ", no less than its throughput at the limit" if cost <= 0 else "")
    extrapolated = ("; below the loads its search measured: an extrapolation along its load curve"
                    if serve.below_searched_loads else "")
    return (f"serve at concurrency ≤ {serve.concurrency} for its P99s {within}: about {serve.output_tok_s:,.0f} "
            f"output tok/s{against}{extrapolated}")


def describe_gain(g: GainRecord) -> str:
    if not g.baseline_meets_limit and not math.isfinite(g.gain_pct):
        return "unbounded: the baseline met no limit"
    if not (math.isfinite(g.gain_pct_low) and math.isfinite(g.gain_pct_high)):
        return f"{g.gain_pct:+.1f}% (no interval: no finalist was measured twice)"
    where = "beyond" if g.significant else "within"
    # over more than two finalists the intervals hold jointly (selection.critical_value): said, as a reader who
    # recomputes one pair's t interval gets a narrower one
    joint = f" jointly over {g.finalists_compared} finalists" if g.finalists_compared > 2 else ""
    # a baseline over a limit at its load in re-measurement is compared by its runs carried below it
    # (selection.gain_over): a finite gain with its interval, the one the verdict rests on
    below = "; the baseline's runs carried below the load where it missed a limit" if not g.baseline_meets_limit else ""
    return (f"{g.gain_pct:+.1f}% ({g.confidence:.0%} interval{joint} {g.gain_pct_low:+.1f}% to "
            f"{g.gain_pct_high:+.1f}%, {where} noise{below})")


@dataclass(frozen=True)
class StudyRecords:
    """Everything a reader of one study needs, read once through :mod:`autotune.records`."""

    name: str
    fingerprint: StudyFingerprint | None
    trials: list[TrialRecord]
    selection: records.SelectionRecord | None
    runs: list[RunRecord]
    remeasurements: dict[int, records.Remeasurement]
    started: datetime | None = None  # its first trial's start

    @property
    def gpu_minutes(self) -> float | None:
        """Every run's wall time times the GPUs it held; None when no run was recorded."""
        return sum(r.gpu_minutes for r in self.runs) if self.runs else None

    @property
    def winner_run(self) -> RunRecord | None:
        """The run the winner's figures come from: the latest that stored a selection (the stored one), else the
        latest run. Not simply the latest: a resumed run interrupted before its final comparison, or a worker on
        another machine, records a run after the selection without changing it."""
        made = [r for r in self.runs if r.made_selection]
        if self.selection is not None and made:
            return made[-1]
        return self.runs[-1] if self.runs else None

    @property
    def limits_ms(self) -> dict[str, float]:
        return dict(self.fingerprint.limits_ms) if self.fingerprint else {}

    def baseline_trials(self) -> dict[str, TrialRecord]:
        """The latest finished trial of each baseline, by name (what the selection compares the winner with)."""
        out: dict[str, TrialRecord] = {}
        for t in self.trials:
            if t.baseline and t.complete:
                out[t.baseline] = t
        return out


def read_study(study: optuna.Study) -> StudyRecords:
    frozen = study.get_trials(deepcopy=False)  # one read of the trials, the slowest part of a study's
    trials = [records.read_trial(t) for t in frozen]
    # One read of the study's attributes for every record kept there: each study.user_attrs is a storage query
    attrs = study.user_attrs
    remeasured = {r.trial_number: r for r in records.remeasurements_in(attrs)}
    return StudyRecords(study.study_name, records.fingerprint_in(attrs, study.study_name), trials,
                        records.selection_in(attrs), records.runs_in(attrs), remeasured,
                        min((t.datetime_start for t in frozen if t.datetime_start), default=None))


def find_winner(data: StudyRecords) -> Winner | None:
    """The selection's winner; before any selection, the best feasible trial; None when there is neither."""
    by_number = {t.number: t for t in data.trials}
    selection = data.selection
    if selection is not None:
        if selection.winner_trial is None or selection.winner_output_tok_s is None \
                or selection.winner_at_limit_tok_s is None:
            return None
        trial = by_number[selection.winner_trial]
        assert trial.result is not None and selection.winner_concurrency is not None
        stored = data.remeasurements.get(trial.number)
        # runs a resumed study stored after this selection may lie at another load than its figures
        runs = stored.repeats if stored and stored.concurrency == selection.winner_concurrency else ()
        return Winner(study=data.name, trial=trial.number, selected=True, flags=dict(trial.result.flags),
                      vllm_serve_cmd=trial.result.vllm_serve_cmd, concurrency=selection.winner_concurrency,
                      output_tok_s=selection.winner_output_tok_s, at_limit_tok_s=selection.winner_at_limit_tok_s,
                      p99_ms=dict(selection.winner_p99_ms),
                      limits_ms=data.limits_ms, baseline=trial.baseline,
                      stepped_down_from=stored.stepped_down_from if stored else (),
                      metrics=trial.result.metrics_at(selection.winner_concurrency, runs),
                      remeasurements=stored.repeats if stored else (),
                      verdict=selection.verdict, gains=dict(selection.gains), serve=selection.winner_serve)
    feasible = [t for t in data.trials if t.feasible]
    if not feasible:
        return None
    best = max(feasible, key=lambda t: t.value)
    result = best.result
    assert result is not None and result.concurrency is not None
    value = result.output_tok_s  # the search's knee: its level is the highest within the limits
    one = ThroughputRecord(value, 0.0, value, value, 1, math.nan, math.nan)
    return Winner(study=data.name, trial=best.number, selected=False, flags=dict(result.flags),
                  vllm_serve_cmd=result.vllm_serve_cmd, concurrency=result.concurrency,
                  output_tok_s=one, at_limit_tok_s=one,
                  p99_ms=result.p99_ms, limits_ms=data.limits_ms, baseline=best.baseline,
                  metrics=result.best_metrics)


def require_winner(data: StudyRecords) -> Winner:
    """The winner, or :class:`NoFeasibleConfigError` (exit 3) saying why there is none."""
    winner = find_winner(data)
    if winner is not None:
        return winner
    limits = describe_limits(data.limits_ms) if data.limits_ms else "its limits"
    if data.selection is not None:
        raise NoFeasibleConfigError(f"study {data.name!r} has no winner: {data.selection.verdict} ({limits})")
    raise NoFeasibleConfigError(f"study {data.name!r} has no trial that met {limits} yet")
