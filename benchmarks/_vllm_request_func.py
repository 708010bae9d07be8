"""vLLM's benchmark client, for comparison only (vLLM is not installable here).

A reimplementation of the logic of ``async_request_openai_completions`` and ``StreamedResponseHandler`` in
``vllm/benchmarks/lib/endpoint_request_func.py`` (vllm-project/vllm, read at commit 02cfb534df56), written
from that source: the same per-read work (strip the read, incremental UTF-8 decode, split on blank lines,
``json.loads`` of a trailing message to test it is complete, ``json.loads`` of each message, one
``perf_counter`` per message, text accumulation, usage), and the session setup of ``vllm/benchmarks/serve.py``.
Not a copy: tqdm, headers from the environment and the extra options are left out.
"""
from __future__ import annotations

import codecs
import json
import sys
import time
import traceback
from dataclasses import dataclass, field

import aiohttp

AIOHTTP_TIMEOUT = aiohttp.ClientTimeout(total=6 * 60 * 60)


class StreamedResponseHandler:
    """Accumulates reads until complete SSE messages are available (as vLLM's)."""

    def __init__(self) -> None:
        self.buffer = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def add_chunk(self, chunk_bytes: bytes) -> list[str]:
        self.buffer += self._decoder.decode(chunk_bytes)
        messages = []
        while "\n\n" in self.buffer:
            message, self.buffer = self.buffer.split("\n\n", 1)
            message = message.strip()
            if message:
                messages.append(message)
        # the read was stripped, so the last message usually has no separator: keep it if it parses
        if self.buffer.startswith("data: "):
            content = self.buffer.removeprefix("data: ").strip()
            if content == "[DONE]":
                messages.append(self.buffer.strip())
                self.buffer = ""
            elif content:
                try:
                    json.loads(content)
                    messages.append(self.buffer.strip())
                    self.buffer = ""
                except json.JSONDecodeError:
                    pass
        return messages


@dataclass
class RequestFuncOutput:
    generated_text: str = ""
    success: bool = False
    latency: float = 0.0
    output_tokens: int = 0
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    prompt_len: int = 0
    error: str = ""
    start_time: float = 0.0


async def async_request_openai_completions(api_url: str, model: str, prompt: list[int] | str, prompt_len: int,
                                           output_len: int, session: aiohttp.ClientSession,
                                           ignore_eos: bool = True) -> RequestFuncOutput:
    payload = {"model": model, "prompt": prompt, "repetition_penalty": 1.0, "max_tokens": output_len,
               "logprobs": None, "stream": True, "stream_options": {"include_usage": True}}
    if ignore_eos:
        payload["ignore_eos"] = ignore_eos
    headers: dict[str, str] = {}
    output = RequestFuncOutput(prompt_len=prompt_len)
    generated_text = ""
    st = time.perf_counter()
    output.start_time = st
    most_recent_timestamp = st
    try:
        async with session.post(url=api_url, json=payload, headers=headers) as response:
            if response.status == 200:
                first_chunk_received = False
                handler = StreamedResponseHandler()
                async for chunk_bytes in response.content.iter_any():
                    chunk_bytes = chunk_bytes.strip()
                    if not chunk_bytes:
                        continue
                    for message in handler.add_chunk(chunk_bytes):
                        if message.startswith(":"):
                            continue
                        chunk = message.removeprefix("data: ")
                        if chunk != "[DONE]":
                            data = json.loads(chunk)
                            if choices := data.get("choices"):
                                text = choices[0].get("text")
                                timestamp = time.perf_counter()
                                if not first_chunk_received:
                                    first_chunk_received = True
                                    output.ttft = timestamp - st
                                else:
                                    output.itl.append(timestamp - most_recent_timestamp)
                                most_recent_timestamp = timestamp
                                generated_text += text or ""
                            elif usage := data.get("usage"):
                                output.output_tokens = usage.get("completion_tokens")
                                if (pt := usage.get("prompt_tokens")) is not None:
                                    output.prompt_len = pt
                output.success = first_chunk_received
                if not first_chunk_received:
                    output.error = "Never received a valid chunk to calculate TTFT."
                output.generated_text = generated_text
                output.latency = most_recent_timestamp - st
            else:
                output.error = response.reason or ""
                output.success = False
    except Exception:
        output.success = False
        output.error = "".join(traceback.format_exception(*sys.exc_info()))
    return output


def make_session(concurrency: int, trust_env: bool = True) -> aiohttp.ClientSession:
    """The session vLLM's serve.py builds (``trust_env=True`` there)."""
    connector = aiohttp.TCPConnector(limit=concurrency or 0, limit_per_host=concurrency or 0, ttl_dns_cache=300,
                                     use_dns_cache=True, keepalive_timeout=60, enable_cleanup_closed=True,
                                     force_close=False)
    return aiohttp.ClientSession(connector=connector, trust_env=trust_env, timeout=AIOHTTP_TIMEOUT)
