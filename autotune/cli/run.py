"""`autotune run`: map options to a validated StudyConfig, run the study, print the result."""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from autotune.cli.common import DurationType, echo_json
from autotune.errors import NoFeasibleConfigError, UsageError
from autotune.flags import LAUNCHER_FLAGS, check_flag_value, normalize_flag_name
from autotune.gpus import detect_gpu, load_gpu
from autotune.loadsearch import LoadSearchConfig
from autotune.metrics import LATENCY_METRICS
from autotune.models import PRESETS, resolve_model
from autotune.space import load_space
from autotune.storage import DEFAULT_STORAGE, open_storage, sqlite_dir
from autotune.study import StudyConfig, StudyOutcome, run_study
from autotune.trial import TrialSettings

__all__ = ["commands", "run", "choose_engine", "build_study_config"]


def choose_engine(requested: str, console: Console) -> str:
    """auto: the real vLLM when it is importable and a GPU is visible, else the sim engine, said loudly."""
    if requested != "auto":
        return requested
    has_vllm = importlib.util.find_spec("vllm") is not None
    has_gpu = detect_gpu() is not None or bool(os.environ.get("AUTOTUNE_ASSUME_GPU"))
    if has_vllm and has_gpu:
        return "vllm"
    why = "vLLM is not installed" if not has_vllm else "no NVIDIA GPU is visible"
    console.print(f"[bold yellow]autotune: {why}: using the SIM engine (a performance model, not real "
                  f"measurements). Pass --engine vllm on a GPU machine.[/]")
    return "sim"


def _default_study_name(model: str, gpus: int, metric: str, limit: float) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name if Path(model).exists() else model).strip("-")
    return f"{base}-{gpus}gpu-p99{metric}{limit:g}ms"


def _extra_flags(pairs: tuple[str, ...]) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"--set {pair!r}: expected FLAG=VALUE (e.g. --set load-format=dummy)")
        key, value = pair.split("=", 1)
        name = normalize_flag_name(key)
        if name in LAUNCHER_FLAGS:
            raise UsageError(f"--set {name}: set by the launcher")
        flags[name] = check_flag_value(name, value)
    return flags


def _tries(path: str | None, space: Any) -> tuple[dict[str, Any], ...]:
    """`--try FILE`: one mapping of flags, or a list of them, to queue after the baselines."""
    if not path:
        return ()
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"--try {path}: cannot read it ({str(e).splitlines()[0]})") from None
    points = data if isinstance(data, list) else [data]
    out = []
    for point in points:
        if not isinstance(point, dict):
            raise UsageError(f"--try {path}: expected a mapping of vLLM flags or a list of them")
        flags = {normalize_flag_name(k): check_flag_value(k, v) for k, v in point.items()}
        outside = sorted(set(flags) - set(space.params))
        if outside:
            raise UsageError(f"--try {path}: {outside[0]} is not searched by the space")
        out.append(flags)
    return tuple(out)


