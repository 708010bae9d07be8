from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from autotune.errors import UsageError
from autotune.testing.fakeserver import IMAGE_TOKENS, FakeServer
from autotune.loadgen.promscrape import parse_prometheus
from autotune.loadgen.runner import LoadConfig, _arrival_times, drive_load, read_records, run_bench, run_load
from autotune.loadgen.workload import RequestSpec, parse_workload
from autotune.metrics import RequestOutput
from autotune.progress import BenchProgress, Progress

MODEL = "fake-model"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    with FakeServer() as srv:
        yield srv


def test_closed_loop_counts_and_extra(server: FakeServer) -> None:
    server.configure(ttft_ms=5, itl_ms=2)
    progress: list[BenchProgress] = []

    class Record(Progress):
        def bench_progress(self, p: BenchProgress) -> None:
            progress.append(p)

    res = run_bench(server.url, MODEL, parse_workload("random:16:4"),
                    LoadConfig(concurrency=8, num_prompts=40), progress=Record())
    assert res.status == "ok" and res.completed == 40 and res.failed == 0
    assert res.output_tok_s > 0 and res.request_s > 0 and res.duration_s > 0
    assert res.output_tok_s == pytest.approx(40 * 4 / res.duration_s)
    assert server.stats()["max_running"] == 8  # the semaphore holds exactly the concurrency
    assert res.extra["concurrency"] == 8 and res.extra["num_prompts"] == 40 and res.extra["rate"] is None
    assert res.extra["workload"]["spec"] == "random:16:4" and res.extra["clock"] == "wall"
    assert progress and progress[-1].done == 40 and progress[-1].total == 40


def test_warmup_is_excluded(server: FakeServer) -> None:
    server.configure()
    res = run_bench(server.url, MODEL, parse_workload("random:8:3"),
                    LoadConfig(concurrency=4, num_prompts=10, warmup_prompts=6))
    assert res.completed == 10 and res.extra["warmup_prompts"] == 6
    assert server.stats()["requests"] == 16


@pytest.mark.slow  # among the fast loop's longest (1.4-2.4 s); the full suite runs it
def test_steady_throughput_with_warmup_matches_the_known_rate(server: FakeServer) -> None:
    # 16 slots; a token every 20 ms, the first 20 ms after the start: a busy slot streams 50 tok/s whatever
    # the lengths. Varied lengths (11-31 tokens), so warm-up requests are still running in the window.
    server.configure(ttft_ms=20, itl_ms=20)
    res = run_bench(server.url, MODEL, parse_workload("random:16:21:0.5"),
                    LoadConfig(concurrency=16, num_prompts=48, warmup_prompts=16, steady_state=True))
    assert res.extra["steady_window_s"] > 0
    assert res.output_tok_s == pytest.approx(16 * 50, rel=0.1)


def test_warmup_failures_do_not_count(server: FakeServer) -> None:
    server.configure(fault="http500", fault_every=1)
    # warm-up and measured both fail here; only the measured ones are counted
    res = run_bench(server.url, MODEL, parse_workload("random:8:3"),
                    LoadConfig(concurrency=2, num_prompts=3, warmup_prompts=5))
    assert res.failed == 3 and res.completed == 0


def test_all_failed_gives_nan_not_zero(server: FakeServer) -> None:
    server.configure(fault="http500")
    res = run_bench(server.url, MODEL, parse_workload("random:8:3"), LoadConfig(concurrency=4, num_prompts=8))
    assert res.status == "failed" and res.completed == 0 and res.failed == 8
    assert res.errors == {"http_5xx": 8}
    for value in (res.output_tok_s, res.request_s, res.ttft_ms.p99, res.itl_ms.mean, res.e2el_ms.p50):
        assert math.isnan(value)


def test_partial_failures(server: FakeServer) -> None:
    server.configure(fault="disconnect", fault_every=4)
    res = run_bench(server.url, MODEL, parse_workload("random:8:4"), LoadConfig(concurrency=4, num_prompts=20))
    assert res.status == "partial" and res.failed == 5 and res.completed == 15
    assert res.errors == {"disconnect": 5}


