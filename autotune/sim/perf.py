"""Performance model of one engine step: a roofline over FLOPs and HBM bytes plus CPU/launch overhead.

Everything is derived from the :class:`~autotune.models.ModelSpec` (shapes, parameter counts, KV bytes per
token), the :class:`~autotune.gpus.GpuSpec` (datasheet rates) and a few fitted constants read from the
card's calibration YAML (``compute_efficiency``, ``hbm_efficiency``, step overheads); see
``docs/results/sim-accuracy.md`` for what they were fitted to and how well the model predicts held-out points.

Step cost (per DP replica, per TP rank):
    GEMMs     = max(2 × active params × tokens + 2 × LM-head params × sampled seqs FLOPs, weight + KV-write bytes)
    attention = max(attention FLOPs, bytes of the KV read for every sequence's context)
                (FLOPs / (dense peak × compute_efficiency), bytes / (HBM × hbm_efficiency))
    gpu       = GEMMs + attention + TP all-reduces + vision encoder
                GEMMs and attention are separate kernels, each bound by its own resource: in a mixed step the
                decodes' KV reads add to the prefill's GEMM compute instead of hiding under it.
    step      = gpu + overhead (CUDA graph for decode-only batches ≤ capture size, eager otherwise;
                the CPU part shrinks with async scheduling); no per-sequence term (see sim-accuracy.md)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from autotune.errors import UsageError
from autotune.flags import effective_flags
from autotune.gpus import GpuSpec
from autotune.memory import encoder_profiled
from autotune.models import KV_DTYPE_BYTES, WEIGHT_DTYPE_BYTES, ModelSpec

__all__ = ["PerfConstants", "PerfModel", "StartupTimes", "EncoderWork"]


@dataclass(frozen=True)
class PerfConstants:
    """Fitted and assumed constants of the timing model (the extra keys of a calibration YAML)."""

    compute_efficiency: float = 0.8  # fraction of the dense tensor-core peak reached by the GEMMs
    hbm_efficiency: float = 0.8  # fraction of the HBM datasheet bandwidth reached by memory-bound steps
    graph_step_overhead_ms: float = 1.0  # decode-only step replayed as one CUDA graph
    eager_step_overhead_ms: float = 4.0  # mixed / prefill step: launches + Python (piecewise / eager)
    sync_overhead_ms: float = 1.5  # CPU scheduling + output processing not hidden without async scheduling
    # A step outside CUDA graphs lasts at least this long: the host's time to prepare and launch it, which its GPU
    # work hides when longer (0: no floor, the step is its GPU work plus eager_step_overhead_ms).
    host_step_ms: float = 0.0
    allreduce_latency_us: float = 8.0  # one NCCL all-reduce on NVLink, latency part
    nvlink_efficiency: float = 0.7
    # The routed and shared experts' weight reads (vLLM's fused-MoE kernels): a fraction of the HBM bandwidth of
    # their own, with bf16 and with fp8 weights, and a factor on it with expert parallel (whole experts per rank:
    # the kernel runs on another shape). 0: as hbm_efficiency / as the bf16 figure.
    moe_hbm_efficiency: float = 0.0
    moe_fp8_hbm_efficiency: float = 0.0
    moe_ep_efficiency_factor: float = 1.0
    moe_compute_efficiency: float = 0.0  # of the tensor-core peak, for the experts' FLOPs (0: as compute_efficiency)
    # Attention's reads of an fp8 KV cache, as a fraction of the bandwidth bf16 KV reads reach (its kernel dequantizes
    # what it reads): 1 halves the read time with the bytes.
    fp8_kv_read_efficiency: float = 1.0
    # Vision tower: what each card's value rests on is in its calibration/*.yaml (docs/results/vlm-images.md).
    vision_compute_efficiency: float = 0.4  # of the dense peak, for the tower's FLOPs (1536-wide GEMMs, ViT attention)
    vision_tp_shard_efficiency: float = 0.6  # further factor when the tower is TP-sharded (weights mode)
    vision_step_overhead_ms: float = 2.0  # per step that runs the tower: its kernels launched eagerly
    vision_profile_s: float = 3.0  # start-up: the encoder's memory profiling run (not with --skip-mm-profiling)
    weight_load_gb_s: float = 2.0  # safetensors from local disk into HBM
    torch_compile_s: float = 30.0  # Dynamo + Inductor, cold cache
    graph_capture_s_per_size: float = 0.25
    graph_memory_gib_per_size: float = 0.01
    engine_init_other_s: float = 5.0  # profiling run, KV cache allocation, warm-up, API server

    @classmethod
    def from_gpu(cls, gpu: GpuSpec) -> PerfConstants:
        extra = dict(gpu.extra or {})
        known = {f.name for f in fields(cls)}
        return cls(**{k: float(v) for k, v in extra.items() if k in known})


@dataclass(frozen=True)
class EncoderWork:
    """A request's vision tower work: its images' seconds (:meth:`PerfModel.image_encode_s`) summed, and the
    longest image's (what a rank spends on it where whole images are spread over ranks)."""

    total_s: float = 0.0
    longest_s: float = 0.0


