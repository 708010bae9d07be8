"""Helpers shared by the command modules: JSON output, durations, P99 limits, key=value lists."""
from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

import click
import pydantic

from autotune.errors import AutotuneError, UsageError
from autotune.jsonsafe import json_safe
from autotune.metrics import LATENCY_METRICS, BenchResult

OptionsT = TypeVar("OptionsT", bound=pydantic.BaseModel)

__all__ = ["echo_json", "json_safe", "parse_duration_s", "parse_limits_ms", "DURATION", "LIMITS", "ParsedType",
           "options_from_click", "option_error", "every_request_failed"]


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


def parse_limits_ms(text: str) -> dict[str, float]:
    """``ttft=500,itl=50`` -> {"ttft": 500.0, "itl": 50.0}: latency limits in milliseconds, in the order given.
    A metric may carry the ``_ms`` suffix (``ttft_ms=500``). Raises ValueError with a one-line reason."""
    limits: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip().lower().removesuffix("_ms")
        if not sep or name not in LATENCY_METRICS:
            raise ValueError(f"expected METRIC=MS with METRIC one of {', '.join(LATENCY_METRICS)}, got {item!r}")
        try:
            limit_ms = float(value)
        except ValueError:
            raise ValueError(f"{value.strip()!r} is not a number of milliseconds (in {item!r})") from None
        if not (limit_ms > 0 and math.isfinite(limit_ms)):
            raise ValueError(f"the limit for {name} must be a positive number of milliseconds, got {value.strip()}")
        if name in limits:
            raise ValueError(f"{name} is given twice")
        limits[name] = limit_ms
    return limits


class ParsedType(click.ParamType):
    """An option read by one of the core's parsers: its one-line ValueError or UsageError is click's usage error.
    A value already parsed (a default given as the parsed type) passes through."""

    def __init__(self, name: str, parse: Callable[[str], Any], parsed: type | tuple[type, ...]) -> None:
        self.name, self.parse, self.parsed = name, parse, parsed

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, self.parsed):
            return value
        try:
            return self.parse(str(value))
        except (ValueError, UsageError) as e:
            self.fail(str(e), param, ctx)


DURATION = ParsedType("DURATION", parse_duration_s, (int, float))  # --timeout 9m, 2h, 90s or seconds
LIMITS = ParsedType("METRIC=MS[,METRIC=MS...]", parse_limits_ms, dict)  # --slo ttft=500,itl=50


def options_from_click(model: type[OptionsT], opts: dict[str, Any], renamed: dict[str, str]) -> OptionsT:
    """Click's keyword arguments -> the core's options model; a value the model refuses is a one-line
    usage error naming the command-line option. ``renamed``: click name -> field name where they differ."""
    fields = {renamed.get(k, k): v for k, v in opts.items() if v is not None}
    try:
        return model(**fields)
    except pydantic.ValidationError as e:
        raise option_error(e, renamed) from None


def option_error(e: pydantic.ValidationError, renamed: dict[str, str]) -> UsageError:
    """The options model's refusal of a value as a one-line usage error naming the command-line option.
    ``renamed``: click name -> field name where they differ."""
    err = e.errors()[0]
    field = str(err["loc"][0]) if err["loc"] else ""
    option = next((k for k, f in renamed.items() if f == field), field)
    limit = (err.get("ctx") or {}).get("gt", (err.get("ctx") or {}).get("ge"))
    words = {("greater_than", 0): "must be positive", ("greater_than_equal", 0): "must not be negative"}
    message = words.get((err["type"], limit), err["msg"][:1].lower() + err["msg"][1:])
    return UsageError(f"--{option.replace('_', '-')}: {message}, got {err.get('input')!r}")


def every_request_failed(result: BenchResult) -> AutotuneError | None:
    """The error a run whose every request failed ends with (exit 1), after its figures (NaN, null in JSON) are
    printed: a script must not read them as a measurement. It names the error kinds and the first request's error."""
    if result.status != "failed":
        return None
    kinds = ", ".join(f"{k}: {v}" for k, v in sorted(result.errors.items()))
    first = next((o.error for o in result.outputs if o.error), "")
    first_line = (first.strip().splitlines() or [""])[0][:300]
    return AutotuneError(f"every request failed ({kinds})" + (f"; the first: {first_line}" if first_line else ""))
