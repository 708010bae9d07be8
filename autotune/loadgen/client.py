"""Streaming OpenAI requests. The request functions never raise: every failure becomes a
:class:`RequestOutput` with ``success=False``, ``error`` and ``error_kind`` (connect, http_4xx, http_5xx,
http_other, timeout, malformed_stream, stream_error, disconnect, no_tokens, error).

Timing: wall clock (``time.perf_counter``), one timestamp per network read; TTFT to the first token chunk,
one ITL entry per token chunk after it (as vLLM's benchmark does). **Sim clock**: when chunks carry
``sim_arrival_s`` and ``sim_token_times_s`` (virtual times from our sim engine), TTFT, ITL (one entry per
modelled chunk: tokens stamped with one instant count as one, :func:`~autotune.metrics.chunk_gaps_s`) and E2E
come from those stamps and ``start_s`` is the virtual arrival, so a sim that runs faster than real time or
coalesces tokens is still measured exactly in modelled time. Without stamps, ``time_scale``
multiplies the wall-clock times.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Callable

import aiohttp

from autotune.loadgen._aiohttp_compat import skip_idle_resume
from autotune.loadgen.workload import RequestSpec
from autotune.metrics import RequestOutput, chunk_gaps_s

try:  # optional: several times faster than json for the per-chunk parse
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
    _dumps: Callable[[Any], bytes] = orjson.dumps
    _JSONError: tuple[type[Exception], ...] = (orjson.JSONDecodeError, ValueError)
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    _JSONError = (ValueError,)

__all__ = ["PreparedRequest", "prepare_request", "send_request", "request_completions", "request_chat_completions",
           "build_payload", "endpoint_path", "send_request_clocked"]

_HEADERS = {"Content-Type": "application/json"}
_DONE = b"[DONE]"


@dataclass(frozen=True)
class PreparedRequest:
    """A request serialized ahead of the run, so the hot loop only sends bytes."""

    api_url: str
    body: bytes
    prompt_len: int
    chat: bool


def endpoint_path(endpoint: str) -> str:
    return "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"


def build_payload(spec: RequestSpec, model: str, endpoint: str, ignore_eos: bool = True,
                  temperature: float | None = None) -> dict[str, Any]:
    """The OpenAI request body for ``endpoint`` ("completions" or "chat"). ``temperature`` None leaves the
    server's default, as `vllm bench serve` does: greedy decoding on a random-weight model whose tokenizer is
    smaller than its vocabulary made vLLM's detokenizer the bottleneck on the H100 (docs/results/h100-flash.md)."""
    payload: dict[str, Any] = {"model": model, "max_tokens": spec.output_len, "stream": True,
                               "stream_options": {"include_usage": True}}
    if temperature is not None:
        payload["temperature"] = temperature
    if ignore_eos:
        payload["ignore_eos"] = True
    if endpoint == "chat":
        text = spec.prompt if isinstance(spec.prompt, str) else " ".join(map(str, spec.prompt))
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        content += [{"type": "image_url", "image_url": {"url": url}} for url in spec.images]
        payload["messages"] = [{"role": "user", "content": content}]
    else:
        payload["prompt"] = spec.prompt
    return payload


def prepare_request(base_url: str, model: str, spec: RequestSpec, endpoint: str,
                    ignore_eos: bool = True, temperature: float | None = None) -> PreparedRequest:
    body = _dumps(build_payload(spec, model, endpoint, ignore_eos, temperature))
    return PreparedRequest(base_url.rstrip("/") + endpoint_path(endpoint), body, spec.prompt_len, endpoint == "chat")


async def request_completions(session: aiohttp.ClientSession, base_url: str, model: str, spec: RequestSpec, *,
                              ignore_eos: bool = True, timeout_s: float = 600.0, time_scale: float = 1.0,
                              t0_s: float = 0.0) -> RequestOutput:
    """One streaming ``/v1/completions`` request (prompt text or token ids)."""
    req = prepare_request(base_url, model, spec, "completions", ignore_eos)
    return await send_request(session, req, aiohttp.ClientTimeout(total=timeout_s), time_scale, t0_s)


