"""The sim engine's HTTP server: vLLM's OpenAI API on aiohttp, tokens timed by the scheduler in virtual time.

Clock: virtual = (wall − wall0) × time_scale while the engine keeps up. A busy engine's steps follow each
other in virtual time (each lasts its modelled duration; its tokens are released when the wall clock reaches
the step's end); only an idle engine jumps to the wall-mapped time. A request's arrival is stamped with the
wall-mapped time, capped at the end of the step in flight (Engine.arrival_v), so a CPU that cannot keep up
with the time scale slows the run down without distorting the modelled figures. Streams flush the tokens
gathered since their last flush in one SSE chunk (at most every ~10 ms of wall time; the first and the last
token at once); every chunk carries ``sim_arrival_s`` and ``sim_token_times_s`` (virtual seconds).

Prompt strings are counted as whitespace-separated words (one token each), or len/4 when words are
unusually long (text without spaces); token-id prompts count exactly.
"""
from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import random
import signal
import struct
import sys
import time
import uuid
from typing import Any

import numpy as np
from aiohttp import web

from autotune.errors import EngineStartError, UsageError
from autotune.gpus import load_gpu
from autotune.models import resolve_model
from autotune.sim.args import ServeArgs
from autotune.sim.engine import EngineSetup, setup_engine
from autotune.sim.replica import Engine, Stream
from autotune.sim.startup import failure_lines, startup_report

__all__ = ["serve_main", "SimServer", "estimate_text_tokens", "png_size"]

MAX_STARTUP_WAIT_S = 3.0
_FILLER = (" the", " model", " is", " a", " simulated", " token", " stream", " of", " text", " and")


def estimate_text_tokens(text: str) -> int:
    words = len(text.split())
    if words == 0 or len(text) / words > 12:  # no spaces to speak of: ~4 characters per token
        return max(1, math.ceil(len(text) / 4))
    return words


def png_size(data_url: str) -> tuple[int, int] | None:
    """Width and height from a PNG data URL's IHDR chunk (only the first bytes are decoded)."""
    _, _, payload = data_url.partition(",")
    try:
        head = base64.b64decode(payload[:44] + "=" * (-len(payload[:44]) % 4))
    except (ValueError, TypeError):
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


class ApiError(Exception):
    def __init__(self, status: int, message: str, err_type: str = "BadRequestError") -> None:
        super().__init__(message)
        self.status, self.message, self.err_type = status, message, err_type

    def response(self) -> web.Response:
        body = {"error": {"message": self.message, "type": self.err_type, "param": None, "code": self.status}}
        return web.json_response(body, status=self.status)


