"""vLLM's API server in front of the sim engine (autotune/sim/frontend.py): a FIFO server per API server process,
whose outputs jobs merge the steps that wait; and what it adds to a request's times in-process (over HTTP:
tests/test_sim_server.py)."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from autotune.gpus import load_gpu
from autotune.loadgen.runner import LoadConfig
from autotune.loadgen.workload import parse_workload
from autotune.models import resolve_model
from autotune.sim.engine import setup_engine
from autotune.sim.frontend import ApiServers, FrontEndConstants, api_server_count
from autotune.sim.inproc import bench_in_process

C = FrontEndConstants(frontend_request_ms=2.0, frontend_output_us=10.0, frontend_chunk_us=100.0)


class Clock:
    """The host's clock for ApiServers: timers kept in a list, run in time order by ``run``."""

    def __init__(self) -> None:
        self.timers: list[tuple[float, Callable[[], None]]] = []

    def at(self, t: float, fn: Callable[[], None]) -> None:
        self.timers.append((t, fn))

    def run(self) -> None:
        while self.timers:
            self.timers.sort(key=lambda x: x[0])
            self.timers.pop(0)[1]()


def test_instant_front_end_hands_over_and_delivers_at_once() -> None:
    clock = Clock()
    api = ApiServers(FrontEndConstants(), 1, clock.at)
    handed: list[tuple[float, int]] = []
    api.request(1.5, lambda t, server: handed.append((t, server)))
    delivered: list[float] = []
    api.outputs(2.0, np.array([1, 2]), None, lambda t, mask: delivered.append(t), True)
    assert handed == [(1.5, 0)] and delivered == [2.0] and not clock.timers  # synchronous, no timer


def test_requests_and_outputs_wait_in_turn() -> None:
    clock = Clock()
    api = ApiServers(C, 1, clock.at)
    events: list[tuple[str, float]] = []
    api.request(0.0, lambda t, _s: events.append(("a", t)))
    api.request(0.0, lambda t, _s: events.append(("b", t)))
    # A step's 3 outputs at 1 ms, behind both requests: 3 x 10 us + 3 chunks x 100 us.
    api.outputs(0.001, np.array([7, 8, 9]), None, lambda t, _m: events.append(("out", t)), True)
    api.request(0.0042, lambda t, _s: events.append(("c", t)))  # arrives while the outputs are handled
    clock.run()
    assert [name for name, _ in events] == ["a", "b", "out", "c"]
    times = dict(events)
    assert times["a"] == pytest.approx(0.002) and times["b"] == pytest.approx(0.004)
    assert times["out"] == pytest.approx(0.004 + 3 * 110e-6) and times["c"] == pytest.approx(times["out"] + 0.002)


def test_outputs_waiting_behind_a_request_merge_one_chunk_per_request() -> None:
    clock = Clock()
    api = ApiServers(C, 1, clock.at)
    delivered: list[tuple[int, float]] = []
    api.request(0.0, lambda t, _s: None)  # keeps the server busy until 2 ms
    for step, end in enumerate((0.0005, 0.001, 0.0015)):  # three steps of the same two requests, all waiting
        api.outputs(end, np.array([1, 2]), None, lambda t, _m, step=step: delivered.append((step, t)), step == 2)
    clock.run()
    # One job: 6 outputs x 10 us + 2 chunks x 100 us, from 2 ms; every step's tokens delivered at its end.
    assert [s for s, _ in delivered] == [0, 1, 2]
    assert all(t == pytest.approx(0.002 + 6 * 10e-6 + 2 * 100e-6) for _, t in delivered)


def test_only_awaited_work_sets_timers_and_lazy_work_settles_in_order() -> None:
    clock = Clock()
    api = ApiServers(C, 1, clock.at)
    seen: list[tuple[int, float]] = []
    api.outputs(0.0, np.array([1]), None, lambda t, _m: seen.append((0, t)), False)
    assert not clock.timers  # nobody waits for it: settled by the next booking
    api.outputs(0.01, np.array([1]), None, lambda t, _m: seen.append((1, t)), True)
    assert seen == [(0, pytest.approx(110e-6))] and len(clock.timers) == 1
    clock.run()
    assert seen[1] == (1, pytest.approx(0.01 + 110e-6))


def test_several_api_servers_take_requests_in_turn_and_deliver_their_own_tokens() -> None:
    clock = Clock()
    api = ApiServers(C, 2, clock.at)
    handed: list[tuple[float, int]] = []
    for _ in range(3):
        api.request(0.0, lambda t, server: handed.append((t, server)))
    clock.run()
    assert sorted(handed) == [(pytest.approx(0.002), 0), (pytest.approx(0.002), 1), (pytest.approx(0.004), 0)]
    parts: list[tuple[float, list[bool]]] = []
    api.outputs(0.01, np.array([1, 2, 3]), np.array([0, 1, 0]), lambda t, m: parts.append((t, m.tolist())), True)
    clock.run()
    assert sorted(parts) == [(pytest.approx(0.01 + 110e-6), [False, True, False]),
                             (pytest.approx(0.01 + 2 * 110e-6), [True, False, True])]


