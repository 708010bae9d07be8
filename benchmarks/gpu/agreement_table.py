"""Summarise `agreement_rounds.sh`: our `autotune bench` vs `vllm bench serve`, round by round.

    python3 benchmarks/gpu/agreement_table.py DIR [--markdown]

For every metric: each tool's mean over the rounds, its run-to-run range (max - min, in % of its mean),
and our mean vs vLLM's in %. A difference smaller than the run-to-run range is not a disagreement.
Where both sides kept per-request start times (our `--records`, vLLM's `--save-detailed`), two more rows:
the offered rate each run realised, and output tok/s per offered request/s. Under an open loop, throughput
follows the offered rate, so the second row compares the measurement, not the arrival draw.
vLLM's results may be gzipped (`vllm-N.json.gz`).
With `--paired` (rounds where both tools sent the identical stream, `STREAM=identical`), each round's own
difference, ours vs vLLM in %, and their median: the server's drift between rounds then cancels.
`--pair ours,ours2` or `--pair vllm,vllm2` compares the two runs of one tool in a control folder
(`PAIR=ours-ours` / `vllm-vllm`): the server's own spread between identical runs.
"""
from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np

from tool_results import metric_value, read_json, result_path

METRICS = [("output tok/s", "output_tok_s", "output_throughput"), ("request/s", "request_s", "request_throughput")]
for _m in ("ttft", "tpot", "itl", "e2el"):
    for _s in ("mean", "p50", "p90", "p99"):
        METRICS.append((f"{_s} {_m.upper()} ms", (f"{_m}_ms", _s), f"{_s}_{_m}_ms"))


def _realized_rate(starts: list[float]) -> float:
    return (len(starts) - 1) / (max(starts) - min(starts)) if len(starts) > 1 else float("nan")


def _starts(folder: Path, name: str, r: int, data: dict) -> list[float] | None:
    if "start_times" in data:
        return data["start_times"]
    records = folder / f"{name}-{r}.jsonl.gz"
    if not records.exists():
        return None
    return [rec["start_s"] for rec in map(json.loads, gzip.open(records, "rt")) if not rec["warmup"]]


def table(folder: Path, first: str = "ours", second: str = "vllm") -> list[dict]:
    """Rows of `first` against `second` (file prefixes) over the rounds that have both."""
    rounds = sorted(int(p.name.split("-")[1].split(".")[0]) for p in folder.glob(f"{first}-*.json*")
                    if not p.name.endswith(".jsonl.gz"))
    rounds = [r for r in rounds if result_path(folder, second, r)]
    ours = [read_json(result_path(folder, first, r)) for r in rounds]
    theirs = [read_json(result_path(folder, second, r)) for r in rounds]
    pairs = [(label, [metric_value(d, ok, vk) for d in ours], [metric_value(d, ok, vk) for d in theirs])
             for label, ok, vk in METRICS]
    starts = [(_starts(folder, first, r, o), _starts(folder, second, r, t)) for r, o, t in zip(rounds, ours, theirs)]
    if starts and all(a and b for a, b in starts):
        rates_ours, rates_vllm = [_realized_rate(a) for a, _ in starts], [_realized_rate(b) for _, b in starts]
        pairs.append(("offered req/s (realised)", rates_ours, rates_vllm))
        pairs.append(("output tok/s per offered req/s",
                      [metric_value(d, "output_tok_s", "output_throughput") / x for d, x in zip(ours, rates_ours)],
                      [metric_value(d, "output_tok_s", "output_throughput") / x for d, x in zip(theirs, rates_vllm)]))
    rows = []
    for label, ours_values, vllm_values in pairs:
        a, b = np.array(ours_values), np.array(vllm_values)
        rows.append({"metric": label, "rounds": len(rounds), "ours": a.tolist(), "vllm": b.tolist(),
                     "ours_mean": a.mean(), "vllm_mean": b.mean(),
                     "ours_range_pct": 100 * (a.max() - a.min()) / a.mean(),
                     "vllm_range_pct": 100 * (b.max() - b.min()) / b.mean(),
                     "diff_pct": 100 * (a.mean() / b.mean() - 1),
                     "round_diffs_pct": (100 * (a / b - 1)).tolist()})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--paired", action="store_true", help="per-round differences (identical streams)")
    ap.add_argument("--pair", default="ours,vllm", help="the two file prefixes compared, first vs second")
    args = ap.parse_args()
    first, second = args.pair.split(",")
    rows = table(args.folder, first, second)
    if args.paired:
        print(f"| metric | {first} vs {second}, each of {rows[0]['rounds']} rounds | median | max abs |")
        print("|---|---|---|---|")
        for r in rows:
            d = np.array(r["round_diffs_pct"])
            print(f"| {r['metric']} | {', '.join(f'{x:+.1f}%' for x in d)} | {np.median(d):+.1f}% | "
                  f"{np.abs(d).max():.1f}% |")
    elif args.markdown:
        print(f"| metric | autotune (mean of {rows[0]['rounds']}) | run-to-run range | `vllm bench serve` | "
              "run-to-run range | ours vs vLLM |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['metric']} | {r['ours_mean']:,.1f} | {r['ours_range_pct']:.1f}% | {r['vllm_mean']:,.1f} | "
                  f"{r['vllm_range_pct']:.1f}% | {r['diff_pct']:+.1f}% |")
    else:
        for r in rows:
            print(f"{r['metric']:>16}  ours {r['ours_mean']:10.1f} (±{r['ours_range_pct']:4.1f}%)  "
                  f"vllm {r['vllm_mean']:10.1f} (±{r['vllm_range_pct']:4.1f}%)  diff {r['diff_pct']:+5.1f}%")


if __name__ == "__main__":
    main()
