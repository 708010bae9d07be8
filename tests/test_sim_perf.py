"""The sim's step model (autotune/sim/perf.py): what an fp8 KV cache changes in a step."""
from __future__ import annotations

import dataclasses

import pytest

from autotune.gpus import load_gpu
from autotune.models import resolve_model
from autotune.sim.perf import PerfModel

FLASH = resolve_model("flash")


def _h200(**constants: float):
    card = load_gpu("h200")
    return dataclasses.replace(card, extra={**(card.extra or {}), **constants})


def _decode_step_s(model: PerfModel) -> float:
    # 64 decodes over 1,000 tokens of context each: attention reads 64,000 tokens of KV
    return model.step_time_s(64, 64, 64, attn_ctx_tokens=64_000, kv_read_tokens=64_000, decode_only=True)


@pytest.mark.parametrize("efficiency", [1.0, 0.5, 0.65])
def test_fp8_kv_reads_take_their_bytes_over_their_own_bandwidth(efficiency: float) -> None:
    card = _h200(fp8_kv_read_efficiency=efficiency)
    bf16, fp8 = PerfModel(FLASH, card, {}), PerfModel(FLASH, card, {"kv-cache-dtype": "fp8"})
    bytes_s = card.hbm_tb_s * 1e12 * bf16.c.hbm_efficiency
    kv_bf16 = FLASH.kv_bytes_per_token("auto")
    # the step's new KV written (64 tokens) stays at the full bandwidth; the attention's reads are fp8 at the
    # constant's share of it: half the bytes at half the bandwidth cost what bf16 does
    written_s = 64 * (kv_bf16 / 2 - kv_bf16) / bytes_s
    read_s = 64_000 * kv_bf16 * (0.5 / efficiency - 1) / bytes_s
    assert _decode_step_s(fp8) - _decode_step_s(bf16) == pytest.approx(written_s + read_s, rel=1e-9)
    runs = fp8.decode_run_times_s(64, 64_000, 3) - bf16.decode_run_times_s(64, 64_000, 3)
    assert runs[0] == pytest.approx(written_s + read_s, rel=1e-9)


def test_on_the_h200_fp8_kv_shortens_a_decode_step_less_than_its_bytes_alone_would() -> None:
    card = load_gpu("h200")
    bf16, fp8 = PerfModel(FLASH, card, {}), PerfModel(FLASH, card, {"kv-cache-dtype": "fp8"})
    bytes_alone = PerfModel(FLASH, _h200(fp8_kv_read_efficiency=1.0), {"kv-cache-dtype": "fp8"})
    assert _decode_step_s(bytes_alone) < _decode_step_s(fp8) < _decode_step_s(bf16)


def _prefill_step_s(model: PerfModel, prompt_tokens: int) -> float:
    # one prefill beside 16 decodes: the step runs outside CUDA graphs
    tokens = prompt_tokens + 16
    return model.step_time_s(tokens, 17, 17, attn_ctx_tokens=prompt_tokens**2 / 2 + 16_000,
                             kv_read_tokens=prompt_tokens + 16_000, decode_only=False)


def test_a_host_step_time_is_a_floor_under_steps_outside_cuda_graphs_that_gpu_work_hides() -> None:
    gpu_only, floored = PerfModel(FLASH, _h200(), {}), PerfModel(FLASH, _h200(host_step_ms=38.0), {})
    # a 256-token prefill's GPU work is shorter than the host's 38 ms: the step takes the host's time
    assert _prefill_step_s(gpu_only, 256) < 0.038
    assert _prefill_step_s(floored, 256) == pytest.approx(0.038)
    # a 4,096-token prefill's GPU work is longer: the host's time hides under it
    assert _prefill_step_s(gpu_only, 4096) > 0.038
    assert _prefill_step_s(floored, 4096) == _prefill_step_s(gpu_only, 4096)
    # a decode-only step replayed as a CUDA graph does not wait on the host, alone or in a run of steps
    assert _decode_step_s(floored) == _decode_step_s(gpu_only) < 0.038
    assert (floored.decode_run_times_s(64, 64_000, 3) == gpu_only.decode_run_times_s(64, 64_000, 3)).all()
    # eager mode: every step runs outside CUDA graphs, decode-only ones too
    eager = PerfModel(FLASH, _h200(host_step_ms=38.0), {"enforce-eager": True})
    assert _decode_step_s(eager) == pytest.approx(0.038)
    assert eager.decode_run_times_s(64, 64_000, 3) == pytest.approx([0.038] * 3)
