"""Several processes on one study in a real PostgreSQL (autotune.testing.postgres): a run and a worker, the worker
SIGKILLed mid-trial (its server stopped by its watchdog, its trial failed through Optuna's heartbeat and queued
again); the database lost mid-study (a clear stop, the trial's result journaled and written on resume); the
database unreachable at start (exit 1), and one that refuses the URL's password or database (exit 2). The password
of the storage URL appears in no output."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from autotune import records
from autotune.engines.launcher import WATCHDOG_GRACE_S
from autotune.storage import redact_url

pytestmark = pytest.mark.slow

HEARTBEAT_S = 1  # a dead worker's trial is failed 3 heartbeats after its last one


def _env() -> dict[str, str]:
    return {**os.environ, "AUTOTUNE_HEARTBEAT_S": str(HEARTBEAT_S)}


def _run_args(url: str, study: str, out: Path, trials: int) -> list[str]:
    return [sys.executable, "-m", "autotune", "run", "--model", "flash", "--engine", "sim", "--p99-ms", "500",
            "--storage", url, "--study", study, "--trials", str(trials), "--repeats", "0", "--top-k", "0",
            "--workload", "random:256:32", "--max-concurrency", "16", "--sim-server", "--sim-time-scale", "50",
            "--out", str(out), "--json"]


def _children(pid: int) -> list[tuple[int, str]]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout  # -ww: uncut
    rows = [line.split(None, 2) for line in out.splitlines()]
    return [(int(p), args) for p, pp, args in (r for r in rows if len(r) == 3) if int(pp) == pid]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def _wait(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _study(url: str, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=url)
    except KeyError:
        return None


def _kill_left(*procs: subprocess.Popen) -> None:
    """Never leave a process of a failed test running."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _start_run_then_worker(url: str, study: str, tmp_path: Path, trials: int, worker_args: tuple[str, ...] = (),
                           **worker_kwargs) -> tuple[subprocess.Popen, subprocess.Popen]:
    """`autotune run` on the study, and once it has written the study's options, an `autotune worker` beside it."""
    run = subprocess.Popen(_run_args(url, study, tmp_path / "run", trials), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=_env())
    try:
        _wait(lambda: (s := _study(url, study)) is not None and records.read_run_options(s), 120, "the study")
    except BaseException:
        _kill_left(run)
        raise
    worker = subprocess.Popen([sys.executable, "-m", "autotune", "worker", "--study", study, "--storage", url,
                               "--out", str(tmp_path / "worker"), *worker_args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env(), **worker_kwargs)
    return run, worker


def test_a_worker_killed_mid_trial_is_detected_and_its_trial_queued_again(postgres, tmp_path: Path) -> None:
    url = postgres.url
    run, worker = _start_run_then_worker(url, "two", tmp_path, 8)
    try:
        # the worker's trial: its server's watchdog is the worker's child, named by the served model name
        watchdog = _wait(lambda: [c for c in _children(worker.pid) if "autotune-two-" in c[1]]
                         or (worker.poll() is not None and pytest.fail(worker.communicate()[1])), 120,
                         "a trial on the worker")[0]
        number = int(watchdog[1].split("autotune-two-")[1].split()[0])
        server = _wait(lambda: [p for p, _ in _children(watchdog[0])] or [
            int(f.name) for f in Path("/proc").iterdir() if f.name.isdigit() and _in_group(int(f.name), watchdog[0])
            and int(f.name) != watchdog[0]], 60, "the worker's server")[0]
        time.sleep(1.0)  # mid-trial
        worker.kill()
        worker.wait(10)
        # its server does not outlive it by more than the watchdog's grace
        _wait(lambda: not _alive(server) and not _alive(watchdog[0]), WATCHDOG_GRACE_S + 10, "the server to stop")
        out, err = run.communicate(timeout=400)
        assert run.returncode in (0, 3), err
        report = json.loads(out)
        assert report["study"] == "two"
    finally:
        _kill_left(run, worker)
    study = optuna.load_study(study_name="two", storage=url)
    trials = study.trials
    assert trials[number].state == optuna.trial.TrialState.FAIL  # the others saw its heartbeat stop
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == number]
    assert retried and retried[0].params == trials[number].params  # queued again, same flags
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) >= 8
    assert postgres.password not in out + err + (worker.stderr.read() if worker.stderr else "")


