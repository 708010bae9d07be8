from __future__ import annotations

from pathlib import Path

import pytest

from autotune.errors import EngineStartError
from autotune.gpus import load_gpu
from autotune.loadgen.workload import parse_workload
from autotune.models import resolve_model
from autotune.sim.perf import PerfModel
from autotune.sim.predict import predict
from autotune.sim.scheduler import Scheduler, SchedulerConfig


@pytest.fixture
def flash(weightless_flash_dir: Path):
    return resolve_model(str(weightless_flash_dir))


def test_defaults_at_128_near_real_h100(flash) -> None:
    r = predict(flash, load_gpu("h100"), {}, 1024, 512, 128, 512)
    assert r.completed == 512 and r.failed == 0
    assert abs(r.output_tok_s - 8024) / 8024 < 0.15  # vLLM 0.26.0 measured 8,024 output tok/s


def test_warmup_level_counts_the_steady_state(flash) -> None:
    # A trial's level: 1 x C warm-up, then 1.5 x C measured, lengths ±50%. With C slots always busy in the
    # steady window, throughput is C x (output tokens per second of one busy slot) by Little's law.
    c = 64
    r = predict(flash, load_gpu("h100"), {}, 1024, 512, c, int(1.5 * c), input_range=0.5, warmup_prompts=c)
    assert r.completed == 96  # the warm-up is not in the figures
    stream = parse_workload("random:1024:512:0.5", seed=0).requests(c + 96)  # predict's requests
    mean_out = sum(q.output_len for q in stream[c:]) / 96
    per_slot_tok_s = mean_out / (r.e2el_ms.mean / 1e3)
    assert r.output_tok_s == pytest.approx(c * per_slot_tok_s, rel=0.1)


@pytest.mark.slow  # among the fast loop's longest (1.4-2.4 s); the full suite runs it
def test_ranking_sanity(flash) -> None:
    gpu = load_gpu("h100")
    bf16 = predict(flash, gpu, {}, 1024, 512, 256, 1024)
    fp8 = predict(flash, gpu, {"kv-cache-dtype": "fp8"}, 1024, 512, 256, 1024)
    tiny = predict(flash, gpu, {"max-num-seqs": 8}, 1024, 512, 256, 256)
    assert fp8.output_tok_s >= bf16.output_tok_s
    assert tiny.output_tok_s < 0.2 * bf16.output_tok_s
    assert tiny.ttft_ms.p99 > bf16.ttft_ms.p99


def test_kv_pressure_preempts_and_still_completes(flash) -> None:
    # 0.3 of the card leaves ~4.6k blocks of KV: 64 requests of 4k tokens do not fit at once
    r = predict(flash, load_gpu("h100"), {"gpu-memory-utilization": 0.3, "max-model-len": 8192}, 2048, 2048, 64, 64)
    assert r.completed == 64
    roomy = predict(flash, load_gpu("h100"), {"max-model-len": 8192}, 2048, 2048, 64, 64)
    assert r.output_tok_s < roomy.output_tok_s


def test_scheduler_counts_preemptions(flash) -> None:
    gpu = load_gpu("h100")
    perf = PerfModel(flash, gpu, {})
    sched = Scheduler(SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=8192, chunked_prefill=True,
                                      block_size=16, num_blocks=200, max_model_len=4096), perf)
    for _ in range(8):
        sched.add(512, 1024)
    steps = 0
    while sched.has_work and steps < 20000:
        assert sched.step() is not None
        assert 0 <= sched.free_blocks <= 200
        steps += 1
    assert not sched.has_work
    assert sched.num_preemptions_total > 0
    assert sched.generation_tokens_total >= 8 * 1024


