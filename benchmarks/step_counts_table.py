"""How vLLM packs prefills beside decodes, against the sim on the same requests (issue #21).

Reads the folder `benchmarks/gpu/step_counts.sh` writes (per configuration CFG and load C: `CFG-cC.json`, the
`autotune bench --json` result with `server_metrics.steps_by_tokens`; `configs.txt`, each configuration's flags;
`settings.txt`, the workload) and replays each level on the in-process sim engine (card `h200`, the weightless
Flash text backbone) with the same requests and load shape. Per level: the engine steps by tokens per step in
three groups -- decode-only (at most 256 tokens: a step's decodes at these loads), one prefill beside them
(257-2,048 tokens) and more (over 2,048) --, their shares, and P99 ITL, GPU and sim side by side. Where the sim's
P99 ITL is too high, this says whether it takes too many multi-prefill steps or makes them too long.

    python benchmarks/step_counts_table.py DIR [--json]
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from autotune.gpus import load_gpu
from autotune.loadgen.runner import LoadConfig
from autotune.loadgen.workload import parse_workload
from autotune.models import spec_from_config
from autotune.sim.args import parse_serve_args
from autotune.sim.engine import setup_engine
from autotune.sim.inproc import bench_in_process
from autotune.testing.models import WEIGHTLESS_FLASH_CONFIG

GROUPS = (("decode only", 0, 256), ("one prefill", 257, 2048), ("more", 2049, float("inf")))


def grouped(steps: dict[str, int]) -> dict[str, int]:
    """Steps by ``le N`` bucket summed into GROUPS (a bucket belongs to the group holding its upper bound)."""
    out = {name: 0 for name, _, _ in GROUPS}
    for key, count in steps.items():
        bound = float(key.split()[1])
        name = next(n for n, lo, hi in GROUPS if lo <= bound <= hi)
        out[name] += int(count)
    return out


def configs(folder: Path) -> dict[str, dict[str, Any]]:
    """Each configuration's vLLM flags, from `configs.txt` ("NAME: FLAGS" lines)."""
    out = {}
    for line in (folder / "configs.txt").read_text().splitlines():
        name, _, flags = line.partition(":")
        args = parse_serve_args(["/tmp/model", *shlex.split(flags)])
        out[name.strip()] = dict(args.flags)
    return out


def sim_level(flags: dict[str, Any], workload: str, concurrency: int) -> dict[str, Any]:
    """The level as `step_counts.sh` ran it (seed 1, a warm-up wave of C, 3 x C measured, 2 s ramp), in-process."""
    model = spec_from_config(WEIGHTLESS_FLASH_CONFIG, "weightless-flash", "weightless-flash")
    cfg = LoadConfig(concurrency=concurrency, num_prompts=3 * concurrency, warmup_prompts=concurrency, ramp_s=2.0,
                     seed=1)
    requests = parse_workload(workload, seed=1).requests(cfg.warmup_prompts + cfg.num_prompts)
    r = bench_in_process(setup_engine(model, load_gpu("h200"), flags), requests, cfg)
    return {"steps_by_tokens": r.extra["server_metrics"]["steps_by_tokens"], "p99_itl_ms": r.itl_ms.p99,
            "output_tok_s": r.output_tok_s}


def table(folder: Path) -> list[dict[str, Any]]:
    settings = dict(line.split("=", 1) for line in (folder / "settings.txt").read_text().splitlines() if "=" in line)
    workload = settings["workload"]
    rows = []
    for name, flags in configs(folder).items():
        for path in sorted(folder.glob(f"{name}-c*.json"), key=lambda p: int(p.stem.rsplit("-c", 1)[1])):
            concurrency = int(path.stem.rsplit("-c", 1)[1])
            try:
                gpu = json.loads(path.read_text())
            except json.JSONDecodeError:
                continue  # the level failed: its .err says why
            steps = (gpu.get("server_metrics") or {}).get("steps_by_tokens") or {}
            sim = sim_level(flags, workload, concurrency)
            rows.append({"config": name, "concurrency": concurrency,
                         "gpu": {"steps": grouped(steps) if steps else None, "p99_itl_ms": gpu["itl_ms"]["p99"],
                                 "output_tok_s": gpu["output_tok_s"]},
                         "sim": {"steps": grouped(sim["steps_by_tokens"]), "p99_itl_ms": sim["p99_itl_ms"],
                                 "output_tok_s": sim["output_tok_s"]}})
    return rows


def _steps_cell(steps: dict[str, int] | None) -> str:
    if not steps:
        return "— (no step histogram)"
    total = sum(steps.values()) or 1
    return f"{total:,}: " + ", ".join(f"{100 * n / total:.1f}%" for n in steps.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = table(args.dir)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("Steps: total: " + ", ".join(n for n, _, _ in GROUPS) + " (shares)")
    print("| config | C | GPU steps | sim steps | GPU P99 ITL ms | sim P99 ITL ms | GPU tok/s | sim tok/s |")
    print("|---|---:|---|---|---:|---:|---:|---:|")
    for r in rows:
        g, s = r["gpu"], r["sim"]
        print(f"| {r['config']} | {r['concurrency']} | {_steps_cell(g['steps'])} | {_steps_cell(s['steps'])} | "
              f"{g['p99_itl_ms']:.1f} | {s['p99_itl_ms']:.1f} | {g['output_tok_s']:,.0f} | {s['output_tok_s']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
