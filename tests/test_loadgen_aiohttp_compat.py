"""The aiohttp workaround (autotune/loadgen/_aiohttp_compat.py): applied on the checked versions only, and
there it removes the per-chunk parser re-entry without breaking flow control."""
from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest

from autotune.loadgen import _aiohttp_compat as compat
from autotune.loadgen.client import request_completions
from autotune.loadgen.workload import RequestSpec
from autotune.metrics import RequestOutput

N_TOKENS = 6000  # about 0.5 MB of events per response


def _burst_server(n_tokens: int) -> tuple[str, Callable[[], None]]:
    """A raw HTTP/1.1 keep-alive server (own thread, own loop) that writes a whole chunked SSE completion of
    ``n_tokens`` events at once: far more than aiohttp's read buffer, so the client's flow control pauses. Its URL,
    and what shuts it down."""
    def chunk(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data)

    def event(obj: dict) -> bytes:
        return chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")
    events = [event({"choices": [{"index": 0, "text": f" t{k}", "finish_reason": None}]}) for k in range(n_tokens)]
    usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": n_tokens}}
    body = b"".join(events) + event(usage) + chunk(b"data: [DONE]\n\n")
    response = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                + body + b"0\r\n\r\n")
    loop = asyncio.new_event_loop()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Closed here, on the server's loop: a writer left open is closed by its __del__ in whichever thread the
        # garbage collector runs, often the test's, and that cross-thread close could leave the server deaf to
        # a new connection: the client then waits for headers forever (6 hangs seen in about 45,000 requests with
        # three busy threads beside them; none in 18,000 with this close).
        try:
            await answer_each_request(reader, writer)
        finally:
            writer.close()

    async def answer_each_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):  # the client closed its connection
                return
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length"))
            await reader.readexactly(length)
            writer.write(response)
            await writer.drain()

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = loop.run_until_complete(asyncio.start_server(handle, sock=sock))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def close_connections() -> None:
        server.close()
        handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    def shut_down() -> None:
        # Each handler ends (its writer closed) on the running loop before the loop closes: a handler left
        # suspended is closed by the garbage collector later, in another test, on a closed loop.
        asyncio.run_coroutine_threadsafe(close_connections(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
    return f"http://127.0.0.1:{sock.getsockname()[1]}", shut_down


@pytest.fixture(scope="module")
def burst_url() -> Iterator[str]:
    url, shut_down = _burst_server(N_TOKENS)
    yield url
    shut_down()


@pytest.mark.parametrize("version,listed,needs_none", [
    ("3.14.0", True, False), ("3.14.5", True, False),
    ("3.14.6", False, False), ("3.14.5.post1", False, False), ("3.15.0", False, False),
    ("3.15.0a1", False, False), ("4.0.0", False, False),
    ("3.13.5", False, True), ("3.9.0", False, True), ("garbage", False, False),
])
def test_version_gate(version: str, listed: bool, needs_none: bool) -> None:
    assert (version in compat.CHECKED_VERSIONS) is listed
    assert compat.needs_no_workaround(version) is needs_none


def _patched_after_one_response(url: str) -> bool:
    """Whether :func:`skip_idle_resume` replaced ``resume_reading`` on the connection of a real response."""
    async def go() -> bool:
        async with aiohttp.ClientSession() as session:
            async with session.post(url + "/v1/completions", data=b"{}") as resp:
                compat.skip_idle_resume(resp)
                proto = resp.content._protocol
                assert proto is not None  # 0.5 MB written at once: the body is not all in yet
                patched = "resume_reading" in getattr(proto, "__dict__", {})
                await resp.read()
                return patched
    return asyncio.run(go())


def test_installed_version_is_patched_only_if_listed(burst_url: str) -> None:
    """Fails if an installed aiohttp outside CHECKED_VERSIONS gets the patch (or a listed one does not)."""
    assert compat._ENABLED is (aiohttp.__version__ in compat.CHECKED_VERSIONS)
    assert _patched_after_one_response(burst_url) is (aiohttp.__version__ in compat.CHECKED_VERSIONS)


@pytest.mark.parametrize("version", ["3.14.6", "3.15.0", "3.13.5"])
def test_unlisted_version_is_left_alone(monkeypatch, burst_url: str, version: str) -> None:
    """What the module computes at import for ``version``: nothing is patched."""
    monkeypatch.setattr(compat, "_ENABLED", version in compat.CHECKED_VERSIONS)
    assert not _patched_after_one_response(burst_url)


def test_idle_resume_skip_keeps_flow_control(monkeypatch, burst_url: str) -> None:
    """On the installed aiohttp: a response far over the read buffer (4 KiB here), written at once, pauses
    reading and must still arrive whole, also on the next request over the same connection (it hangs if a
    paused resume is skipped); with aiohttp's default buffer nothing pauses, and the idle re-entries must be
    gone (without the workaround, about one per chunk read: 12,000 here)."""
    import aiohttp.client_proto as client_proto
    calls = {"paused": 0, "idle": 0}
    original = client_proto.ResponseHandler.resume_reading

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:  # 3.13 takes no resume_parser
        calls["paused" if self._reading_paused or getattr(self, "_buffer_paused", False) else "idle"] += 1
        original(self, *args, **kwargs)

    monkeypatch.setattr(client_proto.ResponseHandler, "resume_reading", counting)
    spec = RequestSpec(prompt=[1, 2, 3], prompt_len=3, output_len=N_TOKENS)

    async def go(read_bufsize: int) -> list[RequestOutput]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), read_bufsize=read_bufsize) as s:
            return [await request_completions(s, burst_url, "fake-model", spec) for _ in range(2)]
    outs = asyncio.run(go(4096))
    assert [o.output_tokens for o in outs] == [N_TOKENS, N_TOKENS] and all(o.success for o in outs)
    assert calls["paused"] > 0  # flow control paused, and resumed through aiohttp's own method
    calls.update(paused=0, idle=0)
    outs = asyncio.run(go(2**16))  # aiohttp's default buffer: this client keeps up, nothing pauses
    assert [o.output_tokens for o in outs] == [N_TOKENS, N_TOKENS] and all(o.success for o in outs)
    if aiohttp.__version__ in compat.CHECKED_VERSIONS or compat.needs_no_workaround(aiohttp.__version__):
        assert calls["idle"] < 1000
    elif calls["idle"] >= 1000:
        pytest.skip(f"aiohttp {aiohttp.__version__} re-enters the parser per chunk ({calls['idle']} idle resumes) "
                    "and is not in CHECKED_VERSIONS: read its source and list it (_aiohttp_compat.py)")


def test_pyproject_range_matches_the_checked_versions() -> None:
    """pyproject's aiohttp range: from 3.9 (checked: needs no workaround) to below the minor after the newest
    checked one, so a minor release nobody has read cannot be installed."""
    import re
    import tomllib
    from pathlib import Path

    deps = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"][
        "dependencies"]
    spec = next(d for d in deps if re.match(r"aiohttp\b", d))
    assert re.fullmatch(r"aiohttp>=3\.9,<(\d+)\.(\d+)", spec), spec
    upper = tuple(int(x) for x in re.search(r"<(\d+)\.(\d+)", spec).groups())
    newest = max(tuple(int(x) for x in v.split(".")[:2]) for v in compat.CHECKED_VERSIONS)
    assert upper == (newest[0], newest[1] + 1)
    assert compat.needs_no_workaround("3.9.0")
