from __future__ import annotations

import math

import pytest

from autotune.metrics import RequestOutput, chunk_gaps_s, steady_window, summarize


def req(start, e2e, tokens=11, ttft=1.0):
    itl = ((e2e - ttft) / (tokens - 1),) * (tokens - 1)
    return RequestOutput(True, 100, tokens, ttft, itl, e2e, start_s=start)


def test_all_failed_is_nan_not_zero():
    r = summarize([RequestOutput(False, error="x", error_kind="http_5xx")] * 3, 10.0)
    assert r.status == "failed" and r.failed == 3 and r.errors == {"http_5xx": 3}
    assert math.isnan(r.output_tok_s) and math.isnan(r.ttft_ms.p99)
    assert summarize([], 1.0).status == "empty"


def test_percentiles_and_tpot():
    outs = [req(0, 11.0, ttft=1.0 + i / 100) for i in range(100)]
    r = summarize(outs, 11.0)
    assert r.ttft_ms.p50 == pytest.approx(1495, rel=1e-3)
    assert r.tpot_ms.mean == pytest.approx(1000 * (11.0 - r.ttft_ms.mean / 1000) / 10, rel=0.01)


def test_steady_window_counts_the_warmup_requests_still_running():
    # two slots at ~1 token/s each; the warm-up request w2 still decodes during the window's first half
    w1, w2 = req(0, 10), req(0, 15)
    m1, m2, m3 = req(10, 10), req(15, 10), req(20, 10)
    window = (10.0, 20.0)  # first to last measured start: both slots busy throughout
    everyone = summarize([m1, m2, m3], 20.0, window=window, window_outputs=[w1, w2, m1, m2, m3])
    measured_only = summarize([m1, m2, m3], 20.0, window=window)
    assert everyone.output_tok_s == pytest.approx(2.0, rel=0.02)  # two busy slots
    assert measured_only.output_tok_s == pytest.approx(1.64, rel=0.02)  # the undercount fixed here
    assert everyone.ttft_ms.p99 == measured_only.ttft_ms.p99  # latency: measured requests only


def test_steady_window_excludes_the_drain():
    # two slots busy from t=0 to t=20 at 1 token/s each; then one straggler drains alone until t=50
    outs = [req(0, 10), req(0, 10), req(10, 10), req(10, 10), req(20, 10), req(20, 30)]
    full = summarize(outs, 50.0)
    steady = summarize(outs, 50.0, window=(0.0, 20.0))
    assert full.output_tok_s == pytest.approx(66 / 50)
    # inside [0, 20]: four whole requests (44 tokens)
    assert steady.output_tok_s == pytest.approx(44 / 20)
    assert steady.request_s == pytest.approx(4 / 20)
    assert steady.ttft_ms.p99 == full.ttft_ms.p99  # latency covers every request


def test_no_steady_window_while_the_measured_requests_are_the_first_wave():
    """Every slot is busy only once the first wave has started: measured requests that all started before that
    (along its ramp) have no steady window, nor has a loop that sent its first wave alone."""
    outs = [req(start, 10.0) for start in (0.0, 1.0, 2.0, 3.0)]
    assert steady_window(outs, 10.0) == (0.0, 3.0)  # nothing said of the first wave
    assert steady_window(outs, 10.0, full_from_s=2.5) == (0.0, 3.0)  # one started after it
    assert steady_window(outs, 10.0, full_from_s=3.0) is None
    assert steady_window(outs, 10.0, full_from_s=math.inf) is None


def test_tokens_stamped_with_one_instant_are_one_chunk_and_one_gap():
    assert chunk_gaps_s([1.0, 1.01, 1.01, 1.01, 1.04]) == pytest.approx((0.01, 0.03))
    assert chunk_gaps_s([1.0, 1.0]) == ()  # the first chunk held both tokens
    assert chunk_gaps_s([2.5]) == ()
