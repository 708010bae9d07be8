"""Load search on one live server: the highest throughput whose P99 stays within the limit.

Concurrency grows geometrically until the P99 limit breaks, throughput stops growing (saturation) or
the engine's own ceiling is reached, then bisects between the last good and the first bad level.
``measure(concurrency) -> BenchResult`` is injected: a real run against the trial's server, or the
sim engine's virtual-time prediction in benchmarks.

With a deadline (``time.monotonic()`` seconds), no level starts that is expected to end after it: the search
stops with what it has (``stop_reason = "deadline"``), so a study's last trial keeps its feasible levels
instead of being killed mid-level (on the H100 a trial that had held P99 at c=512 was lost that way).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

from autotune.metrics import BenchResult
from autotune.progress import NULL_PROGRESS, Progress
from autotune.records import LevelRecord

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


@dataclass(frozen=True)
class LevelResult:
    concurrency: int
    result: BenchResult
    p99_ms: float
    feasible: bool  # P99 within the limit, throughput measured, error rate within max_error_rate
    wall_s: float = 0.0  # the level's wall time, warm-up included (what a re-measurement at this level costs)

    def record(self) -> LevelRecord:
        r = self.result
        return LevelRecord(concurrency=self.concurrency, output_tok_s=r.output_tok_s, total_tok_s=r.total_tok_s,
                           request_s=r.request_s, p99_ms=self.p99_ms, feasible=self.feasible,
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
    return out


def _search(measure: Callable[[int], BenchResult], cfg: LoadSearchConfig, progress: Progress,
            out: LoadSearchResult, deadline: float | None, reserve_s: float) -> None:
    seen: dict[int, LevelResult] = {}
    walls: list[tuple[int, float]] = []

    def level(c: int) -> LevelResult:
        if c not in seen:
            if deadline is not None and walls and \
                    time.monotonic() + estimate_level_s(c, walls) + reserve_s > deadline:
                raise _OutOfTime
            started = time.monotonic()
            r = measure(c)
            wall_s = time.monotonic() - started
            walls.append((c, wall_s))
            p99 = r.p99_ms(cfg.metric)
            total = r.completed + r.failed
            ok = (r.completed > 0 and not math.isnan(p99) and p99 <= cfg.limit_ms
                  and not math.isnan(r.output_tok_s) and r.failed <= cfg.max_error_rate * total)
            lv = LevelResult(c, r, p99, ok, wall_s)
            seen[c] = lv
            out.levels.append(lv)
            progress.load_level(lv.record(), cfg.metric, cfg.limit_ms)
        return seen[c]

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
