"""`autotune run`: options -> :class:`~autotune.config.RunOptions` -> the study, its progress shown by
:mod:`autotune.cli.ui`, then the result."""
from __future__ import annotations

import math
from typing import Any

import click
from rich.console import Console

from autotune.cli.common import DURATION, LIMITS, echo_json, options_from_click
from autotune.config import DEFAULT_P99_METRIC, MAX_CONCURRENCY_PER_GPU, RunOptions, build_study_config, choose_engine
from autotune.errors import NoFeasibleConfigError
from autotune.loadsearch import LoadSearchConfig
from autotune.metrics import LATENCY_METRICS, describe_limits
from autotune.records import GainRecord, ServeLoadRecord, ThroughputRecord, describe_not_run
from autotune.sim.faults import FAULTS
from autotune.storage import DEFAULT_STORAGE, hold_study_run, open_storage
from autotune.study import StudyConfig, StudyOutcome, run_study
from autotune.winner import describe_gain, describe_p99s, describe_serve, describe_throughput

__all__ = ["commands", "run", "run_report"]

# click option name -> RunOptions field, where they differ
_FIELDS = {"timeout": "timeout_s", "set": "set_flags", "startup_timeout": "startup_timeout_s", "slo": "slo_ms",
           "request_timeout": "request_timeout_s"}


def _default(field: str) -> Any:
    return RunOptions.model_fields[field].default  # one place holds the defaults: the core's options


@click.command("run")
@click.option("--model", required=True, help="preset (flash, glm-4.6v), HF id or local folder with config.json")
@click.option("--gpus", type=int, default=_default("gpus"), show_default=True)
@click.option("--p99-ms", "p99_ms", type=float, default=None,
              help=f"P99 latency limit in ms on --p99-metric (default {DEFAULT_P99_METRIC})")
@click.option("--p99-metric", type=click.Choice(LATENCY_METRICS), default=None,
              help=f"the metric --p99-ms limits  [default: {DEFAULT_P99_METRIC}]")
@click.option("--slo", type=LIMITS, default=None,
              help="several P99 limits in ms, every one must hold, e.g. ttft=500,itl=50; beside --p99-ms, one more "
                   "limit each (a metric may be limited once)")
@click.option("--engine", type=click.Choice(["auto", "vllm", "sim"]), default=_default("engine"), show_default=True)
@click.option("--gpu-type", default=None,
              help="card to model (h100, h200, or a host's card file from `autotune sim calibrate`): the sim "
                   "engine's speed, and on a real GPU the memory plan and the first trial's warm start; auto on a "
                   "real GPU")
@click.option("--trials", type=int, default=_default("trials"), show_default=True,
              help="trials to run in this invocation (a resumed study adds to its earlier trials)")
@click.option("--timeout", type=DURATION, default=None, help="end by this long (9m, 2h), re-measurement included")
@click.option("--study", default=None, help="study name (default: from model, GPUs and limit); reuse it to resume")
@click.option("--storage", default=None, help=f"SQLAlchemy URL (default {DEFAULT_STORAGE})")
@click.option("--space", type=click.Path(dir_okay=False), default=None, help="search space YAML")
@click.option("--workload", default=_default("workload"), show_default=True,
              help="random:IN:OUT[:RANGE] | sharegpt:FILE | jsonl:FILE | mm:IN:OUT:IMAGES:WxH (images per request "
                   "N or MIN-MAX, sizes WxH[,WxH...], options :range=R :pool=K)")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="folder for trial logs and the profile (default: beside the SQLite file, else ./studies)")
@click.option("--seed", type=int, default=_default("seed"), show_default=True)
@click.option("--top-k", type=int, default=_default("top_k"), show_default=True,
              help="candidates re-measured at the end (baselines always are)")
@click.option("--repeats", type=int, default=_default("repeats"), show_default=True,
              help="fresh-server re-measurements per finalist, beside its own trial's run (0: the search's figures "
              "alone, which measure no spread: no interval, no claim)")
@click.option("--max-repeats", type=int, default=_default("max_repeats"), show_default=True,
              help="with --timeout: time left after the trials buys more re-measurements, a round of every compared "
              "finalist at a time, up to this many each")
@click.option("--patience", type=int, default=_default("patience"), show_default=True,
              help="stop after this many trials without a 1% gain (0: never)")
@click.option("--load-format", default=None, help="vLLM --load-format for every trial (dummy: tune a model's "
              "speed without its weights)")
@click.option("--set", "set", multiple=True, metavar="FLAG=VALUE", help="extra fixed vLLM flag for every trial")
@click.option("--sim-server", is_flag=True, help="sim engine: run each trial's engine as a real `autotune sim serve` "
              "subprocess driven over HTTP (default: in-process on a virtual clock, fast and deterministic)")
