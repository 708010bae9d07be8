"""Wall time of one `predict` point (the study's tuning-cost benchmark calls it thousands of times).

    python benchmarks/sim_predict_speed.py
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autotune.gpus import load_gpu  # noqa: E402
from autotune.models import spec_from_config  # noqa: E402
from autotune.sim.predict import predict  # noqa: E402
from tests.conftest import WEIGHTLESS_FLASH_CONFIG  # noqa: E402

CASES = [  # (label, flags, concurrency, rate, prompts)
    ("c=64", {}, 64, None, 256),
    ("c=256", {}, 256, None, 1024),
    ("c=256 fp8 kv", {"kv-cache-dtype": "fp8"}, 256, None, 1024),
    ("c=256 max-num-seqs 64", {"max-num-seqs": 64}, 256, None, 1024),
    ("rate=10/s", {}, None, 10.0, 1000),
]


def main() -> None:
    model = spec_from_config(WEIGHTLESS_FLASH_CONFIG, "weightless-flash", "weightless-flash")
    gpu = load_gpu("h100")
    predict(model, gpu, {}, 1024, 512, 16, 16)  # imports, caches
    print("| point (1024 in / 512 out) | wall ms (median of 5) | output tok/s |")
    print("|---|---:|---:|")
    for label, flags, conc, rate, n in CASES:
        walls = []
        for _ in range(5):
            t0 = time.perf_counter()
            r = predict(model, gpu, flags, 1024, 512, conc, n, rate=rate)
            walls.append(time.perf_counter() - t0)
        print(f"| {label}, {n} prompts | {1000 * statistics.median(walls):.0f} | {r.output_tok_s:,.0f} |")


if __name__ == "__main__":
    main()