class SimServer:
    def __init__(self, args: ServeArgs, setup: EngineSetup) -> None:
        self.args, self.setup = args, setup
        self.model_name = args.served_model_name
        self.wall0 = time.monotonic()
        dp = int(setup.flags["data-parallel-size"] or 1)
        self.engines = [Engine(setup, args.time_scale, self.wall0) for _ in range(dp)]
        self.rng = random.Random(args.seed)
        self.created = int(time.time())
        self.max_model_len = setup.plan.max_model_len
        self.limit_images = int((setup.flags.get("limit-mm-per-prompt") or {}).get("image", 1 << 30))

    # -- app --------------------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/health", self.health)
        app.router.add_get("/ping", self.health)
        app.router.add_get("/version", self.version)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        from autotune.sim.startup import VLLM_VERSION

        return web.json_response({"version": VLLM_VERSION, "engine": "autotune-sim"})

    async def models(self, request: web.Request) -> web.Response:
        card = {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "vllm",
                "root": self.args.model, "parent": None, "max_model_len": self.max_model_len}
        return web.json_response({"object": "list", "data": [card]})

    async def metrics(self, request: web.Request) -> web.Response:
        label = f'engine="0",model_name="{self.model_name}"'
        s = [e.sched for e in self.engines]
        rows = [
            ("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.",
             sum(x.num_running for x in s)),
            ("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.",
             sum(x.num_waiting for x in s)),
            ("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.",
             sum(x.kv_usage for x in s) / len(s)),
            ("vllm:num_preemptions_total", "counter", "Cumulative number of preemption from the engine.",
             sum(x.num_preemptions_total for x in s)),
            ("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.",
             sum(x.prompt_tokens_total for x in s)),
            ("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.",
             sum(x.generation_tokens_total for x in s)),
        ]
        out = []
        for name, kind, help_text, value in rows:
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name}{{{label}}} {float(value)}"]
        return web.Response(text="\n".join(out) + "\n", content_type="text/plain", charset="utf-8")

    # -- requests ---------------------------------------------------------------------------------------------
    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "Request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "Request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != self.model_name:
            raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError")
        return body

    async def completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
                prompt = prompt[0]
            if isinstance(prompt, str):
                prompt_tokens = estimate_text_tokens(prompt)
            elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
                prompt_tokens = len(prompt)
            else:
                raise ApiError(400, "prompt must be a string or a list of token ids (one prompt per request)")
            return await self._generate(request, body, prompt_tokens, [], chat=False,
                                        default_max=16)
        except ApiError as e:
            return e.response()

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise ApiError(400, "messages must be a non-empty list")
            tokens, images = 0, []
            for msg in messages:
                content = msg.get("content") if isinstance(msg, dict) else None
                if isinstance(content, str):
                    tokens += estimate_text_tokens(content)
                elif isinstance(content, list):
                    for part in content:
                        kind = part.get("type") if isinstance(part, dict) else None
                        if kind == "text":
                            tokens += estimate_text_tokens(str(part.get("text", "")))
                        elif kind == "image_url":
                            url = (part.get("image_url") or {}).get("url", "")
                            images.append(png_size(url) or (512, 512))
                        else:
                            raise ApiError(400, f"unsupported content part type {kind!r}")
                elif content is not None:
                    raise ApiError(400, "message content must be a string or a list of parts")
            if images:
                if not self.setup.model.is_vlm:
                    raise ApiError(400, f"{self.args.model} is not a multimodal model; it cannot take images")
                if len(images) > self.limit_images:
                    raise ApiError(400, f"At most {self.limit_images} image(s) may be provided in one prompt.")
                tokens += sum(self.setup.perf.image_tokens(w, h) for w, h in images)
            return await self._generate(request, body, max(1, tokens), images, chat=True, default_max=None)
        except ApiError as e:
            return e.response()

    def _pick_engine(self) -> Engine:
        return min(self.engines, key=lambda e: e.outstanding)

    async def _generate(self, request: web.Request, body: dict[str, Any], prompt_tokens: int,
                        images: list[tuple[int, int]], chat: bool, default_max: int | None) -> web.StreamResponse:
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens")) if chat else body.get("max_tokens")
        room = self.max_model_len - prompt_tokens
        if max_tokens is None:
            max_tokens = default_max if default_max is not None else room
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ApiError(400, "max_tokens must be a positive integer")
        if prompt_tokens + max_tokens > self.max_model_len:
            raise ApiError(400, f"This model's maximum context length is {self.max_model_len} tokens. However, "
                                f"you requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the "
                                f"messages, {max_tokens} in the completion). Please reduce the length of the "
                                f"messages or completion.")
        n_out = max_tokens if body.get("ignore_eos") else self.rng.randint(1, max_tokens)
        finish_reason = "length" if n_out == max_tokens else "stop"
        engine = self._pick_engine()
        stream = Stream(arrival_s=engine.arrival_v(), prompt_tokens=prompt_tokens, max_out=n_out)
        stream.last_flush_wall = time.monotonic()
        slot = engine.submit(stream, self.setup.perf.encoder_time_s(images))
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        try:
            if body.get("stream"):
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                return await self._stream(request, rid, chat, stream, finish_reason, include_usage)
            while not stream.finished:
                await stream.event.wait()
                stream.event.clear()
            return web.json_response(self._full(rid, chat, stream, finish_reason))
        finally:
            engine.abort(slot, stream)

    def _usage(self, stream: Stream) -> dict[str, int]:
        n = len(stream.times)
        return {"prompt_tokens": stream.prompt_tokens, "completion_tokens": n,
                "total_tokens": stream.prompt_tokens + n}

    @staticmethod
    def _text(start: int, count: int) -> str:
        return "".join(_FILLER[(start + i) % len(_FILLER)] for i in range(count))

    def _full(self, rid: str, chat: bool, stream: Stream, finish_reason: str) -> dict[str, Any]:
        text = self._text(0, len(stream.times))
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": self.model_name, "choices": [choice], "usage": self._usage(stream),
                "sim_arrival_s": stream.arrival_s, "sim_token_times_s": list(stream.times)}

    async def _stream(self, request: web.Request, rid: str, chat: bool, stream: Stream, finish_reason: str,
                      include_usage: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choices: list[dict[str, Any]], times: list[float], usage: dict[str, int] | None = None) -> bytes:
            data = {"id": rid, "object": obj, "created": created, "model": self.model_name, "choices": choices,
                    "sim_arrival_s": stream.arrival_s, "sim_token_times_s": times}
            if usage is not None:
                data["usage"] = usage
            return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"

        if chat:
            await resp.write(chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                     "finish_reason": None}], []))
        while True:
            await stream.event.wait()
            stream.event.clear()
            times = stream.times[stream.sent:]
            if not times and not stream.finished:
                continue
            text = self._text(stream.sent, len(times))
            stream.sent += len(times)
            stream.last_flush_wall = time.monotonic()
            done = stream.finished and stream.sent == len(stream.times)
            reason = finish_reason if done else None
            if chat:
                choice = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": reason}
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason, "stop_reason": None}
            await resp.write(chunk([choice], times))
            if done:
                break
        if include_usage:
            await resp.write(chunk([], [], self._usage(stream)))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


