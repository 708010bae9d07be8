"""Load search on one live server: the highest throughput whose P99 stays within the limit.

Concurrency grows geometrically until the P99 limit breaks, throughput stops growing (saturation) or
the engine's own ceiling is reached, then bisects between the last good and the first bad level.

Each level's P99 comes with its confidence interval (:func:`autotune.stats.p99_interval`). A level whose
interval straddles the limit is measured again, and its runs pooled, up to ``max_extensions`` times before its
side of the limit is decided (then by the point estimate). When the search ends, the knee comes from all the
levels: P99 rises with load, so the P99s are fitted by the closest non-decreasing curve in concurrency
(:func:`autotune.stats.increasing_fit`), and the best level is the one with the most throughput whose fitted
P99 meets the limit: a single lucky level above a slower one cannot carry the trial.
``measure(concurrency) -> BenchResult`` is injected: a real run against the trial's server, or the
sim engine's virtual-time prediction in benchmarks.

With a deadline (``time.monotonic()`` seconds), no level starts that is expected to end after it: the search
stops with what it has (``stop_reason = "deadline"``), so a study's last trial keeps its feasible levels
instead of being killed mid-level (on the H100 a trial that had held P99 at c=512 was lost that way).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from autotune.metrics import BenchResult, pool
from autotune.progress import NULL_PROGRESS, Progress
from autotune.records import LevelRecord
from autotune.stats import Interval, increasing_fit, p99_interval

__all__ = ["LoadSearchConfig", "LevelResult", "LoadSearchResult", "search_load", "estimate_level_s"]


@dataclass(frozen=True)
class LoadSearchConfig:
    metric: str  # ttft | tpot | itl | e2el
    limit_ms: float
    start_concurrency: int = 8
    max_concurrency: int = 1024
    growth: float = 2.0
    min_bisect_ratio: float = 1.2  # stop bisecting when first_bad / last_good is below this
    max_levels: int = 10
    saturation_gain: float = 0.03  # a level that adds less throughput than this is saturated
    max_error_rate: float = 0.01  # a level with more failed requests than this is not feasible
    confidence: float = 0.9  # of each level's P99 interval
    max_extensions: int = 2  # a level whose P99 interval straddles the limit is measured again this often at most


@dataclass(frozen=True)
class LevelResult:
    concurrency: int
    result: BenchResult  # its runs pooled
    p99: Interval  # of the study's metric, over all the level's runs
    # P99 within the limit (by its interval, else its point estimate after the extensions; once the search has
    # ended, by the fit over all levels), throughput measured, error rate within max_error_rate
    feasible: bool
    wall_s: float = 0.0  # the level's wall time, warm-up included (what a re-measurement at this level costs)
    runs: int = 1
    fitted_p99_ms: float = math.nan  # the non-decreasing fit over the trial's levels (set when the search ends)

    @property
    def p99_ms(self) -> float:
        return self.p99.value

    def record(self) -> LevelRecord:
        r = self.result
        return LevelRecord(concurrency=self.concurrency, output_tok_s=r.output_tok_s, total_tok_s=r.total_tok_s,
                           request_s=r.request_s, p99_ms=self.p99_ms, p99_low_ms=self.p99.low,
                           p99_high_ms=self.p99.high, p99_fitted_ms=self.fitted_p99_ms, runs=self.runs,
                           feasible=self.feasible,
                           p99_ttft_ms=r.ttft_ms.p99, p99_tpot_ms=r.tpot_ms.p99, p99_itl_ms=r.itl_ms.p99,
                           p99_e2el_ms=r.e2el_ms.p99, completed=r.completed, failed=r.failed,
                           duration_s=r.duration_s, wall_s=self.wall_s, status=r.status)


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
    out.levels = fit_levels(out.levels, cfg)
    return out


def fit_levels(levels: list[LevelResult], cfg: LoadSearchConfig) -> list[LevelResult]:
    """The levels with their P99 fitted non-decreasing in concurrency (weighted by their measured requests),
    and each one's feasibility decided by the fit."""
    known = [lv for lv in levels if not math.isnan(lv.p99_ms)]
    if len(known) < 2:
        return levels
    fitted = dict(zip((lv.concurrency for lv in known),
                      increasing_fit([lv.concurrency for lv in known], [lv.p99_ms for lv in known],
                                     [max(1, lv.result.completed) for lv in known])))
    return [replace(lv, fitted_p99_ms=float(fitted[lv.concurrency]),
                    feasible=_usable(lv.result, cfg) and bool(fitted[lv.concurrency] <= cfg.limit_ms))
            if lv.concurrency in fitted else lv for lv in levels]


def _usable(r: BenchResult, cfg: LoadSearchConfig) -> bool:
    """Throughput measured and few enough failed requests."""
    total = r.completed + r.failed
    return r.completed > 0 and not math.isnan(r.output_tok_s) and r.failed <= cfg.max_error_rate * total


def _within_limit(p99: Interval, limit_ms: float) -> bool | None:
    """Which side of the limit a level's P99 lies on; None while its interval straddles the limit."""
    if math.isnan(p99.value):
        return False
    if math.isnan(p99.low):  # no interval (too few values): the point estimate decides
        return bool(p99.value <= limit_ms)
    if p99.high <= limit_ms:
        return True
    if p99.low > limit_ms:
        return False
    return None


def _search(measure: Callable[[int], BenchResult], cfg: LoadSearchConfig, progress: Progress,
            out: LoadSearchResult, deadline: float | None, reserve_s: float) -> None:
    seen: dict[int, LevelResult] = {}
    walls: list[tuple[int, float]] = []

    def level(c: int) -> LevelResult:
        if c in seen:
            return seen[c]
        runs: list[BenchResult] = []
        while True:
            if deadline is not None and walls and \
                    time.monotonic() + estimate_level_s(c, walls) + reserve_s > deadline:
                if not runs:
                    raise _OutOfTime
                break  # an extension would run past the deadline: decide on the runs made
            started = time.monotonic()
            runs.append(measure(c))
            walls.append((c, time.monotonic() - started))
            r = pool(runs)
            values_s, times_s = r.values_and_times_s(cfg.metric)
            p99 = p99_interval(values_s * 1000.0, times_s, confidence=cfg.confidence)
            side = _within_limit(p99, cfg.limit_ms)
            if side is not None or len(runs) > cfg.max_extensions:
                break
        within = side if side is not None else bool(p99.value <= cfg.limit_ms)
        run_walls = [w for cc, w in walls if cc == c]
        lv = LevelResult(c, r, p99, within and _usable(r, cfg), wall_s=sum(run_walls) / len(run_walls),
                         runs=len(runs))
        seen[c] = lv
        out.levels.append(lv)
        progress.load_level(lv.record(), cfg.metric, cfg.limit_ms)
        return lv

    ceiling = max(1, cfg.max_concurrency)
    c = min(max(1, cfg.start_concurrency), ceiling)
    good: LevelResult | None = None
    bad: LevelResult | None = None
    # Grow.
    while len(out.levels) < cfg.max_levels:
        lv = level(c)
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
        c = min(ceiling, max(c + 1, int(math.ceil(c * cfg.growth))))
    if bad is None:
        out.stop_reason = "max_levels"
        return
    # Nothing good yet: halve down towards concurrency 1.
    while good is None and len(out.levels) < cfg.max_levels and bad.concurrency > 1:
        lv = level(max(1, bad.concurrency // 2))
        if lv.feasible:
            good = lv
        else:
            bad = lv
    if good is None:
        out.stop_reason = "infeasible"
        return
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
    out.stop_reason = "limit"
