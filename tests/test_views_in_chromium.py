"""The HTML report and the dashboard in a real headless Chromium (tests/browser.py): tick two studies, and the
points and fronts Plotly drew are the stored trials; the report needs no network; the dashboard lists every
study with its stored winner and baselines, shows each study's trials, links optuna-dashboard on the same storage,
and leaves the storage as it found it, refusing a write."""
from __future__ import annotations

import hashlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest

from autotune import records
from autotune.cli import main
from autotune.storage import open_storage_readonly
from autotune.winner import find_winner, read_study
from tests.browser import chromium_page, plotted
from tests.processes import signal_and_collect

pytestmark = pytest.mark.slow


def stored(url: str, name: str) -> tuple[records.StudyFingerprint, list[records.TrialRecord]]:
    study = optuna.load_study(study_name=name, storage=open_storage_readonly(url))
    return records.read_fingerprint(study), records.read_trials(study)


def stored_points(trials: list[records.TrialRecord], metric: str) -> dict[int, tuple[float, float, bool]]:
    """trial -> (P99 of ``metric``, output tok/s, met the limits) at the load its search chose."""
    out = {}
    for t in trials:
        if t.complete and t.result.concurrency is not None:
            level = t.result.level(t.result.concurrency)
            out[t.number] = (level.p99_of(metric), level.output_tok_s, t.feasible)
    return out


def pareto(points: dict[int, tuple[float, float, bool]]) -> set[int]:
    feasible = {n: p for n, p in points.items() if p[2]}
    return {n for n, (x, y, _) in feasible.items()
            if not any(qx <= x and qy >= y and (qx, qy) != (x, y) for qx, qy, _ in feasible.values())}


def check_fronts(page, url: str, studies: list[str]) -> None:
    """Every limited metric's chart: each study's trial points and feasible front as the storage holds them."""
    metrics = list(dict.fromkeys(m for s in studies for m in stored(url, s)[0].limits_ms))
    for metric in metrics:
        traces = plotted(page, f"front-{metric}")
        for name in studies:
            points = stored_points(stored(url, name)[1], metric)
            [drawn] = [t for t in traces if t["meta"] == {"study": name, "kind": "trials"}]
            assert sorted(drawn["customdata"]) == sorted(points)
            for trial, x, y, symbol in zip(drawn["customdata"], drawn["x"], drawn["y"], drawn["symbol"]):
                assert (x, y) == pytest.approx(points[trial][:2])
                assert (symbol == "circle") == points[trial][2]  # met the limits: a filled point
            [front] = [t for t in traces if t["meta"] == {"study": name, "kind": "front"}]
            assert set(front["customdata"]) == pareto(points) and front["x"] == sorted(front["x"])


def test_the_report_draws_the_stored_trials_offline(factory_storage, tmp_path):
    report = tmp_path / "report.html"
    assert main(["compare", "a", "b", "--storage", factory_storage, "--html", str(report)]) == 0
    with chromium_page(offline=True) as (page, requested):
        page.goto(report.as_uri())
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length == 4")
        check_fronts(page, factory_storage, ["a", "b"])
        for name in ("a", "b"):  # the winners' load searches, level by level
            _, trials = stored(factory_storage, name)
            winner = find_winner(read_study(optuna.load_study(study_name=name,
                                                              storage=open_storage_readonly(factory_storage))))
            [levels] = [t for t in plotted(page, "load") if t["meta"] == {"study": name, "kind": "levels"}]
            result = trials[winner.trial].result
            assert levels["x"] == sorted(lv.concurrency for lv in result.levels)
            assert levels["y"] == pytest.approx([lv.output_tok_s for lv in sorted(result.levels,
                                                                                 key=lambda lv: lv.concurrency)])
        hover = page.evaluate("document.getElementById('front-ttft').data[0].hovertext[0]")
        assert "flags vs vLLM's defaults" in hover
        bars = plotted(page, "importance")
        assert {t["meta"]["study"] for t in bars} == {"a", "b"} and all(sum(t["y"]) > 0 for t in bars)
    assert requested and all(u.startswith(("file:", "data:")) for u in requested), requested


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, method: str = "GET") -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_the_dashboard_lists_compares_and_never_writes(factory_storage):
    db = Path(factory_storage.removeprefix("sqlite:///"))
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    port, optuna_port = _free_port(), _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "autotune", "dashboard", "--storage", factory_storage,
                             "--port", str(port), "--optuna-port", str(optuna_port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if _get(base + "static/plotly.min.js") == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        else:
            pytest.fail("the dashboard did not answer within 60 s")
        names = sorted(optuna.study.get_all_study_names(open_storage_readonly(factory_storage)))
        with chromium_page() as (page, requested):
            page.goto(base)
            rows = page.eval_on_selector_all("#studies tbody tr", "rs => rs.map(r => r.dataset.study)")
            assert sorted(rows) == names
            for name in names:  # each study's winner and baselines as stored
                w = find_winner(read_study(optuna.load_study(study_name=name,
                                                             storage=open_storage_readonly(factory_storage))))
                best = page.inner_text(f"tr[data-study='{name}'] td.best")
                assert best == ("no winner" if w is None else f"{w.at_limit_tok_s.mean:,.0f}" + (
                    f" ± {w.at_limit_tok_s.half_width:,.0f}" if w.has_interval else " (not re-measured)"))
                if w is not None and "vllm-defaults" in w.gains:
                    cell = page.inner_text(f"tr[data-study='{name}'] td.baseline")
                    assert cell == f"{w.gains['vllm-defaults'].baseline_output_tok_s:,.0f}"
            page.check("tr[data-study='a'] input.pick")
            page.check("tr[data-study='b'] input.pick")
            page.wait_for_function("document.body.dataset.compared == 'a,b'", timeout=60_000)
            check_fronts(page, factory_storage, ["a", "b"])
            assert page.inner_text("table.compare thead").split() == ["a", "b"]

            page.click("tr[data-study='b'] a.trials")
            page.wait_for_selector("#trials")
            _, trials = stored(factory_storage, "b")
            shown = page.eval_on_selector_all("#trials tr.trial", "rs => rs.map(r => Number(r.dataset.trial))")
            assert shown == [t.number for t in trials]
            link = page.get_attribute("a.optuna", "href")
        assert link.startswith(f"http://127.0.0.1:{optuna_port}/dashboard/studies/")
        assert _get(link) == 200  # optuna-dashboard, per-study detail on the same storage
        study_id = link.rsplit("/", 1)[1]
        assert _get(f"http://127.0.0.1:{optuna_port}/api/studies/{study_id}") == 200
        assert _get(f"http://127.0.0.1:{optuna_port}/api/studies/{study_id}", method="DELETE") == 500  # refused
        assert all(u.startswith((base, "data:")) for u in requested), requested  # plotly.js served locally
    finally:
        out, err = signal_and_collect(proc, signal.SIGINT, 30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and f"http://127.0.0.1:{port}" in err
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before  # nothing was written
    assert "b" in optuna.study.get_all_study_names(open_storage_readonly(factory_storage))
