from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from autotune.loadgen.client import _Stream, request_chat_completions, request_completions
from autotune.testing.fakeserver import FakeServer
from autotune.loadgen.workload import RequestSpec
from autotune.metrics import RequestOutput

MODEL = "fake-model"
SPEC = RequestSpec(prompt=[1001, 1002, 1003], prompt_len=3, output_len=5)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    with FakeServer() as srv:
        yield srv


def _run(url: str, spec: RequestSpec = SPEC, chat: bool = False, **kw: Any) -> RequestOutput:
    async def go() -> RequestOutput:
        async with aiohttp.ClientSession() as session:
            fn = request_chat_completions if chat else request_completions
            return await fn(session, url, MODEL, spec, **kw)
    return asyncio.run(go())


def test_completion_counts_and_payload(server: FakeServer) -> None:
    server.configure(ttft_ms=30, itl_ms=10)
    out = _run(server.url)
    assert out.success and out.error == ""
    assert out.output_tokens == 5 and out.prompt_tokens == 3 and len(out.itl_s) == 4
    assert 0.028 <= out.ttft_s < 0.06
    # The server sends token k at 30 + 10 k ms after the request on its own clock, catching up after a late one, so a
    # gap may be short where the one before it was long: the last token comes no sooner than 70 ms, and the upper
    # bound leaves room for a loaded 2-core CI machine's scheduling.
    assert max(out.itl_s) < 0.25
    assert out.e2el_s == pytest.approx(out.ttft_s + sum(out.itl_s))
    assert out.e2el_s >= 0.068
    body = server.stats()["last_body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["ignore_eos"] is True and "temperature" not in body and body["max_tokens"] == 5
    assert body["prompt_type"] == "ids" and body["prompt_items"] == 3


def test_chat_with_images_skips_role_chunk(server: FakeServer) -> None:
    server.configure()
    spec = RequestSpec(prompt="describe", prompt_len=1, output_len=4, images=("data:image/png;base64,AAAA",) * 2)
    out = _run(server.url, spec, chat=True, ignore_eos=False)
    assert out.success and out.output_tokens == 4 and len(out.itl_s) == 3  # role chunk is not a token
    body = server.stats()["last_body"]
    assert body["image_parts"] == 2 and body["text_parts"] == 1 and "ignore_eos" not in body


def test_pings_and_split_lines(server: FakeServer) -> None:
    server.configure(pings=True)
    out = _run(server.url)
    assert out.success and out.output_tokens == 5 and len(out.itl_s) == 4


def test_token_count_falls_back_to_chunks_without_usage(server: FakeServer) -> None:
    server.configure(usage=False)
    out = _run(server.url)
    assert out.success and out.output_tokens == 5 and out.prompt_tokens == 3


@pytest.mark.parametrize("fault, kind", [
    ("http500", "http_5xx"), ("http404", "http_4xx"), ("malformed", "malformed_stream"),
    ("disconnect", "disconnect"), ("no_tokens", "no_tokens"), ("stream_error", "stream_error"),
    ("no_done", "disconnect"),
])
def test_faults_become_failed_records(server: FakeServer, fault: str, kind: str) -> None:
    server.configure(fault=fault)
    out = _run(server.url)
    assert not out.success and out.error_kind == kind and out.error
    assert "\n" not in out.error
    assert math.isnan(out.ttft_s) and math.isnan(out.e2el_s)


def test_wrong_model_is_http_4xx_with_message(server: FakeServer) -> None:
    server.configure()

    async def go() -> RequestOutput:
        async with aiohttp.ClientSession() as session:
            return await request_completions(session, server.url, "other", SPEC)
    out = asyncio.run(go())
    assert out.error_kind == "http_4xx" and "HTTP 404" in out.error and "does not exist" in out.error


def test_timeout(server: FakeServer) -> None:
    server.configure(fault="hang")
    out = _run(server.url, timeout_s=0.3)
    assert not out.success and out.error_kind == "timeout"


def test_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = _run(f"http://127.0.0.1:{port}")
    assert not out.success and out.error_kind == "connect"


def test_sim_clock_stamps_override_wall_clock(server: FakeServer) -> None:
    # 7 tokens coalesced 3 per chunk, sent instantly; virtual TTFT 250 ms, ITL 40 ms
    server.configure(sim_stamps=True, sim_tokens_per_chunk=3, ttft_ms=250, itl_ms=40)
    out = _run(server.url, RequestSpec(prompt=[1001], prompt_len=1, output_len=7))
    assert out.success and out.output_tokens == 7
    assert out.ttft_s == pytest.approx(0.25)
    assert len(out.itl_s) == 6 and all(x == pytest.approx(0.04) for x in out.itl_s)
    assert out.e2el_s == pytest.approx(0.25 + 6 * 0.04)
    assert out.start_s >= 1000.0  # the virtual arrival


def test_sim_tokens_stamped_with_one_instant_are_one_gap(server: FakeServer) -> None:
    # the sim's API server delivered all 7 tokens at once (merged): one chunk to the client, so no gap at all,
    # while the tokens still count for TPOT
    server.configure(sim_stamps=True, sim_tokens_per_chunk=3, ttft_ms=250, itl_ms=0)
    out = _run(server.url, RequestSpec(prompt=[1001], prompt_len=1, output_len=7))
    assert out.success and out.output_tokens == 7 and out.itl_s == ()
    assert out.e2el_s == pytest.approx(0.25)


def test_time_scale_multiplies_wall_times(server: FakeServer) -> None:
    server.configure(ttft_ms=40, itl_ms=0)
    out = _run(server.url, time_scale=10.0)
    assert out.success and 0.39 < out.ttft_s < 0.6


def test_parser_handles_crlf_comments_and_fragments() -> None:
    stream = _Stream(chat=False)
    parts = [b": ping\r\n\r\nevent: message\r\nda", b'ta: {"choices":[{"text":"a","finish_reason":null}]}\r\n',
             b'\r\ndata: {"choices":[{"text":"","finish_reason":null}]}\n\n',
             b'data: {"choices":[{"text":"","finish_reason":"length"}]}\n\n',
             b'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":3}}\n\ndata: [DONE]\n\n']
    for i, part in enumerate(parts):
        if stream.feed(part, 1.0 + i):
            break
    out, sim = stream.result(0.5, 0.0, 1.0, prompt_len=9)
    assert out.success and not sim
    assert out.output_tokens == 3 and out.prompt_tokens == 4
    assert out.ttft_s == pytest.approx(2.0 - 0.5)  # the second read (at 2.0) completed the first event
    # the usage counts 3 tokens, 2 had text: the empty closing chunk carried the third (vLLM: a held-back
    # incomplete character), so the response's last token arrived with it
    assert out.itl_s == pytest.approx((1.0, 1.0)) and out.e2el_s == pytest.approx(4.0 - 0.5)


@pytest.mark.parametrize("usage", [b',"usage":{"prompt_tokens":4,"completion_tokens":2}', b""])
def test_empty_closing_chunk_is_no_token_when_the_usage_is_complete_or_absent(usage: bytes) -> None:
    # OpenAI's chat: a closing chunk with an empty delta after every token
    stream = _Stream(chat=True)
    parts = [b'data: {"choices":[{"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n',
             b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":null}]}\n\n',
             b'data: {"choices":[{"delta":{"content":"b"},"finish_reason":null}]}\n\n',
             b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n',
             b'data: {"choices":[]' + usage + b'}\n\ndata: [DONE]\n\n']
    for i, part in enumerate(parts):
        if stream.feed(part, 1.0 + i):
            break
    out, _ = stream.result(0.5, 0.0, 1.0, prompt_len=9)
    assert out.success and out.itl_s == pytest.approx((1.0,)) and out.e2el_s == pytest.approx(3.0 - 0.5)


@pytest.mark.parametrize("payload, chat, token", [
    (b'{"choices":[{"index":0,"text":" a","finish_reason":null}],"usage":null}', False, True),
    (b'{"choices": [{"index": 0, "text": " a"}], "usage": null}', False, True),
    (b'{"choices":[{"text":""}]}', False, False),  # empty: left to the full parse
    (b'{"choices":[{"text":"a"}],"usage":{"completion_tokens":3}}', False, False),
    (b'{"choices":[{"text":"a"}],"sim_token_times_s":[1.0]}', False, False),
    (b'{"choices":[{"text":"a"', False, False),  # truncated
    (b'{"choices":[{"delta":{"role":"assistant","content":""}}]}', True, False),
    (b'{"choices":[{"delta":{"content":"hi"}}]}', True, True),
    (b'{"choices":[{"delta":{"content":"say \\"usage\\":{"}}]}', True, True),
])
def test_plain_token_fast_path(payload: bytes, chat: bool, token: bool) -> None:
    from autotune.loadgen.client import _plain_token
    assert _plain_token(payload, chat) is token


def _random_stream(rng, chat: bool) -> bytes:
    """A vLLM-like SSE stream with the awkward cases: texts holding `data:`, quotes, `"usage":{`; empty texts
    mid-stream; compact and spaced JSON; a non-empty final chunk; usage; [DONE]."""
    import json
    texts = ["a", " data: x", 'say "text":"y"', '"usage":{', "", "\\n", "}\n\n", "ü"]
    sep = rng.choice([(",", ":"), (", ", ": ")])
    events = []
    if chat:
        events.append({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    for _ in range(rng.randrange(1, 40)):
        text = rng.choice(texts)
        events.append({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]} if chat else
                      {"choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": None}],
                       "usage": None})
    last = rng.choice(["", "end"])
    events.append({"choices": [{"index": 0, "delta": {"content": last}, "finish_reason": "length"}]} if chat else
                  {"choices": [{"index": 0, "text": last, "finish_reason": "length"}]})
    events.append({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": len(events)}})
    body = b"".join(b"data: " + json.dumps(e, separators=sep).encode() + b"\n\n" for e in events)
    return body + b"data: [DONE]\n\n"


@pytest.mark.parametrize("chat", [False, True])
def test_fast_path_counts_what_the_full_parse_counts(monkeypatch, chat: bool) -> None:
    """Fed in random splits, the stream gives the same token times with the counting fast path as with the
    per-line parse alone."""
    import random

    import autotune.loadgen.client as client
    rng = random.Random(7)
    counted = 0  # tokens the fast path counted: the comparison must not be of the per-line parse with itself
    for _ in range(300):
        body = _random_stream(rng, chat)
        cuts = sorted(rng.sample(range(1, len(body)), min(len(body) - 1, rng.randrange(0, 12))))
        parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)])]

        def times(fast: bool) -> tuple[list[float], int | None, bool]:
            nonlocal counted
            if not fast:
                monkeypatch.setattr(client, "_plain_token_prefix", lambda body, chat: (0, 0))
            stream = client._Stream(chat=chat)
            for i, part in enumerate(parts):
                if fast:
                    counted += client._plain_token_prefix(
                        (stream.buf + part)[:(stream.buf + part).rfind(b"\n") + 1], chat)[0]
                if stream.feed(part, float(i)):
                    break
            monkeypatch.undo()
            return stream.times, stream.usage_out, stream.done
        assert times(True) == times(False)
    assert counted > 1000


def test_fast_path_takes_leading_token_events_and_leaves_the_rest() -> None:
    from autotune.loadgen.client import _plain_token_prefix
    tok = b'data: {"choices":[{"index":0,"text":"hi","finish_reason":null}]}\n\n'
    end = b'data: {"choices":[{"index":0,"text":"","finish_reason":"length"}]}\n\ndata: [DONE]\n\n'
    assert _plain_token_prefix(tok * 3 + end, chat=False) == (3, 3 * len(tok))
    in_text = tok.replace(b'"hi"', b'"data: x\\n\\n"')  # "data:" and escaped newlines inside the text: one event
    assert _plain_token_prefix(in_text, chat=False) == (1, len(in_text))
    assert _plain_token_prefix(tok.replace(b'"hi"', b'"hi","usage":{"completion_tokens":1}'), chat=False) == (0, 0)
    assert _plain_token_prefix(tok[:-1], chat=False) == (0, 0)  # incomplete event
    assert _plain_token_prefix(b": ping\n\n" + tok, chat=False) == (0, 0)
