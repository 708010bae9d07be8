"""An asyncio event loop on a virtual clock: when nothing is ready to run, time jumps to the next timer.

The in-process sim engine and the load generator run on it together: ``asyncio.sleep`` (the first wave's
ramp, open-loop arrivals, an engine step's modelled duration) returns at once with ``loop.time()`` moved on,
so a load level runs as fast as the CPU computes it and gives the same figures however busy the CPU is.

Hand-written rather than taken from a library (both were evaluated): ``looptime`` 0.6-0.9 registers a pytest
plugin through entry points whose fixture hook assumes pytest-asyncio is installed; without it every fixture
of every pytest session in the environment fails (AttributeError on ``None.__name__``), ours and any project a
user tests beside autotune. It also took twice as long per time jump (no-op cycles, real-time syncing for
executors: 20,000 sleeps in 0.50 s against 0.24 s here). ``aiotools.VirtualClock`` patches a running loop
with ``unittest.mock``, coarsens the loop's clock resolution to 1 ms (timers less than 1 ms apart fire
together, stamping arrivals early) and spins the CPU forever when nothing is scheduled. What is needed is
two overrides of a stock selector loop.
"""
from __future__ import annotations

import asyncio
import math
from typing import Any

__all__ = ["VirtualClockLoop", "Deadlock"]


class Deadlock(RuntimeError):
    """Nothing is ready, no timer is set and no I/O can come: the run would wait forever."""


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` starts at 0 and only moves when the loop would otherwise wait:
    then it jumps to the next timer. I/O is still polled (without waiting), so signals and
    ``call_soon_threadsafe`` work; real sockets would never be waited for, so do no network I/O on it.
    Deterministic: the order of callbacks depends only on the program, never on the CPU's speed."""

    def __init__(self) -> None:
        super().__init__()
        self._now_s = 0.0
        # The stock resolution (1 ns on Linux) is what lets a timer fire when float rounding lands the clock a
        # hair before it; fixed so no platform's coarser monotonic clock merges timers.
        self._clock_resolution = 1e-9
        poll = self._selector.select

        def select(timeout: float | None = None) -> list[Any]:
            events = poll(0)
            if not events:
                if timeout is None:
                    raise Deadlock("virtual clock: no callback is ready and no timer is set")
                self._now_s += timeout
            return events

        self._selector.select = select  # type: ignore[method-assign]

    def time(self) -> float:
        return self._now_s

    def next_timer_s(self) -> float:
        """When the earliest timer is due (inf: none): nothing can happen before it unless a callback is ready
        (:meth:`has_ready`). Reads BaseEventLoop's heap of timers; a cancelled head only makes it earlier."""
        scheduled = self._scheduled  # type: ignore[attr-defined]
        return scheduled[0].when() if scheduled else math.inf

    def has_ready(self) -> bool:
        """Whether callbacks are queued to run at the current time (BaseEventLoop's ready queue)."""
        return bool(self._ready)  # type: ignore[attr-defined]