def test_open_loop_rate(server: FakeServer) -> None:
    server.configure()
    res = run_bench(server.url, MODEL, parse_workload("random:8:2"), LoadConfig(rate=200.0, num_prompts=60))
    assert res.completed == 60
    # 60 Poisson arrivals at 200/s span about 0.3 s
    assert 0.15 < res.duration_s < 0.6
    assert res.extra["rate"] == 200.0 and res.extra["concurrency"] is None


def test_arrival_times_mean_and_burstiness() -> None:
    poisson = _arrival_times(20000, rate=50.0, burstiness=1.0, seed=0)
    assert poisson[0] == 0.0 and np.all(np.diff(poisson) >= 0)
    gaps = np.diff(poisson)
    assert gaps.mean() == pytest.approx(1 / 50, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)  # exponential: CV 1
    bursty = np.diff(_arrival_times(20000, rate=50.0, burstiness=0.25, seed=0))
    assert bursty.mean() == pytest.approx(1 / 50, rel=0.05)
    assert bursty.std() / bursty.mean() == pytest.approx(2.0, rel=0.1)  # gamma CV = 1/sqrt(shape)
    assert np.array_equal(poisson, _arrival_times(20000, 50.0, 1.0, 0))


def test_arrival_times_offer_the_rate_exactly_for_every_seed() -> None:
    # like `vllm bench serve`: a short run's offered rate does not depend on the seed's draw
    for seed in range(5):
        offsets = _arrival_times(480, rate=8.0, burstiness=1.0, seed=seed)
        assert offsets[0] == 0.0 and offsets[-1] == pytest.approx(479 / 8.0)
        assert np.diff(offsets).std() / np.diff(offsets).mean() == pytest.approx(1.0, rel=0.15)
    assert _arrival_times(1, 8.0, 1.0, 0).tolist() == [0.0]


def test_trace_replay_sends_at_the_trace_times(server: FakeServer, tmp_path) -> None:
    server.configure(ttft_ms=1, itl_ms=1)
    offsets = [5.0, 5.0, 5.1, 5.3, 5.6, 5.65]  # shifted: the first is sent at once
    reqs = [RequestSpec(prompt=[1001 + i], prompt_len=1, output_len=2, arrival_s=t) for i, t in enumerate(offsets)]
    cfg = LoadConfig(replay_arrivals=True, num_prompts=6, records_path=str(tmp_path / "r.jsonl"))
    res = asyncio.run(run_load(server.url, MODEL, reqs, cfg))
    assert res.completed == 6 and res.extra["replay"] is True
    assert res.extra["trace_span_s"] == pytest.approx(0.65)
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    sent = np.array([r["start_s"] for r in rows]) - rows[0]["start_s"]
    assert np.abs(sent - (np.array(offsets) - 5.0)).max() < 0.03
    with pytest.raises(UsageError, match="has 6 requests, 7 were asked for"):
        asyncio.run(run_load(server.url, MODEL, reqs, LoadConfig(replay_arrivals=True, num_prompts=7)))
    untimed = [RequestSpec(prompt=[1001], prompt_len=1, output_len=2)]
    with pytest.raises(UsageError, match="needs requests with arrival_s"):
        asyncio.run(run_load(server.url, MODEL, untimed, LoadConfig(replay_arrivals=True, num_prompts=1)))
    backwards = [reqs[3], reqs[0]]
    with pytest.raises(UsageError, match="must not decrease"):
        asyncio.run(run_load(server.url, MODEL, backwards, LoadConfig(replay_arrivals=True, num_prompts=2)))


def test_max_duration_stops_issuing(server: FakeServer) -> None:
    server.configure(ttft_ms=50)
    res = run_bench(server.url, MODEL, parse_workload("random:8:1"),
                    LoadConfig(concurrency=2, num_prompts=100, max_duration_s=0.2))
    assert 2 <= res.completed <= 12 and res.extra.get("stopped_early") is True


