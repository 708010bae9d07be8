"""Memory plan of one engine launch: weights, reserve, KV cache capacity — and whether vLLM would start.

One function serves both the study (check feasibility before launching, never launch an infeasible
point) and the sim engine (print vLLM's startup figures, refuse to start where vLLM would).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autotune.flags import effective_flags, mm_limit
from autotune.gpus import GpuSpec
from autotune.models import ModelSpec

__all__ = ["GIB", "MemoryPlan", "activation_gib", "cuda_graph_estimate_gib", "encoder_profiled", "plan_memory"]

GIB = 1024**3


@dataclass(frozen=True)
class MemoryPlan:
    fits: bool
    reason: str  # empty when it fits; else vLLM's own words for the failure
    failure_class: str  # "", "oom" (weights do not fit), "kv_too_small" (no blocks or max-model-len too long)
    weights_gib_per_gpu: float
    reserve_gib_per_gpu: float
    kv_cache_gib_per_gpu: float
    kv_cache_tokens: int  # per engine (DP replica), as vLLM prints "GPU KV cache size: N tokens"
    max_model_len: int
    max_concurrency: float  # kv_cache_tokens / max_model_len, as vLLM prints it

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def encoder_profiled(model: ModelSpec, flags: dict[str, Any]) -> bool:
    """Does vLLM profile the vision encoder's memory at start-up? For a VLM that takes images or videos
    (limit-mm-per-prompt not 0 for both), unless --skip-mm-profiling. Skipping it starts faster, but the KV cache
    may then take memory the encoder needs at its peak: an out-of-memory error under image load."""
    f = effective_flags(flags)
    limit = f["limit-mm-per-prompt"]
    takes_media = mm_limit(limit, "image") > 0 or mm_limit(limit, "video") > 0
    return model.is_vlm and takes_media and not f["skip-mm-profiling"]


def uses_v1_model_runner(model: ModelSpec) -> bool:
    """vLLM 0.26.0 runs its V2 model runner for every architecture that is not MoE (and a few MoE ones, none of
    ours), the V1 runner for the others (vllm/config/vllm.py, ``use_v2_model_runner``)."""
    return model.is_moe


def activation_gib(model: ModelSpec, gpu: GpuSpec, batched_tokens: int) -> float:
    """Per GPU: the profiling run's peak activation at ``batched_tokens`` (vLLM's "peak activation"), plus, for an
    MoE model, the fused-MoE kernels' workspace for every token's top-k experts."""
    dense = gpu.activation_gib_per_1k_batched_tokens * batched_tokens / 1000
    if not model.is_moe:
        return dense
    per_1k_routed = float((gpu.extra or {}).get("moe_activation_gib_per_1k_routed_tokens", 0.0))
    return dense + per_1k_routed * batched_tokens * model.num_experts_per_tok / 1000


def cuda_graph_estimate_gib(model: ModelSpec, gpu: GpuSpec, flags: dict[str, Any]) -> float:
    """What vLLM sets aside for CUDA graphs before sizing the KV cache ("Estimated CUDA graph memory"): only its
    V1 model runner profiles graph memory; the V2 runner captures them afterwards, outside the budget. Data
    parallelism's graphs are larger (measured at DP2 only; DP4 is taken as DP2, not extrapolated)."""
    f = effective_flags(flags)
    if not uses_v1_model_runner(model) or f["enforce-eager"]:
        return 0.0
    extra = gpu.extra or {}
    key = "cuda_graph_estimate_gib_with_dp" if int(f["data-parallel-size"] or 1) > 1 else "cuda_graph_estimate_gib"
    return float(extra.get(key, 0.0))