def test_the_run_compares_the_trials_its_workers_finish_after_its_own(postgres, tmp_path: Path) -> None:
    """The run went on to its final comparison the moment its own trials were over: the worker's trial still
    running then (in every try of this test) was in neither the verdict nor the report's count. The worker's
    console counted its own 20 trials (its --trials default) and the run's final comparison; it names the run's
    search, which ends its trials."""
    url = postgres.url
    run, worker = _start_run_then_worker(url, "wait", tmp_path, 3)
    try:
        out, err = run.communicate(timeout=400)
        _, worker_err = worker.communicate(timeout=60)
        assert run.returncode in (0, 3), err
    finally:
        _kill_left(run, worker)
    # how many are left when the worker starts depends on how soon it does
    assert re.search(r"until the run's search ends after [123] more of its trials at most \(its --trials 3\)",
                     worker_err), worker_err
    assert "final comparison" not in worker_err and "19 more trials" not in worker_err, worker_err
    report = json.loads(out)
    study = optuna.load_study(study_name="wait", storage=url)
    assert report["trials"] == records.count_finished(records.read_trials(study))
    assert report["left_out"] == [] and "left out" not in report["verdict"]
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]


def _in_group(pid: int, pgid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[2] == str(pgid)


def test_the_database_lost_mid_study_stops_clearly_and_loses_nothing(postgres, tmp_path: Path) -> None:
    url = postgres.url
    run = subprocess.Popen(_run_args(url, "lost", tmp_path / "out", 20), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=_env())
    try:
        # a trial's server is up: the database goes while the trial measures
        _wait(lambda: [c for c in _children(run.pid) if "autotune-lost-" in c[1]], 120, "a trial")
        time.sleep(1.5)
        postgres.stop()
        try:
            out, err = run.communicate(timeout=300)
        finally:
            postgres.start()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(10)
    assert run.returncode == 1, err
    assert "lost during study 'lost'" in err and "run the same command again" in err, err
    assert "Traceback" not in err and postgres.password not in out + err
    kept = sorted((tmp_path / "out" / "lost" / "pending").glob("trial-*.json"))
    before = optuna.load_study(study_name="lost", storage=url)
    complete_before = sum(t.state == optuna.trial.TrialState.COMPLETE for t in before.trials)
    rerun = subprocess.run(_run_args(url, "lost", tmp_path / "out", 0), capture_output=True, text=True, env=_env(),
                           timeout=300)
    assert rerun.returncode in (0, 3), rerun.stderr
    after = optuna.load_study(study_name="lost", storage=url)
    replayed = [records.read_trial(t) for t in after.trials if t.user_attrs.get("replayed_from_trial") is not None]
    assert len(replayed) == len(kept)  # every journaled trial is in the study now, finished, with its levels
    assert all(t.complete and t.result.levels for t in replayed)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in after.trials) == complete_before + len(kept)
    assert not list((tmp_path / "out" / "lost" / "pending").glob("trial-*.json"))
    assert not [t for t in after.trials if t.state == optuna.trial.TrialState.RUNNING]


def test_a_baseline_a_killed_run_measured_is_not_measured_again_by_a_worker(postgres, tmp_path: Path) -> None:
    """A run SIGKILLed in a baseline's re-measurement (inside its trial: its result stored and kept in the run's
    pending folder, the trial never told) left it RUNNING; the worker beside it failed it once its heartbeats stopped
    and queued a copy, then measured that copy: the baseline's GPU time spent again, and once the run resumed, its
    kept result added as a third trial of the same flags. The copy takes the result its original stored instead, and
    the resumed run's kept result is found in the study already."""
    url, study_name = postgres.url, "retaken"
    run_out = tmp_path / "run"
    args = _run_args(url, study_name, run_out, 4)
    args[args.index("--repeats") + 1] = "1"  # the baseline's re-measurement: its result kept, its trial not over
    run = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    pending = run_out / study_name / "pending"
    try:
        [kept] = _wait(lambda: sorted(pending.glob("trial-*.json")) or (run.poll() is not None and pytest.fail(
            run.communicate()[1])), 120, "a trial's result kept")
        run.kill()
        run.wait(10)
    finally:
        _kill_left(run)
    assert kept.exists()  # killed before Optuna was told
    original = int(kept.stem.split("-")[1])
    time.sleep(3 * HEARTBEAT_S + 1)  # its heartbeats stopped: the worker fails it and queues a copy
    worker = subprocess.run([sys.executable, "-m", "autotune", "worker", "--study", study_name, "--storage", url,
                             "--out", str(tmp_path / "worker"), "--trials", "2"], capture_output=True, text=True,
                            env=_env(), timeout=300)
    assert worker.returncode == 0, worker.stderr
    study = optuna.load_study(study_name=study_name, storage=url)
    [copy] = [t for t in study.trials if t.system_attrs.get("failed_trial") == original]
    measured = records.read_trial(study.trials[original]).result
    assert copy.state == optuna.trial.TrialState.COMPLETE and records.read_trial(copy).result == measured
    assert not (tmp_path / "worker" / study_name / "trials" / str(copy.number)).exists()  # no server started for it
    assert f"trial {copy.number}" in worker.stderr and "not measured again" in worker.stderr, worker.stderr
    resumed = subprocess.run(_run_args(url, study_name, run_out, 0), capture_output=True, text=True, env=_env(),
                             timeout=300)
    assert resumed.returncode in (0, 3), resumed.stderr
    study = optuna.load_study(study_name=study_name, storage=url)
    baseline = records.queued_baseline(study.trials[original])
    assert [t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
            and records.queued_baseline(t) == baseline] == [copy.number]  # measured once, recorded once
    assert not list(pending.glob("trial-*.json"))
    assert postgres.password not in worker.stdout + worker.stderr + resumed.stdout + resumed.stderr


