"""profile_check.sh's result: `autotune bench` on a server started from a profile's command, beside the profile's own
runs at the same concurrency. Prints one JSON object.

    python3 benchmarks/gpu/profile_check.py PROFILE.yaml BENCH.json
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import yaml


def main(profile_path: str, bench_path: str) -> dict:
    profile = yaml.safe_load(Path(profile_path).read_text())
    metrics = profile["metrics"]
    runs = metrics["output_tok_s"]  # the winner's fresh-server runs at its chosen concurrency
    out = {"concurrency": profile["concurrency"], "vllm_serve_cmd": profile["vllm_serve_cmd"],
           "profile_output_tok_s": {k: runs[k] for k in ("mean", "min", "max", "n")},
           "profile_p99_ms": {m: p["values_ms"] for m, p in metrics["p99"].items()}}
    try:
        bench = json.loads(Path(bench_path).read_text())
    except (OSError, ValueError) as e:
        return {**out, "error": f"no bench result: {e}"}
    out["bench"] = {"output_tok_s": bench["output_tok_s"], "whole_run_output_tok_s": bench.get("whole_run_output_tok_s"),
                    "completed": bench["completed"], "failed": bench["failed"],
                    **{f"p99_{m}_ms": bench[f"{m}_ms"]["p99"] for m in metrics["p99"]}}
    mean = runs["mean"]
    out["bench_vs_profile_mean"] = bench["output_tok_s"] / mean - 1 if mean and not math.isnan(mean) else None
    out["bench_within_profile_runs"] = runs["min"] <= bench["output_tok_s"] <= runs["max"]
    out["profile_check"] = bench.get("profile_check")  # `bench --profile`'s own judgement
    return out


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:3]), indent=1))
