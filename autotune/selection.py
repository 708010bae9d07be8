"""Winner selection: every finalist measured the same way, a gain stated with its confidence interval, and
"equal within noise" when that is the truth.

The finalists (the top trials and both baselines) are re-measured ``repeats`` times each on fresh servers, with
the same step-down rule; with a deadline, time left after the trials buys more of them, a whole round of the
compared finalists at a time (``autotune.study.spare_rounds``). Only finalists measured that way are ranked: one
cut short by the deadline is named *unconfirmed* and no claim rests on it. A trial's own server was fresh too: its chosen level, carried to the
knee like a re-measurement, counts as the first of the finalist's runs. So every finalist is judged by
1 + ``repeats`` fresh-server runs, and on an H200, where a restart and one level cost about 95 s, one
re-measurement each (the default) buys what two did before at half the GPU time. The price is the winner's
curse: the top trials were chosen for their search figures, so theirs are optimistic where a baseline's are not.
The decision benchmark measures what that costs (docs/results/decision-quality.md): 2 false gain claims of 15,
both in one of the 40 seeds of its knee-bound setup, 0 of 13 with two re-measurements and the trial's run left out.

**What is compared: throughput at the limit, one estimate per fresh-server run.** Finalists settle at different
loads (their knees differ, and a noisy re-measurement steps one down), so their throughputs at those loads are
not comparable: at an H200's run-to-run P99 TTFT spread (17%) a baseline stepped down by one high draw looked
13% slower than a configuration truly 6% faster than it (docs/results/decision-quality.md). Each run's
throughput is therefore carried to that run's own knee along the trial's load curve: the search's levels, made
non-decreasing in P99 and throughput, are shifted by the run's P99 over the curve's P99 at its load (a server's
latency moves as a whole from one start to the next), and the shifted curve's crossing of the limit, within the
loads the search measured, is the run's knee (a run already over the limit at the lowest of them is carried below
it at the curve's mean slope, at most to half that load: a trial that started at the best knee so far may have
measured nothing below its chosen level). So a run whose P99 came out high carries its throughput lower,
and the spread of the knees joins the spread of the throughputs in the comparison.

**The gain's interval: Student's t on logs with the run-to-run spread pooled over the finalists.** Two or three
repeats per finalist leave a pairwise (Welch) interval with one or two degrees of freedom (t = 6.3 at 90% for
one); the relative run-to-run spread is a property of the engine and the card, alike for every finalist, so it
is pooled over all of them (one degree of freedom per repeat beyond each finalist's first). On real GPUs the
interval is never narrower than the noise floor, the spread between fresh servers that a few repeats cannot
estimate. With no finalist measured twice (``--repeats 0``) nothing estimates the spread: t with no degrees of
freedom bounds nothing, so there is no interval and no claim (the floor is a least width, not an estimate). A
finalist whose every fresh server failed measured nothing there: it is named, and no gain or claim rests on it.

**Simultaneous over the finalists compared.** The winner is the best of several, so its gains are the largest of
several differences: with five finalists truly equal, intervals that each held 90% of the time alone stated a gain
over a baseline "beyond noise" in 20% of studies, 4.9% with joint ones (benchmarks/selection_bias.py). With three
or more finalists the intervals are therefore Tukey-Kramer's, wide enough that all the pairwise differences among
the compared finalists hold together at the confidence level (the studentized range's quantile over the square
root of 2, in place of Student's t, which it equals for two): a claim rests on the whole comparison, not on one
pair picked after the fact. A comparison with a control (Dunnett's) or with the best (Hsu's) would be narrower,
but it does not hold here: the control would be the winner, picked as the best measured, and with every finalist
truly equal the winner's largest difference from another is the range of them all, which is what Tukey's holds.

**The recommendation.** Finalists the best one does not beat beyond the interval are *equal within noise*. Of
those whose mean also lies within one run's spread of the best's (the pooled spread, at least the noise floor),
the one with the fewest flags changed from vLLM's defaults is recommended; a simpler equal measured further
below is named but not recommended, since an interval that is wide for want of repeats is no evidence that it
is as fast.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
# Student's t quantile, t.ppf(p, dof) as stdtrit(dof, p): scipy.special alone, not scipy.stats, which would add a
# second to every command's start
from scipy.special import ndtri, stdtrit

from autotune.flags import changed_flags, deploy_flags
from autotune.loadsearch import LoadSearchConfig
from autotune.records import GainRecord, Measurement, Remeasurement, ServeLoadRecord
from autotune.stats import increasing_fit

__all__ = ["Candidate", "Selection", "LeftOutTrial", "select_winner", "gain_over", "flags_changed", "LoadCurve",
           "RunSpread", "tok_s_stats", "serve_load"]


@dataclass(frozen=True)
class LoadCurve:
    """A trial's load-search levels as curves over log concurrency, each made non-decreasing (the P99 of every
    limited metric, and output tok/s), for carrying a run at one load to its knee."""

    log_concurrency: np.ndarray
    log_output_tok_s: np.ndarray
    log_p99_ms: Mapping[str, np.ndarray]

    @classmethod
    def from_levels(cls, levels: list[tuple[int, float, Mapping[str, float]]],
                    runs: list[int] | None = None) -> LoadCurve | None:
        """From (concurrency, output tok/s, P99 by metric) levels, each weighted by its ``runs`` pooled (equal
        weights without them); None with fewer than one usable level."""
        weights = runs if runs is not None else [1] * len(levels)
        usable = sorted(((c, t, p, max(1, w)) for (c, t, p), w in zip(levels, weights)
                         if c > 0 and t > 0 and all(v > 0 and math.isfinite(v) for v in p.values())),
                        key=lambda level: level[0])
        if not usable:
            return None
        x = np.log([c for c, _, _, _ in usable])
        w = [w for _, _, _, w in usable]
        return cls(x, increasing_fit(x, np.log([t for _, t, _, _ in usable]), w),
                   {m: increasing_fit(x, np.log([p[m] for _, _, p, _ in usable]), w) for m in usable[0][2]})

    def at_limit_tok_s(self, concurrency: int, run: Measurement, limits_ms: Mapping[str, float]) -> float:
        """The run's throughput carried to its own knee: the load where the curve of every limited metric,
        shifted by the run's P99 over the curve's at ``concurrency``, meets its limit (no higher than the
        loads searched; below them, see :func:`_last_crossing`), and the throughput curve's ratio between that load
        and ``concurrency``."""
        x_knee = self.log_knee(concurrency, run, limits_ms)
        if math.isnan(x_knee):
            return math.nan
        ratio = _interp_below(x_knee, self.log_concurrency, self.log_output_tok_s) - \
            _interp_below(math.log(concurrency), self.log_concurrency, self.log_output_tok_s)
        return run.output_tok_s * math.exp(float(ratio))

    def log_knee(self, concurrency: int, run: Measurement, limits_ms: Mapping[str, float]) -> float:
        """The log load where the run's shifted curves meet their limits (see :meth:`at_limit_tok_s`); NaN where
        the run has no P99 of a limited metric."""
        x_run = math.log(concurrency)
        x_knee = self.log_concurrency[-1]
        for metric, limit in limits_ms.items():
            p99 = run.p99_ms.get(metric, math.nan)
            if metric not in self.log_p99_ms or not p99 > 0:
                return math.nan
            curve = self.log_p99_ms[metric]
            shifted = curve + (math.log(p99) - float(np.interp(x_run, self.log_concurrency, curve)))
            x_knee = min(x_knee, _last_crossing(self.log_concurrency, shifted, math.log(limit)))
        return x_knee

    def carried(self, concurrency: int, run: Measurement, to_concurrency: int) -> Measurement:
        """The run's figures expected at ``to_concurrency``: its throughput times the throughput curve's ratio
        between the two loads (as :meth:`at_limit_tok_s` carries it), and each P99 along its metric's curve shifted
        through the run's P99 (as :meth:`log_knee` shifts it); below the loads searched, continued at the mean
        slope."""
        x_run, x_to = math.log(concurrency), math.log(to_concurrency)
        ratio = _interp_below(x_to, self.log_concurrency, self.log_output_tok_s) - \
            _interp_below(x_run, self.log_concurrency, self.log_output_tok_s)
        p99_ms = {metric: p99 * math.exp(_interp_below(x_to, self.log_concurrency, curve)
                                         - float(np.interp(x_run, self.log_concurrency, curve)))
                  for metric, p99 in run.p99_ms.items() if (curve := self.log_p99_ms.get(metric)) is not None}
        return Measurement(run.output_tok_s * math.exp(ratio), p99_ms)

    def within_reach(self, concurrency: int, run: Measurement, limits_ms: Mapping[str, float]) -> bool:
        """Whether the run's knee lies no further below the lowest load searched than the search's own resolution
        (its bisection stops at loads 1.2x apart): a knee further down is an extrapolation, not a measurement."""
        x_knee = self.log_knee(concurrency, run, limits_ms)
        return not math.isnan(x_knee) and x_knee >= self.log_concurrency[0] - _SEARCH_RESOLUTION


# How far below its lowest searched load a run over the limit there is carried: one step of the search's growth.
# A trial that started at the best knee so far may have no level below its chosen one, and a fresh server's run
# over the limit there still has a knee, a little lower. How much lower, the curve's mean slope over the loads
# searched tells: on the H200 pair a noisy first segment was flat (P99 TTFT 470 ms at 152, 479 at 215), and its
# slope carried a run 22% over the limit to half the load.
_MAX_LOG_BELOW = math.log(2.0)
_SEARCH_RESOLUTION = math.log(LoadSearchConfig.min_bisect_ratio)  # loads closer than this are not told apart


def _interp_below(x_query: float, x: np.ndarray, y: np.ndarray) -> float:
    """Piecewise-linear y at ``x_query``, continued below x0 at the mean slope over all of x (flat with a single
    point): one segment's slope is as noisy as its two levels."""
    if x_query >= x[0] or x.size < 2:
        return float(np.interp(x_query, x, y))
    return float(y[0] - (x[0] - x_query) * (y[-1] - y[0]) / (x[-1] - x[0]))


