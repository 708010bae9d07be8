"""vLLM's API server in front of the engine: the path a request takes before the scheduler sees it, and the path
its tokens take back to the client.

In vLLM 0.26.0 (V1) ``vllm serve`` runs the OpenAI HTTP server and ``AsyncLLM`` in one process (``--api-server-count``
of them, by default one per data-parallel rank), the engine core in another. The API server's single asyncio
event loop does, one thing at a time:

- for each arriving request: the HTTP body, ``InputProcessor.process_inputs``, and the ``EngineCoreRequest`` sent
  over ZMQ to the engine core, whose busy loop adds it to the scheduler between steps; before that, the chat
  template, the prompt's tokenization and any images' preprocessing run on the renderer's thread pool
  (``--renderer-num-workers``, one worker by default: vllm/renderers/base.py), off the loop;
- for each engine step's ``EngineCoreOutputs`` (one output per running request that sampled a token): the output
  handler's ``OutputProcessor.process_outputs`` (incremental detokenization, a ``RequestOutput`` put into the
  request's ``RequestOutputCollector``); it drains every step's outputs queued so far before it yields;
- then each request's stream generator takes what its collector holds and writes one SSE chunk. A collector
  merges the outputs of several steps when its generator has not run in between (the loop fell behind), so a
  request then gets one chunk for them.

The engine core meanwhile keeps stepping in its own process. So a request reaches the scheduler only once the
loop has handled it, and a step's tokens reach their clients only once the loop has handled that step's outputs;
the more requests run, the longer each step's outputs keep the loop busy and the longer new requests and later
outputs wait behind them, and a loop that fell behind delivers several steps' tokens at once.

Model: each API server is one first-come-first-served server in modelled time with two kinds of job, and a
renderer pool in front of it.
- An arriving request with images first waits for their preprocessing by the API server's renderer worker that
  frees first, in arrival order (:meth:`FrontEndConstants.images_s`: ``frontend_image_ms`` +
  ``frontend_image_ms_per_mpx`` × megapixels per image); the loop goes on delivering tokens meanwhile. Every
  request is then a loop job of ``frontend_request_ms`` (the prompt's rendering and tokenization are counted here: fitted on
  text requests, whose renderer time the runs do not separate from the loop's); when it ends the request
  joins the scheduler.
- An engine step's outputs for that server's requests. Outputs that arrive while an earlier step's outputs still
  wait for the server join them (one job). When the job starts, its cost is fixed: ``frontend_output_us`` × the
  outputs in it + ``frontend_chunk_us`` × the requests they belong to (one SSE chunk each); when it ends, all its
  tokens are delivered.
Requests are spread over the API servers in turn. The constants come from the card's calibration YAML (they are
the host's CPU time, fitted with the card's runs); all 0 give an instant front end (the engine's times unchanged).

The server is advanced lazily: every booking at time t first settles what happened up to t, and a timer is set
only for what someone outside waits for (a request to hand over, a step's outputs marked as awaited). So an
in-process replica can book the outputs of a decode run's steps after the run, in their order, as long as nothing
else touched the server meanwhile (:meth:`~autotune.sim.scheduler.Scheduler.decode_run` stops at the next timer).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from autotune.gpus import GpuSpec

__all__ = ["ApiServers", "At", "Deliver", "FrontEndConstants", "api_server_count"]

# Called when a step's outputs have been delivered: (modelled time, which of the step's tokens: a boolean mask over
# them, or None for all of them).
Deliver = Callable[[float, "np.ndarray | None"], None]
# Called with a modelled time and a callback to run then (the host's clock: virtual, or wall-paced).
At = Callable[[float, Callable[[], None]], Any]


@dataclass(frozen=True)
class FrontEndConstants:
    """The API server's CPU time per unit of work (keys of a calibration YAML; 0 where absent)."""

    frontend_request_ms: float = 0.0  # per arriving request, on the event loop (tokenization counted here: fitted)
    frontend_output_us: float = 0.0  # per output of a step (a request's token): output processing
    frontend_chunk_us: float = 0.0  # per SSE chunk written (a request's tokens gathered since its last chunk)
    frontend_image_ms: float = 0.0  # per image of a request: its preprocessing's fixed part
    frontend_image_ms_per_mpx: float = 0.0  # and its part per megapixel of the image as sent

    @classmethod
    def from_gpu(cls, gpu: GpuSpec) -> FrontEndConstants:
        extra = gpu.extra or {}
        names = [f.name for f in fields(cls)]
        return cls(**{k: float(extra[k]) for k in names if k in extra})

    def images_s(self, sizes: Sequence[tuple[int, int]]) -> float:
        """The API server's seconds preprocessing a request's images (``sizes``: width, height each)."""
        if not sizes:
            return 0.0
        mpx = sum(w * h for w, h in sizes) / 1e6
        return (len(sizes) * self.frontend_image_ms + mpx * self.frontend_image_ms_per_mpx) / 1e3


