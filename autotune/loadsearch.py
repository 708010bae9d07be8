"""Load search on one live server: the highest throughput whose P99s stay within their limits.

A study has one P99 limit or several (``ttft=500,itl=50``); a level is within them only when every limit holds.
Concurrency grows geometrically until a limit breaks, throughput stops growing (saturation) or the engine's own
ceiling is reached, then bisects between the last good and the first bad level.

Each level's P99 of each limited metric comes with its confidence interval (:func:`autotune.stats.p99_interval`).
A level is over the limits as soon as one interval lies above its limit, within them when every interval lies
under its limit; otherwise (an interval straddles its limit, none is clearly over) its point estimates decide
the way the search goes. When the walk ends, the knee comes from all the levels: P99 rises with load, so each
metric's P99s are fitted by the closest non-decreasing curve in concurrency (:func:`autotune.stats.increasing_fit`),
and the best level is the one with the most throughput whose fitted P99s all meet their limits: a single lucky
level above a slower one cannot carry the trial. Then the best level and the one above it, where their interval
straddles a limit, are measured again and their runs pooled, up to ``max_extensions`` times each, before their
side is decided. Extensions go only there: on an H200 (P99 TTFT <= 500 ms) extending every straddling level the
walk passed took 250 of a search's 528 s, for levels whose side the fit over their neighbours settles anyway.
``measure(concurrency) -> BenchResult`` is injected: a real run against the trial's server, or the
sim engine's virtual-time prediction in benchmarks.

With a deadline (``time.monotonic()`` seconds), no level starts that is expected to end after it: the search
stops with what it has (``stop_reason = "deadline"``), so a study's last trial keeps its feasible levels
instead of being killed mid-level (on the H100 a trial that had held P99 at c=512 was lost that way).
"""
from __future__ import annotations

import math
import time
from statistics import NormalDist
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Callable

from autotune.metrics import LATENCY_METRICS, BenchResult, describe_limits, pool
from autotune.progress import NULL_PROGRESS, Progress
from autotune.records import HostCpuRecord, LevelRecord, P99Record
from autotune.stats import Interval, increasing_fit, p99_interval

__all__ = ["LoadSearchConfig", "LevelResult", "LoadSearchResult", "search_load", "estimate_level_s",
           "infeasible_reason", "StopSearch", "p99_limit_sides"]


@dataclass(frozen=True)
class LoadSearchConfig:
    limits_ms: Mapping[str, float]  # P99 limit by metric (ttft, tpot, itl, e2el): every one must hold
    start_concurrency: int = 8
    max_concurrency: int = 1024
    growth: float = 2.0
    # The walk's step up within a factor of two of its start (None: ``growth``). A trial that starts at a knee
    # found before expects its own knee near it, and levels far above a knee cost the most: on an H200, 59-69 s a
    # run at concurrency 256-304 against 40 s at 152, where a doubling from 152 overshot every trial's knee.
    near_growth: float | None = None
    min_bisect_ratio: float = 1.2  # stop bisecting when first_bad / last_good is below this
    max_levels: int = 10
    saturation_gain: float = 0.03  # a level that adds less throughput than this is saturated
    max_error_rate: float = 0.01  # a level with more failed requests than this is not feasible
    confidence: float = 0.9  # of each level's P99 interval
    # The knee's level and the one above it, while a P99 interval straddles its limit, are measured again this often at
    # most. One: replayed on the H200 pair's recorded runs (docs/results/h200-reproducibility.md), a second extension
    # of each changed no knee and cost 40-46 s a run; the fresh-server re-measurements of the final comparison sample
    # the server-to-server spread that runs on one server cannot.
    max_extensions: int = 1
    # Relative run-to-run spread (standard deviation / mean) of each metric's P99 at a fixed load on one server:
    # an interval from one run's requests does not see it (a server's state drifts between runs), so no
    # interval is narrower than this spread over the pooled runs. Empty: none (the deterministic sim engine).
    p99_run_cv: Mapping[str, float] = field(default_factory=dict)

    def starting_at(self, start: int) -> LoadSearchConfig:
        """This search from ``start``: a start above the configured one is a knee expected near (one found by an
        earlier trial, or the sim's), so up to twice the start the walk steps by the square root of ``growth``."""
        return replace(self, start_concurrency=start,
                       near_growth=math.sqrt(self.growth) if start > self.start_concurrency else None)

    def __post_init__(self) -> None:
        if not self.limits_ms:
            raise ValueError("a load search needs at least one P99 limit")
        unknown = sorted(set(self.limits_ms) - set(LATENCY_METRICS))
        if unknown:
            raise ValueError(f"unknown latency metric {unknown[0]!r}")


