"""What a launch is (LaunchSpec), what its startup log says (StartupInfo), and why it failed.

The regexes below follow vLLM's own logger format strings (0.2x, V1 engine); each names its source
file. Counts may carry thousands separators (``f"{n:,}"``); both the older two-line and the newer
merged KV-capacity lines are understood.
"""
from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotune.errors import UsageError
from autotune.flags import LAUNCHER_FLAGS, flags_to_argv, normalize_flag_name
from autotune.gpu_ids import GpuId
from autotune.models import ModelSpec

if TYPE_CHECKING:  # the sim's noise model: its module imports the sim package
    from autotune.sim.noise import RunNoise

__all__ = ["LaunchSpec", "StartupInfo", "parse_startup_log", "classify_failure", "FAILURE_CLASSES", "vllm_serve_cmd",
           "serve_cmd_model", "vllm_installed"]

ENGINES = ("vllm", "sim")
FAILURE_CLASSES = ("oom", "kv_too_small", "port_in_use", "bad_flags", "timeout", "crash")


def vllm_installed() -> bool:
    """Whether a vLLM server can be launched here: ``vllm`` on PATH, or its module importable by this Python
    (the two ways :attr:`LaunchSpec.serve_cmd` starts one)."""
    return shutil.which("vllm") is not None or importlib.util.find_spec("vllm") is not None


@dataclass(frozen=True)
class LaunchSpec:
    """One server launch. ``flags`` use vLLM's dash spelling without leading dashes; the launcher owns
    --port, --host and --served-model-name, so they may not appear in ``flags``."""

    engine: str
    model: ModelSpec
    flags: dict[str, Any]
    gpu_ids: tuple[GpuId, ...]  # as CUDA_VISIBLE_DEVICES takes them, given to the server verbatim
    served_model_name: str
    log_path: Path
    gpu_type: str | None = None  # sim only: which card to model
    time_scale: float = 1.0  # sim only
    sim_noise: RunNoise | None = None  # in-process sim only: run-to-run noise
    sim_noise_seed: int = 0
    startup_timeout_s: float = 900.0
    extra_env: dict[str, str] = field(default_factory=dict)
    python: str = sys.executable
    vllm_cmd: tuple[str, ...] | None = None  # override of the `vllm serve` prefix
    ledger_dir: Path | None = None  # where the started server is recorded until stopped (engines/ledger.py)
    sim_fault: str = ""  # sim only: a fault for `autotune sim serve --fault` (sim/faults.py)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise UsageError(f"unknown engine {self.engine!r}; known: {', '.join(ENGINES)}")
        owned = {normalize_flag_name(k) for k in self.flags} & LAUNCHER_FLAGS
        if owned:
            raise UsageError(f"flags {', '.join(sorted(owned))} are set by the launcher, not by a search space")
        if not self.served_model_name:
            raise UsageError("served_model_name must be a non-empty unique name")
        object.__setattr__(self, "gpu_ids", tuple(self.gpu_ids))
        # checked here, not at the launch: the in-process sim never joins them into CUDA_VISIBLE_DEVICES, so an
        # integer would pass there and fail only on a served engine
        if bad := [g for g in self.gpu_ids if not isinstance(g, str)]:
            raise TypeError(f"gpu_ids are strings as CUDA_VISIBLE_DEVICES names the devices ('0', 'GPU-<uuid>'), "
                            f"got {bad[0]!r}")
        object.__setattr__(self, "log_path", Path(self.log_path))
        if self.vllm_cmd is not None:
            object.__setattr__(self, "vllm_cmd", tuple(self.vllm_cmd))

    @property
    def serve_cmd(self) -> tuple[str, ...]:
        """The `vllm serve` prefix: the override, else `vllm serve` if on PATH, else the module form."""
        if self.vllm_cmd is not None:
            return self.vllm_cmd
        if shutil.which("vllm"):
            return ("vllm", "serve")
        return (self.python, "-m", "vllm.entrypoints.cli.main", "serve")

    @property
    def vllm_serve_cmd(self) -> str:
        """`vllm serve MODEL --flags...` for the exported profile (no port, host or served name)."""
        return vllm_serve_cmd(self.model.hf_id or self.model.local_path or self.model.name, self.flags)

    @property
    def model_ref(self) -> str:
        """What the engine gets as MODEL: the HF id (or folder) for vLLM; folder or preset name for sim."""
        if self.engine == "sim":
            return self.model.local_path or self.model.name
        return self.model.hf_id or self.model.local_path or self.model.name


