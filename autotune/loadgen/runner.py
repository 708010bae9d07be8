"""Drive a server with a workload: closed loop (fixed concurrency), open loop (Poisson/gamma arrivals) or the
replay of a timed trace (each request sent at its own ``arrival_s``).

One load generator, two transports: :class:`HttpTransport` streams OpenAI requests to a server over one aiohttp
session (request bodies serialized before the clock starts); the sim engine's in-process transport
(:mod:`autotune.sim.inproc`) hands them to its scheduler on a virtual asyncio clock. Either way the same drive
loop sends them (closed-loop slots, the first wave's ramp, open-loop arrivals), timed by the event loop's clock,
so a virtual clock runs the same load shape without waiting. Warm-up requests are the first ``warmup_prompts``
of the same stream (so measured requests start in steady state) and are left out of the figures. The measured
window runs from the first measured start to the last measured end, in whichever clock the records use (wall,
or the sim engine's modelled clock).
"""
from __future__ import annotations

import asyncio
import gc
import gzip
import json
import logging
import math
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Protocol

import aiohttp
import numpy as np

from autotune.errors import ServerUnreachable, UsageError
from autotune.jsonsafe import json_safe
from autotune.loadgen.client import PreparedRequest, prepare_request, send_request_clocked
from autotune.loadgen.promscrape import MetricsScraper
from autotune.loadgen.workload import RequestSpec, Workload
from autotune.metrics import BenchResult, RequestOutput, steady_window, summarize
from autotune.progress import NULL_PROGRESS, BenchProgress, Progress

__all__ = ["LoadConfig", "Transport", "HttpTransport", "run_load", "drive_load", "run_bench", "check_model",
           "check_records_path", "write_records", "read_records", "record_output", "steady_level_result"]

logger = logging.getLogger(__name__)

_ENDPOINTS = ("auto", "completions", "chat")
_SLO_METRICS = ("ttft", "tpot", "itl", "e2el")
_PROGRESS_EVERY_S = 0.1