@click.option("--sim-time-scale", type=float, default=_default("sim_time_scale"), show_default=True,
              help="with --sim-server: run this many times faster than the modelled card (figures stay in "
              "modelled time)")
@click.option("--sim-noise", type=click.Choice(["off", "h200"]), default=_default("sim_noise"), show_default=True,
              help="in-process sim: give every measurement run the run-to-run noise measured on that GPU "
              "(seeded by --seed), and judge the study as a GPU study (docs/results/sim-accuracy.md, run-to-run spread)")
@click.option("--start-concurrency", type=int, default=None,
              help=f"where a trial's load search starts while no knee is known, at most --max-concurrency  [default: "
              f"{LoadSearchConfig.start_concurrency}, or --max-concurrency where lower]")
@click.option("--max-concurrency", type=int, default=None,
              help="the load search's ceiling  [default: "
              f"{MAX_CONCURRENCY_PER_GPU} x --gpus, what the engines of a data-parallel layout run at once]")
@click.option("--prompts-per-level", type=float, default=_default("prompts_per_level"), show_default=True,
              help="measured prompts per load level, as a multiple of its concurrency")
@click.option("--startup-timeout", type=DURATION, default=_default("startup_timeout_s"), show_default=True,
              help="seconds a server may take to start")
@click.option("--request-timeout", type=DURATION, default=_default("request_timeout_s"), show_default=True,
              help="seconds a load request may take before it counts as failed")
@click.option("--parallel", type=int, default=None,
              help="trials at once, each on its own --gpus GPUs and port (default: as many as the visible GPUs allow)")
@click.option("--gpu-ids", default=None, metavar="ID,ID,...",
              help="the GPUs this run may use: indices (0,1), GPU UUIDs (GPU-...) or MIG UUIDs (MIG-...), one form "
                   "(default: CUDA_VISIBLE_DEVICES, else every GPU); with the sim engine, made-up ids that parallel "
                   "trials share out")
@click.option("--sim-fault", default=None, metavar="FAULT[@TRIAL,...]",
              help=f"with --sim-server: the sim server makes this fault ({', '.join(FAULTS)}), on the given trials only")
@click.option("--try", "try_file", type=click.Path(dir_okay=False), default=None,
              help="YAML/JSON flags (a mapping or a list) to try right after the baselines, e.g. your hand tuning")
# Two-sided 90%: a gain is claimed when the interval's lower end is above 0, a one-sided 5% test per claim.
# What it gives a whole study under H200-sized noise is measured in docs/results/decision-quality.md.
@click.option("--confidence", type=float, default=_default("confidence"), show_default=True,
              help="of the intervals a verdict rests on (P99s, throughput, gains)")
@click.option("--max-extensions", type=int, default=_default("max_extensions"), show_default=True,
              help="the knee's load level and the one above it are measured again at most this often while a P99 "
                   "interval straddles its limit")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object on stdout, nothing else")
def run(as_json: bool, **opts: Any) -> None:
    """Tune: search vLLM flags for the most throughput whose P99s stay under their limits (--p99-ms, --slo)."""
    from autotune.cli.ui import JsonView, StudyView
    from autotune.engines.launcher import install_signal_handlers

    options = options_from_click(RunOptions, opts, _FIELDS)
    console = Console(stderr=True, soft_wrap=True)
    engine = choose_engine(options.engine)
    cfg = build_study_config(options, engine)  # bad input ends here, on one line
    storage = open_storage(cfg.storage_url, exclusive=True)  # and a storage it cannot open or use, here
    hold_study_run(storage, cfg.study_name)  # a study another run holds, too (run_study holds it again: a no-op)
    if engine.notice:
        console.print(f"[bold yellow]autotune: {engine.notice}[/]")
    install_signal_handlers(sigint=True)
    if as_json:
        quiet = JsonView(console)
        with quiet.kept_on_signal():
            outcome = run_study(cfg, storage, progress=quiet)
    else:
        with StudyView(console) as view:
            outcome = run_study(cfg, storage, progress=view)
    report = run_report(outcome, cfg)
    if as_json:
        echo_json(report)
    else:
        print_summary(report, Console(soft_wrap=True))
    if outcome.selection.winner is None:
        n = outcome.n_trials_total
        raise NoFeasibleConfigError(
            f"no configuration met {describe_limits(cfg.settings.search.limits_ms)} in "
            f"{n} trial{'' if n == 1 else 's'} of study {cfg.study_name!r} (all recorded)")


