"""vLLM's Prometheus metrics: the names, kinds and help texts, and the text format a server writes.

The one place that knows them: :mod:`autotune.loadgen.promscrape` reads these names from a server's
``/metrics``, :class:`autotune.vllm_api.responder.Responder` writes them.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = ["Metric", "HistogramTotals", "HistogramBuckets", "MetricValues", "KV_CACHE_USAGE", "LEGACY_GPU_CACHE_USAGE",
           "RUNNING", "WAITING", "PREEMPTIONS", "PROMPT_TOKENS", "GENERATION_TOKENS", "TTFT", "ITL", "E2E", "QUEUE",
           "PREFILL", "LATENCY_HISTOGRAMS", "ITERATION_TOKENS", "ITERATION_TOKENS_BOUNDS", "steps_bucket",
           "render_metrics"]


@dataclass(frozen=True)
class Metric:
    name: str  # the sample name as vLLM exposes it (a counter's with its ``_total``)
    kind: Literal["gauge", "counter", "histogram"]
    help: str


@dataclass(frozen=True)
class HistogramTotals:
    """A latency histogram's sum and count (the scraper's means need no buckets)."""

    sum_s: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> HistogramTotals:
        return HistogramTotals(self.sum_s + seconds, self.count + 1)


@dataclass(frozen=True)
class HistogramBuckets:
    """A histogram of counts with its buckets (the iteration-tokens one: the scraper reads its buckets)."""

    cumulative: tuple[tuple[float, int], ...]  # (upper bound, observations at most that), finite bounds, ascending
    count: int  # every observation (the +Inf bucket)
    total: float  # their sum


MetricValues = Mapping[Metric, float | HistogramTotals | HistogramBuckets]

KV_CACHE_USAGE = Metric("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.")
LEGACY_GPU_CACHE_USAGE = "vllm:gpu_cache_usage_perc"  # the same fraction, named so before vLLM 0.10
RUNNING = Metric("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.")
WAITING = Metric("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.")
PREEMPTIONS = Metric("vllm:num_preemptions_total", "counter", "Cumulative number of preemption from the engine.")
PROMPT_TOKENS = Metric("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.")
GENERATION_TOKENS = Metric("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.")
TTFT = Metric("vllm:time_to_first_token_seconds", "histogram", "Histogram of time to first token in seconds.")
ITL = Metric("vllm:inter_token_latency_seconds", "histogram", "Histogram of inter-token latency in seconds.")
E2E = Metric("vllm:e2e_request_latency_seconds", "histogram", "Histogram of e2e request latency in seconds.")
QUEUE = Metric("vllm:request_queue_time_seconds", "histogram",
               "Histogram of time spent in WAITING phase for request.")
PREFILL = Metric("vllm:request_prefill_time_seconds", "histogram",
                 "Histogram of time spent in PREFILL phase for request.")
# Tokens per engine step (prefill and decode tokens scheduled together), buckets 1, 8, 16, ..., 16384 in vLLM 0.26:
# how many prefills share a step with the decodes, which sets the P99 ITL at a load
ITERATION_TOKENS = Metric("vllm:iteration_tokens_total", "histogram",
                          "Histogram of number of tokens per engine_step.")
ITERATION_TOKENS_BOUNDS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)  # then +Inf


def steps_bucket(bound: float) -> str:
    """The key of the iteration-tokens bucket with upper bound ``bound`` in a run's ``steps_by_tokens``."""
    return "le inf" if bound == float("inf") else f"le {bound:g}"
# TTFT and E2E from the request's arrival at the server, ITL between engine steps, the time queued and in prefill
LATENCY_HISTOGRAMS: dict[str, Metric] = {"ttft": TTFT, "itl": ITL, "e2el": E2E, "queue": QUEUE, "prefill": PREFILL}


def render_metrics(values: MetricValues, labels: Mapping[str, str]) -> str:
    """The Prometheus text format of ``values``, every sample with ``labels``. A latency histogram
    (:class:`HistogramTotals`) is written with its ``+Inf`` bucket, sum and count only."""
    label = ",".join(f'{k}="{v}"' for k, v in labels.items())
    out = []
    for metric, value in values.items():
        out += [f"# HELP {metric.name} {metric.help}", f"# TYPE {metric.name} {metric.kind}"]
        if isinstance(value, (HistogramTotals, HistogramBuckets)):
            buckets, total = ((value.cumulative, value.total) if isinstance(value, HistogramBuckets)
                              else ((), value.sum_s))
            out += [f'{metric.name}_bucket{{{label},le="{float(bound)}"}} {float(n)}' for bound, n in buckets]
            out += [f'{metric.name}_bucket{{{label},le="+Inf"}} {float(value.count)}',
                    f"{metric.name}_sum{{{label}}} {float(total)}",
                    f"{metric.name}_count{{{label}}} {float(value.count)}"]
        else:
            out.append(f"{metric.name}{{{label}}} {float(value)}")
    return "\n".join(out) + "\n"