def test_an_unreachable_database_is_one_line_and_exit_1(postgres) -> None:
    url = postgres.url.replace(f":{postgres.port}/", ":9/")  # nothing listens on port 9
    for argv in (["run", "--model", "flash", "--engine", "sim", "--p99-ms", "500"], ["worker", "--study", "x"]):
        proc = subprocess.run([sys.executable, "-m", "autotune", *argv, "--storage", url], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 1, proc.stderr
        assert "cannot reach storage" in proc.stderr and proc.stderr.count("\n") == 1
        assert postgres.password not in proc.stderr and "***" in proc.stderr


def test_a_wrong_password_or_a_missing_database_is_bad_input_one_line_and_exit_2(postgres, tmp_path: Path,
                                                                                 capsys) -> None:
    """A wrong password ended a run or a worker as an unreachable database ("cannot reach storage", exit 1), and the
    readers with the driver's whole line: what the user typed is wrong, so it is named, password masked, exit 2."""
    from autotune.cli import main

    wrong_password = postgres.url.replace(f":{postgres.password}@", ":not-the-password@")
    no_database = postgres.url.rsplit("/", 1)[0] + "/nope"
    for url, said in ((wrong_password, 'password authentication failed for user "autotune"'),
                      (no_database, 'database "nope" does not exist')):
        for argv in (["run", "--model", "flash", "--engine", "sim", "--p99-ms", "500", "--out", str(tmp_path)],
                     ["worker", "--study", "x"], ["best", "--study", "x"]):
            assert main([*argv, "--storage", url]) == 2, argv
            err = capsys.readouterr().err
            assert err == f"autotune: error: storage {redact_url(url)}: the server refused the connection: {said}\n"
            assert postgres.password not in err and "not-the-password" not in err and ":***@" in err


def test_a_worker_ctrl_c_leaves_the_trials_of_the_run_beside_it_alone(postgres, tmp_path: Path) -> None:
    """A worker stopped by Ctrl-C fails its own cut trial only: a trial the run started meanwhile is the run's, and
    failing it made the run's end 'Cannot tell a FAIL trial' (exit 1). With --json it prints one object, what the
    study kept (it printed nothing)."""
    url = postgres.url
    run, worker = _start_run_then_worker(url, "ctrlc", tmp_path, 6, ("--json",),
                                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        def trial_of(proc: subprocess.Popen) -> int | None:  # its servers' watchdogs are its children
            names = [args.split("autotune-ctrlc-")[1].split()[0] for _, args in _children(proc.pid)
                     if "autotune-ctrlc-" in args]
            return int(names[0]) if names else None
        _wait(lambda: trial_of(worker) is not None, 120, "a trial on the worker")
        first = _wait(lambda: trial_of(run), 120, "a trial on the run")
        # the run's next trial starts while the worker runs: the one the worker's Ctrl-C must leave alone
        _wait(lambda: (n := trial_of(run)) is not None and n != first and trial_of(worker) is not None, 120,
              "the run's next trial beside the worker's")
        cut = trial_of(worker)
        worker.send_signal(signal.SIGINT)
        worker_out, worker_err = worker.communicate(timeout=60)
        assert worker.returncode == 130, worker_err
        [line] = worker_out.splitlines()
        kept = json.loads(line)
        assert kept["interrupted"] is True and kept["study"] == "ctrlc"
        # the signal can land after the cut trial's load search ended, while its server stops: then it finished
        assert kept["interrupted_trials"] in ([cut], [])
        out, err = run.communicate(timeout=400)
        assert run.returncode in (0, 3), err
    finally:
        _kill_left(run, worker)
    study = optuna.load_study(study_name="ctrlc", storage=url)
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    cut_record = records.read_trial(study.trials[cut])
    if kept["interrupted_trials"]:
        assert cut_record.result is not None and cut_record.result.failure_class == "interrupted"
    else:
        assert cut_record.state == optuna.trial.TrialState.COMPLETE


def test_a_second_run_of_a_study_that_a_live_run_holds_is_refused(postgres, tmp_path: Path) -> None:
    """Two `autotune run`s of one study at once (by hand) both re-measured the same finalist: each stored its own
    re-measurement of the trial over the other's, one run's measurement lost, and the first run printed a verdict
    that `best` did not show. The second is refused while the first lives; once it has ended, it runs."""
    url = postgres.url
    first = subprocess.Popen(_run_args(url, "held", tmp_path / "first", 4), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=_env())
    try:
        _wait(lambda: (s := _study(url, "held")) is not None and records.read_run_options(s), 120, "the study")
        second = subprocess.run(_run_args(url, "held", tmp_path / "second", 1), capture_output=True, text=True,
                                env=_env(), timeout=120)
        assert second.returncode == 2, second.stderr
        assert first.poll() is None  # refused while the first lived
        assert "is being run by another `autotune run`" in second.stderr and "autotune worker" in second.stderr
        assert second.stderr.count("\n") == 1 and postgres.password not in second.stderr
        _, err = first.communicate(timeout=400)
        assert first.returncode in (0, 3), err
    finally:
        _kill_left(first)
    again = subprocess.run(_run_args(url, "held", tmp_path / "second", 0), capture_output=True, text=True,
                           env=_env(), timeout=120)
    assert again.returncode in (0, 3), again.stderr


def test_a_refused_run_is_one_line_under_the_auto_engine_and_names_a_worker_command_that_runs(postgres,
                                                                                              tmp_path: Path) -> None:
    """The refusal came from inside the study, after `--engine auto`'s notice: two lines; and its `autotune worker
    --study NAME` left a name with a space or a quote unquoted, a command the shell split or refused."""
    import shlex

    from autotune.storage import _RUN_LOCKS, hold_study_run, open_storage

    name = "it's held"
    hold_study_run(open_storage(postgres.url), name)  # a live run of it, here
    try:
        args = [a for a in _run_args(postgres.url, name, tmp_path, 1) if a != "--json"]
        args[args.index("--engine") + 1] = "auto"
        second = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=120)
    finally:
        _RUN_LOCKS.pop(next(k for k in _RUN_LOCKS if k[1] == name)).close()
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    command = second.stderr.split("join it with `")[1].split("`")[0]
    assert shlex.split(command) == ["autotune", "worker", "--study", name, "--storage", "URL"], command


def test_a_run_resumed_in_one_process_after_its_database_was_lost_holds_its_study_again(postgres) -> None:
    """The lock lives on its own connection, which the database's loss ends: a run resumed from the same Python
    session found that connection among its held locks and went on without the lock, another run then not
    refused."""
    from autotune.storage import _RUN_LOCKS, hold_study_run, open_storage

    probe = ("from autotune.storage import hold_study_run, open_storage; "
             f"hold_study_run(open_storage({postgres.url!r}), 'lost')")
    storage = open_storage(postgres.url)
    hold_study_run(storage, "lost")
    try:
        postgres.stop()
        postgres.start()
        hold_study_run(storage, "lost")  # the resumed run
        other = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=_env(), timeout=60)
    finally:
        _RUN_LOCKS.pop(next(k for k in _RUN_LOCKS if k[1] == "lost")).close()
    assert other.returncode != 0 and "is being run by another `autotune run`" in other.stderr, other.stderr