def test_api_server_count_follows_vllm() -> None:
    assert api_server_count({}) == 1
    assert api_server_count({"data-parallel-size": 4}) == 4  # vLLM's default: one per DP rank
    assert api_server_count({"data-parallel-size": 4, "api-server-count": 2}) == 2


def _setup(weightless_flash_dir: Path, constants: FrontEndConstants):
    gpu = load_gpu("h200")
    extra = {**(gpu.extra or {}), **dataclasses.asdict(constants)}
    return setup_engine(resolve_model(str(weightless_flash_dir)), dataclasses.replace(gpu, extra=extra), {})


def test_one_request_at_a_time_pays_its_hand_over_and_each_steps_output_job(weightless_flash_dir: Path) -> None:
    # One client: the API server is idle whenever the request or a step's output arrives, so it adds exactly its
    # request cost before the engine and one output + one chunk after every step; the gaps between tokens stay
    # the engine's (decode runs included).
    requests = parse_workload("random:512:300", seed=0).requests(3)
    cfg = LoadConfig(concurrency=1, num_prompts=3)
    bare = bench_in_process(_setup(weightless_flash_dir, FrontEndConstants()), requests, cfg)
    served = bench_in_process(_setup(weightless_flash_dir, C), requests, cfg)
    extra_ms = 2.0 + 0.110
    assert served.ttft_ms.mean == pytest.approx(bare.ttft_ms.mean + extra_ms, abs=1e-6)
    assert served.e2el_ms.mean == pytest.approx(bare.e2el_ms.mean + extra_ms, abs=1e-6)
    assert served.tpot_ms.mean == pytest.approx(bare.tpot_ms.mean, abs=1e-9)


def test_a_busy_front_end_delays_first_tokens_and_batches_them(weightless_flash_dir: Path) -> None:
    requests = parse_workload("random:1024:128:0.5", seed=0).requests(256)
    cfg = LoadConfig(concurrency=64, num_prompts=192, warmup_prompts=64, steady_state=True, ramp_s=2.0)
    bare = bench_in_process(_setup(weightless_flash_dir, FrontEndConstants()), requests, cfg)
    busy = bench_in_process(_setup(weightless_flash_dir, C), requests, cfg)
    assert busy.completed == bare.completed == 192
    assert busy.ttft_ms.p50 > bare.ttft_ms.p50 + 2.0 + 64 * 0.110 * 0.5
    assert busy.output_tok_s < bare.output_tok_s  # a closed loop: the front end's time is out of the engine's


def test_image_preprocessing_costs_a_fixed_part_and_a_part_per_megapixel_per_image() -> None:
    c = FrontEndConstants(frontend_image_ms=3.0, frontend_image_ms_per_mpx=40.0)
    assert c.images_s([]) == 0.0
    # 1000x1000 is 1 Mpx, 2000x500 another: 2 x 3 ms fixed + 2 Mpx x 40 ms
    assert c.images_s([(1000, 1000), (2000, 500)]) == pytest.approx((2 * 3.0 + 2 * 40.0) / 1e3)
    assert c.images_s([(1000, 1000)]) * 2 == pytest.approx(c.images_s([(1000, 1000)] * 2))


def test_images_are_preprocessed_one_request_after_another_beside_the_event_loop() -> None:
    """vLLM 0.26.0's renderer pool has one worker by default: b's rendering waits for a's; the loop is free."""
    clock = Clock()
    api = ApiServers(C, 1, clock.at)
    events: list[tuple[str, float]] = []
    api.request(0.0, lambda t, _s: events.append(("a", t)), images_s=0.010)
    api.request(0.001, lambda t, _s: events.append(("b", t)), images_s=0.010)
    # A step's outputs while both requests' images are being preprocessed: the loop delivers them at once.
    api.outputs(0.002, np.array([7]), None, lambda t, _m: events.append(("out", t)), True)
    clock.run()
    times = dict(events)
    assert times["out"] == pytest.approx(0.002 + 10e-6 + 100e-6)
    assert times["a"] == pytest.approx(0.010 + 0.002)  # its images, then the loop's request job
    assert times["b"] == pytest.approx(0.020 + 0.002)  # b's images wait for a's: one worker