def run_report(outcome: StudyOutcome, cfg: StudyConfig) -> dict[str, Any]:
    """The --json object: the winner's metrics at its chosen load at the top level, plus best/baselines."""
    report: dict[str, Any] = {}
    profile = outcome.profile
    if profile is not None:
        at_load = profile.metrics.at_chosen_load
        report.update(at_load)
        report["best"] = {"trial": profile.study.trial_number, "flags": profile.flags,
                          "vllm_serve_cmd": profile.vllm_serve_cmd, "concurrency": profile.concurrency,
                          "metrics": at_load, "output_tok_s": profile.metrics.output_tok_s.model_dump(),
                          "p99": {m: p.model_dump() for m, p in profile.metrics.p99.items()},
                          "output_tok_s_at_limit": profile.metrics.output_tok_s_at_limit.mean,
                          "output_tok_s_at_limit_interval": profile.metrics.output_tok_s_at_limit.model_dump(),
                          "repeats": profile.metrics.repeats, "stepped_down_from": profile.stepped_down_from,
                          "baseline": profile.baseline,
                          "serve": profile.serve.model_dump() if profile.serve is not None else None}
        report["notes"] = list(profile.notes)
    else:
        report["best"] = None
    report.update(
        baselines=outcome.baselines, finalists=outcome.finalists, verdict=outcome.selection.verdict,
        profile_path=str(outcome.profile_path) if outcome.profile_path else None,
        study=cfg.study_name, trials=outcome.n_trials_total, trials_run=outcome.n_trials_run,
        stopped_by=outcome.stopped_by, engine=cfg.settings.engine, limits_ms=dict(cfg.settings.search.limits_ms),
        left_out=[{"trial": t.number, "baseline": t.baseline or None, "why": t.why} for t in outcome.left_out],
        not_run=[{"trial": number, "same_flags_as": earlier} for number, earlier in outcome.not_run],
    )
    return report


def print_summary(report: dict[str, Any], console: Console) -> None:
    """The result in plain lines, one fact each: readable in a terminal and in a log (nothing wraps)."""
    best = report.get("best")
    if not best:
        console.print(f"[bold red]No winner[/]: {report['verdict']}.")
        _print_finalists(report, console)
        _print_not_run(report, console)
        return
    # the words and figures `best` and `export` give (autotune.winner), with each run's P99 beside their mean
    throughput = describe_throughput(ThroughputRecord.from_json(best["output_tok_s_at_limit_interval"]),
                                     ThroughputRecord.from_json(best["output_tok_s"]), best["concurrency"],
                                     selected=True, remeasured=best["repeats"] > 0,
                                     stepped_down_from=best["stepped_down_from"])

    def ms(value: float | None) -> float:  # the report's null: not measured
        return math.nan if value is None else float(value)

    p99 = {metric: ms(best["p99"][metric]["mean_ms"]) for metric in report["limits_ms"] if metric in best["p99"]}
    values = {metric: [ms(v) for v in best["p99"][metric]["values_ms"]] for metric in p99}
    console.print(f"[bold green]Best[/]: trial {best['trial']} — {throughput}, "
                  f"{describe_p99s(p99, report['limits_ms'], values)}", highlight=False)
    console.print(f"  {best['vllm_serve_cmd']}", markup=False, highlight=False)
    if best.get("serve"):
        serve = describe_serve(ServeLoadRecord.from_json(best["serve"]), best["concurrency"],
                               best["output_tok_s_at_limit"])
        console.print(f"  {serve}", markup=False, highlight=False)
    for name, b in (report.get("baselines") or {}).items():
        g = b.get("gain") or {}
        figure = (f"{b['output_tok_s_at_limit']:,.0f} tok/s at the limit" if b["meets_limit"] else
                  f"failed: {b['failure_class']}" if b.get("failure_class") else
                  f"its fresh-server re-measurements failed: {b['remeasurement_failure']} (not compared)"
                  if b.get("remeasurement_failure") else "misses a limit")
        if b["trial"] == best["trial"]:
            gain = " (the winner)"
        elif g:
            gain = f"; the winner's gain: {describe_gain(GainRecord.from_json(g))}"
        else:
            gain = ""
        console.print(f"  against {name} (trial {b['trial']}): {figure}{gain}")
    _print_finalists(report, console)
    _print_not_run(report, console)
    console.print(report["verdict"])
    for note in report.get("notes") or []:
        console.print(f"note: {note}", markup=False, highlight=False)
    console.print(f"Profile: {report['profile_path']}", markup=False, highlight=False)


def _print_finalists(report: dict[str, Any], console: Console) -> None:
    """What the verdict compared the other finalists by, so that it can be checked."""
    for f in report.get("finalists") or []:
        runs = f"{f['runs_at_limit']} run{'' if f['runs_at_limit'] == 1 else 's'}"
        console.print(f"  finalist trial {f['trial']}: {f['output_tok_s_at_limit']:,.0f} tok/s at the limit ({runs} "
                      f"from concurrency {f['concurrency']}): {f['standing']}")


def _print_not_run(report: dict[str, Any], console: Console) -> None:
    """The sampled trials whose flags an earlier trial had: not measured, and never a finalist."""
    for t in report.get("not_run") or []:
        console.print(f"  {describe_not_run(t['trial'], t['same_flags_as'])}")


commands = [run]
