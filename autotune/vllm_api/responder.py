"""One OpenAI-compatible streaming responder, as vLLM answers, over a pluggable token source.

The responder owns the HTTP API: ``/health`` (and ``/ping``), ``/version``, ``/v1/models``, ``/metrics``,
``/v1/completions`` and ``/v1/chat/completions`` with and without ``stream``; the request checks
(:mod:`autotune.vllm_api.request`); the response bodies and their text. What a server built on it differs in is
its :class:`TokenSource`: when each request's tokens arrive and how many, and the ``/metrics`` values.

SSE as vLLM 0.26 writes it: compact JSON events ``data: {...}\\n\\n``. On the chat endpoint the first event, sent
with the first output, carries only the assistant role; then one chunk per token batch, the last with its
``finish_reason``; with ``stream_options.include_usage`` an event with empty ``choices`` and the ``usage``; then
``data: [DONE]``. An :class:`ApiError` raised by the token source mid-stream becomes an error event, then
``[DONE]``. A token source with a virtual clock (its generation's ``arrival_s`` set) adds ``sim_arrival_s`` and
``sim_token_times_s`` (virtual seconds) to every event and to a whole response; the load generator then times
requests by them instead of its wall clock.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson
from aiohttp import web

from autotune.vllm_api import VLLM_VERSION
from autotune.vllm_api.metrics import MetricValues, render_metrics
from autotune.vllm_api.request import ApiError, GenerationRequest, ServedModel, parse_request

__all__ = ["Responder", "TokenSource", "Generation", "TokenBatch", "EventKind", "ApiError", "GenerationRequest",
           "ServedModel", "bind_error_line", "token_text"]

EventKind = Literal["role", "tokens", "usage", "error", "done"]
_DONE = b"[DONE]"
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
_PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_FILLER = (" the", " model", " is", " a", " simulated", " token", " stream", " of", " text", " and")


@dataclass(frozen=True, slots=True)
class TokenBatch:
    """Tokens released together: one SSE chunk."""

    count: int
    finish_reason: str | None = None  # set on a generation's last batch: "length" or "stop"
    times_s: Sequence[float] = ()  # each token's virtual time, from a virtual-clock source; else empty


class Generation(Protocol):
    """One request's tokens, as its source releases them."""

    arrival_s: float | None  # the request's virtual arrival time, from a virtual-clock source; else None

    def batches(self) -> AsyncIterator[TokenBatch]:
        """The token batches, the last with its ``finish_reason``. May raise :class:`ApiError` (an engine error)."""
        ...

    def close(self) -> None:
        """Called once when the response ends, finished or not (the client may have gone): free the request."""
        ...


class TokenSource(Protocol):
    """What a server built on the responder differs in: when tokens arrive and how many."""

    def start(self, request: GenerationRequest) -> Generation:
        """Admit a checked request. May raise :class:`ApiError` to refuse it."""
        ...

    def metrics(self) -> MetricValues:
        """The ``/metrics`` values now."""
        ...


def token_text(start: int, count: int) -> str:
    """The text of output tokens ``start .. start + count - 1`` (a made-up word each)."""
    return "".join(_FILLER[(start + i) % len(_FILLER)] for i in range(count))


def bind_error_line(host: str, port: int, err: OSError) -> str:
    """uvicorn's line when vLLM cannot listen (the launcher tells a taken port by it)."""
    reason = err.strerror.lower() if err.strerror else str(err)
    return f"ERROR:    [Errno {err.errno}] error while attempting to bind on address ('{host}', {port}): {reason}"


