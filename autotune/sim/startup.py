"""The sim engine's startup: memory plan, modelled startup times and vLLM 0.26's startup log wording.

Wording taken from vLLM's sources (vllm/v1/worker/gpu_model_runner.py "Model loading took %s GiB memory and
%.6f seconds", gpu_worker.py "Available KV cache memory: %s GiB", v1/core/kv_cache_utils.py "GPU KV cache
size: %s tokens" / "Maximum concurrency for %s tokens per request: %.2fx", compilation/monitor.py
"torch.compile takes %.2f s in total", gpu_model_runner.py "Graph capturing finished in %.0f secs, took
%.2f GiB", v1/engine/core.py "init engine (profile, create kv cache, warmup model) took %.2f seconds",
entrypoints/openai/api_server.py "Starting vLLM API server %d on %s", uvicorn "Application startup complete.").
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from autotune.sim.engine import EngineSetup
from autotune.sim.perf import StartupTimes
from autotune.vllm_api import VLLM_VERSION

__all__ = ["StartupReport", "startup_report", "log_line", "failure_lines"]


def log_line(level: str, source: str, message: str, engine_core: int | None = None) -> str:
    """vLLM's log format: ``[(EngineCore_DP0 pid=N) ]INFO 11-25 18:17:20 [file.py:123] message``."""
    prefix = f"(EngineCore_DP{engine_core} pid={os.getpid()}) " if engine_core is not None else ""
    return f"{prefix}{level} {time.strftime('%m-%d %H:%M:%S')} [{source}] {message}"


@dataclass(frozen=True)
class StartupReport:
    times: StartupTimes
    lines: list[tuple[float, str]]  # (fraction of the startup wait after which to print, line)


def startup_report(setup: EngineSetup, model_arg: str, host: str | None, port: int = 0) -> StartupReport:
    """The startup lines; without a ``host`` (the engine in-process) no API server line: nothing listens."""
    plan, perf = setup.plan, setup.perf
    times = perf.startup_times(plan.weights_gib_per_gpu)
    block = setup.sched_cfg.block_size
    blocks_per_req = -(-plan.max_model_len // block)
    max_conc = setup.sched_cfg.num_blocks / blocks_per_req
    graph_gib = times.num_capture_sizes * perf.c.graph_memory_gib_per_size
    total = times.total_s
    at_load = times.weight_load_s / total
    at_compile = (times.weight_load_s + times.torch_compile_s) / total
    at_graph = (total - times.other_s / 2) / total
    ec = 0
    lines = [
        (0.0, log_line("INFO", "api_server.py:1885", f"vLLM API server version {VLLM_VERSION} (autotune sim)")),
        (0.0, log_line("INFO", "gpu_model_runner.py:3338", f"Starting to load model {model_arg}...", ec)),
        (at_load, log_line("INFO", "gpu_model_runner.py:3430",
                           f"Model loading took {plan.weights_gib_per_gpu:.2f} GiB memory and "
                           f"{times.weight_load_s:.6f} seconds", ec)),
    ]
    if times.torch_compile_s:
        lines.append((at_compile, log_line("INFO", "monitor.py:34",
                                           f"torch.compile takes {times.torch_compile_s:.2f} s in total", ec)))
    lines += [
        (at_compile, log_line("INFO", "gpu_worker.py:359",
                              f"Available KV cache memory: {plan.kv_cache_gib_per_gpu:.2f} GiB", ec)),
        (at_compile, log_line("INFO", "kv_cache_utils.py:1229",
                              f"GPU KV cache size: {plan.kv_cache_tokens:,} tokens", ec)),
        (at_compile, log_line("INFO", "kv_cache_utils.py:1234",
                              f"Maximum concurrency for {plan.max_model_len:,} tokens per request: {max_conc:.2f}x",
                              ec)),
    ]
    if times.graph_capture_s:
        lines.append((at_graph, log_line("INFO", "gpu_model_runner.py:4244",
                                         f"Graph capturing finished in {times.graph_capture_s:.0f} secs, "
                                         f"took {graph_gib:.2f} GiB", ec)))
    init_s = total - times.weight_load_s
    lines.append((1.0, log_line("INFO", "core.py:250",
                                f"init engine (profile, create kv cache, warmup model) took {init_s:.2f} seconds",
                                ec)))
    if host is not None:
        lines.append((1.0, log_line("INFO", "api_server.py:1977", f"Starting vLLM API server 0 on http://{host}:{port}")))
    return StartupReport(times, lines)


ENGINE_DEAD_MESSAGE = "EngineCore encountered an issue. See stack trace (above) for the root cause."


def engine_death_lines(error: str) -> list[str]:
    """What vLLM prints when its engine core dies while serving (the API server then answers 500
    EngineDeadError); ``error`` is the root cause's exception line."""
    return [log_line("ERROR", "core.py:1332", "EngineCore encountered a fatal error.", 0), error,
            log_line("ERROR", "async_llm.py:704", f"vllm.v1.engine.exceptions.EngineDeadError: {ENGINE_DEAD_MESSAGE}")]


def failure_lines(reason: str, failure_class: str) -> list[str]:
    """What vLLM prints to stderr when it fails to start: a config check (bad flags) fails in the API server
    as pydantic's validation error, before any engine core; memory fails in the engine core, the root cause
    as its exception. The launcher classifies the failure from these lines."""
    if failure_class == "bad_flags":
        return [
            "Traceback (most recent call last):",
            '  File "vllm/engine/arg_utils.py", in create_engine_config',
            "pydantic_core._pydantic_core.ValidationError: 1 validation error for SchedulerConfig",
            f"  Value error, {reason} [type=value_error, input_value=ArgsKwargs(()), input_type=ArgsKwargs]",
        ]
    exc = "torch.OutOfMemoryError" if failure_class == "oom" else "ValueError"
    return [
        log_line("ERROR", "core.py:708", "EngineCore failed to start.", 0),
        "Traceback (most recent call last):",
        '  File "vllm/v1/engine/core.py", line 699, in run_engine_core',
        f"{exc}: {reason}",
        "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
    ]
