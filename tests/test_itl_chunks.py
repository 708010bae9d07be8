"""benchmarks/itl_chunks.py: chunks per token over the measured requests that kept their gaps."""
from __future__ import annotations

import pytest

from tests.benchmark_scripts import load_benchmark

chunks = load_benchmark("itl_chunks")


def test_chunks_per_token_counts_measured_requests_only() -> None:
    rows = [{"ok": True, "warmup": True, "output_tokens": 5, "itl_ms": [1.0]},  # warm-up: left out
            {"ok": True, "warmup": False, "output_tokens": 5, "itl_ms": [10.0, 20.0, 30.0, 40.0]},  # one chunk each
            {"ok": True, "warmup": False, "output_tokens": 5, "itl_ms": [50.0, 60.0]},  # four tokens in two chunks
            {"ok": False, "warmup": False, "output_tokens": 0}]
    f = chunks.chunk_figures(rows)
    assert (f["tokens"], f["gaps"]) == (8, 6) and f["gaps_per_token"] == pytest.approx(0.75)
    assert 50.0 < f["p99_itl_ms"] <= 60.0
