"""benchmarks/step_counts_table.py (issue #21): a level's engine steps by tokens per step, grouped into decode-only,
one prefill and more, the GPU's (from `autotune bench --json`'s server_metrics) beside the in-process sim's on
the same requests."""
from __future__ import annotations

import json
from pathlib import Path

from tests.benchmark_scripts import load_benchmark

sct = load_benchmark("step_counts_table")


def test_buckets_fall_into_their_groups() -> None:
    steps = {"le 1": 1, "le 64": 100, "le 256": 2, "le 512": 3, "le 2048": 20, "le 4096": 4, "le inf": 1}
    assert sct.grouped(steps) == {"decode only": 103, "one prefill": 23, "more": 5}


def test_a_level_against_the_sim_on_the_same_requests(tmp_path: Path) -> None:
    (tmp_path / "configs.txt").write_text("defaults: \nbatch2048: --max-num-batched-tokens 2048\n")
    (tmp_path / "settings.txt").write_text("loads=4\nworkload=random:1024:128:0.5\nengine=vllm\nmodel=/tmp/model\n")
    gpu = {"itl_ms": {"p99": 41.0}, "output_tok_s": 500.0,
           "server_metrics": {"steps_by_tokens": {"le 8": 300, "le 2048": 14, "le 4096": 1}}}
    (tmp_path / "defaults-c4.json").write_text(json.dumps(gpu))
    (tmp_path / "batch2048-c4.json").write_text("")  # a failed level: skipped
    rows = sct.table(tmp_path)
    assert len(rows) == 1 and rows[0]["config"] == "defaults" and rows[0]["concurrency"] == 4
    assert rows[0]["gpu"]["steps"] == {"decode only": 300, "one prefill": 14, "more": 1}
    sim = rows[0]["sim"]["steps"]
    # 16 requests of 512-1,536 prompt tokens at concurrency 4: their prefills, and decode steps of at most 4 tokens
    assert sim["decode only"] > 10 * (sim["one prefill"] + sim["more"]) and sim["one prefill"] + sim["more"] >= 8
    assert rows[0]["sim"]["p99_itl_ms"] > 0