def build_study_config(opts: dict[str, Any], console: Console) -> StudyConfig:
    """Validate every input before anything touches the storage."""
    from autotune.loadgen.workload import parse_workload

    model = resolve_model(opts["model"])
    preset = opts["model"] if opts["model"] in PRESETS else None
    gpus = opts["gpus"]
    engine = choose_engine(opts["engine"], console)
    if engine == "vllm":
        gpu_type = opts["gpu_type"] or detect_gpu() or "h100"
    else:
        gpu_type = opts["gpu_type"] or "h100"
    gpu = load_gpu(gpu_type)
    space = load_space(opts["space"], model, gpus, preset=preset)
    extra = _extra_flags(opts["set"])
    if opts["load_format"]:
        extra["load-format"] = check_flag_value("load-format", opts["load_format"])
    overlap = set(extra) & set(space.params)
    if overlap:
        raise UsageError(f"--set {sorted(overlap)[0]}: that flag is searched by the space; remove it from one")
    space.fixed = {**space.fixed, **extra}
    # Token-id prompts: exact lengths on any engine, no tokenizer needed. A trace's times are not used: each
    # load level sets its own concurrency, so its requests are a dataset here (shuffled by the seed, cycled).
    workload = parse_workload(opts["workload"], seed=opts["seed"]).without_times()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [int(x) for x in visible.split(",") if x.strip().isdigit()] if visible else list(range(gpus))
    if len(ids) < gpus:
        raise UsageError(f"--gpus {gpus} but CUDA_VISIBLE_DEVICES lists {len(ids)} GPUs")
    time_scale = opts["sim_time_scale"] if engine == "sim" else 1.0
    search = LoadSearchConfig(metric=opts["p99_metric"], limit_ms=opts["p99_ms"],
                              start_concurrency=opts["start_concurrency"], max_concurrency=opts["max_concurrency"])
    settings = TrialSettings(
        engine=engine, model=model, gpu=gpu, gpus=gpus, workload=workload, search=search,
        gpu_ids=tuple(ids[:gpus]), time_scale=time_scale, startup_timeout_s=opts["startup_timeout"],
        prompts_per_level=opts["prompts_per_level"], sim_server=opts["sim_server"],
    )
    name = opts["study"] or _default_study_name(opts["model"], gpus, opts["p99_metric"], opts["p99_ms"])
    storage_url = opts["storage"] or DEFAULT_STORAGE
    out_dir = Path(opts["out"]) if opts["out"] else (sqlite_dir(storage_url) or Path("studies"))
    return StudyConfig(
        study_name=name, storage_url=storage_url, space=space, settings=settings, preset=preset,
        n_trials=opts["trials"], timeout_s=opts["timeout"], patience=opts["patience"], top_k=opts["top_k"],
        repeats=opts["repeats"], noise_floor=0.03 if engine == "vllm" else 0.0, seed=opts["seed"], out_dir=out_dir,
        tries=_tries(opts["try_file"], space),
    )


