"""A sampled trial whose launch flags an earlier trial had, finished with a result that those flags settle, is not
run again: it completes at once with that trial's value and constraints (Optuna's FAQ answer to duplicated samples),
holds the earlier trial's number, and every report names it without counting it as a measurement.

A space of one categorical with two choices makes TPE propose points it has seen within a few trials; a space
with one choice makes every sampled point the same."""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from autotune import records
from autotune.cli import main
from autotune.profile import read_profile
from autotune.progress import NULL_PROGRESS, ThreadedProgress
from autotune.records import MEMORY_PLAN_REFUSED, STOPPED_AT_MAX_CONCURRENCY, TrialResult
from autotune.study import (_known_outcome, _objective, _trials_since_gain, open_study, run_worker,
                            stored_finalists)

TWO_CHOICES = ("description: one flag of two values\nparams:\n  kv-cache-dtype: {type: categorical, choices: [auto, fp8]}\n"
               "fixed:\n  enable-chunked-prefill: true\n")
ONE_CHOICE = TWO_CHOICES.replace("[auto, fp8]", "[fp8]")


def _run_args(folder: Path, url: str, space: str) -> list[str]:
    space_path = folder / "space.yaml"
    space_path.write_text(space)
    return ["run", "--model", "flash", "--gpus", "1", "--p99-ms", "500", "--engine", "sim", "--storage", url,
            "--study", "tiny", "--space", str(space_path), "--workload", "random:256:32", "--max-concurrency", "32",
            "--repeats", "0", "--out", str(folder / "out")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A study of the two-choice space: 6 trials with the console's log lines, then resumed for 2 more with --json."""
    folder = tmp_path_factory.mktemp("not-run")
    url = f"sqlite:///{folder}/s.db"
    args = _run_args(folder, url, TWO_CHOICES)
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        first = main([*args, "--trials", "6"])
        first_trials = len(optuna.load_study(study_name="tiny", storage=url).trials)
        resumed = main([*args, "--trials", "2", "--json"])
    assert first == resumed == 0, err.getvalue()
    report = json.loads(out.getvalue().splitlines()[-1])
    return {"url": url, "folder": folder, "console": err.getvalue(), "summary": out.getvalue(), "report": report,
            "first_trials": first_trials, "study": optuna.load_study(study_name="tiny", storage=url)}


@pytest.mark.slow
def test_a_sampled_repeat_is_not_run_and_tells_optuna_the_earlier_result(tiny):
    study = tiny["study"]
    frozen = study.get_trials(deepcopy=False)
    trials = records.read_trials(study)
    not_run = records.not_run(trials)
    assert not_run, "a space of two points and 8 trials repeats one"
    assert tiny["first_trials"] == 6  # --trials counts a trial that was not run: it ends the loop
    for t in not_run:
        earlier = trials[t.same_flags_as]
        assert earlier.complete and earlier.number < t.number and t.state == optuna.trial.TrialState.COMPLETE
        assert t.result is None  # no measurement of its own
        assert frozen[t.number].params["kv-cache-dtype"] == earlier.result.flags["kv-cache-dtype"]
        assert frozen[t.number].value == frozen[earlier.number].value
        assert frozen[t.number].constraints == frozen[earlier.number].constraints
        assert not (tiny["folder"] / "out" / "tiny" / "trials" / str(t.number)).exists()  # no server started
    # no sampled trial was measured whose flags a finished trial had already settled (one slot: in number order)
    for t in trials:
        if t.complete and records.sampled(frozen[t.number]):
            assert records.known_trial_with_flags(trials[:t.number], t.result.flags, 32) is None, t.number
    # never a finalist of its own: the candidates keep the measured trial
    assert not {c.trial_number for c in stored_finalists(study, 3)} & {t.number for t in not_run}


@pytest.mark.slow
def test_the_console_the_profile_and_json_name_it(tiny):
    study = tiny["study"]
    trials = records.read_trials(study)
    not_run = records.not_run(trials)
    first_run = [t for t in not_run if t.number < tiny["first_trials"]]
    assert first_run, "the first run's 6 trials repeat one"
    for t in first_run:
        assert f"trial {t.number} kv=" in tiny["console"]
        assert f": the same flags as trial {t.same_flags_as}, not run again" in tiny["console"]
        assert t.not_run_text() in tiny["summary"]
    report = tiny["report"]
    assert report["not_run"] == [{"trial": t.number, "same_flags_as": t.same_flags_as} for t in not_run]
    assert report["trials"] == records.count_finished(trials) == len(trials) - len(not_run)
    profile = read_profile(report["profile_path"])
    assert profile.study.trials == report["trials"]
    assert [(n.trial, n.same_flags_as) for n in profile.study.not_run] == [(t.number, t.same_flags_as)
                                                                          for t in not_run]


def test_the_readers_name_it_and_never_count_it(tiny, capsys):
    from autotune.compare import compare_rows, summarize
    from autotune.storage import open_storage_readonly, redact_url

    study = tiny["study"]
    trials = records.read_trials(study)
    not_run = records.not_run(trials)
    assert main(["studies", "--storage", tiny["url"], "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)["studies"]
    assert row["not_run"] == [{"trial": t.number, "same_flags_as": t.same_flags_as} for t in not_run]
    assert row["trials"] == records.count_finished(trials) and row["complete"] == row["trials"]
    [summary] = summarize(open_storage_readonly(tiny["url"]), ["tiny"])
    [cell] = [row.cells[0] for row in compare_rows([summary]) if row.label == "trials (met the limits)"]
    assert cell.startswith(f"{row['trials']} ({row['feasible']}); ")
    assert all(t.not_run_text() in cell for t in not_run)

    from aiohttp.test_utils import TestClient, TestServer

    from autotune.dashboard import build_app

    async def page() -> str:
        app = build_app(open_storage_readonly(tiny["url"]), redact_url(tiny["url"]), None)
        async with TestClient(TestServer(app)) as client:
            return await (await client.get("/study/tiny")).text()

    html = asyncio.run(page())
    for t in not_run:
        row_html = html.split(f"data-trial='{t.number}'>")[1].split("</tr>")[0]
        assert "<td>not run</td>" in row_html and t.not_run_text() in row_html


def test_parameter_importances_rest_on_the_trials_that_ran(tiny, monkeypatch):
    """A trial not run repeats an earlier value: no second observation for Optuna's importance fit."""
    from autotune.compare import summarize
    from autotune.storage import open_storage_readonly

    import optuna.importance  # the module itself, not optuna's lazy stand-in for it

    seen: list[set[int]] = []
    monkeypatch.setattr(optuna.importance, "get_param_importances",
                        lambda study, **_: seen.append({t.number for t in study.trials}) or {})
    [summary] = summarize(open_storage_readonly(tiny["url"]), ["tiny"])
    assert summary.importances == {}
    trials = records.read_trials(tiny["study"])
    assert seen == [{t.number for t in trials if t.complete}] and records.not_run(trials)


def _result(flags: dict, **kwargs) -> TrialResult:
    return TrialResult(flags=flags, **{"feasible": False, "output_tok_s": 0.0, "concurrency": None, **kwargs})


FLAGS = {"enable-chunked-prefill": True, "kv-cache-dtype": "fp8"}
CEILING = 64  # the load search's --max-concurrency now


def _level(concurrency: int) -> records.LevelRecord:
    return records.LevelRecord(concurrency=concurrency, output_tok_s=900.0, total_tok_s=1800.0, request_s=2.0, p99={},
                               runs=1, feasible=True, p99_ttft_ms=100.0, p99_tpot_ms=10.0, p99_itl_ms=10.0,
                               p99_e2el_ms=1000.0, completed=3 * concurrency, failed=0, duration_s=10.0, wall_s=10.0,
                               status="ok")


@pytest.mark.parametrize("earlier, known", [
    (_result(FLAGS, feasible=True, output_tok_s=900.0, concurrency=32, stop_reason="limit"), True),
    (_result(FLAGS, failure_class="no_feasible_load", concurrency=8, stop_reason="infeasible"), True),
    (_result(FLAGS, failure_class="oom", stop_reason=MEMORY_PLAN_REFUSED), True),
    (_result(FLAGS, failure_class="bad_flags"), True),
    # another try may not meet these
    (_result(FLAGS, failure_class="crash"), False),
    (_result(FLAGS, failure_class="timeout"), False),
    (_result(FLAGS, failure_class="port_in_use"), False),
    (_result(FLAGS, failure_class="oom"), False),  # at the server's start: another process's memory can cause it
    (_result(FLAGS, failure_class="requests_disconnect", concurrency=8), False),
    (_result(FLAGS, feasible=True, output_tok_s=900.0, concurrency=32, stop_reason="deadline"), False),
    (_result({**FLAGS, "max-num-seqs": 256}, feasible=True, output_tok_s=900.0, concurrency=32), False),
    # every limit held at the --max-concurrency of its search: settled up to that ceiling, not above it (a resumed
    # study given a higher one, as the profile's note advises)
    (_result(FLAGS, feasible=True, output_tok_s=900.0, concurrency=CEILING, stop_reason=STOPPED_AT_MAX_CONCURRENCY,
             levels=(_level(CEILING // 2), _level(CEILING))), True),
    (_result(FLAGS, feasible=True, output_tok_s=900.0, concurrency=CEILING // 2,
             stop_reason=STOPPED_AT_MAX_CONCURRENCY, levels=(_level(CEILING // 4), _level(CEILING // 2))), False),
], ids=["feasible", "no feasible load", "memory plan", "bad flags", "crash", "timeout", "port in use",
        "oom at start", "failed requests", "cut by --timeout", "other flags", "at this ceiling",
        "at a lower ceiling"])
def test_which_earlier_trial_settles_the_flags(earlier, known):
    study = optuna.create_study(direction="maximize")
    done = study.ask()
    records.write_trial_result(done, earlier)
    study.tell(done, earlier.output_tok_s)
    sampled = study.ask()
    frozen = study.get_trials(deepcopy=False)
    found = _known_outcome(sampled.number, frozen, [records.read_trial(t) for t in frozen], dict(FLAGS), CEILING)
    assert (found.number if found else None) == (done.number if known else None)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # the storage's own retry callback
def test_only_a_sampled_trial_is_skipped_not_a_queued_or_retried_one():
    study = optuna.create_study(direction="maximize")
    done = study.ask()
    records.write_trial_result(done, _result(FLAGS, feasible=True, output_tok_s=900.0, concurrency=32))
    study.tell(done, 900.0)
    failed = study.ask()
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)(study, study.trials[failed.number])
    study.enqueue_trial({}, user_attrs=records.queue_attrs(baseline="vllm-defaults"))
    for _ in range(2):  # the retried copy, then the baseline: both taken from the queue
        queued = study.ask()
        frozen = study.get_trials(deepcopy=False)
        assert _known_outcome(queued.number, frozen, [records.read_trial(t) for t in frozen], dict(FLAGS),
                              CEILING) is None
    # a trial still running elsewhere with these flags has no result yet: a sampled trial with them runs too
    running = study.ask()
    sampled = study.ask()
    frozen = study.get_trials(deepcopy=False)
    trials = [records.read_trial(t) for t in frozen]
    assert trials[running.number].state == optuna.trial.TrialState.RUNNING
    assert _known_outcome(sampled.number, frozen, trials, dict(FLAGS), CEILING).number == done.number


def test_a_trial_not_run_counts_towards_stagnation_as_no_gain():
    complete = optuna.trial.TrialState.COMPLETE
    measured = records.TrialRecord(0, complete, "", False, _result(FLAGS, feasible=True, output_tok_s=900.0,
                                                                    concurrency=32))
    repeats = [records.TrialRecord(n, complete, "", False, None, same_flags_as=0) for n in (1, 2)]
    assert _trials_since_gain([measured, *repeats]) == (2, 900.0, 2)


def _cfg(tmp_path: Path, url: str):
    from autotune.config import RunOptions, build_study_config, choose_engine

    (tmp_path / "space.yaml").write_text(ONE_CHOICE)
    return build_study_config(RunOptions(model="flash", engine="sim", storage=url, p99_ms=500, study="one",
                                         space=str(tmp_path / "space.yaml"), workload="random:256:32",
                                         max_concurrency=32, out=str(tmp_path / "out")), choose_engine("sim"))


@pytest.mark.slow  # a PostgreSQL cluster for the session
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_two_processes_on_postgresql_see_each_others_finished_trials_only(postgres, tmp_path):
    """Two storages on one PostgreSQL study, as a run and a worker hold it: a point RUNNING on one is run by the
    other too; once one has finished it, the other does not run it again."""
    from autotune.storage import open_storage

    cfg = _cfg(tmp_path, postgres.url)
    study_a, study_b = (open_study(cfg, open_storage(postgres.url)) for _ in range(2))
    progress = ThreadedProgress(NULL_PROGRESS, threading.Lock())

    def run_one(study: optuna.Study) -> records.TrialRecord:
        study.optimize(_objective(cfg, ("0",), progress, None, threading.Event()), n_trials=1)
        return records.read_trials(study)[-1]

    elsewhere = study_a.ask()  # the space's one point, running on A
    assert run_one(study_b).complete  # B runs it too: A's has no result yet
    first = records.read_trials(study_b)[-1].number
    assert run_one(study_b).same_flags_as == first
    assert run_one(study_a).same_flags_as == first  # A sees B's finished trial
    states = {t.number: t.state for t in records.read_trials(study_a)}
    assert states[elsewhere.number] == optuna.trial.TrialState.RUNNING

    # a worker whose every point is known: its --trials end it, and it ran none of them
    outcome = run_worker(replace(cfg, n_trials=2), open_storage(postgres.url))
    assert (outcome.n_trials_run, outcome.n_trials_not_run, outcome.stopped_by) == (0, 2, "trials")
    assert records.read_runs(study_a)[-1].trials_run == 0