def plan_memory(model: ModelSpec, gpu: GpuSpec, flags: dict[str, Any]) -> MemoryPlan:
    """Per-GPU memory of one engine replica under ``flags``.

    Sharding follows vLLM: attention, dense MLPs, shared experts, embedding and LM head are TP-sharded and
    replicated over DP; the routed experts (FusedMoE) are always spread over all TP×DP ranks — as whole
    experts with ``--enable-expert-parallel`` (EP), else each expert TP-sharded over the flattened TP×DP
    group (vLLM's ``FusedMoEParallelConfig.flatten_tp_across_dp``) — so the per-GPU bytes are the same.
    The vision tower is TP-sharded in ``mm-encoder-tp-mode weights`` and replicated in ``data`` mode; the memory
    its profiling run peaks at is reserved unless ``--skip-mm-profiling`` (:func:`encoder_profiled`).
    ``--quantization fp8`` (online) stores Linear and MoE weights in fp8; the input embedding and the LM
    head stay in the checkpoint dtype."""
    f = effective_flags(flags)
    tp = int(f["tensor-parallel-size"] or 1)
    dp = int(f["data-parallel-size"] or 1)
    quant = f.get("quantization")
    bytes_per_param = model.weight_bytes(quant) / model.total_params
    weight_bytes = model.weight_bytes(quant)
    if quant == "fp8":  # VocabParallelEmbedding / ParallelLMHead are not quantized by online fp8
        weight_bytes += model.embedding_params * (model.weight_bytes(None) / model.total_params - bytes_per_param)
    expert_bytes = model.num_moe_layers * model.num_experts * model.expert_params * bytes_per_param
    vision_bytes = (model.vision.params if model.vision else 0) * bytes_per_param
    vision_ranks = 1 if f["mm-encoder-tp-mode"] == "data" else tp
    weights = (weight_bytes - expert_bytes - vision_bytes) / tp + expert_bytes / (tp * dp) + vision_bytes / vision_ranks
    # vLLM's "Model loading took X GiB" also counts buffers allocated with the weights (calibration constant).
    weights_gib = weights / GIB + float((gpu.extra or {}).get("model_load_extra_gib", 0.0))
    batched = int(f["max-num-batched-tokens"] or 8192)
    reserve_gib = gpu.non_torch_gib + activation_gib(model, gpu, batched) + cuda_graph_estimate_gib(model, gpu, f)
    if encoder_profiled(model, f):  # the encoder's peak on the profiling run's largest images, kept free of KV
        reserve_gib += float((gpu.extra or {}).get("vision_profile_gib", 0.0))
    budget_gib = gpu.memory_gib * float(f["gpu-memory-utilization"])
    kv_gib = budget_gib - weights_gib - reserve_gib
    max_len = int(f["max-model-len"] or model.max_position_embeddings)
    kv_heads_per_rank = max(1, model.num_kv_heads // tp) if model.num_kv_heads >= tp else 1
    kv_bytes_per_token_per_gpu = model.kv_bytes_per_token(f["kv-cache-dtype"]) * kv_heads_per_rank / model.num_kv_heads
    block = int(f["block-size"] or 16)
    if weights_gib > gpu.memory_gib:  # the weights themselves do not fit on the card: CUDA OOM while loading
        reason = ("CUDA out of memory. Tried to allocate %.2f GiB. GPU 0 has a total capacity of %.2f GiB "
                  "(model weights need %.2f GiB per GPU)" % (min(weights_gib, 1.0), gpu.memory_gib, weights_gib))
        return MemoryPlan(False, reason, "oom", weights_gib, reserve_gib, 0.0, 0, max_len, 0.0)
    if max_len > model.max_position_embeddings:  # vLLM's ModelConfig check, before anything is loaded
        reason = (f"User-specified max_model_len ({max_len}) is greater than the derived max_model_len "
                  f"(max_position_embeddings={model.max_position_embeddings} or model_max_length=None in "
                  f"model's config.json). To allow overriding this maximum, set the env var "
                  f"VLLM_ALLOW_LONG_MAX_MODEL_LEN=1.")
        return MemoryPlan(False, reason, "kv_too_small", weights_gib, reserve_gib, 0.0, 0, max_len, 0.0)
    if kv_gib <= 0:  # vllm/v1/core/kv_cache_utils.py
        reason = ("No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when "
                  "initializing the engine. See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ "
                  "for more details.")
        return MemoryPlan(False, reason, "kv_too_small", weights_gib, reserve_gib, 0.0, 0, max_len, 0.0)
    blocks = int(kv_gib * GIB // (kv_bytes_per_token_per_gpu * block))
    tokens = blocks * block
    if tokens < max_len:
        needed_gib = -(-max_len // block) * block * kv_bytes_per_token_per_gpu / GIB
        est = f"Based on the available memory, the estimated maximum model length is {tokens}. " if tokens else ""
        reason = (f"To serve at least one request with the models's max seq len ({max_len}), ({needed_gib:.2f} GiB "
                  f"KV cache is needed, which is larger than the available KV cache memory ({kv_gib:.2f} GiB). "
                  f"{est}Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing "
                  f"the engine. See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details.")
        return MemoryPlan(False, reason, "kv_too_small", weights_gib, reserve_gib, kv_gib, tokens, max_len,
                          tokens / max_len)
    return MemoryPlan(True, "", "", weights_gib, reserve_gib, kv_gib, tokens, max_len, tokens / max_len)