@dataclass(frozen=True)
class LoadConfig:
    """How to drive the server. Give ``concurrency`` (closed loop), ``rate`` in requests/s (open loop), or
    both (open loop capped at ``concurrency`` in flight); or ``replay_arrivals`` to send each request at its
    own ``arrival_s`` (a timed trace, shifted so the first is sent at once; ``concurrency`` may cap it).
    ``burstiness`` is the gamma shape of the inter-arrival times (1 = Poisson). ``ramp_s`` spreads the first
    closed-loop wave's starts over that many seconds. ``endpoint`` "auto" picks chat when requests carry
    images. ``rate``, ``ramp_s`` and a trace's times are in the server's clock, the one the figures come in: a sim
    server at time scale S (modelled seconds per wall second, which it gives on ``/version``) is sent them S times
    faster than the wall clock. ``time_scale`` is that S where the server does not give it."""

    concurrency: int | None = None
    rate: float | None = None
    burstiness: float = 1.0
    num_prompts: int = 200
    warmup_prompts: int = 0
    ramp_s: float = 0.0
    max_duration_s: float | None = None
    endpoint: str = "auto"
    ignore_eos: bool = True
    request_timeout_s: float = 600.0
    slo_ms: dict[str, float] | None = None
    scrape_metrics: bool = False
    time_scale: float = 1.0
    seed: int = 0  # arrival times
    steady_state: bool = False  # closed loop: throughput over the window where every slot is busy
    temperature: float | None = None  # None: the server's default (as `vllm bench serve`)
    records_path: str | None = None  # write every request (warm-up flagged) here, gzipped JSON lines
    records_itl: bool = False  # the records also list each request's inter-token gaps (ms)
    replay_arrivals: bool = False

    def __post_init__(self) -> None:
        if self.replay_arrivals and self.rate is not None:
            raise UsageError("a trace replay sends at the trace's own times: give no request rate")
        if self.concurrency is None and self.rate is None and not self.replay_arrivals:
            raise UsageError("give a concurrency or a request rate")
        if self.concurrency is not None and (isinstance(self.concurrency, bool) or self.concurrency < 1):
            raise UsageError(f"concurrency must be a positive integer, got {self.concurrency}")
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise UsageError(f"rate must be a positive number of requests/s, got {self.rate}")
        for name in ("burstiness", "request_timeout_s", "time_scale"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise UsageError(f"{name} must be positive, got {value}")
        if self.num_prompts < 1:
            raise UsageError(f"num_prompts must be positive, got {self.num_prompts}")
        if self.warmup_prompts < 0:
            raise UsageError(f"warmup_prompts must be >= 0, got {self.warmup_prompts}")
        if not self.ramp_s >= 0:
            raise UsageError(f"ramp_s must be >= 0, got {self.ramp_s}")
        if self.max_duration_s is not None and not self.max_duration_s > 0:
            raise UsageError(f"max_duration_s must be positive, got {self.max_duration_s}")
        if self.endpoint not in _ENDPOINTS:
            raise UsageError(f"endpoint must be one of {', '.join(_ENDPOINTS)}, got {self.endpoint!r}")
        for metric, limit in (self.slo_ms or {}).items():
            if metric not in _SLO_METRICS:
                raise UsageError(f"SLO metric must be one of {', '.join(_SLO_METRICS)}, got {metric!r}")
            if not limit > 0:
                raise UsageError(f"SLO limit for {metric} must be positive, got {limit}")


async def check_model(session: aiohttp.ClientSession, url: str, model: str, timeout_s: float = 10.0) -> list[str]:
    """Ask ``/v1/models``; raise :class:`ServerUnreachable` unless the server is reachable and serves ``model``."""
    try:
        async with session.get(url.rstrip("/") + "/v1/models", timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            if r.status != 200:
                raise ServerUnreachable(f"server at {url} answered HTTP {r.status} on /v1/models")
            data = await r.json(content_type=None)
    except ServerUnreachable:
        raise
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ServerUnreachable(f"cannot reach server at {url}: {detail}") from e
    served = [m.get("id", "") for m in data.get("data", []) if isinstance(m, dict)] if isinstance(data, dict) else []
    if model not in served:
        raise ServerUnreachable(f"server at {url} does not serve model {model!r} "
                                f"(it serves: {', '.join(served) or 'none'})")
    return served


async def server_time_scale(session: aiohttp.ClientSession, url: str, timeout_s: float = 10.0) -> float | None:
    """The modelled seconds per wall second that a sim server gives on ``/version``; None for any other server
    (vLLM's ``/version`` has no such field; a server without ``/version`` is not a sim server)."""
    try:
        async with session.get(url.rstrip("/") + "/version", timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            data = await r.json(content_type=None) if r.status == 200 else None
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return None
    scale = data.get("sim_time_scale") if isinstance(data, dict) else None
    if isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale) and scale > 0:
        return float(scale)
    return None


class Transport(Protocol):
    """Where the load generator's requests go. ``prepare`` turns a request into what ``send`` takes (before the
    clock starts); ``session`` holds the connection for the run (raising :class:`UsageError` before it when
    the target is unusable); ``start`` marks the run's time origin; ``send`` never raises (a failure is a
    :class:`RequestOutput` with ``success=False``) and says whether the times are the sim's modelled clock;
    ``server_metrics`` is what the engine reported about the run (None: nothing); ``wall_clock``: the run is
    timed on the wall clock, so a garbage-collector pause would show in its figures; ``time_scale``: the
    server's seconds per second of the event loop's clock, known once ``session`` is entered."""

    server_metrics: dict[str, Any] | None
    wall_clock: bool
    time_scale: float

    def prepare(self, spec: RequestSpec, endpoint: str, cfg: LoadConfig) -> Any: ...

    def session(self, cfg: LoadConfig) -> Any: ...  # an async context manager

    def start(self) -> None: ...

    async def send(self, request: Any, timeout_s: float) -> tuple[RequestOutput, bool]: ...


class HttpTransport:
    """Streaming OpenAI requests to a live server (vLLM, the sim server, a fake) over one aiohttp session."""

    wall_clock = True

    def __init__(self, url: str, model: str) -> None:
        self.url, self.model = url, model
        self.server_metrics: dict[str, Any] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.time_scale = 1.0
        self._t0 = 0.0

    def prepare(self, spec: RequestSpec, endpoint: str, cfg: LoadConfig) -> PreparedRequest:
        return prepare_request(self.url, self.model, spec, endpoint, cfg.ignore_eos, cfg.temperature)

    @asynccontextmanager
    async def session(self, cfg: LoadConfig) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)  # no cap: the semaphore is the limit
        async with aiohttp.ClientSession(connector=connector) as session:
            await check_model(session, self.url, self.model)
            self.time_scale = await server_time_scale(session, self.url) or cfg.time_scale
            scraper = MetricsScraper(session, self.url) if cfg.scrape_metrics else None
            if scraper is not None:
                await scraper.start()
            self._session = session
            try:
                yield
            finally:
                self._session = None
                if scraper is not None:
                    self.server_metrics = await scraper.stop()

    def start(self) -> None:
        self._t0 = time.perf_counter()

    async def send(self, request: PreparedRequest, timeout_s: float) -> tuple[RequestOutput, bool]:
        assert self._session is not None, "send() outside session()"
        return await send_request_clocked(self._session, request, aiohttp.ClientTimeout(total=timeout_s),
                                          self.time_scale, self._t0)


async def run_load(url: str, model: str, requests: list[RequestSpec], cfg: LoadConfig,
                   progress: Progress = NULL_PROGRESS) -> BenchResult:
    """Send ``cfg.warmup_prompts + cfg.num_prompts`` requests (request ``i`` is ``requests[i % len]``) to the
    server at ``url`` and summarize the measured ones. Raises :class:`UsageError` only before the run
    (server, model, inputs)."""
    return await drive_load(HttpTransport(url, model), requests, cfg, progress)


async def drive_load(transport: Transport, requests: list[RequestSpec], cfg: LoadConfig,
                     progress: Progress = NULL_PROGRESS) -> BenchResult:
    """:func:`run_load` through any :class:`Transport`."""
    if not requests:
        raise UsageError("no requests to send")
    endpoint = cfg.endpoint
    if endpoint == "auto":
        endpoint = "chat" if any(r.images for r in requests) else "completions"
    if endpoint == "completions" and any(r.images for r in requests):
        raise UsageError("requests with images need the chat endpoint")
    if cfg.records_path:  # they are written after the run: a path that cannot take them would lose it
        check_records_path(cfg.records_path)
    total = cfg.warmup_prompts + cfg.num_prompts
    distinct = [transport.prepare(spec, endpoint, cfg) for spec in requests[:total]]
    prepared = [distinct[i % len(distinct)] for i in range(total)]
    arrivals_s = _arrival_times(total, cfg.rate, cfg.burstiness, cfg.seed) if cfg.rate is not None else None
    if cfg.replay_arrivals:
        arrivals_s = _trace_times(requests, total)

    results: list[tuple[RequestOutput, bool] | None] = [None] * total
    images = [len(requests[i % len(requests)].images) for i in range(total)] if any(r.images for r in requests) \
        else None
    driving = False
    try:
        async with transport.session(cfg):
            if transport.wall_clock:
                gc.collect()
                gc.freeze()  # the request bodies and everything before the run: no long GC pauses during it
            try:
                driving = True
                wall_s, span_s = await _drive(transport, prepared, arrivals_s, cfg, progress, results)
            finally:
                if transport.wall_clock:
                    gc.unfreeze()
    except asyncio.CancelledError:
        # Ctrl-C (asyncio.run cancels the run) in the run or in the session's end (its last metrics scrape): the
        # requests that finished are kept. Before the run nothing was sent and nothing is written.
        if cfg.records_path and driving:
            try:
                write_records(cfg.records_path, results, cfg.warmup_prompts, with_itl=cfg.records_itl, images=images)
            except OSError as e:  # the interrupt stays what ends the run; the lost records are said
                logger.warning("the finished requests' records could not be written to %s: %s", cfg.records_path, e)
        raise
    server_metrics = transport.server_metrics

    if cfg.records_path:
        write_records(cfg.records_path, results, cfg.warmup_prompts, with_itl=cfg.records_itl, images=images)
    sent = [r for r in results[cfg.warmup_prompts:] if r is not None]
    measured = [out for out, _ in sent]
    ok_clocks = {sim for out, sim in sent if out.success}
    clock = "mixed" if len(ok_clocks) > 1 else "sim" if ok_clocks == {True} else "wall"
    extra: dict[str, Any] = {
        "concurrency": cfg.concurrency, "rate": cfg.rate, "burstiness": cfg.burstiness,
        "num_prompts": cfg.num_prompts, "warmup_prompts": cfg.warmup_prompts, "ramp_s": cfg.ramp_s,
        "endpoint": endpoint, "clock": clock, "time_scale": transport.time_scale, "sent": len(measured),
        "wall_s": wall_s,
    }
    if cfg.replay_arrivals:
        extra["replay"] = True
        extra["trace_span_s"] = float(arrivals_s[-1])
    if len(measured) < cfg.num_prompts:
        extra["stopped_early"] = True
    if cfg.slo_ms:
        extra["slo_ms"] = dict(cfg.slo_ms)
    if server_metrics is not None:
        extra["server_metrics"] = server_metrics
    # the window in the records' own clock; the run's span on the event loop's clock when there is none (all
    # failed) or clocks are mixed
    duration_s = _window_s(measured) if clock in ("sim", "wall") and ok_clocks else span_s * transport.time_scale
    steady = cfg.steady_state and cfg.rate is None and ok_clocks and clock in ("sim", "wall")
    window = steady_window(measured, duration_s, _first_wave_end_s(results, cfg.concurrency)) if steady else None
    if window is not None:
        extra["steady_window_s"] = window[1] - window[0]
        # beside it, what a whole-run count gives (`vllm bench serve`'s): the ramp and the drain included
        extra["whole_run_output_tok_s"] = sum(o.output_tokens for o in measured if o.success) / duration_s
    elif steady:
        extra["no_steady_window"] = NO_STEADY_WINDOW
    everyone = [r[0] for r in results if r is not None]  # warm-up too: its tokens in the window count
    return summarize(measured, duration_s, slo_ms=cfg.slo_ms, extra=extra, window=window, window_outputs=everyone)


def check_records_path(path: str | Path) -> None:
    """Raise :class:`UsageError` unless :func:`write_records` can write ``path`` (its missing folders created)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"cannot write the records to {path}: it is a folder")
    nearest = next(p for p in path.parents if p.exists())
    if not nearest.is_dir():
        raise UsageError(f"cannot write the records to {path}: {nearest} is a file, not a folder")
    if not os.access(nearest, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"cannot write the records to {path}: no permission to write there")


def write_records(path: str | Path, results: list[tuple[RequestOutput, bool] | None], warmup: int,
                  with_itl: bool = False, images: list[int] | None = None) -> None:
    """One JSON object per request sent, in send order (gzip if the name ends in .gz): where the figures
    came from, e.g. TTFT against start time to see a transient. Times in ms, ``start_s`` from the run's start
    in the records' clock (modelled seconds for the sim engine). ``with_itl`` adds ``itl_ms``, the request's
    inter-token gaps (one per token chunk after the first), e.g. to compare them gap by gap with another tool's.
    ``images``: each request's image count, written as ``images`` (its ``prompt_tokens`` are the server's usage,
    image tokens included, where the server reports usage)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        for i, r in enumerate(results):
            if r is None:
                continue
            out, _ = r
            itl = out.itl_s
            record = {
                "i": i, "warmup": i < warmup, "ok": out.success, "error_kind": out.error_kind or None,
                "start_s": round(out.start_s, 6), "prompt_tokens": out.prompt_tokens,
                "output_tokens": out.output_tokens, "ttft_ms": _ms(out.ttft_s), "tpot_ms": _ms(out.tpot_s),
                "e2el_ms": _ms(out.e2el_s), "itl_max_ms": _ms(max(itl)) if itl else None,
            }
            if images is not None:
                record["images"] = images[i]
            if with_itl:
                record["itl_ms"] = [_ms(gap) for gap in itl]
            f.write(json.dumps(json_safe(record)) + "\n")


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def read_records(path: str | Path) -> list[tuple[RequestOutput, bool]]:
    """What :func:`write_records` wrote, in send order: each request as the client saw it (its gaps where they were
    kept) and whether it was a warm-up request. A request the run never sent has no record."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    out: list[tuple[RequestOutput, bool]] = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            out.append((record_output(r), bool(r["warmup"])))
    return out


def record_output(record: dict[str, Any]) -> RequestOutput:
    """One request of :func:`write_records`' file (one parsed line) as the client saw it."""
    if not record["ok"]:
        return RequestOutput(False, start_s=record["start_s"], error_kind=record.get("error_kind") or "error")
    return RequestOutput(True, record["prompt_tokens"], record["output_tokens"], record["ttft_ms"] / 1e3,
                         tuple(gap / 1e3 for gap in record.get("itl_ms") or ()), record["e2el_ms"] / 1e3,
                         record["start_s"])


