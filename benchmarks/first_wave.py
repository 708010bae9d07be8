"""The start-up transient of a closed-loop load level, on the sim engine: how much of a level's P99 TTFT is
the first wave rather than the server's steady state.

A closed loop at concurrency C starts C requests at once (or spread over a short ramp). Their prefills
queue: on an H100 the 9B model prefills ~30 prompts of 1,024 tokens a second, so a 2 s ramp at C=128
(64 starts a second) leaves ~70 prompts waiting at its end and the last waits ~2.4 s. Any measured request
of that first wave carries this queue in its TTFT. The real study (docs/results/h100-flash.md) measured its
levels with a warm-up of 0.5 x C requests, i.e. half the first wave was measured.

For each concurrency this runs one sim server (vLLM defaults, weightless GLM-4-9B shape on an H100) and
measures the same level with: a synchronized start and no warm-up (`vllm bench serve`'s protocol), the 2 s
ramp with warm-up 0.5 x C (the first H100 studies), and the 2 s ramp with warm-up 1 x C and 2 x C.

    python benchmarks/first_wave.py [--concurrency 64 128 256] [--time-scale 20]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autotune.engines.base import LaunchSpec  # noqa: E402
from autotune.engines.launcher import EngineServer  # noqa: E402
from autotune.loadgen.runner import LoadConfig, run_bench  # noqa: E402
from autotune.loadgen.workload import parse_workload  # noqa: E402
from autotune.models import resolve_model  # noqa: E402

PROTOCOLS = [("synchronized, no warm-up", 0.0, 0.0), ("2 s ramp, warm-up 0.5 x C", 2.0, 0.5),
             ("2 s ramp, warm-up 1 x C", 2.0, 1.0), ("2 s ramp, warm-up 2 x C", 2.0, 2.0)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--workload", default="random:1024:512:0.5")
    ap.add_argument("--prompts-per-level", type=float, default=2.0)
    ap.add_argument("--time-scale", type=float, default=20.0)
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    model = resolve_model("flash")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for c in args.concurrency:
            spec = LaunchSpec(engine="sim", model=model, flags={"enable-chunked-prefill": True}, gpu_ids=(0,),
                              served_model_name="m", log_path=Path(tmp) / f"server-{c}.log", gpu_type="h100",
                              time_scale=args.time_scale)
            workload = parse_workload(args.workload, seed=0)
            used = 0
            with EngineServer(spec) as server:
                for label, ramp_s, warmup_factor in PROTOCOLS:
                    n, warmup = int(args.prompts_per_level * c), int(warmup_factor * c)
                    requests = workload.requests(used + n + warmup)[used:]  # fresh prompts, like a trial level
                    used += n + warmup
                    cfg = LoadConfig(concurrency=c, num_prompts=n, warmup_prompts=warmup,
                                     ramp_s=ramp_s / args.time_scale, time_scale=args.time_scale, steady_state=True)
                    r = run_bench(server.url, "m", requests, cfg)
                    row = {"concurrency": c, "protocol": label, "output_tok_s": r.output_tok_s,
                           "p50_ttft_ms": r.ttft_ms.p50, "p99_ttft_ms": r.ttft_ms.p99, "p99_tpot_ms": r.tpot_ms.p99}
                    rows.append(row)
                    print(f"C={c:4d}  {label:28s} {r.output_tok_s:8,.0f} tok/s  TTFT p50 {r.ttft_ms.p50:7,.0f} ms"
                          f"  p99 {r.ttft_ms.p99:7,.0f} ms  TPOT p99 {r.tpot_ms.p99:5.1f} ms", flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
