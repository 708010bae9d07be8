from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

NAME = "autotune-test-model"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: str, *extra: str, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._log_f = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "autotune.sim", "serve", model, "--port", str(self.port), "--host", "127.0.0.1",
             "--served-model-name", NAME, "--startup-delay-s", "0.2", *extra],
            stdout=self._log_f, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server not ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log_f.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server("flash", "--time-scale", "20", log=tmp_path_factory.mktemp("sim") / "server.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def _post(url: str, body: dict) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _events(raw: bytes) -> list[dict]:
    out = []
    for line in raw.decode().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[6:]))
    assert raw.decode().rstrip().endswith("data: [DONE]")
    return out


def _png_data_url(width: int, height: int) -> str:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + chunk).decode()


def test_startup_log_has_vllm_lines(server: Server) -> None:
    log = server.log.read_text()
    for text in ("Model loading took", "GiB memory and", "Available KV cache memory:", "GPU KV cache size:",
                 "Maximum concurrency for 131,072 tokens per request:", "torch.compile takes",
                 "Graph capturing finished in", f"Starting vLLM API server 0 on http://127.0.0.1:{server.port}",
                 "Application startup complete."):
        assert text in log
    from autotune.engines.base import parse_startup_log

    info = parse_startup_log(log)
    assert info.kv_cache_tokens and info.kv_cache_tokens > 100_000 and info.compile_s


def test_models_and_health(server: Server) -> None:
    with urllib.request.urlopen(server.url + "/v1/models") as r:
        data = json.loads(r.read())
    assert [m["id"] for m in data["data"]] == [NAME]


def test_streaming_completion_with_usage_and_stamps(server: Server) -> None:
    status, raw = _post(server.url + "/v1/completions", {
        "model": NAME, "prompt": list(range(300)), "max_tokens": 40, "stream": True, "ignore_eos": True,
        "stream_options": {"include_usage": True}})
    assert status == 200
    events = _events(raw)
    usage = events[-1]["usage"]
    assert usage == {"prompt_tokens": 300, "completion_tokens": 40, "total_tokens": 340}
    token_events = [e for e in events if e["choices"]]
    times = [t for e in token_events for t in e["sim_token_times_s"]]
    assert len(times) == 40 and times == sorted(times)
    arrival = token_events[0]["sim_arrival_s"]
    assert all(e["sim_arrival_s"] == arrival for e in events) and times[0] > arrival
    assert token_events[-1]["choices"][0]["finish_reason"] == "length"
    assert "".join(e["choices"][0]["text"] for e in token_events)


def test_non_streaming_text_prompt_and_random_stop(server: Server) -> None:
    status, raw = _post(server.url + "/v1/completions", {"model": NAME, "prompt": "one two three four",
                                                         "max_tokens": 50})
    assert status == 200
    body = json.loads(raw)
    assert body["usage"]["prompt_tokens"] == 4  # whitespace words
    n = body["usage"]["completion_tokens"]
    assert 1 <= n <= 50
    assert body["choices"][0]["finish_reason"] == ("length" if n == 50 else "stop")


def test_chat_with_image_counts_image_tokens(server: Server) -> None:
    def ask(images: int) -> dict:
        content = [{"type": "text", "text": "describe this"}]
        content += [{"type": "image_url", "image_url": {"url": _png_data_url(448, 448)}}] * images
        status, raw = _post(server.url + "/v1/chat/completions", {
            "model": NAME, "messages": [{"role": "user", "content": content}], "max_tokens": 8, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}})
        assert status == 200
        events = _events(raw)
        assert events[0]["choices"][0]["delta"]["role"] == "assistant"
        return events[-1]["usage"]

    plain, with_image = ask(0), ask(1)
    # 448 px is 32 × 32 patches of 14 px, merged 2 × 2: 256 image tokens, between <|begin_of_image|> and
    # <|end_of_image|>
    assert with_image["prompt_tokens"] - plain["prompt_tokens"] == 256 + 2
    assert with_image["completion_tokens"] == 8


def test_errors(server: Server) -> None:
    status, raw = _post(server.url + "/v1/completions", {"model": "nope", "prompt": "hi"})
    assert status == 404 and "does not exist" in json.loads(raw)["error"]["message"]
    status, raw = _post(server.url + "/v1/completions", {"model": NAME, "prompt": [1, 2], "max_tokens": 10**7})
    assert status == 400 and json.loads(raw)["error"]["code"] == 400


def test_metrics_names(server: Server) -> None:
    _post(server.url + "/v1/completions", {"model": NAME, "prompt": [1, 2, 3], "max_tokens": 3, "ignore_eos": True})
    with urllib.request.urlopen(server.url + "/metrics") as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split("{")[0], float(line.rsplit(" ", 1)[1])
            values[name] = value
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:num_preemptions_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total"):
        assert name in values
    assert values["vllm:generation_tokens_total"] >= 3 and values["vllm:prompt_tokens_total"] >= 3


@pytest.mark.slow  # launches its own sim server
def test_sigterm_mid_stream_exits_quickly(tmp_path: Path) -> None:
    srv = Server("flash", "--time-scale", "1", log=tmp_path / "s.log")
    try:
        srv.wait_ready()
        req = urllib.request.Request(srv.url + "/v1/completions", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"model": NAME, "prompt": [1] * 10, "max_tokens": 5000,
                                                      "stream": True, "ignore_eos": True}).encode())
        resp = urllib.request.urlopen(req, timeout=10)
        assert resp.readline().startswith(b"data: ")  # streaming is under way
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(5)
        assert time.monotonic() - t0 < 2.0
        assert srv.proc.returncode == 0
        resp.close()
    finally:
        srv.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(srv.proc.pid, 0)  # no process left in its group


