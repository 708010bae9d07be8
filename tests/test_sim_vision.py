"""The sim engine's vision cost: an image's tower FLOPs and time by resolution, mm-encoder-tp-mode data against
weights under TP, image tokens in the prefill, and what --skip-mm-profiling and limit-mm-per-prompt change in the
memory plan. What the constants rest on is in calibration/*.yaml; these tests check the model's structure."""
from __future__ import annotations

from dataclasses import replace

import pytest

from autotune.gpus import load_gpu
from autotune.loadgen.runner import LoadConfig
from autotune.loadgen.workload import parse_workload
from autotune.memory import encoder_profiled, plan_memory
from autotune.models import PRESETS
from autotune.sim.engine import setup_engine
from autotune.sim.inproc import SimTransport
from autotune.sim.perf import PerfModel
from autotune.sim.predict import predict_workload

FLASH = PRESETS["flash"]
H200 = load_gpu("h200")


def test_tower_flops_by_hand() -> None:
    # 448 × 448 px: 32 × 32 = 1024 patches, 256 merged tokens. Blocks: qkv + proj 4·1536², gated MLP 3·1536·4096;
    # patch embedding 3·2·14·14 → 1536; attention 2·2·n²·1536 per block; downsample 1536·4 → 4096 and merger
    # (4096², gated 3·4096·13696) per merged token.
    n, merged = 1024, 256
    blocks = 24 * (4 * 1536**2 + 3 * 1536 * 4096) + 3 * 2 * 14 * 14 * 1536
    merger = 1536 * 4 * 4096 + 4096**2 + 3 * 4096 * 13696
    expected = 2 * n * blocks + 4 * n * n * 1536 * 24 + 2 * merged * merger
    assert FLASH.vision.encoder_flops(448, 448) == pytest.approx(expected, rel=1e-12)


def test_image_time_grows_faster_than_its_patches() -> None:
    perf = PerfModel(FLASH, H200, {})
    small, large = perf.image_encode_s(448, 448), perf.image_encode_s(896, 896)  # 1024 and 4096 patches
    assert 4.0 < large / small < 6.0  # linear GEMMs, quadratic attention within the image
    assert perf.image_encode_s(448, 448) == perf.image_encode_s(450, 446)  # the same after the processor's resize
    h100 = PerfModel(PRESETS["flash"], load_gpu("h100"), {})
    assert h100.image_encode_s(896, 896) == pytest.approx(large)  # the same chip


def test_data_mode_spreads_whole_images_weights_mode_splits_each() -> None:
    tp1 = PerfModel(FLASH, H200, {})
    data = PerfModel(FLASH, H200, {"tensor-parallel-size": 2, "mm-encoder-tp-mode": "data"})
    weights = PerfModel(FLASH, H200, {"tensor-parallel-size": 2, "mm-encoder-tp-mode": "weights"})
    one, four = [(896, 896)], [(896, 896)] * 4
    step = {name: [p.encoder_step_s(*_work(p, imgs)) for imgs in (one, four)]
            for name, p in (("tp1", tp1), ("data", data), ("weights", weights))}
    # one image: data mode runs it on one GPU, as TP 1 does; weights mode splits it over both (less efficiently)
    assert step["data"][0] == pytest.approx(step["tp1"][0], rel=0.02)
    assert step["weights"][0] < step["data"][0]
    # four images: two per GPU in data mode, about half of TP 1; now data mode wins
    assert step["data"][1] == pytest.approx(step["tp1"][1] / 2, rel=0.1)
    assert step["data"][1] < step["weights"][1] < step["tp1"][1]
    assert tp1.encoder_step_s(0.0, 0.0) == 0.0  # no image, no tower


def _work(perf: PerfModel, sizes: list[tuple[int, int]]) -> tuple[float, float]:
    work = perf.encoder_work(sizes)
    return work.total_s, work.longest_s


def _one_at_a_time(spec: str, flags: dict | None = None):
    cfg = LoadConfig(concurrency=1, num_prompts=4, endpoint="chat")
    return predict_workload(FLASH, H200, flags or {}, parse_workload(spec), cfg)


def test_an_image_adds_its_tokens_to_the_prefill_and_the_tower_to_the_first_token() -> None:
    # the request as the sim server's parser reads it: 64 × 64 patches merged 2 × 2 = 1024 tokens, and two markers
    setup = setup_engine(FLASH, H200, {})
    spec = parse_workload("mm:256:16:1:896x896").requests(1)[0]
    assert SimTransport(setup).prepare(spec, "chat", LoadConfig(concurrency=1)).prompt_tokens == 256 + 1024 + 2
    text, image = _one_at_a_time("mm:256:16:0:896x896"), _one_at_a_time("mm:256:16:1:896x896")
    assert image.completed == text.completed == 4
    perf = setup.perf
    tower_s = perf.encoder_step_s(perf.image_encode_s(896, 896), perf.image_encode_s(896, 896))
    extra_ttft_s = (image.ttft_ms.mean - text.ttft_ms.mean) / 1e3
    assert tower_s < extra_ttft_s < tower_s + 0.2  # the tower, then 1026 more prefill tokens
    assert image.tpot_ms.mean == pytest.approx(text.tpot_ms.mean, rel=0.05)  # decodes barely notice the image


def test_limit_mm_per_prompt_refuses_requests_with_more_images() -> None:
    r = _one_at_a_time("mm:64:8:3:448x448", {"limit-mm-per-prompt": {"image": 2}})
    assert r.completed == 0 and r.errors == {"http_4xx": 4}
    assert _one_at_a_time("mm:64:8:2:448x448", {"limit-mm-per-prompt": {"image": {"count": 2}}}).completed == 4


def test_skipping_the_encoder_profile_leaves_more_kv_cache() -> None:
    # a card whose encoder profile reserves memory and takes time (the H200's measured reserve is nil)
    reserve_gib, profile_s = 1.5, 3.0
    card = replace(H200, extra={**H200.extra, "vision_profile_gib": reserve_gib, "vision_profile_s": profile_s})
    profiled = plan_memory(FLASH, card, {})
    skipped = plan_memory(FLASH, card, {"skip-mm-profiling": True})
    no_media = plan_memory(FLASH, card, {"limit-mm-per-prompt": {"image": 0, "video": 0}})
    assert encoder_profiled(FLASH, {}) and not encoder_profiled(FLASH, {"skip-mm-profiling": True})
    assert skipped.kv_cache_gib_per_gpu - profiled.kv_cache_gib_per_gpu == pytest.approx(reserve_gib)
    assert no_media.kv_cache_gib_per_gpu == pytest.approx(skipped.kv_cache_gib_per_gpu)  # nothing to profile
    assert not encoder_profiled(replace(FLASH, vision=None), {})  # a text-only model has no encoder
    startup = PerfModel(FLASH, card, {}).startup_times(profiled.weights_gib_per_gpu)
    faster = PerfModel(FLASH, card, {"skip-mm-profiling": True}).startup_times(skipped.weights_gib_per_gpu)
    assert startup.total_s - faster.total_s == pytest.approx(profile_s)
