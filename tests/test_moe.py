"""GLM-4.6V (106B MoE) on four H100s: memory plan by hand, sim predictions, the search space, the text backbone
as a model folder. Fast: no servers."""
from __future__ import annotations

import dataclasses
import json
import math

import optuna
import pytest

from autotune.gpus import load_gpu
from autotune.memory import GIB, plan_memory
from autotune.models import resolve_model
from autotune.sim.perf import PerfModel
from autotune.sim.predict import predict
from autotune.space import load_space

H100 = load_gpu("h100")
M = resolve_model("glm-4.6v")

# By hand, from the preset's shapes (46 layers, 45 MoE layers, hidden 4096, 96×128 query, 8×128 KV).
ATTN = 2 * 4096 * 96 * 128 + 2 * 4096 * 8 * 128  # q, o + k, v per layer
EXPERT = 3 * 4096 * 1408  # gate, up, down of one expert
ROUTED = 45 * 128 * EXPERT  # every routed expert of every MoE layer: 99.66 B
EMBED = 2 * 151552 * 4096  # input embedding + LM head (untied)
# The vision tower as vLLM builds it (glm4_1v.py): 24 blocks (qkv + proj, gated MLP 1536 -> 4096), the patch
# embedding (3 x 2 x 14 x 14 -> 1536), the 24 x 24 position grid, the 2x2 downsample conv (1536 x 4 -> 4096) and
# the merger (proj 4096 x 4096, gated MLP 4096 -> 13696).
VISION = (24 * (4 * 1536**2 + 3 * 1536 * 4096) + 3 * 2 * 14 * 14 * 1536 + 24 * 24 * 1536
          + 1536 * 4 * 4096 + 4096**2 + 3 * 4096 * 13696)
NON_ROUTED = 46 * ATTN + 3 * 4096 * 10944 + 45 * (EXPERT + 4096 * 128) + EMBED + VISION  # + dense layer, shared, router
EXTRA = 0.05  # h100.yaml model_load_extra_gib


def plan(**flags):
    f = {"tensor-parallel-size": 1, **flags}
    return plan_memory(M, H100, f)


def test_parameter_count_by_hand():
    assert M.total_params == ROUTED + NON_ROUTED
    assert 106e9 < M.total_params < 109e9  # "106B" text model + vision tower
    assert M.weight_bytes() / GIB == pytest.approx(200.7, abs=0.1)
    assert M.kv_bytes_per_token("auto") == 46 * 2 * 8 * 128 * 2  # 188,416 B per token
    assert M.kv_bytes_per_token("fp8") == 46 * 2 * 8 * 128


