from __future__ import annotations

import math

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
        from dataclasses import replace
        return replace(r, output_tok_s=tput)
    return measure, calls


def test_grows_then_bisects_to_the_knee():
    measure, calls = fake_server(10_000, 0.1, knee=100)
    res = search_load(measure, LoadSearchConfig(metric="ttft", limit_ms=200, start_concurrency=8))
    assert calls[:5] == [8, 16, 32, 64, 128]
    assert res.best is not None and 100 <= res.best.concurrency <= 108
    assert res.best.p99_ms <= 200
    assert all(lv.p99_ms > 200 for lv in res.levels if lv.concurrency > res.best.concurrency)
    assert res.stop_reason == "limit"


def test_saturation_stops_growth():
    measure, calls = fake_server(10_000, 0.05, knee=10_000)
    res = search_load(measure, LoadSearchConfig(metric="ttft", limit_ms=500, start_concurrency=8,
                                                saturation_gain=0.2, max_concurrency=4096))
    assert res.stop_reason == "saturated"
    assert max(calls) < 4096


def test_infeasible_everywhere_reports_no_best():
    measure, calls = fake_server(10_000, 5.0, knee=0)
    res = search_load(measure, LoadSearchConfig(metric="ttft", limit_ms=100, start_concurrency=8))
    assert res.best is None and res.stop_reason == "infeasible"
    assert 1 in calls


def test_all_failed_level_is_not_feasible():
    def measure(c):
        return summarize([RequestOutput(False, error="boom", error_kind="http_5xx")] * 4, 1.0)
    res = search_load(measure, LoadSearchConfig(metric="ttft", limit_ms=100, start_concurrency=4, max_levels=4))
    assert res.best is None
    assert all(math.isnan(lv.p99_ms) for lv in res.levels)
