"""Where vLLM's client adds to TTFT: ours and vLLM's own request function against a fixed-latency server.

One request at a time (no queueing anywhere), TTFT fixed at 50 ms by `autotune.testing.fakeserver` (own
process, core 1; the client on core 0). vLLM's `async_request_openai_completions` runs in the session its
`serve.py` builds (`trust_env=True`) and in the same session without `trust_env`. With `trust_env`, aiohttp
looks up proxy settings and .netrc credentials for every request, inside the time vLLM counts as TTFT.

    PYTHONPATH=DIR python benchmarks/vllm_client_ttft.py [--requests 150] [--repeats 2]

DIR holds `vllm/benchmarks/lib/endpoint_request_func.py` from the vLLM 0.26.0 wheel (as for
`loadgen_capacity.py --vllm-client real`).

Prints the median TTFT of each client (the first 10 requests of each run left out).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics

TTFT_MS, ITL_MS, MODEL, PROMPT = 50.0, 8.0, "m", "hello world " * 100


async def _ours(url: str, n: int) -> float:
    from autotune.loadgen.runner import LoadConfig, run_load
    from autotune.loadgen.workload import RequestSpec

    reqs = [RequestSpec(prompt=PROMPT, prompt_len=200, output_len=4)]
    res = await run_load(url, MODEL, reqs, LoadConfig(concurrency=1, num_prompts=n - 10, warmup_prompts=10))
    return res.ttft_ms.p50


async def _vllm(url: str, n: int, trust_env: bool) -> list[float]:
    from _vllm_request_func import make_session
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncInput, async_request_openai_completions

    ttfts = []
    async with make_session(1, trust_env=trust_env) as session:
        for _ in range(n):
            out = await async_request_openai_completions(RequestFuncInput(
                prompt=PROMPT, api_url=url + "/v1/completions", prompt_len=200, output_len=4, model=MODEL,
                ignore_eos=True), session)
            ttfts.append(out.ttft * 1000)
            await asyncio.sleep(0.005)
    return ttfts[10:]


def main() -> None:
    from autotune.testing.fakeserver import FakeServer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=150)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    os.sched_setaffinity(0, {0})
    print(f"fixed TTFT {TTFT_MS:.0f} ms, one request at a time, {args.requests} requests a run; median TTFT ms")
    with FakeServer(cpu=1, models=[MODEL], ttft_ms=TTFT_MS, itl_ms=ITL_MS) as srv:
        for rep in range(args.repeats):
            ours = asyncio.run(_ours(srv.url, args.requests))
            vllm_env = statistics.median(asyncio.run(_vllm(srv.url, args.requests, trust_env=True)))
            vllm_plain = statistics.median(asyncio.run(_vllm(srv.url, args.requests, trust_env=False)))
            print(f"run {rep + 1}: ours {ours:.2f} | vLLM's (trust_env=True, as serve.py) {vllm_env:.2f} | "
                  f"vLLM's with trust_env=False {vllm_plain:.2f}", flush=True)


if __name__ == "__main__":
    main()