def test_tp4_bf16_about_50_gib_per_gpu_and_kv_heads_split():
    p = plan(**{"tensor-parallel-size": 4})
    assert p.fits
    assert p.weights_gib_per_gpu == pytest.approx(M.total_params * 2 / 4 / GIB + EXTRA, rel=1e-9)  # 50.4
    kv_per_gpu = 46 * 2 * (8 // 4) * 128 * 2  # 2 of 8 KV heads per rank
    assert p.kv_cache_tokens == int(p.kv_cache_gib_per_gpu * GIB // (kv_per_gpu * 16)) * 16
    fp8 = plan(**{"tensor-parallel-size": 4, "kv-cache-dtype": "fp8"})
    assert fp8.kv_cache_tokens == pytest.approx(2 * p.kv_cache_tokens, abs=16)


def test_tp4_ep_same_bytes_as_tp4():
    # EP over 4 ranks holds 32 whole experts per GPU; TP4 holds a quarter of each: the same bytes.
    tp4, ep = plan(**{"tensor-parallel-size": 4}), plan(**{"tensor-parallel-size": 4, "enable-expert-parallel": True})
    assert ep.fits and ep.weights_gib_per_gpu == pytest.approx(tp4.weights_gib_per_gpu)
    assert ep.kv_cache_tokens == tp4.kv_cache_tokens


def test_dp4_bf16_experts_sharded_but_default_context_does_not_fit():
    # vLLM shards the routed experts over all TP×DP ranks even without EP (FusedMoEParallelConfig flattens
    # TP across DP); attention, shared expert, embeddings and the vision tower are replicated per DP rank.
    p = plan(**{"data-parallel-size": 4})
    assert p.weights_gib_per_gpu == pytest.approx((NON_ROUTED * 2 + ROUTED * 2 / 4) / GIB + EXTRA)  # ~62 GiB
    assert 60 < p.weights_gib_per_gpu < 64  # not 201 GiB: DP does not replicate the experts
    assert not p.fits and p.failure_class == "kv_too_small"  # ~52k KV tokens < max_model_len 131072
    assert plan(**{"data-parallel-size": 4, "kv-cache-dtype": "fp8"}).failure_class == "kv_too_small"
    short = plan(**{"data-parallel-size": 4, "max-model-len": 4096})
    assert short.fits and 4 * 4096 < short.kv_cache_tokens < 70_000


def test_dp4_ep_same_bytes_as_dp4():
    assert plan(**{"data-parallel-size": 4, "enable-expert-parallel": True}).weights_gib_per_gpu == \
        pytest.approx(plan(**{"data-parallel-size": 4}).weights_gib_per_gpu)


def test_dp4_fp8_weights_fit():
    p = plan(**{"data-parallel-size": 4, "quantization": "fp8"})
    # fp8 halves everything but the (unquantized) embedding and LM head
    expected = ((NON_ROUTED - EMBED) * 1 + EMBED * 2 + ROUTED * 1 / 4) / GIB + EXTRA
    assert p.weights_gib_per_gpu == pytest.approx(expected)
    assert p.fits and 30 < p.weights_gib_per_gpu < 34


def test_tp2_dp2_bf16_weights_at_about_54_gib():
    p = plan(**{"tensor-parallel-size": 2, "data-parallel-size": 2})
    assert p.weights_gib_per_gpu == pytest.approx((NON_ROUTED * 2 / 2 + ROUTED * 2 / 4) / GIB + EXTRA)
    assert 53 < p.weights_gib_per_gpu < 56  # not ~100 GiB: the experts are spread over 4 GPUs
    # With vLLM's reserve for an MoE with DP (peak activation, CUDA graphs: measured on H200s) an H100's KV cache
    # falls just short of one request of the default context (~124k tokens); fp8 KV doubles it.
    assert not p.fits and p.failure_class == "kv_too_small" and p.kv_cache_tokens > 0.9 * 131072
    assert plan(**{"tensor-parallel-size": 2, "data-parallel-size": 2, "kv-cache-dtype": "fp8"}).fits


def test_tp2_dp2_fp8_fits_at_about_28_gib():
    p = plan(**{"tensor-parallel-size": 2, "data-parallel-size": 2, "quantization": "fp8"})
    bf16 = plan(**{"tensor-parallel-size": 2, "data-parallel-size": 2})
    assert p.fits and 26 < p.weights_gib_per_gpu < 30
    assert p.weights_gib_per_gpu == pytest.approx((bf16.weights_gib_per_gpu - EXTRA) / 2 + EMBED / 2 / GIB
                                                  + EXTRA)
    assert p.kv_cache_tokens > 2 * bf16.kv_cache_tokens


def test_single_gpu_and_tp2_bf16_do_not_fit_but_tp2_fp8_does():
    assert plan().failure_class == "oom"  # 201 GiB on one card
    tp2 = plan(**{"tensor-parallel-size": 2})  # ~101 GiB per GPU: the two-H100 case
    assert not tp2.fits and tp2.failure_class == "oom" and tp2.weights_gib_per_gpu > 79.6
    tp2_fp8 = plan(**{"tensor-parallel-size": 2, "quantization": "fp8"})
    assert tp2_fp8.fits and 50 < tp2_fp8.weights_gib_per_gpu < 52
    assert plan(**{"tensor-parallel-size": 2, "quantization": "fp8", "enable-expert-parallel": True}).fits


def test_mm_encoder_data_mode_replicates_the_vision_tower():
    weights = plan(**{"tensor-parallel-size": 4, "mm-encoder-tp-mode": "weights"})
    data = plan(**{"tensor-parallel-size": 4, "mm-encoder-tp-mode": "data"})
    assert data.weights_gib_per_gpu - weights.weights_gib_per_gpu == pytest.approx(VISION * 2 * 3 / 4 / GIB)


@pytest.mark.parametrize("flags", [
    {"tensor-parallel-size": 4},
    {"tensor-parallel-size": 4, "enable-expert-parallel": True},
    {"tensor-parallel-size": 4, "quantization": "fp8"},
    pytest.param({"data-parallel-size": 4, "kv-cache-dtype": "fp8", "max-model-len": 4096},  # bf16 DP serves
                 marks=pytest.mark.slow),  # four replicas: the fast loop's longest (1.8 s); the full suite runs it
])
def test_predict_gives_finite_throughput(flags):
    r = predict(M, H100, flags, 1024, 512, 64, 192)
    assert r.completed == 192 and r.failed == 0
    assert math.isfinite(r.output_tok_s) and r.output_tok_s > 0
    assert math.isfinite(r.ttft_ms.p99) and r.ttft_ms.p99 > 0


@pytest.mark.parametrize("flags", [
    {"tensor-parallel-size": 2, "data-parallel-size": 2, "quantization": "fp8"},
    {"tensor-parallel-size": 2, "data-parallel-size": 2, "quantization": "fp8", "enable-expert-parallel": True},
    {"data-parallel-size": 4, "quantization": "fp8", "kv-cache-dtype": "fp8"},
])
def test_predict_data_parallel_with_fp8_weights_dies_as_vllm_0_26_does(flags):
    # docs/results/glm-4.6v-h200x2.md: the engine died at its first batch of several requests
    r = predict(M, H100, flags, 1024, 512, 64, 192)
    assert r.completed == 0 and r.failed == 192 and set(r.errors) == {"http_5xx"}


def test_ep_without_dp_costs_no_extra_communication():
    # DP = 1: EP regroups the TP ranks; the partial sums go through the same TP all-reduce.
    tp4 = PerfModel(M, H100, {"tensor-parallel-size": 4})
    ep = PerfModel(M, H100, {"tensor-parallel-size": 4, "enable-expert-parallel": True})
    for n in (1, 64, 8192):
        assert ep.step_time_s(n, min(n, 64), min(n, 64), 0, 0, n <= 64) == \
            pytest.approx(tp4.step_time_s(n, min(n, 64), min(n, 64), 0, 0, n <= 64))


def test_dp_reads_a_share_of_the_experts_and_pays_dp_communication():
    tp2dp2 = PerfModel(M, H100, {"tensor-parallel-size": 2, "data-parallel-size": 2})
    tp2 = PerfModel(M, H100, {"tensor-parallel-size": 2, "quantization": None})
    # large batch: all 128 experts are hit; with DP each replica's GPUs read half of them
    big_dp = tp2dp2._parts(8192, 8, False)
    big = tp2._parts(8192, 8, False)
    assert big_dp[1] < big[1]
    assert big_dp[2] > big[2]  # all-gather + reduce-scatter over DP per MoE layer
    ep = PerfModel(M, H100, {"tensor-parallel-size": 2, "data-parallel-size": 2, "enable-expert-parallel": True})
    assert ep._parts(512, 64, True) == pytest.approx(tp2dp2._parts(512, 64, True))


def test_space_conditions_ep_over_any_split_and_encoder_mode_only_with_tp():
    """Expert parallel spreads the experts over every GPU of the engine, TP or DP (DP4 + EP is a layout), the
    vision encoder's TP mode only means something with TP > 1."""
    space = load_space(None, M, 4, preset="glm-4.6v")
    assert space.tp_choices == [1, 2, 4] and space.fixed.get("enable-chunked-prefill") is True
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        flags = space.sample(trial, M, 4)
        tp = flags["tensor-parallel-size"]
        assert tp * flags.get("data-parallel-size", 1) == 4
        assert "enable-expert-parallel" in flags
        assert ("mm-encoder-tp-mode" in flags) == (tp > 1)
        seen.add((tp, flags.get("enable-expert-parallel")))
        study.tell(trial, 0.0)
    assert seen == {(1, False), (1, True), (2, False), (2, True), (4, False), (4, True)}
    assert {p["tensor-parallel-size"] for p in space.grid(M, 4)} == {1, 2, 4}
    for point in space.grid(M, 4):
        assert "enable-expert-parallel" in point
        if point["tensor-parallel-size"] == 1:
            assert "mm-encoder-tp-mode" not in point
    one_gpu = load_space(None, M, 1, preset="glm-4.6v")
    trial = optuna.create_study().ask()
    assert "enable-expert-parallel" not in one_gpu.sample(trial, M, 1)  # one GPU: nothing to spread over


# config.json of GLM-4.6V's text backbone alone, as vLLM loads it (benchmarks/gpu/mkmodel_glm46v.py writes this
# folder for `vllm serve --load-format dummy`): the fields resolve_model reads.
GLM46V_BACKBONE = {
    "architectures": ["Glm4MoeForCausalLM"], "model_type": "glm4_moe", "hidden_size": 4096, "num_hidden_layers": 46,
    "num_attention_heads": 96, "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 10944,
    "first_k_dense_replace": 1, "n_routed_experts": 128, "num_experts_per_tok": 8, "n_shared_experts": 1,
    "moe_intermediate_size": 1408, "attention_bias": True, "hidden_act": "silu", "partial_rotary_factor": 0.5,
    "max_position_embeddings": 131072, "vocab_size": 151552, "num_nextn_predict_layers": 0,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "eos_token_id": 1, "pad_token_id": 0,
}


def test_text_backbone_folder_is_the_preset_without_its_vision_tower(tmp_path):
    out = tmp_path / "glm46v"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(GLM46V_BACKBONE))
    spec = resolve_model(str(out))
    for field in ("num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "head_dim",
                  "intermediate_size", "vocab_size", "num_experts", "num_experts_per_tok", "num_shared_experts",
                  "moe_intermediate_size", "first_k_dense", "max_position_embeddings", "tie_word_embeddings"):
        assert getattr(spec, field) == getattr(M, field), field
    assert spec.vision is None and spec.total_params == M.total_params - VISION
    assert plan_memory(spec, H100, {"tensor-parallel-size": 4}).fits


def _card(**constants):
    return dataclasses.replace(H100, extra={**(H100.extra or {}), **constants})


def test_moe_step_constants_reach_the_experts_alone():
    """The fused-MoE terms (fitted on two H200s: docs/results/glm-4.6v-h200x2.md) change the experts' share of a
    step and nothing of a dense model's."""
    slow = _card(moe_hbm_efficiency=0.25, moe_compute_efficiency=0.2)
    dense = resolve_model("flash")
    for n in (1, 64, 8192):
        assert PerfModel(dense, slow, {})._parts(n, min(n, 64), n <= 64) == \
            PerfModel(dense, H100, {})._parts(n, min(n, 64), n <= 64)
    base, moe = PerfModel(M, H100, {"tensor-parallel-size": 4}), PerfModel(M, slow, {"tensor-parallel-size": 4})
    # decode: the memory term grows by the experts' bytes read at the lower bandwidth
    touched = base.experts_touched(64)
    c = base.c
    extra_s = touched * base._expert_bytes * (1 / 0.25 - 1 / c.hbm_efficiency) / (H100.hbm_tb_s * 1e12 * 4)
    assert moe._parts(64, 64, True)[1] - base._parts(64, 64, True)[1] == pytest.approx(extra_s)
    # prefill: the compute term grows by the active experts' FLOPs at the lower efficiency
    active = (8 + 1) * EXPERT * 45
    extra_flops_s = 2 * 8192 * active * (1 / 0.2 - 1 / c.compute_efficiency) / (H100.bf16_tflops * 1e12 * 4)
    assert moe._parts(8192, 8, False)[0] - base._parts(8192, 8, False)[0] == pytest.approx(extra_flops_s)


def test_fp8_and_expert_parallel_have_their_own_expert_bandwidth():
    card = _card(moe_hbm_efficiency=0.5, moe_fp8_hbm_efficiency=0.25, moe_ep_efficiency_factor=0.8)
    bytes_s = H100.hbm_tb_s * 1e12 * 2
    for flags, efficiency in (({}, 0.5), ({"quantization": "fp8"}, 0.25), ({"enable-expert-parallel": True}, 0.4),
                              ({"quantization": "fp8", "enable-expert-parallel": True}, 0.2)):
        assert PerfModel(M, card, {"tensor-parallel-size": 2, **flags})._expert_bytes_s == \
            pytest.approx(bytes_s * efficiency)