class Responder:
    """The aiohttp app of a vLLM-compatible server: ``Responder(model, source).app()``.

    :meth:`write_event` is the one place SSE events reach the wire; the test fixtures override it to inject
    faults that no vLLM makes (pings, split lines, broken JSON, a dropped connection)."""

    def __init__(self, model: ServedModel, source: TokenSource) -> None:
        self.model, self.source = model, source
        self.created = int(time.time())

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)  # image data URLs
        app.router.add_get("/health", self.health)
        app.router.add_get("/ping", self.health)
        app.router.add_get("/version", self.version)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {"version": VLLM_VERSION}
        if self.model.sim_time_scale is not None:
            body["sim_time_scale"] = self.model.sim_time_scale
        return web.json_response(body)

    async def models(self, request: web.Request) -> web.Response:
        m = self.model
        cards = [{"id": name, "object": "model", "created": self.created, "owned_by": "vllm", "root": m.root,
                  "parent": None, "max_model_len": m.max_model_len} for name in m.names]
        return web.json_response({"object": "list", "data": cards})

    async def metrics(self, request: web.Request) -> web.Response:
        text = render_metrics(self.source.metrics(), {"engine": "0", "model_name": self.model.names[0]})
        return web.Response(body=text.encode(), headers={"Content-Type": _PROMETHEUS_TYPE})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def write_event(self, resp: web.StreamResponse, kind: EventKind, data: bytes,
                          generation: Generation) -> None:
        """Write one SSE event: ``data`` is its JSON (or ``[DONE]``)."""
        await resp.write(b"data: " + data + b"\n\n")

    # -- one request ------------------------------------------------------------------------------------------
    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        received_s = time.perf_counter()
        try:
            req = parse_request(await request.read(), chat, self.model, received_s)
            generation = self.source.start(req)
        except ApiError as e:
            return _error_response(e)
        try:
            if req.stream:
                return await self._stream(request, req, generation)
            return await self._whole(req, generation)
        finally:
            generation.close()

    async def _stream(self, request: web.Request, req: GenerationRequest,
                      generation: Generation) -> web.StreamResponse:
        resp = web.StreamResponse(headers=_SSE_HEADERS)
        await resp.prepare(request)
        events = _Events(req, generation.arrival_s)
        sent = 0
        try:
            try:
                async for batch in generation.batches():
                    if req.chat and not events.role_sent:
                        await self.write_event(resp, "role", events.role(), generation)
                    data = events.tokens(token_text(sent, batch.count), batch.finish_reason, batch.times_s)
                    sent += batch.count
                    await self.write_event(resp, "tokens", data, generation)
                if req.include_usage:
                    await self.write_event(resp, "usage", events.usage(sent), generation)
            except ApiError as e:
                await self.write_event(resp, "error", orjson.dumps(e.body()), generation)
            await self.write_event(resp, "done", _DONE, generation)
            await resp.write_eof()
        except ConnectionResetError:  # the client went away (or a fixture drops the line): close, send no more
            if request.transport is not None:
                request.transport.close()
        return resp

    async def _whole(self, req: GenerationRequest, generation: Generation) -> web.Response:
        count, finish_reason = 0, None
        times: list[float] = []
        try:
            async for batch in generation.batches():
                count += batch.count
                times.extend(batch.times_s)
                finish_reason = batch.finish_reason or finish_reason
        except ApiError as e:
            return _error_response(e)
        text = token_text(0, count)
        if req.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish_reason, "stop_reason": None}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason,
                      "stop_reason": None, "prompt_logprobs": None}
        obj: dict[str, Any] = {
            "id": _request_id(req.chat), "object": "chat.completion" if req.chat else "text_completion",
            "created": int(time.time()), "model": req.model, "choices": [choice],
            "usage": _usage(req.prompt_tokens, count)}
        if generation.arrival_s is not None:
            obj.update(sim_arrival_s=generation.arrival_s, sim_token_times_s=times)
        return web.Response(body=orjson.dumps(obj), content_type="application/json")


class _Events:
    """The JSON of one streamed response's events."""

    __slots__ = ("head", "chat", "prompt_tokens", "arrival_s", "role_sent")

    def __init__(self, req: GenerationRequest, arrival_s: float | None) -> None:
        self.head = {"id": _request_id(req.chat), "object": "chat.completion.chunk" if req.chat else "text_completion",
                     "created": int(time.time()), "model": req.model}
        self.chat, self.prompt_tokens, self.arrival_s = req.chat, req.prompt_tokens, arrival_s
        self.role_sent = False

    def _event(self, choices: list[dict[str, Any]], times: Sequence[float] = (),
               usage: dict[str, int] | None = None) -> bytes:
        obj: dict[str, Any] = {**self.head, "choices": choices}
        if usage is not None:
            obj["usage"] = usage
        if self.arrival_s is not None:
            obj["sim_arrival_s"] = self.arrival_s
            obj["sim_token_times_s"] = times
        return orjson.dumps(obj)

    def role(self) -> bytes:
        self.role_sent = True
        return self._event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}])

    def tokens(self, text: str, finish_reason: str | None, times: Sequence[float]) -> bytes:
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "logprobs": None,
                                      "finish_reason": finish_reason}
            if finish_reason is not None:
                choice["stop_reason"] = None
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason,
                      "stop_reason": None}
        return self._event([choice], times)

    def usage(self, completion_tokens: int) -> bytes:
        return self._event([], usage=_usage(self.prompt_tokens, completion_tokens))


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens}


def _request_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex


def _error_response(e: ApiError) -> web.Response:
    return web.Response(body=orjson.dumps(e.body()), status=e.status, content_type="application/json")
