from __future__ import annotations

import math
from dataclasses import replace

import pytest

from autotune.loadsearch import LoadSearchConfig, search_load
from autotune.metrics import RequestOutput, summarize


def fake_server(capacity_tok_s: float, base_ttft_s: float, knee: int):
    """Throughput grows with concurrency up to a capacity; TTFT explodes past the knee."""
    calls = []

    def measure(c: int):
        calls.append(c)
        tput = capacity_tok_s * c / (c + 32)
        ttft = base_ttft_s * (1 + max(0, c - knee) / 8)
        outs = [RequestOutput(True, 100, 100, ttft, (0.01,) * 99, ttft + 1.0, start_s=i * 0.01) for i in range(50)]
        r = summarize(outs, duration_s=1.0)
        return replace(r, output_tok_s=tput)
    return measure, calls


def test_grows_then_bisects_to_the_knee():
    measure, calls = fake_server(10_000, 0.1, knee=100)
    res = search_load(measure, LoadSearchConfig(limits_ms={"ttft": 200}, start_concurrency=8))
    assert calls[:5] == [8, 16, 32, 64, 128]
    assert res.best is not None and 100 <= res.best.concurrency <= 108
    assert res.best.p99_ms["ttft"] <= 200
    assert all(lv.p99_ms["ttft"] > 200 for lv in res.levels if lv.concurrency > res.best.concurrency)
    assert res.stop_reason == "limit"


def test_a_start_at_a_knee_found_before_steps_up_by_square_roots_to_twice_the_start():
    """The H200 pair: from the best knee so far (152), a doubling to 304 overshot every trial's knee (181-215) at
    the search's dearest level; steps of x1.41 up to twice the start land near the knee, then the walk doubles."""
    cfg = LoadSearchConfig(limits_ms={"ttft": 200})
    assert cfg.starting_at(8).near_growth is None  # the default start: no knee expected
    measure, calls = fake_server(10_000, 0.1, knee=190)
    res = search_load(measure, cfg.starting_at(152))
    assert calls[:3] == [152, 215, 181] and res.best is not None and 181 <= res.best.concurrency <= 198
    measure, calls = fake_server(10_000, 0.1, knee=1000)
    search_load(measure, cfg.starting_at(152))
    assert calls[:4] == [152, 215, 304, 608]


def test_saturation_stops_growth():
    measure, calls = fake_server(10_000, 0.05, knee=10_000)
    res = search_load(measure, LoadSearchConfig(limits_ms={"ttft": 500}, start_concurrency=8,
                                                saturation_gain=0.2, max_concurrency=4096))
    assert res.stop_reason == "saturated"
    assert max(calls) < 4096


def test_infeasible_everywhere_reports_no_best():
    measure, calls = fake_server(10_000, 5.0, knee=0)
    res = search_load(measure, LoadSearchConfig(limits_ms={"ttft": 100}, start_concurrency=8))
    assert res.best is None and res.stop_reason == "infeasible"
    assert 1 in calls


def test_all_failed_level_is_not_feasible():
    def measure(c):
        return summarize([RequestOutput(False, error="boom", error_kind="http_5xx")] * 4, 1.0)
    res = search_load(measure, LoadSearchConfig(limits_ms={"ttft": 100}, start_concurrency=4, max_levels=4))
    assert res.best is None
    assert all(math.isnan(lv.p99_ms["ttft"]) for lv in res.levels)


