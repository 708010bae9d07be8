"""Per-request records and the summary of a benchmark run.

Everything that measures (the aiohttp load generator) or predicts (the sim engine's virtual-time
``predict``) produces :class:`RequestOutput` records and calls :func:`summarize`; the JSON keys are the
contract in DESIGN.md. Empty or all-failed runs give NaN, never 0.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["RequestOutput", "chunk_gaps_s", "Distribution", "BenchResult", "summarize", "pool", "steady_window",
           "LATENCY_METRICS", "describe_limits", "fmt_ms"]

LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")
PERCENTILES = (50, 90, 95, 99)


def describe_limits(limits_ms: Mapping[str, float]) -> str:
    """P99 limits by metric, as people read them: ``P99 ttft <= 500 ms, itl <= 50 ms``."""
    return "P99 " + ", ".join(f"{metric} <= {limit:g} ms" for metric, limit in limits_ms.items())


def fmt_ms(value: float | None) -> str:
    """A latency: whole milliseconds from 100 ms up, a tenth below (an ITL of 8.4 ms is not 8); '-' when unknown."""
    if value is None or math.isnan(value):
        return "-"
    return format(value, ",.0f" if value >= 100 else ".1f")


@dataclass(frozen=True)
class RequestOutput:
    """One request as the client saw it. Times in seconds (perf_counter based); ``start_s`` relative to
    the start of the run. A failed request has ``success=False`` and ``error`` set."""

    success: bool
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft_s: float = math.nan
    itl_s: tuple[float, ...] = ()
    e2el_s: float = math.nan
    start_s: float = 0.0
    error: str = ""
    error_kind: str = ""  # connect, http_4xx, http_5xx, timeout, malformed_stream, disconnect, ...

    @property
    def tpot_s(self) -> float:
        if self.output_tokens <= 1 or math.isnan(self.e2el_s) or math.isnan(self.ttft_s):
            return math.nan
        return (self.e2el_s - self.ttft_s) / (self.output_tokens - 1)


def chunk_gaps_s(token_times_s: np.ndarray | tuple[float, ...] | list[float]) -> tuple[float, ...]:
    """A stream's inter-token latencies as a client measures them: one per chunk after the first. Tokens delivered
    at one instant came in one chunk (vLLM's output collector merges a request's outputs while its stream is behind,
    and so does the sim's API server), so they make one gap, not a gap and zeros: on the H200 at concurrency 128,
    15-20% of tokens arrive merged, and zeros counted as gaps would pull a P99 ITL down."""
    gaps = np.diff(np.asarray(token_times_s, dtype=float))
    return tuple(gaps[gaps > 0].tolist())


@dataclass(frozen=True)
class Distribution:
    """mean/p50/p90/p95/p99 of one latency metric in milliseconds (NaN when there are no values)."""

    mean: float
    p50: float
    p90: float
    p95: float
    p99: float

    @classmethod
    def from_values_s(cls, values_s: list[float] | np.ndarray) -> Distribution:
        arr = np.asarray(values_s, dtype=float)
        arr = arr[~np.isnan(arr)] * 1000.0
        if arr.size == 0:
            return cls(math.nan, math.nan, math.nan, math.nan, math.nan)
        p50, p90, p95, p99 = np.percentile(arr, PERCENTILES)
        return cls(float(arr.mean()), float(p50), float(p90), float(p95), float(p99))

    def to_json(self) -> dict[str, float]:
        return {"mean": self.mean, "p50": self.p50, "p90": self.p90, "p95": self.p95, "p99": self.p99}

    def percentile(self, name: str) -> float:
        return float(getattr(self, name))


@dataclass(frozen=True)
class BenchResult:
    completed: int
    failed: int
    duration_s: float
    output_tok_s: float
    total_tok_s: float
    request_s: float
    ttft_ms: Distribution
    tpot_ms: Distribution
    itl_ms: Distribution
    e2el_ms: Distribution
    goodput_request_s: float = math.nan
    errors: dict[str, int] = field(default_factory=dict)
    status: str = "ok"  # ok | partial (some failed) | failed (none completed) | empty
    extra: dict[str, Any] = field(default_factory=dict)  # concurrency, rate, server metrics, ...
    # The measured requests in the order they were sent, for intervals over them; not part of the JSON.
    outputs: tuple[RequestOutput, ...] = field(default=(), repr=False, compare=False)

    def latency(self, metric: str) -> Distribution:
        if metric not in LATENCY_METRICS:
            raise ValueError(f"unknown latency metric {metric!r}")
        return getattr(self, f"{metric}_ms")

    def p99_ms(self, metric: str) -> float:
        return self.latency(metric).p99

    def values_and_times_s(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """Every value of ``metric`` over the successful measured requests, in seconds, and when each happened
        (a request's start for TTFT, TPOT and E2E; each token's arrival for its ITL gap), for intervals."""
        if metric not in LATENCY_METRICS:
            raise ValueError(f"unknown latency metric {metric!r}")
        ok = [o for o in self.outputs if o.success]
        if metric != "itl":
            return (np.array([getattr(o, f"{metric}_s") for o in ok], dtype=float),
                    np.array([o.start_s for o in ok], dtype=float))
        gaps = [np.asarray(o.itl_s, dtype=float) for o in ok if o.itl_s]
        if not gaps:
            return np.zeros(0), np.zeros(0)
        arrivals = [o.start_s + o.ttft_s + np.cumsum(g) for o, g in zip((o for o in ok if o.itl_s), gaps)]
        return np.concatenate(gaps), np.concatenate(arrivals)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "output_tok_s": self.output_tok_s,
            "total_tok_s": self.total_tok_s,
            "request_s": self.request_s,
            "goodput_request_s": self.goodput_request_s,
        }
        for metric in LATENCY_METRICS:
            out[f"{metric}_ms"] = self.latency(metric).to_json()
        out.update(completed=self.completed, failed=self.failed, duration_s=self.duration_s,
                   status=self.status, errors=dict(self.errors))
        out.update(self.extra)
        return out


def summarize(outputs: list[RequestOutput], duration_s: float, slo_ms: dict[str, float] | None = None,
              extra: dict[str, Any] | None = None, window: tuple[float, float] | None = None,
              window_outputs: list[RequestOutput] | None = None) -> BenchResult:
    """Aggregate request records over a window of ``duration_s`` seconds.

    ``slo_ms`` maps latency metrics (ttft, tpot, itl, e2el) to limits for goodput: a request counts when
    each of its values is within the limit (for ITL, its own worst gap).
    ``window`` (start, end in the records' clock): throughputs count only what happened inside it — the
    steady state of a closed loop, without the ramp-up and the drain at the end. Output tokens of a request
    are taken as spread evenly between its first and last token (robust to chunks carrying several tokens);
    ``duration_s`` is then the window's length. Latency figures always cover every request.
    ``window_outputs``: every request whose tokens fall in the window, when that is more than ``outputs``:
    a closed loop's warm-up requests are still decoding in the first part of its steady window (leaving them
    out undercounted an H100 level's throughput by about a third). Goodput in a window is its request rate
    times the share of ``outputs`` that meet the SLOs.
    """
    ok = [o for o in outputs if o.success]
    failed = len(outputs) - len(ok)
    errors = dict(Counter(o.error_kind or "error" for o in outputs if not o.success))
    if not outputs:
        status = "empty"
    elif not ok:
        status = "failed"
    else:
        status = "partial" if failed else "ok"
    nan = math.nan
    if window is not None and ok:
        duration_s = window[1] - window[0]
        in_window = ok if window_outputs is None else [o for o in window_outputs if o.success]
        out_tokens, in_tokens, done = _in_window(in_window, window)
    else:
        out_tokens = sum(o.output_tokens for o in ok)
        in_tokens = sum(o.prompt_tokens for o in ok)
        done = len(ok)
    usable = ok and duration_s > 0
    goodput = nan
    if usable and slo_ms:
        good = sum(1 for o in ok if _meets(o, slo_ms))
        goodput = done * good / len(ok) / duration_s
    itls = [x for o in ok for x in o.itl_s]
    return BenchResult(
        completed=len(ok), failed=failed, duration_s=duration_s,
        output_tok_s=out_tokens / duration_s if usable else nan,
        total_tok_s=(out_tokens + in_tokens) / duration_s if usable else nan,
        request_s=done / duration_s if usable else nan,
        ttft_ms=Distribution.from_values_s([o.ttft_s for o in ok]),
        tpot_ms=Distribution.from_values_s([o.tpot_s for o in ok]),
        itl_ms=Distribution.from_values_s(itls),
        e2el_ms=Distribution.from_values_s([o.e2el_s for o in ok]),
        goodput_request_s=goodput, errors=errors, status=status, extra=dict(extra or {}), outputs=tuple(outputs),
    )


def pool(results: list[BenchResult]) -> BenchResult:
    """Several runs at one load as one: latencies over all their requests, throughputs weighted by each run's
    duration (its measured window)."""
    if len(results) == 1:
        return results[0]
    outputs = [o for r in results for o in r.outputs]
    duration_s = sum(r.duration_s for r in results)

    def weighted(name: str) -> float:
        values = [(getattr(r, name), r.duration_s) for r in results if not math.isnan(getattr(r, name))]
        total = sum(d for _, d in values)
        return sum(v * d for v, d in values) / total if total > 0 else math.nan

    ok = [o for o in outputs if o.success]
    errors = Counter[str]()
    for r in results:
        errors.update(r.errors)
    statuses = {r.status for r in results}
    status = statuses.pop() if len(statuses) == 1 else ("failed" if not ok else "partial")
    extra = {**results[0].extra, "runs": len(results)}
    host_cpus = [r.extra["host_cpu"] for r in results if r.extra.get("host_cpu")]
    if host_cpus:  # the busiest host of the runs (autotune.hostcpu): what may have slowed the pooled level
        extra["host_cpu"] = max(host_cpus, key=lambda h: h["others_cores"])
    return BenchResult(
        completed=sum(r.completed for r in results), failed=sum(r.failed for r in results), duration_s=duration_s,
        output_tok_s=weighted("output_tok_s"), total_tok_s=weighted("total_tok_s"), request_s=weighted("request_s"),
        ttft_ms=Distribution.from_values_s([o.ttft_s for o in ok]),
        tpot_ms=Distribution.from_values_s([o.tpot_s for o in ok]),
        itl_ms=Distribution.from_values_s([x for o in ok for x in o.itl_s]),
        e2el_ms=Distribution.from_values_s([o.e2el_s for o in ok]),
        goodput_request_s=weighted("goodput_request_s"), errors=dict(errors), status=status,
        extra=extra, outputs=tuple(outputs))


def steady_window(outputs: list[RequestOutput], full_s: float,
                  full_from_s: float | None = None) -> tuple[float, float] | None:
    """Closed loop: from the first measured start to the last one — every slot is busy in between (after
    the last start the loop only drains). None when that window is too short to mean anything, or when no measured
    request started after ``full_from_s`` (when the first wave's last request started; ``math.inf``: the loop never
    sent more than its first wave): the measured requests were then the first wave alone, started along its ramp,
    and the window would be that ramp (`sim predict --num-prompts 4 --warmup 0` reported 0 requests/s)."""
    starts = [o.start_s for o in outputs if o.success]
    if len(starts) < 2:
        return None
    lo, hi = min(starts), max(starts)
    if full_from_s is not None and not hi > full_from_s:
        return None
    return (lo, hi) if hi - lo >= 0.25 * full_s else None


def _in_window(ok: list[RequestOutput], window: tuple[float, float]) -> tuple[float, float, int]:
    """Output tokens, prompt tokens and finished requests that fall inside ``window``."""
    lo, hi = window
    out_tokens = in_tokens = 0.0
    done = 0
    for o in ok:
        first = o.start_s + o.ttft_s
        last = o.start_s + o.e2el_s
        if lo <= first <= hi:
            out_tokens += 1
        rest = o.output_tokens - 1
        if rest > 0 and last > first:
            overlap = max(0.0, min(hi, last) - max(lo, first))
            out_tokens += rest * overlap / (last - first)
        if lo <= o.start_s <= hi:
            in_tokens += o.prompt_tokens
        if lo <= last <= hi:
            done += 1
    return out_tokens, in_tokens, done


def _meets(o: RequestOutput, slo_ms: dict[str, float]) -> bool:
    values = {"ttft": o.ttft_s, "tpot": o.tpot_s, "e2el": o.e2el_s, "itl": max(o.itl_s) if o.itl_s else 0.0}
    for metric, limit in slo_ms.items():
        v = values[metric]
        if not math.isnan(v) and v * 1000.0 > limit:
            return False
    return True
