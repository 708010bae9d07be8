"""Helpers shared by the command modules: JSON output, durations, key=value lists."""
from __future__ import annotations

import json
import re
from typing import Any

import click

from autotune.jsonsafe import json_safe

__all__ = ["echo_json", "json_safe", "parse_duration_s", "DurationType"]



def echo_json(obj: Any) -> None:
    click.echo(json.dumps(json_safe(obj), allow_nan=False, default=str))


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration_s(text: str) -> float:
    """'90', '90s', '9m', '2h', '1h30m' -> seconds (positive)."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        value = float(text)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", text)
        if not parts or "".join(a + b for a, b in parts) != text:
            raise ValueError(f"{text!r} is not a duration like 90s, 9m, 2h or 1h30m")
        value = sum(float(n) * _UNITS[u] for n, u in parts)
    if value <= 0:
        raise ValueError("must be positive")
    return value


class DurationType(click.ParamType):
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration_s(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)
