"""The serve load (`selection.serve_load`, the profile's `serve`) of the H200 profile checks recorded before profiles
had one: each study's levels, its chosen load and its fresh-server re-measurements read back from its `run.log`
(the lines `autotune run` prints), the winner rebuilt as the study judged it, and its serve load at the GPU's
run-to-run P99 spread, next to what `bench` measured at the profile's load on fresh servers.

    python benchmarks/serve_load_replay.py        # the folders under docs/results/raw/h200-profile-check*
"""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

from autotune.config import REAL_GPU_P99_RUN_CV
from autotune.records import Measurement
from autotune.selection import Candidate, LoadCurve, serve_load

RAW = Path(__file__).resolve().parent.parent / "docs" / "results" / "raw"
LIMITS_MS = {"ttft": 500.0}
_LEVEL = re.compile(r"c=(\d+) ([\d,]+) tok/s p99 ttft ([\d,]+) ms \[[^]]*\](?:, (\d+) runs)?$")
_CHOSEN = re.compile(r"\(vllm-defaults\).*: ([\d,]+) tok/s at concurrency (\d+), p99 ttft ([\d,]+) ms")
_REMEASURED = re.compile(r"re-measuring trial \d+ \(\d+/\d+\) at concurrency (\d+): ([\d,]+) tok/s, p99 ttft ([\d,]+) ms")


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def winner_from_log(log: str) -> Candidate:
    """The study's one trial as its final comparison saw it: its levels (a level measured again replaced by its
    pooled figures), its chosen level as its own first run, and its re-measurements, those at a load it stepped
    down from among them."""
    levels: dict[int, tuple[float, float, int]] = {}
    chosen: tuple[int, float, float] | None = None
    remeasured: list[tuple[int, float, float]] = []
    for line in log.splitlines():
        if m := _LEVEL.search(line):
            levels[int(m[1])] = (_num(m[2]), _num(m[3]), int(m[4] or 1))
        elif m := _CHOSEN.search(line):
            chosen = (int(m[2]), _num(m[1]), _num(m[3]))
        elif m := _REMEASURED.search(line):
            remeasured.append((int(m[1]), _num(m[2]), _num(m[3])))
    if chosen is None or not remeasured:
        raise ValueError("no chosen level or no re-measurement in the log")
    final = remeasured[-1][0]
    searched = levels.get(final)
    winner = Candidate(0, {}, final, searched[0] if searched else math.nan,
                       {"ttft": searched[1] if searched else math.nan}, baseline="vllm-defaults")
    winner.curve = LoadCurve.from_levels([(c, tok_s, {"ttft": p99}) for c, (tok_s, p99, _) in sorted(levels.items())],
                                         [runs for _, (_, _, runs) in sorted(levels.items())])
    winner.search_level = (chosen[0], chosen[1], {"ttft": chosen[2]})
    winner.earlier_runs = [(c, Measurement(tok_s, {"ttft": p99})) for c, tok_s, p99 in remeasured if c != final]
    winner.repeats = [Measurement(tok_s, {"ttft": p99}) for c, tok_s, p99 in remeasured if c == final]
    return winner


def bench_p99s_ms(folder: Path) -> list[float]:
    """The P99 TTFTs `bench` measured on fresh servers at the profile's load (each server's runs pooled)."""
    found = []
    for path in sorted(folder.glob("bench*.json")):
        data = json.loads(path.read_text())
        found.append(float(data["ttft_ms"]["p99"]))
    return found


def main() -> int:
    print("| profile check | profile's load | its runs' P99 TTFT ms | serve load | expected there: output tok/s, "
          "P99 TTFT ms | bench at the profile's load: P99 TTFT ms |")
    print("|---|---|---|---|---|---|")
    for folder in sorted(RAW.glob("h200-profile-check*")):
        log = folder / "run.log"
        if not log.exists():
            continue
        winner = winner_from_log(log.read_text())
        serve = serve_load(winner, LIMITS_MS, REAL_GPU_P99_RUN_CV, 0.9)
        runs = ", ".join(f"{v:,.0f}" for v in winner.p99_values_ms("ttft"))
        measured = ", ".join(f"{v:,.0f}" for v in bench_p99s_ms(folder)) or "-"
        there = "-" if serve is None else f"{serve.output_tok_s:,.0f}, {serve.p99_ms['ttft']:,.0f}"
        load = "-" if serve is None else f"{serve.concurrency}" + (" (below the loads searched)"
                                                                    if serve.below_searched_loads else "")
        print(f"| {folder.name} | {winner.concurrency} ({winner.stats()['mean']:,.0f} tok/s) | {runs} | {load} | "
              f"{there} | {measured} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
