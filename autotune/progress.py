"""Progress events. The core emits them; a UI (rich console, JSON-silent, tests) consumes them.

The core never prints: it calls ``sink(event)``. ``NULL_SINK`` drops everything.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["Event", "ProgressSink", "NULL_SINK"]


@dataclass(frozen=True)
class Event:
    """kind: study_started, trial_started, engine_starting, engine_ready, load_level, trial_finished,
    remeasure, study_finished, bench_progress, message. ``data`` holds the kind's fields."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)


ProgressSink = Callable[[Event], None]


def NULL_SINK(event: Event) -> None:  # noqa: N802 - a constant-like callable
    return None
