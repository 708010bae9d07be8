"""A stand-in for `vllm serve`, for launcher tests.

    python tests/fake_engine.py --mode MODE [MODEL] [vLLM flags...] --port P --host H --served-model-name N

Modes: ok (serves vLLM's API through autotune.testing.fakeserver, tokens at once), crash (OOM line, exit 1 after
0.5 s), hang (never answers), ignore_sigterm (needs SIGKILL), spawn_child (starts a grandchild that ignores
SIGTERM and would outlive it unless the group is killed; its pid goes to the log as GRANDCHILD_PID=N),
wrong_name (lists another model name), bad_flags (argparse error, exit 2).
Every mode first prints SAMPLE_VLLM_LOG, vLLM-like startup lines the launcher parses.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

# Reconstructed from vLLM's format strings (V1 engine, TP=1, GLM-4-9B shape on an H100, 0.26-era), with the
# usual "(Proc pid=N) LEVEL date [file:line]" prefixes. KV capacity on two lines, as kv_cache_utils.py logs it.
SAMPLE_VLLM_LOG = """\
(APIServer pid=4242) INFO 06-02 10:11:02 [api_server.py:1885] vLLM API server version 0.26.0
(APIServer pid=4242) INFO 06-02 10:11:02 [utils.py:326] non-default args: {'model': '/tmp/model', 'load_format': 'dummy'}
(APIServer pid=4242) INFO 06-02 10:11:09 [model.py:547] Resolved architecture: Glm4ForCausalLM
(APIServer pid=4242) INFO 06-02 10:11:09 [model.py:1510] Using max model len 131072
(APIServer pid=4242) INFO 06-02 10:11:10 [scheduler.py:205] Chunked prefill is enabled with max_num_batched_tokens=8192.
(EngineCore_DP0 pid=4310) INFO 06-02 10:11:18 [core.py:93] Initializing a V1 LLM engine (v0.26.0) with config: model='/tmp/model'
(EngineCore_DP0 pid=4310) INFO 06-02 10:11:21 [gpu_model_runner.py:2602] Starting to load model /tmp/model...
(EngineCore_DP0 pid=4310) INFO 06-02 10:11:27 [gpu_model_runner.py:2653] Model loading took 17.5812 GiB memory and 5.312871 seconds
(EngineCore_DP0 pid=4310) INFO 06-02 10:11:39 [backends.py:548] Using cache directory: /root/.cache/vllm/torch_compile_cache/3f2a/rank_0_0/backbone for vLLM's torch.compile
(EngineCore_DP0 pid=4310) INFO 06-02 10:11:39 [backends.py:559] Dynamo bytecode transform time: 11.42 s
(EngineCore_DP0 pid=4310) INFO 06-02 10:12:08 [backends.py:215] Compiling a graph for dynamic shape takes 27.03 s
(EngineCore_DP0 pid=4310) INFO 06-02 10:12:21 [monitor.py:34] torch.compile takes 38.45 s in total
(EngineCore_DP0 pid=4310) INFO 06-02 10:12:23 [gpu_worker.py:298] Available KV cache memory: 52.24 GiB
(EngineCore_DP0 pid=4310) INFO 06-02 10:12:23 [kv_cache_utils.py:1087] GPU KV cache size: 1,369,488 tokens
(EngineCore_DP0 pid=4310) INFO 06-02 10:12:23 [kv_cache_utils.py:1091] Maximum concurrency for 131,072 tokens per request: 10.45x
(EngineCore_DP0 pid=4310) INFO 06-02 10:12:47 [gpu_model_runner.py:3480] Graph capturing finished in 24 secs, took 0.68 GiB
(EngineCore_DP0 pid=4310) INFO 06-02 10:12:47 [core.py:210] init engine (profile, create kv cache, warmup model) took 79.86 seconds
(APIServer pid=4242) INFO 06-02 10:12:49 [api_server.py:1620] Starting vLLM API server 0 on http://127.0.0.1:8000
(APIServer pid=4242) INFO:     Started server process [4242]
(APIServer pid=4242) INFO:     Waiting for application startup.
(APIServer pid=4242) INFO:     Application startup complete.
"""

OOM_LINES = """\
(EngineCore_DP0 pid=4310) ERROR 06-02 10:11:30 [core.py:708] EngineCore failed to start.
(EngineCore_DP0 pid=4310) ERROR 06-02 10:11:30 [core.py:708] Traceback (most recent call last):
(EngineCore_DP0 pid=4310) ERROR 06-02 10:11:30 [core.py:708] torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.02 GiB is free.
"""


def _serve(args: argparse.Namespace) -> None:
    # imported here: the modes that never serve start (and crash) without aiohttp's import time
    from aiohttp import web

    from autotune.testing.fakeserver import make_app
    from autotune.vllm_api.responder import bind_error_line

    name = "someone-else" if args.mode == "wrong_name" else args.served_model_name
    try:  # SIGTERM keeps its default action (or the ignore_sigterm mode's SIG_IGN)
        web.run_app(make_app({"models": [name]}), host=args.host, port=args.port, handle_signals=False,
                    print=None, access_log=None)
    except OSError as e:
        print(f"(APIServer pid={os.getpid()}) {bind_error_line(args.host, args.port, e)}", flush=True)
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(prog="vllm serve")
    parser.add_argument("--mode", default=os.environ.get("FAKE_ENGINE_MODE", "ok"),
                        choices=["ok", "crash", "hang", "ignore_sigterm", "spawn_child", "wrong_name", "bad_flags"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--startup-delay-s", type=float, default=0.0)
    args, _rest = parser.parse_known_args()
    if args.mode == "bad_flags":
        parser.error("unrecognized arguments: --no-such-flag")
    print(SAMPLE_VLLM_LOG, end="", flush=True)
    env_keys = ("CUDA_VISIBLE_DEVICES", "NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS",
                "PYTHONUNBUFFERED", "FAKE_EXTRA")
    print("FAKE_ENV " + " ".join(f"{k}={os.environ.get(k, '')}" for k in env_keys), flush=True)
    time.sleep(args.startup_delay_s)
    if args.mode == "crash":
        time.sleep(0.5)
        print(OOM_LINES, end="", flush=True)
        sys.exit(1)
    if args.mode == "hang":
        while True:
            time.sleep(3600)
    if args.mode == "ignore_sigterm":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.mode == "spawn_child":
        child = subprocess.Popen([sys.executable, "-c",
                                  "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
                                 stdin=subprocess.DEVNULL)
        print(f"GRANDCHILD_PID={child.pid}", flush=True)
    _serve(args)


if __name__ == "__main__":
    main()
