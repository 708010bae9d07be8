"""A fixed-latency vLLM-compatible server with injectable faults, for tests and benchmarks of the load
generator (not a model of a GPU: that is the sim engine's job). vLLM's API is
:class:`autotune.vllm_api.responder.Responder`'s; this module only times the tokens and breaks things.

Run in its own process so its event loop never shares the client's GIL::

    with FakeServer(ttft_ms=200, itl_ms=50) as srv:   # srv.url, srv.configure(...), srv.stats()
        ...

or ``python -m autotune.testing.fakeserver --port 0 --port-file F``. Behaviour is set with ``POST /_config``
(JSON, see :data:`DEFAULTS`); ``GET /_stats`` returns request counts and the last request body's shape.
Every request gets its ``max_tokens`` tokens, one per chunk; token ``k`` is released at arrival + TTFT + k * ITL
(absolute deadlines, no drift). ``/metrics`` has vLLM's gauges and its TTFT/ITL/E2E histograms' sums and
counts, observed as each token is released (as vLLM's engine does, before the API server writes it).
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
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from aiohttp import web

from autotune.vllm_api import metrics as m
from autotune.vllm_api.request import ApiError, GenerationRequest, ServedModel
from autotune.vllm_api.responder import EventKind, Generation, Responder, TokenBatch

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
MAX_MODEL_LEN = 131072
IMAGE_TOKENS = 256  # per image, whatever its size
SIM_ARRIVAL_S = 1000.0  # virtual arrival of request k: SIM_ARRIVAL_S + 0.5 k, independent of wall time
_MALFORMED = b'{"choices": [{"text": "x"'


class _FixedLatency:
    """The token source: fixed TTFT and ITL, the configured faults."""

    def __init__(self, config: dict[str, Any] | None) -> None:
        self.cfg = {**DEFAULTS, **(config or {})}
        self.requests = self.running = self.max_running = self.preemptions = 0
        self.last_body: dict[str, Any] = {}
        self.latency = {h: m.HistogramTotals() for h in (m.TTFT, m.ITL, m.E2E)}

    def configure(self, config: dict[str, Any]) -> None:
        self.cfg = {**DEFAULTS, **config}
        self.requests = self.max_running = 0
        self.last_body = {}

    def stats(self) -> dict[str, Any]:
        return {"requests": self.requests, "running": self.running, "max_running": self.max_running,
                "preemptions": self.preemptions, "last_body": self.last_body}

    def start(self, request: GenerationRequest) -> _Generation:
        self.requests += 1
        index = self.requests
        self.last_body = _shape(request.body)
        cfg = self.cfg
        fault = cfg["fault"] if cfg["fault"] and index % max(1, int(cfg["fault_every"])) == 0 else ""
        if fault == "http500":
            raise ApiError(500, "internal error", "InternalServerError")
        if fault == "http404":
            raise ApiError(404, "not found", "NotFoundError")
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self.preemptions += 1 if index % 10 == 0 else 0
        return _Generation(self, request, index, fault)

    def observe(self, histogram: m.Metric, seconds: float) -> None:
        self.latency[histogram] = self.latency[histogram].observe(seconds)

    def metrics(self) -> m.MetricValues:
        return {m.KV_CACHE_USAGE: min(1.0, self.running / 100), m.RUNNING: self.running, m.WAITING: 0,
                m.PREEMPTIONS: self.preemptions, **self.latency}


class _Generation:
    def __init__(self, source: _FixedLatency, request: GenerationRequest, index: int, fault: str) -> None:
        self.source, self.request, self.fault = source, request, fault
        self.arrival_s: float | None = SIM_ARRIVAL_S + index * 0.5 if source.cfg["sim_stamps"] else None
        self.token_events = 0  # token chunks written so far (the disconnect fault counts them)

    async def batches(self) -> AsyncIterator[TokenBatch]:
        cfg, req = self.source.cfg, self.request
        if self.fault == "hang":
            await asyncio.sleep(3600)
        if self.fault == "stream_error":
            raise ApiError(500, "engine died", "InternalServerError")
        n_out = 0 if self.fault == "no_tokens" else req.max_tokens
        if n_out == 0:
            yield TokenBatch(0, "length")  # a closing chunk without a token
            return
        ttft_s, itl_s = cfg["ttft_ms"] / 1000.0, cfg["itl_ms"] / 1000.0
        if self.arrival_s is not None:  # virtual times, all sent at once
            per = max(1, int(cfg["sim_tokens_per_chunk"]))
            for k0 in range(0, n_out, per):
                ks = range(k0, min(n_out, k0 + per))
                yield TokenBatch(len(ks), "length" if ks[-1] == n_out - 1 else None,
                                 [self.arrival_s + ttft_s + k * itl_s for k in ks])
            return
        loop = asyncio.get_running_loop()
        start = loop.time() - (time.perf_counter() - req.received_s)
        last = req.received_s
        for k in range(n_out):
            delay = start + ttft_s + k * itl_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.perf_counter()
            self.source.observe(m.ITL if k else m.TTFT, now - last)
            last = now
            if k == n_out - 1:
                self.source.observe(m.E2E, now - req.received_s)
            yield TokenBatch(1, "length" if k == n_out - 1 else None)

    def close(self) -> None:
        self.source.running -= 1


class _FaultyResponder(Responder):
    """vLLM's responses, with the wire faults no vLLM makes."""

    source: _FixedLatency

    async def write_event(self, resp: web.StreamResponse, kind: EventKind, data: bytes,
                          generation: Generation) -> None:
        gen, cfg = cast(_Generation, generation), self.source.cfg
        if (kind == "usage" and not cfg["usage"]) or (kind == "done" and gen.fault == "no_done"):
            return
        if gen.fault == "malformed" and kind != "done":
            data = _MALFORMED
        event = b"data: " + data + b"\n\n"
        if cfg["pings"]:
            half = len(event) // 2
            for part in (b": ping\n\n", event[:half], event[half:]):
                await resp.write(part)
        else:
            await resp.write(event)
        if kind == "tokens" and gen.fault == "disconnect":
            gen.token_events += 1
            if gen.token_events == 2:
                raise ConnectionResetError("fault: the server drops the connection")


def make_app(config: dict[str, Any] | None = None) -> web.Application:
    source = _FixedLatency(config)
    names = tuple(source.cfg["models"])
    responder = _FaultyResponder(ServedModel(names=names, root=names[0], max_model_len=MAX_MODEL_LEN,
                                             image_tokens=lambda _width_px, _height_px: IMAGE_TOKENS), source)
    app = responder.app()

    async def set_config(request: web.Request) -> web.Response:
        source.configure(await request.json())
        responder.model = replace(responder.model, names=tuple(source.cfg["models"]))
        return web.json_response(source.cfg)

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(source.stats())

    app.router.add_post("/_config", set_config)
    app.router.add_get("/_stats", stats)
    return app


def _shape(body: Mapping[str, Any]) -> dict[str, Any]:
    """The request body without bulky values: prompt length, image count, the scalar options."""
    out = {k: v for k, v in body.items() if k not in ("prompt", "messages")}
    if "prompt" in body:
        out["prompt_type"] = "ids" if isinstance(body["prompt"], list) else "text"
        out["prompt_items"] = len(body["prompt"])
    if "messages" in body:
        contents = [msg.get("content") for msg in body["messages"]]
        parts = [p for content in contents if isinstance(content, list) for p in content]
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
        cmd = [sys.executable, "-m", "autotune.testing.fakeserver", "--port-file", str(port_file),
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
