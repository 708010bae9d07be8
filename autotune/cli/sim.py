"""`autotune sim serve` (the vLLM-compatible simulated server), `autotune sim predict` (what-if, no HTTP) and
`autotune sim calibrate` (a host's own card, from a study measured on it)."""
from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from typing import TYPE_CHECKING

import click

from autotune.loadgen.workload import DEFAULT_WORKLOAD
from autotune.errors import EngineStartError, UsageError

if TYPE_CHECKING:  # the sim package loads when a command runs
    from autotune.metrics import BenchResult
    from autotune.sim.args import ServeArgs

__all__ = ["commands", "sim"]

_PASS_THROUGH = dict(ignore_unknown_options=True, allow_extra_args=True, help_option_names=["-h", "--help"])


@click.group(name="sim")
def sim() -> None:
    """The sim engine: a vLLM-compatible server whose speed follows a performance model."""


# -h/--help go to the flags' own parser, which lists every vLLM flag the sim takes (--port, --host, ...) and its own
def _serve_args(argv: list[str], prog: str) -> ServeArgs:
    """MODEL and vLLM's flags parsed by the flags' own parser: its help (exit 0) or its one-line error (exit 2),
    already printed, end the command with that code."""
    from autotune.sim.args import parse_serve_args

    try:
        return parse_serve_args(argv, prog=prog)
    except SystemExit as e:
        raise click.exceptions.Exit(e.code if isinstance(e.code, int) else 2) from None