def test_a_run_keeps_its_study_through_the_servers_idle_session_timeout(postgres) -> None:
    """The lock's connection idles while the run works: under a server's idle_session_timeout (here 1 s, from the
    URL's options, as a managed database may set it) the server ended it and dropped the lock, and a second run was
    no longer refused."""
    import time
    from urllib.parse import quote

    from autotune.storage import _RUN_LOCKS, hold_study_run, open_storage

    timed_out = f"{postgres.url}?options={quote('-c idle_session_timeout=1000')}"
    hold_study_run(open_storage(timed_out), "idle")
    try:
        time.sleep(2.5)
        probe = ("from autotune.storage import hold_study_run, open_storage; "
                 f"hold_study_run(open_storage({postgres.url!r}), 'idle')")
        other = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=_env(), timeout=60)
    finally:
        _RUN_LOCKS.pop(next(k for k in _RUN_LOCKS if k[1] == "idle")).close()
    assert other.returncode != 0 and "is being run by another `autotune run`" in other.stderr, other.stderr


def _hold_pids(admin, key: int) -> list[int]:
    """The server processes that hold the advisory lock ``key`` (storage.run_lock_key): its high and low 32 bits are
    pg_locks' classid and objid."""
    return [row[0] for row in admin.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
        "(classid::bigint << 32) | objid::bigint = %s::bigint & x'ffffffffffffffff'::bigint", (key,))]


