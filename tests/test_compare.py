"""`autotune compare`: the winners' table read against the records, the feasible front against its definition,
the HTML report self-contained, bad input one line. (The report's charts in a browser: test_views_in_chromium.py.)"""
from __future__ import annotations

import json

import optuna
import pytest

from autotune import records
from autotune.cli import main
from autotune.compare import StudySummary, compare_rows, feasible_front, trial_points
from autotune.flags import effective_flags
from autotune.storage import open_storage, open_storage_readonly
from autotune.winner import describe_gain
from tests.study_factory import make_study


def summary(url: str, name: str) -> StudySummary:
    return StudySummary(optuna.load_study(study_name=name, storage=open_storage_readonly(url)))


def test_the_table_shows_each_winner_as_its_records_hold_it(factory_storage):
    a, b, none = (summary(factory_storage, n) for n in ("a", "b", "none"))
    rows = {r.label: r for r in compare_rows([a, b, none])}
    assert rows["output tok/s at the limit"].cells == (a.winner.throughput_text(), b.winner.throughput_text(), "-")
    assert rows["winner"].cells[2] == "no winner"
    for i, s in enumerate((a, b, none)):
        assert rows["GPU-minutes"].cells[i] == f"{sum(r.gpu_minutes for r in s.data.runs):,.1f}"
        assert rows["trials (met the limits)"].cells[i].startswith(str(sum(t.complete for t in s.data.trials)))
    for name, gain in b.winner.gains.items():
        assert rows[f"gain over {name}"].cells[1] == describe_gain(gain)
    assert rows["P99 itl ms"].cells[0] == "-" and rows["P99 itl ms"].cells[1] != "-"  # only b limits ITL
    specs = [f"{s.data.fingerprint.workload['spec']} (seed {s.data.fingerprint.workload['seed']})" for s in (a, b, none)]
    assert rows["workload"].cells == tuple(specs) and rows["workload"].differs == (len(set(specs)) > 1)
    # stored by the factory's noiseless selections: no winner has a serve load, so no row of dashes for it
    assert all(s.winner is None or s.winner.serve is None for s in (a, b, none)) and "serve load" not in rows
    # a flag row is marked where the winners' effective values (unset: vLLM's default) differ
    flags = [r for r in rows.values() if r.label.startswith("--")]
    assert flags and any(r.differs for r in flags)
    for r in flags:
        name = r.label[2:]
        values = {effective_flags(dict(s.winner.flags))[name] for s in (a, b)}
        assert r.differs == (len(values) > 1), r


def test_studies_of_other_requests_are_marked():
    storage = optuna.storages.InMemoryStorage()
    make_study(storage, "short", workload="random:1024:128:0.5")
    make_study(storage, "long", workload="random:1024:512:0.5")
    make_study(storage, "long-too", workload="random:1024:512:0.5", seed=1)
    load = [StudySummary(optuna.load_study(study_name=n, storage=storage)) for n in ("short", "long", "long-too")]
    rows = {r.label: r for r in compare_rows(load)}
    assert rows["workload"].cells == ("random:1024:128:0.5 (seed 0)", "random:1024:512:0.5 (seed 0)",
                                      "random:1024:512:0.5 (seed 0)")
    assert rows["workload"].differs
    assert not {r.label: r for r in compare_rows(load[1:])}["workload"].differs


def test_studies_and_compare_count_the_finished_trials_not_the_queued(capsys, tmp_path):
    """A `--trials 1` study once listed trials=2 in `studies` (its seed profile, still queued, counted) where its
    profile and compare said 1."""
    url = f"sqlite:///{tmp_path}/s.db"
    study = make_study(open_storage(url), "q", n_trials=2)
    study.enqueue_trial({}, user_attrs=records.queue_attrs(baseline="seed-profile"))
    assert len(study.trials) == 3 and records.count_finished(records.read_trials(study)) == 2
    assert main(["studies", "--storage", url, "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)["studies"]
    assert listed["trials"] == 2
    # when it started: its first trial's start (the queued one has none)
    first = min(t.datetime_start for t in study.trials if t.datetime_start)
    assert listed["started"] == first.isoformat(timespec="seconds")
    rows = {r.label: r for r in compare_rows([summary(url, "q")])}
    assert rows["trials (met the limits)"].cells[0].startswith("2 (")


def test_the_front_is_every_feasible_point_nothing_beats(factory_storage):
    for name in ("a", "b", "c"):
        s = summary(factory_storage, name)
        assert s.points and s.points == trial_points(s.data.trials)
        for metric in s.data.limits_ms:
            feasible = [p for p in s.points if p.feasible]
            beaten = {p.trial for p in feasible for q in feasible
                      if q.p99_ms[metric] <= p.p99_ms[metric] and q.output_tok_s >= p.output_tok_s
                      and (q.p99_ms[metric], q.output_tok_s) != (p.p99_ms[metric], p.output_tok_s)}
            front = feasible_front(s.points, metric)
            assert {p.trial for p in front} == {p.trial for p in feasible} - beaten
            assert [p.p99_ms[metric] for p in front] == sorted(p.p99_ms[metric] for p in front)


@pytest.mark.slow  # seconds: the figures of two studies in a 5 MB page
def test_compare_prints_the_table_and_writes_a_self_contained_report(capsys, factory_storage, tmp_path):
    from plotly.offline import get_plotlyjs

    report = tmp_path / "report.html"
    code = main(["compare", "a", "b", "--storage", factory_storage, "--html", str(report)])
    out, err = capsys.readouterr()
    assert code == 0, err
    a, b = summary(factory_storage, "a"), summary(factory_storage, "b")
    assert a.winner.throughput_text() in out and b.winner.throughput_text() in out
    assert " ≠ " in out  # the flags the winners set differently are marked
    text = report.read_text()
    assert get_plotlyjs() in text  # plotly.js inlined; nothing else is loaded from anywhere
    ours = text.replace(get_plotlyjs(), "")
    assert "<script src" not in ours and "<link" not in ours and "http" not in ours.replace("http://www.w3.org", "")
    for div in ("front-ttft", "front-itl", "load", "importance"):
        assert f'id="{div}"' in text
    assert not [p for p in tmp_path.iterdir() if p.name != "report.html"]  # no temporary file left


@pytest.mark.parametrize("args, says", [
    (["compare", "a", "nope"], "no study named 'nope' in this storage"),
    (["compare", "a", "--html", "{tmp}/missing/report.html"], "folder {tmp}/missing does not exist"),
    (["compare", "a", "--html", "/proc/report.html"], "--html /proc/report.html: cannot write there"),
    # a name the system refuses: 'OSError: [Errno 36] File name too long', exit 1, in the folder's and the file's
    (["compare", "a", "--html", "{tmp}/" + "x" * 300 + "/report.html"], "cannot write there (File name too long)"),
    (["compare", "a", "--html", "{tmp}/" + "x" * 300 + ".html"], "cannot write there (File name too long)"),
    (["compare"], "Missing argument 'STUDIES...'"),
])
def test_bad_input_is_one_line(capsys, factory_storage, tmp_path, args, says):
    args = [a.format(tmp=tmp_path) for a in args]
    code = main([*args, "--storage", factory_storage])
    out, err = capsys.readouterr()
    assert code == 2 and says.format(tmp=tmp_path) in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []
