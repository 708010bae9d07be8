from __future__ import annotations

from pathlib import Path

import pytest

from autotune.gpus import load_gpu
from autotune.memory import plan_memory
from autotune.models import resolve_model


@pytest.mark.parametrize("kv_dtype, real_tokens", [("auto", 1_409_648), ("fp8", 2_817_680)])
def test_kv_tokens_match_vllm_on_h100(weightless_flash_dir: Path, kv_dtype: str, real_tokens: int) -> None:
    # vLLM 0.26.0 on one H100 80GB, its defaults (gpu-memory-utilization 0.92)
    plan = plan_memory(resolve_model(str(weightless_flash_dir)), load_gpu("h100"), {"kv-cache-dtype": kv_dtype})
    assert plan.fits
    assert abs(plan.kv_cache_tokens - real_tokens) / real_tokens < 0.01
    assert abs(plan.weights_gib_per_gpu - 17.56) < 0.05  # "Model loading took 17.56 GiB"


# Every configuration the H100 studies started (docs/results/h100-flash.md has the command lines), KV tokens as
# vLLM 0.26.0 printed them on one H100: the plan with vLLM's accounting, constants set from vLLM's defaults only.
_H100_STARTS = [
    ({"kv-cache-dtype": "fp8", "max-num-seqs": 768, "gpu-memory-utilization": 0.9}, 2_757_440),
    ({"kv-cache-dtype": "fp8", "max-num-seqs": 512, "max-num-batched-tokens": 16384, "gpu-memory-utilization": 0.9},
     2_712_176),
    ({"max-num-seqs": 640, "max-num-batched-tokens": 2048, "gpu-memory-utilization": 0.95}, 1_474_384),
    ({"max-num-seqs": 128, "kv-cache-dtype": "fp8", "gpu-memory-utilization": 0.95}, 2_942_224),
    ({"max-num-seqs": 128, "max-num-batched-tokens": 16384, "kv-cache-dtype": "fp8", "gpu-memory-utilization": 0.85},
     2_504_608),
    ({"max-num-seqs": 384, "max-num-batched-tokens": 16384, "kv-cache-dtype": "fp8", "gpu-memory-utilization": 0.9},
     2_714_736),
]


@pytest.mark.parametrize("flags, real_tokens", _H100_STARTS)
def test_kv_tokens_of_the_h100_studies_other_starts(weightless_flash_dir: Path, flags: dict, real_tokens: int) -> None:
    plan = plan_memory(resolve_model(str(weightless_flash_dir)), load_gpu("h100"), flags)
    assert abs(plan.kv_cache_tokens - real_tokens) / real_tokens < 0.01


def test_tiny_memory_utilization_refused(weightless_flash_dir: Path) -> None:
    plan = plan_memory(resolve_model(str(weightless_flash_dir)), load_gpu("h100"), {"gpu-memory-utilization": 0.2})
    assert not plan.fits and plan.failure_class == "kv_too_small"
    assert plan.reason.startswith("No available memory for the cache blocks.")


def test_max_model_len_too_long_for_kv_refused(weightless_flash_dir: Path) -> None:
    plan = plan_memory(resolve_model(str(weightless_flash_dir)), load_gpu("h100"), {"gpu-memory-utilization": 0.25})
    assert not plan.fits and plan.failure_class == "kv_too_small"
    assert "KV cache is needed, which is larger than the available KV cache memory" in plan.reason
    # with a shorter max-model-len the same memory is enough
    assert plan_memory(resolve_model(str(weightless_flash_dir)), load_gpu("h100"),
                       {"gpu-memory-utilization": 0.25, "max-model-len": 8192}).fits


def test_max_model_len_beyond_position_embeddings_refused(weightless_flash_dir: Path) -> None:
    plan = plan_memory(resolve_model(str(weightless_flash_dir)), load_gpu("h100"), {"max-model-len": 262144})
    assert not plan.fits
    assert "is greater than the derived max_model_len" in plan.reason


