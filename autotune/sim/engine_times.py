"""The time a request spends queued and in prefill, stamped as vLLM's engine core stamps it, for the sim's two engine
loops (in-process: :mod:`autotune.sim.inproc`; HTTP: :mod:`autotune.sim.replica`).

vLLM 0.26.0 (``vllm/v1/metrics/stats.py``) records per request the time from its QUEUED event (the engine core adds
it to the scheduler) to its first SCHEDULED event (a preemption's rescheduling ignored), and from there to the
engine output that carries its first token: the ``request_queue_time`` and ``request_prefill_time`` histograms.
Its engine core takes in the requests that came during a step only when that step ends, and with asynchronous
scheduling it schedules a step while the one before it runs; so a request handed over during step k is queued at
the end of step k and, where nothing holds it back, scheduled at once for step k + 2, whose first token ends its
prefill: the lag step counts as prefill, as it does in vLLM.
"""
from __future__ import annotations

import numpy as np

from autotune.sim.scheduler import StepResult

__all__ = ["EngineTimes"]


class EngineTimes:
    """One replica's queued and prefill times, summed as a scrape of vLLM's two histograms sums them. Its engine
    loop calls :meth:`handed` when a request joins the scheduler, :meth:`step_starts` before each step (or run of
    decode-only steps), and :meth:`stepped` or :meth:`decode_run` after it."""

    def __init__(self) -> None:
        self.count = 0
        self.queue_s = 0.0
        self.prefill_s = 0.0
        self._queued_s = np.zeros(64)  # per scheduler slot: its request's QUEUED and SCHEDULED times
        self._scheduled_s = np.zeros(64)
        self._handed: list[int] = []  # slots handed over since the last step started
        self._last_step_start_s = 0.0

    def handed(self, slot: int) -> None:
        if slot >= len(self._queued_s):
            grown = max(2 * len(self._queued_s), slot + 1)
            self._queued_s = np.resize(self._queued_s, grown)
            self._scheduled_s = np.resize(self._scheduled_s, grown)
        self._handed.append(slot)

    def step_starts(self, t: float) -> None:
        """A step starts at ``t``: the requests handed over since the last one started are queued now."""
        if self._handed:
            self._queued_s[self._handed] = t
            self._handed.clear()

    def stepped(self, res: StepResult, start_s: float, end_s: float, scheduled_ahead: bool) -> None:
        """The step ``res`` ran from ``start_s`` to ``end_s``; ``scheduled_ahead``: it was scheduled while the
        step before it ran (asynchronous scheduling with requests running)."""
        self._scheduled_s[res.started] = self._last_step_start_s if scheduled_ahead else start_s
        if res.first.any():
            firsts = res.emitted[res.first]
            queue_s = np.maximum(self._scheduled_s[firsts] - self._queued_s[firsts], 0.0)
            self.count += len(firsts)
            self.queue_s += float(queue_s.sum())
            self.prefill_s += float((end_s - self._queued_s[firsts] - queue_s).sum())
        self._last_step_start_s = start_s

    def decode_run(self, last_start_s: float) -> None:
        """A run of decode-only steps ran, the last of them starting at ``last_start_s``."""
        self._last_step_start_s = last_start_s

    @staticmethod
    def means_ms(times: list[EngineTimes]) -> dict[str, float]:
        """The scrape's ``server_mean_queue_ms`` and ``server_mean_prefill_ms`` over several replicas."""
        n = sum(t.count for t in times)
        if not n:
            return {}
        return {"server_mean_queue_ms": 1e3 * sum(t.queue_s for t in times) / n,
                "server_mean_prefill_ms": 1e3 * sum(t.prefill_s for t in times) / n}