def _last_crossing(x: np.ndarray, y: np.ndarray, y_limit: float) -> float:
    """The largest x where the non-decreasing piecewise-linear y(x) is at most ``y_limit``, within [x0, x-1];
    where y0 is already over it, continued below x0 at the mean slope over x, at most ``_MAX_LOG_BELOW``."""
    if y[-1] <= y_limit:
        return float(x[-1])
    if y[0] > y_limit:
        if x.size < 2 or y[-1] <= y[0]:
            return float(x[0])
        slope = (y[-1] - y[0]) / (x[-1] - x[0])
        return float(max(x[0] - _MAX_LOG_BELOW, x[0] - (y[0] - y_limit) / slope))
    j = int(np.nonzero(y <= y_limit)[0][-1])
    if y[j + 1] == y[j]:
        return float(x[j])
    return float(x[j] + (y_limit - y[j]) / (y[j + 1] - y[j]) * (x[j + 1] - x[j]))


@dataclass(frozen=True)
class RunSpread:
    """The run-to-run spread of log throughput at the limit, pooled over the finalists, with its degrees of
    freedom (0: no finalist has two runs)."""

    log_std: float
    dof: int

    @classmethod
    def pooled(cls, samples: list[list[float]]) -> RunSpread:
        squares, dof = 0.0, 0
        for values in samples:
            logs = np.log([v for v in values if v > 0 and math.isfinite(v)])
            if logs.size > 1:
                squares += float(((logs - logs.mean()) ** 2).sum())
                dof += logs.size - 1
        return cls(math.sqrt(squares / dof) if dof else 0.0, dof)


