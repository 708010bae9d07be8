"""A tiny OpenAI-compatible streaming server with known timing and injectable faults, for tests and
benchmarks of the load generator (not a model of a GPU: that is the sim engine's job).

Run in its own process so its event loop never shares the client's GIL::

    with FakeServer(ttft_ms=200, itl_ms=50) as srv:   # srv.url, srv.configure(...), srv.stats()
        ...

or ``python -m autotune.loadgen.fakeserver --port 0 --port-file F``. Behaviour is set with ``POST /_config``
(JSON, see :data:`DEFAULTS`); ``GET /_stats`` returns request counts and the last request body's shape.
``/metrics`` has vLLM's gauges and its TTFT/ITL/E2E histograms' sums and counts, timed when each token is written.
Token ``k`` of a request is sent at arrival + TTFT + k * ITL (absolute deadlines, no drift).
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
import urllib.request
from pathlib import Path
from typing import Any

from aiohttp import web

__all__ = ["FakeServer", "DEFAULTS", "make_app"]

DEFAULTS: dict[str, Any] = {
    "models": ["fake-model"],
    "ttft_ms": 0.0,
    "itl_ms": 0.0,
    # "" | http500 | http404 | malformed | disconnect | no_tokens | stream_error | hang | no_done
    "fault": "",
    "fault_every": 1,          # the fault hits every k-th request (1: all)
    "pings": False,            # ": ping" comments and SSE lines split across writes
    "sim_stamps": False,       # add sim_arrival_s / sim_token_times_s (virtual times, sent at once)
    "sim_tokens_per_chunk": 1,
    "usage": True,             # send the final usage chunk
}


def _observe(histogram: list, seconds: float) -> None:
    histogram[0] += seconds
    histogram[1] += 1


def make_app(config: dict[str, Any] | None = None) -> web.Application:
    cfg = {**DEFAULTS, **(config or {})}
    state = {"requests": 0, "running": 0, "max_running": 0, "last_body": {}, "preemptions": 0,
             "latency": {"ttft": [0.0, 0], "itl": [0.0, 0], "e2el": [0.0, 0]}}  # [sum_s, count] each
    app = web.Application(client_max_size=256 * 1024 * 1024)

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in cfg["models"]]})

    async def set_config(request: web.Request) -> web.Response:
        cfg.clear()
        cfg.update({**DEFAULTS, **await request.json()})
        state.update(requests=0, max_running=0, last_body={})
        return web.json_response(cfg)

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(state)

    async def metrics(_: web.Request) -> web.Response:
        lines = [
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f'vllm:kv_cache_usage_perc{{model_name="{cfg["models"][0]}"}} {min(1.0, state["running"] / 100)}',
            f'vllm:num_requests_running{{model_name="{cfg["models"][0]}"}} {state["running"]}',
            f'vllm:num_requests_waiting{{model_name="{cfg["models"][0]}"}} 0.0',
            "# TYPE vllm:num_preemptions_total counter",
            f'vllm:num_preemptions_total{{model_name="{cfg["models"][0]}"}} {float(state["preemptions"])}',
        ]
        for key, name in (("ttft", "time_to_first_token"), ("itl", "inter_token_latency"),
                          ("e2el", "e2e_request_latency")):
            total_s, count = state["latency"][key]
            lines += [f"# TYPE vllm:{name}_seconds histogram",
                      f'vllm:{name}_seconds_sum{{model_name="{cfg["models"][0]}"}} {total_s}',
                      f'vllm:{name}_seconds_count{{model_name="{cfg["models"][0]}"}} {float(count)}']
        return web.Response(text="\n".join(lines) + "\n")

    async def complete(request: web.Request) -> web.StreamResponse:
        arrival = time.perf_counter()
        body = await request.json()
        chat = request.path.endswith("/chat/completions")
        state["requests"] += 1
        index = state["requests"]
        state["last_body"] = _shape(body)
        if body.get("model") not in cfg["models"]:
            return web.json_response({"error": {"message": f"model {body.get('model')!r} not found"}}, status=404)
        fault = cfg["fault"] if cfg["fault"] and index % max(1, int(cfg["fault_every"])) == 0 else ""
        if fault == "http500":
            return web.json_response({"error": {"message": "internal error"}}, status=500)
        if fault == "http404":
            return web.json_response({"error": {"message": "not found"}}, status=404)
        state["running"] += 1
        state["max_running"] = max(state["max_running"], state["running"])
        state["preemptions"] += 1 if index % 10 == 0 else 0
        try:
            return await _stream(request, body, chat, arrival, index, fault)
        finally:
            state["running"] -= 1

    async def _stream(request: web.Request, body: dict[str, Any], chat: bool, arrival: float, index: int,
                      fault: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        n_out = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        prompt = body.get("prompt") if not chat else body.get("messages")
        n_in = len(prompt) if isinstance(prompt, list) and not chat else len(json.dumps(prompt)) // 4
        ttft_s, itl_s = cfg["ttft_ms"] / 1000.0, cfg["itl_ms"] / 1000.0
        base = {"id": f"cmpl-{index}", "object": "chat.completion.chunk" if chat else "text_completion",
                "model": body.get("model")}

        async def send(obj: Any) -> None:
            data = b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"
            if cfg["pings"]:
                await resp.write(b": ping\n\n")
                half = len(data) // 2
                await resp.write(data[:half])
                await resp.write(data[half:])
            else:
                await resp.write(data)

        def choice(text: str, last: bool) -> dict[str, Any]:
            finish = "length" if last else None
            if chat:
                return {"index": 0, "delta": {"content": text}, "finish_reason": finish}
            return {"index": 0, "text": text, "finish_reason": finish}

        if fault == "hang":
            await asyncio.sleep(3600)
        if fault == "stream_error":
            await send({"error": {"message": "engine died", "code": 500}})
            return resp
        if fault == "malformed":
            await send(b'{"choices": [{"text": "x"')
            await send(b"[DONE]")
            return resp
        if chat:
            await send({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        if fault == "no_tokens":
            n_out = 0
        if cfg["sim_stamps"]:
            v_arrival = 1000.0 + index * 0.5  # virtual clock, independent of wall time
            per = max(1, int(cfg["sim_tokens_per_chunk"]))
            for k0 in range(0, n_out, per):
                ks = range(k0, min(n_out, k0 + per))
                await send({**base, "choices": [choice("tok" * len(ks), ks[-1] == n_out - 1)],
                            "sim_arrival_s": v_arrival, "sim_token_times_s": [v_arrival + ttft_s + k * itl_s for k in ks]})
        else:
            loop = asyncio.get_running_loop()
            start = loop.time() - (time.perf_counter() - arrival)
            latency, sent_at = state["latency"], arrival
            for k in range(n_out):
                delay = start + ttft_s + k * itl_s - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await send({**base, "choices": [choice(f" t{k}", k == n_out - 1)]})
                now = time.perf_counter()
                _observe(latency["itl" if k else "ttft"], now - sent_at)
                if k == n_out - 1:
                    _observe(latency["e2el"], now - arrival)
                sent_at = now
                if fault == "disconnect" and k == 1:
                    request.transport.close()  # type: ignore[union-attr]
                    return resp
        if cfg["usage"]:
            await send({**base, "choices": [], "usage": {"prompt_tokens": n_in, "completion_tokens": n_out,
                                                         "total_tokens": n_in + n_out}})
        if fault != "no_done":
            await send(b"[DONE]")
        await resp.write_eof()
        return resp

    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", lambda _: web.Response(text=""))
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/completions", complete)
    app.router.add_post("/v1/chat/completions", complete)
    app.router.add_post("/_config", set_config)
    app.router.add_get("/_stats", stats)
    return app


def _shape(body: dict[str, Any]) -> dict[str, Any]:
    """The request body without bulky values: prompt length, image count, the scalar options."""
    out = {k: v for k, v in body.items() if k not in ("prompt", "messages")}
    if "prompt" in body:
        out["prompt_type"] = "ids" if isinstance(body["prompt"], list) else "text"
        out["prompt_items"] = len(body["prompt"])
    if "messages" in body:
        parts = [p for m in body["messages"] for p in (m.get("content") if isinstance(m.get("content"), list) else [])]
        out["image_parts"] = sum(1 for p in parts if p.get("type") == "image_url")
        out["text_parts"] = sum(1 for p in parts if p.get("type") == "text")
    return out


class FakeServer:
    """Start :func:`make_app` in a subprocess on a free 127.0.0.1 port; stop it on exit.
    ``cpu`` pins the server process to one core (benchmarks)."""

    def __init__(self, cpu: int | None = None, **config: Any) -> None:
        self.config = {**DEFAULTS, **config}
        self.cpu = cpu
        self.url = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> FakeServer:
        self._dir = tempfile.TemporaryDirectory(prefix="fakeserver-")
        port_file, log = Path(self._dir.name) / "port", Path(self._dir.name) / "log"
        cmd = [sys.executable, "-m", "autotune.loadgen.fakeserver", "--port-file", str(port_file),
               "--config", json.dumps(self.config)]
        if self.cpu is not None:
            cmd += ["--cpu", str(self.cpu)]
        with open(log, "wb") as log_f:
            self._proc = subprocess.Popen(cmd, stdout=log_f, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"fake server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{int(port_file.read_text())}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def configure(self, **config: Any) -> None:
        """Replace the behaviour (unspecified keys back to :data:`DEFAULTS`) and reset the counters."""
        self.config = {**DEFAULTS, **config}
        _post(self.url + "/_config", self.config)

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/_stats", timeout=10) as r:
            return json.loads(r.read())


def _post(url: str, obj: Any) -> Any:
    req = urllib.request.Request(url, data=json.dumps(obj).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", default="")
    parser.add_argument("--config", default="{}", help="JSON behaviour, see DEFAULTS")
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})

    async def serve() -> None:
        runner = web.AppRunner(make_app(json.loads(args.config)), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=4096)
        await site.start()
        port = runner.addresses[0][1]
        if args.port_file:
            tmp = args.port_file + ".tmp"
            Path(tmp).write_text(str(port))
            os.replace(tmp, args.port_file)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
