"""``autotune dashboard``: one local web page over a storage. The list of its studies with each one's winner and
baselines, the compare view (:mod:`autotune.compare`'s table and figures) for the studies ticked, each study's
trials, and optuna-dashboard beside it for per-study detail on the same storage.

Read-only throughout: the storage is opened by :func:`autotune.storage.open_storage_readonly` (SQLite ``mode=ro``,
PostgreSQL read-only transactions), and optuna-dashboard is handed that same storage object, so its own write
endpoints (delete a study, save a note) fail in the database instead of changing it. The page shows the storage
URL without its password; nothing reads tokens from the environment. Blocking storage reads run in worker threads,
off aiohttp's loop.
"""
from __future__ import annotations

import asyncio
import html
import json
import logging
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
from aiohttp import web

from autotune.compare import StudySummary, figures, flags_diff_text, summarize, table_html, trials_text
from autotune.errors import UsageError
from autotune.metrics import describe_limits, fmt_ms
from autotune.storage import load_study, study_names
from autotune.study import BASELINES

__all__ = ["build_app", "OptunaDashboard", "start_optuna_dashboard", "OPTUNA_DASHBOARD_MISSING"]

OPTUNA_DASHBOARD_MISSING = ("optuna-dashboard is not installed (pip install 'autotune[dashboard]'): "
                            "the per-study detail links are off")
_SETTINGS = web.AppKey("settings", dict)