def test_no_chunked_prefill_is_whole_prompt(flash) -> None:
    gpu = load_gpu("h100")
    chunked = predict(flash, gpu, {"max-model-len": 8192}, 4096, 64, 32, 64)
    whole = predict(flash, gpu, {"max-model-len": 8192, "enable-chunked-prefill": False,
                                 "max-num-batched-tokens": 8192}, 4096, 64, 32, 64)
    assert chunked.completed == whole.completed == 64
    # vLLM refuses a token budget below max-model-len when prompts cannot be chunked
    with pytest.raises(EngineStartError) as exc:
        predict(flash, gpu, {"max-model-len": 8192, "enable-chunked-prefill": False,
                             "max-num-batched-tokens": 2048}, 1024, 64, 4, 4)
    assert exc.value.failure_class == "bad_flags"


def test_open_loop_rate(flash) -> None:
    r = predict(flash, load_gpu("h100"), {}, 512, 128, None, 200, rate=5.0)
    assert r.completed == 200
    assert 0.5 * 5.0 < r.request_s < 1.5 * 5.0


def test_infeasible_memory_raises(flash) -> None:
    with pytest.raises(EngineStartError) as exc:
        predict(flash, load_gpu("h100"), {"gpu-memory-utilization": 0.2}, 1024, 512, 8, 8)
    assert exc.value.failure_class == "kv_too_small"


def test_moe_and_tp_model_runs() -> None:
    model = resolve_model("glm-4.6v")
    gpu = load_gpu("h100")
    tp4 = predict(model, gpu, {"tensor-parallel-size": 4}, 1024, 256, 64, 128)
    ep = predict(model, gpu, {"tensor-parallel-size": 4, "enable-expert-parallel": True}, 1024, 256, 64, 128)
    assert tp4.completed == ep.completed == 128
    assert tp4.output_tok_s > 0 and ep.output_tok_s > 0


def test_mixed_step_pays_the_decodes_kv_reads_not_a_per_sequence_cost(flash) -> None:
    # A mixed step (one 1024-token prefill chunk beside 512 decodes) is compute-bound in its GEMMs; the
    # decodes' KV reads run in the attention kernels and add to that, whatever the number of sequences.
    perf = PerfModel(flash, load_gpu("h100"), {})
    ctx_tokens = 512 * 1280

    def mixed_s(num_seqs: int, kv_read: float) -> float:
        return perf.step_time_s(1536, num_seqs, 513, 0.0, kv_read, False)

    kv_s = ctx_tokens * perf.kv_bytes_per_token / perf._bytes_s
    assert mixed_s(513, 1024 + ctx_tokens) - mixed_s(513, 1024) == pytest.approx(kv_s, rel=1e-9)
    assert mixed_s(513, 1024 + ctx_tokens) == pytest.approx(mixed_s(2, 1024 + ctx_tokens), rel=1e-12)


def test_steady_throughput_rises_from_128_to_256(flash) -> None:
    # Session-3 H100 levels (random 1024/512 ±50%, 1 x C warm-up, 1.5 x C measured): 7,794 -> 9,800 tok/s.
    gpu = load_gpu("h100")
    tok_s = [predict(flash, gpu, {}, 1024, 512, c, int(1.5 * c), input_range=0.5, warmup_prompts=c).output_tok_s
             for c in (128, 256)]
    assert tok_s[1] > 1.1 * tok_s[0]


@pytest.mark.parametrize("async_scheduling, first_step", [(True, 2), (False, 1)])
def test_async_scheduling_admits_an_arrival_one_step_later(flash, async_scheduling: bool, first_step: int) -> None:
    # With async scheduling the next step is scheduled while one runs: a request arriving at a busy engine
    # misses it.
    perf = PerfModel(flash, load_gpu("h100"), {"async-scheduling": async_scheduling})
    sched = Scheduler(SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=8192, chunked_prefill=True,
                                      block_size=16, num_blocks=10_000, max_model_len=4096), perf)
    sched.add(512, 64)
    sched.step()  # idle engine: the first request is scheduled at once
    new = sched.add(512, 64)
    for step in (1, 2):
        res = sched.step()
        assert (new in res.emitted) == (step >= first_step)