def test_sim_clock_window_and_scrape(server: FakeServer) -> None:
    # fake sim: virtual arrival of request k is 1000 + 0.5 k, TTFT 100 ms, ITL 10 ms (3 tokens)
    server.configure(sim_stamps=True, ttft_ms=100, itl_ms=10)
    res = run_bench(server.url, MODEL, parse_workload("random:8:3"),
                    LoadConfig(concurrency=1, num_prompts=4, warmup_prompts=1, scrape_metrics=True))
    assert res.extra["clock"] == "sim"
    assert res.ttft_ms.p99 == pytest.approx(100.0) and res.itl_ms.p50 == pytest.approx(10.0)
    # measured requests 2..5: first arrival 1001.0, last ends at 1002.5 + 0.12
    assert res.duration_s == pytest.approx(1.5 + 0.12)
    sm = res.extra["server_metrics"]
    assert sm["scrapes"] >= 2 and sm["scrape_failures"] == 0
    assert sm["max_kv_cache_usage"] is not None and sm["preemptions"] is not None


def test_scrape_gives_the_servers_own_mean_latencies(server: FakeServer) -> None:
    # the fake server times each token when it writes it (as vLLM's histograms do, from the request's arrival)
    server.configure(ttft_ms=40, itl_ms=10)
    res = run_bench(server.url, MODEL, parse_workload("random:8:5"),
                    LoadConfig(concurrency=2, num_prompts=6, warmup_prompts=2, scrape_metrics=True))
    sm = res.extra["server_metrics"]
    # the deltas over the run: all 8 requests, warm-up included, and no request from an earlier test
    assert 40 <= sm["server_mean_ttft_ms"] < 40 + 15 and 8 <= sm["server_mean_itl_ms"] < 10 + 5
    assert sm["server_mean_e2el_ms"] == pytest.approx(sm["server_mean_ttft_ms"] + 4 * sm["server_mean_itl_ms"],
                                                      rel=0.02)
    # what lies outside the server (loopback, the client's parse) is small, and never negative
    assert 0 <= res.ttft_ms.mean - sm["server_mean_ttft_ms"] < 20
    assert "server_mean_queue_ms" not in sm  # not exposed by this server: left out, not 0


def test_server_latency_means_from_histogram_deltas() -> None:
    from autotune.loadgen.promscrape import histogram_totals, server_latency_means
    before = histogram_totals(parse_prometheus(
        'vllm:time_to_first_token_seconds_sum{engine="0"} 1.0\nvllm:time_to_first_token_seconds_count{engine="0"} 10\n'
        'vllm:time_to_first_token_seconds_sum{engine="1"} 1.0\nvllm:time_to_first_token_seconds_count{engine="1"} 10\n'
        'vllm:e2e_request_latency_seconds_sum 5\nvllm:e2e_request_latency_seconds_count 2\n'))
    after = histogram_totals(parse_prometheus(
        'vllm:time_to_first_token_seconds_sum{engine="0"} 1.3\nvllm:time_to_first_token_seconds_count{engine="0"} 12\n'
        'vllm:time_to_first_token_seconds_sum{engine="1"} 1.2\nvllm:time_to_first_token_seconds_count{engine="1"} 12\n'
        'vllm:e2e_request_latency_seconds_sum 5\nvllm:e2e_request_latency_seconds_count 2\n'))
    # both engines summed: 0.5 s over 4 requests; no E2E observed in between: no figure rather than 0 or NaN
    assert server_latency_means(before, after) == {"server_mean_ttft_ms": 125.0}


def test_server_check_errors(server: FakeServer) -> None:
    server.configure()
    with pytest.raises(UsageError, match=r"does not serve model 'nope' \(it serves: fake-model\)"):
        run_bench(server.url, "nope", parse_workload("random:8:3"), LoadConfig(concurrency=1, num_prompts=1))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UsageError, match="cannot reach server at"):
        run_bench(f"http://127.0.0.1:{port}", MODEL, parse_workload("random:8:3"),
                  LoadConfig(concurrency=1, num_prompts=1))