_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0 1em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
thead th{background:#f4f4f4} tr.differs td,tr.differs th{background:#fff3c4;font-weight:600}
.note{color:#666;font-size:13px} td.num{text-align:right}"""

_SCRIPT = """
const boxes = Array.from(document.querySelectorAll('input.pick'));
let latest = 0;  // ticking again while a comparison loads: only the last one is drawn
async function refresh() {
  const mine = ++latest;
  const picked = boxes.filter(b => b.checked).map(b => b.value);
  const target = document.getElementById('compare');
  document.body.dataset.compared = '';
  if (!picked.length) { target.innerHTML = '<p class="note">Tick studies to compare them.</p>'; return; }
  target.innerHTML = '<p class="note">loading...</p>';
  const query = picked.map(n => 'study=' + encodeURIComponent(n)).join('&');
  const response = await fetch('api/compare?' + query);
  const data = await response.json();
  if (mine !== latest) return;
  if (!response.ok) { target.textContent = data.error; return; }
  target.innerHTML = data.table;
  for (const [id, fig] of Object.entries(data.figures)) {
    const div = document.createElement('div');
    div.id = id;
    target.appendChild(div);
    await Plotly.newPlot(div, fig.data, fig.layout, {displaylogo: false});
    if (mine !== latest) return;
  }
  document.body.dataset.compared = picked.join(',');  // rendered: what a reader (or a test) may look at now
}
boxes.forEach(b => b.addEventListener('change', refresh));
refresh();
"""


@dataclass(frozen=True)
class OptunaDashboard:
    """optuna-dashboard serving the same storage object from a thread, on its own port."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """The terminal shows autotune's lines, not one per request."""


class _OneLine(logging.Handler):
    """optuna-dashboard logs a failed request with its traceback; here it is one line (a refused write is the
    read-only storage doing its job)."""

    def emit(self, record: logging.LogRecord) -> None:
        first = record.getMessage().strip().splitlines()[0] if record.getMessage().strip() else record.levelname
        sys.stderr.write(f"autotune dashboard: optuna-dashboard: {first} (the storage is opened read-only)\n")


def start_optuna_dashboard(storage: optuna.storages.BaseStorage, host: str, port: int) -> OptunaDashboard | None:
    """None when optuna-dashboard is not installed; a taken port is a usage error."""
    try:
        from optuna_dashboard import wsgi
    except ImportError:
        return None
    if port > 65535:  # --port 65535 with the default --port + 1: the socket would raise OverflowError, not OSError
        raise UsageError(f"optuna-dashboard cannot listen on {host}:{port} (TCP ports end at 65535): --optuna-port P")
    log = logging.getLogger("optuna_dashboard")
    log.handlers[:] = [_OneLine()]
    log.propagate = False
    try:
        server = make_server(host, port, wsgi(storage), handler_class=_QuietHandler)
    except OSError as e:
        raise UsageError(f"optuna-dashboard cannot listen on {host}:{port} ({e.strerror}): --optuna-port P") from None
    thread = threading.Thread(target=server.serve_forever, name="optuna-dashboard", daemon=True)
    thread.start()
    return OptunaDashboard(server, thread)


def build_app(storage: optuna.storages.BaseStorage, storage_label: str, optuna_port: int | None) -> web.Application:
    """``storage_label``: the URL as the page may show it (without its password); ``optuna_port``: where
    optuna-dashboard listens on this host (None: not running)."""
    app = web.Application()
    # Optuna's caching layer over the database, kept for the app's life: a finished trial does not change, so each
    # page reads only the trials new or unfinished since the last (every trial of every study, 3 s for the index of
    # 30 studies of 100 trials, was read again at every request)
    app[_SETTINGS] = {"storage": optuna.storages.get_storage(storage), "label": storage_label,
                      "optuna_port": optuna_port}
    app.add_routes([web.get("/", _index), web.get("/study/{name}", _study_page), web.get("/api/compare", _compare),
                    web.get("/static/plotly.min.js", _plotly_js)])
    return app


def _page(title: str, body: str, script: str = "") -> web.Response:
    text = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style><script src='/static/plotly.min.js'></script></head><body>{body}"
            + (f"<script>{script}</script>" if script else "") + "</body></html>")
    return web.Response(text=text, content_type="text/html")


def _optuna_link(request: web.Request, name: str) -> str:
    settings = request.app[_SETTINGS]
    if settings["optuna_port"] is None:
        return ""
    study_id = settings["storage"].get_study_id_from_name(name)
    host = request.url.host or ""
    host = f"[{host}]" if ":" in host else host  # a literal IPv6 address
    url = f"http://{host}:{settings['optuna_port']}/dashboard/studies/{study_id}"
    return f"<a class='optuna' href='{html.escape(url)}'>optuna-dashboard</a>"


def _tok_s(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _baseline_cell(summary: StudySummary, name: str, value: float | None) -> str:
    """A baseline's output tok/s at the limit; 0 is a baseline that measured no load within the limits, either
    because it missed them or because its server failed (an OOM at start measured nothing): which one, as its
    trial recorded it."""
    if value != 0:
        return _tok_s(value)
    trial = summary.data.baseline_trials().get(name)
    failure = trial.result.measurement_failure if trial is not None and trial.result is not None else ""
    return f"failed: {failure}" if failure else "missed a limit"


def _read_all(storage: optuna.storages.BaseStorage) -> list[StudySummary | tuple[str, str]]:
    """Every study of the storage, or (its name, why it cannot be read): one old study does not hide the others."""
    out: list[StudySummary | tuple[str, str]] = []
    for name in study_names(storage):
        try:
            out.append(StudySummary(load_study(name, storage)))
        except UsageError as e:
            out.append((name, str(e)))
        except (KeyError, TypeError, ValueError) as e:  # records of another shape, or not autotune's
            out.append((name, f"its records cannot be read ({type(e).__name__}: {e})"))
    return out


async def _index(request: web.Request) -> web.Response:
    settings = request.app[_SETTINGS]
    storage = settings["storage"]
    readable: list[StudySummary | tuple[str, str]] = await asyncio.to_thread(_read_all, storage)
    head = ("<tr><th></th><th>study</th><th>model</th><th>GPUs</th><th>engine</th><th>limits</th><th>workload</th>"
            "<th>trials (met the limits)</th><th>winner's output tok/s at the limit</th>"
            + "".join(f"<th>{b} at the limit</th>" for b in BASELINES) + "<th>GPU-minutes</th><th></th></tr>")
    rows = []
    for s in readable:
        if isinstance(s, tuple):  # a study these records cannot read: listed, with why
            name, why = map(html.escape, s)
            rows.append(f"<tr data-study='{name}'><td></td><td>{name}</td><td colspan='{9 + len(BASELINES)}' "
                        f"class='note'>{why}</td></tr>")
            continue
        fp, w = s.data.fingerprint, s.winner
        name = html.escape(s.name)
        best = "no winner" if w is None else (_tok_s(w.at_limit_tok_s.mean) + (
            f" ± {w.at_limit_tok_s.half_width:,.0f}" if w.has_interval else " (not re-measured)"))
        baselines = s.baseline_output_tok_s()
        minutes = "-" if s.data.gpu_minutes is None else f"{s.data.gpu_minutes:,.1f}"
        links = f"<a class='trials' href='study/{quote(s.name, safe='')}'>trials</a> {_optuna_link(request, s.name)}"
        rows.append(
            f"<tr data-study='{name}'><td><input type='checkbox' class='pick' value='{name}'></td><td>{name}</td>"
            f"<td>{html.escape(fp.model if fp else '-')}</td><td>{f'{fp.gpus}x {fp.gpu_type}' if fp else '-'}</td>"
            f"<td>{html.escape(fp.engine if fp else '-')}</td>"
            f"<td>{html.escape(describe_limits(s.data.limits_ms) if s.data.limits_ms else '-')}</td>"
            # the throughputs of studies of other workloads are not comparable: said before they are read
            f"<td class='workload'>{html.escape(str(fp.workload['spec']) if fp else '-')}</td>"
            f"<td class='num'>{html.escape(trials_text(s.data.trials))}</td>"
            f"<td class='num best'>{best}</td>"
            + "".join(f"<td class='num baseline'>{html.escape(_baseline_cell(s, b, baselines.get(b)))}</td>"
                      for b in BASELINES)
            + f"<td class='num'>{minutes}</td><td>{links}</td></tr>")
    note = "" if settings["optuna_port"] is not None else f"<p class='note'>{html.escape(OPTUNA_DASHBOARD_MISSING)}</p>"
    body = (f"<h1>autotune dashboard</h1><p class='note'>storage {html.escape(settings['label'])} (read-only)</p>"
            f"{note}<table id='studies'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"
            "<h2>Compare</h2><div id='compare'></div>")
    return _page("autotune dashboard", body, _SCRIPT)


async def _compare(request: web.Request) -> web.Response:
    names = request.query.getall("study", [])
    try:
        summaries = await asyncio.to_thread(summarize, request.app[_SETTINGS]["storage"], names)
        figs = await asyncio.to_thread(figures, summaries)
    except UsageError as e:
        return web.json_response({"error": str(e)}, status=404)
    # plotly's own encoder for the figures (numpy arrays, dates), read back as plain JSON
    return web.json_response({"table": table_html(summaries),
                              "figures": {k: json.loads(f.to_json()) for k, f in figs.items()}})


async def _study_page(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    settings = request.app[_SETTINGS]
    try:
        summary = await asyncio.to_thread(lambda: StudySummary(load_study(name, settings["storage"])))
    except UsageError as e:
        raise web.HTTPNotFound(text=str(e)) from None
    limits = list(summary.data.limits_ms)
    head = ("<tr><th>trial</th><th>baseline</th><th>state</th><th>met the limits</th><th>concurrency</th>"
            "<th>output tok/s</th>" + "".join(f"<th>P99 {m} ms</th>" for m in limits)
            + "<th>failure</th><th>flags vs vLLM's defaults</th></tr>")
    rows = []
    results = {t.number: t.result for t in summary.data.trials if t.result is not None}
    for t in summary.data.trials:
        r = t.result
        level = r.level(r.concurrency) if r is not None and r.concurrency is not None else None
        p99 = "".join(f"<td class='num'>{fmt_ms(level.p99_of(m)) if level else '-'}</td>" for m in limits)
        # a trial that was not run has its earlier trial's flags, and no figure of its own
        shown = r or (results.get(t.same_flags_as) if t.not_run else None)
        flags = "<br>".join(html.escape(line) for line in flags_diff_text(shown.flags)) if shown else "-"
        # neither was a measurement: the reports count neither as a trial (records.count_finished)
        if t.not_run or t.not_started:
            state, met, note = ("not run", "-", t.not_run_text()) if t.not_run else ("not started", "-", t.not_started)
        else:
            state, met, note = t.state.name, "yes" if t.feasible else "no", r.failure_class if r else ""
        rows.append(f"<tr class='trial' data-trial='{t.number}'><td>{t.number}</td><td>{html.escape(t.baseline)}</td>"
                    f"<td>{state}</td><td>{met}</td>"
                    f"<td class='num'>{level.concurrency if level else '-'}</td>"
                    f"<td class='num'>{_tok_s(level.output_tok_s) if level else '-'}</td>{p99}"
                    f"<td>{html.escape(note)}</td><td>{flags}</td></tr>")
    w = summary.winner
    verdict = f"<p>{html.escape(w.verdict)}</p>" if w and w.verdict else ""
    winner = f"<p>winner: trial {w.trial}, {html.escape(w.throughput_text())}</p>" if w else "<p>no winner</p>"
    body = (f"<p><a href='../'>all studies</a> {_optuna_link(request, name)}</p><h1>{html.escape(name)}</h1>"
            f"{winner}{verdict}<table id='trials'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>")
    return _page(f"autotune: {name}", body)


async def _plotly_js(request: web.Request) -> web.FileResponse:
    import plotly

    return web.FileResponse(Path(plotly.__file__).parent / "package_data" / "plotly.min.js")