@dataclass
class Candidate:
    trial_number: int
    flags: dict[str, Any]
    concurrency: int | None
    search_output_tok_s: float  # from the load search (one measurement)
    search_p99_ms: Mapping[str, float]  # each limited metric's P99, by metric
    baseline: str = ""  # "", vllm-defaults, seed-profile
    vllm_serve_cmd: str = ""
    repeats: list[Measurement] = field(default_factory=list)
    # The trial's other feasible load levels below ``concurrency``, highest first: (concurrency, tok/s, P99s).
    # A re-measurement over a limit steps down to the next one (the knee was marginal).
    lower_levels: list[tuple[int, float, Mapping[str, float]]] = field(default_factory=list)
    stepped_down_from: list[int] = field(default_factory=list)
    # The re-measurements at the loads stepped down from, each with its load: they count in the comparison like
    # every fresh-server run (dropping the runs that broke the limit would keep only the low draws).
    earlier_runs: list[tuple[int, Measurement]] = field(default_factory=list)
    remeasure_s: float = 0.0  # expected wall seconds of one re-measurement (server start and stop, one level)
    curve: LoadCurve | None = None  # the trial's levels, for carrying a run to its knee (None: taken as measured)
    # The trial's own fresh server, as the search left it: (concurrency, output tok/s, P99s) of the chosen level.
    # Counted in the comparison as the first of the finalist's fresh-server runs (see the module). Not moved by
    # a step-down: it is carried to the knee from its own load.
    search_level: tuple[int, float, Mapping[str, float]] | None = None
    # Its trial measured its load levels and none met the limits (not a server that failed): a baseline so is in
    # the comparison as 0 tok/s, the winner's gain over it unbounded.
    met_no_limit: bool = False

    def step_down(self, min_bisect_ratio: float = LoadSearchConfig.min_bisect_ratio) -> bool:
        """Move below a level whose re-measurement broke a limit: to the geometric midpoint between it and the
        next lower feasible level when that lies ``min_bisect_ratio`` or more below (the search's own bisection
        rule; only from a searched level, so a failed midpoint costs one server start), else to that level."""
        if self.concurrency is None:
            return False
        below = self.lower_levels[0][0] if self.lower_levels else 0
        searched = not math.isnan(self.search_output_tok_s)
        if searched and below and self.concurrency / below >= min_bisect_ratio and self.concurrency - below > 1:
            self.move_to(min(max(int(round(math.sqrt(self.concurrency * below))), below + 1), self.concurrency - 1))
        elif below:
            self.move_to(below)
        else:
            return False
        return True

    def move_to(self, concurrency: int) -> None:
        """Re-measure at a lower concurrency from now on; the re-measurements made at this one move to
        ``earlier_runs`` (they still count) and the repeat count starts again. A searched level brings its search
        figures; a midpoint has none."""
        self.stepped_down_from.append(int(self.concurrency))
        self.earlier_runs.extend((int(self.concurrency), m) for m in self.repeats)
        while self.lower_levels and self.lower_levels[0][0] > concurrency:
            self.lower_levels.pop(0)
        if self.lower_levels and self.lower_levels[0][0] == concurrency:
            _, self.search_output_tok_s, self.search_p99_ms = self.lower_levels.pop(0)
        else:
            self.search_output_tok_s, self.search_p99_ms = math.nan, {m: math.nan for m in self.search_p99_ms}
        self.concurrency = concurrency
        self.repeats = []

    def remeasurement(self) -> Remeasurement:
        """What the study stores of this candidate's re-measurements."""
        assert self.concurrency is not None
        return Remeasurement(self.trial_number, self.concurrency, tuple(self.stepped_down_from), tuple(self.repeats),
                             tuple(self.earlier_runs))

    @property
    def remeasurements_failed(self) -> bool:
        """Every fresh-server re-measurement at its final load failed (a server that failed measured nothing)."""
        return bool(self.repeats) and all(math.isnan(m.output_tok_s) for m in self.repeats)

    def measurements(self) -> list[Measurement]:
        """The runs at the final load: its fresh-server re-measurements there and, where the search measured that
        load (a midpoint it did not measure has no search figures), the trial's own run at it; none but the failed
        re-measurements when every one of them failed."""
        if self.concurrency is None:
            return []
        if self.remeasurements_failed:
            return list(self.repeats)  # its re-measurement's server failed: no figure of it stands
        searched = [Measurement(self.search_output_tok_s, self.search_p99_ms)] \
            if math.isfinite(self.search_output_tok_s) else []
        return [*searched, *self.repeats]  # in the order they ran, as at_limit_tok_s lists them

    def stats(self, noise_floor: float = 0.0, confidence: float = 0.9) -> dict[str, float]:
        """Output tok/s over the measurements, as :func:`tok_s_stats` summarizes them."""
        return tok_s_stats([m.output_tok_s for m in self._measured()], noise_floor, confidence)

    def at_limit_tok_s(self, limits_ms: Mapping[str, float]) -> list[float]:
        """What the comparison counts: the trial's own run (its chosen level) and each fresh-server re-measurement,
        each carried to its own knee along the trial's load curve (see the module)."""
        if self.concurrency is None:
            return []
        if self.curve is None:
            return [m.output_tok_s for _, m in self._counted()]
        return [self.curve.at_limit_tok_s(concurrency, m, limits_ms) for concurrency, m in self._counted()]

    def _counted(self) -> list[tuple[int, Measurement]]:
        """The runs the comparison counts, each with its load: once re-measured, the trial's own run and every
        fresh-server run with a throughput, those at loads stepped down from included; before, the search's
        figure."""
        assert self.concurrency is not None
        fresh = [*self.earlier_runs, *((self.concurrency, m) for m in self.repeats)]
        if not fresh:  # the search's figure alone
            return [(self.concurrency, m) for m in self._measured()]
        runs = [(c, m) for c, m in fresh if not math.isnan(m.output_tok_s)]
        if runs and self.search_level is not None:
            concurrency, output_tok_s, p99_ms = self.search_level
            runs.insert(0, (concurrency, Measurement(output_tok_s, p99_ms)))
        return runs

    def knee_concurrencies(self, limits_ms: Mapping[str, float]) -> list[float]:
        """The load each counted run was carried to (its knee, in the order of :meth:`at_limit_tok_s`): where the
        throughput at the limit lies, which a finalist over a limit at its own load serves only below it."""
        if self.concurrency is None or self.curve is None:
            return []
        return [math.exp(x) for c, m in self._counted() if not math.isnan(x := self.curve.log_knee(c, m, limits_ms))]

    def at_limit_mean_tok_s(self, limits_ms: Mapping[str, float]) -> float:
        values = [v for v in self.at_limit_tok_s(limits_ms) if math.isfinite(v)]
        return float(np.mean(values)) if values else 0.0

    def p99_values_ms(self, metric: str) -> list[float]:
        """The P99s of ``metric`` over the measurements that ``stats`` counts (NaN where one was not measured)."""
        return [m.p99_ms.get(metric, math.nan) for m in self._measured()]

    def p99_mean_ms(self, metric: str) -> float:
        """The mean P99 of ``metric`` over the measurements (NaN when none has one)."""
        values = [v for v in self.p99_values_ms(metric) if not math.isnan(v)]
        return float(np.mean(values)) if values else math.nan

    def _measured(self) -> list[Measurement]:
        """The measurements with a throughput (a server that did not start has none)."""
        return [m for m in self.measurements() if not math.isnan(m.output_tok_s)]

    def confirmed(self, repeats: int) -> bool:
        """Measured as every finalist must be: its trial's own run and ``repeats`` fresh-server measurements at its
        final load (with ``repeats`` 0: the trial's run alone)."""
        return self.concurrency is not None and (len(self.repeats) >= repeats if repeats > 0 else True)

    def meets(self, limits_ms: Mapping[str, float]) -> bool:
        """Throughput measured, and every limit met by its metric's mean P99 over the runs at its final load: the
        fresh-server re-measurements there and, where the final load is one the search measured, the trial's own
        run at it (one fresh server's high draw does not outvote the search's; a finalist that stepped down to
        its lowest searched level and drew high there once was otherwise counted as missing the limit)."""
        s = self.stats()
        if self.concurrency is None or not (s["n"] > 0 and s["mean"] > 0):
            return False
        for metric, limit in limits_ms.items():
            if not self.p99_mean_ms(metric) <= limit:  # NaN: not measured
                return self._knees_within_reach(limits_ms)
        return True

    def compared_by_carried_runs(self, limits_ms: Mapping[str, float]) -> bool:
        """Over a limit at its final load, yet compared by its runs carried to their knees below it rather than as
        0 tok/s: it has its trial's curve to carry them along (without it, a run over the limit cannot be carried)
        and a throughput at the limit from one run at least. :func:`gain_over` states a baseline's gain so, and the
        joint intervals count such a baseline among the differences they hold over: both ask this one question, so
        no baseline is given an interval that the family leaves out, or counted without one."""
        return (self.curve is not None and not self.meets(limits_ms)
                and any(math.isfinite(v) and v > 0 for v in self.at_limit_tok_s(limits_ms)))

    def _knees_within_reach(self, limits_ms: Mapping[str, float]) -> bool:
        """Over a limit at its final load, a finalist still meets it at a lower one when every run's knee lies
        within the search's resolution below its lowest level (its throughput at the limit is then estimated like
        any other's): a trial that
        started at the best knee so far has no level below its own, and one high fresh-server draw there counted
        it as 0 tok/s, an unbounded "gain" over it (4 of 20 seeds of the decision benchmark's setup A)."""
        if self.curve is None or self.concurrency is None or not self.repeats:
            return False
        return all(self.curve.within_reach(c, m, limits_ms) for c, m in self._counted())


