"""The sim engine's HTTP server: vLLM's API (:mod:`autotune.vllm_api.responder`) over tokens timed by the sim's DP
replicas (:mod:`autotune.sim.replica`) in virtual time.

Clock: virtual = (wall − wall0) × time_scale while the engine keeps up. A busy engine's steps follow each
other in virtual time (each lasts its modelled duration; its tokens are released when the wall clock reaches
the step's end); only an idle engine jumps to the wall-mapped time. A request's arrival is stamped with the
wall-mapped time, capped at the end of the step in flight (Engine.arrival_v), so a CPU that cannot keep up
with the time scale slows the run down without distorting the modelled figures. Streams flush the tokens
gathered since their last flush in one SSE chunk (at most every ~10 ms of wall time; the first and the last
token at once); every chunk carries ``sim_arrival_s`` and ``sim_token_times_s`` (virtual seconds).

Without ``ignore_eos`` a request stops after a uniformly drawn number of tokens (seeded by ``--seed``).

``--fault`` makes the server misbehave in one of the ways :mod:`autotune.sim.faults` lists: :class:`_FaultySource`
and :class:`_FaultyResponder` make the request faults, :func:`_serve` the start and stop ones.
"""
from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import numpy as np
from aiohttp import web

from autotune.errors import EngineStartError, UsageError
from autotune.gpus import load_gpu
from autotune.models import resolve_model
from autotune.sim.args import ServeArgs
from autotune.sim.engine import EngineSetup, setup_engine
from autotune.sim.faults import COUNTED_FAULTS, MALFORMED_EVENT, TOKENS_BEFORE_FAULT, Fault
from autotune.sim.replica import Engine, Stream
from autotune.sim.scheduler import Scheduler
from autotune.sim.startup import ENGINE_DEAD_MESSAGE, engine_death_lines, failure_lines, startup_report
from autotune.vllm_api import metrics as m
from autotune.vllm_api.responder import (
    ApiError,
    EventKind,
    Generation,
    GenerationRequest,
    Responder,
    TokenBatch,
    bind_error_line,
)

__all__ = ["serve_main", "SimTokenSource"]

MAX_STARTUP_WAIT_S = 3.0
# engine-dead-after: how long the API server outlives its engine. vLLM 0.26.0's with DP2 + EP on two H200s logged
# its engine core's fatal error and was still logging its workers' shutdown 6 s later, when the trial stopped it
# (docs/results/glm-4.6v-h200x2.md).
ENGINE_DEAD_EXIT_S = 5.0


