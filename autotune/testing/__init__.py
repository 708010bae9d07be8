"""Fixtures that tests and benchmarks share (as ``optuna.testing``): not part of the tuner itself.

- :mod:`autotune.testing.fakeserver`: a fixed-latency vLLM-compatible server with injectable faults, in its own
  process (:class:`~autotune.testing.fakeserver.FakeServer`), for the load generator's tests and benchmarks.
- :mod:`autotune.testing.models`: the weightless model's ``config.json`` that the GPU runs served.
"""
from __future__ import annotations
