"""Run-to-run noise for the sim engine, at the size a GPU shows it, so that a sim study meets the noise a GPU
study meets (and a decision rule can be judged against it: benchmarks/decision_quality.py).

The model is empirical. Each measurement run draws one lognormal factor per metric (mean 1, a coefficient of
variation) and scales every request's TTFT, inter-token gaps and E2E by its metric's factor, and the run's
throughputs by another. So a run's whole latency distribution moves together, as it did between runs on the GPU
(their P99 and median TTFT moved together), and the P99 interval a level computes from its requests stays as wide
as the sim's own.

The `h200` coefficients are what the H200 spreads beyond the request streams: pooled over every point the H200
reproducibility pairs measured 2-6 times (runs of one trial's level, re-measurements on fresh servers, a pair's two
studies; 116 degrees of freedom, 55 for P99 ITL), the GPU's spread of the log figure less the sim's own over the
same requests, sqrt(gpu^2 - sim^2) (docs/results/sim-accuracy.md, "Run-to-run spread"; benchmarks/noise_pooled.py);
the sim's P99 ITL taken as the client counts it, one gap per chunk (`autotune.metrics.chunk_gaps_s`). A sim study
sends each run other requests, as a GPU study does, so the sim makes the streams' share itself and the model adds
the rest. Judged on fresh servers and prompts at a workload and loads no fit saw (raw/h200-noise-fresh/), the sim
with it spreads throughput, P99 TTFT, TPOT and E2E inside the GPU's 90% intervals, pooled; its P99 ITL spreads
more than the GPU's from the streams alone (the engine's mixed steps, sim-accuracy.md). The GPU's spread differs
by workload and load beyond one constant per metric: throughput at concurrency 128-256 moved 0.5-0.8%.
"""
from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from autotune.metrics import BenchResult, Distribution

__all__ = ["RunNoise", "NOISE_MODELS", "noise_rng", "lognormal_factor"]


@dataclass(frozen=True)
class RunNoise:
    """Per-run lognormal factors: ``latency_cv`` by metric (ttft, itl, tpot, e2el) and ``throughput_cv``."""

    latency_cv: Mapping[str, float] = field(default_factory=dict)
    throughput_cv: float = 0.0

    def factors(self, rng: np.random.Generator) -> tuple[dict[str, float], float]:
        """One run's draw: a factor per latency metric (ttft, itl, tpot, e2el), and the throughputs' factor."""
        f = {m: lognormal_factor(rng, self.latency_cv.get(m, 0.0)) for m in ("ttft", "itl", "tpot", "e2el")}
        return f, lognormal_factor(rng, self.throughput_cv)

    def apply(self, r: BenchResult, rng: np.random.Generator) -> BenchResult:
        """``r`` as a noisy run gives it: requests' TTFT, ITL gaps and E2E scaled by one factor per metric, the
        summaries with them (TPOT, only summarized, by its own), the throughputs by one more."""
        f, f_tput = self.factors(rng)
        outputs = tuple(dataclasses.replace(o, ttft_s=o.ttft_s * f["ttft"], itl_s=tuple(g * f["itl"] for g in o.itl_s),
                                            e2el_s=o.e2el_s * f["e2el"]) for o in r.outputs)
        return dataclasses.replace(
            r, outputs=outputs, output_tok_s=r.output_tok_s * f_tput, total_tok_s=r.total_tok_s * f_tput,
            request_s=r.request_s * f_tput, ttft_ms=_scaled(r.ttft_ms, f["ttft"]), itl_ms=_scaled(r.itl_ms, f["itl"]),
            tpot_ms=_scaled(r.tpot_ms, f["tpot"]), e2el_ms=_scaled(r.e2el_ms, f["e2el"]))


# By name, as `--sim-noise` takes it. h200: vLLM 0.26.0, the weightless Flash text backbone, the three H200 pair
# studies' workloads (module docstring). Until this fit: one server's six runs at concurrency 64 (h200-noise.md),
# TTFT 17.2%, ITL 6.7%, TPOT 4.7%, E2E 3.0%, throughput 2.3%, which hold the streams' share as well.
NOISE_MODELS: dict[str, RunNoise | None] = {
    "off": None,
    "h200": RunNoise(latency_cv={"ttft": 0.139, "itl": 0.074, "tpot": 0.015, "e2el": 0.020}, throughput_cv=0.018),
}


def noise_rng(seed: int, server_name: str) -> np.random.Generator:
    """The noise of one server: reproducible for the study's seed, and its own for every server (a fresh
    server of a re-measurement draws other factors than the trial's)."""
    return np.random.default_rng([seed, zlib.crc32(server_name.encode())])


def lognormal_factor(rng: np.random.Generator, cv: float) -> float:
    """A factor with mean 1 and coefficient of variation ``cv`` (1 when ``cv`` is 0)."""
    if cv <= 0:
        return 1.0
    s = math.sqrt(math.log1p(cv * cv))
    return float(math.exp(rng.normal(-s * s / 2, s)))


def _scaled(d: Distribution, f: float) -> Distribution:
    return Distribution(d.mean * f, d.p50 * f, d.p90 * f, d.p95 * f, d.p99 * f)