# -- process entry ------------------------------------------------------------------------------------------
def _out(line: str, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    stream.write(line + "\n")
    stream.flush()


async def _serve(args: ServeArgs, setup: EngineSetup) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    report = startup_report(setup, args.model, args.host, args.port)
    wait_s = args.startup_delay_s if args.startup_delay_s is not None else min(
        MAX_STARTUP_WAIT_S, report.times.total_s / args.time_scale)
    t0 = time.monotonic()
    for frac, line in report.lines:
        delay = t0 + frac * wait_s - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return 0  # signalled while starting
            except asyncio.TimeoutError:
                pass
        _out(line)
    server = SimServer(args, setup)
    runner = web.AppRunner(server.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, shutdown_timeout=0.5)
    try:
        await site.start()
    except OSError as e:
        _out(f"ERROR:    [Errno {e.errno}] error while attempting to bind on address "
             f"('{args.host}', {args.port}): {e.strerror.lower() if e.strerror else e}", err=True)
        await runner.cleanup()
        return 1
    server.wall0 = time.monotonic()
    for e in server.engines:
        e.wall0 = server.wall0
    tasks = [asyncio.create_task(e.run()) for e in server.engines]
    _out(f"INFO:     Started server process [{os.getpid()}]", err=True)
    _out("INFO:     Waiting for application startup.", err=True)
    _out("INFO:     Application startup complete.", err=True)
    await stop.wait()
    _out("INFO:     Shutting down", err=True)
    for e in server.engines:
        e.stopping = True
        e.wake.set()
        for st in list(e.streams.values()):
            st.finished = True
            st.event.set()
    for t in tasks:
        t.cancel()
    await _cleanup(runner)
    _out("INFO:     Application shutdown complete.", err=True)
    return 0


async def _cleanup(runner: web.AppRunner) -> None:
    try:
        await asyncio.wait_for(runner.cleanup(), 1.0)
    except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - leaving anyway
        pass


def serve_main(args: ServeArgs) -> int:
    """Run the sim server until SIGTERM/SIGINT. Returns the process exit code."""
    try:
        model = resolve_model(args.model)
        gpu = load_gpu(args.gpu_type)
        setup = setup_engine(model, gpu, args.flags)
    except UsageError as e:
        _out(f"vllm serve: error: {e}", err=True)
        return 2
    except EngineStartError as e:
        for line in failure_lines(str(e), e.failure_class):
            _out(line, err=True)
        return 1
    np.seterr(all="ignore")
    return asyncio.run(_serve(args, setup))