@dataclass(frozen=True)
class LevelResult:
    concurrency: int
    result: BenchResult  # its runs pooled
    p99: Mapping[str, Interval]  # of each limited metric, over all the level's runs
    # Every P99 within its limit (by its interval, else its point estimate after the extensions; once the search
    # has ended, by the fit over all levels), throughput measured, error rate within max_error_rate
    feasible: bool
    wall_s: float = 0.0  # the level's wall time, warm-up included (what a re-measurement at this level costs)
    runs: int = 1
    # each limited metric's non-decreasing fit over the trial's levels (set when the search ends, NaN without one)
    fitted_p99_ms: Mapping[str, float] = field(default_factory=dict)

    @property
    def p99_ms(self) -> dict[str, float]:
        return {metric: p99.value for metric, p99 in self.p99.items()}

    def judged_p99_ms(self, metric: str) -> float:
        """The P99 of ``metric`` that the level's feasibility rests on: the fit where there is one, else as
        measured (as :attr:`autotune.records.P99Record.judged_ms` reads it back)."""
        return self.fitted_p99_ms.get(metric, self.p99[metric].value)

    def record(self) -> LevelRecord:
        r = self.result
        p99 = {metric: P99Record(value_ms=i.value, low_ms=i.low, high_ms=i.high,
                                 fitted_ms=self.fitted_p99_ms.get(metric, math.nan))
               for metric, i in self.p99.items()}
        return LevelRecord(concurrency=self.concurrency, output_tok_s=r.output_tok_s, total_tok_s=r.total_tok_s,
                           request_s=r.request_s, p99=p99, runs=self.runs, feasible=self.feasible,
                           p99_ttft_ms=r.ttft_ms.p99, p99_tpot_ms=r.tpot_ms.p99, p99_itl_ms=r.itl_ms.p99,
                           p99_e2el_ms=r.e2el_ms.p99, completed=r.completed, failed=r.failed,
                           duration_s=r.duration_s, wall_s=self.wall_s, status=r.status,
                           host_cpu=HostCpuRecord.from_json(h) if (h := r.extra.get("host_cpu")) else None)


@dataclass
class LoadSearchResult:
    levels: list[LevelResult] = field(default_factory=list)
    stop_reason: str = ""

    @property
    def best(self) -> LevelResult | None:
        feasible = [lv for lv in self.levels if lv.feasible]
        return max(feasible, key=lambda lv: lv.result.output_tok_s) if feasible else None

    @property
    def lowest(self) -> LevelResult | None:
        return min(self.levels, key=lambda lv: lv.concurrency) if self.levels else None


class _OutOfTime(Exception):
    pass


