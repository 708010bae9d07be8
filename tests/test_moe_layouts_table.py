"""benchmarks/moe_layouts_table.py (issue #20): vLLM 0.26.0's start-up lines per rank, and the comparison of each
layout with the memory plan for the same flags, on a fixture folder as benchmarks/gpu/moe_layouts.sh writes it
(tests/data/moe_layouts: invented figures in vLLM's formats) and on real start-up lines from an H200."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from autotune.gpus import load_gpu
from autotune.memory import plan_memory
from autotune.models import resolve_model
from tests.benchmark_scripts import load_benchmark

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).with_name("data") / "moe_layouts"
SCRIPT = REPO / "benchmarks" / "gpu" / "moe_layouts.sh"


mlt = load_benchmark("moe_layouts_table")


def test_real_h200_startup_lines_parse() -> None:
    """The lines vLLM 0.26.0 printed on an H200 (one engine, one GPU): model GiB, KV tokens, KV GiB."""
    text = (REPO / "docs/results/raw/h200-vlm-serve/startup-default.txt").read_text()
    m = mlt.measured_figures(text)
    assert m["model_gib_per_gpu"] == 19.29
    assert m["kv_cache_tokens"] == 2_837_824
    assert m["kv_cache_gib_per_gpu"] == 108.25
    assert m["max_concurrency"] == 21.65
    assert m["engine_init_s"] == 58.52
    assert set(m["model_gib_by_rank"]) == {"EngineCore"}


def test_ranks_are_kept_apart() -> None:
    """Each TP worker logs its own model size; the fullest rank is the figure per GPU; KV tokens come from the
    engine core. Unprefixed lines (the sim engine's API server) go under ''."""
    procs = mlt.startup_by_process((FIXTURE / "tp2" / "startup.txt").read_text() + "\nINFO 12-01 x [a.py:1] "
                                   "GPU KV cache size: 7 tokens")
    assert procs["Worker_TP0"].model_memory_gib == 99.61
    assert procs["Worker_TP1"].model_memory_gib == 99.63
    assert procs["EngineCore"].kv_cache_tokens == 292_768
    assert procs[""].kv_cache_tokens == 7
    m = mlt.measured_figures((FIXTURE / "tp2" / "startup.txt").read_text())
    assert m["model_gib_per_gpu"] == 99.63
    assert m["kv_cache_gib_per_gpu"] == 25.68  # the smaller rank
    assert m["engine_init_s"] == 190.42


def test_data_parallel_engines_each_log_their_kv_cache() -> None:
    m = mlt.measured_figures((FIXTURE / "dp2-ep-fp8w" / "startup.txt").read_text())
    assert m["kv_cache_tokens_by_engine"] == {"EngineCore_DP0": 404_000, "EngineCore_DP1": 403_872}
    assert m["kv_cache_tokens"] == 403_872
    assert m["model_gib_by_rank"] == {"Worker_DP0_EP0": 54.40, "Worker_DP1_EP1": 54.38}


def test_serve_flags_of_vllm_and_sim_commands() -> None:
    cmd = (FIXTURE / "dp2-ep-fp8w" / "cmd.txt").read_text()
    assert mlt.serve_flags(cmd) == {"load-format": "dummy", "data-parallel-size": 2, "enable-expert-parallel": True,
                                    "quantization": "fp8"}
    sim = ("python3 -m autotune sim serve /tmp/m --load-format dummy --port 1 --served-model-name x "
           "--tensor-parallel-size 2 --kv-cache-dtype fp8 --gpu-type h200 --time-scale 20")
    assert mlt.serve_flags(sim) == {"load-format": "dummy", "tensor-parallel-size": 2, "kv-cache-dtype": "fp8"}
    with pytest.raises(ValueError):
        mlt.serve_flags("vllm serve /tmp/m --no-such-flag 1")


def test_table_compares_each_layout_with_the_plan() -> None:
    t = mlt.table(FIXTURE)
    model, gpu = resolve_model(str(FIXTURE)), load_gpu("h200")
    rows = {r["name"]: r for r in t["layouts"]}
    assert list(rows) == ["tp2", "dp2-ep-fp8w", "tp2-ep", "tp2-kvfp8", "dp2-ep"]  # layouts.txt's order
    for name, r in rows.items():
        plan = plan_memory(model, gpu, mlt.serve_flags((FIXTURE / name / "cmd.txt").read_text()))
        assert r["planned"]["model_gib_per_gpu"] == plan.weights_gib_per_gpu
        assert r["planned"]["kv_cache_tokens"] == plan.kv_cache_tokens
        assert r["planned"]["fits"] == plan.fits
    tp2 = rows["tp2"]
    assert tp2["error_pct"]["model_gib_per_gpu"] == pytest.approx(100 * (99.63 / 99.56 - 1), abs=0.01)
    tp2_plan = plan_memory(model, gpu, {"tensor-parallel-size": 2})
    assert tp2["error_pct"]["kv_cache_tokens"] == pytest.approx(100 * (292_768 / tp2_plan.kv_cache_tokens - 1))
    assert abs(tp2["error_pct"]["kv_cache_tokens"]) > 2.0
    assert tp2["off"] == ["kv_cache_gib_per_gpu", "kv_cache_tokens"] and tp2["plan_agrees_on_start"] is True and tp2["ready_s"] == 241
    assert tp2["bench"]["output_tok_s"] == 4100.0 and tp2["bench"]["p99_itl_ms"] == 31.5
    assert tp2["measured"]["gpu_used_gib"] == pytest.approx([129200 / 1024, 129180 / 1024])
    # fp8 weights (online) with bf16 embedding and LM head, routed experts over both DP ranks
    assert rows["dp2-ep-fp8w"]["planned"]["model_gib_per_gpu"] == pytest.approx(54.31, abs=0.01)
    kvfp8_plan = plan_memory(model, gpu, {"tensor-parallel-size": 2, "kv-cache-dtype": "fp8"})
    assert 540_000 / kvfp8_plan.kv_cache_tokens - 1 < -0.02
    assert "kv_cache_tokens" in rows["tp2-kvfp8"]["off"]
    skipped = rows["tp2-ep"]
    assert skipped["state"] == "skipped" and skipped["measured"]["model_gib_per_gpu"] is None
    assert skipped["plan_agrees_on_start"] is None and skipped["bench"] is None
    refused = rows["dp2-ep"]  # bf16 weights on DP2: the plan refuses (KV below max-model-len), so did vLLM
    assert refused["planned"]["fits"] is False and refused["planned"]["failure_class"] == "kv_too_small"
    assert refused["state"] == "exited" and refused["failure_class"] == "kv_too_small"
    assert refused["plan_agrees_on_start"] is True
    assert refused["measured"]["kv_cache_tokens"] == 108_000  # vLLM's estimated maximum model length
    assert refused["measured"]["kv_cache_gib_per_gpu"] == 18.95
    assert refused["measured"]["model_gib_per_gpu"] == 106.40


def test_markdown_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    text = mlt.markdown(mlt.table(FIXTURE))
    kvfp8_plan = plan_memory(resolve_model(str(FIXTURE)), load_gpu("h200"),
                             {"tensor-parallel-size": 2, "kv-cache-dtype": "fp8"})
    error = f"{100 * (540_000 / kvfp8_plan.kv_cache_tokens - 1):+.1f}%"
    assert "| tp2-kvfp8 | ready |" in text and f"{error} **off**" in text
    assert f"tp2-kvfp8 kv_cache_tokens ({error})" in text
    assert "exited (kv_too_small)" in text and "(refused: kv_too_small)" in text
    assert mlt.main([str(FIXTURE), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["gpu_type"] == "h200" and len(data["layouts"]) == 5


def test_a_folder_without_config_needs_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert mlt.main([str(tmp_path)]) == 2
    assert "--model" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_the_script_parses_and_names_map_to_flags() -> None:
    """The shell script is valid bash, and its layout names give the flags the table plans with."""
    assert subprocess.run(["bash", "-n", str(SCRIPT)], check=False, capture_output=True).returncode == 0
    source = SCRIPT.read_text()
    func = source[source.index("layout_flags() {"):source.index("\n}\n", source.index("layout_flags() {")) + 3]
    names = "tp2 dp2-ep-fp8w-kvfp8 tp2-ep-len8k"
    out = subprocess.run(["bash", "-c", func + f'for n in {names}; do layout_flags "$n"; done; layout_flags tp2-x'],
                         check=False, capture_output=True, text=True)
    assert out.returncode == 1  # an unknown part
    assert out.stdout.splitlines() == [
        "--tensor-parallel-size 2",
        "--data-parallel-size 2 --enable-expert-parallel --quantization fp8 --kv-cache-dtype fp8",
        "--tensor-parallel-size 2 --enable-expert-parallel --max-model-len 8192",
    ]


def test_measured_layouts_with_vllm_accounting() -> None:
    """The two layouts run on two H200s (docs/results/raw/h200x2-glm46v-layouts, the gzipped server logs): vLLM's
    split of each rank's budget is read and set against the plan's, and the KV cache is off by more than 2%."""
    t = mlt.table(REPO / "docs/results/raw/h200x2-glm46v-layouts")
    rows = {r["name"]: r for r in t["layouts"]}
    assert list(rows) == ["tp2", "dp2-ep-fp8w", "tp2-ep", "tp2-kvfp8", "dp2-ep-fp8w-kvfp8", "tp2-ep-kvfp8"]
    tp2 = rows["tp2"]["measured"]["accounting"]
    assert (tp2["gpu_memory_utilization"], tp2["budget_gib"], tp2["peak_activation_gib"]) == (0.92, 128.62, 3.21)
    assert (tp2["graph_estimate_gib"], tp2["kv_gib"]) == (0.96, 24.7)
    assert rows["dp2-ep-fp8w"]["measured"]["accounting"]["peak_activation_gib"] == 4.21
    assert all(r["off"] == [] for r in rows.values())  # the plan with vLLM's accounting: each within 2%
    assert abs(rows["tp2"]["error_pct"]["model_gib_per_gpu"]) < 0.2
    text = mlt.markdown(t)
    plan = plan_memory(resolve_model(str(REPO / "docs/results/raw/h200x2-glm46v-layouts")), load_gpu("h200"),
                       {"tensor-parallel-size": 2})
    assert (f"| tp2 | 128.62 (0.92) / {plan.kv_cache_gib_per_gpu + plan.weights_gib_per_gpu + plan.reserve_gib_per_gpu:.2f} "
            f"| 99.60 / {plan.weights_gib_per_gpu:.2f} | 3.21 + 0.14 + 0.96 | {plan.reserve_gib_per_gpu:.2f} "
            f"| 24.70 / {plan.kv_cache_gib_per_gpu:.2f} |") in text
