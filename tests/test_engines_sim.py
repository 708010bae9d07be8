"""The launcher against the real sim engine (`python -m autotune.sim serve ...`), end to end."""
from __future__ import annotations

import importlib.util
import json
import urllib.request
import uuid
from pathlib import Path

import pytest

from autotune.engines.base import LaunchSpec
from autotune.engines.launcher import EngineServer, live_servers, port_is_free
from autotune.models import PRESETS

pytestmark = pytest.mark.skipif(importlib.util.find_spec("autotune.sim.__main__") is None,
                                reason="the sim engine (autotune.sim.__main__) is not written yet")


@pytest.mark.slow  # launches the sim engine through the launcher
def test_sim_engine_end_to_end(tmp_path: Path) -> None:
    spec = LaunchSpec(engine="sim", model=PRESETS["flash"], flags={"max-num-seqs": 16, "max-model-len": 8192},
                      gpu_ids=(), served_model_name=f"autotune-sim-{uuid.uuid4().hex[:8]}",
                      log_path=tmp_path / "sim.log", gpu_type="h100", time_scale=50.0, startup_timeout_s=60)
    with EngineServer(spec, grace_s=5) as server:
        assert server.alive()
        req = urllib.request.Request(server.url + "/v1/completions", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"model": spec.served_model_name, "prompt": "Hello",
                                                      "max_tokens": 8, "ignore_eos": True}).encode())
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=30) as resp:
            out = json.loads(resp.read())
        assert out["usage"]["completion_tokens"] == 8
        # the sim prints vLLM-like startup lines; the same parser reads them
        assert server.startup.kv_cache_tokens and server.startup.kv_cache_tokens > 0, server.log_tail(20)
        assert server.startup.max_concurrency_len == 8192
        pid, port = server.pid, server.port
    assert not server.alive() and port_is_free(port) and server not in live_servers() and pid is not None