def _positive(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is not None and value <= 0:
        raise click.BadParameter("must be positive")
    return value


def _non_negative(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is not None and value < 0:
        raise click.BadParameter("must not be negative")
    return value


@click.command("run")
@click.option("--model", required=True, help="preset (flash, glm-4.6v), HF id or local folder with config.json")
@click.option("--gpus", type=int, default=1, show_default=True, callback=_positive)
@click.option("--p99-ms", "p99_ms", type=float, required=True, callback=_positive, help="P99 latency limit in ms")
@click.option("--p99-metric", type=click.Choice(LATENCY_METRICS), default="ttft", show_default=True)
@click.option("--engine", type=click.Choice(["auto", "vllm", "sim"]), default="auto", show_default=True)
@click.option("--gpu-type", default=None, help="card to model with the sim engine (h100, h200); auto on a real GPU")
@click.option("--trials", type=int, default=20, show_default=True, callback=_non_negative,
              help="trials to run in this invocation (a resumed study adds to its earlier trials)")
@click.option("--timeout", type=DurationType(), default=None, help="end by this long (9m, 2h), re-measurement included")
@click.option("--study", default=None, help="study name (default: from model, GPUs and limit); reuse it to resume")
@click.option("--storage", default=None, help=f"SQLAlchemy URL (default {DEFAULT_STORAGE})")
@click.option("--space", type=click.Path(dir_okay=False), default=None, help="search space YAML")
# Lengths vary by ±50% by default: with identical lengths a closed loop runs in lockstep waves whose
# synchronized prefills, not the server, set P99 TTFT (seen on the H100 and the sim engine).
@click.option("--workload", default="random:1024:512:0.5", show_default=True,
              help="random:IN:OUT[:RANGE] | sharegpt:FILE | jsonl:FILE | mm:IN:OUT:IMAGES:WxH")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="folder for trial logs and the profile (default: beside the SQLite file, else ./studies)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--top-k", type=int, default=3, show_default=True, callback=_non_negative,
              help="candidates re-measured at the end (baselines always are)")
@click.option("--repeats", type=int, default=2, show_default=True, callback=_non_negative,
              help="fresh-server re-measurements per candidate (0: keep the search's figures)")
@click.option("--patience", type=int, default=12, show_default=True, callback=_non_negative,
              help="stop after this many trials without a 1%% gain (0: never)")
@click.option("--load-format", default=None, help="vLLM --load-format for every trial (dummy: tune a model's "
              "speed without its weights)")
@click.option("--set", "set", multiple=True, metavar="FLAG=VALUE", help="extra fixed vLLM flag for every trial")
@click.option("--sim-server", is_flag=True, help="sim engine: run each trial's engine as a real `autotune sim serve` "
              "subprocess driven over HTTP (default: in-process on a virtual clock, fast and deterministic)")
@click.option("--sim-time-scale", type=float, default=20.0, show_default=True, callback=_positive,
              help="with --sim-server: run this many times faster than the modelled card (figures stay in "
              "modelled time)")
@click.option("--start-concurrency", type=int, default=8, show_default=True, callback=_positive)
@click.option("--max-concurrency", type=int, default=1024, show_default=True, callback=_positive)
@click.option("--prompts-per-level", type=float, default=3.0, show_default=True, callback=_positive,
              help="measured prompts per load level, as a multiple of its concurrency")
@click.option("--startup-timeout", type=DurationType(), default=900.0, help="seconds a server may take to start")
@click.option("--try", "try_file", type=click.Path(dir_okay=False), default=None,
              help="YAML/JSON flags (a mapping or a list) to try right after the baselines, e.g. your hand tuning")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object on stdout, nothing else")
def run(as_json: bool, **opts: Any) -> None:
    """Tune: search vLLM flags for the most throughput whose P99 stays under the limit."""
    from autotune.engines.launcher import install_signal_handlers
    from autotune.ui import StudyView

    console = Console(stderr=True)
    cfg = build_study_config(opts, console)
    storage = open_storage(cfg.storage_url)
    install_signal_handlers()
    if as_json:
        outcome = run_study(cfg, storage)
    else:
        with StudyView(console) as view:
            outcome = run_study(cfg, storage, sink=view)
    report = run_report(outcome, cfg)
    if as_json:
        echo_json(report)
    else:
        _print_summary(report, Console())
    if outcome.selection.winner is None:
        raise NoFeasibleConfigError(
            f"no configuration met P99 {cfg.settings.search.metric} <= {cfg.settings.search.limit_ms:g} ms in "
            f"{outcome.n_trials_total} trials of study {cfg.study_name!r} (all recorded)")


def run_report(outcome: StudyOutcome, cfg: StudyConfig) -> dict[str, Any]:
    """The --json object: the winner's metrics at its chosen load at the top level, plus best/baselines."""
    report: dict[str, Any] = {}
    winner = outcome.selection.winner
    if winner is not None and outcome.profile:
        at_load = outcome.profile["metrics"]["at_chosen_load"] or {}
        report.update(at_load)
        report["best"] = {"trial": winner.trial_number, "flags": winner.flags,
                          "vllm_serve_cmd": winner.vllm_serve_cmd, "concurrency": winner.concurrency,
                          "metrics": at_load, "output_tok_s": outcome.profile["metrics"]["output_tok_s"],
                          "baseline": winner.baseline or None}
    else:
        report["best"] = None
    report.update(
        baselines=outcome.baselines, verdict=outcome.selection.verdict,
        profile_path=str(outcome.profile_path) if outcome.profile_path else None,
        study=cfg.study_name, trials=outcome.n_trials_total, trials_run=outcome.n_trials_run,
        stopped_by=outcome.stopped_by, engine=cfg.settings.engine, metric=cfg.settings.search.metric,
        limit_ms=cfg.settings.search.limit_ms,
    )
    return report


def _print_summary(report: dict[str, Any], console: Console) -> None:
    best = report.get("best")
    if not best:
        console.print(f"[bold red]No configuration met the limit[/] ({report['verdict']}).")
        return
    t = best["output_tok_s"]
    console.print(f"[bold green]Best[/]: trial {best['trial']} — {t['mean']:,.0f} output tok/s "
                  f"(± {t['std']:,.0f}, n={t['n']}) at concurrency {best['concurrency']}, "
                  f"P99 {report['metric']} {best['metrics'].get(report['metric'] + '_ms', {}).get('p99') or float('nan'):,.0f} ms "
                  f"≤ {report['limit_ms']:g} ms")
    console.print(f"  {best['vllm_serve_cmd']}")
    table = Table(title="Against the baselines")
    for col in ("baseline", "output tok/s", "gain", "beyond spread"):
        table.add_column(col)
    for name, b in (report.get("baselines") or {}).items():
        g = b.get("gain") or {}
        gain = g.get("gain_pct")
        table.add_row(name, f"{(b['output_tok_s'] or {}).get('mean') or 0:,.0f}" if b["meets_limit"] else "0 (misses limit)",
                      "-" if gain is None else f"{gain:+.1f}%", "yes" if g.get("significant") else "no")
    console.print(table)
    console.print(report["verdict"])
    console.print(f"Profile: {report['profile_path']}")


commands = [run]
