"""On the GPU: one live vLLM server, our `autotune bench` and `vllm bench serve` side by side, same workload.

Starts the server with the flags of a study's best trial (so the runs double as re-measurements of the
winner), then runs, in this order: ours, vLLM's, ours again — each with the same prompts count, concurrency
and synchronized start (no warm-up, no ramp: vLLM's protocol). Prints one JSON object and writes it to
$OUT/agreement.json; vLLM's own result file lands in $OUT too.

    python3 benchmarks/gpu/bench_agreement.py --storage sqlite:////tmp/st/study.db --study h100-flash \
        --model /tmp/model [--concurrency C] [--num-prompts N]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from autotune.engines.base import LaunchSpec
from autotune.engines.launcher import EngineServer
from autotune.jsonsafe import json_safe
from autotune.loadgen.runner import LoadConfig, run_bench
from autotune.loadgen.workload import parse_workload
from autotune.models import resolve_model
from autotune.storage import load_study, open_storage


def vllm_bench(url: str, name: str, tokenizer: str, n: int, c: int, in_len: int, out_len: int, out_dir: Path) -> dict:
    cmd = ["vllm", "bench", "serve", "--backend", "vllm", "--base-url", url, "--model", name, "--tokenizer", tokenizer,
           "--dataset-name", "random", "--random-input-len", str(in_len), "--random-output-len", str(out_len),
           "--num-prompts", str(n), "--max-concurrency", str(c), "--ignore-eos", "--seed", "0",
           "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,95,99",
           "--save-result", "--result-dir", str(out_dir), "--result-filename", "vllm-bench.json"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    (out_dir / "vllm-bench.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:], "wall_s": time.perf_counter() - started}
    data = json.loads((out_dir / "vllm-bench.json").read_text())
    keep = {k: v for k, v in data.items() if isinstance(v, (int, float)) and not k.startswith("_")}
    keep["wall_s"] = time.perf_counter() - started
    return keep


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--storage", required=True)
    ap.add_argument("--study", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--concurrency", type=int, default=None)
    ap.add_argument("--num-prompts", type=int, default=None)
    ap.add_argument("--input-len", type=int, default=1024)
    ap.add_argument("--output-len", type=int, default=512)
    args = ap.parse_args()
    out_dir = Path(os.environ.get("OUT", "."))
    study = load_study(args.study, open_storage(args.storage, create_dirs=False))
    feasible = [t for t in study.trials if t.user_attrs.get("feasible")]
    best = max(feasible, key=lambda t: t.value or 0.0)
    flags = best.user_attrs["flags"]
    c = args.concurrency or int(best.user_attrs["concurrency"])
    n = args.num_prompts or 3 * c
    model = resolve_model(args.model)
    spec = LaunchSpec(engine="vllm", model=model, flags={**flags, "load-format": "dummy"}, gpu_ids=(0,),
                      served_model_name=f"autotune-agreement-{best.number}",
                      log_path=Path("/tmp/st/studies/agreement/server.log"))
    report: dict = {"trial": best.number, "flags": flags, "concurrency": c, "num_prompts": n,
                    "workload": f"random:{args.input_len}:{args.output_len}"}
    workload = parse_workload(f"random:{args.input_len}:{args.output_len}", seed=0)
    cfg = LoadConfig(concurrency=c, num_prompts=n, warmup_prompts=0, ramp_s=0.0, scrape_metrics=True)
    with EngineServer(spec) as server:
        report["startup"] = server.startup.as_dict()
        for label in ("autotune_1", "vllm_bench", "autotune_2"):
            started = time.perf_counter()
            if label == "vllm_bench":
                report[label] = vllm_bench(server.url, spec.served_model_name, args.model, n, c, args.input_len,
                                           args.output_len, out_dir)
            else:
                report[label] = run_bench(server.url, spec.served_model_name, workload, cfg).to_json()
                report[label]["wall_s"] = time.perf_counter() - started
            print(f"{label}: done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    (out_dir / "agreement.json").write_text(json.dumps(json_safe(report), indent=1))
    print(json.dumps(json_safe(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