@pytest.mark.slow  # two sim-server processes
def test_refuses_to_start_like_vllm(tmp_path: Path, weightless_flash_dir: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "autotune.sim", "serve", str(weightless_flash_dir),
                           "--gpu-memory-utilization", "0.2", "--port", str(_free_port())],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "ValueError: No available memory for the cache blocks." in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "autotune.sim", "serve", "flash", "--no-such-flag"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "unrecognized arguments: --no-such-flag" in proc.stderr


def test_concurrent_rounds_all_complete(server: Server) -> None:
    # regression: a slot freed by a finishing request and reused by a new arrival must not steal its tokens
    from concurrent.futures import ThreadPoolExecutor

    def one(_: int) -> int:
        status, raw = _post(server.url + "/v1/completions", {
            "model": NAME, "prompt": [7] * 512, "max_tokens": 16, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}})
        assert status == 200
        return _events(raw)[-1]["usage"]["completion_tokens"]

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(one, range(12), timeout=30)) == [16] * 12


@pytest.mark.slow  # among the fast loop's longest (1.3-1.4 s); the full suite runs it
def test_h200_front_end_over_http(tmp_path: Path) -> None:
    """The HTTP sim on the H200 calibration puts vLLM's API server in front of the engine as the in-process sim
    does: one request on an idle server waits the request's hand-over cost before its prefill and one output job
    after it. The stamps are modelled times, which a late turn of the server's event loop moves by its lateness
    times the time scale: at 0.2 a wall-clock wake-up 10 ms late (seen once at time scale 1 on a busy 2-core
    machine: +13 ms) moves them by 2 ms."""
    import dataclasses

    from autotune.gpus import load_gpu
    from autotune.loadgen.runner import LoadConfig
    from autotune.loadgen.workload import parse_workload
    from autotune.models import PRESETS
    from autotune.sim.engine import setup_engine
    from autotune.sim.inproc import bench_in_process

    gpu = load_gpu("h200")
    extra = gpu.extra or {}
    front_ms = extra["frontend_request_ms"] + (extra["frontend_output_us"] + extra["frontend_chunk_us"]) / 1e3
    assert front_ms > 5  # the fitted constants: a test of something
    bare_gpu = dataclasses.replace(gpu, extra={**extra, "frontend_request_ms": 0.0, "frontend_output_us": 0.0,
                                               "frontend_chunk_us": 0.0})
    requests = parse_workload("random:300:40", seed=0).requests(1)
    bare = bench_in_process(setup_engine(PRESETS["flash"], bare_gpu, {}), requests, LoadConfig(concurrency=1,
                                                                                               num_prompts=1))
    srv = Server("flash", "--gpu-type", "h200", "--time-scale", "0.2", log=tmp_path / "server.log")
    try:
        srv.wait_ready()
        status, raw = _post(srv.url + "/v1/completions", {
            "model": NAME, "prompt": list(range(300)), "max_tokens": 40, "stream": True, "ignore_eos": True})
    finally:
        srv.stop()
    assert status == 200
    token_events = [e for e in _events(raw) if e["choices"]]
    ttft_ms = 1e3 * (token_events[0]["sim_token_times_s"][0] - token_events[0]["sim_arrival_s"])
    assert bare.ttft_ms.mean + front_ms - 0.01 <= ttft_ms <= bare.ttft_ms.mean + front_ms + 5.0


def test_bench_paces_an_open_loop_in_the_servers_clock(server: Server) -> None:
    """The server's figures are in its modelled clock (time scale 20 here), so the load the client offers is too:
    --rate 4 is 4 modelled requests/s, not 4 wall requests/s (which were 0.2 modelled ones: a 20× lighter load
    than asked, reported as rate 4)."""
    from autotune.loadgen.runner import LoadConfig, run_bench
    from autotune.loadgen.workload import parse_workload

    with urllib.request.urlopen(server.url + "/version") as r:
        assert json.loads(r.read())["sim_time_scale"] == 20.0
    result = run_bench(server.url, NAME, parse_workload("random:64:4", seed=0),
                       LoadConfig(rate=4.0, num_prompts=10))
    assert result.extra["clock"] == "sim" and result.extra["time_scale"] == 20.0
    # 10 requests over 9/4 s of arrivals plus the last one's ~30 ms (each wall ms the client is late moves an
    # arrival by 20 modelled ms); on the wall clock they were 0.2 requests/s
    assert 3.0 < result.request_s < 5.0


@pytest.mark.slow
def test_bench_agrees_with_sim_predict_at_one_load(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    """`autotune bench --concurrency C` against the sim server runs the level `sim predict --concurrency C` models
    (a study's: the same requests, warm-up wave, ramp and steady window), so their throughputs agree; bench once
    counted the whole run (28% below predict's at C = 32)."""
    from autotune.cli import main

    concurrency = "16"
    assert main(["bench", "--url", server.url, "--model", NAME, "--concurrency", concurrency, "--json"]) == 0
    bench = json.loads(capsys.readouterr().out)
    assert main(["sim", "predict", "--model", "flash", "--concurrency", concurrency, "--json"]) == 0
    predict = json.loads(capsys.readouterr().out)
    for key in ("num_prompts", "warmup_prompts", "ramp_s", "completed"):
        assert bench[key] == predict[key], key
    # over HTTP an arrival lands the client's wall latency (x the time scale) after the step that freed its slot
    assert bench["output_tok_s"] == pytest.approx(predict["output_tok_s"], rel=0.05)
    assert bench["steady_window_s"] == pytest.approx(predict["steady_window_s"], rel=0.05)
