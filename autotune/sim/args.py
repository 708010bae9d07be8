"""`vllm serve MODEL [flags]` spelling for the sim engine: every flag in autotune.flags.VLLM_FLAGS plus
sim-only ``--gpu-type``, ``--time-scale`` and ``--startup-delay-s``. Unknown flags exit 2 with argparse's
"unrecognized arguments" line, as vLLM does."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Any

from autotune.errors import UsageError
from autotune.flags import VLLM_FLAGS, check_flag_value
from autotune.sim.faults import FAULTS, Fault, parse_fault

__all__ = ["ServeArgs", "build_parser", "parse_serve_args", "DEFAULT_HOST"]

DEFAULT_HOST = "127.0.0.1"
_SHORT = {"tensor-parallel-size": "-tp", "data-parallel-size": "-dp", "pipeline-parallel-size": "-pp"}


@dataclass(frozen=True)
class ServeArgs:
    model: str
    flags: dict[str, Any] = field(default_factory=dict)  # the vLLM flags given (canonical names), no defaults
    host: str = DEFAULT_HOST
    port: int = 8000
    served_model_name: str = ""
    gpu_type: str = "h100"
    time_scale: float = 1.0
    startup_delay_s: float | None = None  # wall seconds to wait before listening (None: modelled, capped)
    seed: int = 0
    fault: Fault | None = None  # a fault to make (sim/faults.py)
    prog: str = "vllm serve"  # its errors' first word: vLLM's where a study starts it, the user's command otherwise


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """One line on stderr, exit 2 (argparse's wording, without the long usage block)."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def _json_dict(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _fault(text: str) -> Fault:
    try:
        return parse_fault(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser(prog: str = "vllm serve") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="vLLM-compatible simulated server (autotune sim)")
    p.add_argument("model", help="preset name, local folder with config.json, or cached HF id")
    for name, d in VLLM_FLAGS.items():
        opts = [f"--{name}"] + ([_SHORT[name]] if name in _SHORT else [])
        dest = name.replace("-", "_")
        if d.type is bool:
            p.add_argument(*opts, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=d.help)
        elif d.type is dict:
            p.add_argument(*opts, dest=dest, type=_json_dict, default=None, help=d.help or "JSON object")
        else:
            p.add_argument(*opts, dest=dest, type=d.type, default=None, choices=d.choices, help=d.help)
    p.add_argument("--gpu-type", default="h100", help="sim only: the card to model (calibration/<name>.yaml)")
    p.add_argument("--time-scale", type=float, default=1.0, help="sim only: modelled seconds per wall second")
    p.add_argument("--startup-delay-s", type=float, default=None,
                   help="sim only: wall seconds to wait before listening (default: modelled startup / "
                        "time-scale, at most 3 s)")
    p.add_argument("--fault", type=_fault, default=None,
                   help=f"sim only: misbehave, to test the tuner ({', '.join(FAULTS)}; see autotune/sim/faults.py)")
    return p


def _normalize(argv: list[str]) -> list[str]:
    """vLLM accepts --max_num_seqs as --max-num-seqs."""
    out = []
    for a in argv:
        if a.startswith("--") and "_" in a.split("=", 1)[0]:
            head, eq, tail = a.partition("=")
            a = head.replace("_", "-") + eq + tail
        out.append(a)
    return out


def parse_serve_args(argv: list[str], prog: str = "vllm serve") -> ServeArgs:
    """Parse ``MODEL [flags]``; exits 2 (argparse) on unknown or malformed flags."""
    parser = build_parser(prog)
    ns = parser.parse_args(_normalize(argv))
    flags: dict[str, Any] = {}
    for name in VLLM_FLAGS:
        value = getattr(ns, name.replace("-", "_"))
        if value is None:
            continue
        try:
            flags[name] = check_flag_value(name, value)
        except UsageError as e:
            parser.error(str(e))
    if ns.time_scale <= 0:
        parser.error("argument --time-scale: must be positive")
    if ns.startup_delay_s is not None and ns.startup_delay_s < 0:
        parser.error("argument --startup-delay-s: must be >= 0")
    host = flags.pop("host", None) or DEFAULT_HOST
    port = int(flags.pop("port", 8000))
    served = flags.pop("served-model-name", None) or ns.model
    return ServeArgs(model=ns.model, flags=flags, host=host, port=port, served_model_name=served,
                     gpu_type=ns.gpu_type, time_scale=float(ns.time_scale), startup_delay_s=ns.startup_delay_s,
                     seed=int(flags.get("seed", 0)), fault=ns.fault, prog=prog)
