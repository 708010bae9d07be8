"""Studies side by side: their winners in one table, and the charts behind them. ``autotune compare`` prints the
table and writes the HTML report; the dashboard's compare view serves the same table and figures.

A study's *points* are its finished trials, each at the load its search chose (for a trial that met no limit, the
lowest load it tried): output tok/s against each metric's P99 there. Its *feasible front* is the points that met
every limit and that no other such point beats on both throughput and that P99.
"""
from __future__ import annotations

import html
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from autotune.errors import UsageError
from autotune.fileio import check_file_place, write_text_atomically
from autotune.flags import changed_flags, effective_flags, normalize_flag_name
from autotune.hostcpu import host_text
from autotune.metrics import LATENCY_METRICS, describe_limits, fmt_ms
from autotune.records import TrialRecord, count_finished, not_run_text
from autotune.study import BASELINES
from autotune.winner import StudyRecords, Winner, describe_gain, find_winner, read_study

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["TrialPoint", "StudySummary", "summarize", "feasible_front", "Row", "compare_rows", "figures",
           "table_html", "report_html", "write_report", "flags_diff_text", "require_plotly", "trials_text"]

PLOTLY_MISSING = "the charts need plotly: pip install 'autotune[dashboard]'"


@dataclass(frozen=True)
class TrialPoint:
    trial: int
    baseline: str
    feasible: bool  # every limit met at this load
    concurrency: int
    output_tok_s: float
    p99_ms: Mapping[str, float]  # every latency metric's P99 at this load
    flags: Mapping[str, Any]


class StudySummary:
    """One study as the comparison reads it: its records, winner, points and Optuna's parameter importances."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self.data: StudyRecords = read_study(study)
        self.winner: Winner | None = find_winner(self.data)
        self.points: list[TrialPoint] = trial_points(self.data.trials)

    @property
    def name(self) -> str:
        return self.data.name

    @cached_property
    def importances(self) -> dict[str, float]:
        """Optuna's importance of each searched flag for the objective (empty: too few finished trials), over the
        trials that ran: one that was not run repeats an earlier trial's value, which is no second observation."""
        study = self.study
        if any(t.not_run for t in self.data.trials):
            measured = {t.number for t in self.data.trials if t.complete}
            study = _in_memory([t for t in self.study.get_trials(deepcopy=False) if t.number in measured],
                               self.study.direction)
        try:
            with warnings.catch_warnings():  # its notes on sparse regimes: the chart is what the user reads
                warnings.simplefilter("ignore")
                return dict(optuna.importance.get_param_importances(study))
        except (ValueError, RuntimeError):  # fewer than two finished trials, or no parameter that varies
            return {}

    def baseline_output_tok_s(self) -> dict[str, float]:
        """Each baseline's output tok/s at the limit: as the selection compared it, else its trial's knee."""
        gains = self.winner.gains if self.winner else {}
        out = {}
        for name in BASELINES:
            if name in gains:
                out[name] = gains[name].baseline_output_tok_s
            elif self.winner is not None and self.winner.baseline == name:
                out[name] = self.winner.at_limit_tok_s.mean
            elif (trial := self.data.baseline_trials().get(name)) is not None:
                out[name] = trial.value
        return out


def _in_memory(trials: list[optuna.trial.FrozenTrial], direction: optuna.study.StudyDirection) -> optuna.Study:
    """A study in memory holding ``trials``: nothing written to the storage, and no log line of its creation."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction=direction)
    finally:
        optuna.logging.set_verbosity(verbosity)
    study.add_trials(trials)
    return study


def summarize(storage: optuna.storages.BaseStorage, names: Sequence[str]) -> list[StudySummary]:
    from autotune.storage import load_study

    return [StudySummary(load_study(name, storage)) for name in dict.fromkeys(names)]


def trial_points(trials: list[TrialRecord]) -> list[TrialPoint]:
    points = []
    for t in trials:
        if not t.complete or t.result is None or t.result.concurrency is None:
            continue
        level = t.result.level(t.result.concurrency)
        if level is None:
            continue
        points.append(TrialPoint(trial=t.number, baseline=t.baseline, feasible=t.feasible,
                                 concurrency=level.concurrency, output_tok_s=level.output_tok_s,
                                 p99_ms={m: level.p99_of(m) for m in LATENCY_METRICS}, flags=dict(t.result.flags)))
    return points


def feasible_front(points: Sequence[TrialPoint], metric: str) -> list[TrialPoint]:
    """The feasible points no other feasible point beats on both throughput and ``metric``'s P99, by P99."""
    front: list[TrialPoint] = []
    for p in sorted((p for p in points if p.feasible), key=lambda p: (p.p99_ms[metric], -p.output_tok_s)):
        if not front or p.output_tok_s > front[-1].output_tok_s:
            front.append(p)
    return front


