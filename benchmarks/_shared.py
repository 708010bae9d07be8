"""What several benchmark scripts share: a process's CPU time and reading a load level's per-request records.

A module, not a script: the scripts beside it import it (`from _shared import ...`), which works when they are
run as `python benchmarks/SCRIPT.py` (that puts this folder first on the module path).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
from pathlib import Path

from autotune.metrics import RequestOutput, steady_window, summarize



def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_records(path: Path) -> list[dict]:
    """A level's per-request records (`studies/<study>/trials/N/levels/NN-cC.jsonl.gz`, `bench --records`)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _output(r: dict) -> RequestOutput:
    if not r["ok"]:
        return RequestOutput(False, error_kind=r.get("error_kind") or "error")
    return RequestOutput(True, r["prompt_tokens"], r["output_tokens"], r["ttft_ms"] / 1e3, (), r["e2el_ms"] / 1e3,
                         r["start_s"])


def window_tok_s(rows: list[dict]) -> tuple[float, float]:
    """Output tok/s over a level's steady window, counted two ways: (every request's tokens in the window, as a
    level reports it; the measured requests' tokens only, which leaves out the warm-up requests still decoding
    in the window's first part)."""
    everyone = [_output(r) for r in rows]
    measured = [o for o, r in zip(everyone, rows) if not r["warmup"]]
    ok = [o for o in measured if o.success]
    if not ok:
        return float("nan"), float("nan")
    full_s = max(o.start_s + o.e2el_s for o in ok) - min(o.start_s for o in ok)
    window = steady_window(measured, full_s)
    return (summarize(measured, full_s, window=window, window_outputs=everyone).output_tok_s,
            summarize(measured, full_s, window=window).output_tok_s)


def parse_card_constants(texts: list[str], ap: argparse.ArgumentParser) -> dict[str, float]:
    """``--constants NAME=VALUE ...``: a card's calibration constants to override (the sim's ``GpuSpec.extra``); a
    malformed one is the parser's one-line error."""
    try:
        return {k: float(v) for k, v in (t.split("=", 1) for t in texts)}
    except ValueError:
        ap.error("--constants takes NAME=VALUE pairs with numeric values")