async def request_chat_completions(session: aiohttp.ClientSession, base_url: str, model: str, spec: RequestSpec, *,
                                   ignore_eos: bool = True, timeout_s: float = 600.0, time_scale: float = 1.0,
                                   t0_s: float = 0.0) -> RequestOutput:
    """One streaming ``/v1/chat/completions`` request (text plus ``image_url`` parts)."""
    req = prepare_request(base_url, model, spec, "chat", ignore_eos)
    return await send_request(session, req, aiohttp.ClientTimeout(total=timeout_s), time_scale, t0_s)


async def send_request(session: aiohttp.ClientSession, req: PreparedRequest, timeout: aiohttp.ClientTimeout,
                       time_scale: float = 1.0, t0_s: float = 0.0) -> RequestOutput:
    """Send one prepared request and time its stream. ``t0_s`` is the run's perf_counter origin."""
    return (await send_request_clocked(session, req, timeout, time_scale, t0_s))[0]


async def send_request_clocked(session: aiohttp.ClientSession, req: PreparedRequest, timeout: aiohttp.ClientTimeout,
                               time_scale: float = 1.0, t0_s: float = 0.0) -> tuple[RequestOutput, bool]:
    """Like :func:`send_request`, also saying whether the times came from sim clock stamps."""
    stream = _Stream(req.chat)
    st = time.perf_counter()
    start_s = (st - t0_s) * time_scale
    try:
        async with session.post(req.api_url, data=req.body, headers=_HEADERS, timeout=timeout) as resp:
            if resp.status != 200:
                return _http_error(resp.status, await _safe_text(resp), req.prompt_len, start_s), False
            skip_idle_resume(resp)  # aiohttp 3.14's per-chunk parser re-entry (_aiohttp_compat)
            async for data in resp.content.iter_any():
                if stream.feed(data, time.perf_counter()):
                    break
    except asyncio.TimeoutError:
        return _fail("timeout", "request timed out", req.prompt_len, start_s), False
    except aiohttp.ClientConnectorError as e:
        return _fail("connect", f"cannot connect: {e}", req.prompt_len, start_s), False
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError) as e:
        return _fail("disconnect", f"connection lost: {type(e).__name__}: {e}", req.prompt_len, start_s), False
    except Exception as e:  # noqa: BLE001 - failures are data
        return _fail("error", f"{type(e).__name__}: {e}", req.prompt_len, start_s), False
    return stream.result(st, t0_s, time_scale, req.prompt_len)