def test_weights_larger_than_card_is_oom() -> None:
    plan = plan_memory(resolve_model("glm-4.6v"), load_gpu("h100"), {"tensor-parallel-size": 1})
    assert not plan.fits and plan.failure_class == "oom"
    assert "CUDA out of memory" in plan.reason
    assert plan_memory(resolve_model("glm-4.6v"), load_gpu("h100"), {"tensor-parallel-size": 4}).fits


# vLLM 0.26.0 on two H200s, the weightless GLM-4.6V text backbone (docs/results/raw/h200x2-glm46v-layouts/): KV
# tokens per engine as vLLM printed them. tp2 and dp2-ep-fp8w set the MoE constants of calibration/h200.yaml; the
# others (EP, fp8 KV) test the rest of the plan against them.
_GLM46V_H200X2_KV_TOKENS = {
    "tp2": ({"tensor-parallel-size": 2}, 281_520),
    "dp2-ep-fp8w": ({"data-parallel-size": 2, "enable-expert-parallel": True, "quantization": "fp8"}, 383_344),
    "tp2-ep": ({"tensor-parallel-size": 2, "enable-expert-parallel": True}, 281_536),
    "tp2-kvfp8": ({"tensor-parallel-size": 2, "kv-cache-dtype": "fp8"}, 564_560),
    "dp2-ep-fp8w-kvfp8": ({"data-parallel-size": 2, "enable-expert-parallel": True, "quantization": "fp8",
                           "kv-cache-dtype": "fp8"}, 766_608),
    "tp2-ep-kvfp8": ({"tensor-parallel-size": 2, "enable-expert-parallel": True, "kv-cache-dtype": "fp8"}, 562_384),
    # the study's trial 3 (docs/results/raw/h200x2-glm46v-study/), a layout the plan was never fitted on
    "tp2-fp8w-kvfp8": ({"tensor-parallel-size": 2, "quantization": "fp8", "kv-cache-dtype": "fp8",
                        "max-num-seqs": 1024}, 1_681_808),
}


@pytest.mark.parametrize("layout", list(_GLM46V_H200X2_KV_TOKENS))
def test_moe_kv_tokens_match_vllm_on_two_h200s(layout: str) -> None:
    flags, real_tokens = _GLM46V_H200X2_KV_TOKENS[layout]
    served = Path(__file__).parents[1] / "docs/results/raw/h200x2-glm46v-layouts"  # its config.json: no vision tower
    plan = plan_memory(resolve_model(str(served)), load_gpu("h200"), flags)
    assert plan.fits
    assert abs(plan.kv_cache_tokens - real_tokens) / real_tokens < 0.02


def test_dense_kv_tokens_match_vllm_on_h200(weightless_flash_dir: Path) -> None:
    # the fourth reproducibility pair's 24 starts of vLLM's defaults: 2,883,088 tokens each, 17.56 GiB of weights
    plan = plan_memory(resolve_model(str(weightless_flash_dir)), load_gpu("h200"), {})
    assert abs(plan.kv_cache_tokens - 2_883_088) / 2_883_088 < 0.001


def test_graph_estimate_only_where_vllm_profiles_it(weightless_flash_dir: Path) -> None:
    """vLLM's V1 runner (MoE) takes its CUDA graph estimate out of the KV budget, the V2 runner (dense) does not;
    without graphs (enforce-eager) there is none, and each extra DP rank adds to it."""
    from autotune.memory import cuda_graph_estimate_gib

    h200 = load_gpu("h200")
    assert cuda_graph_estimate_gib(resolve_model(str(weightless_flash_dir)), h200, {}) == 0.0
    moe = resolve_model("glm-4.6v")
    tp2 = cuda_graph_estimate_gib(moe, h200, {"tensor-parallel-size": 2})
    dp2 = cuda_graph_estimate_gib(moe, h200, {"data-parallel-size": 2})
    assert 0.0 < tp2 < dp2
    assert cuda_graph_estimate_gib(moe, h200, {"tensor-parallel-size": 2, "enforce-eager": True}) == 0.0
    eager = plan_memory(moe, h200, {"tensor-parallel-size": 2, "enforce-eager": True})
    graphs = plan_memory(moe, h200, {"tensor-parallel-size": 2})
    assert eager.kv_cache_gib_per_gpu - graphs.kv_cache_gib_per_gpu == pytest.approx(tp2)
