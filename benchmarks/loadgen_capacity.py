"""Client capacity on one CPU core: requests/s and streamed tokens/s that our load generator sustains
against a zero-latency streaming server, side by side with vLLM's benchmark client logic.

The client process is pinned to core 0, the server (raw asyncio, pre-built responses, one write per token
event) to core 1. Both clients run a closed loop at the same concurrency against the same server.
``--cores 2,3,4,5`` pins the client to core 2 and runs one server process on each further core (the
connections are spread by SO_REUSEPORT), so that the server is not what limits a fast client. Every run
prints the share of the wall time the client and the server processes were busy on the CPU: a server near
100% per process means that run measured the server, not the client.

    python benchmarks/loadgen_capacity.py [--concurrency 64] [--requests 6000] [--out-lens 1,64,512]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _shared import cpu_s

MODEL = "bench-model"


# ---- the server: raw HTTP/1.1 keep-alive, chunked SSE, one transport.write per event ----------------------

def _sse_response(out_len: int) -> list[bytes]:
    def chunk(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data)
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: keep-alive\r\n\r\n")
    events = [head]
    for k in range(out_len):
        obj = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": MODEL,
               "choices": [{"index": 0, "text": f" tok{k}", "logprobs": None,
                            "finish_reason": "length" if k == out_len - 1 else None, "stop_reason": None}],
               "usage": None}
        events.append(chunk(b"data: " + json.dumps(obj).encode() + b"\n\n"))
    usage = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": MODEL, "choices": [],
             "usage": {"prompt_tokens": 128, "total_tokens": 128 + out_len, "completion_tokens": out_len}}
    events.append(chunk(b"data: " + json.dumps(usage).encode() + b"\n\n"))
    events.append(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    return events


class _Proto(asyncio.Protocol):
    events: list[bytes] = []
    models = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length:]
            if head.startswith("GET"):
                self.t.write(self.models)  # type: ignore[attr-defined]
            else:
                for event in self.events:
                    self.t.write(event)  # type: ignore[attr-defined]


def serve(port_file: str, out_len: int, cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})
    _Proto.events = _sse_response(out_len)
    body = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()
    _Proto.models = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body), body)

    async def main() -> None:
        port = int(Path(port_file).read_text()) if Path(port_file).read_text() else 0
        server = await asyncio.get_running_loop().create_server(_Proto, "127.0.0.1", port, backlog=4096,
                                                                reuse_port=True)
        if not port:
            Path(port_file).write_text(str(server.sockets[0].getsockname()[1]))
        Path(port_file + f".{cpu}").write_text("up")
        await asyncio.Event().wait()

    asyncio.run(main())


class Server:
    """One server process per core in ``cpus``, all on one port (SO_REUSEPORT)."""

    def __init__(self, out_len: int, cpus: list[int]) -> None:
        self.out_len, self.cpus = out_len, cpus

    def __enter__(self) -> "Server":
        self.dir = tempfile.TemporaryDirectory()
        port_file = Path(self.dir.name) / "port"
        port_file.write_text("")
        self.procs = []
        for cpu in self.cpus:
            self.procs.append(subprocess.Popen([sys.executable, __file__, "--serve", str(port_file),
                                                str(self.out_len), str(cpu)]))
            while not Path(f"{port_file}.{cpu}").exists():  # the first one picks the port
                time.sleep(0.02)
        self.url = f"http://127.0.0.1:{int(port_file.read_text())}"
        return self

    def cpu_s(self) -> float:
        return sum(cpu_s(p.pid) for p in self.procs)

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(5)
        self.dir.cleanup()


# ---- the two clients ----------------------------------------------------------------------------------------

def run_ours(url: str, concurrency: int, n: int, out_len: int) -> tuple[float, int, int]:
    from autotune.loadgen.runner import LoadConfig, run_load
    from autotune.loadgen.workload import parse_workload

    requests = parse_workload(f"random:128:{out_len}").requests(n)
    cfg = LoadConfig(concurrency=concurrency, num_prompts=n)
    t = time.perf_counter()
    res = asyncio.run(run_load(url, MODEL, requests, cfg))
    wall = time.perf_counter() - t
    return wall, res.completed, int(res.output_tok_s * res.duration_s + 0.5) if res.completed else 0


VLLM_CLIENT = "reimpl"  # or "real": vLLM's own module (vllm.benchmarks.lib.endpoint_request_func), where installed


def _vllm_request_fn():
    """(request function, session factory) of vLLM's client: the real module or the reimplementation."""
    from _vllm_request_func import async_request_openai_completions, make_session
    if VLLM_CLIENT != "real":
        return async_request_openai_completions, make_session
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncInput
    from vllm.benchmarks.lib.endpoint_request_func import async_request_openai_completions as real_fn

    async def request(api_url, model, prompt, prompt_len, output_len, session):
        return await real_fn(RequestFuncInput(prompt=prompt, api_url=api_url, prompt_len=prompt_len,
                                              output_len=output_len, model=model, ignore_eos=True), session)
    return request, make_session  # make_session: the session serve.py builds (connector, timeout, trust_env)


