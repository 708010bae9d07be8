"""vLLM's OpenAI-compatible HTTP API, server side, as the sim engine and the test fixtures speak it.

- :mod:`autotune.vllm_api.metrics`: vLLM's Prometheus metric names, kinds and help texts (the load generator's
  scraper reads them, the responder writes them).
- :mod:`autotune.vllm_api.request`: request bodies checked as vLLM checks them, and prompt token counts.
- :mod:`autotune.vllm_api.responder`: the aiohttp app (``/health``, ``/v1/models``, ``/v1/completions``,
  ``/v1/chat/completions`` plain and streamed, ``/metrics``) over a pluggable token source.

This module imports nothing heavy, so that the scraper can read the metric names without aiohttp's server.
"""
from __future__ import annotations

__all__ = ["VLLM_VERSION"]

VLLM_VERSION = "0.26.0"  # the vLLM whose wire format, startup log and metrics are imitated