class _Stream:
    """Incremental SSE parser and timer for one response. Tolerates comments (pings), ``event:``/``id:``
    lines, CRLF, lines split across reads, and ``[DONE]``."""

    __slots__ = ("chat", "buf", "done", "error_kind", "error", "times", "close_time", "usage_out", "usage_in",
                 "sim_arrival", "sim_times")

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.buf = b""
        self.done = False
        self.error_kind = ""
        self.error = ""
        self.times: list[float] = []  # wall time of each token chunk
        self.close_time: float | None = None  # an empty closing chunk's (finish_reason set): a token or not
        self.usage_out: int | None = None
        self.usage_in: int | None = None
        self.sim_arrival: float | None = None
        self.sim_times: list[float] = []

    def feed(self, data: bytes, now: float) -> bool:
        """Consume bytes read at ``now``; True when the stream is over (``[DONE]`` or an error)."""
        buf = self.buf + data if self.buf else data
        end = buf.rfind(b"\n") + 1
        if not end:
            self.buf = buf
            return False
        body, self.buf = buf[:end], buf[end:]  # complete lines; the incomplete tail waits for the next read
        tokens, plain_end = _plain_token_prefix(body, self.chat)
        if tokens:  # fast path: ordinary token chunks, counted without parsing (one timestamp per read)
            self.times.extend([now] * tokens)
            body = body[plain_end:]
        for line in body.split(b"\n"):
            if not line.startswith(b"data:"):
                continue  # blank separators, ": ping" comments, event:/id:/retry: fields
            payload = line[5:].strip()
            if payload == _DONE:
                self.done = True
                return True
            if not payload:
                continue
            if _plain_token(payload, self.chat):
                self.times.append(now)  # fast path: a plain token chunk needs no parse
            elif self._event(payload, now):
                return True
        return False

    def _event(self, payload: bytes, now: float) -> bool:
        try:
            obj = _loads(payload)
        except _JSONError:
            return self._stop("malformed_stream", f"bad JSON in stream: {payload[:80]!r}")
        if not isinstance(obj, dict):
            return self._stop("malformed_stream", f"stream event is not an object: {payload[:80]!r}")
        choices = obj.get("choices")
        if choices:
            choice = choices[0]
            if not isinstance(choice, dict):
                return self._stop("malformed_stream", "stream choice is not an object")
            if _is_token(choice, self.chat):
                self.times.append(now)
            elif choice.get("finish_reason") is not None:
                self.close_time = now
        elif "error" in obj:
            err = obj["error"]
            msg = err.get("message", err) if isinstance(err, dict) else err
            return self._stop("stream_error", f"server error in stream: {str(msg)[:200]}")
        stamps = obj.get("sim_token_times_s")
        if stamps:
            if self.sim_arrival is None:
                self.sim_arrival = obj.get("sim_arrival_s")
            self.sim_times.extend(stamps)
        usage = obj.get("usage")
        if usage:
            self.usage_out = usage.get("completion_tokens", self.usage_out)
            self.usage_in = usage.get("prompt_tokens", self.usage_in)
        return False

    def _stop(self, kind: str, error: str) -> bool:
        self.error_kind, self.error = kind, error
        return True

    def result(self, st: float, t0_s: float, time_scale: float, prompt_len: int) -> tuple[RequestOutput, bool]:
        start_s = (st - t0_s) * time_scale
        if self.error_kind:
            return _fail(self.error_kind, self.error, prompt_len, start_s), False
        if not self.done:
            return _fail("disconnect", "stream ended before [DONE]", prompt_len, start_s), False
        if not self.times and not self.sim_times:
            return _fail("no_tokens", "stream had no token chunks", prompt_len, start_s), False
        prompt_tokens = self.usage_in if isinstance(self.usage_in, int) else prompt_len
        if self.sim_times and isinstance(self.sim_arrival, (int, float)):
            t = self.sim_times
            out_tokens = self.usage_out if isinstance(self.usage_out, int) else len(t)
            itl = chunk_gaps_s(t)
            return RequestOutput(success=True, prompt_tokens=prompt_tokens, output_tokens=out_tokens,
                                 ttft_s=t[0] - self.sim_arrival, itl_s=itl, e2el_s=t[-1] - self.sim_arrival,
                                 start_s=float(self.sim_arrival)), True
        t = self.times
        if not t:
            return _fail("malformed_stream", "sim_token_times_s without sim_arrival_s", prompt_len, start_s), False
        if self.close_time is not None and isinstance(self.usage_out, int) and len(t) < self.usage_out:
            # vLLM's closing chunk carries the last token, its text empty when that token has none (an
            # incomplete character held back, an id the tokenizer lacks): the response ends there, and so do
            # E2E and the last gap. A closing chunk after all the tokens the usage counts (OpenAI's chat) is none.
            t.append(self.close_time)
        out_tokens = self.usage_out if isinstance(self.usage_out, int) else len(t)
        itl = tuple((b - a) * time_scale for a, b in zip(t, t[1:]))
        return RequestOutput(success=True, prompt_tokens=prompt_tokens, output_tokens=out_tokens,
                             ttft_s=(t[0] - st) * time_scale, itl_s=itl, e2el_s=(t[-1] - st) * time_scale,
                             start_s=start_s), False


