"""`autotune sim serve` (the vLLM-compatible simulated server) and `autotune sim predict` (what-if, no HTTP)."""
from __future__ import annotations

import json
import math
import sys
from typing import Any

import click

from autotune.errors import UsageError

__all__ = ["commands", "sim"]

_PASS_THROUGH = dict(ignore_unknown_options=True, allow_extra_args=True, help_option_names=["-h", "--help"])


@click.group(name="sim")
def sim() -> None:
    """The sim engine: a vLLM-compatible server whose speed follows a performance model."""


@sim.command(name="serve", context_settings=_PASS_THROUGH)
@click.argument("model")
@click.pass_context
def serve(ctx: click.Context, model: str) -> None:
    """Serve MODEL like `vllm serve MODEL [flags]` (plus --gpu-type, --time-scale, --startup-delay-s)."""
    from autotune.sim.args import parse_serve_args
    from autotune.sim.server import serve_main

    code = serve_main(parse_serve_args([model, *ctx.args], prog="autotune sim serve"))
    if code:
        raise click.exceptions.Exit(code)


def _parse_workload(spec: str) -> tuple[int, int, float]:
    parts = spec.split(":")
    if parts[0] != "random" or len(parts) not in (3, 4):
        raise UsageError(f"--workload {spec!r}: sim predict takes random:IN:OUT or random:IN:OUT:RANGE")
    try:
        return int(parts[1]), int(parts[2]), float(parts[3]) if len(parts) == 4 else 0.0
    except ValueError:
        raise UsageError(f"--workload {spec!r}: IN and OUT must be integers, RANGE a number") from None


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


@sim.command(name="predict", context_settings=_PASS_THROUGH)
@click.option("--model", "model_ref", required=True, help="preset, local folder with config.json, or cached HF id")
@click.option("--gpu-type", default="h100", show_default=True)
@click.option("--workload", default="random:1024:512", show_default=True, help="random:IN:OUT[:RANGE]")
@click.option("--concurrency", type=int, default=None, help="closed loop with C clients (default 64)")
@click.option("--rate", type=float, default=None, help="open loop: Poisson arrivals, requests/s")
@click.option("--num-prompts", type=int, default=None, help="default 4 × concurrency (or 1000 with --rate)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout")
@click.pass_context
def predict_cmd(ctx: click.Context, model_ref: str, gpu_type: str, workload: str, concurrency: int | None,
                rate: float | None, num_prompts: int | None, seed: int, as_json: bool) -> None:
    """Predict a benchmark of MODEL under vLLM flags (given after the options, `vllm serve` spelling)."""
    from autotune.gpus import load_gpu
    from autotune.models import resolve_model
    from autotune.sim.args import parse_serve_args
    from autotune.sim.predict import predict

    flags = parse_serve_args(["model", *ctx.args], prog="autotune sim predict").flags
    in_len, out_len, rng = _parse_workload(workload)
    if concurrency is None and rate is None:
        concurrency = 64
    if (concurrency is not None and concurrency < 1) or (rate is not None and rate <= 0):
        raise UsageError("--concurrency and --rate must be positive")
    n = num_prompts or (4 * concurrency if concurrency and rate is None else 1000)
    result = predict(resolve_model(model_ref), load_gpu(gpu_type), flags, in_len, out_len, concurrency, n,
                     rate=rate, seed=seed, input_range=rng)
    data = _nan_to_none(result.to_json())
    data.update(flags=flags, gpu_type=gpu_type, workload=workload)
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sim predict: {model_ref} on {gpu_type}, {workload}")
    table.add_column("metric")
    for col in ("mean", "p50", "p90", "p99"):
        table.add_column(col, justify="right")
    for metric in ("ttft", "tpot", "itl", "e2el"):
        dist = result.latency(metric)
        table.add_row(f"{metric} ms", *(f"{getattr(dist, c):,.1f}" for c in ("mean", "p50", "p90", "p99")))
    console = Console()
    console.print(table)
    console.print(f"output {result.output_tok_s:,.0f} tok/s, total {result.total_tok_s:,.0f} tok/s, "
                  f"{result.request_s:,.2f} req/s, {result.completed} completed, {result.failed} failed, "
                  f"{result.duration_s:,.1f} s modelled")


commands = [sim]
