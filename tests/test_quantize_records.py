"""benchmarks/quantize_records.py: token times rounded on each request's own time line, so no error accumulates."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from tests.benchmark_scripts import load_benchmark

qr = load_benchmark("quantize_records")


def test_every_token_moves_less_than_half_a_step_and_the_file_shrinks(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    gaps = rng.uniform(5.0, 9.0, 500).tolist()  # 500 gaps with microsecond digits: rounding each would drift
    record = {"warmup": False, "ok": True, "start_s": 1.5, "ttft_ms": 123.4567, "tpot_ms": 7.0123,
              "e2el_ms": 123.4567 + sum(gaps), "itl_max_ms": max(gaps), "itl_ms": gaps}
    path = tmp_path / "level.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for _ in range(20):
            f.write(json.dumps(record) + "\n")
    before = path.stat().st_size
    monkeypatch.setattr("sys.argv", ["quantize_records.py", str(path)])
    assert qr.main() == 0
    out = [json.loads(line) for line in gzip.open(path, "rt")]
    assert len(out) == 20 and path.stat().st_size < before / 2
    times = record["ttft_ms"] + np.cumsum(np.r_[0.0, gaps])
    new_times = out[0]["ttft_ms"] + np.cumsum(np.r_[0.0, out[0]["itl_ms"]])
    assert np.max(np.abs(new_times - times)) <= 0.05 + 1e-9  # the last token too: no drift along the stream
    assert out[0]["tpot_ms"] == pytest.approx(7.0) and out[0]["start_s"] == 1.5
