"""The sim engine against the steady-state levels of the real H100 study of 2026-11-25
(docs/results/h100-flash.md): the same flags, concurrencies, workload and level protocol (a trial's: 2 s ramp,
1 x C warm-up, 1.5 x C measured, fresh prompts), run on a time-scaled sim server.

The real figures are read from each level's per-request records (output tok/s over the steady window
counting every request in it, as `benchmarks/level_records.py` does; the run log's figures left out the
warm-up requests' tokens), P99 TTFT and P99 TPOT too; the run log gives the trial each level belongs to.

    git archive 0a92ea8 docs/results/raw/h100-session3/h100-flash | tar -x -C /tmp   # the study's raw data
    python benchmarks/sim_vs_h100_levels.py --raw /tmp/docs/results/raw/h100-session3/h100-flash [--time-scale 4]

`--raw` is a folder with the study's `run.log` and `studies.tgz` (each level's per-request records).
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import yaml

from autotune.engines.base import LaunchSpec
from autotune.engines.launcher import EngineServer
from autotune.gpus import load_gpu
from autotune.loadgen.runner import run_bench
from autotune.loadgen.workload import parse_workload
from autotune.loadsearch import LoadSearchConfig
from autotune.models import resolve_model
from autotune.study import baseline_flags
from autotune.trial import LevelShape, TrialSettings, level_load_config

from _shared import window_tok_s

HERE = Path(__file__).resolve().parent


def trial_flags(model) -> dict[int, tuple[str, dict]]:
    """The study's trials and their flags: the baselines' own, and the `--try` file's points (trials 2, 3);
    trials 1 and 4 are the seed profile on machines 1 and 2."""
    seed = baseline_flags("seed-profile", model, 1)
    tries = yaml.safe_load((HERE / "gpu" / "h100_try.yaml").read_text())
    return {0: ("vLLM defaults", baseline_flags("vllm-defaults", model, 1)), 1: ("seed profile (machine 1)", seed),
            2: ("try: sim's top", tries[0]), 3: ("try: hand-tuned", tries[1]), 4: ("seed profile (machine 2)", seed)}


LEVEL_LINE = re.compile(r"concurrency (\d+): ([\d,]+) output tok/s")
TRIAL_LINE = re.compile(r"\] trial (\d+) (?!done)")


def real_levels(raw: Path, tmp: Path) -> dict[int, list[dict]]:
    """{trial: [{concurrency, output_tok_s, p99_ttft_ms, p99_tpot_ms}, ...]} in level order."""
    with tarfile.open(raw / "studies.tgz") as tar:
        tar.extractall(tmp, filter="data")
    tok_s: dict[int, list[tuple[int, float]]] = {}
    trial = None
    for line in (raw / "run.log").read_text().splitlines():
        if m := TRIAL_LINE.search(line):
            trial = int(m.group(1))
            tok_s[trial] = []  # a trial started again (resume) replaces its lines
        elif (m := LEVEL_LINE.search(line)) and trial is not None:
            tok_s[trial].append((int(m.group(1)), float(m.group(2).replace(",", ""))))
    out: dict[int, list[dict]] = {}
    for number, levels in tok_s.items():
        files = sorted((tmp / "studies" / "h100-flash" / "trials" / str(number) / "levels").glob("*.jsonl.gz"))
        rows = []
        for (c, _), path in zip(levels, files):
            recs = [json.loads(x) for x in gzip.open(path, "rt")]
            measured = [r for r in recs if not r["warmup"] and r["ok"]]
            rows.append({"concurrency": c, "output_tok_s": window_tok_s(recs)[0],
                         "p99_ttft_ms": float(np.percentile([r["ttft_ms"] for r in measured], 99)),
                         "p99_tpot_ms": float(np.percentile([r["tpot_ms"] for r in measured
                                                             if r["tpot_ms"] is not None], 99))})
        out[number] = rows
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", type=Path, required=True, help="folder with the study's run.log and studies.tgz")
    ap.add_argument("--time-scale", type=float, default=4.0)
    ap.add_argument("--trials", type=int, nargs="+", default=[0, 4, 2, 3])
    ap.add_argument("--max-concurrency", type=int, default=512)
    args = ap.parse_args()
    model = resolve_model("flash")
    trials = trial_flags(model)
    settings = TrialSettings(engine="sim", model=model, gpu=load_gpu("h100"), gpus=1,
                             workload=parse_workload("random:1024:512:0.5", seed=0),
                             search=LoadSearchConfig(limits_ms={"ttft": 500.0}), time_scale=args.time_scale,
                             sim_server=True,
                             level=LevelShape(prompts_per_level=1.5))
    print("| trial | config | concurrency | sim tok/s | real tok/s | error | sim P99 TTFT ms | real P99 TTFT ms | "
          "error | sim P99 TPOT ms | real P99 TPOT ms | error |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        real = real_levels(args.raw, Path(tmp))
        for number in args.trials:
            label, flags = trials[number]
            spec = LaunchSpec(engine="sim", model=model, flags={"enable-chunked-prefill": True, **flags},
                              gpu_ids=("0",), served_model_name="m", log_path=Path(tmp) / f"server-{number}.log",
                              gpu_type="h100", time_scale=args.time_scale)
            used = 0
            with EngineServer(spec) as server:
                for row in real[number]:
                    c = row["concurrency"]
                    if c > args.max_concurrency:
                        continue
                    cfg = level_load_config(settings, c)
                    total = cfg.warmup_prompts + cfg.num_prompts
                    requests = settings.workload.requests(used + total)[used:]
                    used += total
                    r = run_bench(server.url, "m", requests, cfg)

                    def err(sim: float, real_value: float) -> str:
                        return f"{100 * (sim / real_value - 1):+.0f}%"
                    print(f"| {number} | {label} | {c} | {r.output_tok_s:,.0f} | {row['output_tok_s']:,.0f} | "
                          f"{err(r.output_tok_s, row['output_tok_s'])} | {r.ttft_ms.p99:,.0f} | "
                          f"{row['p99_ttft_ms']:,.0f} | {err(r.ttft_ms.p99, row['p99_ttft_ms'])} | "
                          f"{r.tpot_ms.p99:.1f} | {row['p99_tpot_ms']:.1f} | {err(r.tpot_ms.p99, row['p99_tpot_ms'])} |",
                          flush=True)


if __name__ == "__main__":
    main()