class _Clock:
    """A fake monotonic clock that a fake level advances by its concurrency in seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


def _timed_search(monkeypatch, deadline: float, reserve_s: float = 0.0):
    import autotune.loadsearch as ls
    clock = _Clock()
    monkeypatch.setattr(ls.time, "monotonic", clock.monotonic)
    measure, calls = fake_server(10_000, 0.1, knee=100)

    def timed(c: int):
        clock.now += c  # a level's wall time grows with its concurrency
        return measure(c)
    res = search_load(timed, LoadSearchConfig(limits_ms={"ttft": 200}, start_concurrency=8), deadline=deadline,
                      reserve_s=reserve_s)
    return res, calls


def test_no_level_starts_that_would_end_after_the_deadline(monkeypatch):
    # levels 8, 16, 32, 64 end at t=120; 128 would take ~128 s more
    res, calls = _timed_search(monkeypatch, deadline=200.0)
    assert calls == [8, 16, 32, 64] and res.stop_reason == "deadline"
    assert res.best is not None and res.best.concurrency == 64  # what was measured is kept
    res, calls = _timed_search(monkeypatch, deadline=250.0)
    assert 128 in calls and res.stop_reason in ("deadline", "limit")
    res, calls = _timed_search(monkeypatch, deadline=250.0, reserve_s=10.0)  # 120 + 128 + 10 > 250
    assert calls == [8, 16, 32, 64] and res.stop_reason == "deadline"
    res, calls = _timed_search(monkeypatch, deadline=1.0)  # the first level always runs
    assert calls == [8] and res.stop_reason == "deadline"


def test_level_time_estimate_takes_the_tightest_bound():
    from autotune.loadsearch import estimate_level_s
    # the H100 seed-profile trial (session 3): its requests at 256 / 512 took 38.3 / 69.1 s; at 1024, 128.6 s
    measured = [(256, 38.3), (512, 69.1)]
    assert estimate_level_s(1024, measured) == 69.1 * 2
    assert estimate_level_s(362, measured) == 38.3 * 362 / 256
    assert estimate_level_s(128, measured) == 38.3


def _ttft_level(ttft_ms: list[float], c: int):
    """A level at concurrency ``c`` whose requests had these TTFTs; throughput grows with ``c`` (no saturation)."""
    outs = [RequestOutput(True, 100, 100, t / 1000.0, (0.01,) * 99, t / 1000.0 + 1.0, start_s=i * 0.05)
            for i, t in enumerate(ttft_ms)]
    return replace(summarize(outs, duration_s=10.0), output_tok_s=100.0 * c)


def test_a_level_whose_interval_straddles_the_limit_is_measured_again():
    import numpy as np
    calls: list[int] = []
    rng = np.random.default_rng(3)

    def measure(c: int):
        calls.append(c)
        center = 100.0 if c < 32 else 392.0  # P99 about 494 ms at 32: just under the 500 ms limit
        return _ttft_level(list(center * rng.lognormal(0, 0.1, 400)), c)

    cfg = LoadSearchConfig(limits_ms={"ttft": 500}, start_concurrency=16, max_concurrency=32, max_extensions=2)
    res = search_load(measure, cfg)
    by_c = {lv.concurrency: lv for lv in res.levels}
    assert by_c[16].runs == 1 and calls.count(16) == 1  # far below: decided at once
    assert 2 <= by_c[32].runs == calls.count(32) <= 3  # straddled: extended, runs pooled
    assert by_c[32].result.completed == 400 * by_c[32].runs
    assert by_c[32].p99["ttft"].low <= by_c[32].p99["ttft"].value <= by_c[32].p99["ttft"].high


def test_the_knee_comes_from_all_levels_not_a_lucky_one():
    """P99 rises with load: a level measured under the limit above one measured over it is pooled with it."""
    from autotune.loadsearch import LevelResult, LoadSearchResult, fit_levels
    from autotune.stats import Interval

    cfg = LoadSearchConfig(limits_ms={"ttft": 500})

    def levels(p99_by_c: dict[int, float]) -> list[LevelResult]:
        return [LevelResult(c, _ttft_level([p] * 64, c), {"ttft": Interval(p, p, p, 0.9)}, p <= 500)
                for c, p in p99_by_c.items()]

    measured = {16: 200.0, 32: 300.0, 38: 560.0, 41: 460.0}  # 41 came out lucky, under 38
    assert LoadSearchResult(levels(measured)).best.concurrency == 41  # alone, it would carry the trial
    fitted = LoadSearchResult(fit_levels(levels(measured), cfg))
    assert [lv.fitted_p99_ms["ttft"] for lv in fitted.levels] == [200.0, 300.0, 510.0, 510.0]
    assert fitted.best.concurrency == 32  # 38 and 41 together hold 510 ms: over the limit
    fitted = LoadSearchResult(fit_levels(levels({**measured, 41: 420.0}), cfg))
    assert fitted.best.concurrency == 41  # together 490 ms: both within it, and 41 has the most throughput


# -- several limits at once ----------------------------------------------------------------------------------------
def _level(c: int, ttft_ms: list[float], itl_ms: list[float]):
    """A level at concurrency ``c``: request i has TTFT ttft_ms[i] and 20 gaps of itl_ms[i]."""
    outs = [RequestOutput(True, 100, 21, t / 1000.0, (g / 1000.0,) * 20, (t + 20 * g) / 1000.0, start_s=i * 0.05)
            for i, (t, g) in enumerate(zip(ttft_ms, itl_ms))]
    return replace(summarize(outs, duration_s=10.0), output_tok_s=100.0 * c)


def two_metric_server(ttft_knee: int, itl_knee: int):
    """TTFT and ITL each flat (100 ms, 20 ms) up to their own knee, then rising steeply."""
    calls: list[int] = []

    def measure(c: int):
        calls.append(c)
        ttft = 100.0 * (1 + max(0, c - ttft_knee) / 4)
        itl = 20.0 * (1 + max(0, c - itl_knee) / 4)
        return _level(c, [ttft] * 200, [itl] * 200)
    return measure, calls


def test_a_level_is_feasible_only_when_every_limit_holds():
    limits = {"ttft": 200.0, "itl": 40.0}  # each broken 4 levels of concurrency past its knee
    for ttft_knee, itl_knee in ((100, 40), (40, 100)):  # ITL breaks first, then TTFT
        measure, _ = two_metric_server(ttft_knee, itl_knee)
        res = search_load(measure, LoadSearchConfig(limits_ms=limits, start_concurrency=8))
        edge = min(ttft_knee, itl_knee) + 4  # the highest concurrency within both limits
        assert res.best is not None and edge / 1.2 <= res.best.concurrency <= edge, (ttft_knee, itl_knee)
        assert all(not lv.feasible for lv in res.levels if lv.concurrency > res.best.concurrency)
        for lv in res.levels:
            assert lv.feasible == all(lv.p99_ms[m] <= limit for m, limit in limits.items())
        rec = res.best.record()
        assert list(rec.p99) == ["ttft", "itl"] and rec.p99["itl"].value_ms == pytest.approx(res.best.p99_ms["itl"])
        assert not math.isnan(rec.p99["ttft"].fitted_ms) and not math.isnan(rec.p99["itl"].fitted_ms)
    # one limit alone lets the search go past the other's knee
    measure, _ = two_metric_server(100, 40)
    alone = search_load(measure, LoadSearchConfig(limits_ms={"ttft": 200.0}, start_concurrency=8))
    assert alone.best.concurrency >= 104 / 1.2


def test_extension_while_a_limit_is_undecided_and_none_is_broken():
    import numpy as np
    rng = np.random.default_rng(5)
    calls: list[int] = []

    def measure_with(itl_center: float, ttft_center: float):
        def measure(c: int):
            calls.append(c)
            return _level(c, list(ttft_center * rng.lognormal(0, 0.1, 400)),
                          list(itl_center * rng.lognormal(0, 0.1, 400)))
        return measure

    # ITL's P99 (about 50 x 1.26) straddles its 63 ms limit; TTFT far below its own: measured again
    cfg = LoadSearchConfig(limits_ms={"ttft": 500.0, "itl": 63.0}, start_concurrency=16, max_concurrency=16)
    res = search_load(measure_with(50.0, 100.0), cfg)
    assert res.levels[0].runs > 1 and calls.count(16) == res.levels[0].runs
    # the same ITL, but TTFT far over its limit: the level is over the limits at once
    calls.clear()
    cfg = LoadSearchConfig(limits_ms={"ttft": 50.0, "itl": 63.0}, start_concurrency=16, max_concurrency=16,
                           max_levels=1)
    res = search_load(measure_with(50.0, 100.0), cfg)
    assert res.levels[0].runs == 1 and not res.levels[0].feasible


def test_each_limit_gets_its_own_fit():
    """TTFT is fine everywhere; ITL came out lucky at 41, under 38: ITL's fit pools them, over its limit."""
    from autotune.loadsearch import LevelResult, LoadSearchResult, fit_levels, infeasible_reason
    from autotune.stats import Interval

    cfg = LoadSearchConfig(limits_ms={"ttft": 500.0, "itl": 50.0})
    itl_by_c = {16: 20.0, 32: 30.0, 38: 56.0, 41: 46.0}
    levels = [LevelResult(c, _level(c, [100.0] * 64, [itl] * 64),
                          {"ttft": Interval(100.0 + c, 100.0 + c, 100.0 + c, 0.9), "itl": Interval(itl, itl, itl, 0.9)},
                          itl <= 50) for c, itl in itl_by_c.items()]
    fitted = LoadSearchResult(fit_levels(levels, cfg))
    assert [lv.fitted_p99_ms["itl"] for lv in fitted.levels] == [20.0, 30.0, 51.0, 51.0]
    assert [lv.fitted_p99_ms["ttft"] for lv in fitted.levels] == [116.0, 132.0, 138.0, 141.0]
    assert fitted.best.concurrency == 32
    assert infeasible_reason(LoadSearchResult(fitted.levels[2:]), cfg) == \
        "P99 itl 51 ms above 50 ms even at concurrency 38"


