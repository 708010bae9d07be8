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
"""
from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np

METRICS = [("output tok/s", "output_tok_s", "output_throughput"), ("request/s", "request_s", "request_throughput")]
for _m in ("ttft", "tpot", "itl", "e2el"):
    for _s in ("mean", "p50", "p90", "p99"):
        METRICS.append((f"{_s} {_m.upper()} ms", (f"{_m}_ms", _s), f"{_s}_{_m}_ms"))


def _ours(data: dict, key) -> float:
    return float(data[key[0]][key[1]]) if isinstance(key, tuple) else float(data[key])


def _vllm_path(folder: Path, r: int) -> Path | None:
    for name in (f"vllm-{r}.json", f"vllm-{r}.json.gz"):
        if (folder / name).exists():
            return folder / name
    return None


def _read_json(path: Path) -> dict:
    return json.loads(gzip.open(path, "rt").read() if path.suffix == ".gz" else path.read_text())


def _realized_rate(starts: list[float]) -> float:
    return (len(starts) - 1) / (max(starts) - min(starts)) if len(starts) > 1 else float("nan")


def _offered(folder: Path, r: int, ours: dict, theirs: dict) -> tuple[float, float] | None:
    records = folder / f"ours-{r}.jsonl.gz"
    if not records.exists() or "start_times" not in theirs:
        return None
    starts = [rec["start_s"] for rec in map(json.loads, gzip.open(records, "rt")) if not rec["warmup"]]
    return _realized_rate(starts), _realized_rate(theirs["start_times"])


def table(folder: Path) -> list[dict]:
    rounds = sorted(int(p.stem.split("-")[1]) for p in folder.glob("ours-*.json")
                    if _vllm_path(folder, int(p.stem.split("-")[1])))
    ours = [json.loads((folder / f"ours-{r}.json").read_text()) for r in rounds]
    theirs = [_read_json(_vllm_path(folder, r)) for r in rounds]
    pairs = [(label, [_ours(d, ok) for d in ours], [float(d[vk]) for d in theirs]) for label, ok, vk in METRICS]
    offered = [_offered(folder, r, o, t) for r, o, t in zip(rounds, ours, theirs)]
    if offered and all(offered):
        rates_ours, rates_vllm = [o[0] for o in offered], [o[1] for o in offered]
        pairs.append(("offered req/s (realised)", rates_ours, rates_vllm))
        pairs.append(("output tok/s per offered req/s", [d["output_tok_s"] / x for d, x in zip(ours, rates_ours)],
                      [d["output_throughput"] / x for d, x in zip(theirs, rates_vllm)]))
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
    args = ap.parse_args()
    rows = table(args.folder)
    if args.paired:
        print(f"| metric | ours vs vLLM, each of {rows[0]['rounds']} rounds | median | max abs |")
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
