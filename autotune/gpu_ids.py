"""GPU ids as CUDA_VISIBLE_DEVICES takes them: indices (``0``), GPU UUIDs (``GPU-5f2c...``) and MIG device UUIDs
(``MIG-<uuid>``, or the older ``MIG-GPU-<uuid>/<gi>/<ci>``). They are opaque strings: a trial's server gets its ids
verbatim, and records, events and the console carry them as given."""
from __future__ import annotations

import re

from autotune.errors import UsageError

__all__ = ["GpuId", "parse_gpu_ids", "is_mig_device"]

GpuId = str  # one device as CUDA_VISIBLE_DEVICES names it, verbatim

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
# The forms, by what they name: a list mixing them is refused, since two spellings of one device (an index and
# its GPU's UUID) could not be told apart, and a MIG slice is no whole GPU.
_FORMS = (
    ("GPU indices", re.compile(r"\d+")),
    ("GPU UUIDs", re.compile(rf"GPU-{_UUID}")),
    ("MIG UUIDs", re.compile(rf"MIG-{_UUID}|MIG-GPU-{_UUID}/\d+/\d+")),
)
_EXPECTED = "expected GPU indices (0,1), GPU UUIDs (GPU-<uuid>,...) or MIG UUIDs (MIG-<uuid>,...)"


def _form(gpu_id: GpuId) -> str | None:
    return next((name for name, pattern in _FORMS if pattern.fullmatch(gpu_id)), None)


def parse_gpu_ids(text: str, source: str) -> tuple[GpuId, ...]:
    """The ids of a comma-separated list (``--gpu-ids``, CUDA_VISIBLE_DEVICES), each as written; ``source`` names
    the list in the one-line error for an unknown form, forms mixed, or a device listed twice."""
    ids = tuple(x.strip() for x in text.split(",") if x.strip())
    if not ids:
        raise UsageError(f"{source} {text!r}: {_EXPECTED}")
    forms = []
    for gpu_id in ids:
        form = _form(gpu_id)
        if form is None:
            raise UsageError(f"{source} {text!r}: {gpu_id!r} is not a GPU id; {_EXPECTED}")
        forms.append(form)
    if len(set(forms)) > 1:
        raise UsageError(f"{source} {text!r}: mixes {' and '.join(dict.fromkeys(forms))}; give one form")
    # one device, two spellings: a UUID's hex digits in either case, an index with a leading zero
    if len({str(int(gpu_id)) if gpu_id.isdigit() else gpu_id.lower() for gpu_id in ids}) != len(ids):
        raise UsageError(f"{source} {text!r}: a GPU is listed twice")
    return ids


def is_mig_device(gpu_id: GpuId) -> bool:
    """A MIG slice (either spelling), not a whole GPU."""
    return gpu_id.startswith("MIG-")