def test_a_search_needs_a_known_limit():
    with pytest.raises(ValueError, match="at least one"):
        LoadSearchConfig(limits_ms={})
    with pytest.raises(ValueError, match="unknown latency metric 'latency'"):
        LoadSearchConfig(limits_ms={"latency": 5.0})


def test_the_run_to_run_spread_widens_a_level_interval_and_pooling_narrows_it():
    calls: list[int] = []

    def measure(c: int):
        calls.append(c)
        return _ttft_level([450.0] * 400, c)  # one run alone: 450 ms, its bootstrap interval a point

    cfg = LoadSearchConfig(limits_ms={"ttft": 500}, start_concurrency=32, max_concurrency=32, max_extensions=2,
                           p99_run_cv={"ttft": 0.172})
    lv = search_load(measure, cfg).levels[0]
    # 450 ms with a 17% run-to-run spread straddles 500 ms: measured three times, the interval of their mean
    assert calls == [32, 32, 32] and lv.runs == 3
    half = 1.6448536269514722 * 0.172 * 450 / 3 ** 0.5
    assert abs(lv.p99["ttft"].high - (450 + half)) < 1e-6 and lv.feasible  # then the point estimate decides
    assert search_load(measure, LoadSearchConfig(limits_ms={"ttft": 500}, start_concurrency=32,
                                                 max_concurrency=32)).levels[0].runs == 1  # no spread: decided