@sim.command(name="serve", context_settings={**_PASS_THROUGH, "help_option_names": []}, add_help_option=False)
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Serve MODEL like `vllm serve MODEL [flags]` (plus --gpu-type, --time-scale, --startup-delay-s)."""
    from autotune.sim.server import serve_main

    code = serve_main(_serve_args(ctx.args, "autotune sim serve"))
    if code:
        raise click.exceptions.Exit(code)


@sim.command(name="predict", context_settings=_PASS_THROUGH)
@click.option("--model", "model_ref", required=True, help="preset, local folder with config.json, or cached HF id")
@click.option("--gpu-type", default="h100", show_default=True,
              help="h100, h200, or a host's card file from `autotune sim calibrate`")
@click.option("--workload", default=DEFAULT_WORKLOAD, show_default=True,
              help="random:IN:OUT[:RANGE] | sharegpt:FILE | jsonl:FILE | mm:IN:OUT:IMAGES:WxH (as `autotune run`, "
                   "whose default it shares)")
@click.option("--concurrency", type=int, default=None, help="closed loop with C clients (default 64)")
@click.option("--rate", type=float, default=None, help="open loop: Poisson arrivals, requests/s")
@click.option("--num-prompts", type=int, default=None,
              help="measured requests (default: a study level's, 3 × concurrency within 32-1500; 1000 with --rate)")
@click.option("--warmup", type=int, default=None,
              help="warm-up requests, not measured (default: a study level's, 1 × concurrency; 0 with --rate)")
@click.option("--seed", type=int, default=0, show_default=True, help="workload and arrival seed")
@click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout")
@click.pass_context
def predict_cmd(ctx: click.Context, model_ref: str, gpu_type: str, workload: str, concurrency: int | None,
                rate: float | None, num_prompts: int | None, warmup: int | None, seed: int, as_json: bool) -> None:
    """Predict a benchmark of MODEL under vLLM flags (given after the options, `vllm serve` spelling): one load
    level of a study (same requests, warm-up wave, ramp and steady window), run in-process on the sim engine."""
    from autotune.cli.common import every_request_failed
    from autotune.config import check_workload_flags, check_workload_model
    from autotune.gpus import interval_cards, load_gpu, sim_caveats
    from autotune.jsonsafe import json_safe
    from autotune.loadgen.runner import LoadConfig
    from autotune.loadgen.workload import parse_workload
    from autotune.loadsearch import LoadSearchConfig
    from autotune.metrics import LATENCY_METRICS
    from autotune.models import resolve_model
    from autotune.sim.predict import predict_workload
    from autotune.trial import TrialSettings, level_load_config

    flags = _serve_args(["model", *ctx.args], "autotune sim predict").flags
    if (concurrency is not None and concurrency < 1) or (rate is not None and rate <= 0):
        raise UsageError("--concurrency and --rate must be positive")
    if (num_prompts is not None and num_prompts < 1) or (warmup is not None and warmup < 0):
        raise UsageError("--num-prompts must be positive and --warmup not negative")
    model, gpu = resolve_model(model_ref), load_gpu(gpu_type)
    # the study's request stream: its own times of a trace are not used, as in `autotune run`
    wl = parse_workload(workload, seed=seed).without_times()
    check_workload_model(wl, model)
    check_workload_flags(wl, flags, "the vLLM flags")
    if rate is None:
        # a study's load level at this concurrency (trial.level_load_config owns its shape)
        settings = TrialSettings(engine="sim", model=model, gpu=gpu, gpus=1, workload=wl,
                                 search=LoadSearchConfig(limits_ms={"ttft": math.inf}))
        cfg = level_load_config(settings, concurrency or 64)
        cfg = replace(cfg, num_prompts=num_prompts or cfg.num_prompts,
                      warmup_prompts=cfg.warmup_prompts if warmup is None else warmup)
    else:
        cfg = LoadConfig(concurrency=concurrency, rate=rate, num_prompts=num_prompts or 1000,
                         warmup_prompts=warmup or 0, seed=seed)
    try:
        result = predict_workload(model, gpu, flags, wl, cfg)
    except EngineStartError as e:  # flags vLLM would refuse are the user's input; memory that does not fit is not
        if e.failure_class == "bad_flags":
            raise UsageError(str(e)) from None
        raise
    data = json_safe(result.to_json())
    # what the card's figures are known to get wrong (its calibration's caveats, per latency metric)
    notes = sim_caveats(gpu, LATENCY_METRICS)
    data.update(flags=json_safe(flags), gpu_type=gpu_type, notes=notes)  # "workload": the stream's spec and seed
    failed = every_request_failed(result)  # printed below, then the command fails
    # a host's card: the same prediction with each fitted constant at its 90% interval's ends (how sure the answer is)
    ends = {name: {side: (value, predict_workload(model, card, flags, wl, cfg))
                   for side, (value, card) in sides.items()}
            for name, sides in ({} if failed else interval_cards(gpu)).items()}
    if ends:
        data["interval_90"] = {name: {side: {"value": value, "output_tok_s": r.output_tok_s,
                                             "p99_ms": {m: r.latency(m).p99 for m in ("ttft", "tpot", "itl", "e2el")}}
                                      for side, (value, r) in sides.items()}
                               for name, sides in ends.items()}
        data = json_safe(data)
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
    else:
        _print_prediction(result, ends, f"sim predict: {model_ref} on {gpu_type}, {workload}", notes)
    if failed:
        raise failed


def _print_prediction(result: BenchResult, ends: dict[str, dict[str, tuple[float, BenchResult]]], title: str,
                      notes: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    from autotune.metrics import LATENCY_METRICS

    table = Table(title=title)
    table.add_column("metric")
    for col in ("mean", "p50", "p90", "p99"):
        table.add_column(col, justify="right")
    for metric in LATENCY_METRICS:
        dist = result.latency(metric)
        table.add_row(f"{metric} ms", *(f"{getattr(dist, c):,.1f}" for c in ("mean", "p50", "p90", "p99")))
    console = Console(soft_wrap=True)
    console.print(table)
    console.print(f"output {result.output_tok_s:,.0f} tok/s, total {result.total_tok_s:,.0f} tok/s, "
                  f"{result.request_s:,.2f} req/s, {result.completed} completed, {result.failed} failed, "
                  f"{result.duration_s:,.1f} s modelled")
    if "no_steady_window" in result.extra:
        console.print(f"note: {result.extra['no_steady_window']}", markup=False, highlight=False)
    for name, sides in ends.items():
        (low, at_low), (high, at_high) = sides["low"], sides["high"]
        console.print(f"with {name} at its 90% interval's ends ({low:.4g} / {high:.4g}): output "
                      f"{at_low.output_tok_s:,.0f} / {at_high.output_tok_s:,.0f} tok/s, "
                      + ", ".join(f"P99 {m} {at_low.latency(m).p99:,.1f} / {at_high.latency(m).p99:,.1f} ms"
                                  for m in ("ttft", "tpot", "itl")))
    for note in notes:
        console.print(f"note: {note}", markup=False, highlight=False)


@sim.command(name="calibrate")
@click.option("--study", "study_name", required=True, help="a study measured on this host (autotune run on vLLM)")
@click.option("--storage", default=None, help="SQLAlchemy URL (default sqlite:///studies/autotune.db)")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="the study's --out folder, where its runs' requests are kept (default: beside the SQLite file, "
                   "else ./studies)")
@click.option("--to", "to", type=click.Path(dir_okay=False), required=True,
              help="the card file to write (.yaml); then --gpu-type FILE")
@click.option("--base", default=None, help="built-in card to start from (default: the study's)")
@click.option("--model", "model_ref", default=None,
              help="the study's model where its own reference does not resolve here (preset, folder with "
                   "config.json, cached HF id)")
@click.option("--fit", "fit_names", default=None,
              help="the step constants to refit, comma-separated, of hbm_efficiency, eager_step_overhead_ms, "
                   "compute_efficiency, host_step_ms (default: eager_step_overhead_ms, the one hosts differ in)")
@click.option("--max-runs", type=click.IntRange(min=1), default=24, show_default=True,
              help="measured runs replayed per evaluation, spread over the study's trials and loads")
@click.option("--spread", is_flag=True,
              help="refit without each trial's runs in turn, on the fit's own replays: how much the constant "
                   "depends on which configurations were measured")
@click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout")
def calibrate_cmd(study_name: str, storage: str | None, out: str | None, to: str, base: str | None,
                  model_ref: str | None, fit_names: str, max_runs: int, spread: bool, as_json: bool) -> None:
    """Refit the sim engine's step constants on a study measured on this host, and write them as a card file:
    the sim's what-ifs and warm starts then follow this host's steps (--gpu-type FILE)."""
    from pathlib import Path

    from autotune.fileio import check_file_place, write_text_atomically
    from autotune.jsonsafe import json_safe
    from autotune.gpus import card_file_text, is_card_file, load_gpu
    from autotune.models import resolve_model
    from autotune.sim.calibrate import DEFAULT_FIT, calibrate, card_header, study_fingerprint, study_settings
    from autotune.cli.ui import CalibrationConsole
    from autotune.storage import DEFAULT_STORAGE, load_study, open_storage_readonly, redact_url, sqlite_dir

    if not is_card_file(to):
        raise UsageError(f"--to {to}: a card file's name ends in .yaml")
    # before the fit, which takes minutes: a card that cannot be written there would lose it
    check_file_place(to, "--to")
    url = storage or DEFAULT_STORAGE
    study = load_study(study_name, open_storage_readonly(url))
    fingerprint = study_fingerprint(study)
    if base is None:
        try:
            study_card = load_gpu(fingerprint.gpu_type)
        except UsageError as e:
            raise UsageError(f"{e} (the study's card; give --base, the built-in card to refit)") from None
        base = study_card.base or study_card.name
    elif is_card_file(base):
        raise UsageError("--base is a built-in card (h100, h200): a card file's constants are refitted from its base")
    card = load_gpu(base)
    try:
        model = resolve_model(model_ref or fingerprint.model)
    except UsageError as e:
        raise UsageError(f"{e} (the study's model; give --model where it is here)") from None
    settings = study_settings(study, model, card)
    study_dir = (Path(out) if out else (sqlite_dir(url) or Path("studies"))) / study_name
    fit = tuple(name.strip() for name in fit_names.split(",") if name.strip()) if fit_names else DEFAULT_FIT
    progress = CalibrationConsole(quiet=as_json)
    result = calibrate(study, study_dir, settings, fit, max_runs, progress, spread)
    summary = {"study": study_name, "storage": redact_url(url), **result.summary()}
    write_text_atomically(Path(to), card_file_text(card.name, {k: round(v, 4) for k, v in result.constants.items()},
                                               summary, card_header(result, study_name, redact_url(url))))
    data = {"card": str(Path(to).resolve()), "base": card.name, "constants": result.constants,
            "evaluations": result.evaluations, "left_out": list(result.left_out), "caution": result.caution(),
            **summary}
    if as_json:
        sys.stdout.write(json.dumps(json_safe(data)) + "\n")
        return
    progress.finished(result, data["card"])


commands = [sim]
