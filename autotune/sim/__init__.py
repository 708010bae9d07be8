"""The sim engine: a vLLM-compatible server (``python -m autotune.sim serve``), and the same engine in-process on
a virtual clock for studies and ``predict`` (:mod:`autotune.sim.inproc`), all timed by one performance model
(:mod:`autotune.sim.perf`) and one V1-style scheduler (:mod:`autotune.sim.scheduler`)."""
from __future__ import annotations

from autotune.sim.predict import predict

__all__ = ["predict"]
