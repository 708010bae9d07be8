"""`autotune best` and `autotune studies`: read what studies stored."""
from __future__ import annotations

from typing import Any

import click
import optuna
from rich.console import Console
from rich.table import Table

from autotune.cli.common import echo_json
from autotune.errors import NoFeasibleConfigError
from autotune.storage import DEFAULT_STORAGE, load_study, open_storage
from autotune.study import stored_remeasurement

__all__ = ["commands", "best_of_study"]

_STORAGE = click.option("--storage", default=None, help=f"SQLAlchemy URL (default {DEFAULT_STORAGE})")


def _open_existing(url: str | None) -> optuna.storages.BaseStorage:
    return open_storage(url, create_dirs=False)


def best_of_study(study: optuna.Study) -> dict[str, Any] | None:
    """The selected winner if the study finished its selection, else the best feasible trial so far."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    selection = study.user_attrs.get("selection") or {}
    number = selection.get("winner_trial")
    source = "selection (re-measured)"
    if number is None:
        feasible = [t for t in trials.values()
                    if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("feasible")]
        if not feasible:
            return None
        number = max(feasible, key=lambda t: t.value or 0.0).number
        source = "best feasible trial (not re-measured yet)"
    t = trials[number]
    a = t.user_attrs
    fp = study.user_attrs.get("fingerprint", {})
    entry = stored_remeasurement(study, number)
    remeasured = entry.get("repeats", [])
    return {
        "study": study.study_name, "trial": number, "source": source, "flags": a.get("flags"),
        "vllm_serve_cmd": a.get("vllm_serve_cmd"), "concurrency": entry.get("concurrency", a.get("concurrency")),
        "stepped_down_from": entry.get("stepped_down_from", []),
        # the re-measured figures where there are any (they may be at a lower level after a step-down)
        "output_tok_s": _mean([m.get("output_tok_s") for m in remeasured]) or a.get("output_tok_s"),
        "p99_ms": _mean([m.get("p99_ms") for m in remeasured]) or a.get("p99_ms"), "metric": fp.get("metric"),
        "limit_ms": fp.get("limit_ms"), "baseline": a.get("baseline") or None, "metrics": a.get("best_metrics"),
        "remeasurements": [{k: m.get(k) for k in ("output_tok_s", "p99_ms")} for m in remeasured],
        "verdict": selection.get("verdict"), "gains": selection.get("gains"),
    }


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
    console = Console()
    console.print(f"[bold]{study_name}[/]: trial {result['trial']} ({result['source']})")
    console.print(f"  {result['output_tok_s']:,.0f} output tok/s at concurrency {result['concurrency']}, "
                  f"P99 {result['metric']} {result['p99_ms']:,.0f} ms (limit {result['limit_ms']:g} ms)")
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
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        feasible = [t for t in complete if t.user_attrs.get("feasible")]
        fp = study.user_attrs.get("fingerprint", {})
        rows.append({"study": summary.study_name, "trials": len(trials), "complete": len(complete),
                     "feasible": len(feasible), "best_output_tok_s": max((t.value or 0.0 for t in feasible), default=None),
                     "model": fp.get("model"), "engine": fp.get("engine"), "gpus": fp.get("gpus"),
                     "metric": fp.get("metric"), "limit_ms": fp.get("limit_ms"),
                     "started": summary.datetime_start.isoformat(timespec="seconds") if summary.datetime_start else None})
    if as_json:
        echo_json({"studies": rows})
        return
    table = Table(title="Studies")
    for col in ("study", "model", "engine", "GPUs", "limit", "trials", "feasible", "best output tok/s"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["study"], str(r["model"]), str(r["engine"]), str(r["gpus"]),
                      f"p99 {r['metric']} {r['limit_ms']} ms", str(r["trials"]), str(r["feasible"]),
                      "-" if r["best_output_tok_s"] is None else f"{r['best_output_tok_s']:,.0f}")
    Console().print(table)


commands = [best, studies]


def _mean(values: list[Any]) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and v == v]
    return sum(numbers) / len(numbers) if numbers else None
