"""`autotune best` and `autotune studies`: read what studies stored."""
from __future__ import annotations

from typing import Any

import click
import optuna
from rich.console import Console
from rich.table import Table

from autotune.cli.common import echo_json, json_safe
from autotune.metrics import describe_limits
from autotune.records import count_finished, not_run
from autotune.storage import DEFAULT_STORAGE, load_study, open_storage_readonly, study_names
from autotune.winner import Winner, find_winner, read_study, require_winner

__all__ = ["commands", "best_of_study"]

_STORAGE = click.option("--storage", default=None, help=f"SQLAlchemy URL, opened read-only (default {DEFAULT_STORAGE})")


def best_of_study(study: optuna.Study) -> dict[str, Any] | None:
    """The selected winner if the study finished its selection, else the best feasible trial so far (JSON)."""
    w = find_winner(read_study(study))
    return None if w is None else _winner_json(w)


def _winner_json(w: Winner) -> dict[str, Any]:
    return json_safe({
        "study": w.study, "trial": w.trial, "source": w.source, "flags": w.flags, "vllm_serve_cmd": w.vllm_serve_cmd,
        "concurrency": w.concurrency, "stepped_down_from": list(w.stepped_down_from),
        "output_tok_s": w.output_tok_s.mean,
        "output_tok_s_interval": w.output_tok_s.to_json() if w.selected else None,
        "output_tok_s_at_limit": w.at_limit_tok_s.to_json() if w.selected else None,
        "p99_ms": dict(w.p99_ms), "limits_ms": dict(w.limits_ms) or None, "baseline": w.baseline or None,
        "metrics": w.metrics,
        "remeasurements": [{"output_tok_s": m.output_tok_s, "p99_ms": m.p99_ms, "failure": m.failure,
                            "failure_class": m.failure_class} for m in w.remeasurements],
        "verdict": w.verdict, "gains": {k: g.to_json() for k, g in w.gains.items()} if w.selected else None,
        "serve": w.serve.to_json() if w.serve else None,
    })


@click.command("best")
@click.option("--study", "study_name", required=True)
@_STORAGE
@click.option("--json", "as_json", is_flag=True)
def best(study_name: str, storage: str | None, as_json: bool) -> None:
    """The best configuration of a study."""
    data = read_study(load_study(study_name, open_storage_readonly(storage)))
    w = find_winner(data)
    if as_json:
        # one shape with a winner or without, its "best" where `run --json` has it
        echo_json({"study": study_name, "best": None if w is None else _winner_json(w)})
    w = require_winner(data)  # none: exit 3, saying why
    if as_json:
        return
    console = Console(soft_wrap=True)
    console.print(f"[bold]{study_name}[/]: trial {w.trial} ({w.source})")
    console.print(f"  {w.throughput_text()}, {w.p99_text()}", markup=False, highlight=False)
    console.print(f"  {w.vllm_serve_cmd}", markup=False, highlight=False)
    if (serve := w.serve_text()) is not None:
        console.print(f"  {serve}", markup=False, highlight=False)
    for name, text in w.gain_texts().items():
        console.print(f"  gain over {name}: {text}", markup=False, highlight=False)
    if w.verdict:
        console.print(f"  {w.verdict}", markup=False, highlight=False)


@click.command("studies")
@_STORAGE
@click.option("--json", "as_json", is_flag=True)
def studies(storage: str | None, as_json: bool) -> None:
    """List the studies in a storage."""
    store = open_storage_readonly(storage)
    rows = []
    for name in study_names(store):
        data = read_study(optuna.load_study(study_name=name, storage=store))
        trials, fp = data.trials, data.fingerprint
        # the winner as `autotune best` and `compare` give it: after the selection its re-measured figure, not the
        # largest single trial run (which a re-measurement may have found over a limit)
        w = find_winner(data)
        rows.append({"study": name, "trials": count_finished(trials),
                     "complete": sum(t.complete for t in trials), "feasible": sum(t.feasible for t in trials),
                     "not_run": [{"trial": t.number, "same_flags_as": t.same_flags_as} for t in not_run(trials)],
                     "winner": None if w is None else {
                         "trial": w.trial, "selected": w.selected,
                         "output_tok_s_at_limit": w.at_limit_tok_s.mean if w.has_interval else None,
                         "output_tok_s": w.output_tok_s.mean, "concurrency": w.concurrency},
                     "model": fp.model if fp else None, "engine": fp.engine if fp else None,
                     "gpus": fp.gpus if fp else None, "limits_ms": dict(fp.limits_ms) if fp else None,
                     "started": data.started.isoformat(timespec="seconds") if data.started else None})
    if as_json:
        echo_json({"studies": rows})
        return
    columns = ("study", "model", "engine", "GPUs", "limits", "trials", "feasible", "winner")
    cells = [(r["study"], str(r["model"]), str(r["engine"]), str(r["gpus"]),
              describe_limits(r["limits_ms"]) if r["limits_ms"] else "-", _trials_cell(r), str(r["feasible"]),
              _winner_cell(r["winner"])) for r in rows]
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


def _trials_cell(row: dict[str, Any]) -> str:
    """The finished trials, and those the study did not run (the flags of an earlier trial), which they leave out."""
    n = len(row["not_run"])
    return f"{row['trials']}" + (f" (+{n} not run: the flags of an earlier trial)" if n else "")


def _winner_cell(winner: dict[str, Any] | None) -> str:
    if winner is None:
        return "-"
    if winner["output_tok_s_at_limit"] is not None:
        return f"trial {winner['trial']}: {winner['output_tok_s_at_limit']:,.0f} output tok/s at the limit"
    why = "one measurement: no interval" if winner["selected"] else "the best trial so far: no selection yet"
    return (f"trial {winner['trial']}: {winner['output_tok_s']:,.0f} output tok/s at concurrency "
            f"{winner['concurrency']} ({why})")


commands = [best, studies]


