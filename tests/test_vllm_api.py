"""The responder against a scripted token source, in-process: vLLM's wire format, its request checks, /metrics."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from autotune.loadgen.promscrape import histogram_buckets, histogram_totals, parse_prometheus, steps_by_tokens
from autotune.vllm_api import metrics as m
from autotune.vllm_api.request import estimate_text_tokens
from autotune.vllm_api.responder import ApiError, GenerationRequest, Responder, ServedModel, TokenBatch, token_text

MODEL = ServedModel(names=("m", "alias"), root="/models/m", max_model_len=100,
                    image_tokens=lambda w, h: w // 16 + h // 16, max_images=2)


class _Scripted:
    """Releases the scripted batches at once; optionally fails after them."""

    def __init__(self, batches: Sequence[TokenBatch], arrival_s: float | None = None,
                 error: ApiError | None = None) -> None:
        self.script, self.arrival_s, self.error = list(batches), arrival_s, error
        self.requests: list[GenerationRequest] = []
        self.closed = 0

    def start(self, request: GenerationRequest) -> _Scripted:
        self.requests.append(request)
        return self

    async def batches(self) -> AsyncIterator[TokenBatch]:
        for batch in self.script:
            yield batch
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.closed += 1

    def metrics(self) -> m.MetricValues:
        return {m.RUNNING: 3, m.KV_CACHE_USAGE: 0.25, m.PREEMPTIONS: 7, m.TTFT: m.HistogramTotals(1.5, 6)}


TWO_BATCHES = [TokenBatch(2), TokenBatch(1, "length")]


def _call(source: _Scripted, method: str, path: str, body: Any = None, raw: bytes | None = None,
          model: ServedModel = MODEL) -> tuple[int, bytes]:
    async def go() -> tuple[int, bytes]:
        async with TestClient(TestServer(Responder(model, source).app())) as client:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            async with client.request(method, path, data=data) as resp:
                return resp.status, await resp.read()
    return asyncio.run(go())


def _events(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n")
    events = raw[:-2].split(b"\n\n")
    assert all(e.startswith(b"data: ") for e in events)
    return [e[6:] for e in events]


def test_streamed_completion_as_vllm_writes_it() -> None:
    source = _Scripted(TWO_BATCHES)
    status, raw = _call(source, "POST", "/v1/completions", {
        "model": "alias", "prompt": [5, 6, 7], "max_tokens": 3, "stream": True,
        "stream_options": {"include_usage": True}})
    assert status == 200
    *chunks, usage, done = _events(raw)
    assert done == b"[DONE]" and b'": ' not in raw and b', "' not in raw  # compact JSON, as pydantic writes it
    first = json.loads(chunks[0])
    assert list(first) == ["id", "object", "created", "model", "choices"] and first["id"].startswith("cmpl-")
    assert first["object"] == "text_completion" and first["model"] == "alias"
    assert [json.loads(c)["choices"] for c in chunks] == [
        [{"index": 0, "text": token_text(0, 2), "logprobs": None, "finish_reason": None, "stop_reason": None}],
        [{"index": 0, "text": token_text(2, 1), "logprobs": None, "finish_reason": "length", "stop_reason": None}]]
    usage_event = json.loads(usage)
    assert usage_event["choices"] == [] and usage_event["id"] == first["id"]
    assert list(usage_event["usage"].items()) == [("prompt_tokens", 3), ("total_tokens", 6), ("completion_tokens", 3)]
    assert source.closed == 1 and source.requests[0].max_tokens == 3 and source.requests[0].prompt_tokens == 3


def test_streamed_chat_sends_the_role_first_and_usage_only_when_asked() -> None:
    source = _Scripted(TWO_BATCHES)
    status, raw = _call(source, "POST", "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 3, "stream": True})
    events = [json.loads(e) for e in _events(raw)[:-1]]
    assert status == 200 and len(events) == 3  # role, two token chunks; no usage
    assert events[0]["object"] == "chat.completion.chunk" and events[0]["model"] == "m"  # the first served name
    assert events[0]["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                     "finish_reason": None}]
    assert events[1]["choices"][0]["delta"] == {"content": token_text(0, 2)}
    assert events[2]["choices"][0] == {"index": 0, "delta": {"content": token_text(2, 1)}, "logprobs": None,
                                       "finish_reason": "length", "stop_reason": None}
    assert source.requests[0].prompt_tokens == 3 and not source.requests[0].include_usage


@pytest.mark.parametrize("chat", [False, True])
def test_whole_response(chat: bool) -> None:
    body: dict[str, Any] = {"model": "m", "max_tokens": 5}
    body.update({"messages": [{"role": "user", "content": "hi there"}]} if chat else {"prompt": "hi there"})
    status, raw = _call(_Scripted([TokenBatch(3), TokenBatch(1, "stop")]),
                        "POST", "/v1/chat/completions" if chat else "/v1/completions", body)
    out = json.loads(raw)
    assert status == 200 and out["object"] == ("chat.completion" if chat else "text_completion")
    choice = out["choices"][0]
    assert (choice["message"]["content"] if chat else choice["text"]) == token_text(0, 4)
    assert choice["finish_reason"] == "stop" and out["usage"] == {"prompt_tokens": 2, "total_tokens": 6,
                                                                  "completion_tokens": 4}
    assert "sim_arrival_s" not in out


def test_virtual_clock_stamps_every_event() -> None:
    source = _Scripted([TokenBatch(2, None, [10.5, 10.6]), TokenBatch(1, "length", [10.7])], arrival_s=10.0)
    _, raw = _call(source, "POST", "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "stream": True,
        "stream_options": {"include_usage": True}})
    events = [json.loads(e) for e in _events(raw)[:-1]]
    assert [e["sim_arrival_s"] for e in events] == [10.0] * 4
    assert [e["sim_token_times_s"] for e in events] == [[], [10.5, 10.6], [10.7], []]
    _, raw = _call(source, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 3})
    assert json.loads(raw)["sim_token_times_s"] == [10.5, 10.6, 10.7]


def test_a_source_error_mid_stream_is_an_error_event_then_done() -> None:
    source = _Scripted([TokenBatch(1)], error=ApiError(500, "engine died", "InternalServerError"))
    _, raw = _call(source, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 3, "stream": True})
    *_, error, done = _events(raw)
    assert json.loads(error) == {"error": {"message": "engine died", "type": "InternalServerError", "param": None,
                                           "code": 500}}
    assert done == b"[DONE]" and source.closed == 1
    status, raw = _call(source, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 3})
    assert status == 500 and json.loads(raw)["error"]["message"] == "engine died"


_PNG_32x32 = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAACAAAAAgCAIAAAD8GO2jAAAAAA=="


def _image(url: str = _PNG_32x32) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


@pytest.mark.parametrize("path, body, status, words", [
    ("/v1/completions", b"{not json", 400, "not valid JSON"),
    ("/v1/completions", [1, 2], 400, "JSON object"),
    ("/v1/completions", {"model": "other", "prompt": "x"}, 404, "The model `other` does not exist."),
    ("/v1/completions", {"prompt": ""}, 400, "prompt"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "one prompt per request"),
    ("/v1/completions", {"prompt": "x", "stream_options": {"include_usage": True}}, 400, "`stream=True`"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "at least 1, got 0"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "3"}, 400, "integer"),
    ("/v1/completions", {"prompt": [1] * 90, "max_tokens": 20}, 400,
     "maximum context length is 100 tokens. However, you requested 110 tokens (90 in the messages, 20 in"),
    ("/v1/completions", {"prompt": [1] * 100}, 400, "your request has 100 input tokens"),
    ("/v1/chat/completions", {"messages": []}, 400, "non-empty list"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 400,
     "unsupported content part type 'audio'"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [_image()] * 3}]}, 400,
     "At most 2 image(s)"),
])
def test_request_checks(path: str, body: Any, status: int, words: str) -> None:
    source = _Scripted(TWO_BATCHES)
    got, raw = _call(source, "POST", path, raw=body if isinstance(body, bytes) else json.dumps(body).encode())
    error = json.loads(raw)["error"]
    assert got == status and error["code"] == status and words in error["message"]
    assert error["type"] == ("NotFoundError" if status == 404 else "BadRequestError")
    assert source.requests == [] and source.closed == 0


def test_prompt_counts_and_defaults() -> None:
    source = _Scripted(TWO_BATCHES)
    _call(source, "POST", "/v1/completions", {"prompt": [[1, 2, 3, 4]]})  # one prompt in a list
    _call(source, "POST", "/v1/chat/completions", {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "a b"}, _image(), _image("data:,broken")]}]})
    text_only = ServedModel(names=("t",), root="/models/t", max_model_len=100)
    status, raw = _call(source, "POST", "/v1/chat/completions", {"messages": [
        {"role": "user", "content": [_image()]}]}, model=text_only)
    completion, chat = source.requests
    assert (completion.prompt_tokens, completion.max_tokens) == (4, 16)  # vLLM's completions default
    assert chat.images == ((32, 32), (512, 512)) and chat.prompt_tokens == 2 + 4 + 64
    assert chat.max_tokens == 100 - chat.prompt_tokens  # chat: the room left
    assert status == 400 and "/models/t is not a multimodal model" in json.loads(raw)["error"]["message"]
    assert estimate_text_tokens("one two  three") == 3 and estimate_text_tokens("x" * 40) == 10


def test_models_health_version_and_metrics() -> None:
    source = _Scripted(TWO_BATCHES)
    status, raw = _call(source, "GET", "/v1/models")
    cards = json.loads(raw)["data"]
    assert status == 200 and [c["id"] for c in cards] == ["m", "alias"]
    assert cards[0]["root"] == "/models/m" and cards[0]["max_model_len"] == 100 and cards[0]["owned_by"] == "vllm"
    assert _call(source, "GET", "/health")[0] == 200
    assert json.loads(_call(source, "GET", "/version")[1])["version"].startswith("0.")
    status, raw = _call(source, "GET", "/metrics")
    text = raw.decode()
    assert status == 200 and "# TYPE vllm:time_to_first_token_seconds histogram" in text
    assert 'vllm:num_requests_running{engine="0",model_name="m"} 3.0' in text
    samples = parse_prometheus(text)  # what the load generator's scraper reads back
    assert samples[m.KV_CACHE_USAGE.name] == [0.25] and samples[m.PREEMPTIONS.name] == [7.0]
    assert histogram_totals(samples) == {"ttft": (1.5, 6.0)}


def _iteration_tokens(engine: str, counts: Sequence[float]) -> list[str]:
    """vLLM 0.26.0's iteration-tokens histogram of one engine, as its /metrics writes it (cumulative buckets)."""
    bounds = ["1.0", "8.0", "16.0", "32.0", "64.0", "128.0", "256.0", "512.0", "1024.0", "2048.0", "4096.0",
              "8192.0", "16384.0", "+Inf"]
    return [f'vllm:iteration_tokens_total_bucket{{engine="{engine}",le="{le}",model_name="m"}} {c}'
            for le, c in zip(bounds, counts)]