class SimTokenSource:
    """The responder's token source: each request goes to the DP replica with the fewest outstanding requests."""

    def __init__(self, setup: EngineSetup, time_scale: float, seed: int) -> None:
        self.setup = setup
        dp = int(setup.flags["data-parallel-size"] or 1)
        self.time_scale = time_scale
        self.wall0 = time.monotonic()
        self.api = setup.new_api_servers(self._at)
        self.engines = [Engine(setup, time_scale, self.wall0, self.api) for _ in range(dp)]
        self.rng = random.Random(seed)
        self.requests = 0
        self.stopping = False

    def start_clock(self) -> None:
        """Virtual time 0 is now: when the server starts listening."""
        self.wall0 = time.monotonic()
        for e in self.engines:
            e.wall0 = self.wall0

    def _at(self, t: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` when the wall clock reaches virtual time ``t`` (at once where it has)."""
        now_v = (time.monotonic() - self.wall0) * self.time_scale
        asyncio.get_running_loop().call_later(max(0.0, (t - now_v) / self.time_scale), fn)

    def start(self, request: GenerationRequest) -> _SimGeneration:
        """The request arrives at an API server, which hands it to the DP replica with the fewest requests."""
        max_tokens = request.max_tokens
        n_out = max_tokens if request.ignore_eos else self.rng.randint(1, max_tokens)
        stamp = min(self.engines, key=lambda e: e.outstanding).arrival_v()
        stream = Stream(arrival_s=stamp, prompt_tokens=request.prompt_tokens, max_out=n_out)
        stream.last_flush_wall = time.monotonic()
        gen = _SimGeneration(stream, "length" if n_out == max_tokens else "stop")
        encoder = self.setup.perf.encoder_work(request.images)
        self.requests += 1
        rid = self.requests

        def handed(_t: float, server: int) -> None:
            if stream.finished or self.stopping:  # closed, or the server stopping, while the API server handled it
                stream.finished = True
                stream.event.set()
                return
            engine = min(self.engines, key=lambda e: e.outstanding)
            gen.engine, gen.slot = engine, engine.submit(stream, encoder, rid, server)
        self.api.request(stamp, handed, self.setup.frontend.images_s(request.images))
        return gen

    def metrics(self) -> m.MetricValues:
        s = [e.sched for e in self.engines]
        return {m.RUNNING: sum(x.num_running for x in s), m.WAITING: sum(x.num_waiting for x in s),
                m.KV_CACHE_USAGE: sum(x.kv_usage for x in s) / len(s),
                m.PREEMPTIONS: sum(x.num_preemptions_total for x in s),
                m.PROMPT_TOKENS: sum(x.prompt_tokens_total for x in s),
                m.GENERATION_TOKENS: sum(x.generation_tokens_total for x in s),
                m.QUEUE: m.HistogramTotals(sum(e.engine_times.queue_s for e in self.engines),
                                           sum(e.engine_times.count for e in self.engines)),
                m.PREFILL: m.HistogramTotals(sum(e.engine_times.prefill_s for e in self.engines),
                                             sum(e.engine_times.count for e in self.engines)),
                m.ITERATION_TOKENS: _iteration_tokens(s)}

    def stop(self) -> None:
        """Stop the replicas and end every stream with the tokens it has (shutdown)."""
        self.stopping = True
        for e in self.engines:
            e.stopping = True
            e.wake.set()
            for st in list(e.streams.values()):
                st.finished = True
                st.event.set()


class _SimGeneration:
    def __init__(self, stream: Stream, finish_reason: str) -> None:
        self.engine: Engine | None = None  # set when the API server hands the request over
        self.slot = -1
        self.stream, self.finish_reason = stream, finish_reason
        self.arrival_s: float | None = stream.arrival_s
        self.token_events = 0  # token events written (a stream fault strikes after TOKENS_BEFORE_FAULT of them)

    async def batches(self) -> AsyncIterator[TokenBatch]:
        st = self.stream
        while True:
            await st.event.wait()
            st.event.clear()
            times = st.times[st.sent:]
            if not times and not st.finished:
                continue
            st.sent += len(times)
            st.last_flush_wall = time.monotonic()
            done = st.finished and st.sent == len(st.times)
            yield TokenBatch(len(times), self.finish_reason if done else None, times)
            if done:
                return

    def close(self) -> None:
        if self.engine is None:
            self.stream.finished = True  # still in the API server: never handed over
        else:
            self.engine.abort(self.slot, self.stream)


# -- faults -------------------------------------------------------------------------------------------------
class _FaultySource:
    """The token source, with the faults that strike when a request arrives: ``http-500`` on a streamed request,
    ``crash-after:N`` (the process dies as request N + 1 arrives), ``engine-dead-after:N`` (from request N + 1 on,
    500 EngineDeadError; the process exits ENGINE_DEAD_EXIT_S later); and, where vLLM's engine dies under load
    (``dies_under_load``, its error), that death as a request arrives while another is in flight."""

    def __init__(self, source: SimTokenSource, fault: Fault | None, dies_under_load: str = "") -> None:
        self.source, self.fault, self.dies_under_load = source, fault, dies_under_load
        self.kind = fault.kind if fault else ""
        self.requests = 0
        self.engine_dead = False

    def start(self, request: GenerationRequest) -> _SimGeneration:
        self.requests += 1
        counted = self.fault is not None and self.kind in COUNTED_FAULTS and self.requests > self.fault.after_requests
        loaded = bool(self.dies_under_load) and any(e.outstanding for e in self.source.engines)
        if (counted or loaded) and not self.engine_dead:
            error = self.dies_under_load if loaded else \
                f"RuntimeError: fault injected: the engine died after {self.requests - 1} requests"
            if self.kind == "crash-after" and not loaded:
                _out(engine_death_lines(error)[0], err=True)
                _out(error, err=True)
                os._exit(1)  # dies as a crashed engine does: no cleanup, no goodbye
            for line in engine_death_lines(error):
                _out(line, err=True)
            self.engine_dead = True
            asyncio.get_running_loop().call_later(ENGINE_DEAD_EXIT_S, os._exit, 1)
        if self.engine_dead:
            raise ApiError(500, ENGINE_DEAD_MESSAGE, "EngineDeadError")
        if self.kind == "http-500" and request.stream:
            raise ApiError(500, "fault injected: http-500", "InternalServerError")
        return self.source.start(request)

    def metrics(self) -> m.MetricValues:
        return self.source.metrics()


class _FaultyResponder(Responder):
    """vLLM's responses, with the stream faults: ``stall-stream``, ``bad-sse``, ``disconnect``."""

    def __init__(self, *args: object, fault: Fault | None) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.kind = fault.kind if fault else ""

    async def health(self, request: web.Request) -> web.Response:
        source = self.source
        dead = isinstance(source, _FaultySource) and source.engine_dead
        return web.Response(status=503 if dead else 200)  # vLLM's /health once its engine is dead

    async def write_event(self, resp: web.StreamResponse, kind: EventKind, data: bytes,
                          generation: Generation) -> None:
        gen = generation
        assert isinstance(gen, _SimGeneration)
        if self.kind == "bad-sse" and kind != "done":
            data = MALFORMED_EVENT
        # After the first tokens, whatever comes next (more tokens, the usage, [DONE]): a short response may
        # arrive in one batch, and it must not escape the fault.
        if gen.token_events >= TOKENS_BEFORE_FAULT:
            if self.kind == "stall-stream":
                await asyncio.Event().wait()  # never set: the client's timeout ends the request
            if self.kind == "disconnect":
                raise ConnectionResetError("fault injected: the server drops the connection")
        await super().write_event(resp, kind, data, generation)
        if kind == "tokens":
            gen.token_events += 1


# A child that keeps the listening socket open (inherited by its descriptor) and ignores SIGTERM: the port stays
# taken after the server itself has exited, until its process group is killed.
_PORT_HOLDER = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"


def _hold_port(sock: socket.socket) -> None:
    subprocess.Popen([sys.executable, "-c", _PORT_HOLDER], pass_fds=(sock.fileno(),), stdin=subprocess.DEVNULL)


# -- process entry ------------------------------------------------------------------------------------------
def _out(line: str, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    stream.write(line + "\n")
    stream.flush()


async def _serve(args: ServeArgs, setup: EngineSetup) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    fault = args.fault.kind if args.fault else ""
    for sig in (signal.SIGTERM, signal.SIGINT):
        if sig == signal.SIGTERM and fault in ("ignore-sigterm", "hold-port"):
            signal.signal(sig, signal.SIG_IGN)
        else:
            loop.add_signal_handler(sig, stop.set)
    report = startup_report(setup, args.model, args.host, args.port)
    if fault == "hang-at-start":
        _out(report.lines[0][1])
        await stop.wait()  # never listens
        return 0
    wait_s = args.startup_delay_s if args.startup_delay_s is not None else min(
        MAX_STARTUP_WAIT_S, report.times.total_s / args.time_scale)
    t0 = time.monotonic()
    for frac, line in report.lines:
        delay = t0 + frac * wait_s - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return 0  # signalled while starting
            except asyncio.TimeoutError:
                pass
        _out(line)
    source = SimTokenSource(setup, args.time_scale, args.seed)
    served = replace(setup.served_model((args.served_model_name,), args.model), sim_time_scale=args.time_scale)
    responder = (_FaultyResponder(served, _FaultySource(source, args.fault, setup.dies_under_load), fault=args.fault)
                 if args.fault or setup.dies_under_load else Responder(served, source))
    runner = web.AppRunner(responder.app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        if fault == "hold-port":  # our own socket, to hand it to the holder
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((args.host, args.port))
            site: web.BaseSite = web.SockSite(runner, sock, shutdown_timeout=0.5)
        else:
            site = web.TCPSite(runner, args.host, args.port, shutdown_timeout=0.5)
        await site.start()
    except OSError as e:
        _out(bind_error_line(args.host, args.port, e), err=True)
        await runner.cleanup()
        return 1
    if fault == "hold-port":
        _hold_port(sock)
    source.start_clock()
    tasks = [asyncio.create_task(e.run()) for e in source.engines]
    _out(f"INFO:     Started server process [{os.getpid()}]", err=True)
    _out("INFO:     Waiting for application startup.", err=True)
    _out("INFO:     Application startup complete.", err=True)
    await stop.wait()
    _out("INFO:     Shutting down", err=True)
    source.stop()
    for t in tasks:
        t.cancel()
    await _cleanup(runner)
    _out("INFO:     Application shutdown complete.", err=True)
    return 0


async def _cleanup(runner: web.AppRunner) -> None:
    try:
        await asyncio.wait_for(runner.cleanup(), 1.0)
    except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - leaving anyway
        pass


def serve_main(args: ServeArgs) -> int:
    """Run the sim server until SIGTERM/SIGINT. Returns the process exit code."""
    try:
        model = resolve_model(args.model)
        gpu = load_gpu(args.gpu_type)
        setup = setup_engine(model, gpu, args.flags)
    except UsageError as e:
        _out(f"{args.prog}: error: {e}", err=True)
        return 2
    except EngineStartError as e:
        for line in failure_lines(str(e), e.failure_class):
            _out(line, err=True)
        return 1
    if args.fault and args.fault.kind == "oom-at-start":
        for line in failure_lines("CUDA out of memory. Tried to allocate 2.00 GiB (fault injected: oom-at-start)",
                                  "oom"):
            _out(line, err=True)
        return 1
    np.seterr(all="ignore")
    return asyncio.run(_serve(args, setup))


def _iteration_tokens(scheds: list[Scheduler]) -> m.HistogramBuckets:
    """vLLM's iteration-tokens histogram over the replicas' steps so far (tokens per engine step)."""
    counts = np.sum([x.step_token_counts for x in scheds], axis=0)
    cumulative = np.cumsum(counts)
    return m.HistogramBuckets(cumulative=tuple(zip(m.ITERATION_TOKENS_BOUNDS, cumulative[:-1].tolist())),
                              count=int(cumulative[-1]), total=float(sum(x.step_tokens_total for x in scheds)))