def test_only_the_knee_and_the_level_above_it_are_measured_again():
    """Every level below 45 straddles 500 ms under a 17% run-to-run spread; only the best one (38) and the one
    above it (45, 520 ms: over by its point estimate, straddling by its interval) get more runs."""
    calls: list[int] = []

    def measure(c: int):
        calls.append(c)
        p99_ms = 400.0 * (c / 8) ** 0.05 if c <= 40 else (520.0 if c <= 50 else 800.0)
        return _ttft_level([p99_ms] * 400, c)

    cfg = LoadSearchConfig(limits_ms={"ttft": 500}, start_concurrency=8, max_extensions=2, p99_run_cv={"ttft": 0.172})
    res = search_load(measure, cfg)
    runs = {lv.concurrency: lv.runs for lv in res.levels}
    assert runs == {8: 1, 16: 1, 32: 1, 64: 1, 45: 3, 38: 3}, runs
    assert calls.count(38) == calls.count(45) == 3 and calls[:4] == [8, 16, 32, 64]
    assert res.best.concurrency == 38 and res.stop_reason == "limit"
    # no spread, nothing straddles: every level is measured once
    calls.clear()
    assert {lv.runs for lv in search_load(measure, replace(cfg, p99_run_cv={})).levels} == {1}


def test_an_extension_that_would_end_after_the_deadline_does_not_start():
    import time as time_module
    calls: list[int] = []

    def measure(c: int):
        calls.append(c)
        time_module.sleep(0.05)
        return _ttft_level([450.0] * 400, c)

    cfg = LoadSearchConfig(limits_ms={"ttft": 500}, start_concurrency=32, max_concurrency=32, max_extensions=2,
                           p99_run_cv={"ttft": 0.172})
    res = search_load(measure, cfg, deadline=time_module.monotonic() + 0.08)
    assert calls == [32] and res.levels[0].runs == 1 and res.best is not None


def test_a_knee_that_an_extension_breaks_sends_the_search_below_it():
    """The walk took the top level on its first run (290 ms, straddling 300 ms); its extension pooled to 400 ms,
    over the limit. The search goes on below it instead of ending with no level within the limit."""
    calls: list[int] = []

    def measure(c: int):
        calls.append(c)
        if c == 64:
            p99_ms = 290.0 if calls.count(64) == 1 else 400.0
        else:
            p99_ms = 100.0 if c <= 40 else 350.0
        return _ttft_level([p99_ms] * 400, c)

    cfg = LoadSearchConfig(limits_ms={"ttft": 300}, start_concurrency=64, max_concurrency=64, max_extensions=1,
                           p99_run_cv={"ttft": 0.172})
    res = search_load(measure, cfg)
    runs = {lv.concurrency: lv.runs for lv in res.levels}
    assert runs[64] == 2 and calls[:2] == [64, 64]
    assert res.best is not None and res.best.concurrency <= 40 and res.stop_reason == "limit", runs
    assert not any(lv.feasible for lv in res.levels if lv.concurrency > 40)
