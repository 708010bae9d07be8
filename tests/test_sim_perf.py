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