class StopSearch(Exception):
    """Raised by ``measure`` to end the search with the levels measured so far (``stop_reason`` = ``reason``):
    the level it was asked for is not recorded."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def estimate_level_s(concurrency: int, measured: list[tuple[int, float]]) -> float:
    """Wall seconds a level at ``concurrency`` should take, from earlier (concurrency, seconds) levels.

    A level sends prompts in proportion to its concurrency, so it lasts about prompts-per-slot x E2E, and
    E2E grows with concurrency: a lower level takes at most as long as a higher one, and a higher one at most
    (c / c_lower) times as long (throughput does not fall as concurrency grows). The tightest bound wins."""
    return min(seconds * max(1.0, concurrency / c) for c, seconds in measured)


def search_load(measure: Callable[[int], BenchResult], cfg: LoadSearchConfig,
                progress: Progress = NULL_PROGRESS, deadline: float | None = None,
                reserve_s: float = 0.0) -> LoadSearchResult:
    """``reserve_s``: time kept free before the deadline (the server's teardown). The first level always runs."""
    out = LoadSearchResult()
    try:
        _search(measure, cfg, progress, out, deadline, reserve_s)
    except _OutOfTime:
        out.stop_reason = "deadline"
    except StopSearch as e:
        out.stop_reason = e.reason
    out.levels = fit_levels(out.levels, cfg)
    return out


def fit_levels(levels: list[LevelResult], cfg: LoadSearchConfig) -> list[LevelResult]:
    """The levels with each limited metric's P99 fitted non-decreasing in concurrency (weighted by their runs:
    a level's P99 moves from one run to the next by the server's state, about as much whatever its number of
    requests), and each one's feasibility decided by the fits: every fitted P99 within its limit. A metric measured
    at fewer than two levels has no fit; its measured P99 stands."""
    fits: dict[str, dict[int, float]] = {}
    for metric in cfg.limits_ms:
        known = [lv for lv in levels if not math.isnan(lv.p99[metric].value)]
        if len(known) >= 2:
            fitted = increasing_fit([lv.concurrency for lv in known], [lv.p99[metric].value for lv in known],
                                    [lv.runs for lv in known])
            fits[metric] = {lv.concurrency: float(f) for lv, f in zip(known, fitted)}
    out = []
    for lv in levels:
        fitted_ms = {metric: fit[lv.concurrency] for metric, fit in fits.items() if lv.concurrency in fit}
        if not fitted_ms:
            out.append(lv)
            continue
        lv = replace(lv, fitted_p99_ms=fitted_ms)
        out.append(replace(lv, feasible=_usable(lv.result, cfg) and all(
            lv.judged_p99_ms(metric) <= limit for metric, limit in cfg.limits_ms.items())))
    return out


def infeasible_reason(result: LoadSearchResult, cfg: LoadSearchConfig) -> str:
    """Why no level met the limits, said of the lowest level tried: the limits it broke, else its failures."""
    lowest = result.lowest
    if lowest is None:
        return f"{describe_limits(cfg.limits_ms)}: no level was measured"
    over = []
    for metric, limit in cfg.limits_ms.items():
        judged_ms = lowest.judged_p99_ms(metric)
        if math.isnan(judged_ms):
            over.append(f"no P99 {metric} measured")
        elif judged_ms > limit:
            over.append(f"P99 {metric} {judged_ms:,.0f} ms above {limit:g} ms")
    r = lowest.result
    what = ", ".join(over) or f"{r.failed} of {r.completed + r.failed} requests failed"
    return f"{what} even at concurrency {lowest.concurrency}"


def _usable(r: BenchResult, cfg: LoadSearchConfig) -> bool:
    """Throughput measured and few enough failed requests."""
    total = r.completed + r.failed
    return r.completed > 0 and not math.isnan(r.output_tok_s) and r.failed <= cfg.max_error_rate * total


def _p99_intervals(r: BenchResult, cfg: LoadSearchConfig, runs: int) -> dict[str, Interval]:
    """Each limited metric's P99 over the level's ``runs`` pooled runs, with its interval: the block bootstrap's
    over the requests, never narrower than the run-to-run spread (``p99_run_cv``) of a mean of ``runs`` runs."""
    z = NormalDist().inv_cdf(0.5 + cfg.confidence / 2)
    out = {}
    for metric in cfg.limits_ms:
        values_s, times_s = r.values_and_times_s(metric)
        iv = p99_interval(values_s * 1000.0, times_s, confidence=cfg.confidence)
        half = z * cfg.p99_run_cv.get(metric, 0.0) * iv.value / math.sqrt(runs)
        if half > 0 and not math.isnan(iv.value):
            low = iv.value - half if math.isnan(iv.low) else min(iv.low, iv.value - half)
            high = iv.value + half if math.isnan(iv.high) else max(iv.high, iv.value + half)
            iv = Interval(iv.value, low, high, iv.confidence)
        out[metric] = iv
    return out


def _within_limit(p99: Interval, limit_ms: float) -> bool | None:
    """Which side of its limit a P99 lies on; None while its interval straddles the limit."""
    if math.isnan(p99.value):
        return False
    if math.isnan(p99.low):  # no interval (too few values): the point estimate decides
        return bool(p99.value <= limit_ms)
    if p99.high <= limit_ms:
        return True
    if p99.low > limit_ms:
        return False
    return None


def _within_limits(p99: Mapping[str, Interval], limits_ms: Mapping[str, float]) -> bool | None:
    """Over the limits as soon as one P99 is over its limit; within them when every one is within; else None."""
    sides = [_within_limit(p99[metric], limit) for metric, limit in limits_ms.items()]
    if False in sides:
        return False
    return None if None in sides else True


def p99_limit_sides(r: BenchResult, limits_ms: Mapping[str, float], confidence: float,
                    p99_run_cv: Mapping[str, float], runs: int = 1) -> dict[str, tuple[Interval, bool | None]]:
    """The P99 of each limited metric over ``runs`` pooled runs (metrics.pool) with its interval, and which side of
    its limit it lies on (None: the interval straddles it), as a load level of a study judges it."""
    cfg = LoadSearchConfig(limits_ms=limits_ms, confidence=confidence, p99_run_cv=p99_run_cv)
    return {metric: (iv, _within_limit(iv, limits_ms[metric])) for metric, iv in _p99_intervals(r, cfg, runs).items()}


class _Levels:
    """The levels of one search: each measured once as the search reaches it, and measured again (its runs
    pooled) only by :meth:`extend`."""

    def __init__(self, measure: Callable[[int], BenchResult], cfg: LoadSearchConfig, progress: Progress,
                 out: LoadSearchResult, deadline: float | None, reserve_s: float) -> None:
        self.measure, self.cfg, self.progress, self.out = measure, cfg, progress, out
        self.deadline, self.reserve_s = deadline, reserve_s
        self.runs: dict[int, list[BenchResult]] = {}
        self.walls: list[tuple[int, float]] = []

    def fits_in_time(self, c: int) -> bool:
        return self.deadline is None or not self.walls or \
            time.monotonic() + estimate_level_s(c, self.walls) + self.reserve_s <= self.deadline

    def level(self, c: int) -> LevelResult:
        """The level at ``c``, measured once if it was not yet."""
        for lv in self.out.levels:
            if lv.concurrency == c:
                return lv
        if not self.fits_in_time(c):
            raise _OutOfTime
        return self._run(c)

    def extend(self, c: int) -> LevelResult:
        """The level at ``c`` measured once more, its runs pooled; it keeps its place among the levels."""
        return self._run(c)

    def _run(self, c: int) -> LevelResult:
        started = time.monotonic()
        runs = self.runs.setdefault(c, [])
        runs.append(self.measure(c))
        self.walls.append((c, time.monotonic() - started))
        r = pool(runs)
        p99 = _p99_intervals(r, self.cfg, len(runs))
        side = _within_limits(p99, self.cfg.limits_ms)
        within = side if side is not None else all(p99[m].value <= limit for m, limit in self.cfg.limits_ms.items())
        run_walls = [w for cc, w in self.walls if cc == c]
        lv = LevelResult(c, r, p99, within and _usable(r, self.cfg), wall_s=sum(run_walls) / len(run_walls),
                         runs=len(runs))
        at = [i for i, old in enumerate(self.out.levels) if old.concurrency == c]
        if at:
            self.out.levels[at[0]] = lv
        else:
            self.out.levels.append(lv)
        self.progress.load_level(lv.record(), self.cfg.limits_ms)
        return lv


def _extend_at_the_knee(levels: _Levels, cfg: LoadSearchConfig) -> None:
    """Measure again, while its P99 interval straddles a limit, the level the trial's result rests on (the best
    by the fit over all levels) and the level just above it (which could take its place): the extensions go to
    the knee, both sides of it, and not to every level the search passed on its way there, each of which the fit
    over its neighbours already steadies. Each level gets at most ``max_extensions`` more runs; none starts that
    would end after the deadline."""
    for _ in range(2 * cfg.max_extensions):
        fitted = LoadSearchResult(fit_levels(levels.out.levels, cfg))
        best = fitted.best
        floor = best.concurrency if best is not None else 0
        above = min((lv for lv in fitted.levels if lv.concurrency > floor), key=lambda lv: lv.concurrency,
                    default=None)
        undecided = [lv for lv in (best, above) if lv is not None and lv.runs <= cfg.max_extensions
                     and _usable(lv.result, cfg) and _within_limits(lv.p99, cfg.limits_ms) is None]
        if not undecided or not levels.fits_in_time(undecided[0].concurrency):
            return
        levels.extend(undecided[0].concurrency)


def _search(measure: Callable[[int], BenchResult], cfg: LoadSearchConfig, progress: Progress,
            out: LoadSearchResult, deadline: float | None, reserve_s: float) -> None:
    levels = _Levels(measure, cfg, progress, out, deadline, reserve_s)
    _walk(levels.level, cfg, out)
    if out.stop_reason == "requests_failed":
        return
    # An extension can move the knee (the best level turns out over a limit): the walk then goes on below it,
    # from the fitted knee, and the new knee is extended in turn. Each round measures at least one more run.
    for _ in range(cfg.max_levels):
        runs_before = sum(lv.runs for lv in out.levels)
        _extend_at_the_knee(levels, cfg)
        _narrow_to_the_fitted_knee(levels.level, cfg, out)
        if sum(lv.runs for lv in out.levels) == runs_before:
            return


def _narrow_to_the_fitted_knee(level: Callable[[int], LevelResult], cfg: LoadSearchConfig,
                               out: LoadSearchResult) -> None:
    """Halve down or bisect, as the walk does, between the best level by the fit and the first level above it
    that the fit puts over a limit."""
    fitted = LoadSearchResult(fit_levels(out.levels, cfg))
    good = fitted.best
    floor = good.concurrency if good is not None else 0
    bad = min((lv for lv in fitted.levels if lv.concurrency > floor and not lv.feasible),
              key=lambda lv: lv.concurrency, default=None)
    if bad is None:
        return
    count = len(out.levels)
    reason = _narrow(level, cfg, out, good, bad)
    if len(out.levels) > count:
        out.stop_reason = reason


def _walk(level: Callable[[int], LevelResult], cfg: LoadSearchConfig, out: LoadSearchResult) -> None:
    """Grow, then bisect, one run per level, each level's side taken from its interval where that decides and
    from its point estimate where it straddles."""
    ceiling = max(1, cfg.max_concurrency)
    c = min(max(1, cfg.start_concurrency), ceiling)
    good: LevelResult | None = None
    bad: LevelResult | None = None
    # Grow.
    while len(out.levels) < cfg.max_levels:
        lv = level(c)
        if lv.result.completed == 0 and lv.result.failed > 0:
            # Every request failed: the server is broken (a stalled stream, errors), not slow. Lower levels would
            # only fail the same way, each at the cost of its requests' timeouts.
            out.stop_reason = "requests_failed"
            return
        if not lv.feasible:
            bad = lv
            break
        if good is not None and lv.result.output_tok_s < good.result.output_tok_s * (1 + cfg.saturation_gain):
            out.stop_reason = "saturated"
            good = lv if lv.result.output_tok_s > good.result.output_tok_s else good
            return
        good = lv
        if c >= ceiling:
            out.stop_reason = "ceiling"
            return
        near_growth = cfg.near_growth if c < 2 * cfg.start_concurrency else None
        # near steps round to nearest, so that two of them land on twice the start (152, 215, 304)
        step = int(round(c * near_growth)) if near_growth else int(math.ceil(c * cfg.growth))
        c = min(ceiling, max(c + 1, step))
    if bad is None:
        out.stop_reason = "max_levels"
        return
    out.stop_reason = _narrow(level, cfg, out, good, bad)


def _narrow(level: Callable[[int], LevelResult], cfg: LoadSearchConfig, out: LoadSearchResult,
            good: LevelResult | None, bad: LevelResult) -> str:
    """From a level over the limits (and the best level under them, if any): halve down until one is within
    them, then bisect between the two. Returns the stop reason."""
    # Nothing good yet: halve down towards concurrency 1.
    while good is None and len(out.levels) < cfg.max_levels and bad.concurrency > 1:
        lv = level(max(1, bad.concurrency // 2))
        if lv.feasible:
            good = lv
        else:
            bad = lv
    if good is None:
        return "infeasible"
    # Bisect between the last good and the first bad level (geometric midpoint).
    while len(out.levels) < cfg.max_levels and bad.concurrency / good.concurrency >= cfg.min_bisect_ratio \
            and bad.concurrency - good.concurrency > 1:
        mid = int(round(math.sqrt(good.concurrency * bad.concurrency)))
        mid = min(max(mid, good.concurrency + 1), bad.concurrency - 1)
        lv = level(mid)
        if lv.feasible:
            good = lv
        else:
            bad = lv
    return "limit"
