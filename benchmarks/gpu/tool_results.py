"""Reading either tool's result files in an `agreement_rounds.sh` folder: ours (`autotune bench --json`,
`ours-N.json`) and vLLM's (`vllm bench serve --save-result`, `vllm-N.json` or gzipped `vllm-N.json.gz`).

A module the scripts beside it import (`from tool_results import ...`): it works when they are run as
`python3 benchmarks/gpu/SCRIPT.py`, which puts this folder first on the module path.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path


def result_path(folder: Path, name: str, r: int) -> Path | None:
    """The result file of run `name` (a file prefix: ours, vllm, ours2, ...) in round `r`, if there is one."""
    for file in (f"{name}-{r}.json", f"{name}-{r}.json.gz"):
        if (folder / file).exists():
            return folder / file
    return None


def read_json(path: Path) -> dict:
    return json.loads(gzip.open(path, "rt").read() if path.suffix == ".gz" else path.read_text())


def metric_value(data: dict, ours_key: str | tuple[str, str], vllm_key: str) -> float:
    """A metric from either tool's result: vLLM's has `output_throughput` and flat keys (`p99_ttft_ms`), ours
    `output_tok_s` and nested ones (`ttft_ms: {p99: ...}`, given as the tuple `("ttft_ms", "p99")`)."""
    if "output_throughput" in data:
        return float(data[vllm_key])
    return float(data[ours_key[0]][ours_key[1]]) if isinstance(ours_key, tuple) else float(data[ours_key])
