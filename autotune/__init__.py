"""autotune: find the vLLM serving configuration with the most throughput under a P99 limit."""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
