"""``autotune bench``: drive a running server with one workload at one load level and report the metrics."""
from __future__ import annotations

import math
import os
import sys
from dataclasses import replace
from typing import Any

import click

from autotune.cli.common import LIMITS, echo_json, every_request_failed
from autotune.loadgen.workload import DEFAULT_WORKLOAD
from autotune.errors import NoFeasibleConfigError, UsageError
from autotune.metrics import LATENCY_METRICS, BenchResult

__all__ = ["bench", "commands"]


class ProfileNotHeld(NoFeasibleConfigError):
    """The served configuration is slower than its profile, or over a limit, beyond noise: exit 3, as a study whose
    limits no configuration met."""


@click.command()
@click.option("--url", required=True, help="Server base URL, e.g. http://127.0.0.1:8000")
@click.option("--model", required=True, help="Model name the server serves (checked on /v1/models).")
@click.option("--workload", default=DEFAULT_WORKLOAD, show_default=True,
              help="random:IN:OUT[:RANGE] | sharegpt:FILE | jsonl:FILE | mm:IN:OUT:IMAGES:WxH (as `autotune run`, "
                   "whose default it shares; "
                   "with --tokenizer the text is exactly IN tokens of it). A jsonl file "
                   "whose records all have arrival_s is a trace: without --rate its requests are sent at those "
                   "times (--concurrency caps them).")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Closed loop: requests in flight, run as a study's load level at that concurrency (its "
                   "warm-up wave, ramp, measured requests and steady window, unless given below).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Open loop: requests per second (Poisson/gamma).")