def trials_text(trials: list[TrialRecord]) -> str:
    """``6 (3)``: the finished trials and, in brackets, those that met the limits; then each trial that was not run
    (``; trial 5: the same flags as trial 2, not run again``), which neither count includes."""
    not_run = not_run_text(trials)
    return f"{count_finished(trials)} ({sum(t.feasible for t in trials)})" + (f"; {not_run}" if not_run else "")


def flags_diff_text(flags: Mapping[str, Any]) -> list[str]:
    """``max-num-seqs 512 (default 1024)``, one per flag that differs from vLLM's defaults."""
    changed = changed_flags(dict(flags))
    return [f"{name} {_value(v)} (default {_value(d)})" for name, (v, d) in changed.items()] or ["vLLM's defaults"]


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "unset" if value is None else str(value)


# -- the table ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    label: str
    cells: tuple[str, ...]  # one per study
    differs: bool = False  # a flag the winners set to different values


def compare_rows(summaries: Sequence[StudySummary]) -> list[Row]:
    def each(fn) -> tuple[str, ...]:
        return tuple(fn(s) for s in summaries)

    def winner(fn, empty: str = "-"):
        return each(lambda s: fn(s.winner) if s.winner else empty)

    workloads = each(lambda s: f"{s.data.fingerprint.workload['spec']} (seed {s.data.fingerprint.workload['seed']})"
                     if s.data.fingerprint else "-")
    rows = [
        Row("model", each(lambda s: s.data.fingerprint.model if s.data.fingerprint else "-")),
        Row("GPUs", each(lambda s: f"{s.data.fingerprint.gpus}x {s.data.fingerprint.gpu_type}"
                         if s.data.fingerprint else "-")),
        Row("engine", each(lambda s: s.data.fingerprint.engine if s.data.fingerprint else "-")),
        Row("limits", each(lambda s: describe_limits(s.data.limits_ms) if s.data.limits_ms else "-")),
        # throughput at the limit is only comparable under the same requests: a row marked where they differ
        Row("workload", workloads, differs=len(set(workloads)) > 1),
        Row("winner", each(lambda s: f"trial {s.winner.trial}" + (f" ({s.winner.baseline})" if s.winner.baseline
                                                                  else "") if s.winner else "no winner")),
        Row("output tok/s at the limit", winner(lambda w: w.throughput_text())),
    ]
    if any(s.winner and s.winner.serve for s in summaries):  # none on the noiseless sim, whose runs do not spread
        rows.append(Row("serve load", winner(lambda w: w.serve_text() or "-")))
    metrics = list(dict.fromkeys(m for s in summaries for m in s.data.limits_ms))
    for metric in metrics:
        rows.append(Row(f"P99 {metric} ms", winner(lambda w, m=metric: fmt_ms(w.p99_ms.get(m)))))
    for name in BASELINES:
        rows.append(Row(f"gain over {name}", winner(lambda w, n=name: describe_gain(w.gains[n]) if n in w.gains
                                                    else ("the winner" if w.baseline == n else "-"))))
    rows.append(Row("GPU-minutes", each(lambda s: "-" if s.data.gpu_minutes is None else f"{s.data.gpu_minutes:,.1f}")))
    rows.append(Row("trials (met the limits)", each(lambda s: trials_text(s.data.trials))))
    flags = sorted({normalize_flag_name(name) for s in summaries if s.winner for name in s.winner.flags})
    for name in flags:
        effective = {effective_flags(dict(s.winner.flags))[name] for s in summaries if s.winner}
        shown = winner(lambda w, n=name: _value(w.flags[n]) if n in w.flags else
                       f"{_value(effective_flags({})[n])} (default)")
        rows.append(Row(f"--{name}", shown, differs=len(effective) > 1))
    return rows


