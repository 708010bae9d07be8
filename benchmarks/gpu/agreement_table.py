"""Summarise `agreement_rounds.sh`: our `autotune bench` vs `vllm bench serve`, round by round.

    python3 benchmarks/gpu/agreement_table.py DIR [--markdown]

For every metric: each tool's mean over the rounds, its run-to-run range (max - min, in % of its mean),
and our mean vs vLLM's in %. A difference smaller than the run-to-run range is not a disagreement.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

METRICS = [("output tok/s", "output_tok_s", "output_throughput"), ("request/s", "request_s", "request_throughput")]
for _m in ("ttft", "tpot", "itl", "e2el"):
    for _s in ("mean", "p50", "p90", "p99"):
        METRICS.append((f"{_s} {_m.upper()} ms", (f"{_m}_ms", _s), f"{_s}_{_m}_ms"))


def _ours(data: dict, key) -> float:
    return float(data[key[0]][key[1]]) if isinstance(key, tuple) else float(data[key])


def table(folder: Path) -> list[dict]:
    rounds = sorted(int(p.stem.split("-")[1]) for p in folder.glob("ours-*.json")
                    if (folder / f"vllm-{p.stem.split('-')[1]}.json").exists())
    ours = [json.loads((folder / f"ours-{r}.json").read_text()) for r in rounds]
    theirs = [json.loads((folder / f"vllm-{r}.json").read_text()) for r in rounds]
    rows = []
    for label, ours_key, vllm_key in METRICS:
        a = np.array([_ours(d, ours_key) for d in ours])
        b = np.array([float(d[vllm_key]) for d in theirs])
        rows.append({"metric": label, "rounds": len(rounds), "ours": a.tolist(), "vllm": b.tolist(),
                     "ours_mean": a.mean(), "vllm_mean": b.mean(),
                     "ours_range_pct": 100 * (a.max() - a.min()) / a.mean(),
                     "vllm_range_pct": 100 * (b.max() - b.min()) / b.mean(),
                     "diff_pct": 100 * (a.mean() / b.mean() - 1)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    rows = table(args.folder)
    if args.markdown:
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
