"""The synchronized first wave: P99 TTFT with ramp 0 vs a ramp, against a tiny continuous-batching server
that queues (prefill token budget per step), run in its own process on core 1; the client on core 0.

    python benchmarks/loadgen_ramp.py [--concurrency 128]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "batch-model"
BUDGET_TOKENS = 8192      # prefill tokens per step
STEP_BASE_S = 0.010       # a decode step
PREFILL_S_PER_TOKEN = 2e-6


def serve(port_file: str) -> None:
    from aiohttp import web

    os.sched_setaffinity(0, {1})
    waiting: asyncio.Queue = asyncio.Queue()
    running: list[list] = []  # [queue, tokens left]

    async def engine() -> None:
        while True:
            admitted, budget = [], BUDGET_TOKENS
            while not waiting.empty() and budget >= waiting._queue[0][1]:  # noqa: SLF001
                req = waiting.get_nowait()
                budget -= req[1]
                admitted.append(req)
            if not running and not admitted:
                await asyncio.sleep(0.001)
                continue
            await asyncio.sleep(STEP_BASE_S + (BUDGET_TOKENS - budget) * PREFILL_S_PER_TOKEN)
            for req in admitted:
                running.append([req[0], req[2]])
            for r in running:
                r[0].put_nowait(1)
                r[1] -= 1
            running[:] = [r for r in running if r[1] > 0]

    async def complete(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        q: asyncio.Queue = asyncio.Queue()
        n_out = int(body["max_tokens"])
        waiting.put_nowait((q, len(body["prompt"]), n_out))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for k in range(n_out):
            await q.get()
            await resp.write(b'data: {"choices":[{"index":0,"text":" t","finish_reason":null}]}\n\n')
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": MODEL}]})

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/completions", complete)
        app.router.add_get("/v1/models", models)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        asyncio.create_task(engine())
        Path(port_file).write_text(str(runner.addresses[0][1]))
        await asyncio.Event().wait()

    asyncio.run(main())


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2])
        return
    from autotune.loadgen.runner import LoadConfig, run_bench
    from autotune.loadgen.workload import parse_workload

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=int, default=128)
    p.add_argument("--workload", default="random:512:32")
    args = p.parse_args()
    os.sched_setaffinity(0, {0})
    c = args.concurrency
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file)])
        try:
            while not (port_file.exists() and port_file.read_text()):
                time.sleep(0.02)
            url = f"http://127.0.0.1:{int(port_file.read_text())}"
            print(f"server: {BUDGET_TOKENS} prefill tokens/step, step {STEP_BASE_S * 1000:.0f} ms + "
                  f"{PREFILL_S_PER_TOKEN * 1e6:.0f} us/prefill token; workload {args.workload}, concurrency {c}")
            print(f"{'measured':>22} {'ramp_s':>6} {'p50 TTFT':>9} {'p99 TTFT':>9} {'out tok/s':>9}")
            for label, n, warm in (("first wave only", c, 0), ("4 waves, no warm-up", 4 * c, 0)):
                for ramp in (0.0, 0.5, 1.0):
                    res = run_bench(url, MODEL, parse_workload(args.workload),
                                    LoadConfig(concurrency=c, num_prompts=n, warmup_prompts=warm, ramp_s=ramp))
                    print(f"{label:>22} {ramp:>6.1f} {res.ttft_ms.p50:>9.1f} {res.ttft_ms.p99:>9.1f} "
                          f"{res.output_tok_s:>9.0f}", flush=True)
        finally:
            proc.terminate()
            proc.wait(5)


if __name__ == "__main__":
    main()