def test_engine_steps_by_tokens_between_two_scrapes() -> None:
    """Steps of each size taken between two scrapes, summed over the engines of a DP deployment: decode-only steps
    of 33-64 tokens, steps with one ~1,000-token prefill (1025-2048) and with two (2049-4096)."""
    before = "\n".join(_iteration_tokens("0", [0, 0, 0, 0, 10, 10, 10, 10, 10, 12, 12, 12, 12, 12])
                       + _iteration_tokens("1", [0] * 14)
                       + ["vllm:iteration_tokens_total_count{engine=\"0\",model_name=\"m\"} 12.0"])
    after = "\n".join(_iteration_tokens("0", [0, 0, 0, 0, 110, 110, 110, 110, 110, 130, 134, 134, 134, 134])
                      + _iteration_tokens("1", [0, 0, 0, 0, 50, 50, 50, 50, 50, 60, 60, 60, 60, 60]))
    first = histogram_buckets(parse_prometheus(before), m.ITERATION_TOKENS.name)
    last = histogram_buckets(parse_prometheus(after), m.ITERATION_TOKENS.name)
    assert first[64.0] == 10 and last[64.0] == 160 and last[float("inf")] == 194
    steps = steps_by_tokens(first, last)
    assert steps["le 64"] == 150 and steps["le 2048"] == 28 and steps["le 4096"] == 4
    assert sum(steps.values()) == 194 - 12
    assert steps_by_tokens(first, {}) == {}  # a server without the histogram (the fake server): nothing


def test_a_count_histogram_reads_back_as_vllms_own() -> None:
    """The sim server writes the iteration-tokens histogram with its buckets; the scraper reads it as vLLM's."""
    counts = [0, 0, 0, 0, 10, 10, 10, 10, 10, 12, 12, 12, 12]
    value = m.HistogramBuckets(cumulative=tuple(zip(m.ITERATION_TOKENS_BOUNDS, counts)), count=14, total=9000.0)
    ours = parse_prometheus(m.render_metrics({m.ITERATION_TOKENS: value}, {"engine": "0", "model_name": "m"}))
    vllms = parse_prometheus("\n".join(_iteration_tokens("0", [*counts, 14])))
    assert histogram_buckets(ours, m.ITERATION_TOKENS.name) == histogram_buckets(vllms, m.ITERATION_TOKENS.name)
    assert ours[f"{m.ITERATION_TOKENS.name}_sum"] == [9000.0] and ours[f"{m.ITERATION_TOKENS.name}_count"] == [14.0]