def test_a_requests_images_add_their_preprocessing_to_its_first_token() -> None:
    # One client: nothing waits for the worker, so a request's images add exactly their cost before the engine.
    cfg = LoadConfig(concurrency=1, num_prompts=3, endpoint="chat")
    gpu = load_gpu("h200")

    def setup(constants: FrontEndConstants):  # the flash preset: GLM-4.6V-Flash with its vision tower
        extra = {**(gpu.extra or {}), **dataclasses.asdict(constants)}
        return setup_engine(resolve_model("flash"), dataclasses.replace(gpu, extra=extra), {})

    with_images = dataclasses.replace(C, frontend_image_ms=5.0, frontend_image_ms_per_mpx=30.0)
    for spec, count, w, h in (("mm:128:16:1:896x672", 1, 896, 672), ("mm:128:16:2:448x448", 2, 448, 448)):
        requests = parse_workload(spec, seed=0).requests(3)
        base = bench_in_process(setup(C), requests, cfg)
        served = bench_in_process(setup(with_images), requests, cfg)
        assert served.completed == base.completed == 3
        extra_ms = count * (5.0 + 30.0 * w * h / 1e6)
        assert served.ttft_ms.mean == pytest.approx(base.ttft_ms.mean + extra_ms, abs=1e-6)
        assert served.tpot_ms.mean == pytest.approx(base.tpot_ms.mean, abs=1e-9)  # the engine's steps unchanged


def test_more_renderer_workers_render_requests_side_by_side() -> None:
    """--renderer-num-workers 2: two requests' images arriving together are preprocessed at once, a third's wait
    for the first worker to free; each request then takes its loop job in turn."""
    clock = Clock()
    api = ApiServers(C, 1, clock.at, renderers=2)
    handed: dict[str, float] = {}
    for name, t in (("a", 0.0), ("b", 0.0), ("c", 0.0)):
        api.request(t, lambda when, _s, name=name: handed.__setitem__(name, when), images_s=0.010)
    clock.run()
    request_s = C.frontend_request_ms / 1e3
    assert handed["a"] == pytest.approx(0.010 + request_s)
    assert handed["b"] == pytest.approx(0.010 + 2 * request_s)  # rendered beside a, then behind a on the loop
    assert handed["c"] == pytest.approx(0.020 + request_s)


def test_the_renderer_pool_follows_the_flag() -> None:
    from autotune.sim.frontend import renderer_workers

    assert renderer_workers({}) == 1
    assert renderer_workers({"renderer-num-workers": 4}) == 4


def test_more_renderer_workers_need_the_multimodal_cache_off() -> None:
    """As vLLM 0.26.0: a VLM with --renderer-num-workers > 1 starts only with --mm-processor-cache-gb 0."""
    from autotune.errors import EngineStartError

    gpu = load_gpu("h200")
    with pytest.raises(EngineStartError, match="renderer-num-workers"):
        setup_engine(resolve_model("flash"), gpu, {"renderer-num-workers": 2})
    setup = setup_engine(resolve_model("flash"), gpu, {"renderer-num-workers": 2, "mm-processor-cache-gb": 0})
    assert setup.new_api_servers(lambda t, fn: None).servers[0].renderers_free_s == [0.0, 0.0]


def test_outputs_that_arrive_during_a_request_wait_for_all_of_it() -> None:
    """The loop handles a request in one job: a step's outputs that arrive meanwhile are served after it."""
    clock = Clock()
    api = ApiServers(C, 1, clock.at)
    events: dict[str, float] = {}
    api.request(0.0, lambda t, _s: events.__setitem__("handed", t))
    api.outputs(0.0005, np.array([7]), None, lambda t, _m: events.__setitem__("out", t), True)
    clock.run()
    output_s = 10e-6 + 100e-6  # one output, one chunk
    assert events["out"] == pytest.approx(0.002 + output_s) and events["handed"] == pytest.approx(0.002)


def test_tokens_a_busy_front_end_merges_make_one_gap_as_the_client_counts_them(weightless_flash_dir: Path) -> None:
    """A front end slower than the engine's steps delivers several of a request's tokens in one chunk; the client
    counts one gap per chunk (as against vLLM), so no gap is zero and there are fewer gaps than tokens, while TPOT,
    which counts tokens, is unchanged by how they were grouped."""
    requests = parse_workload("random:1024:128:0.5", seed=0).requests(128)
    cfg = LoadConfig(concurrency=64, num_prompts=64, warmup_prompts=64, records_itl=True)
    slow = FrontEndConstants(frontend_request_ms=2.0, frontend_output_us=10.0, frontend_chunk_us=400.0)
    busy = bench_in_process(_setup(weightless_flash_dir, slow), requests, cfg)
    ok = [o for o in busy.outputs if o.success]
    gaps = sum(len(o.itl_s) for o in ok)
    tokens_after_first = sum(o.output_tokens - 1 for o in ok)
    assert all(g > 0 for o in ok for g in o.itl_s)
    assert gaps < 0.9 * tokens_after_first  # 64 x 400 us a chunk: the loop falls behind a ~15 ms step
    bare = bench_in_process(_setup(weightless_flash_dir, FrontEndConstants()), requests, cfg)
    assert sum(len(o.itl_s) for o in bare.outputs if o.success) == sum(o.output_tokens - 1 for o in bare.outputs
                                                                       if o.success)