@dataclass(frozen=True)
class StartupTimes:
    weight_load_s: float
    torch_compile_s: float
    graph_capture_s: float
    num_capture_sizes: int
    other_s: float

    @property
    def total_s(self) -> float:
        return self.weight_load_s + self.torch_compile_s + self.graph_capture_s + self.other_s


def capture_sizes(max_size: int) -> list[int]:
    """vLLM's default CUDA-graph batch sizes: 1, 2, 4, then steps of 8 up to 256, then of 16."""
    sizes = [1, 2, 4] + list(range(8, 256, 8)) + list(range(256, max_size + 1, 16))
    return [s for s in sizes if s <= max_size]


class PerfModel:
    """Step and startup cost of one engine replica (``tp`` GPUs) for a model, a card and vLLM flags.

    Hot path: :meth:`step_time_s` takes per-step aggregates (plain numbers), never per-token objects.
    """

    def __init__(self, model: ModelSpec, gpu: GpuSpec, flags: dict[str, Any]) -> None:
        f = effective_flags(flags)
        self.model, self.gpu, self.flags = model, gpu, f
        self.c = c = PerfConstants.from_gpu(gpu)
        self.tp = tp = int(f["tensor-parallel-size"] or 1)
        self.dp = int(f["data-parallel-size"] or 1)
        quant_fp8 = f.get("quantization") == "fp8"
        kv_dtype = str(f["kv-cache-dtype"] or "auto")
        if kv_dtype not in KV_DTYPE_BYTES:
            raise UsageError(f"unknown kv-cache-dtype {kv_dtype!r}")
        self.enforce_eager = bool(f["enforce-eager"])
        self.async_scheduling = bool(f["async-scheduling"])
        self.max_capture = 0 if self.enforce_eager else int(f["max-cudagraph-capture-size"] or 0)
        peak_tflops = gpu.fp8_tflops if quant_fp8 else gpu.bf16_tflops
        self._flops_s = peak_tflops * 1e12 * c.compute_efficiency * tp
        self._bytes_s = gpu.hbm_tb_s * 1e12 * c.hbm_efficiency * tp
        moe_efficiency = c.moe_hbm_efficiency or c.hbm_efficiency
        if quant_fp8:
            moe_efficiency = c.moe_fp8_hbm_efficiency or moe_efficiency
        if f.get("enable-expert-parallel"):
            moe_efficiency *= c.moe_ep_efficiency_factor
        self._expert_bytes_s = gpu.hbm_tb_s * 1e12 * moe_efficiency * tp
        w_elem = 1.0 if quant_fp8 else WEIGHT_DTYPE_BYTES.get(model.weight_dtype, 2.0)
        head = model.vocab_size * model.hidden_size
        # Per token through the layers: the experts' GEMMs (fused-MoE kernels) at their own efficiency, the rest
        # at the dense one, both expressed as dense-rate parameters.
        expert_active = ((model.num_experts_per_tok + model.num_shared_experts) * model.expert_params
                         * model.num_moe_layers) if model.is_moe else 0
        moe_compute = c.moe_compute_efficiency or c.compute_efficiency
        self._body_params = (model.active_params_per_token - head - expert_active
                             + expert_active * c.compute_efficiency / moe_compute)
        self._head_params = head
        self._attn_flops_per_ctx = 4.0 * model.num_attention_heads * model.head_dim * model.num_layers
        self.kv_bytes_per_token = model.kv_bytes_per_token(kv_dtype)
        self._kv_read_bytes_s = self._bytes_s * (c.fp8_kv_read_efficiency if kv_dtype.startswith("fp8") else 1.0)
        vision_params = model.vision.params if model.vision else 0
        # Weights read once per step: everything but the input embedding (a gather) and the vision tower.
        expert_total = model.num_moe_layers * model.num_experts * model.expert_params
        self._dense_weight_bytes = (model.total_params - vision_params - head - expert_total) * w_elem
        if model.tie_word_embeddings:
            self._dense_weight_bytes += head * w_elem
        self._expert_bytes = model.expert_params * w_elem * model.num_moe_layers  # one expert in every MoE layer
        self._hidden_bytes = model.hidden_size * 2.0
        self._graph_s = c.graph_step_overhead_ms / 1e3
        cpu_s = 0.0 if self.async_scheduling else c.sync_overhead_ms / 1e3
        self._graph_s += cpu_s
        self._eager_s = c.eager_step_overhead_ms / 1e3 + cpu_s
        self._host_step_s = c.host_step_ms / 1e3
        self._ar_latency_s = c.allreduce_latency_us / 1e6
        self._nvlink_b_s = gpu.nvlink_gb_s * 1e9 * c.nvlink_efficiency
        self.mm_encoder_data_mode = f["mm-encoder-tp-mode"] == "data"

    # -- one step ---------------------------------------------------------------------------------------------
    def experts_touched(self, num_tokens: int) -> float:
        """Expected distinct routed experts per MoE layer hit by ``num_tokens`` tokens (uniform routing),
        plus the shared experts."""
        m = self.model
        if not m.is_moe or num_tokens <= 0:
            return 0.0
        return self._routed_touched(num_tokens) + m.num_shared_experts

    def _routed_touched(self, num_tokens: float) -> float:
        e, k = self.model.num_experts, self.model.num_experts_per_tok
        return e * (1.0 - (1.0 - k / e) ** num_tokens) if num_tokens > 0 else 0.0

    def step_time_s(self, num_tokens: int, num_seqs: int, num_sampled: int, attn_ctx_tokens: float,
                    kv_read_tokens: float, decode_only: bool, encoder_s: float = 0.0) -> float:
        """Modelled seconds of one step.

        num_tokens: tokens computed this step (decodes + prefill chunk tokens); num_seqs: sequences scheduled;
        num_sampled: sequences that sample a token (LM head rows); attn_ctx_tokens: sum over computed tokens of
        the context each attends to; kv_read_tokens: sum over sequences of KV tokens read; encoder_s: vision
        tower time of the images first scheduled in this step (:meth:`encoder_step_s`).
        """
        if num_tokens <= 0:
            return 0.0
        compute_s, memory_s, fixed_s, floor_s = self._parts(num_tokens, num_sampled, decode_only)
        attn_compute_s = self._attn_flops_per_ctx * attn_ctx_tokens / self._flops_s
        attn_memory_s = kv_read_tokens * self.kv_bytes_per_token / self._kv_read_bytes_s
        gemm_s = compute_s if compute_s > memory_s else memory_s
        attn_s = attn_compute_s if attn_compute_s > attn_memory_s else attn_memory_s
        step_s = gemm_s + attn_s + fixed_s + encoder_s
        return floor_s if floor_s > step_s else step_s

    def decode_run_times_s(self, num_seqs: int, ctx_sum: int, num_steps: int) -> np.ndarray:
        """Durations of ``num_steps`` consecutive decode-only steps of the same ``num_seqs`` sequences whose
        contexts sum to ``ctx_sum`` tokens at the first step (each step adds one token per sequence)."""
        compute_s, memory_s, fixed_s, floor_s = self._parts(num_seqs, num_seqs, True)
        ctx = ctx_sum + num_seqs * np.arange(num_steps, dtype=np.float64)
        attn = np.maximum(self._attn_flops_per_ctx * ctx / self._flops_s,
                          ctx * self.kv_bytes_per_token / self._kv_read_bytes_s)
        steps_s = max(compute_s, memory_s) + attn + fixed_s
        if floor_s > 0:  # eager decode steps wait on the host too
            return np.maximum(steps_s, floor_s)
        return steps_s

    def _parts(self, num_tokens: int, num_sampled: int, decode_only: bool) -> tuple[float, float, float, float]:
        """(GEMM compute s, GEMM memory s, fixed s) of a step, everything but attention; and the host's time under
        it (0 where the step replays a CUDA graph)."""
        compute_s = 2.0 * (self._body_params * num_tokens + self._head_params * num_sampled) / self._flops_s
        weight_bytes = self._dense_weight_bytes
        comm_s = 0.0
        if self.model.is_moe:
            m = self.model
            if self.dp > 1:
                # vLLM spreads the routed experts over all tp×dp ranks (whole experts with EP, else each expert
                # TP-sharded over the flattened tp×dp group) and the DP replicas step in lockstep through the
                # MoE layers: each rank reads its share of the experts hit by all replicas' tokens (replicas
                # are symmetric here, so dp × this step's tokens). Tokens cross the DP replicas twice per MoE
                # layer: all-gather + reduce-scatter over the DP group, with or without EP (vLLM's default
                # --all2all-backend allgather_reducescatter; DeepEP/pplx top-k dispatch is not modelled).
                touched = self._routed_touched(num_tokens * self.dp) / self.dp + m.num_shared_experts
                comm_s += 2 * m.num_moe_layers * (
                    self._ar_latency_s + num_tokens * (self.dp - 1) * self._hidden_bytes / self._nvlink_b_s)
            else:
                # DP = 1: EP only regroups the TP ranks (whole experts per rank instead of expert slices);
                # the bytes read are the same and the experts' partial sums go through the TP all-reduce
                # counted below, so no extra communication (EP's per-rank load imbalance is not modelled).
                touched = self.experts_touched(num_tokens)
            expert_s = touched * self._expert_bytes / self._expert_bytes_s
        else:
            expert_s = 0.0
        memory_s = (weight_bytes + num_tokens * self.kv_bytes_per_token) / self._bytes_s + expert_s
        if self.tp > 1:  # two all-reduces of the hidden states per layer (ring)
            msg = num_tokens * self._hidden_bytes * 2.0 * (self.tp - 1) / self.tp
            comm_s += 2 * self.model.num_layers * (self._ar_latency_s + msg / self._nvlink_b_s)
        graphed = decode_only and num_tokens <= self.max_capture
        overhead_s = self._graph_s if graphed else self._eager_s
        floor_s = 0.0 if graphed else self._host_step_s  # a CUDA graph's replay does not wait on the host
        return compute_s, memory_s, comm_s + overhead_s, floor_s

    # -- vision -----------------------------------------------------------------------------------------------
    def image_tokens(self, width: int, height: int) -> int:
        """Prompt tokens an image adds (its image tokens and the markers around them)."""
        return self.model.vision.prompt_tokens(width, height) if self.model.vision else 0

    def image_encode_s(self, width: int, height: int) -> float:
        """Vision tower seconds of one image, from its FLOPs (:meth:`VisionSpec.encoder_flops`).

        ``mm-encoder-tp-mode data`` (or TP 1): one GPU runs the whole tower on the image; with TP > 1 the image's
        embeddings are then all-gathered (bandwidth counted here, the latency once per step). ``weights``: the
        tower is TP-sharded, its GEMMs split over the ranks (narrower, so less efficient) and every block
        all-reduces the image's activations twice (after attention and after the MLP), the merger once more."""
        v = self.model.vision
        if v is None:
            return 0.0
        rate_flops_s = self.gpu.bf16_tflops * 1e12 * self.c.vision_compute_efficiency
        flops = v.encoder_flops(width, height)
        patches = v.patches(width, height)
        merged = patches // v.spatial_merge_size**2
        ring = (self.tp - 1) / self.tp
        if self.tp == 1 or self.mm_encoder_data_mode:
            gather_s = merged * v.out_hidden_size * 2.0 * ring / self._nvlink_b_s
            return flops / rate_flops_s + gather_s
        block_msg_s = patches * v.hidden_size * 2.0 * 2.0 * ring / self._nvlink_b_s
        merger_msg_s = merged * v.out_hidden_size * 2.0 * 2.0 * ring / self._nvlink_b_s
        comm_s = 2 * v.num_layers * (self._ar_latency_s + block_msg_s) + self._ar_latency_s + merger_msg_s
        return flops / (rate_flops_s * self.tp * self.c.vision_tp_shard_efficiency) + comm_s

    def encoder_work(self, image_sizes: Sequence[tuple[int, int]]) -> EncoderWork:
        """A request's images as the scheduler charges them: their seconds summed, and the longest one."""
        times = [self.image_encode_s(w, h) for w, h in image_sizes]
        return EncoderWork(sum(times), max(times, default=0.0))

    def encoder_step_s(self, total_s: float, longest_s: float) -> float:
        """Vision tower seconds of a step whose new images take ``total_s`` (their :meth:`image_encode_s` summed),
        the longest ``longest_s``. ``data`` mode with TP > 1 spreads whole images over the TP ranks (vLLM balances
        them by patch count): the step waits for the busiest rank, at least the longest image, at best an even
        share. Every step that runs the tower pays its launch overhead (it runs eagerly, outside CUDA graphs)."""
        if total_s <= 0.0:
            return 0.0
        fixed_s = self.c.vision_step_overhead_ms / 1e3
        if self.tp > 1 and self.mm_encoder_data_mode:
            return max(total_s / self.tp, longest_s) + fixed_s + self._ar_latency_s
        return total_s + fixed_s

    # -- startup ----------------------------------------------------------------------------------------------
    def startup_times(self, weights_gib_per_gpu: float) -> StartupTimes:
        c = self.c
        load_gb_s = c.weight_load_gb_s * (25.0 if self.flags.get("load-format") == "dummy" else 1.0)
        weight_load_s = weights_gib_per_gpu * 1.073741824 / load_gb_s
        compile_s = 0.0 if self.enforce_eager else c.torch_compile_s
        profile_s = c.vision_profile_s if encoder_profiled(self.model, self.flags) else 0.0
        sizes = capture_sizes(self.max_capture) if self.max_capture else []
        graph_s = len(sizes) * c.graph_capture_s_per_size  # per size: mixed (piecewise) + decode (full) graphs
        return StartupTimes(weight_load_s, compile_s, graph_s, len(sizes), c.engine_init_other_s + profile_s)