def table_html(summaries: Sequence[StudySummary]) -> str:
    rows = compare_rows(summaries)
    head = "".join(f"<th>{html.escape(s.name)}</th>" for s in summaries)
    body = []
    for row in rows:
        cls = ' class="differs"' if row.differs else ""
        cells = "".join(f"<td>{html.escape(c)}</td>" for c in row.cells)
        body.append(f"<tr{cls}><th>{html.escape(row.label)}</th>{cells}</tr>")
    return f'<table class="compare"><thead><tr><th></th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


# -- the figures -------------------------------------------------------------------------------------------------
def require_plotly() -> None:
    try:
        import plotly  # noqa: F401
    except ImportError:
        raise UsageError(PLOTLY_MISSING) from None


def _hover(study: str, p: TrialPoint, metrics: Sequence[str]) -> str:
    name = f"trial {p.trial}" + (f" ({p.baseline})" if p.baseline else "")
    p99s = ", ".join(f"{m} {fmt_ms(p.p99_ms[m])} ms" for m in metrics)
    lines = [f"<b>{html.escape(study)}</b>: {name}",
             f"{p.output_tok_s:,.0f} output tok/s at concurrency {p.concurrency}",
             f"P99 {p99s}" + ("" if p.feasible else " (over a limit)"), "flags vs vLLM's defaults:"]
    return "<br>".join(lines + [html.escape(line) for line in flags_diff_text(p.flags)])


