"""Load generator: workloads, streaming OpenAI client, closed/open-loop runner (DESIGN.md "Load generator")."""
from __future__ import annotations

from autotune.loadgen.runner import LoadConfig, run_bench, run_load
from autotune.loadgen.workload import RequestSpec, Workload, parse_workload

__all__ = ["RequestSpec", "Workload", "parse_workload", "LoadConfig", "run_load", "run_bench"]