def test_requests_with_images_use_chat(server: FakeServer) -> None:
    server.configure()
    res = run_bench(server.url, MODEL, parse_workload("mm:16:3:1:32x32"), LoadConfig(concurrency=2, num_prompts=4))
    assert res.completed == 4 and res.extra["endpoint"] == "chat"
    assert server.stats()["last_body"]["image_parts"] == 1
    with pytest.raises(UsageError, match="chat endpoint"):
        run_bench(server.url, MODEL, parse_workload("mm:16:3:1:32x32"),
                  LoadConfig(concurrency=2, num_prompts=4, endpoint="completions"))


def test_image_tokens_count_where_the_usage_reports_them(server: FakeServer, tmp_path: Path) -> None:
    # the fake server counts 256 tokens per image and one per word, as its usage says
    wl = parse_workload("mm:16:3:0-2:64x64", seed=3)
    for usage in (True, False):
        server.configure(usage=usage)
        path = tmp_path / f"usage-{usage}.jsonl"
        res = run_bench(server.url, MODEL, wl, LoadConfig(concurrency=2, num_prompts=12, records_path=str(path)))
        assert res.completed == 12
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert {r["images"] for r in records} == {0, 1, 2}
        for r in records:  # with the usage, the images' tokens count; without, only the text's known length
            assert r["prompt_tokens"] == 16 + (IMAGE_TOKENS * r["images"] if usage else 0)


def test_run_load_cycles_requests(server: FakeServer) -> None:
    server.configure()
    reqs = [RequestSpec(prompt=[1001, 1002], prompt_len=2, output_len=2)]
    res = asyncio.run(run_load(server.url, MODEL, reqs, LoadConfig(concurrency=3, num_prompts=7)))
    assert res.completed == 7 and res.total_tok_s == pytest.approx(7 * 4 / res.duration_s)


