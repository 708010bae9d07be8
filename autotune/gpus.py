"""GPU cards: datasheet figures and fitted constants, one YAML file per card under calibration/; and a host's own
card, a YAML file `autotune sim calibrate` writes: a built-in card (``base``) with some of its constants refitted
on that host's measurements (``calibrated_from`` says on which)."""
from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from autotune.errors import UsageError
from autotune.fileio import read_yaml
from autotune.gpu_ids import GpuId

__all__ = ["GpuSpec", "VisibleGpu", "load_gpu", "known_gpus", "detect_gpu", "gpu_indices", "visible_gpus", "card_of",
           "measured_card", "card_caveats", "FALLBACK_CARD", "sim_caveats", "is_card_file", "card_file_text",
           "interval_cards"]


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
    # a host's card (a file): the built-in card it starts from and what its constants were fitted on
    base: str | None = None
    calibrated_from: dict[str, Any] | None = None
    # a GPU no built-in card describes as it is (measured_card): its name as nvidia-smi gives it
    measured_name: str | None = None

    @property
    def card_ref(self) -> str:
        """What :func:`load_gpu` takes to give this card back: a measured GPU's is the card it starts from (the sim
        server and the in-process sim are handed a card by name)."""
        return self.base if self.measured_name and self.base else self.name

    def constants(self) -> dict[str, float]:
        """Every number of the card, the fitted ones in ``extra`` too, by name: what the sim's figures rest on."""
        numbers = {f.name: getattr(self, f.name) for f in fields(self)} | (self.extra or {})
        return {k: float(v) for k, v in sorted(numbers.items()) if _is_number(v)}


def interval_cards(gpu: GpuSpec) -> dict[str, dict[str, tuple[float, GpuSpec]]]:
    """A host's card whose constants `sim calibrate` gave 90% intervals: per constant, at its interval's "low" and
    "high" end, the value and the card with the constant there (the fitted constants live in ``extra``)."""
    intervals = (gpu.calibrated_from or {}).get("interval_90") or {}
    return {name: {side: (float(end), replace(gpu, extra={**(gpu.extra or {}), name: float(end)}))
                   for side, end in zip(("low", "high"), ends)}
            for name, ends in intervals.items()}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def sim_caveats(gpu: GpuSpec, metrics: Iterable[str]) -> list[str]:
    """The card's caveats for a sim study under limits on ``metrics``, in their order."""
    known = gpu.sim_caveats or {}
    return [f"the sim engine on the {gpu.name} card, P99 {metric.upper()} limit: {known[metric]}"
            for metric in metrics if metric in known]


def known_gpus() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("autotune.calibration").iterdir() if p.name.endswith(".yaml"))


def is_card_file(name: str) -> bool:
    """A host's card file (``--gpu-type my-h200.yaml``) rather than a built-in card's name."""
    return name.strip().lower().endswith((".yaml", ".yml"))


def load_gpu(name: str) -> GpuSpec:
    """A built-in card by name (h100, h200), or a host's card file by its path: named by the path, resolved, so
    that a sim server started from another folder reads the same file."""
    if is_card_file(name):
        return _load_card_file(Path(name).expanduser().resolve())
    return _load_builtin(name.lower().strip())


@lru_cache(maxsize=None)
def _load_builtin(key: str) -> GpuSpec:
    if key not in known_gpus():
        raise UsageError(f"unknown GPU type {key!r}; known: {', '.join(known_gpus())} (or a card file, .yaml, "
                         "written by `autotune sim calibrate`)")
    return _spec(_builtin_data(key))


def _spec(data: dict[str, Any]) -> GpuSpec:
    names = {f.name for f in fields(GpuSpec)}
    base = {k: v for k, v in data.items() if k in names}
    base["extra"] = {k: v for k, v in data.items() if k not in names} or None
    return GpuSpec(**base)


def _builtin_data(key: str) -> dict[str, Any]:
    return yaml.safe_load(resources.files("autotune.calibration").joinpath(f"{key}.yaml").read_text())


def _load_card_file(path: Path) -> GpuSpec:
    """Read on every call, not cached: a calibration may rewrite the file in the same process."""
    data = read_yaml(path, "card file")
    if not isinstance(data, dict) or not isinstance(data.get("base"), str):
        raise UsageError(f"card file {path}: expected a mapping with 'base: CARD' (one of {', '.join(known_gpus())})")
    key = data["base"].lower().strip()
    _load_builtin(key)  # a known card, or its one-line error
    card = _builtin_data(key)
    constants = {k: v for k, v in data.items() if k not in ("base", "calibrated_from")}
    unknown = sorted(k for k in constants if k not in card or k in ("name", "sim_caveats"))
    if unknown:
        raise UsageError(f"card file {path}: {unknown[0]!r} is not a constant of the {key} card")
    bad = sorted(k for k, v in constants.items() if not _is_number(v))
    if bad:
        raise UsageError(f"card file {path}: {bad[0]} must be a number")
    calibrated_from = data.get("calibrated_from") or {}
    if not isinstance(calibrated_from, dict):
        raise UsageError(f"card file {path}: calibrated_from must be a mapping")
    intervals = calibrated_from.get("interval_90") or {}
    entries = intervals.items() if isinstance(intervals, dict) else [("", intervals)]
    for name, ends in entries:
        if name not in card or not isinstance(ends, list) or len(ends) != 2 or not all(map(_is_number, ends)):
            raise UsageError(f"card file {path}: calibrated_from.interval_90 maps constants of the {key} card to "
                             f"[low, high], not {f'{name}: ' if name else ''}{ends!r}")
    return _spec({**card, **constants, "name": str(path), "base": key, "calibrated_from": calibrated_from})