def renderer_workers(flags: dict[str, Any]) -> int:
    """Renderer threads per API server (``--renderer-num-workers``; vLLM 0.26.0's default 1)."""
    return int(flags.get("renderer-num-workers") or 1)


def api_server_count(flags: dict[str, Any]) -> int:
    """vLLM's API server processes: ``--api-server-count``, else one per data-parallel rank (vLLM's default with
    its internal load balancer)."""
    return int(flags.get("api-server-count") or flags.get("data-parallel-size") or 1)


class _Request:
    """An arriving request's handling on the loop, before it joins the scheduler."""

    __slots__ = ("arrival_s", "on_handed", "server")
    external = True

    def __init__(self, arrival_s: float, on_handed: Callable[[float, int], None], server: int) -> None:
        self.arrival_s, self.on_handed, self.server = arrival_s, on_handed, server

    def cost_s(self, server: _Server) -> float:
        return server.request_s

    def complete(self, t: float) -> None:
        self.on_handed(t, self.server)


class _Outputs:
    """One or more steps' outputs, handled as one job."""

    __slots__ = ("arrival_s", "external", "keys", "outputs", "parts")

    def __init__(self, arrival_s: float) -> None:
        self.arrival_s = arrival_s
        self.parts: list[tuple[Deliver, np.ndarray | None]] = []
        self.outputs = 0
        self.keys: list[np.ndarray] = []
        self.external = False

    def add(self, keys: np.ndarray, deliver: Deliver, mask: np.ndarray | None, external: bool) -> None:
        self.parts.append((deliver, mask))
        self.outputs += len(keys)
        self.keys.append(keys)
        self.external = self.external or external

    def cost_s(self, server: _Server) -> float:
        chunks = len(self.keys[0]) if len(self.keys) == 1 else len(np.unique(np.concatenate(self.keys)))
        return self.outputs * server.output_s + chunks * server.chunk_s

    def complete(self, t: float) -> None:
        for deliver, mask in self.parts:
            deliver(t, mask)


class _Server:
    """One API server's event loop: the job in service, the jobs waiting (FIFO), the outputs job still open."""

    __slots__ = (
        "busy_until_s",
        "chunk_s",
        "external_waiting",
        "job",
        "open_outputs",
        "output_s",
        "queue",
        "renderers_free_s",
        "request_s",
        "timer_s",
    )

    def __init__(self, c: FrontEndConstants, renderers: int) -> None:
        self.request_s = c.frontend_request_ms / 1e3
        self.output_s = c.frontend_output_us / 1e6
        self.chunk_s = c.frontend_chunk_us / 1e6
        self.busy_until_s = 0.0  # end of the job in service, or when the last one ended
        self.job: _Request | _Outputs | None = None
        self.queue: deque[_Request | _Outputs] = deque()
        self.open_outputs: _Outputs | None = None  # waiting outputs job that later outputs join
        self.external_waiting = 0  # waiting jobs someone outside waits for
        self.timer_s = -1.0
        self.renderers_free_s = [0.0] * renderers  # when each renderer worker has done what it was given