@click.option("--burstiness", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Gamma shape of arrivals (1 = Poisson).")
@click.option("--num-prompts", type=click.IntRange(min=1), default=None,
              help="Measured requests (default: closed loop, a study level's, 3 × concurrency within 32-1500; "
                   "open loop 200; a trace, all of its requests after the warm-up, which this caps).")
@click.option("--warmup", type=click.IntRange(min=0), default=None,
              help="Warm-up requests, not measured (default: closed loop, the first wave, 1 × concurrency; else 0).")
@click.option("--ramp-s", type=click.FloatRange(min=0), default=None,
              help="Closed loop: spread the first wave's starts over this many seconds (default 2, a study level's).")
@click.option("--whole-run", is_flag=True,
              help="Closed loop: throughput over the whole run (first measured start to last end, the drain "
                   "included, as `vllm bench serve` counts it) instead of the steady window a study's level uses.")
@click.option("--endpoint", type=click.Choice(["auto", "completions", "chat"]), default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Workload and arrival seed.")
@click.option("--slo", type=LIMITS, default=None, help="Goodput limits in ms, e.g. ttft=500,tpot=50")
@click.option("--scrape-metrics", is_flag=True, help="Scrape the server's Prometheus /metrics during the run.")
@click.option("--tokenizer", default=None, help="Local tokenizer folder for exact-length text prompts.")
@click.option("--timeout-s", "request_timeout_s", type=click.FloatRange(min=0, min_open=True), default=600.0,
              show_default=True, help="Per-request timeout.")
@click.option("--records", "records_path", type=click.Path(dir_okay=False), default=None,
              help="Write every request's timings here as JSON lines (gzipped if it ends in .gz).")
@click.option("--records-itl", is_flag=True,
              help="With --records: also list each request's inter-token gaps (ms), one per token chunk.")
@click.option("--profile", "profile_path", type=click.Path(dir_okay=False), default=None,
              help="A profile `autotune run` wrote: run its load level (its concurrency, workload and seed) and say "
                   "whether the server holds it, within the run-to-run noise of fresh servers (exit 3 where it is "
                   "slower beyond noise or a P99 is over its limit beyond noise; a P99 within noise of its limit is "
                   "said to be unsettled).")
@click.option("--max-runs", type=click.IntRange(min=1), default=2, show_default=True,
              help="With --profile: runs of the level at most, the next one only while a P99 lies within noise of "
                   "its limit (a study measures such a level twice); their requests pooled, --records the first's.")
@click.option("--serve-load", is_flag=True,
              help="With --profile: run its serve load instead of its concurrency (the knee, where a P99 lies near "
                   "its limit), the load `autotune run` advises a deployment to serve at, and judge the server there: "
                   "each P99 against its limit, the throughput against what the profile expects there.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout and nothing else.")
@click.pass_context
def bench(ctx: click.Context, url: str, model: str, workload: str, concurrency: int | None, rate: float | None,
          burstiness: float, num_prompts: int | None, warmup: int | None, ramp_s: float | None, whole_run: bool,
          endpoint: str, seed: int, slo: dict[str, float] | None, scrape_metrics: bool, tokenizer: str | None,
          request_timeout_s: float, records_path: str | None, records_itl: bool, profile_path: str | None,
          max_runs: int, serve_load: bool, as_json: bool) -> None:
    """Benchmark a running OpenAI-compatible server (vLLM or the sim engine) at one load level: at a concurrency,
    the level a study measures there (the same requests, warm-up wave, ramp and steady window), so its figures
    compare with the study's profile and with `autotune sim predict`; with --profile, that profile's level,
    judged against it."""
    from autotune.loadgen.runner import LoadConfig, run_bench
    from autotune.loadgen.workload import parse_workload
    from autotune.trial import LevelShape

    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--url must start with http:// or https://, got {url!r}")
    profile = None
    if profile_path is None and ctx.get_parameter_source("max_runs") is click.core.ParameterSource.COMMANDLINE:
        raise UsageError("--max-runs is for --profile: without one a single run is measured")
    if profile_path is None and serve_load:
        raise UsageError("--serve-load is for --profile: the serve load is a profile's")
    if profile_path is not None:
        from autotune.profile_check import load_profile_for_check

        given = [f"--{name.replace('_', '-')}" for name in ("workload", "concurrency", "rate", "burstiness",
                                                             "num_prompts", "warmup", "ramp_s", "whole_run", "slo")
                 if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]
        if given:
            raise UsageError(f"--profile sets the load level (the profile's concurrency, workload and limits): "
                             f"not with {given[0]}")
        profile = load_profile_for_check(profile_path)
        workload, concurrency = str(profile.workload["spec"]), profile.concurrency
        if serve_load:
            if profile.serve is None:
                raise UsageError(f"--serve-load: profile {profile_path} has no serve load (its study ran on the "
                                 "noiseless sim, or its load curve could not place one): check its concurrency "
                                 "without --serve-load")
            concurrency = profile.serve.concurrency
        if ctx.get_parameter_source("seed") is not click.core.ParameterSource.COMMANDLINE:
            seed = int(profile.workload.get("seed", seed))
    if records_itl and not records_path:
        raise UsageError("--records-itl needs --records FILE")
    wl = parse_workload(workload, seed=seed, tokenizer=tokenizer)
    replay = wl.timed and rate is None
    if not replay and (concurrency is None) == (rate is None):
        raise UsageError("give exactly one of --concurrency and --rate")
    closed_loop = concurrency is not None and rate is None and not replay
    sent_at_times = "a trace replay sends at the trace's times" if replay else "--rate sends at its own times"
    if whole_run and not closed_loop:
        raise UsageError(f"--whole-run is for a closed loop (--concurrency): {sent_at_times} and counts its whole "
                         "run already")
    if ramp_s and not closed_loop:
        raise UsageError(f"--ramp-s is for a closed loop (--concurrency): {sent_at_times}")
    if closed_loop:
        level = LevelShape().load_config(concurrency)
        num_prompts = level.num_prompts if num_prompts is None else num_prompts
        warmup = level.warmup_prompts if warmup is None else warmup
        ramp_s = level.ramp_s if ramp_s is None else ramp_s
    warmup = warmup or 0
    if wl.trace_length is not None:  # a trace is sent once, not cycled: all of it by default, --num-prompts caps
        measurable = wl.trace_length - warmup
        if measurable < 1:
            raise UsageError(f"the trace has {wl.trace_length} requests: none left to measure after "
                             f"--warmup {warmup}")
        num_prompts = measurable if num_prompts is None else min(num_prompts, measurable)
    cfg = LoadConfig(concurrency=concurrency, rate=rate, burstiness=burstiness,
                     num_prompts=200 if num_prompts is None else num_prompts, warmup_prompts=warmup,
                     ramp_s=ramp_s or 0.0, endpoint=endpoint, slo_ms=slo, scrape_metrics=scrape_metrics,
                     request_timeout_s=request_timeout_s, seed=seed, records_path=records_path,
                     records_itl=records_itl, replay_arrivals=replay, steady_state=closed_loop and not whole_run)
    before = _file_stamp(records_path)

    def measure(load: LoadConfig, requests: Any) -> BenchResult:
        if as_json:
            return run_bench(url, model, requests, load)
        measured = _run_with_progress(url, model, requests, load)
        _print_summary(measured)
        return measured

    check = None
    try:
        result = measure(cfg, wl)
        failed = every_request_failed(result)
        if profile is not None and not failed:
            from autotune.metrics import pool
            from autotune.profile_check import check_against_profile

            runs = [result]
            check = check_against_profile(profile, result, at_serve_load=serve_load)
            # as a study's level is: measured again while a P99 straddles its limit, the runs pooled
            while check.holds is None and len(runs) < max_runs:
                click.echo(f"autotune: a P99 lies within noise of its limit: the level again (run {len(runs) + 1} "
                           f"of at most {max_runs}, other requests)", err=True)
                # the workload drawn with the next seed: other requests of the same shape, as a study's next run
                other = parse_workload(workload, seed=seed + len(runs), tokenizer=tokenizer)
                runs.append(measure(replace(cfg, seed=seed + len(runs), records_path=None), other))
                result = pool(runs)
                check = check_against_profile(profile, result, len(runs), serve_load)
    except KeyboardInterrupt:
        # only where this run wrote them: a Ctrl-C before the run (the start, the server check) writes nothing, and
        # a file left there by an earlier run is not this one's
        recorded = bool(records_path) and _file_stamp(records_path) not in (None, before)
        if recorded:
            click.echo(f"autotune: the requests that finished are recorded in {records_path}", err=True)
        if as_json:  # still one object on stdout: no figures, and where the finished requests are
            echo_json({"interrupted": True, "records": records_path if recorded else None})
        raise
    failed = every_request_failed(result)
    if as_json:
        echo_json({**result.to_json(), **({"profile_check": check.to_json()} if check else {})})
    elif check is not None:
        for line in check.lines():
            click.echo(line)
    if failed:  # the result is printed; say why on stderr and exit 1
        raise failed
    if check is not None and check.holds is False:
        held = f"the serve load of profile {profile_path}" if serve_load else f"profile {profile_path}"
        raise ProfileNotHeld(f"the server at {url} does not hold {held}: " + (
            f"slower than {'expected' if serve_load else 'profiled'} beyond noise" if check.slower
            else "a P99 over its limit beyond noise, where the profile expects it within" if serve_load
            else "a P99 over its limit beyond noise, where the profile's was within it"))


def _file_stamp(path: str | None) -> tuple[int, int, int] | None:
    """What tells one write of the file at ``path`` from another (None: no file)."""
    try:
        st = os.stat(path) if path else None
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size) if st else None


def _run_with_progress(url: str, model: str, wl: Any, cfg: Any) -> BenchResult:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from autotune.loadgen.runner import run_bench
    from autotune.progress import BenchProgress
    from autotune.progress import Progress as BaseProgress  # rich has its own Progress

    console = Console(stderr=True)
    if not console.is_terminal:  # a log or a pipe: no bar (rich would still leave an empty line there)
        return run_bench(url, model, wl, cfg)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[failed]} failed"), console=console, transient=True) as bar:
        warm = bar.add_task("warm-up", total=cfg.warmup_prompts, failed=0, visible=cfg.warmup_prompts > 0)
        main = bar.add_task("requests", total=cfg.num_prompts, failed=0)

        class BarProgress(BaseProgress):
            def bench_progress(self, p: BenchProgress) -> None:
                bar.update(warm, completed=min(p.done, p.warmup))
                bar.update(main, completed=max(0, p.done - p.warmup), failed=p.failed)

        return run_bench(url, model, wl, cfg, progress=BarProgress())