def figures(summaries: Sequence[StudySummary]) -> dict[str, go.Figure]:
    """By id: ``front-<metric>`` for each limited metric, ``load``, ``importance``."""
    require_plotly()
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    colors = {s.name: qualitative.Plotly[i % len(qualitative.Plotly)] for i, s in enumerate(summaries)}
    metrics = list(dict.fromkeys(m for s in summaries for m in s.data.limits_ms))
    out: dict[str, go.Figure] = {}
    for metric in metrics:
        fig = go.Figure()
        for s in summaries:
            color = colors[s.name]
            pts = s.points
            fig.add_trace(go.Scatter(
                x=[p.p99_ms[metric] for p in pts], y=[p.output_tok_s for p in pts], mode="markers",
                name=f"{s.name}: trials", legendgroup=s.name, customdata=[p.trial for p in pts],
                hovertext=[_hover(s.name, p, list(s.data.limits_ms)) for p in pts], hoverinfo="text",
                marker={"color": color, "size": 9, "symbol": ["circle" if p.feasible else "x-thin-open" for p in pts],
                        "line": {"color": color, "width": 2}},
                meta={"study": s.name, "kind": "trials"}))
            front = feasible_front(pts, metric)
            fig.add_trace(go.Scatter(
                x=[p.p99_ms[metric] for p in front], y=[p.output_tok_s for p in front], mode="lines",
                line={"color": color, "shape": "hv"}, name=f"{s.name}: feasible front", legendgroup=s.name,
                customdata=[p.trial for p in front], hoverinfo="skip", meta={"study": s.name, "kind": "front"}))
            if metric in s.data.limits_ms:
                fig.add_vline(x=s.data.limits_ms[metric], line={"color": color, "dash": "dot"},
                              annotation_text=f"{s.name} limit", annotation_font_color=color)
        fig.update_layout(title=f"Output tok/s vs P99 {metric} (each trial at the load its search chose)",
                          xaxis_title=f"P99 {metric} (ms)", yaxis_title="output tok/s")
        out[f"front-{metric}"] = fig
    fig = go.Figure()
    for s in summaries:
        w = s.winner
        trial = next((t for t in s.data.trials if w and t.number == w.trial), None)
        if w is None or trial is None or trial.result is None:
            continue
        color = colors[s.name]
        levels = sorted(trial.result.levels, key=lambda lv: lv.concurrency)
        fig.add_trace(go.Scatter(
            x=[lv.concurrency for lv in levels], y=[lv.output_tok_s for lv in levels], mode="lines+markers",
            name=f"{s.name}: trial {w.trial} load search", legendgroup=s.name, line={"color": color},
            marker={"symbol": ["circle" if lv.feasible else "x-thin-open" for lv in levels], "size": 9,
                    "line": {"color": color, "width": 2}},
            hovertext=[f"{html.escape(s.name)}: concurrency {lv.concurrency}, {lv.output_tok_s:,.0f} tok/s"
                       + ("" if lv.feasible else " (over a limit)")
                       + (f"<br>{host_text(lv.host_cpu)}" if lv.host_cpu else "") for lv in levels],
            hoverinfo="text",
            meta={"study": s.name, "kind": "levels"}))
        if w.has_interval:
            fig.add_trace(go.Scatter(
                x=[w.concurrency], y=[w.output_tok_s.mean], mode="markers", name=f"{s.name}: re-measured",
                legendgroup=s.name, marker={"color": color, "symbol": "diamond", "size": 12},
                error_y={"type": "data", "array": [w.output_tok_s.half_width], "visible": True},
                hovertext=[html.escape(w.throughput_text())], hoverinfo="text",
                meta={"study": s.name, "kind": "remeasured"}))
    fig.update_layout(title="The winners' output tok/s vs load (x: a level that broke a limit)",
                      xaxis_title="concurrency", yaxis_title="output tok/s", xaxis_type="log")
    out["load"] = fig
    fig = go.Figure()
    params = sorted({p for s in summaries for p in s.importances},
                    key=lambda p: -max(s.importances.get(p, 0.0) for s in summaries))
    for s in summaries:
        fig.add_trace(go.Bar(x=params, y=[s.importances.get(p, 0.0) for p in params], name=s.name,
                             marker_color=colors[s.name], meta={"study": s.name, "kind": "importance"}))
    fig.update_layout(title="Parameter importance for the objective (Optuna's, per study)", barmode="group",
                      yaxis_title="importance")
    out["importance"] = fig
    for fig in out.values():
        fig.update_layout(template="plotly_white", height=460, margin={"t": 60, "l": 60, "r": 20, "b": 50})
    return out


# -- the report --------------------------------------------------------------------------------------------------
STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table.compare{border-collapse:collapse;font-size:13px;margin:1em 0}
table.compare th,table.compare td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
table.compare thead th{background:#f4f4f4}
table.compare tr.differs td,table.compare tr.differs th{background:#fff3c4;font-weight:600}
.note{color:#666;font-size:13px}"""


def report_html(summaries: Sequence[StudySummary], storage_label: str) -> str:
    """One self-contained page: plotly.js inlined (no network needed to read it), the table, the figures."""
    require_plotly()
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    names = ", ".join(s.name for s in summaries)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>autotune compare: {html.escape(names)}</title>",
             f"<style>{STYLE}</style><script type='text/javascript'>{get_plotlyjs()}</script></head><body>",
             f"<h1>autotune compare: {html.escape(names)}</h1>",
             f"<p class='note'>storage {html.escape(storage_label)}; highlighted rows: workloads the studies ran "
             "differently and flags the winners set differently. Hover a point for its flags against vLLM's "
             "defaults.</p>", table_html(summaries)]
    for div_id, fig in figures(summaries).items():
        parts.append(pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id,
                                 config={"displaylogo": False}))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(summaries: Sequence[StudySummary], path: Path, storage_label: str) -> Path:
    """Render first, then write to a temporary file beside ``path`` and rename it over."""
    path = Path(path)
    check_file_place(path, "--html")
    return write_text_atomically(path, report_html(summaries, storage_label))
