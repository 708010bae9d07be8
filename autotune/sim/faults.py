"""Faults the sim server can be told to make (``autotune sim serve --fault FAULT``), so that the tuner's handling of
a misbehaving engine is tested on a CPU: what a trial records, that no process survives it, that its port comes
free.

At start: ``oom-at-start`` (vLLM's out-of-memory failure lines, exit 1), ``hang-at-start`` (never listens).
While serving, on every streamed request (the launcher's readiness probe is not streamed, so the server still
becomes ready): ``stall-stream`` (the first tokens, then nothing), ``bad-sse`` (events that are not JSON),
``http-500``, ``disconnect`` (the connection dropped after the first tokens). ``crash-after:N``: the process dies
when request N + 1 arrives. ``engine-dead-after:N``: as request N + 1 arrives the engine dies and the API server
lives on a few seconds, as vLLM's does (its engine core's fatal error logged, every request answered 500
EngineDeadError, ``/health`` 503, then the process exits): a trial whose server is still up when its load level
ends must still be recorded as a crash. At stop: ``ignore-sigterm`` (only SIGKILL ends it), ``hold-port`` (a child that
ignores SIGTERM keeps the listening socket, so the port stays taken until the process group is killed).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FAULTS", "COUNTED_FAULTS", "Fault", "parse_fault", "FaultPlan", "parse_fault_plan", "TOKENS_BEFORE_FAULT",
           "MALFORMED_EVENT"]

FAULTS = ("oom-at-start", "hang-at-start", "crash-after:N", "engine-dead-after:N", "stall-stream", "bad-sse",
          "http-500", "disconnect", "ignore-sigterm", "hold-port")
COUNTED_FAULTS = ("crash-after", "engine-dead-after")  # the faults that take a number of requests
TOKENS_BEFORE_FAULT = 1  # token events a stalled or dropped stream sends first
MALFORMED_EVENT = b'{"choices": [{"text": "x"'  # an SSE event cut in the middle of its JSON


@dataclass(frozen=True)
class Fault:
    kind: str  # one of FAULTS, without its ":N"
    after_requests: int = 0  # crash-after, engine-dead-after: requests served before the engine dies

    def __str__(self) -> str:
        return f"{self.kind}:{self.after_requests}" if self.kind in COUNTED_FAULTS else self.kind


def parse_fault(text: str) -> Fault:
    """``crash-after:5`` -> Fault("crash-after", 5). Raises ValueError with a one-line reason."""
    kind, sep, arg = text.strip().partition(":")
    if kind in COUNTED_FAULTS:
        if not sep or not arg.isdigit():
            raise ValueError(f"{text!r}: expected {kind}:N with N a whole number of requests")
        return Fault(kind, int(arg))
    if sep or kind not in FAULTS:
        raise ValueError(f"unknown fault {text!r}; known: {', '.join(FAULTS)}")
    return Fault(kind)


@dataclass(frozen=True)
class FaultPlan:
    """Which trials of a study get a fault (``autotune run --sim-fault FAULT[@TRIAL,...]``)."""

    fault: Fault
    trials: frozenset[int] | None = None  # None: every trial

    def for_trial(self, number: int) -> str:
        """The ``--fault`` value for trial ``number``'s server, "" for none."""
        return str(self.fault) if self.trials is None or number in self.trials else ""


def parse_fault_plan(text: str) -> FaultPlan:
    """``crash-after:3@1,2`` -> the fault on trials 1 and 2; without ``@``, on every trial. Raises ValueError."""
    fault, sep, trials = text.partition("@")
    if not sep:
        return FaultPlan(parse_fault(fault))
    numbers = [t.strip() for t in trials.split(",")]
    if not all(n.isdigit() for n in numbers):
        raise ValueError(f"{text!r}: expected FAULT@TRIAL[,TRIAL...] with trial numbers")
    return FaultPlan(parse_fault(fault), frozenset(int(n) for n in numbers))