class ApiServers:
    """The API server processes of one deployment (shared by its DP replicas).

    ``at(t, fn)`` runs ``fn`` at modelled time ``t`` on the host's clock. Bookings must come in time order (a time
    before an earlier booking's is taken as that booking's). Not thread-safe; one event loop drives it."""

    def __init__(self, constants: FrontEndConstants, count: int, at: At, renderers: int = 1) -> None:
        self.constants = constants
        self.count = count
        self.servers = [_Server(constants, renderers) for _ in range(count)]
        self._at = at
        self._next = 0

    def request(self, arrival_s: float, on_handed: Callable[[float, int], None], images_s: float = 0.0) -> None:
        """A request arriving at ``arrival_s``; ``on_handed(t, server)`` when its API server (index ``server``: its
        tokens come back through it) has handed it to the engine (at once where that costs nothing).
        ``images_s``: its images' preprocessing (:meth:`FrontEndConstants.images_s`), done first by the server's
        renderer worker that frees first, in arrival order; the event loop takes the request when it is done."""
        i = self._next
        self._next = (i + 1) % self.count
        s = self.servers[i]
        if images_s > 0.0:
            free = s.renderers_free_s
            worker = min(range(len(free)), key=free.__getitem__)
            done_s = max(arrival_s, free[worker]) + images_s
            free[worker] = done_s
            self._at(done_s, lambda: self._enqueue(s, i, done_s, on_handed))
            return
        self._enqueue(s, i, arrival_s, on_handed)

    def _enqueue(self, s: _Server, i: int, t: float, on_handed: Callable[[float, int], None]) -> None:
        self._advance(s, t)
        s.queue.append(_Request(t, on_handed, i))
        s.external_waiting += 1
        self._advance(s, t)
        self._arm(s)

    def outputs(self, end_s: float, keys: np.ndarray, servers: np.ndarray | None, deliver: Deliver,
                awaited: bool) -> None:
        """A step that ended at ``end_s`` sampled one token for each request in ``keys`` (unique request ids), whose
        API servers are ``servers`` (None: server 0, the only one). ``deliver(t, mask)`` is called once per API
        server when its part is delivered (``mask``: which of the tokens; None: all). ``awaited``: someone outside
        waits for the delivery (a request finished, a client reads tokens as they come), so it happens on time;
        otherwise it may be settled later, before anything that could depend on it."""
        if servers is None or self.count == 1:
            self._book(self.servers[0], end_s, keys, deliver, None, awaited)
            return
        for i in np.unique(servers).tolist():
            mask = servers == i
            self._book(self.servers[i], end_s, keys[mask], deliver, mask, awaited)

    def outputs_run(self, ends_s: np.ndarray, keys: np.ndarray, servers: np.ndarray | None,
                    step_deliver: Callable[[int], Deliver], settle: Callable[[np.ndarray], None],
                    awaited: bool) -> None:
        """The outputs of a decode run's steps, ending at ``ends_s``, each a token for every request in ``keys``:
        :meth:`outputs` for each step in turn (``step_deliver(i)`` the i-th step's callback; ``awaited`` for the last
        step only). Where one API server takes them, free and with nothing waiting when the first step ends, and
        handles each step's outputs before the next step ends, the steps before the last are delivered at once:
        ``settle(times)`` with their delivery times."""
        k = len(ends_s)
        if k > 1 and (servers is None or self.count == 1):
            s = self.servers[0]
            self._advance(s, float(ends_s[0]))
            cost_s = len(keys) * s.output_s + len(keys) * s.chunk_s  # as _Outputs.cost_s sums it
            if s.job is None and not s.queue and cost_s <= float(np.min(np.diff(ends_s))):
                times = ends_s[:-1] + cost_s
                s.busy_until_s = float(times[-1])
                settle(times)
                self._book(s, float(ends_s[-1]), keys, step_deliver(k - 1), None, awaited)
                return
        for i in range(k):
            self.outputs(float(ends_s[i]), keys, servers, step_deliver(i), awaited and i == k - 1)

    def _book(self, s: _Server, t: float, keys: np.ndarray, deliver: Deliver, mask: np.ndarray | None,
              awaited: bool) -> None:
        self._advance(s, t)
        job = s.open_outputs
        if job is None:
            job = s.open_outputs = _Outputs(t)
            s.queue.append(job)
        if awaited and not job.external:
            s.external_waiting += 1
        job.add(keys, deliver, mask, awaited)
        self._advance(s, t)
        self._arm(s)

    def _advance(self, s: _Server, now: float) -> None:
        """Settle everything that happened on ``s`` up to ``now``: jobs ended (their callbacks run with their end
        time), waiting jobs started."""
        while True:
            if s.job is not None:
                if s.busy_until_s > now:
                    return
                job, s.job = s.job, None
                job.complete(s.busy_until_s)
            if not s.queue:
                return
            job = s.queue.popleft()
            if job is s.open_outputs:
                s.open_outputs = None
            if job.external:
                s.external_waiting -= 1
            start = max(s.busy_until_s, job.arrival_s)
            s.job = job
            s.busy_until_s = start + job.cost_s(s)

    def _arm(self, s: _Server) -> None:
        """A timer at the end of the job in service when it, or a job behind it, is awaited."""
        if s.job is None or not (s.job.external or s.external_waiting) or s.timer_s == s.busy_until_s:
            return
        s.timer_s = t = s.busy_until_s

        def fire() -> None:
            if s.timer_s == t:
                s.timer_s = -1.0
            self._advance(s, t)
            self._arm(s)
        self._at(t, fire)
