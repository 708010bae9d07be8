"""What `autotune bench --profile` makes of the recorded profile checks on H200s (docs/results/h200-profile-check.md):
each bench run against its profile, throughput judged exactly as the command judges one run
(autotune.profile_check.expected_tok_s), each limited P99 against its limit with
the GPU's run-to-run spread alone (these runs kept their summaries, not each request, so the bootstrap over the
requests that `bench --profile` adds, never narrower than this, cannot be redone). Prints one line per run; a run
of `bench --profile` itself is printed with its own verdict.

    python benchmarks/profile_check_replay.py [docs/results/raw]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import NormalDist

from autotune.config import REAL_GPU_P99_RUN_CV
from autotune.profile import read_profile
from autotune.profile_check import expected_tok_s


def main(raw: Path) -> None:
    for folder in sorted(raw.glob("h200-profile-check*")):
        profile = read_profile(folder / "profile.yaml")
        tput = profile.metrics.output_tok_s
        low, high = expected_tok_s(tput)
        z = NormalDist().inv_cdf(0.5 + tput.confidence / 2)
        for bench_path in sorted(folder.glob("bench*.json")):
            bench = json.loads(bench_path.read_text())
            if "profile_check" in bench:  # `bench --profile` ran: its own verdict, over its own runs, is the record
                check = bench["profile_check"]
                low_tok_s, high_tok_s = check["expected_tok_s"]
                p99s = "; ".join(f"P99 {p['metric']} {p['p99_ms']:,.0f} ms [{p['interval_ms'][0]:,.0f}, "
                                 f"{p['interval_ms'][1]:,.0f}] vs {p['limit_ms']:g}" for p in check["p99"])
                holds = {True: "holds", False: "does not hold", None: "not settled"}[check["holds"]]
                print(f"{folder.name}/{bench_path.name}: `bench --profile` itself, C={check['concurrency']}, "
                      f"{check['runs']} run(s) in [{low_tok_s:,.0f}, {high_tok_s:,.0f}]; bench "
                      f"{check['output_tok_s']:,.0f} ({check['change_pct']:+.1f}%); {p99s}: {holds}")
                continue
            tok_s = bench["output_tok_s"]
            side = "slower beyond noise" if tok_s < low else "faster beyond noise" if tok_s > high else "as profiled"
            p99s = []
            for metric, limit_ms in profile.objective.limits_ms.items():
                p99 = bench[f"{metric}_ms"]["p99"]
                spread = z * REAL_GPU_P99_RUN_CV[metric] * p99  # the run-to-run part of a level's P99 interval
                verdict = ("holds" if p99 + spread <= limit_ms else "over beyond noise" if p99 - spread > limit_ms
                           else "within noise of the limit")
                p99s.append(f"P99 {metric} {p99:,.0f} ms [{p99 - spread:,.0f}, {p99 + spread:,.0f}] vs {limit_ms:g}: "
                            f"{verdict}")
            print(f"{folder.name}/{bench_path.name}: C={profile.concurrency}, profile {tput.mean:,.0f} tok/s "
                  f"(n={tput.n}), one run in [{low:,.0f}, {high:,.0f}]; bench {tok_s:,.0f} "
                  f"({100 * (tok_s / tput.mean - 1):+.1f}%): {side}; {'; '.join(p99s)}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/raw"))
