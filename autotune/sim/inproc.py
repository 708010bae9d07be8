"""The sim engine in-process: its scheduler and the load generator on one virtual clock, no HTTP.

The load generator's drive loop (:func:`autotune.loadgen.runner.drive_load`: closed-loop slots, the first
wave's ramp, warm-up, open-loop arrivals, records, the steady window) runs unchanged; :class:`SimTransport`
hands each request to a :class:`VirtualReplica` instead of a server. Both run on a
:class:`~autotune.sim.vclock.VirtualClockLoop`, whose time is the modelled time: an engine step "lasts" its
modelled duration by sleeping it, and the loop jumps straight there. A level therefore takes the CPU time its
scheduler steps need, and its figures are the same on an idle or a busy CPU (the HTTP sim, paced by the wall
clock, lags a CPU that cannot keep up).

The timing rules are the HTTP sim server's (:mod:`autotune.sim.replica`, :mod:`autotune.sim.server`): a request is
stamped when the client sends it and goes through the API server (:mod:`autotune.sim.frontend`) before it joins
the scheduler between steps; a busy replica's steps follow each other in modelled time; an idle one starts when
the request reaches it; each token reaches its client when the API server has processed the outputs of the step
that sampled it (a closed-loop client's next request is sent then). Token times are kept per slot in a numpy array
and handed over when a request finishes: a client only needs its request's end to send the next one, and a
level's million tokens never pass through Python one by one.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import math
import random
import signal
import threading
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, NoReturn

import numpy as np
import orjson

from autotune.engines.base import (
    LaunchSpec,
    StartupInfo,
    classify_failure,
    parse_startup_log,
)
from autotune.errors import EngineStartError, UsageError
from autotune.flags import flags_to_argv
from autotune.gpus import load_gpu
from autotune.loadgen.client import build_payload
from autotune.loadgen.runner import LoadConfig, drive_load
from autotune.loadgen.workload import RequestSpec
from autotune.metrics import BenchResult, RequestOutput, chunk_gaps_s
from autotune.sim.noise import noise_rng
from autotune.progress import NULL_PROGRESS, Progress
from autotune.sim.args import parse_serve_args
from autotune.sim.engine import EngineSetup, setup_engine
from autotune.sim.engine_times import EngineTimes
from autotune.sim.frontend import ApiServers
from autotune.sim.perf import EncoderWork
from autotune.sim.scheduler import NO_IMAGES
from autotune.sim.startup import ENGINE_DEAD_MESSAGE, engine_death_lines, failure_lines, startup_report
from autotune.sim.vclock import VirtualClockLoop
from autotune.vllm_api.request import ApiError, parse_request

__all__ = ["SimRequest", "VirtualReplica", "SimTransport", "InProcessSim", "bench_in_process"]

_LOG_TAIL_LINES = 40  # as the launcher's


_SERVED_NAME = "sim"  # the model name the in-process transport's requests carry


@dataclass(frozen=True)
class SimRequest:
    """A request as the sim engine reads it from the body the load generator would send. ``error``: the
    HTTP 400 the sim server would answer instead (the request then fails, as data)."""

    prompt_tokens: int
    max_tokens: int
    encoder: EncoderWork = NO_IMAGES
    ignore_eos: bool = True
    error: str = ""
    images_s: float = 0.0  # the API server's preprocessing of its images (FrontEndConstants.images_s)


@dataclass(eq=False)
class _Pending:
    arrival_s: float
    prompt_tokens: int
    future: asyncio.Future[RequestOutput | None]  # None: timed out
    rid: int = 0  # unique within the run
    slot: int = -1
    replica: VirtualReplica | None = None  # None while the API server handles it


@dataclass
class _Peaks:
    """What the HTTP path's /metrics scrape reports, observed exactly after every step."""

    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0