def vllm_serve_cmd(model: str, flags: dict[str, Any]) -> str:
    """The `vllm serve` command line a study records for a configuration, and ``export`` writes."""
    return shlex.join(["vllm", "serve", model, *flags_to_argv(flags)])


def serve_cmd_model(command: str) -> str:
    """The MODEL of a command :func:`vllm_serve_cmd` wrote (what `vllm serve` was given: HF id or folder)."""
    words = shlex.split(command)
    if words[:2] != ["vllm", "serve"] or len(words) < 3 or words[2].startswith("-"):
        raise UsageError(f"not a `vllm serve MODEL ...` command: {command!r}")
    return words[2]


@dataclass(frozen=True)
class StartupInfo:
    """Figures read from a startup log; None where the line was not found."""

    model_memory_gib: float | None = None
    model_load_s: float | None = None
    available_kv_gib: float | None = None
    kv_cache_tokens: int | None = None
    max_concurrency: float | None = None
    max_concurrency_len: int | None = None  # the tokens-per-request the concurrency figure assumes
    compile_s: float | None = None
    graph_capture_s: float | None = None
    graph_memory_gib: float | None = None
    engine_init_s: float | None = None
    # vLLM's own memory accounting per rank (0.21 and later): the budget (gpu-memory-utilization x the card), and
    # what it reserved beside the weights and the KV cache
    gpu_memory_utilization: float | None = None
    memory_budget_gib: float | None = None
    peak_activation_gib: float | None = None  # the profiling run's peak, at max-num-batched-tokens
    non_torch_gib: float | None = None
    graph_memory_estimate_gib: float | None = None  # what the KV cache was sized with; graph_memory_gib: taken
    profile_run_s: float | None = None  # the memory profiling run (the encoder's on the largest images included)
    ready_s: float | None = None  # wall seconds from spawn to ready (set by the launcher)
    # The fused-MoE tuning file vLLM looked for and did not find ("E=128,N=704,device_name=NVIDIA_H200.json"): its
    # MoE layers run on the kernel's default config. None: a tuned one was found, or the model is not an MoE.
    untuned_moe_config: str | None = None

    def as_dict(self) -> dict[str, float | int | str | None]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StartupInfo:
        """A trial record's startup figures (keys it does not know are left out: older or newer records)."""
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


_NUM = r"(-?[\d,]*\.?\d+)"
# vllm/model_executor/layers/fused_moe/fused_moe.py, at the profiling run: "Using default MoE config. Performance
# might be sub-optimal! Config file not found at %s" (the paths it tried, joined by ", ")
_MOE_DEFAULT_CONFIG = re.compile(r"Using default MoE config\. Performance might be sub-optimal! Config file not found "
                                 r"at (\S+?\.json)")
# vllm/v1/worker/gpu_model_runner.py (and gpu/model_runner.py):
#   "Model loading took %s GiB memory and %.6f seconds"  (newer: "Model loading took %s GiB and %.6f seconds")
_MODEL_LOAD = re.compile(rf"Model loading took {_NUM} GiB(?: memory)? and {_NUM} seconds")
# vllm/v1/worker/gpu_worker.py: "Available KV cache memory: %s GiB" (optionally " (process-scoped)")
_AVAILABLE_KV = re.compile(rf"Available KV cache memory: {_NUM} GiB")
# vllm/v1/core/kv_cache_utils.py: "GPU KV cache size: %s tokens" and
#   "Maximum concurrency for %s tokens per request: %.2fx" (two lines, or merged into one with ", ")
_KV_TOKENS = re.compile(rf"GPU KV cache size: {_NUM} tokens")
_MAX_CONC = re.compile(rf"Maximum concurrency for {_NUM} tokens per request: {_NUM}x")
# vllm/compilation/monitor.py: "torch.compile takes %.2f s in total"
_COMPILE = re.compile(rf"torch\.compile takes {_NUM} s in total")
# vllm/v1/worker/gpu_model_runner.py: "Graph capturing finished in %.0f secs, took %.2f GiB"
_GRAPH = re.compile(rf"Graph capturing finished in {_NUM} secs, took {_NUM} GiB")
# vllm/v1/worker/gpu_worker.py (0.21 and later), after the graphs are captured: "... Desired GPU memory utilization
#   is (%s, %.2f GiB). Actual usage is %.2f GiB for weight, %.2f GiB for peak activation, %.2f GiB for non-torch
#   memory, and %.2f GiB for CUDAGraph memory. ..."
_MEMORY_ACCOUNT = re.compile(
    rf"Desired GPU memory utilization is \({_NUM}, {_NUM} GiB\)\. Actual usage is {_NUM} GiB for weight, "
    rf"{_NUM} GiB for peak activation, {_NUM} GiB for non-torch memory, and {_NUM} GiB for CUDAGraph memory")
