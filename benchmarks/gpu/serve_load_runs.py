"""profile_check.sh's runs at a profile's serve load (BENCH_ARGS="--serve-load --max-runs 1"), counted: each bench
run's output tok/s and P99 of each limited metric against the profile's serve load and its limits, how many runs
kept every P99 within its limit (with the 95% Clopper-Pearson interval of that share), against the share the serve
load promises. Prints one JSON object.

    python3 benchmarks/gpu/serve_load_runs.py DIR        # DIR: profile_check.sh's folder (check/profile.yaml, bench*.json)
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import yaml
from scipy.stats import binomtest


def main(folder: str) -> dict:
    root = Path(folder)
    profile = yaml.safe_load((root / "check" / "profile.yaml").read_text())
    serve, limits_ms = profile.get("serve"), profile["objective"]["limits_ms"]
    runs = []
    for path in sorted(root.glob("bench*.json")):
        try:
            bench = json.loads(path.read_text())
        except ValueError:
            runs.append({"file": path.name, "error": "not JSON (see its .err)"})
            continue
        if "output_tok_s" not in bench:
            runs.append({"file": path.name, "error": "no figures (see its .err)"})
            continue
        p99_ms = {metric: bench[f"{metric}_ms"]["p99"] for metric in limits_ms}
        runs.append({"file": path.name, "concurrency": bench.get("concurrency"), "output_tok_s": bench["output_tok_s"],
                     "p99_ms": p99_ms, "within_limits": all(p99_ms[m] <= limit for m, limit in limits_ms.items()),
                     "bench_says": (bench.get("profile_check") or {}).get("holds")})
    measured = [r for r in runs if "error" not in r]
    within = sum(r["within_limits"] for r in measured)
    share = binomtest(within, len(measured)).proportion_ci(0.95, method="exact") if measured else None
    tok_s = [r["output_tok_s"] for r in measured]
    mean_tok_s = sum(tok_s) / len(tok_s) if tok_s else math.nan
    return {"profile_concurrency": profile["concurrency"], "limits_ms": limits_ms, "serve": serve,
            "profile_output_tok_s": profile["metrics"]["output_tok_s"]["mean"],
            "profile_p99_ms": {m: p["values_ms"] for m, p in profile["metrics"]["p99"].items()},
            "runs": runs, "runs_within_limits": within, "runs_measured": len(measured),
            "share_within_95ci": [share.low, share.high] if share else None,
            "mean_output_tok_s": mean_tok_s,
            "mean_vs_serve_expected": mean_tok_s / serve["output_tok_s"] - 1 if serve and tok_s else None}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1]), indent=1))