def serve_load(winner: Candidate, limits_ms: Mapping[str, float], p99_run_cv: Mapping[str, float],
               confidence: float = 0.9) -> ServeLoadRecord | None:
    """The highest concurrency, at most the winner's, at which one more run's P99s all stay within their limits with
    probability ``0.5 + confidence / 2``: each limited metric with a spread gets an equal share of the rest
    (Bonferroni: two limits near their margins at once, each held 19 runs in 20, would both hold in as few as 18
    runs of 20 were their draws independent, 0.95 x 0.95).

    The chosen load is the knee, the right load to compare configurations at: its P99s lie near their limits, and
    with a P99 that moves by ``p99_run_cv`` (log sd) from one fresh server to the next, a deployment's runs there
    break a limit often. A future run's P99 at the chosen load is the geometric mean of the n runs there times a
    lognormal factor of log sd ``cv * sqrt(1 + 1/n)`` (its spread and that of the mean), so it stays within
    ``limit / exp(z * cv * sqrt(1 + 1/n))`` in that share of runs; the serve load is where the trial's curve, shifted
    through the expected P99 (as :meth:`LoadCurve.log_knee` shifts a run's), meets those margins, rounded down. None
    where nothing is to add: no curve, no load, no P99 measured, or no run-to-run spread for any limited metric (the
    noiseless sim repeats its figures: the chosen load is the serve load); None too where the curve does not bring a
    P99 down to its margin (one level, a flat curve): it cannot say where that load is."""
    curve, concurrency = winner.curve, winner.concurrency
    spread = {metric: cv for metric in limits_ms if (cv := p99_run_cv.get(metric, 0.0)) > 0}
    if curve is None or concurrency is None or not spread:
        return None
    z = float(ndtri(1 - (0.5 - confidence / 2) / len(spread)))
    expected_ms, margins_ms = {}, {}
    for metric, limit in limits_ms.items():
        runs = [v for v in winner.p99_values_ms(metric) if v > 0 and math.isfinite(v)]
        if not runs:
            return None
        expected_ms[metric] = math.exp(float(np.mean(np.log(runs))))
        margins_ms[metric] = limit / math.exp(z * spread.get(metric, 0.0) * math.sqrt(1 + 1 / len(runs)))
    mean_tok_s = winner.stats()["mean"]
    if not mean_tok_s > 0:
        return None
    at_chosen = Measurement(mean_tok_s, expected_ms)
    x_serve = curve.log_knee(concurrency, at_chosen, margins_ms)
    if math.isnan(x_serve):
        return None
    # exp(log(c)) may land a hair below the integer c
    serve = max(1, min(concurrency, math.floor(math.exp(x_serve) * (1 + 1e-9))))
    there = curve.carried(concurrency, at_chosen, serve)
    # A single level, a P99 curve flat below the chosen load, or a margin further down than the curve is carried
    # (_MAX_LOG_BELOW): the curve does not bring the P99 down to its margin, so it cannot say where the limits hold
    # in that share of runs, and its lowest load is no such place.
    if any(not there.p99_ms.get(metric, math.inf) <= margin * (1 + 1e-9) for metric, margin in margins_ms.items()):
        return None
    return ServeLoadRecord(concurrency=serve, runs_within_limits=0.5 + confidence / 2,
                           output_tok_s=there.output_tok_s, p99_ms=dict(there.p99_ms), p99_run_cv=spread,
                           below_searched_loads=bool(math.log(serve) < curve.log_concurrency[0] - _SEARCH_RESOLUTION))