def steady_level_result(records: list[tuple[RequestOutput, bool]]) -> BenchResult:
    """A closed-loop level's figures from its records (:func:`read_records`), summarized as the run summarized
    them (:func:`run_load` with ``steady_state``): throughput over the steady window, every request's tokens in it;
    latencies of the measured requests."""
    measured = [o for o, warmup in records if not warmup]
    duration_s = _window_s(measured) if any(o.success for o in measured) else 0.0
    first_wave = [o.start_s for o, warmup in records if warmup]  # a level's warm-up is its first wave
    window = steady_window(measured, duration_s, max(first_wave) if first_wave else None)
    return summarize(measured, duration_s, window=window, window_outputs=[o for o, _ in records])


def run_bench(url: str, model: str, workload_or_requests: Workload | list[RequestSpec], cfg: LoadConfig,
              progress: Progress = NULL_PROGRESS) -> BenchResult:
    """Synchronous wrapper of :func:`run_load`; a :class:`Workload` is described in ``extra["workload"]``."""
    if isinstance(workload_or_requests, Workload):
        requests = workload_or_requests.requests(cfg.warmup_prompts + cfg.num_prompts)
        result = asyncio.run(run_load(url, model, requests, cfg, progress))
        result.extra["workload"] = workload_or_requests.describe()
        return result
    return asyncio.run(run_load(url, model, list(workload_or_requests), cfg, progress))


