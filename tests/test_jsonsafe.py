from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from autotune.jsonsafe import json_safe


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float64("nan"), np.float64("-inf"),
                                   np.float32("nan"), np.float32("inf"), np.float16("-inf")])
def test_non_finite_becomes_null(value: object) -> None:
    assert json_safe(value) is None
    assert json.dumps(json_safe({"x": [value, (value,)]}), allow_nan=False) == '{"x": [null, [null]]}'


def test_nested_structures_and_other_values() -> None:
    obj = {"a": math.nan, "b": [1.0, math.inf, (2, -math.inf)], "c": "x", "d": None, "e": True, 3: Path("/p"),
           "f": {"g": [{"h": -math.inf}]}, "i": np.int64(7), "j": np.float32(0.5), "k": Fraction(1, 4)}
    out = json_safe(obj)
    assert out == {"a": None, "b": [1.0, None, [2, None]], "c": "x", "d": None, "e": True, "3": "/p",
                   "f": {"g": [{"h": None}]}, "i": 7, "j": 0.5, "k": 0.25}
    assert type(out["i"]) is int and type(out["j"]) is float and out["e"] is True
    json.dumps(out, allow_nan=False)  # plain JSON, no NaN tokens, no numpy types
    assert obj["a"] is not out["a"] and math.isnan(obj["a"])  # a copy: the input is unchanged


def test_finite_values_pass_unchanged() -> None:
    assert json_safe(0.0) == 0.0 and json_safe(-1e308) == -1e308 and json_safe(5) == 5
    marker = object()
    assert json_safe(marker) is marker  # not JSON's business here: json.dumps decides


def test_numpy_booleans_become_bools():
    import json

    import numpy as np

    assert json.dumps(json_safe({"ok": np.bool_(True), "no": np.float64(1.0) > 2})) == '{"ok": true, "no": false}'