def tok_s_stats(values: list[float], noise_floor: float = 0.0, confidence: float = 0.9) -> dict[str, float]:
    """mean, std, min, max, n, and the half width of the mean's t interval (never below ``noise_floor`` x mean; NaN
    from one value: t with no degrees of freedom is unbounded, and a floor alone is no interval)."""
    tput = np.array(values, dtype=float)
    if tput.size == 0:
        return {"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0, "n": 0, "half_width": 0.0}
    mean = float(tput.mean())
    std = float(tput.std(ddof=1)) if tput.size > 1 else 0.0
    t_half = float(stdtrit(tput.size - 1, 0.5 + confidence / 2)) * std / math.sqrt(tput.size) \
        if tput.size > 1 else math.nan
    return {"mean": mean, "std": std, "min": float(tput.min()), "max": float(tput.max()), "n": int(tput.size),
            "half_width": max(t_half, noise_floor * mean) if tput.size > 1 else math.nan}


@dataclass(frozen=True)
class LeftOutTrial:
    """A trial that another process was still running when the search ended and that the final comparison goes
    without: it did not finish in the time the run waited for it."""

    number: int
    baseline: str  # its baseline's name, else empty
    why: str  # what became of it, one clause

    def describe(self) -> str:
        return f"trial {self.number}" + (f" ({self.baseline})" if self.baseline else "") + f", {self.why}"


@dataclass
class Selection:
    winner: Candidate | None  # the recommended configuration
    candidates: list[Candidate]
    gains: dict[str, GainRecord]  # the winner's over each baseline, by baseline name
    verdict: str  # one sentence for people
    equal_within_noise: list[int] = field(default_factory=list)  # trials the winner does not beat beyond noise
    unconfirmed: list[int] = field(default_factory=list)  # finalists not measured like the others (no claim)
    best_measured: int | None = None  # the finalist measured highest at the limit, which the others are judged against
    # False where no finalist was measured twice (--repeats 0): nothing bounds a gain, so none is beaten beyond noise
    # (equal_within_noise lists them all) and none is claimed equal either
    spread_measured: bool = True


def flags_changed(flags: dict[str, Any]) -> int:
    """How many of ``flags`` a deployment would change from vLLM's defaults (a measurement-only flag such as
    ``--load-format dummy``, common to every trial of a weightless study, is not one of them)."""
    return len(changed_flags(deploy_flags(flags)[0]))


@functools.cache
def critical_value(finalists: int, dof: int, confidence: float) -> float:
    """The multiple of a difference's standard error that bounds the interval at ``confidence``, simultaneous over
    every pair of ``finalists`` (Tukey-Kramer: the studentized range's quantile over the square root of 2); for two,
    Student's t. scipy.stats is imported here only: it adds a second to a command's start."""
    if finalists <= 2:
        return float(stdtrit(dof, 0.5 + confidence / 2))
    from scipy.stats import studentized_range
    return float(studentized_range.ppf(confidence, finalists, dof)) / math.sqrt(2)


def gain_over(winner: Candidate, baseline: Candidate, limits_ms: Mapping[str, float], noise_floor: float,
              confidence: float = 0.9, spread: RunSpread | None = None, finalists: int = 2) -> GainRecord:
    """The winner's gain in throughput at the limit over ``baseline``, with Student's t interval on the log ratio
    of their means from the pooled run-to-run ``spread`` (by default pooled over the two), never narrower than
    ``noise_floor``; with ``finalists`` compared beyond two, Tukey-Kramer's interval over all of them (see the
    module). A baseline with no load within the limits counts as 0 tok/s; one that met them in its search
    but not at its final load in re-measurement is compared by its runs carried to their knees below it, not as 0:
    three high draws in a row of a P99 that moves 17% from run to run are not a configuration that cannot serve
    (the decision benchmark, setup A, seeds 26 and 28: unbounded "gains" over a seed profile truly as fast).
    Significant when the whole interval lies above 0."""
    w_values = [v for v in winner.at_limit_tok_s(limits_ms) if math.isfinite(v) and v > 0]
    b_values = [v for v in baseline.at_limit_tok_s(limits_ms) if math.isfinite(v) and v > 0]
    spread = spread or RunSpread.pooled([w_values, b_values])
    meets = baseline.meets(limits_ms) and bool(b_values)
    w_mean = float(np.mean(w_values)) if w_values else 0.0
    b_mean = float(np.mean(b_values)) if meets or baseline.compared_by_carried_runs(limits_ms) else 0.0
    diff = w_mean - b_mean
    if b_mean <= 0 or w_mean <= 0:
        pct_low = pct_high = math.inf if w_mean > 0 else math.nan
        significant = w_mean > 0
    elif not spread.dof:
        # No finalist has a second run: nothing measures the run-to-run spread, and Student's t with no degrees of
        # freedom is unbounded (the noise floor is a least width, not an estimate: on an H200 one run moves about
        # 5% between fresh servers, docs/results/h200-reproducibility.md)
        pct_low, pct_high, significant = -math.inf, math.inf, False
    else:
        t_half = (critical_value(max(finalists, 2), spread.dof, confidence) * spread.log_std
                  * math.sqrt(1 / len(w_values) + 1 / len(b_values)))
        half = max(t_half, math.log1p(noise_floor))
        log_ratio = math.log(w_mean / b_mean)
        pct_low, pct_high = math.expm1(log_ratio - half) * 100.0, math.expm1(log_ratio + half) * 100.0
        significant = log_ratio - half > 0
    return GainRecord(baseline_trial=baseline.trial_number, baseline_output_tok_s=b_mean, baseline_meets_limit=meets,
                      gain_output_tok_s=diff, gain_pct=diff / b_mean * 100.0 if b_mean > 0 else math.inf,
                      gain_pct_low=pct_low, gain_pct_high=pct_high, confidence=confidence, significant=significant,
                      finalists_compared=max(finalists, 2))


def select_winner(candidates: list[Candidate], limits_ms: Mapping[str, float], repeats: int,
                  noise_floor: float = 0.0, confidence: float = 0.9, finished_trials: int | None = None,
                  left_out: tuple[LeftOutTrial, ...] = ()) -> Selection:
    """``finished_trials``: the study's finished trials (records.count_finished; None: not known), which the
    candidates alone cannot tell when there are none: no trial finished, or none met the limits. ``left_out``: the
    trials other processes did not finish in time, named in the verdict (any of them might have won)."""
    selection = _select(candidates, limits_ms, repeats, noise_floor, confidence, finished_trials)
    if left_out:
        selection.verdict += "; left out of the comparison: " + "; ".join(t.describe() for t in left_out)
    return selection


def _select(candidates: list[Candidate], limits_ms: Mapping[str, float], repeats: int, noise_floor: float,
            confidence: float, finished_trials: int | None) -> Selection:
    unconfirmed = [c for c in candidates if c.concurrency is not None and not c.confirmed(repeats)]
    confirmed = [c for c in candidates if c.confirmed(repeats) and c.meets(limits_ms)]
    names = ", ".join(_name(c) for c in unconfirmed)
    if not confirmed:
        meeting = [c for c in unconfirmed if c.meets(limits_ms)]
        if not meeting:
            return Selection(None, candidates, {}, _why_no_winner(candidates, finished_trials),
                             unconfirmed=[c.trial_number for c in unconfirmed])
        best = max(meeting, key=lambda c: c.at_limit_mean_tok_s(limits_ms))
        return Selection(best, candidates, {}, f"no finalist was measured as the others: {names} unconfirmed "
                                               f"(fewer than {repeats} re-measurements); {_name(best)} is the best "
                                               "figure seen, with no claim over the others",
                         unconfirmed=[c.trial_number for c in unconfirmed])
    spread = RunSpread.pooled([c.at_limit_tok_s(limits_ms) for c in confirmed])

    def mean(c: Candidate) -> float:
        return c.at_limit_mean_tok_s(limits_ms)

    best = max(confirmed, key=mean)
    # A finalist whose every fresh server failed measured nothing: it missed no limit, so no gain is stated over it
    # (counted as 0 tok/s, the gain would be "unbounded", and a "beats every baseline" would rest on a server that did
    # not start).
    failed = [c for c in candidates if c.concurrency is not None and c.remeasurements_failed]
    left_aside = (f"; unconfirmed (cut short, no claim rests on them): {names}" if unconfirmed else "") + \
        ("; fresh-server re-measurements failed (no claim rests on them): " + ", ".join(_name(c) for c in failed)
         if failed else "")

    # The baselines the winner's gains are stated over: measured as the finalists were, or unable to meet the limits
    # at any load (0 tok/s).
    baselines = [c for c in candidates if c.baseline and c not in failed and (c.confirmed(repeats) or c.met_no_limit)]
    # The family the joint intervals hold over: the finalists that met the limits, and every baseline compared by an
    # interval although it did not (over a limit in re-measurement, its runs carried below its load; see gain_over):
    # each is one more difference the winner, the best of them, is judged against.
    compared = len(confirmed) + sum(1 for c in baselines if c.compared_by_carried_runs(limits_ms))

    def gains_of(winner: Candidate) -> dict[str, GainRecord]:
        return {c.baseline: gain_over(winner, c, limits_ms, noise_floor, confidence, spread, compared)
                for c in baselines if c is not winner}

    if len(confirmed) > 1 and not spread.dof:  # one run each (--repeats 0): see gain_over
        verdict = ("no finalist was measured twice, so the run-to-run spread is unknown and no claim is made "
                   f"(--repeats 0): {_name(best)} is the best figure seen")
        return Selection(best, candidates, gains_of(best), verdict + left_aside, [c.trial_number for c in confirmed],
                         [c.trial_number for c in unconfirmed], best.trial_number, spread_measured=False)
    equals = [c for c in confirmed
              if c is best or not gain_over(best, c, limits_ms, noise_floor, confidence, spread,
                                            compared).significant]
    # Simplicity is bought only where the measured price is within one run's spread (see the module).
    margin = max(noise_floor, -math.expm1(-spread.log_std))
    near = [c for c in equals if mean(c) >= mean(best) * (1.0 - margin)]
    winner = min(near, key=lambda c: (flags_changed(c.flags), -mean(c)))
    gains = gains_of(winner)
    if len(equals) > 1:
        verdict = f"equal within noise: {', '.join(_name(c) for c in equals)}; recommended: {_name(winner)}, "
        if len(near) > 1:
            verdict += f"the fewest flags changed from vLLM's defaults ({flags_changed(winner.flags)}) of those " \
                       f"measured within {margin:.1%} (a run's spread) of the best"
        else:
            verdict += "the best measured"
        simpler = [c for c in equals if c not in near and flags_changed(c.flags) < flags_changed(winner.flags)]
        if simpler:
            verdict += " (" + ", ".join(f"{_name(c)} measured {1 - mean(c) / mean(best):.1%} lower"
                                        for c in simpler) + ")"
    elif len(candidates) == 1:  # e.g. a --timeout that left room for one trial, or --top-k 0 and one baseline
        verdict = f"{_name(winner)} is the only finalist: nothing to compare"
    elif len(confirmed) == 1:
        verdict = f"{_name(winner)} is the only configuration that met the limit as measured: nothing to compare"
    elif winner.baseline:
        verdict = f"the baseline '{winner.baseline}' is the best configuration found, beyond noise"
    elif gains and all(g.significant for g in gains.values()):
        verdict = "the tuned configuration beats every baseline beyond noise"
    elif gains:
        weak = ", ".join(k for k, g in gains.items() if not g.significant)
        verdict = f"the tuned configuration is not better than {weak} beyond noise"
    else:
        verdict = "no baseline was measured as the finalists were"
    return Selection(winner, candidates, gains, verdict + left_aside,
                     [c.trial_number for c in equals if len(equals) > 1], [c.trial_number for c in unconfirmed],
                     best.trial_number)


def _why_no_winner(candidates: list[Candidate], finished_trials: int | None) -> str:
    """The verdict when no finalist met the limits: what kept every one out."""
    if finished_trials == 0:
        return "no trial has finished"
    searched = [c for c in candidates if c.concurrency is not None]  # a load within the limits in its trial
    if not searched:  # with --top-k 0 only the baselines are finalists: other trials may have met the limits
        return "no finalist met the limits at any load its trial measured"
    failed = [c for c in searched if c.remeasurements_failed]
    if failed:  # a server that failed measured nothing: no limit was broken there
        return (f"the fresh-server re-measurements of {', '.join(_name(c) for c in failed)} failed"
                + ("" if len(failed) == len(searched) else "; the other finalists missed the limits"))
    if any(not (c.repeats or c.earlier_runs) for c in searched):
        # never re-measured (--repeats 0, or cut by the deadline): its trial met the limits by the P99s fitted
        # over its levels, and the run at its load was over one
        return "no finalist met the limits by the P99s measured at its load"
    if len(searched) == 1:
        return f"{_name(searched[0])} met the limits in its trial but not in re-measurement on fresh servers"
    return (f"none of the {len(searched)} finalists that met the limits in their trials met them in "
            "re-measurement on fresh servers")


def _name(c: Candidate) -> str:
    return f"trial {c.trial_number}" + (f" ({c.baseline})" if c.baseline else "")
