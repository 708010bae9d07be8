"""`autotune best` and `autotune studies`: read what studies stored."""
from __future__ import annotations

import math
from typing import Any

import click
import optuna
from rich.console import Console
from rich.table import Table

from autotune import records
from autotune.cli.common import echo_json, json_safe
from autotune.cli.ui import fmt_ms
from autotune.errors import NoFeasibleConfigError
from autotune.metrics import describe_limits
from autotune.storage import DEFAULT_STORAGE, load_study, open_storage

__all__ = ["commands", "best_of_study"]

_STORAGE = click.option("--storage", default=None, help=f"SQLAlchemy URL (default {DEFAULT_STORAGE})")


def _open_existing(url: str | None) -> optuna.storages.BaseStorage:
    return open_storage(url, create_dirs=False)


def best_of_study(study: optuna.Study) -> dict[str, Any] | None:
    """The selected winner if the study finished its selection, else the best feasible trial so far."""
    trials = {t.number: t for t in records.read_trials(study)}
    selection = records.read_selection(study)
    number = selection.winner_trial if selection else None
    source = "selection (re-measured)"
    if number is None:
        feasible = [t for t in trials.values() if t.feasible]
        if not feasible:
            return None
        number = max(feasible, key=lambda t: t.value).number
        source = "best feasible trial (not re-measured yet)"
    result = trials[number].result
    assert result is not None
    fp = records.read_fingerprint(study)
    remeasured = records.read_remeasurement(study, number)
    repeats = [m for m in remeasured.repeats if not m.failure] if remeasured else []
    return json_safe({
        "study": study.study_name, "trial": number, "source": source, "flags": result.flags,
        "vllm_serve_cmd": result.vllm_serve_cmd,
        "concurrency": remeasured.concurrency if remeasured else result.concurrency,
        "stepped_down_from": list(remeasured.stepped_down_from) if remeasured else [],
        # the re-measured figures where there are any (they may be at a lower level after a step-down)
        "output_tok_s": _mean([m.output_tok_s for m in repeats]) or result.output_tok_s,
        "p99_ms": {metric: _mean([m.p99_ms.get(metric, math.nan) for m in repeats]) or p99
                   for metric, p99 in result.p99_ms.items()},
        "limits_ms": dict(fp.limits_ms) if fp else None,
        "baseline": trials[number].baseline or None, "metrics": result.best_metrics,
        "remeasurements": [{"output_tok_s": m.output_tok_s, "p99_ms": m.p99_ms, "failure": m.failure}
                           for m in (remeasured.repeats if remeasured else ())],
        "verdict": selection.verdict if selection else None,
        "gains": {k: g.to_json() for k, g in selection.gains.items()} if selection else None,
    })


@click.command("best")
@click.option("--study", "study_name", required=True)
@_STORAGE
@click.option("--json", "as_json", is_flag=True)
def best(study_name: str, storage: str | None, as_json: bool) -> None:
    """The best configuration of a study."""
    study = load_study(study_name, _open_existing(storage))
    result = best_of_study(study)
    if result is None:
        if as_json:
            echo_json({"study": study_name, "best": None})
        raise NoFeasibleConfigError(f"study {study_name!r} has no trial that met its limit yet")
    if as_json:
        echo_json(result)
        return
    console = Console(soft_wrap=True)
    console.print(f"[bold]{study_name}[/]: trial {result['trial']} ({result['source']})")
    limits_ms = result["limits_ms"] or {}
    p99s = ", ".join(f"P99 {metric} {fmt_ms(p99)} ms (limit {limits_ms[metric]:g} ms)" if metric in limits_ms
                     else f"P99 {metric} {fmt_ms(p99)} ms" for metric, p99 in result["p99_ms"].items())
    console.print(f"  {result['output_tok_s']:,.0f} output tok/s at concurrency {result['concurrency']}, {p99s}")
    console.print(f"  {result['vllm_serve_cmd']}")
    if result["verdict"]:
        console.print(f"  {result['verdict']}")


@click.command("studies")
@_STORAGE
@click.option("--json", "as_json", is_flag=True)
def studies(storage: str | None, as_json: bool) -> None:
    """List the studies in a storage."""
    store = _open_existing(storage)
    rows = []
    for summary in optuna.get_all_study_summaries(store, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=store)
        trials = records.read_trials(study)
        feasible = [t for t in trials if t.feasible]
        fp = records.read_fingerprint(study)
        rows.append({"study": summary.study_name, "trials": len(trials), "complete": sum(t.complete for t in trials),
                     "feasible": len(feasible), "best_output_tok_s": max((t.value for t in feasible), default=None),
                     "model": fp.model if fp else None, "engine": fp.engine if fp else None,
                     "gpus": fp.gpus if fp else None, "limits_ms": dict(fp.limits_ms) if fp else None,
                     "started": summary.datetime_start.isoformat(timespec="seconds") if summary.datetime_start else None})
    if as_json:
        echo_json({"studies": rows})
        return
    columns = ("study", "model", "engine", "GPUs", "limits", "trials", "feasible", "best output tok/s")
    cells = [(r["study"], str(r["model"]), str(r["engine"]), str(r["gpus"]),
              describe_limits(r["limits_ms"]) if r["limits_ms"] else "-", str(r["trials"]), str(r["feasible"]),
              "-" if r["best_output_tok_s"] is None else f"{r['best_output_tok_s']:,.0f}") for r in rows]
    console = Console(soft_wrap=True)
    if not console.is_terminal:  # a log or a pipe: one whole line per study, nothing cut at 80 columns
        for row in cells:
            console.print("  ".join(f"{c}={v}" for c, v in zip(columns, row)), markup=False, highlight=False)
        return
    table = Table(title="Studies")
    for col in columns:
        table.add_column(col, no_wrap=col == "study")
    for row in cells:
        table.add_row(*row)
    console.print(table)


commands = [best, studies]


def _mean(values: list[Any]) -> float | None:
    numbers = [float(v) for v in values if v == v]
    return sum(numbers) / len(numbers) if numbers else None

