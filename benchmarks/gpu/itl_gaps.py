"""Inter-token gaps of two runs of one identical request stream, compared gap by gap.

    python3 benchmarks/gpu/itl_gaps.py pack DIR                  # on the GPU machine, before collecting
    python3 benchmarks/gpu/itl_gaps.py compare DIR --pair ours,vllm [--json]

`pack` turns every run's per-request gap lists into DIR/itl-NAME-R.npz (gaps in ms as float32, all requests
concatenated in request order, and each request's count), then removes the lists from the sources (vLLM's
`--save-detailed` result: `itls`, and its `generated_texts` too; our `--records-itl` records: `itl_ms`), so a
round's files stay small.

`compare` takes the rounds where both runs kept their gaps (`agreement_rounds.sh STREAM=identical`: the same
prompts at the same send times, so request i is the same request in both runs). Per round: whether both saw
the same number of gaps per request; each run's mean/P50/P90/P99; and the gap-by-gap difference (gap k of
request i in A minus the same gap in B). If two tools time the same chunks alike, their per-gap differences
are centred on 0 and the P90s differ only where the server itself scheduled the steps differently, which a
same-tool control (`--pair ours,ours2`, `--pair vllm,vllm2`) shows as the server's own spread. The gap-by-gap
difference needs equal gap counts per request; on vLLM two runs rarely have them (its output collector merges
tokens into one chunk when the HTTP handler lags), and then only the distributions are compared.
"""
from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np


def _gaps_vllm(data: dict) -> list[list[float]] | None:
    itls = data.get("itls")
    return [[1000.0 * g for g in req] for req in itls] if itls else None


def _save(path: Path, per_request: list[list[float]]) -> None:
    counts = np.array([len(g) for g in per_request], dtype=np.int32)
    gaps = np.array([g for req in per_request for g in req], dtype=np.float32)
    np.savez_compressed(path, gaps_ms=gaps, counts=counts)


def pack(folder: Path) -> list[str]:
    written = []
    for src in sorted(folder.glob("vllm*-*.json")):  # vLLM's results; gzipped ones were packed already
        try:
            data = json.loads(src.read_text())
        except ValueError:
            continue  # still being written
        per_request = _gaps_vllm(data)
        if per_request is not None:
            name, r = src.name[:-len(".json")].rsplit("-", 1)
            _save(folder / f"itl-{name}-{r}.npz", per_request)
            written.append(f"itl-{name}-{r}.npz")
        if "itls" in data or "generated_texts" in data:  # the texts are not kept at all (size)
            data.pop("itls", None), data.pop("generated_texts", None)
            src.write_text(json.dumps(data))
    for src in sorted(folder.glob("ours*-*.jsonl.gz")):
        try:
            rows = [json.loads(line) for line in gzip.open(src, "rt")]
        except (OSError, EOFError, ValueError):
            continue  # still being written
        if not rows or "itl_ms" not in rows[0]:
            continue
        name, r = src.name[:-len(".jsonl.gz")].rsplit("-", 1)
        measured = sorted((row for row in rows if not row["warmup"]), key=lambda row: row["i"])
        _save(folder / f"itl-{name}-{r}.npz", [row.get("itl_ms") or [] for row in measured])
        with gzip.open(src, "wt") as f:
            for row in rows:
                row.pop("itl_ms", None)
                f.write(json.dumps(row) + "\n")
        written.append(f"itl-{name}-{r}.npz")
    return written


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    z = np.load(path)
    return z["gaps_ms"].astype(np.float64), z["counts"]


def _stats(gaps: np.ndarray) -> dict:
    p50, p90, p99 = np.percentile(gaps, [50, 90, 99])
    return {"mean": round(float(gaps.mean()), 3), "p50": round(float(p50), 3), "p90": round(float(p90), 3),
            "p99": round(float(p99), 3)}


def compare_round(a: Path, b: Path) -> dict:
    gaps_a, counts_a = _load(a)
    gaps_b, counts_b = _load(b)
    report = {"a": _stats(gaps_a), "b": _stats(gaps_b), "requests": [int(len(counts_a)), int(len(counts_b))],
              "gaps": [int(len(gaps_a)), int(len(gaps_b))]}
    report["p90_diff_pct"] = round(100.0 * (report["a"]["p90"] / report["b"]["p90"] - 1.0), 2)
    if len(counts_a) != len(counts_b) or not np.array_equal(counts_a, counts_b):
        differ = int(np.sum(counts_a != counts_b)) if len(counts_a) == len(counts_b) else None
        report["same_gap_counts"] = False
        report["requests_with_other_count"] = differ
        return report
    report["same_gap_counts"] = True
    diff = gaps_a - gaps_b
    q05, q50, q95 = np.percentile(diff, [5, 50, 95])
    report["per_gap_diff_ms"] = {"mean": round(float(diff.mean()), 3), "p05": round(float(q05), 3),
                                 "p50": round(float(q50), 3), "p95": round(float(q95), 3),
                                 "share_over_5ms": round(float(np.mean(np.abs(diff) > 5.0)), 4)}
    return report


def compare(folder: Path, first: str, second: str) -> dict:
    rounds = sorted(int(p.stem.rsplit("-", 1)[1]) for p in folder.glob(f"itl-{first}-*.npz"))
    return {r: compare_round(folder / f"itl-{first}-{r}.npz", folder / f"itl-{second}-{r}.npz")
            for r in rounds if (folder / f"itl-{second}-{r}.npz").exists()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("dir")
    c = sub.add_parser("compare")
    c.add_argument("dir")
    c.add_argument("--pair", default="ours,vllm", help="the two runs' file prefixes, e.g. ours,vllm or ours,ours2")
    c.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.cmd == "pack":
        print("\n".join(pack(Path(args.dir))))
        return
    first, second = args.pair.split(",")
    result = compare(Path(args.dir), first, second)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"| round | {first} mean/P50/P90/P99 ms | {second} mean/P50/P90/P99 ms | P90 diff | same counts "
          f"| per-gap diff P05/P50/P95 ms |")
    print("|---|---|---|---|---|---|")
    for r, rep in result.items():
        a, b = rep["a"], rep["b"]
        d = rep.get("per_gap_diff_ms")
        diff = f"{d['p05']}/{d['p50']}/{d['p95']}" if d else "-"
        print(f"| {r} | {a['mean']}/{a['p50']}/{a['p90']}/{a['p99']} | {b['mean']}/{b['p50']}/{b['p90']}/{b['p99']} "
              f"| {rep['p90_diff_pct']:+.1f}% | {rep['same_gap_counts']} "
              f"| {diff} |")


if __name__ == "__main__":
    main()