def card_file_text(base: str, constants: dict[str, float], calibrated_from: dict[str, Any], header: str) -> str:
    """A host's card file: ``header`` (comment lines), the base card, its refitted constants, their provenance."""
    body = yaml.safe_dump({"base": base, **constants, "calibrated_from": calibrated_from}, sort_keys=False,
                          default_flow_style=None, width=110)
    return "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + body


@dataclass(frozen=True)
class VisibleGpu:
    """One GPU as nvidia-smi lists it."""

    index: GpuId  # as CUDA_VISIBLE_DEVICES takes it (PCI bus order)
    uuid: str
    name: str  # e.g. "NVIDIA H200"
    memory_gib: float  # its total memory
    driver: str  # the NVIDIA driver's version


def visible_gpus() -> list[VisibleGpu]:
    """The NVIDIA GPUs nvidia-smi lists; empty where there is none (or no nvidia-smi). Asked once per nvidia-smi and
    process: a run's start needs the list for its engine, its GPUs, its card and its record of the machine, and each
    query starts nvidia-smi, which asks the driver for every GPU."""
    import shutil

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    if smi not in _VISIBLE:
        gpus = _query_gpus(smi)
        if not gpus:  # not kept: a driver that did not answer this time may answer the next
            return []
        _VISIBLE[smi] = gpus
    return list(_VISIBLE[smi])


_VISIBLE: dict[str, tuple[VisibleGpu, ...]] = {}  # visible_gpus' answers, by the nvidia-smi that gave them


def _query_gpus(smi: str) -> tuple[VisibleGpu, ...]:
    import subprocess

    try:
        out = subprocess.run([smi, "--query-gpu=index,uuid,name,memory.total,driver_version",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    gpus = []
    for line in out.splitlines():
        fields_ = [f.strip() for f in line.split(",")]
        if len(fields_) != 5 or not fields_[0].isdigit():
            continue
        try:
            memory_gib = float(fields_[3]) / 1024  # MiB
        except ValueError:  # "[N/A]"
            memory_gib = math.nan
        gpus.append(VisibleGpu(fields_[0], fields_[1], fields_[2], memory_gib, fields_[4]))
    return tuple(gpus)


def card_of(gpu_name: str) -> str | None:
    """The built-in card whose name an nvidia-smi name holds ("NVIDIA H200" -> "h200"), else None."""
    lowered = gpu_name.lower()
    return next((card for card in known_gpus() if card in lowered), None)


def detect_gpu() -> str | None:
    """The card type of GPU 0 from nvidia-smi ("h100", "h200"), or None where there is no NVIDIA GPU or it is none
    of the built-in cards."""
    gpus = visible_gpus()
    return card_of(gpus[0].name) if gpus else None


def gpu_indices() -> list[GpuId]:
    """The indices of the NVIDIA GPUs nvidia-smi lists (PCI bus order), as CUDA_VISIBLE_DEVICES takes them; empty
    where there are none."""
    return [gpu.index for gpu in visible_gpus()]


# A GPU whose memory differs from its built-in card's by more than this is another size of it (H100 NVL's 94 GB
# against the SXM's 80): its own memory is used. Within it, the card's (nvidia-smi's total and the one torch reports
# differ by up to 0.6 GiB on an H200).
SAME_MEMORY_TOLERANCE = 0.02
FALLBACK_CARD = "h100"  # the constants of a GPU no built-in card describes, its memory aside


def measured_card(ids: Iterable[GpuId]) -> GpuSpec | None:
    """The card of the GPUs ``ids`` (indices or GPU UUIDs) as this machine has them: their built-in card, where
    nvidia-smi's name names one and the memory agrees; else that card (or :data:`FALLBACK_CARD`'s) with the smallest
    of their memories, named after them and marked :attr:`GpuSpec.measured_name`. None where nvidia-smi lists none
    of them (no nvidia-smi, or MIG slices, whose memory its GPU query does not give)."""
    wanted = set(ids)
    gpus = [g for g in visible_gpus() if (g.index in wanted or g.uuid in wanted) and not math.isnan(g.memory_gib)]
    if not gpus:
        return None
    smallest = min(gpus, key=lambda g: g.memory_gib)
    key = card_of(smallest.name)
    card = load_gpu(key or FALLBACK_CARD)
    if key is not None and abs(smallest.memory_gib - card.memory_gib) <= SAME_MEMORY_TOLERANCE * card.memory_gib:
        return card
    slug = re.sub(r"[^a-z0-9.]+", "-", re.sub(r"^nvidia\s+", "", smallest.name.lower())).strip("-.") or "gpu"
    return replace(card, name=slug, memory_gib=round(smallest.memory_gib, 3), base=card.name,
                   measured_name=smallest.name)


def card_caveats(gpu: GpuSpec) -> list[str]:
    """What a study on a GPU measured here (:func:`measured_card`) rests on that no built-in card was fitted for."""
    if gpu.measured_name is None:
        return []
    base = load_gpu(gpu.base or FALLBACK_CARD)
    what = (f"has {gpu.memory_gib:.1f} GiB, the {base.name} card {base.memory_gib:.1f} GiB"
            if card_of(gpu.measured_name)
            else f"({gpu.memory_gib:.1f} GiB) is none of autotune's cards ({', '.join(known_gpus())})")
    return [f"GPU {gpu.measured_name!r} {what}: the memory plan that refuses a point before launch uses its own "
            f"memory with the {base.name} card's reserves, and the sim's prediction where each load search starts "
            f"runs at the {base.name} card's speeds"]