class VirtualReplica:
    """One DP replica: a scheduler stepped on the event loop's (virtual) clock, its tokens delivered through the
    API servers."""

    def __init__(self, setup: EngineSetup, loop: VirtualClockLoop, api: ApiServers) -> None:
        self.sched = setup.new_scheduler()
        self.loop = loop
        self.api = api
        self.vt = loop.time()
        self.idle = True
        self.wake = asyncio.Event()
        self.pending: dict[int, _Pending] = {}
        self.peaks = _Peaks()
        self.preemptions_at_start = self.sched.num_preemptions_total
        rows = len(self.sched.prompt_len)
        self._times = np.zeros((rows, 64))  # token times (delivered to the client), one row per scheduler slot
        self._rid = np.zeros(rows, dtype=np.int64)  # each slot's request id
        self._server = np.zeros(rows, dtype=np.int64)  # each slot's API server
        self.engine_times = EngineTimes()

    @property
    def outstanding(self) -> int:
        return len(self.pending)

    def submit(self, p: _Pending, req: SimRequest, max_out: int, server: int) -> None:
        """The API server hands the request over: it joins the scheduler now."""
        p.slot = self.sched.add(req.prompt_tokens, max_out, req.encoder)
        p.replica = self
        rows, cols = self._times.shape
        if p.slot >= rows or max_out > cols:
            grown = np.zeros((max(rows, len(self.sched.prompt_len)), max(cols, max_out)))
            grown[:rows, :cols] = self._times
            self._times = grown
            extra = len(grown) - rows
            self._rid = np.concatenate([self._rid, np.zeros(extra, np.int64)])
            self._server = np.concatenate([self._server, np.zeros(extra, np.int64)])
        self._rid[p.slot], self._server[p.slot] = p.rid, server
        self.engine_times.handed(p.slot)
        self.pending[p.slot] = p
        self.wake.set()

    def abort(self, p: _Pending) -> None:
        """The client gave up (timeout): free the request's slot and KV blocks, as the server does."""
        if self.pending.get(p.slot) is p:
            del self.pending[p.slot]
            self.sched.abort(p.slot)
            self.wake.set()

    async def run(self) -> None:
        loop, sched, api = self.loop, self.sched, self.api
        while True:
            if not sched.has_work:
                self.idle = True
                self.wake.clear()
                await self.wake.wait()
                continue
            if self.idle:  # only an idle replica jumps to the loop's time; a busy one keeps its own clock
                self.vt = max(self.vt, loop.time())
                self.idle = False
            self.engine_times.step_starts(self.vt)
            run = None
            # Several decode-only steps at once while nothing can join the batch: no callback is waiting to run
            # now (a client answering a finished request, another replica) and no timer (an arrival, a hand-over
            # by an API server, a delivery someone waits for, the ramp, another replica's step end) falls inside.
            if not loop.has_ready():
                horizon_s = loop.next_timer_s()
                if horizon_s > self.vt:
                    run = sched.decode_run(1 << 30, horizon_s - self.vt)
            if run is not None:
                ends = self.vt + np.cumsum(run.durations_s)
                k = len(ends)
                emitted, finished = run.slots, run.finished
                cols = sched.out[emitted][:, None] - k + np.arange(k)
                end = float(ends[-1])
                self.engine_times.decode_run(end - float(run.durations_s[-1]))
            else:
                scheduled_ahead = bool(sched.lag_steps and sched.num_running)
                res = sched.step()
                if res is None:  # nothing schedulable until a request comes or goes
                    self.idle = True
                    self.wake.clear()
                    await self.wake.wait()
                    continue
                end = self.vt + res.duration_s
                emitted, finished, cols = res.emitted, res.finished, sched.out[res.emitted] - 1
                self.engine_times.stepped(res, self.vt, end, scheduled_ahead)
            self._observe()
            # The finished requests leave now: their slots are free again and may be taken by a request handed over
            # while this step "runs" (a slot's token times are written in step order, so theirs stay readable).
            done = [(self.pending.pop(slot), slot, int(sched.out[slot])) for slot in finished.tolist()
                    if slot in self.pending]
            await asyncio.sleep(end - loop.time())
            self.vt = end
            if not len(emitted):
                continue
            # The step's outputs go to the API servers (a decode run's steps one by one, in their order).
            keys = self._rid[emitted]
            servers = self._server[emitted] if api.count > 1 else None
            if run is None:
                api.outputs(end, keys, servers, self._deliverer(emitted, cols, done), bool(done))
            else:
                last = k - 1
                rows, steps = emitted[:, None], cols

                def step_deliver(i: int, emitted=emitted, cols=cols, done=done, last=last):
                    return self._deliverer(emitted, cols[:, i], done if i == last else [])

                def settle(times: np.ndarray, rows=rows, steps=steps) -> None:
                    self._times[rows, steps[:, :-1]] = times  # the run's steps before the last, delivered at once
                api.outputs_run(ends, keys, servers, step_deliver, settle, bool(done))

    def _deliverer(self, emitted: np.ndarray, cols: np.ndarray,
                   done: list[tuple[_Pending, int, int]]) -> Callable[[float, np.ndarray | None], None]:
        """What an API server calls when it delivers (part of) a step's tokens: their times, and the requests that
        finished with them handed to their clients."""
        def deliver(t: float, mask: np.ndarray | None) -> None:
            if mask is None:
                self._times[emitted, cols] = t
            else:
                self._times[emitted[mask], cols[mask]] = t
            for p, slot, n in done:
                if mask is None or mask[int(np.flatnonzero(emitted == slot)[0])]:
                    _resolve(p, self._output(p, slot, n))
        return deliver

    def _output(self, p: _Pending, slot: int, n: int) -> RequestOutput:
        """The request as the client's sim-stamp path reads it (usage counts, modelled times)."""
        t = self._times[slot, :n]
        first, last = float(t[0]), float(t[-1])
        return RequestOutput(success=True, prompt_tokens=p.prompt_tokens, output_tokens=n,
                             ttft_s=first - p.arrival_s, itl_s=chunk_gaps_s(t),
                             e2el_s=last - p.arrival_s, start_s=p.arrival_s)

    def _observe(self) -> None:
        s, peaks = self.sched, self.peaks
        peaks.running = max(peaks.running, s.num_running)
        peaks.waiting = max(peaks.waiting, s.num_waiting)
        peaks.kv_usage = max(peaks.kv_usage, s.kv_usage)


