"""The in-process sim (virtual clock, the study's default) against the HTTP sim server (`autotune sim serve`
paced by the wall clock, `--sim-server`) on the same load levels: same flags, concurrency, requests and level
shape (a trial's: 1 x C warm-up, 3 x C measured within 32-1500, 2 s ramp, steady window). Each level runs on a
fresh engine with the stream's first requests. The in-process figures do not depend on the CPU; the HTTP
sim's are measured ``--repeats`` times to show their spread on this machine (its load average is printed).

    python benchmarks/sim_inproc_agreement.py [--time-scale 20] [--repeats 2] [--points defaults:256,384 ...]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autotune.engines.base import LaunchSpec  # noqa: E402
from autotune.engines.launcher import EngineServer  # noqa: E402
from autotune.gpus import load_gpu  # noqa: E402
from autotune.loadgen.runner import run_bench  # noqa: E402
from autotune.loadgen.workload import parse_workload  # noqa: E402
from autotune.loadsearch import LoadSearchConfig  # noqa: E402
from autotune.metrics import BenchResult  # noqa: E402
from autotune.models import resolve_model  # noqa: E402
from autotune.sim.inproc import InProcessSim  # noqa: E402
from autotune.study import baseline_flags  # noqa: E402
from autotune.trial import TrialSettings, level_load_config  # noqa: E402

CHUNKED = {"enable-chunked-prefill": True}  # the flash space's fixed flag
CONFIGS: dict[str, dict[str, Any]] = {  # the two baselines as a one-GPU study runs them, and two winners
    "defaults": baseline_flags("vllm-defaults", resolve_model("flash"), 1),
    "seed": baseline_flags("seed-profile", resolve_model("flash"), 1),
    # the winner of the README's last HTTP study (32 min, 2026-11-26)
    "http-winner": {"max-num-seqs": 512, "max-num-batched-tokens": 16384, "kv-cache-dtype": "fp8"},
    # the winner of the first in-process study of the README's command (sim-inproc branch)
    "inproc-winner": {"max-num-seqs": 1024, "max-num-batched-tokens": 8192, "kv-cache-dtype": "fp8",
                      "gpu-memory-utilization": 0.95, "enable-prefix-caching": False, "async-scheduling": False,
                      "max-cudagraph-capture-size": 512},
}
DEFAULT_POINTS = ["defaults:256,512", "seed:512,724", "http-winner:384,512", "inproc-winner:768,1024"]


def level(engine: EngineServer | InProcessSim, settings: TrialSettings, concurrency: int) -> tuple[BenchResult, float]:
    cfg = level_load_config(settings, concurrency)
    requests = settings.workload.requests(cfg.warmup_prompts + cfg.num_prompts)
    t0 = time.perf_counter()
    if isinstance(engine, InProcessSim):
        result = engine.bench(requests, cfg)
    else:
        result = run_bench(engine.url, engine.spec.served_model_name, requests, cfg)
    return result, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--time-scale", type=float, default=20.0, help="the HTTP sim's (the CLI's default)")
    ap.add_argument("--repeats", type=int, default=2, help="HTTP sim runs per level")
    ap.add_argument("--points", nargs="+", default=DEFAULT_POINTS, help="CONFIG:C1,C2 with CONFIG in "
                    + ", ".join(CONFIGS))
    ap.add_argument("--workload", default="random:1024:512:0.5")
    args = ap.parse_args()
    model = resolve_model("flash")
    common = dict(engine="sim", model=model, gpu=load_gpu("h100"), gpus=1,
                  workload=parse_workload(args.workload, seed=0),
                  search=LoadSearchConfig(metric="ttft", limit_ms=500), time_scale=args.time_scale)
    inproc = TrialSettings(**common)  # type: ignore[arg-type]
    http = TrialSettings(**common, sim_server=True)  # type: ignore[arg-type]
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs; "
          f"HTTP sim at time scale {args.time_scale:g}")
    print("| config | C | in-process tok/s | HTTP tok/s | diff | in-process P99 TTFT ms | HTTP P99 TTFT ms | "
          "in-process P99 TPOT ms | HTTP P99 TPOT ms | wall s in-process / HTTP |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for point in args.points:
            name, _, cs = point.partition(":")
            flags = {**CHUNKED, **CONFIGS[name]}
            for c in (int(x) for x in cs.split(",")):
                def spec(kind: str, i: int) -> LaunchSpec:
                    return LaunchSpec(engine="sim", model=model, flags=flags, gpu_ids=("0",), served_model_name="m",
                                      log_path=Path(tmp) / f"{name}-{c}-{kind}{i}.log", gpu_type="h100",
                                      time_scale=args.time_scale)
                with InProcessSim(spec("inproc", 0)) as engine:
                    mine, mine_s = level(engine, inproc, c)
                theirs = []
                for i in range(args.repeats):
                    with EngineServer(spec("http", i)) as server:
                        theirs.append(level(server, http, c))
                tok = " / ".join(f"{r.output_tok_s:,.0f}" for r, _ in theirs)
                diff = " / ".join(f"{100 * (mine.output_tok_s / r.output_tok_s - 1):+.1f}%" for r, _ in theirs)
                ttft = " / ".join(f"{r.ttft_ms.p99:,.0f}" for r, _ in theirs)
                tpot = " / ".join(f"{r.tpot_ms.p99:.1f}" for r, _ in theirs)
                walls = " / ".join(f"{s:.1f}" for _, s in theirs)
                print(f"| {name} | {c} | {mine.output_tok_s:,.0f} | {tok} | {diff} | {mine.ttft_ms.p99:,.0f} | {ttft} | "
                      f"{mine.tpot_ms.p99:.1f} | {tpot} | {mine_s:.1f} / {walls} |", flush=True)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
