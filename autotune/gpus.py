"""GPU cards: datasheet figures and fitted constants, one YAML file per card under calibration/."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from autotune.errors import UsageError

__all__ = ["GpuSpec", "load_gpu", "known_gpus", "detect_gpu", "gpu_indices", "sim_caveats"]


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_gib: float
    bf16_tflops: float
    fp8_tflops: float
    hbm_tb_s: float
    nvlink_gb_s: float
    non_torch_gib: float
    activation_gib_per_1k_batched_tokens: float
    extra: dict[str, Any] | None = None  # further fitted constants the sim engine's timing model reads
    # per limit metric: what the sim engine's answers under that limit are known to get wrong on this card, measured
    # against it (docs/results/sim-accuracy.md); a sim study under that limit says so
    sim_caveats: dict[str, str] | None = None


def sim_caveats(gpu: GpuSpec, metrics: Iterable[str]) -> list[str]:
    """The card's caveats for a sim study under limits on ``metrics``, in their order."""
    known = gpu.sim_caveats or {}
    return [f"the sim engine on the {gpu.name} card, P99 {metric.upper()} limit: {known[metric]}"
            for metric in metrics if metric in known]


def known_gpus() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("autotune.calibration").iterdir() if p.name.endswith(".yaml"))


@lru_cache(maxsize=None)
def load_gpu(name: str) -> GpuSpec:
    key = name.lower().strip()
    if key not in known_gpus():
        raise UsageError(f"unknown GPU type {name!r}; known: {', '.join(known_gpus())}")
    data = yaml.safe_load(resources.files("autotune.calibration").joinpath(f"{key}.yaml").read_text())
    names = {f.name for f in fields(GpuSpec)}
    base = {k: v for k, v in data.items() if k in names}
    base["extra"] = {k: v for k, v in data.items() if k not in names} or None
    return GpuSpec(**base)


def detect_gpu() -> str | None:
    """The card type of GPU 0 from nvidia-smi ("h100", "h200"), or None where there is no NVIDIA GPU."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.strip().splitlines()[0].lower() if out.strip() else ""
    for card in known_gpus():
        if card in first:
            return card
    return None


def gpu_indices() -> list[int]:
    """The indices of the NVIDIA GPUs nvidia-smi lists (PCI bus order); empty where there are none."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(line) for line in out.split() if line.strip().isdigit()]