def run_vllm(url: str, concurrency: int, n: int, out_len: int) -> tuple[float, int, int]:
    from autotune.loadgen.workload import parse_workload

    request_fn, make_session = _vllm_request_fn()
    requests = parse_workload(f"random:128:{out_len}").requests(n)

    async def main() -> list:
        sem = asyncio.Semaphore(concurrency)
        async with make_session(concurrency) as session:
            async def limited(spec):  # as vllm/benchmarks/serve.py: semaphore around the request function
                async with sem:
                    return await request_fn(url + "/v1/completions", MODEL, spec.prompt, spec.prompt_len,
                                            spec.output_len, session)
            return await asyncio.gather(*(asyncio.create_task(limited(r)) for r in requests))

    t = time.perf_counter()
    outs = asyncio.run(main())
    wall = time.perf_counter() - t
    ok = [o for o in outs if o.success]
    return wall, len(ok), sum(o.output_tokens for o in ok)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--requests", type=int, default=6000, help="per run (divided by out_len/64 for long outputs)")
    p.add_argument("--out-lens", default="1,64,512")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--vllm-client", choices=["reimpl", "real"], default="reimpl",
                   help="real: vLLM's own benchmark module (needs vLLM installed, e.g. on the GPU machine)")
    p.add_argument("--cores", default="0,1", help="client core, then one server process per further core")
    args = p.parse_args()
    global VLLM_CLIENT
    VLLM_CLIENT = args.vllm_client
    client_core, *server_cores = (int(x) for x in args.cores.split(","))
    os.sched_setaffinity(0, {client_core})
    print(f"client on core {client_core}, server on core(s) {','.join(map(str, server_cores))}, "
          f"concurrency {args.concurrency}, cpus={os.cpu_count()}, vllm client: {VLLM_CLIENT}")
    print(f"{'out_len':>7} {'client':>6} {'requests':>8} {'wall_s':>7} {'req/s':>8} {'tok/s':>9} "
          f"{'client busy':>11} {'server busy':>11}")
    for out_len in (int(x) for x in args.out_lens.split(",")):
        n = max(args.concurrency * 4, args.requests // max(1, out_len // 64))
        best: dict[str, tuple[float, float]] = {}
        with Server(out_len, server_cores) as server:
            url = server.url
            run_ours(url, args.concurrency, args.concurrency * 2, out_len)  # warm the server and imports
            for rep in range(args.repeats):
                order = [("ours", run_ours), ("vllm", run_vllm)]
                for name, fn in order if rep % 2 == 0 else order[::-1]:
                    s0, c0, w0 = server.cpu_s(), time.process_time(), time.perf_counter()
                    wall, done, toks = fn(url, args.concurrency, n, out_len)
                    outer_s = time.perf_counter() - w0  # also building the requests: the CPU times' span
                    busy_client = (time.process_time() - c0) / outer_s
                    busy_server = (server.cpu_s() - s0) / outer_s / len(server_cores)
                    rps, tps = done / wall, toks / wall
                    print(f"{out_len:>7} {name:>6} {done:>8} {wall:>7.2f} {rps:>8.0f} {tps:>9.0f} "
                          f"{busy_client:>11.0%} {busy_server:>11.0%}", flush=True)
                    if done != n:
                        print(f"        warning: {n - done} requests failed for {name}")
                    best[name] = max(best.get(name, (0.0, 0.0)), (rps, tps))
        print(f"{out_len:>7}  best: ours {best['ours'][0]:.0f} req/s {best['ours'][1]:.0f} tok/s | vllm "
              f"{best['vllm'][0]:.0f} req/s {best['vllm'][1]:.0f} tok/s | ratio "
              f"{best['ours'][0] / best['vllm'][0]:.2f}x", flush=True)


if __name__ == "__main__":
    main()
