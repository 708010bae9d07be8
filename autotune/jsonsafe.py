"""The one NaN-to-JSON function: every result, record and profile that becomes JSON goes through
:func:`json_safe`. JSON has no NaN or infinity, and an all-failed run reports NaN (DESIGN.md), so
``json.dumps`` would write the non-standard ``NaN`` token, or refuse with ``allow_nan=False``."""
from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["json_safe"]


def json_safe(obj: Any) -> Any:
    """A JSON-ready copy of ``obj``: NaN, inf and -inf become None (null), recursively through dicts, lists
    and tuples; numpy scalars become Python numbers (float32 NaN included); tuples become lists, dict keys
    strings, Paths strings, numpy booleans bools. Anything else is returned as it is."""
    if isinstance(obj, (str, int)) or obj is None:  # bool is an int
        return obj
    if isinstance(obj, float):  # numpy.float64 is a float
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, numbers.Integral):  # int, numpy integers
        return int(obj)
    if isinstance(obj, numbers.Real):  # numpy float32/float16, Fraction
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.bool_):  # no number in the numbers ABCs
        return bool(obj)
    return obj