@pytest.mark.parametrize("kwargs, words", [
    ({}, "concurrency or a request rate"),
    ({"concurrency": 0}, "concurrency must be"),
    ({"rate": -1.0}, "rate must be"),
    ({"concurrency": 1, "num_prompts": 0}, "num_prompts"),
    ({"concurrency": 1, "burstiness": 0.0}, "burstiness"),
    ({"concurrency": 1, "endpoint": "grpc"}, "endpoint"),
    ({"concurrency": 1, "slo_ms": {"latency": 5.0}}, "SLO metric"),
    ({"rate": 2.0, "replay_arrivals": True}, "give no request rate"),
])
def test_load_config_validation(kwargs: dict, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        LoadConfig(**kwargs)


def test_goodput_with_slo(server: FakeServer) -> None:
    server.configure(ttft_ms=20)
    loose = run_bench(server.url, MODEL, parse_workload("random:8:2"),
                      LoadConfig(concurrency=4, num_prompts=12, slo_ms={"ttft": 1000.0}))
    tight = run_bench(server.url, MODEL, parse_workload("random:8:2"),
                      LoadConfig(concurrency=4, num_prompts=12, slo_ms={"ttft": 1.0}))
    assert loose.goodput_request_s == pytest.approx(loose.request_s)
    assert tight.goodput_request_s == 0.0


def test_prometheus_parser() -> None:
    text = ('# HELP x y\n# TYPE vllm:num_requests_running gauge\n'
            'vllm:num_requests_running{model_name="a",engine="0"} 3.0\n'
            'vllm:num_requests_running{model_name="a",engine="1"} 4\n'
            'vllm:num_preemptions_total{model_name="a"} 12 1700000000000\n'
            'plain_metric 1.5e2\nbroken{a="b"} notanumber\n')
    samples = parse_prometheus(text)
    assert samples["vllm:num_requests_running"] == [3.0, 4.0]
    assert samples["vllm:num_preemptions_total"] == [12.0]
    assert samples["plain_metric"] == [150.0] and "broken" not in samples


@pytest.mark.slow  # 256 streams over about 6 s of fixed latencies
def test_percentiles_match_known_latency_at_concurrency_256(server: FakeServer) -> None:
    # The 2 % accuracy target is measured in benchmarks/loadgen_accuracy.py on a quiet machine; here a
    # looser bound (a shared CI box's scheduler jitter) still catches a client that mis-times by a step.
    ttft_ms, itl_ms = 1000.0, 500.0
    server.configure(ttft_ms=ttft_ms, itl_ms=itl_ms)
    # ramp the first wave over one request's lifetime so the closed loop is not in lockstep; the warm-up
    # wave opens the connections
    res = run_bench(server.url, MODEL, parse_workload("random:8:3"),
                    LoadConfig(concurrency=256, num_prompts=256, warmup_prompts=256, ramp_s=2.0))
    assert res.completed == 256 and server.stats()["max_running"] == 256
    for dist, truth in ((res.ttft_ms, ttft_ms), (res.itl_ms, itl_ms), (res.e2el_ms, ttft_ms + 2 * itl_ms)):
        for q in ("p50", "p90", "p99"):
            assert dist.percentile(q) == pytest.approx(truth, rel=0.02 if q == "p50" else 0.08), (q, dist)


def test_scraper_stop_does_not_swallow_the_callers_cancellation() -> None:
    """Ctrl-C makes asyncio.run cancel the main task; arriving while the scraper stops, it must not be lost."""
    from autotune.loadgen.promscrape import MetricsScraper

    class SlowToStop(MetricsScraper):
        async def _scrape(self) -> None:
            return None

        async def _loop(self) -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                await asyncio.sleep(0.2)  # cleanup takes a while: the caller's cancel lands meanwhile
                raise

    async def scenario() -> str:
        scraper = SlowToStop(session=None, url="http://x")  # type: ignore[arg-type]
        await scraper.start()
        stopping = asyncio.create_task(scraper.stop())
        await asyncio.sleep(0.05)
        stopping.cancel()
        try:
            await stopping
        except asyncio.CancelledError:
            return "cancelled"
        return "returned"

    assert asyncio.run(scenario()) == "cancelled"


class _SlowToEnd:
    """A transport whose requests finish at once and whose session then hangs in its end (a server's last metrics
    scrape that does not answer): ``ending`` is set there."""

    server_metrics = None
    wall_clock = False
    time_scale = 1.0

    def __init__(self) -> None:
        self.ending = asyncio.Event()

    def prepare(self, spec: RequestSpec, endpoint: str, cfg: LoadConfig) -> RequestSpec:
        return spec

    @contextlib.asynccontextmanager
    async def session(self, cfg: LoadConfig):
        yield
        self.ending.set()
        await asyncio.sleep(3600)

    def start(self) -> None:
        pass

    async def send(self, request: RequestSpec, timeout_s: float) -> tuple[RequestOutput, bool]:
        return RequestOutput(True, 16, 4, 0.01, (0.01, 0.01, 0.01), 0.04), False


def _cancelled_as_the_session_ends(records: Path, before_cancel=lambda: None) -> None:
    cfg = LoadConfig(concurrency=2, num_prompts=6, warmup_prompts=1, records_path=str(records))

    async def scenario() -> None:
        transport = _SlowToEnd()
        run = asyncio.create_task(drive_load(transport, parse_workload("random:16:4", seed=0).requests(7), cfg))
        await transport.ending.wait()
        before_cancel()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    asyncio.run(scenario())


def test_a_cancel_as_the_session_ends_keeps_the_finished_requests(tmp_path: Path) -> None:
    """Ctrl-C (the run's task cancelled) once every request finished, while the session ends (a server's last
    metrics scrape): the records were written only after the session, so a run whose requests had all finished
    left no file."""
    records = tmp_path / "r.jsonl"
    _cancelled_as_the_session_ends(records)
    assert [warmup for _, warmup in read_records(records)] == [True] + [False] * 6


def test_records_that_cannot_be_written_on_a_cancel_are_said_and_the_cancel_stays(tmp_path: Path, caplog) -> None:
    """The folder became a file after the run's check: the cancel, not an OSError, ends the run (exit 130, not 1),
    and a warning says that the records were not written."""
    records = tmp_path / "sub" / "r.jsonl"
    with caplog.at_level(logging.WARNING, logger="autotune.loadgen.runner"):
        _cancelled_as_the_session_ends(records, before_cancel=lambda: (tmp_path / "sub").write_text(""))
    [warning] = [r.getMessage() for r in caplog.records if r.name == "autotune.loadgen.runner"]
    assert f"could not be written to {records}" in warning