# ---- the drive loop ---------------------------------------------------------------------------------------

async def _drive(transport: Transport, prepared: list[Any], arrivals_s: np.ndarray | None, cfg: LoadConfig,
                 progress: Progress, results: list[tuple[RequestOutput, bool] | None]) -> tuple[float, float]:
    """Send everything; fills ``results`` with (output, used sim clock) per index as each request finishes (None:
    not sent, past the deadline, or not finished when the run was cancelled); returns the wall time of the run
    and its span on the event loop's clock. Waits (the ramp, arrivals, the deadline) are on the loop's clock: the
    wall for a server, the modelled clock for the in-process sim."""
    loop = asyncio.get_running_loop()
    total = len(prepared)
    sem = asyncio.Semaphore(cfg.concurrency) if cfg.concurrency is not None else None
    first_wave = cfg.concurrency or 0
    # the load's times are the server's; the loop waits in its own clock
    loop_s_per_server_s = 1.0 / transport.time_scale
    ramp_s = cfg.ramp_s * loop_s_per_server_s if arrivals_s is None and first_wave else 0.0
    counter = _Counter(progress, total, cfg.warmup_prompts)
    wall0 = time.perf_counter()
    transport.start()
    t0 = loop.time()
    deadline = t0 + cfg.max_duration_s if cfg.max_duration_s is not None else math.inf

    async def one(i: int) -> None:
        if sem is not None:
            await sem.acquire()  # tasks start in index order, so the first wave holds the slots
        try:
            if ramp_s and i < first_wave:
                await asyncio.sleep(i * ramp_s / first_wave)
            if loop.time() >= deadline:
                return
            results[i] = res = await transport.send(prepared[i], cfg.request_timeout_s)
            counter.done(res[0].success)
        finally:
            if sem is not None:
                sem.release()

    tasks: list[asyncio.Task[None]] = []
    try:
        if arrivals_s is None:
            tasks = [asyncio.create_task(one(i)) for i in range(total)]
        else:
            for i in range(total):
                start = t0 + float(arrivals_s[i]) * loop_s_per_server_s
                if start >= deadline:
                    break
                delay = start - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    wall_s = time.perf_counter() - wall0
    span_s = loop.time() - t0
    counter.finish()
    return wall_s, span_s


