from __future__ import annotations

from pathlib import Path

import pytest

from autotune.gpus import load_gpu
from autotune.memory import plan_memory
from autotune.models import resolve_model


@pytest.mark.parametrize("kv_dtype, real_tokens", [("auto", 1_409_648), ("fp8", 2_817_680)])
def test_kv_tokens_match_vllm_on_h100(weightless_flash_dir: Path, kv_dtype: str, real_tokens: int) -> None:
    # vLLM 0.26.0 on one H100 80GB, gpu-memory-utilization 0.9, defaults otherwise
    plan = plan_memory(resolve_model(str(weightless_flash_dir)), load_gpu("h100"), {"kv-cache-dtype": kv_dtype})
    assert plan.fits
    assert abs(plan.kv_cache_tokens - real_tokens) / real_tokens < 0.01
    assert abs(plan.weights_gib_per_gpu - 17.56) < 0.05  # "Model loading took 17.56 GiB"


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
