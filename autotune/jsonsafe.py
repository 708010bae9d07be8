"""JSON-safe copies of results: NaN/inf -> None, tuples -> lists, Paths -> str (JSON has no NaN)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["json_safe"]


def json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