# Events that need the full parse although they carry a text key: a usage object (mid-stream with continuous
# usage stats), sim stamps, an error. Events without a non-empty text key (role-only, a closing chunk with an
# empty delta, the usage-only event, [DONE]) fail the key count below and take the per-line path anyway.
_SPECIAL = (b'"usage":{', b'"usage": {', b'"sim_', b'"error"')


def _plain_token_prefix(body: bytes, chat: bool) -> tuple[int, int]:
    """``(events, end)``: ``body[:end]`` is exactly ``events`` SSE events ``data: {...}\\n\\n``, each an ordinary
    token chunk (non-empty text; no usage, error or sim stamps), as far as can be told by counting bytes;
    ``(0, 0)`` when it cannot, and the per-line path decides. Counting is sound because inside a JSON string
    quotes and newlines are escaped: ``"text":"`` occurs only as the key, once per event, and raw newlines
    only as SSE separators. The events after ``end`` (a stream's last ones) take the per-line path."""
    keys = (b'"content":"', b'"content": "') if chat else (b'"text":"', b'"text": "')
    cut = min((i for m in (*_SPECIAL, keys[0] + b'"', keys[1] + b'"') if (i := body.find(m)) >= 0), default=-1)
    if cut >= 0:
        body = body[:body.rfind(b"\n\n", 0, cut) + 2]
        if len(body) < 2:
            return 0, 0
    events = body.count(b"\n\ndata:") + 1
    if not body.startswith(b"data:") or not body.endswith(b"}\n\n") or body.count(b"\n") != 2 * events \
            or body.count(keys[0]) + body.count(keys[1]) != events:
        return 0, 0
    return events, len(body)


def _plain_token(payload: bytes, chat: bool) -> bool:
    """True only for an ordinary token chunk: non-empty text, no usage object, no sim stamps, no error.
    Key patterns like ``"usage":{`` cannot occur inside JSON strings (quotes there are escaped), so a
    match is sound; anything else takes the full parse."""
    if payload[-1:] != b"}" or b'"sim_' in payload or b'"error"' in payload:
        return False
    if b'"usage"' in payload and b'"usage":null' not in payload and b'"usage": null' not in payload:
        return False
    key = b'"content":' if chat else b'"text":'
    at = payload.find(key)
    if at < 0:
        return False
    rest = payload[at + len(key):at + len(key) + 3].lstrip()
    return rest[:1] == b'"' and rest[1:2] not in (b'"', b"")


def _is_token(choice: dict[str, Any], chat: bool) -> bool:
    """Does this choice carry a token? A role-only chat chunk or an empty closing chunk
    (``finish_reason`` set, no text) does not; an empty text mid-stream (special token) does."""
    if chat:
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning") or delta.get("tool_calls"):
            return True
        return "content" in delta and "role" not in delta and choice.get("finish_reason") is None
    if choice.get("text"):
        return True
    return "text" in choice and choice.get("finish_reason") is None


def _fail(kind: str, error: str, prompt_len: int, start_s: float) -> RequestOutput:
    return RequestOutput(success=False, prompt_tokens=prompt_len, start_s=start_s, error=error, error_kind=kind)


def _http_error(status: int, body: str, prompt_len: int, start_s: float) -> RequestOutput:
    kind = "http_4xx" if 400 <= status < 500 else "http_5xx" if 500 <= status < 600 else "http_other"
    msg = body.strip()
    try:
        obj = json.loads(msg)
        err = obj.get("error", obj) if isinstance(obj, dict) else obj
        msg = str(err.get("message", err) if isinstance(err, dict) else err)
    except ValueError:
        pass
    msg = " ".join(msg.split())[:200]
    return _fail(kind, f"HTTP {status}: {msg}" if msg else f"HTTP {status}", prompt_len, start_s)


async def _safe_text(resp: aiohttp.ClientResponse) -> str:
    try:
        return (await resp.content.read(4096)).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - the status code alone is enough
        return ""