def test_a_run_whose_hold_was_ended_takes_it_again_or_stops_where_another_run_took_it(postgres) -> None:
    """The hold lives on a connection of its own, which an administrator (pg_terminate_backend), a restart or a
    pooler may end while the run works: a second run was then no longer refused, and both made the final
    comparison. Before its final comparison the run takes the hold again; where another run took it meanwhile, it
    stops (exit 1) and leaves the comparison to that one."""
    import psycopg
    from sqlalchemy.engine import make_url

    from autotune.errors import RunHoldLost
    from autotune.storage import _RUN_LOCKS, hold_study_run, open_storage, run_lock_key

    dsn = make_url(postgres.url).set(drivername="postgresql").render_as_string(hide_password=False)
    key = run_lock_key("ended")

    def holders(admin: psycopg.Connection) -> list[int]:
        return _hold_pids(admin, key)

    storage = open_storage(postgres.url)
    hold_study_run(storage, "ended")
    with psycopg.connect(dsn, autocommit=True) as admin, psycopg.connect(dsn, autocommit=True) as other_run:
        try:
            [first] = holders(admin)
            admin.execute("SELECT pg_terminate_backend(%s)", (first,))
            _wait(lambda: not holders(admin), 30, "the hold's end")
            hold_study_run(storage, "ended", again=True)  # nobody took it: taken again
            [second] = holders(admin)
            assert second != first
            admin.execute("SELECT pg_terminate_backend(%s)", (second,))
            _wait(lambda: not holders(admin), 30, "the hold's end")
            assert other_run.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]  # a second run
            with pytest.raises(RunHoldLost) as lost:
                hold_study_run(storage, "ended", again=True)
            assert "another `autotune run` holds it now" in str(lost.value) and lost.value.exit_code == 1
        finally:
            held = next((k for k in _RUN_LOCKS if k[1] == "ended"), None)
            if held is not None:
                _RUN_LOCKS.pop(held).close()


@pytest.mark.slow  # a two-trial sim study on PostgreSQL
def test_a_run_that_lost_its_hold_to_another_run_stops_before_its_final_comparison(postgres, tmp_path) -> None:
    """The hold ended while the run's trials ran and a second run took the study: the first stops before its final
    comparison, exit 1 in one line, its trials kept, no selection of its own stored, and no end of the search
    written, which made the second run's workers stop."""
    import psycopg
    from sqlalchemy.engine import make_url

    from autotune.config import RunOptions, build_study_config, choose_engine
    from autotune.errors import RunHoldLost
    from autotune.progress import Progress
    from autotune.storage import _RUN_LOCKS, open_storage, run_lock_key
    from autotune.study import run_study

    dsn = make_url(postgres.url).set(drivername="postgresql").render_as_string(hide_password=False)
    key = run_lock_key("taken")
    options = RunOptions(model="flash", engine="sim", p99_ms=500, storage=postgres.url, study="taken", trials=2,
                         repeats=1, top_k=1, workload="random:256:16", max_concurrency=16, out=str(tmp_path / "out"))
    cfg = build_study_config(options, choose_engine("sim"))

    with psycopg.connect(dsn, autocommit=True) as admin, psycopg.connect(dsn, autocommit=True) as other_run:
        class TakenAfterTheTrials(Progress):
            def trial_finished(self, number, baseline, result) -> None:
                if number == 1:  # the run's last trial: its hold ended, and another run takes the study
                    [holder] = _hold_pids(admin, key)
                    admin.execute("SELECT pg_terminate_backend(%s)", (holder,))
                    _wait(lambda: other_run.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0], 30,
                          "the other run's hold")

        try:
            with pytest.raises(RunHoldLost):
                run_study(cfg, open_storage(cfg.storage_url), TakenAfterTheTrials())
        finally:
            held = next((k for k in _RUN_LOCKS if k[1] == "taken"), None)
            if held is not None:
                _RUN_LOCKS.pop(held).close()
    study = optuna.load_study(study_name="taken", storage=postgres.url)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 2
    assert records.read_selection(study) is None
    # the study is the other run's: its workers are not told that its search is done
    assert records.read_search_done(study) is False
