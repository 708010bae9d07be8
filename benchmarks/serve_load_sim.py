"""Does a profile's serve load hold its promise on the sim engine with the H200's run-to-run noise?

The serve load (`selection.serve_load`, the profile's `serve`) is where one more run's P99 of each limited metric
should stay within its limit in 19 runs of 20 (at `--confidence 0.9`): derived from the winner's load curve and the
run-to-run P99 spread measured on an H200, not measured there. This runs a study per seed with `--sim-noise h200`
(every measurement run gets its own lognormal latency and throughput factors, `autotune.sim.noise`), then measures
the winner on RUNS fresh sim servers (each its own noise draw, as a re-measurement is) at the profile's
concurrency and at its serve load, and counts the runs whose P99 met the limit.

    python benchmarks/serve_load_sim.py                          # 4 seeds, 40 fresh servers per load
    python benchmarks/serve_load_sim.py --seeds 2 --runs 20 --p99-ms 500 --gpu-type h100 --workload random:1024:512:0.5
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import beta

from autotune.cli import main as autotune_main
from autotune.config import RunOptions, build_study_config
from autotune.profile import read_profile
from autotune.trial import measure_once


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    return (float(beta.ppf(0.025, k, n - k + 1)) if k else 0.0,
            float(beta.ppf(0.975, k + 1, n - k)) if k < n else 1.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--runs", type=int, default=40, help="fresh servers per load")
    parser.add_argument("--p99-ms", type=float, default=200.0)
    parser.add_argument("--gpu-type", default="h200")
    parser.add_argument("--workload", default="random:256:64")
    parser.add_argument("--trials", type=int, default=4)
    args = parser.parse_args()
    print(f"P99 TTFT <= {args.p99_ms:g} ms, {args.gpu_type} card, {args.workload}, --sim-noise h200, {args.trials} "
          f"trials a study, {args.runs} fresh servers per load")
    print("| seed | profile's load | runs within the limit there | serve load | runs within the limit there | "
          "mean output tok/s, serve against profile's load |")
    print("|---|---|---|---|---|---|")
    t0 = time.perf_counter()
    totals = {"profile": [0, 0], "serve": [0, 0]}
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            study = f"serve-{seed}"
            opts = ["--model", "flash", "--gpus", "1", "--p99-ms", f"{args.p99_ms:g}", "--gpu-type", args.gpu_type,
                    "--workload", args.workload, "--sim-noise", "h200", "--trials", str(args.trials), "--seed",
                    str(seed), "--study", study, "--out", tmp, "--storage", f"sqlite:///{tmp}/s.db"]
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                rc = autotune_main(["run", *opts])
            if rc != 0:
                print(f"| {seed} | the study found no winner | | | | |")
                continue
            profile = read_profile(Path(tmp) / study / "profile.yaml")
            if profile.serve is None:
                print(f"| {seed} | {profile.concurrency} | no serve load | | | |")
                continue
            cfg = build_study_config(RunOptions(model="flash", gpus=1, p99_ms=args.p99_ms, engine="sim",
                                                gpu_type=args.gpu_type, workload=args.workload, sim_noise="h200",
                                                seed=seed, out=tmp, study=study))
            cells, tok_s = [], {}
            for label, load in (("profile", profile.concurrency), ("serve", profile.serve.concurrency)):
                within, values, p99s_ms = 0, [], []
                for i in range(args.runs):
                    # a server name never used in the study: a noise draw of its own
                    r = measure_once(cfg.settings, dict(profile.flags), load, f"check-{label}-{i}",
                                     Path(tmp) / f"check-{label}-{i}" / "server.log")
                    within += r.p99_ms("ttft") <= args.p99_ms
                    values.append(r.output_tok_s)
                    p99s_ms.append(r.p99_ms("ttft"))
                low, high = clopper_pearson(within, args.runs)
                spread = float(np.std(np.log(p99s_ms), ddof=1))  # one run's P99 TTFT spread at this load (log sd)
                cells.append(f"{load} | {within}/{args.runs} [{low:.0%}, {high:.0%}], P99 TTFT spread {spread:.1%}")
                tok_s[label] = sum(values) / len(values)
                totals[label][0] += within
                totals[label][1] += args.runs
            print(f"| {seed} | " + " | ".join(cells) + f" | {tok_s['serve']:,.0f} / {tok_s['profile']:,.0f} "
                  f"({tok_s['serve'] / tok_s['profile'] - 1:+.1%}) |", flush=True)
    for label, (within, n) in totals.items():
        if n:
            low, high = clopper_pearson(within, n)
            print(f"all seeds, {label} load: {within}/{n} runs within the limit ({within / n:.1%}, 95% interval "
                  f"{low:.1%}-{high:.1%})")
    print(f"{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
