"""benchmarks/gpu helpers: two runs' inter-token gaps packed and compared gap by gap; server-side means per run."""
import gzip
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"))
import itl_gaps  # noqa: E402


def _write_round(folder: Path, r: int, vllm_itls_s: list[list[float]], ours_itl_ms: list[list[float]]) -> None:
    (folder / f"vllm-{r}.json").write_text(json.dumps({"itls": vllm_itls_s, "generated_texts": ["x"] * 3,
                                                       "output_throughput": 1.0}))
    with gzip.open(folder / f"ours-{r}.jsonl.gz", "wt") as f:
        f.write(json.dumps({"i": 0, "warmup": True, "itl_ms": [99.0]}) + "\n")  # a warm-up is not compared
        for i, gaps in reversed(list(enumerate(ours_itl_ms, start=1))):  # records in any order: sorted by i
            f.write(json.dumps({"i": i, "warmup": False, "itl_ms": gaps}) + "\n")


def test_pack_then_compare_gap_by_gap(tmp_path: Path) -> None:
    vllm = [[0.007] * 9 + [0.030], [0.007] * 4, [0.008, 0.031]]
    ours = [[7.5] * 9 + [30.5], [7.5] * 4, [8.5, 31.5]]  # every gap 0.5 ms longer
    _write_round(tmp_path, 1, vllm, ours)
    assert sorted(itl_gaps.pack(tmp_path)) == ["itl-ours-1.npz", "itl-vllm-1.npz"]
    # the lists left the sources, the rest stayed
    assert json.loads((tmp_path / "vllm-1.json").read_text()) == {"output_throughput": 1.0}
    rows = [json.loads(line) for line in gzip.open(tmp_path / "ours-1.jsonl.gz", "rt")]
    assert len(rows) == 4 and all("itl_ms" not in row for row in rows)
    assert itl_gaps.pack(tmp_path) == []  # nothing left to pack
    rep = itl_gaps.compare(tmp_path, "ours", "vllm")[1]
    assert rep["same_gap_counts"] and rep["gaps"] == [16, 16]
    assert rep["per_gap_diff_ms"]["p50"] == pytest.approx(0.5, abs=1e-3)
    assert rep["per_gap_diff_ms"]["share_over_5ms"] == 0.0
    assert rep["a"]["mean"] == pytest.approx(rep["b"]["mean"] + 0.5, abs=1e-3)


def test_compare_reports_requests_with_other_gap_counts(tmp_path: Path) -> None:
    _write_round(tmp_path, 2, [[0.007] * 3, [0.007] * 3], [[7.0] * 3, [7.0, 14.0]])  # a coalesced chunk
    itl_gaps.pack(tmp_path)
    rep = itl_gaps.compare(tmp_path, "ours", "vllm")[2]
    assert rep["same_gap_counts"] is False and rep["requests_with_other_count"] == 1
    assert "per_gap_diff_ms" not in rep


def test_server_side_means_beside_each_tools_own(tmp_path: Path) -> None:
    import server_side
    prom = ('vllm:time_to_first_token_seconds_sum{{model_name="m"}} {ttft}\n'
            'vllm:time_to_first_token_seconds_count{{model_name="m"}} {n}\n'
            'vllm:e2e_request_latency_seconds_sum{{model_name="m"}} {e2e}\n'
            'vllm:e2e_request_latency_seconds_count{{model_name="m"}} {n}\n')
    (tmp_path / "vllm-3.prom0").write_text(prom.format(ttft=1.0, e2e=10.0, n=10))
    (tmp_path / "vllm-3.prom1").write_text(prom.format(ttft=1.5, e2e=30.0, n=20))  # 50 ms TTFT, 2 s E2E
    (tmp_path / "vllm-3.json").write_text(json.dumps({"output_throughput": 1.0, "mean_ttft_ms": 52.0,
                                                      "mean_itl_ms": 8.0, "mean_e2el_ms": 2003.0}))
    (tmp_path / "ours-3.prom0").write_text(prom.format(ttft=1.5, e2e=30.0, n=20))
    (tmp_path / "ours-3.prom1").write_text(prom.format(ttft=2.0, e2e=50.0, n=30))
    (tmp_path / "ours-3.json").write_text(json.dumps({"ttft_ms": {"mean": 51.0}, "itl_ms": {"mean": 8.0},
                                                      "e2el_ms": {"mean": 2001.0}}))
    rows = {row["run"]: row for row in server_side.run_rows(tmp_path)}
    assert rows["vllm-3"]["client_minus_server_ms"] == {"ttft": 2.0, "e2el": 3.0}  # no ITL histogram: no ITL row
    assert rows["ours-3"]["client_minus_server_ms"] == {"ttft": 1.0, "e2el": 1.0}