def _print_summary(result: BenchResult) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout)
    style = {"ok": "green", "partial": "yellow"}.get(result.status, "red")
    head = Table(title=f"autotune bench — [{style}]{result.status}[/{style}]", show_header=False)
    head.add_column(style="bold")
    head.add_column(justify="right")
    ex = result.extra
    load = f"concurrency {ex.get('concurrency')}" if ex.get("rate") is None else f"rate {ex.get('rate')}/s"
    if ex.get("replay"):
        cap = f", at most {ex['concurrency']} in flight" if ex.get("concurrency") else ""
        load = f"trace replay over {ex.get('trace_span_s', math.nan):,.1f} s{cap}"
    rows = [("load", load), ("completed / failed", f"{result.completed} / {result.failed}"),
            ("steady window (s)" if "steady_window_s" in ex else "duration (s)", _fmt(result.duration_s)),
            ("output tok/s", _fmt(result.output_tok_s))]
    if "whole_run_output_tok_s" in ex:
        rows.append(("output tok/s, whole run", _fmt(ex["whole_run_output_tok_s"])))
    rows += [("total tok/s", _fmt(result.total_tok_s)), ("requests/s", _fmt(result.request_s, 2))]
    if not math.isnan(result.goodput_request_s):
        rows.append(("goodput requests/s", _fmt(result.goodput_request_s, 2)))
    if result.errors:
        rows.append(("errors", ", ".join(f"{k}: {v}" for k, v in sorted(result.errors.items()))))
    for key, value in (ex.get("server_metrics") or {}).items():
        if isinstance(value, dict):  # steps_by_tokens: the non-empty buckets only
            value = ", ".join(f"{k}: {v}" for k, v in value.items() if v) or "none"
        rows.append((f"server {key}", str(value)))
    for name, value in rows:
        head.add_row(name, value)
    console.print(head)
    lat = Table(title="latency (ms)")
    for col in ("metric", "mean", "p50", "p90", "p95", "p99"):
        lat.add_column(col, justify="right" if col != "metric" else "left")
    for metric in LATENCY_METRICS:
        d = result.latency(metric)
        lat.add_row(metric.upper(), *(_fmt(d.percentile(q), 1) for q in ("mean", "p50", "p90", "p95", "p99")))
    console.print(lat)
    if "no_steady_window" in ex:
        console.print(f"note: {ex['no_steady_window']}", markup=False, highlight=False)


def _fmt(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


commands = [bench]