def _summed(counts: list[dict[str, int]]) -> dict[str, int]:
    return {key: sum(c[key] for c in counts) for key in counts[0]} if counts else {}


def _resolve(p: _Pending, out: RequestOutput) -> None:
    if not p.future.done():  # the watchdog may have timed it out meanwhile
        p.future.set_result(out)


def _engine_dead_output(prompt_tokens: int, start_s: float) -> RequestOutput:
    return RequestOutput(success=False, prompt_tokens=prompt_tokens, start_s=start_s,
                         error=f"HTTP 500: {ENGINE_DEAD_MESSAGE}", error_kind="http_5xx")


class SimTransport:
    """The load generator's transport to the sim engine in-process (see :class:`~autotune.loadgen.runner.
    Transport`). Needs a :class:`VirtualClockLoop`. ``rng`` draws the output length of a request sent
    without ignore_eos (the server's seeded ``random.Random``; kept across the levels of one engine)."""

    wall_clock = False  # modelled time: a GC pause changes nothing
    time_scale = 1.0  # the virtual loop's clock is the modelled one

    def __init__(self, setup: EngineSetup, rng: random.Random | None = None) -> None:
        self.setup = setup
        self.rng = rng or random.Random(0)
        self.server_metrics: dict[str, Any] | None = None
        self.replicas: list[VirtualReplica] = []
        self._served = setup.served_model((_SERVED_NAME,), setup.model.name)
        self._t0 = 0.0
        self._requests = 0
        # Requests in flight by send time, for the timeout watchdog: one run has one timeout, so their
        # deadlines come in this order (a timer per request would cost more than the rest of the request).
        self._in_flight: deque[tuple[float, _Pending]] = deque()
        self._timeout_s = math.inf
        self._sent = asyncio.Event()
        self.engine_dead = False

    def prepare(self, spec: RequestSpec, endpoint: str, cfg: LoadConfig) -> SimRequest:
        """The body the load generator would send, read and checked by the server's own parser
        (:func:`autotune.vllm_api.request.parse_request`); a refused request fails as the server's 400."""
        body = orjson.dumps(build_payload(spec, _SERVED_NAME, endpoint, cfg.ignore_eos, cfg.temperature))
        try:
            req = parse_request(body, endpoint == "chat", self._served, 0.0)
        except ApiError as e:
            return SimRequest(1, 1, error=e.message)
        return SimRequest(req.prompt_tokens, req.max_tokens, self.setup.perf.encoder_work(req.images), req.ignore_eos,
                          images_s=self.setup.frontend.images_s(req.images))

    @asynccontextmanager
    async def session(self, cfg: LoadConfig) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        if not isinstance(loop, VirtualClockLoop):
            raise UsageError("the in-process sim runs on a VirtualClockLoop (see bench_in_process)")
        dp = int(self.setup.flags["data-parallel-size"] or 1)
        self.api = self.setup.new_api_servers(loop.call_at)
        self.replicas = [VirtualReplica(self.setup, loop, self.api) for _ in range(dp)]
        self._timeout_s, self._sent = cfg.request_timeout_s, asyncio.Event()
        tasks = [asyncio.create_task(r.run()) for r in self.replicas] + [asyncio.create_task(self._watchdog())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            peaks = [r.peaks for r in self.replicas]
            self.server_metrics = {  # the scrape's keys (autotune/loadgen/promscrape.py), summed over replicas
                "max_kv_cache_usage": max(p.kv_usage for p in peaks),
                "preemptions": sum(r.sched.num_preemptions_total - r.preemptions_at_start for r in self.replicas),
                "max_requests_running": sum(p.running for p in peaks),
                "max_requests_waiting": sum(p.waiting for p in peaks),
                "steps_by_tokens": _summed([r.sched.steps_by_tokens() for r in self.replicas]),
                **EngineTimes.means_ms([r.engine_times for r in self.replicas])}

    def start(self) -> None:
        self._t0 = asyncio.get_running_loop().time()

    async def send(self, request: SimRequest, timeout_s: float) -> tuple[RequestOutput, bool]:
        loop = asyncio.get_running_loop()
        now = loop.time()
        start_s = now - self._t0
        if request.error:
            return RequestOutput(success=False, prompt_tokens=request.prompt_tokens, start_s=start_s,
                                 error=f"HTTP 400: {request.error}"[:206], error_kind="http_4xx"), False
        if timeout_s != self._timeout_s:
            raise ValueError(f"one request timeout per run ({self._timeout_s} s), got {timeout_s} s")
        if self.setup.dies_under_load and (self.engine_dead or any(not p.future.done() for _, p in self._in_flight)):
            self._engine_dies()  # two requests at once: vLLM's engine dies (EngineSetup.dies_under_load)
            return _engine_dead_output(request.prompt_tokens, start_s), False
        max_out = request.max_tokens if request.ignore_eos else self.rng.randint(1, request.max_tokens)
        self._requests += 1
        pending = _Pending(now, request.prompt_tokens, loop.create_future(), self._requests)
        self._in_flight.append((now + timeout_s, pending))
        self._sent.set()

        def handed(_t: float, server: int) -> None:
            if not pending.future.done():  # not timed out in the API server
                replica = min(self.replicas, key=lambda r: r.outstanding)  # the API server's pick
                replica.submit(pending, request, max_out, server)
        self.api.request(now, handed, request.images_s)
        out = await pending.future
        if out is None:  # the watchdog gave up on it
            return RequestOutput(success=False, prompt_tokens=request.prompt_tokens, start_s=start_s,
                                 error="request timed out", error_kind="timeout"), False
        return out, True

    def _engine_dies(self) -> None:
        """Every request in flight fails as vLLM's API server fails them once its engine is dead."""
        self.engine_dead = True
        for _, pending in self._in_flight:
            if not pending.future.done():
                if pending.replica is not None:
                    pending.replica.abort(pending)
                pending.future.set_result(_engine_dead_output(pending.prompt_tokens, pending.arrival_s - self._t0))

    async def _watchdog(self) -> None:
        """Time out requests in flight past the run's request timeout, as the HTTP client does: the engine
        drops them (:meth:`VirtualReplica.abort`) and the sender gets a timeout failure."""
        loop, in_flight = asyncio.get_running_loop(), self._in_flight
        while True:
            while in_flight and in_flight[0][1].future.done():
                in_flight.popleft()
            if not in_flight:
                self._sent.clear()
                await self._sent.wait()
                continue
            due_s, pending = in_flight[0]
            if loop.time() < due_s:
                await asyncio.sleep(due_s - loop.time())
                continue
            in_flight.popleft()
            if pending.replica is not None:
                pending.replica.abort(pending)
            pending.future.set_result(None)


def bench_in_process(setup: EngineSetup, requests: list[RequestSpec], cfg: LoadConfig,
                     progress: Progress = NULL_PROGRESS, rng: random.Random | None = None,
                     transport: SimTransport | None = None) -> BenchResult:
    """One load run (:func:`~autotune.loadgen.runner.drive_load`) against a fresh sim engine in-process, on a
    virtual clock: ``cfg`` in modelled seconds (``time_scale`` 1).

    Ctrl-C and SIGTERM wait until the run is over (a second or so of CPU): raised inside the event loop's own
    machinery (a task's cancellation, an async generator's finaliser) they escaped as a printed traceback and
    could leave the trial RUNNING; delivered after it, they stop the study like an interrupt between levels."""
    with _signals_deferred(), asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(drive_load(transport or SimTransport(setup, rng), requests, cfg, progress))


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Block SIGINT, SIGTERM and SIGHUP in this thread for the block; pending ones are delivered on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    deferred = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, deferred)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class InProcessSim:
    """The sim engine for one trial without a subprocess: the launcher's contract (start, startup figures,
    failure class and log tail, alive, stop, context manager) for :class:`SimTransport`. ``start`` takes the
    HTTP sim's own path: the flags as `autotune sim serve` parses them, its startup lines (or, where vLLM
    would refuse to start, its failure lines) written to the trial's log and read back by the launcher's
    parser. Each :meth:`bench` runs on an idle engine, as a level does on a live server."""

    def __init__(self, spec: LaunchSpec, progress: Progress = NULL_PROGRESS) -> None:
        self.spec = spec
        self.progress = progress
        self.startup = StartupInfo()
        self.setup: EngineSetup | None = None
        self._rng = random.Random(0)
        self._noise_rng = noise_rng(spec.sim_noise_seed, spec.served_model_name)
        self._started = False

    @property
    def log_path(self) -> Path:
        return self.spec.log_path

    @property
    def vllm_serve_cmd(self) -> str:
        return self.spec.vllm_serve_cmd

    def __enter__(self) -> InProcessSim:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Build the engine; raises :class:`EngineStartError` (failure class, log tail) where the sim server
        would exit before serving."""
        spec = self.spec
        t0 = time.monotonic()
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        spec.log_path.write_text("")
        self.progress.engine_starting(spec.engine, None, spec.vllm_serve_cmd, spec.log_path, spec.gpu_ids)
        argv = [spec.model_ref, *flags_to_argv(spec.flags), "--gpu-type", spec.gpu_type or "h100"]
        captured = io.StringIO()
        try:
            with contextlib.redirect_stderr(captured):  # argparse's one line, as the server prints it
                args = parse_serve_args(argv, prog="vllm serve")
            setup = setup_engine(spec.model, load_gpu(args.gpu_type), args.flags)
        except SystemExit:
            lines = captured.getvalue().splitlines()
            self._fail(lines, None, lines[-1] if lines else "the flags were refused")
        except UsageError as e:
            self._fail([f"vllm serve: error: {e}"], None, str(e))
        except EngineStartError as e:
            self._fail(failure_lines(str(e), e.failure_class), e.failure_class, str(e))
        report = startup_report(setup, spec.model_ref, host=None)
        self._write([line for _, line in report.lines])
        self.startup = replace(parse_startup_log(self._log_text()), ready_s=round(time.monotonic() - t0, 3))
        self.setup, self._rng, self._started = setup, random.Random(args.seed), True
        self.progress.engine_ready(self.startup.as_dict())

    def bench(self, requests: list[RequestSpec], cfg: LoadConfig, progress: Progress = NULL_PROGRESS) -> BenchResult:
        """One load level; ``cfg`` in modelled seconds (``time_scale`` 1: nothing is paced by the wall)."""
        if self.setup is None or not self._started:
            raise RuntimeError("bench() on an engine that is not started")
        if cfg.time_scale != 1.0:
            raise ValueError(f"the in-process sim runs in modelled time: time_scale 1, not {cfg.time_scale}")
        transport = SimTransport(self.setup, self._rng)
        result = bench_in_process(self.setup, requests, cfg, progress, transport=transport)
        if transport.engine_dead:  # as the HTTP sim server's process, this engine is gone
            self._write(engine_death_lines(self.setup.dies_under_load))
            self._started = False
        return self.spec.sim_noise.apply(result, self._noise_rng) if self.spec.sim_noise else result

    def alive(self) -> bool:
        return self._started

    def answers(self, within_s: float = 10.0) -> bool:  # the launcher's signature: nothing to wait for here
        return self._started

    def stop(self) -> None:
        self._started = False

    def log_tail(self, n: int = _LOG_TAIL_LINES) -> str:
        return "\n".join(self._log_text().splitlines()[-n:])

    def _fail(self, lines: list[str], failure_class: str | None, reason: str) -> NoReturn:
        self._write(lines)
        text = self._log_text()
        cls = failure_class or classify_failure(text, exited=True, timed_out=False)
        raise EngineStartError(f"sim engine failed to start ({cls}): {reason}; log: {self.log_path}", cls,
                               self.log_tail())

    def _write(self, lines: list[str]) -> None:
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)

    def _log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""