# vllm/v1/worker/gpu_model_runner.py: "Estimated CUDA graph memory: %.2f GiB total" (taken out of the KV budget)
_GRAPH_ESTIMATE = re.compile(rf"Estimated CUDA graph memory: {_NUM} GiB total")
# vllm/v1/worker (0.26): "Initial profiling/warmup run took %.2f s"
_PROFILE_RUN = re.compile(rf"Initial profiling/warmup run took {_NUM} s")
# vllm/v1/engine/core.py: "init engine (profile, create kv cache, warmup model) took %.2f seconds"
#   (newer: "... took %.2f s (compilation: %.2f s)")
_ENGINE_INIT = re.compile(
    rf"init engine \(profile, create kv cache, warmup model\) took {_NUM} s(?:econds)?"
    rf"(?: \(compilation: {_NUM} s\))?"
)


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def _last(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    """The last match: a log that holds a retried launch describes the later one."""
    match = None
    for match in pattern.finditer(text):
        pass
    return match


def parse_startup_log(text: str) -> StartupInfo:
    """Read vLLM's (or the sim engine's vLLM-like) startup lines into a StartupInfo."""
    out: dict[str, float | int | str | None] = {}
    if m := _last(_MODEL_LOAD, text):
        out["model_memory_gib"], out["model_load_s"] = _num(m[1]), _num(m[2])
    if m := _last(_AVAILABLE_KV, text):
        out["available_kv_gib"] = _num(m[1])
    if m := _last(_KV_TOKENS, text):
        out["kv_cache_tokens"] = int(_num(m[1]))
    if m := _last(_MAX_CONC, text):
        out["max_concurrency_len"], out["max_concurrency"] = int(_num(m[1])), _num(m[2])
    if m := _last(_GRAPH, text):
        out["graph_capture_s"], out["graph_memory_gib"] = _num(m[1]), _num(m[2])
    if m := _last(_ENGINE_INIT, text):
        out["engine_init_s"] = _num(m[1])
        if m[2] is not None:
            out["compile_s"] = _num(m[2])
    if m := _last(_COMPILE, text):
        out["compile_s"] = _num(m[1])  # the dedicated line wins over the init summary
    if m := _last(_MEMORY_ACCOUNT, text):
        out["gpu_memory_utilization"], out["memory_budget_gib"] = _num(m[1]), _num(m[2])
        out["peak_activation_gib"], out["non_torch_gib"] = _num(m[4]), _num(m[5])
        out.setdefault("graph_memory_gib", _num(m[6]))
    if m := _last(_GRAPH_ESTIMATE, text):
        out["graph_memory_estimate_gib"] = _num(m[1])
    if m := _last(_PROFILE_RUN, text):
        out["profile_run_s"] = _num(m[1])
    if m := _last(_MOE_DEFAULT_CONFIG, text):
        out["untuned_moe_config"] = m[1].rsplit("/", 1)[-1]  # the first of the paths it tried
    return StartupInfo(**out)  # type: ignore[arg-type]


# Most specific first; matched case-insensitively against the whole log.
_FAILURE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("bad_flags", re.compile(r"error: unrecognized arguments|error: argument |: error: invalid choice", re.I)),
    ("kv_too_small", re.compile(
        r"No available memory for the cache blocks"
        r"|larger than the maximum number of tokens that can be stored in KV cache"
        r"|KV cache is needed, which is larger than the available KV cache memory"
        r"|Cannot auto-fit max_model_len"
        r"|max_model_len \(\d+\) is greater than the derived max_model_len"
        r"|estimated maximum model length is", re.I)),
    ("oom", re.compile(
        r"CUDA out of memory|torch\.OutOfMemoryError|torch\.cuda\.OutOfMemoryError|CUDA error: out of memory"
        r"|Free memory on device .* is less than desired GPU memory utilization", re.I)),
    ("port_in_use", re.compile(r"Address already in use|\[Errno 98\]", re.I)),
    ("bad_flags", re.compile(r"pydantic_core\._pydantic_core\.ValidationError|validation error for \w+Config", re.I)),
)


def classify_failure(log_text: str, exited: bool, timed_out: bool) -> str:
    """One of FAILURE_CLASSES. Evidence in the log wins; otherwise timeout if the wait ran out, else crash."""
    for cls, pattern in _FAILURE_PATTERNS:
        if pattern.search(log_text):
            return cls
    if timed_out:
        return "timeout"
    return "crash"
