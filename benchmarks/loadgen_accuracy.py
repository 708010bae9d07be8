"""Accuracy: measured TTFT/ITL/E2E percentiles vs the known truth of a fixed-latency streaming server
(autotune.testing.fakeserver in its own process, pinned to core 1; the client on core 0).

    python benchmarks/loadgen_accuracy.py [--concurrency 256]
"""
from __future__ import annotations

import argparse
import os
import time

from autotune.testing.fakeserver import FakeServer
from autotune.loadgen.runner import LoadConfig, run_bench
from autotune.loadgen.workload import parse_workload

from _shared import cpu_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=int, default=256)
    args = p.parse_args()
    os.sched_setaffinity(0, {0})
    c = args.concurrency
    cases = [(200.0, 20.0, 16), (1000.0, 500.0, 3)]
    print(f"concurrency {c}, warm-up {c}, measured {2 * c}; error = measured/truth - 1")
    print(f"{'ttft/itl ms':>12} {'out':>4} {'ramp_s':>6} {'metric':>6} {'truth':>7} {'p50':>8} {'p90':>8} {'p99':>8}")
    with FakeServer(cpu=1) as srv:
        for ttft, itl, out in cases:
            e2e_s = (ttft + (out - 1) * itl) / 1000
            for ramp in (0.0, e2e_s):
                srv.configure(ttft_ms=ttft, itl_ms=itl)
                s0, c0, w0 = cpu_s(srv._proc.pid), time.process_time(), time.perf_counter()  # noqa: SLF001
                res = run_bench(srv.url, "fake-model", parse_workload(f"random:64:{out}"),
                                LoadConfig(concurrency=c, num_prompts=2 * c, warmup_prompts=c, ramp_s=ramp))
                wall = time.perf_counter() - w0
                print(f"  cpu busy: server {(cpu_s(srv._proc.pid) - s0) / wall:.0%}, "  # noqa: SLF001
                      f"client {(time.process_time() - c0) / wall:.0%}")
                for name, dist, truth in (("ttft", res.ttft_ms, ttft), ("itl", res.itl_ms, itl),
                                          ("e2el", res.e2el_ms, e2e_s * 1000)):
                    errs = [f"{(dist.percentile(q) / truth - 1) * 100:+.2f}%" for q in ("p50", "p90", "p99")]
                    print(f"{ttft:>5.0f}/{itl:<6.0f} {out:>4} {ramp:>6.2f} {name:>6} {truth:>7.0f} "
                          f"{errs[0]:>8} {errs[1]:>8} {errs[2]:>8}", flush=True)


if __name__ == "__main__":
    main()
