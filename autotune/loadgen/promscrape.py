"""Scrape the server's Prometheus ``/metrics`` during a run (vLLM metric names).

Records the maximum KV-cache usage, preemptions during the run, the maximum running/waiting requests, the
server's own mean latencies over the run from vLLM's latency histograms (their sum and count at the first and
last scrape): TTFT and E2E from the request's arrival at the server, ITL between engine steps, and the time
queued and in prefill; and the engine steps taken meanwhile by tokens per step (vLLM's iteration-tokens
histogram, cumulative buckets by their upper bound). They cover every request the server recorded meanwhile (a
warm-up too; one that ends as
the run does may be recorded after the last scrape), and set beside the client's figures they show what lies
outside the server (network, client). A scrape that fails is counted, never raised.
"""
from __future__ import annotations

import asyncio
import math
import re
from typing import Any

import aiohttp

from autotune.vllm_api import metrics as m

__all__ = ["parse_prometheus", "PromSamples", "MetricsScraper", "KV_USAGE_NAMES", "LATENCY_HISTOGRAMS", "histogram_totals",
           "server_latency_means", "histogram_buckets", "steps_by_tokens"]

KV_USAGE_NAMES = (m.KV_CACHE_USAGE.name, m.LEGACY_GPU_CACHE_USAGE)  # a fraction in [0, 1]
LATENCY_HISTOGRAMS = {key: metric.name for key, metric in m.LATENCY_HISTOGRAMS.items()}  # result key: name


class PromSamples(dict[str, list[float]]):
    """Sample values by metric name (label sets flattened); ``buckets``: each histogram's cumulative bucket counts
    by upper bound (``le``; +Inf as ``math.inf``), summed over its other label sets (engines)."""

    def __init__(self) -> None:
        super().__init__()
        self.buckets: dict[str, dict[float, float]] = {}


_LE = re.compile(r'(?:^|,)\s*le="([^"]*)"')


def parse_prometheus(text: str) -> PromSamples:
    """The samples of a scrape in the Prometheus text format (:class:`PromSamples`)."""
    out = PromSamples()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        brace = line.find("{")
        labels = ""
        if brace >= 0:
            close = line.rfind("}")
            name, labels, rest = line[:brace], line[brace + 1:close], line[close + 1:]
        else:
            name, _, rest = line.partition(" ")
        fields = rest.split()
        if not name or not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        name = name.strip()
        out.setdefault(name, []).append(value)
        if name.endswith("_bucket") and (le := _LE.search(labels)):
            try:
                bound = float(le[1])  # float("+Inf") is inf
            except ValueError:
                continue
            buckets = out.buckets.setdefault(name.removesuffix("_bucket"), {})
            buckets[bound] = buckets.get(bound, 0.0) + value
    return out


def histogram_totals(samples: dict[str, list[float]]) -> dict[str, tuple[float, float]]:
    """``{key: (sum_s, count)}`` of each latency histogram the server exposes, over all its label sets."""
    return {key: (sum(samples[f"{name}_sum"]), sum(samples[f"{name}_count"]))
            for key, name in LATENCY_HISTOGRAMS.items() if f"{name}_sum" in samples and f"{name}_count" in samples}


def histogram_buckets(samples: PromSamples, name: str) -> dict[float, float]:
    """A histogram's cumulative bucket counts by upper bound, summed over its label sets (engines)."""
    return dict(samples.buckets.get(name, {}))


def steps_by_tokens(first: dict[float, float], last: dict[float, float]) -> dict[str, int]:
    """Engine steps between two :func:`histogram_buckets` of the iteration-tokens histogram, per bucket: ``"le
    N"`` counts the steps of at most N tokens and more than the bound below (not cumulative)."""
    bounds = sorted(b for b in last if b in first)
    out, below = {}, 0.0
    for bound in bounds:
        cumulative = last[bound] - first[bound]
        out[m.steps_bucket(bound)] = int(round(cumulative - below))
        below = cumulative
    return out


def server_latency_means(first: dict[str, tuple[float, float]], last: dict[str, tuple[float, float]]
                         ) -> dict[str, float]:
    """``server_mean_<key>_ms`` over the observations made between two :func:`histogram_totals`."""
    out = {}
    for key, (total_s, count) in last.items():
        if key in first and count - first[key][1] > 0:
            out[f"server_mean_{key}_ms"] = round(1000.0 * (total_s - first[key][0]) / (count - first[key][1]), 3)
    return out


class MetricsScraper:
    """Background task scraping ``URL/metrics`` every ``interval_s`` until :meth:`stop`."""

    def __init__(self, session: aiohttp.ClientSession, url: str, interval_s: float = 1.0) -> None:
        self.session, self.url, self.interval_s = session, url.rstrip("/") + "/metrics", interval_s
        self.scrapes = self.failures = 0
        self.max_kv_usage = self.max_running = self.max_waiting = math.nan
        self.first_preemptions = self.last_preemptions = math.nan
        self.first_latency: dict[str, tuple[float, float]] | None = None
        self.last_latency: dict[str, tuple[float, float]] = {}
        self.first_steps: dict[float, float] | None = None
        self.last_steps: dict[float, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._scrape()  # the baseline for the preemption counter
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                # Ours ends so. If the caller itself is being cancelled (Ctrl-C: asyncio.run cancels the main
                # task), that must go on, or the interrupt is lost and the run carries on (seen in CI).
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        await self._scrape()  # the final counter value
        preempted = self.last_preemptions - self.first_preemptions
        return {"max_kv_cache_usage": _none(self.max_kv_usage), "preemptions": _none(preempted),
                "max_requests_running": _none(self.max_running), "max_requests_waiting": _none(self.max_waiting),
                **server_latency_means(self.first_latency or {}, self.last_latency),
                **({"steps_by_tokens": steps_by_tokens(self.first_steps, self.last_steps)}
                   if self.first_steps else {}),
                "scrapes": self.scrapes, "scrape_failures": self.failures}

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self._scrape()

    async def _scrape(self) -> None:
        try:
            async with self.session.get(self.url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                if resp.status != 200:
                    self.failures += 1
                    return
                text = await resp.text()
        except (aiohttp.ClientError, asyncio.TimeoutError, UnicodeDecodeError):
            self.failures += 1
            return
        self.scrapes += 1
        samples = parse_prometheus(text)
        kv = next((samples[n] for n in KV_USAGE_NAMES if n in samples), None)
        if kv:
            self.max_kv_usage = _max(self.max_kv_usage, max(kv))
        if m.RUNNING.name in samples:
            self.max_running = _max(self.max_running, sum(samples[m.RUNNING.name]))
        if m.WAITING.name in samples:
            self.max_waiting = _max(self.max_waiting, sum(samples[m.WAITING.name]))
        if m.PREEMPTIONS.name in samples:
            total = sum(samples[m.PREEMPTIONS.name])
            if math.isnan(self.first_preemptions):
                self.first_preemptions = total
            self.last_preemptions = total
        latency = histogram_totals(samples)
        if self.first_latency is None:
            self.first_latency = latency
        self.last_latency = latency
        steps = histogram_buckets(samples, m.ITERATION_TOKENS.name)
        if steps:
            if self.first_steps is None:
                self.first_steps = steps
            self.last_steps = steps


def _max(a: float, b: float) -> float:
    return b if math.isnan(a) else max(a, b)


def _none(x: float) -> float | None:
    return None if math.isnan(x) else x
