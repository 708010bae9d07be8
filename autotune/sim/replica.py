"""One DP replica of the sim engine: a scheduler stepped in virtual time, paced by the wall clock, and the
per-request token streams it releases through the API servers (:mod:`autotune.sim.frontend`; see
:mod:`autotune.sim.server` for the clock)."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from autotune.sim.engine import EngineSetup
from autotune.sim.engine_times import EngineTimes
from autotune.sim.frontend import ApiServers
from autotune.sim.perf import EncoderWork
from autotune.sim.scheduler import Scheduler

__all__ = ["Engine", "Stream", "FLUSH_WALL_S"]

FLUSH_WALL_S = 0.010


@dataclass(eq=False)
class Stream:
    """One request's tokens as the engine releases them."""

    arrival_s: float
    prompt_tokens: int
    max_out: int
    times: list[float] = field(default_factory=list)
    sent: int = 0
    finished: bool = False
    last_flush_wall: float = 0.0
    event: asyncio.Event = field(default_factory=asyncio.Event)


class Engine:
    """One DP replica: a scheduler stepped in virtual time, paced by the wall clock; each step's tokens go to the
    API servers, which release them to their streams."""

    def __init__(self, setup: EngineSetup, time_scale: float, wall0: float, api: ApiServers) -> None:
        self.sched: Scheduler = setup.new_scheduler()
        self.api = api
        self.time_scale, self.wall0 = time_scale, wall0
        self.vt = 0.0
        self.step_end = 0.0  # virtual end of the step in flight
        self.idle = True
        self.streams: dict[int, Stream] = {}
        self.keys: dict[int, tuple[int, int]] = {}  # slot -> (request id, API server)
        self.wake = asyncio.Event()
        self.stopping = False
        self.engine_times = EngineTimes()

    def now_v(self) -> float:
        return (time.monotonic() - self.wall0) * self.time_scale

    def arrival_v(self) -> float:
        """Virtual arrival time of a request received now. Idle: the wall-mapped time. Busy: the wall-mapped
        time, but never past the end of the step in flight -- when the CPU cannot keep up with the time
        scale, the engine's own clock lags the wall and arrivals follow the engine, so modelled figures stay
        exact (a closed-loop client's next request arrives when the engine finished the previous one)."""
        if self.idle:
            return max(self.vt, self.now_v())
        return min(self.now_v(), self.step_end)

    def submit(self, stream: Stream, encoder: EncoderWork, rid: int, server: int) -> int:
        """The API server ``server`` hands request ``rid`` over: it joins the scheduler now."""
        slot = self.sched.add(stream.prompt_tokens, stream.max_out, encoder)
        self.streams[slot] = stream
        self.keys[slot] = (rid, server)
        self.engine_times.handed(slot)
        self.wake.set()
        return slot

    def abort(self, slot: int, stream: Stream) -> None:
        if self.streams.get(slot) is stream and not stream.finished:
            self.sched.abort(slot)
            del self.streams[slot]
            del self.keys[slot]
            stream.finished = True

    @property
    def outstanding(self) -> int:
        return len(self.streams)

    async def run(self) -> None:
        sched = self.sched
        while not self.stopping:
            if not sched.has_work:
                self.idle = True
                self.wake.clear()
                await self.wake.wait()
                continue
            if self.idle:  # only an idle engine jumps to the wall-mapped time; a busy one keeps its own clock
                self.vt = max(self.vt, self.now_v())
                self.idle = False
            self.engine_times.step_starts(self.vt)
            scheduled_ahead = bool(sched.lag_steps and sched.num_running)
            res = sched.step()
            if res is None:
                await asyncio.sleep(0.001)
                continue
            end = self.vt + res.duration_s
            self.step_end = end
            self.engine_times.stepped(res, self.vt, end, scheduled_ahead)
            # Bind tokens to their streams now: finished slots are free again and may be reused by a request
            # that arrives while this step is still "running" on the wall clock.
            finished = set(res.finished.tolist()) if len(res.finished) else ()
            batch = []
            keys = []
            for slot, first in zip(res.emitted.tolist(), res.first.tolist()):
                st = self.streams.pop(slot, None) if slot in finished else self.streams.get(slot)
                if st is not None:
                    batch.append((st, first, slot in finished))
                    keys.append(self.keys.pop(slot) if slot in finished else self.keys[slot])
            await asyncio.sleep(max(0.0, (end - self.now_v()) / self.time_scale))
            self.vt = end
            if batch:  # the step's outputs go to the API servers, which release them to their streams
                ids = np.array(keys, dtype=np.int64).reshape(-1, 2)
                self.api.outputs(end, ids[:, 0], ids[:, 1], _releaser(batch), True)


def _releaser(batch: list[tuple[Stream, bool, bool]]) -> Callable[[float, np.ndarray | None], None]:
    """What an API server calls when it delivers (part of) a step's tokens: each stream gets its token (stamped with
    the delivery time); a stream's reader wakes for its first and last token, else at most every FLUSH_WALL_S."""
    def release(t: float, mask: np.ndarray | None) -> None:
        wall = time.monotonic()
        for i, (st, first, done) in enumerate(batch):
            if mask is not None and not mask[i]:
                continue
            st.times.append(t)
            if done:
                st.finished = True
                st.event.set()
            elif first or wall - st.last_flush_wall >= FLUSH_WALL_S:
                st.event.set()
    return release