class _Counter:
    """Throttled ``bench_progress`` reports (about ten a second, and the last one)."""

    def __init__(self, progress: Progress, total: int, warmup: int) -> None:
        self.progress, self.total, self.warmup = progress, total, warmup
        self.finished = self.failed = 0
        self.last_s = 0.0

    def done(self, success: bool) -> None:
        self.finished += 1
        self.failed += not success
        now = time.perf_counter()
        if now - self.last_s >= _PROGRESS_EVERY_S or self.finished == self.total:
            self.last_s = now
            self._report()

    def finish(self) -> None:
        self._report()

    def _report(self) -> None:
        self.progress.bench_progress(BenchProgress(done=self.finished, total=self.total, warmup=self.warmup,
                                                   failed=self.failed))


def _arrival_times(n: int, rate: float, burstiness: float, seed: int) -> np.ndarray:
    """Start offsets (s) with gamma inter-arrival times of mean 1/rate; the first request at 0.

    The offsets are rescaled so the last one is (n-1)/rate, as `vllm bench serve` does: the offered rate is
    then exactly ``rate`` whatever the seed (unscaled, 480 Poisson arrivals miss it by ~5% in either
    direction, and an open loop's throughput follows the offered rate). The gaps keep their shape."""
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n - 1)
    offsets = np.concatenate(([0.0], np.cumsum(gaps)))
    if n > 1 and offsets[-1] > 0:
        offsets *= (n - 1) / rate / offsets[-1]
    return offsets


