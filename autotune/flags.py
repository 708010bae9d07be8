"""vLLM serve flags: the ones autotune knows, their types and defaults, and flags -> argv.

Flags are kept as a plain dict keyed by vLLM's own spelling without dashes in front
(``{"max-num-seqs": 256, "kv-cache-dtype": "fp8", "enable-prefix-caching": False}``), so that what the
study stores, what the profile shows and what ``vllm serve`` gets are the same words.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from autotune.errors import UsageError

__all__ = ["FlagDef", "VLLM_FLAGS", "flags_to_argv", "normalize_flag_name", "check_flag_value", "effective_flags",
           "mm_limit", "DEFAULT_MM_LIMIT", "changed_flags", "deploy_flags", "LAUNCHER_FLAGS", "PARALLEL_FLAGS"]


@dataclass(frozen=True)
class FlagDef:
    name: str
    type: type  # int, float, str, bool, dict
    default: Any = None  # vLLM 0.26 default on an H100 for `vllm serve` (None: vLLM decides / unset)
    choices: tuple[Any, ...] | None = None
    help: str = ""
    zero_allowed: bool = False  # a number flag where 0 is meaningful (else numbers must be positive)
    max_value: float | None = None  # a number flag's largest value vLLM accepts (None: no bound of its own)


# The subset of `vllm serve` flags that the tuner searches, the sim engine models, or the launcher sets.
_DEFS = [
    FlagDef("max-num-seqs", int, 1024, help="max sequences in a batch (vLLM's H100 default for serve)"),
    FlagDef("max-num-batched-tokens", int, 8192, help="token budget per scheduler step (chunked prefill)"),
    # vLLM 0.26.0's default (its start-up line "Desired GPU memory utilization is (0.92, ...)"; 0.9 until v0.2x)
    FlagDef("gpu-memory-utilization", float, 0.92, max_value=1.0),
    FlagDef("kv-cache-dtype", str, "auto", ("auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2")),
    FlagDef("max-model-len", int, None),
    FlagDef("tensor-parallel-size", int, 1),
    FlagDef("data-parallel-size", int, 1),
    FlagDef("pipeline-parallel-size", int, 1),
    FlagDef("renderer-num-workers", int, 1, help="API server threads for chat templates, tokenization, image preprocessing"),
    FlagDef("api-server-count", int, None, help="API server processes (vLLM: one per data-parallel rank when unset)"),
    FlagDef("enable-expert-parallel", bool, False),
    FlagDef("mm-encoder-tp-mode", str, "weights", ("weights", "data")),
    FlagDef("enable-chunked-prefill", bool, True),
    FlagDef("enable-prefix-caching", bool, True),
    FlagDef("async-scheduling", bool, True),
    FlagDef("max-cudagraph-capture-size", int, 512),
    FlagDef("enforce-eager", bool, False),
    FlagDef("block-size", int, 16, (16, 32, 64, 128)),
    FlagDef("dtype", str, "auto", ("auto", "bfloat16", "float16", "half", "float32")),
    FlagDef("quantization", str, None, ("fp8",)),
    FlagDef("load-format", str, "auto", ("auto", "dummy", "safetensors", "pt")),
    FlagDef("seed", int, 0),
    FlagDef("trust-remote-code", bool, False),
    # The multimodal flags as vLLM's MultiModalConfig spells them (vllm/config/multimodal.py, read at vllm-project/vllm
    # commit 01230b40): limit-mm-per-prompt takes JSON, {"image": 4, "video": 0} (a count per modality, 999 when
    # unset) or {"image": {"count": 4, "width": 512, "height": 512}} (also the size profiled at start-up).
    FlagDef("limit-mm-per-prompt", dict, None, help='items per prompt by modality, JSON: {"image": 4, "video": 0}'),
    FlagDef("mm-processor-cache-gb", float, 4.0, zero_allowed=True,
            help="GiB of CPU memory per API/engine process caching processed images (0: off)"),
    FlagDef("mm-processor-cache-type", str, "lru", ("lru", "shm")),
    FlagDef("skip-mm-profiling", bool, False,
            help="skip profiling the vision encoder's memory at start-up (faster start; the encoder's peak is "
                 "then not reserved: KV cache may take memory the encoder needs, an OOM under image load)"),
    FlagDef("compilation-config", dict, None),
    FlagDef("swap-space", float, 4.0),
    FlagDef("disable-log-stats", bool, False),
    FlagDef("served-model-name", str, None),
    FlagDef("host", str, None),
    FlagDef("port", int, 8000, max_value=65535),  # a TCP port
    FlagDef("uvicorn-log-level", str, "info", ("debug", "info", "warning", "error", "critical", "trace")),
    FlagDef("tokenizer", str, None),
]
VLLM_FLAGS: dict[str, FlagDef] = {d.name: d for d in _DEFS}
_ALIASES = {"tp": "tensor-parallel-size", "dp": "data-parallel-size", "pp": "pipeline-parallel-size"}
# Flags the launcher owns; a search space or a user must not set them.
LAUNCHER_FLAGS = frozenset({"served-model-name", "host", "port"})
# The GPUs' layout: it follows --gpus and a search space's `parallel` choices (the baselines' too), never a flag of
# its own in a space, a --set or anywhere else a fixed value would break that.
PARALLEL_FLAGS = frozenset({"tensor-parallel-size", "data-parallel-size"})
# Flag values that only make sense while measuring: `--load-format dummy` tunes a model's speed with random
# weights, and a deployment must load the real ones. An export leaves them out and says so.
MEASUREMENT_ONLY = {"load-format": frozenset({"dummy"})}


def normalize_flag_name(name: str) -> str:
    """`--max_num_seqs`, `max-num-seqs`, `-tp` -> canonical dash spelling; unknown names raise UsageError."""
    key = name.lstrip("-").replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in VLLM_FLAGS:
        raise UsageError(f"unknown vLLM flag {name!r}")
    return key


def check_flag_value(name: str, value: Any) -> Any:
    """Coerce and validate one value for a known flag; returns the coerced value."""
    fdef = VLLM_FLAGS[normalize_flag_name(name)]
    if value is None:
        return None
    try:
        if fdef.type is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                value = value.lower() in ("true", "1", "yes")
            value = bool(value)
        elif fdef.type is dict:
            value = json.loads(value) if isinstance(value, str) else dict(value)
            if not isinstance(value, dict):
                raise ValueError(value)
        elif fdef.type is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        else:
            value = fdef.type(value)
    except (TypeError, ValueError):
        raise UsageError(f"flag {fdef.name}: {value!r} is not a valid {fdef.type.__name__}") from None
    if fdef.choices and value not in fdef.choices:
        raise UsageError(f"flag {fdef.name}: {value!r} not one of {', '.join(map(str, fdef.choices))}")
    if fdef.type in (int, float) and fdef.name != "seed" and (value < 0 or (value == 0 and not fdef.zero_allowed)):
        raise UsageError(f"flag {fdef.name}: must be {'>= 0' if fdef.zero_allowed else 'positive'}, got {value}")
    if fdef.name == "limit-mm-per-prompt":
        for modality in value:
            mm_limit(value, modality)  # each entry is checked here, once
    if fdef.max_value is not None and value > fdef.max_value:
        raise UsageError(f"flag {fdef.name}: must be at most {fdef.max_value:g}, got {value}")
    return value


DEFAULT_MM_LIMIT = 999  # vLLM's items per prompt for a modality limit-mm-per-prompt leaves out


def mm_limit(value: dict[str, Any] | None, modality: str) -> int:
    """The item count limit-mm-per-prompt allows for ``modality`` (vLLM's default where unset). Either spelling:
    ``{"image": 4}`` or ``{"image": {"count": 4, ...}}``; raises UsageError on anything else."""
    if not value or modality not in value:
        return DEFAULT_MM_LIMIT
    entry = value[modality]
    count = entry.get("count", DEFAULT_MM_LIMIT) if isinstance(entry, dict) else entry
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise UsageError(f"flag limit-mm-per-prompt: {modality!r} must be a count >= 0 or an object with one "
                         f"(e.g. {{\"{modality}\": 4}}), got {entry!r}")
    return count


def flags_to_argv(flags: dict[str, Any]) -> list[str]:
    """One dict of flags -> `vllm serve` arguments. Booleans as --x / --no-x, dicts as JSON, None dropped."""
    argv: list[str] = []
    for name in sorted(flags):
        value = flags[name]
        key = normalize_flag_name(name)
        if value is None:
            continue
        if isinstance(value, bool):
            argv.append(f"--{key}" if value else f"--no-{key}")
        elif isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value, separators=(",", ":"), sort_keys=True)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def effective_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """The given flags over vLLM's defaults, for models and comparisons (launcher-owned flags left out)."""
    out = {name: d.default for name, d in VLLM_FLAGS.items() if name not in LAUNCHER_FLAGS}
    out.update({normalize_flag_name(k): v for k, v in flags.items()})
    return out


def changed_flags(flags: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The flags whose value differs from vLLM's default: name -> (value, default), in name order."""
    defaults = effective_flags({})
    return {name: (value, defaults.get(name)) for name, value in sorted(effective_flags(flags).items())
            if defaults.get(name) != value}


def deploy_flags(flags: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the flags a deployment runs with, the measurement-only ones left out): see MEASUREMENT_ONLY."""
    kept, dropped = {}, {}
    for name, value in flags.items():
        key = normalize_flag_name(name)
        (dropped if value in MEASUREMENT_ONLY.get(key, ()) else kept)[key] = value
    return kept, dropped