def _trace_times(requests: list[RequestSpec], total: int) -> np.ndarray:
    """The send offsets of a timed trace's first ``total`` requests, the first at 0."""
    if total > len(requests):
        raise UsageError(f"the trace has {len(requests)} requests, {total} were asked for")
    times = [r.arrival_s for r in requests[:total]]
    if any(t is None for t in times):
        raise UsageError("replaying arrivals needs requests with arrival_s (a jsonl trace)")
    offsets = np.asarray(times, dtype=float)
    if np.any(np.diff(offsets) < 0):
        raise UsageError("trace arrival times must not decrease")
    return offsets - offsets[0]


NO_STEADY_WINDOW = ("no steady window (every slot busy, once the first wave's ramp is over): the measured requests "
                    "were too few or all started during the ramp; throughput over the whole run")


def _first_wave_end_s(results: list[tuple[RequestOutput, bool] | None], concurrency: int | None) -> float | None:
    """When a closed loop's first wave (its first ``concurrency`` requests, ramped) had all started; ``math.inf``
    when the loop sent no more than that wave (it never refilled a slot)."""
    if not concurrency:
        return None
    if len(results) <= concurrency:
        return math.inf
    return max((r[0].start_s for r in results[:concurrency] if r is not None), default=None)


def _window_s(outputs: list[RequestOutput]) -> float:
    ok = [o for o in outputs if o.success]
    return max(o.start_s + o.e2el_s for o in ok) - min(o.start_s for o in ok)
