"""A study shared with other processes (workers): what a run counts as its own, and what the storage's retries and a
run's kept results make of one trial. In-process, on SQLite standing in for the shared database: the other
process's trials are added to the study from a progress hook, as a worker's would land there. The races of a
trial with the end of the search, and a trial whose process died in Optuna's ask, also on a real PostgreSQL
(slow)."""
from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from autotune import records
from autotune.config import RunOptions, build_study_config, choose_engine
from autotune.progress import Progress
from autotune.records import TrialResult
from autotune.selection import LeftOutTrial
from autotune.storage import open_storage, retried_trial
from autotune.study import run_study


def _cfg(tmp_path: Path, trials: int, storage: str = "", study: str = "shared"):
    options = RunOptions(model="flash", engine="sim", p99_ms=500, storage=storage or f"sqlite:///{tmp_path}/s.db",
                         study=study, trials=trials, repeats=0, top_k=1, workload="random:256:16", max_concurrency=16,
                         out=str(tmp_path / "out"))
    return build_study_config(options, choose_engine("sim"))


class _WorkerBeside(Progress):
    """After each of the run's trials, one trial of a worker finishes in the same study."""

    def __init__(self, study_name: str, url: str) -> None:
        self.study_name, self.url = study_name, url

    def trial_finished(self, number: int, baseline: str, result: TrialResult) -> None:
        study = optuna.load_study(study_name=self.study_name, storage=self.url)
        worker_result = TrialResult(flags={}, feasible=True, output_tok_s=1.0, concurrency=8)
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=1.0,
                                                  user_attrs=records.trial_result_attrs(worker_result)))


def test_a_run_counts_its_own_trials_not_those_a_worker_finished_meanwhile(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, trials=2)
    outcome = run_study(cfg, open_storage(cfg.storage_url), _WorkerBeside(cfg.study_name, cfg.storage_url))
    assert outcome.n_trials_run == 2
    study = optuna.load_study(study_name=cfg.study_name, storage=cfg.storage_url)
    [run] = records.read_runs(study)
    assert run.trials_run == 2  # the worker's two are its own run record's


class _WorkerStillRunning(Progress):
    """When the run's last trial has measured, a worker's trial is running: it finishes ``after_s`` later, ten times
    faster than the run's trial, and so is the best configuration of the study."""

    def __init__(self, study_name: str, url: str, last_trial: int, after_s: float) -> None:
        self.study_name, self.url, self.last_trial, self.after_s = study_name, url, last_trial, after_s
        self.waits: list[tuple[int, ...]] = []
        self.waited: list[tuple[tuple[int, ...], tuple[LeftOutTrial, ...]]] = []
        self.worker: threading.Thread | None = None

    def trial_finished(self, number: int, baseline: str, result: TrialResult) -> None:
        if number != self.last_trial:
            return
        study = optuna.load_study(study_name=self.study_name, storage=self.url)
        trial = study.ask()  # RUNNING, as a worker's trial is while it measures
        faster = replace(result, flags={**result.flags, "max-num-seqs": 1}, output_tok_s=result.output_tok_s * 10,
                         levels=[replace(lv, output_tok_s=lv.output_tok_s * 10) for lv in result.levels])

        def measure() -> None:
            time.sleep(self.after_s)
            records.write_trial_result(trial, faster)
            study.tell(trial, faster.output_tok_s)

        self.worker = threading.Thread(target=measure)
        self.worker.start()

    def waiting_for_trials(self, numbers: tuple[int, ...], at_most_s: float) -> None:
        self.waits.append(numbers)

    def waited_for_trials(self, finished: tuple[int, ...], left_out: tuple[LeftOutTrial, ...], waited_s: float) -> None:
        self.waited.append((finished, left_out))


@pytest.mark.slow
def test_a_trial_a_worker_is_still_running_when_the_search_ends_is_waited_for_and_compared(tmp_path: Path) -> None:
    """The run went on to its final comparison the moment its own trials were over: a worker's trial that finished
    a second later was in neither the verdict nor the run's count, though it was the best of the study."""
    cfg = _cfg(tmp_path, trials=2)  # the run's trials: the two baselines, 0 and 1; the worker's: 2
    progress = _WorkerStillRunning(cfg.study_name, cfg.storage_url, last_trial=1, after_s=1.0)
    try:
        outcome = run_study(cfg, open_storage(cfg.storage_url), progress)
    finally:
        if progress.worker is not None:
            progress.worker.join()
    assert outcome.selection.winner is not None and outcome.selection.winner.trial_number == 2
    assert outcome.n_trials_total == 3 and outcome.n_trials_run == 2
    assert outcome.left_out == () and "left out" not in outcome.selection.verdict
    assert progress.waits == [(2,)] and progress.waited == [((2,), ())]  # what the console says


class _WorkersDied(Progress):
    """While the run's only trial (vllm-defaults) measures, two workers take a trial each and die: one has taken the
    queued seed-profile baseline and recorded a heartbeat, the other dies before its first heartbeat."""

    def __init__(self, study_name: str, url: str) -> None:
        self.study_name, self.url = study_name, url
        self.waited: list[tuple[int, ...]] = []

    def trial_started(self, number: int, flags: dict, baseline: str) -> None:
        storage = optuna.storages.RDBStorage(self.url, heartbeat_interval=1, grace_period=3)
        study = optuna.load_study(study_name=self.study_name, storage=storage)
        baseline_trial = study.ask()  # pops the queued baseline, as a worker does
        storage.record_heartbeat(baseline_trial._trial_id)
        study.ask()
        time.sleep(1.0)  # the heartbeat is the dead worker's last before the search ends (SQLite's clock: 1 s steps)

    def waited_for_trials(self, finished: tuple[int, ...], left_out: tuple[LeftOutTrial, ...], waited_s: float) -> None:
        self.waited.append(finished)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_trials_whose_workers_died_are_not_waited_for_beyond_the_bound_and_are_named(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """A run whose baseline a dead process held RUNNING ended with a verdict without that baseline and without a
    word about it. Now: the dead worker's baseline is failed by its stopped heartbeat and queued again (for the
    study's next run: nobody runs it now), the trial that never sent a heartbeat is failed once seen so for three
    heartbeats and queued again too, and the verdict names both."""
    monkeypatch.setenv("AUTOTUNE_HEARTBEAT_S", "1")  # stale after 3 s
    cfg = _cfg(tmp_path, trials=1)
    progress = _WorkersDied(cfg.study_name, cfg.storage_url)
    started = time.monotonic()
    outcome = run_study(cfg, open_storage(cfg.storage_url), progress)
    longest_s = max(t.result.trial_wall_s for t in records.read_trials(
        optuna.load_study(study_name=cfg.study_name, storage=cfg.storage_url)) if t.result is not None)
    assert time.monotonic() - started < 2 * longest_s + 1 + 4 + 5  # the run's trial, the bound (4 s), a margin
    dead, silent = outcome.left_out
    assert (dead.number, dead.baseline, silent.number, silent.baseline) == (1, "seed-profile", 2, "")
    assert "heartbeats" in dead.why and "queued again" in dead.why
    assert "before its first heartbeat" in silent.why and "queued again" in silent.why
    assert "trial 1 (seed-profile)" in outcome.selection.verdict and "trial 2" in outcome.selection.verdict
    assert "trial 1 (seed-profile)" in records.read_selection(
        optuna.load_study(study_name=cfg.study_name, storage=cfg.storage_url)).verdict  # what `best` shows
    study = optuna.load_study(study_name=cfg.study_name, storage=cfg.storage_url)
    copies = {retried_trial(t): t for t in study.trials if t.state == optuna.trial.TrialState.WAITING}
    assert sorted(copies) == [1, 2] and not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert records.queued_baseline(copies[1]) == "seed-profile"  # the next run measures it first
    assert progress.waited == [()]


def _kept_and_lost(study: optuna.Study, trial: optuna.Trial, folder: Path) -> None:
    """``trial`` measured 500 tok/s and kept in ``folder``; then the database lost before the tell, and on its return
    the storage's heartbeat check: failed, and a copy of it queued."""
    from autotune import journal

    trial.suggest_int("max-num-seqs", 64, 1024)
    result = TrialResult(flags={"max-num-seqs": trial.params["max-num-seqs"]}, feasible=True, output_tok_s=500.0,
                         concurrency=8)
    journal.keep(folder, trial, records.trial_result_attrs(result), {"p99_ttft_minus_limit_ms": -100.0}, 500.0)
    _fail_and_queue_again(study, trial)


def _fail_and_queue_again(study: optuna.Study, trial: optuna.Trial) -> None:
    from autotune.storage import MAX_RETRIES

    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)(study, study.trials[trial.number])


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # the storage's own retry callback
def test_a_kept_trial_the_heartbeat_queued_again_is_not_measured_twice(tmp_path: Path) -> None:
    """The database gone for longer than three heartbeats: on its return the storage fails the trial the run left
    RUNNING and queues a copy of it. The kept result goes into that copy; it was added as a trial of its own
    beside it, and the copy then measured the same flags again."""
    from autotune import journal

    study = optuna.create_study(study_name="lost", storage=f"sqlite:///{tmp_path}/s.db", direction="maximize")
    trial = study.ask()
    _kept_and_lost(study, trial, tmp_path / "pending")

    assert journal.replay(study, tmp_path / "pending") == [trial.number]
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.WAITING not in states  # nothing left to measure the kept flags again
    [done] = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done.value == 500.0 and done.params == trial.params
    assert done.user_attrs.get("replayed_from_trial") == trial.number
    assert done.system_attrs.get("constraints:p99_ttft_minus_limit_ms") == -100.0
    assert len(study.trials) == 2


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # the storage's own retry callback
def test_a_kept_retry_of_a_retry_goes_into_the_copy_queued_of_it(tmp_path: Path) -> None:
    """A copy of a copy names the chain's first trial in ``failed_trial`` (inherited copy to copy): the kept result
    of the second goes into the copy queued of the second, not beside it."""
    from autotune import journal

    study = optuna.create_study(study_name="lost", storage=f"sqlite:///{tmp_path}/s.db", direction="maximize")
    first = study.ask()
    first.suggest_int("max-num-seqs", 64, 1024)
    _fail_and_queue_again(study, first)
    second = study.ask()  # the queued copy, taken and run
    _kept_and_lost(study, second, tmp_path / "pending")

    assert journal.replay(study, tmp_path / "pending") == [second.number]
    assert optuna.trial.TrialState.WAITING not in [t.state for t in study.trials]
    [done] = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done.value == 500.0 and done.params == second.params and len(study.trials) == 3


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # the storage's own retry callback
def test_a_kept_trial_whose_constraint_was_stored_goes_into_its_copy_without_a_warning(tmp_path: Path) -> None:
    """A baseline's result and constraint are stored, then its tuner is SIGKILLed during the baseline's
    re-measurement (run inside its trial): the next run fails it, queues a copy, and replays the kept result into the
    copy. Optuna's copy already holds the original's constraint, and setting it again printed Optuna's "The
    constraint value is ignored" UserWarning, two raw lines, on the console."""
    import warnings

    from autotune import journal

    study = optuna.create_study(study_name="lost", storage=f"sqlite:///{tmp_path}/s.db", direction="maximize")
    trial = study.ask()
    trial.set_constraint("p99_ttft_minus_limit_ms", -100.0)  # stored before the re-measurement
    _kept_and_lost(study, trial, tmp_path / "pending")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert journal.replay(study, tmp_path / "pending") == [trial.number]
    assert not [w for w in caught if "constraint" in str(w.message)]
    [done] = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done.value == 500.0 and done.system_attrs.get("constraints:p99_ttft_minus_limit_ms") == -100.0


def test_a_lost_database_is_reported_in_the_databases_words(tmp_path: Path) -> None:
    """Optuna wraps a failed commit in "This typically happens due to invalid data in the commit": a lost database
    was reported so. The message carries the driver's own error, password masked."""
    from types import SimpleNamespace

    from sqlalchemy.exc import OperationalError

    from autotune.errors import StorageUnavailable
    from autotune.study import _storage_loss

    cfg = SimpleNamespace(out_dir=tmp_path, study_name="s", storage_url="postgresql+psycopg://u:secret@db/x")
    refused = OperationalError("INSERT", {}, Exception('connection to server at "db", port 5432 failed: '
                                                       "Connection refused"))
    with pytest.raises(StorageUnavailable) as raised, _storage_loss(cfg):
        try:
            raise refused
        except OperationalError as e:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit. This typically "
                                                         "happens due to invalid data in the commit.") from e
    message = str(raised.value)
    assert "Connection refused" in message and "invalid data" not in message and "secret" not in message


class _Worker(Progress):
    """What a worker says: the trials it starts, and those another process failed under it."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.failed_elsewhere: list[tuple[int, str]] = []

    def trial_started(self, number: int, flags: dict, baseline: str) -> None:
        self.started.append(number)

    def trial_failed_elsewhere(self, number: int, why: str) -> None:
        self.failed_elsewhere.append((number, why))


class _Waits(Progress):
    def __init__(self) -> None:
        self.waited_s = -1.0

    def waited_for_trials(self, finished: tuple[int, ...], left_out: tuple[LeftOutTrial, ...], waited_s: float) -> None:
        self.waited_s = waited_s


def _queued_study(cfg) -> optuna.Study:
    """The study as a run leaves it that measured nothing (--trials 0): its baselines queued."""
    run_study(replace(cfg, n_trials=0), open_storage(cfg.storage_url))
    return optuna.load_study(study_name=cfg.study_name, storage=cfg.storage_url)


def _dead_in_ask(cfg) -> int:
    """A trial whose process died inside Optuna's ask: RUNNING, no heartbeat, its objective never started. The ask
    pops the first queued baseline, as a worker's does."""
    storage = optuna.storages.RDBStorage(cfg.storage_url)  # without heartbeats
    trial = optuna.load_study(study_name=cfg.study_name, storage=storage).ask()
    assert records.queued_baseline(trial) == "vllm-defaults"
    storage.engine.dispose()
    return trial.number


def _copy_of(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """The copy of trial ``number`` that a retry callback queued."""
    [copy] = [t for t in study.trials if retried_trial(t) == number]
    return copy


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # the storage's own retry callback
def test_a_trial_runs_saw_without_a_heartbeat_for_three_heartbeats_is_failed_and_queued_again(tmp_path: Path,
                                                                                             monkeypatch) -> None:
    """A trial whose process died in Optuna's ask has no heartbeat, so Optuna's stale check never fails it: every
    later run waited for it to the bound and left it out, and its baseline was never measured. A run whose wait
    --timeout cuts short records how long it saw the trial so; once the runs that saw it add up to three
    heartbeats, the run that waits fails it at once and queues it again."""
    monkeypatch.setenv("AUTOTUNE_HEARTBEAT_S", "1")  # three heartbeats: 3 s
    monkeypatch.setattr("autotune.study._WAIT_POLL_S", 0.1)
    cfg = _cfg(tmp_path, trials=0)
    study = _queued_study(cfg)
    number = _dead_in_ask(cfg)
    [left] = run_study(replace(cfg, timeout_s=1.0), open_storage(cfg.storage_url)).left_out
    assert left.number == number and "--timeout" in left.why and "without a first heartbeat" in left.why
    [cut] = [run for run in records.read_runs(study) if run.silent_trials_s]
    seen_s = cut.silent_trials_s[number]
    assert 0 < seen_s < 1.0  # from its first look to its last, within --timeout
    # another run cut short so, which saw the rest of the three heartbeats
    records.write_run(study, replace(cut, silent_trials_s={number: 3.01 - seen_s}))
    progress = _Waits()
    outcome = run_study(cfg, open_storage(cfg.storage_url), progress)
    assert progress.waited_s < 0.5  # at once: not the three heartbeats again, nor the bound (4 s)
    [left] = outcome.left_out
    assert (left.number, left.baseline) == (number, "vllm-defaults")
    assert "before its first heartbeat" in left.why and "queued again" in left.why
    study = optuna.load_study(study_name=cfg.study_name, storage=cfg.storage_url)
    assert study.trials[number].state == optuna.trial.TrialState.FAIL
    assert "before its first heartbeat" in records.read_declared_dead(study)[number]
    copy = _copy_of(study, number)
    assert copy.state == optuna.trial.TrialState.WAITING
    assert records.queued_baseline(copy) == "vllm-defaults"  # the next run measures it
    assert copy.system_attrs["fixed_params"] == study.trials[number].system_attrs["fixed_params"]
    assert len([run for run in records.read_runs(study) if run.silent_trials_s]) == 2  # the last run saw it go


@pytest.mark.slow
def test_a_trial_whose_objective_started_is_never_failed_for_want_of_a_heartbeat(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    """Seen without a heartbeat by earlier runs while it was still in its ask, a live worker's trial has since
    started (its heartbeat recorded): the run waits for it and compares it."""
    monkeypatch.setattr("autotune.study._WAIT_POLL_S", 0.1)
    cfg = _cfg(tmp_path, trials=0)
    study = _queued_study(cfg)
    trial = study.ask()
    [earlier] = records.read_runs(study)
    records.write_run(study, replace(earlier, silent_trials_s={trial.number: 3600.0}))
    optuna.storages.RDBStorage(cfg.storage_url).record_heartbeat(trial._trial_id)  # as study._objective does first

    def measure() -> None:
        time.sleep(0.5)
        result = TrialResult(flags={}, feasible=True, output_tok_s=1.0, concurrency=8)
        records.write_trial_result(trial, result)
        study.tell(trial, 1.0)

    worker = threading.Thread(target=measure)
    worker.start()
    try:
        outcome = run_study(cfg, open_storage(cfg.storage_url))
    finally:
        worker.join()
    assert outcome.left_out == ()
    assert optuna.load_study(study_name=cfg.study_name, storage=cfg.storage_url).trials[trial.number].state == \
        optuna.trial.TrialState.COMPLETE


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # the storage's own retry callback
def test_a_worker_whose_trial_a_run_took_for_dead_in_its_ask_says_so_and_goes_on(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    """A worker slow in its ask (a stopped process, a slow database) can find that a run has failed its trial as
    dead meanwhile. Its tell was then refused ("Cannot tell a FAIL trial") and the worker ended on that error; now
    it says so and runs its next trial."""
    from autotune.study import run_worker

    cfg = _cfg(tmp_path, trials=0)
    study = _queued_study(cfg)
    records.write_search_done(study, False)  # the run searching again
    taken: list[int] = []
    ask = optuna.Study.ask

    def slow_ask(self, *args, **kwargs):
        trial = ask(self, *args, **kwargs)
        if not taken:  # while this ask took its time, a run's wait failed the trial and queued it again
            taken.append(trial.number)
            _fail_and_queue_again(study, trial)
        return trial

    monkeypatch.setattr(optuna.Study, "ask", slow_ask)
    said = _Worker()
    outcome = run_worker(replace(cfg, n_trials=2), open_storage(cfg.storage_url), said)
    assert said.failed_elsewhere == [(taken[0], "")]  # the run that failed it left no reason
    assert taken[0] not in said.started and outcome.n_trials_run == 1  # not run here; the next trial was
    study = optuna.load_study(study_name=cfg.study_name, storage=cfg.storage_url)
    copy = _copy_of(study, taken[0])
    assert copy.state == optuna.trial.TrialState.WAITING and records.queued_baseline(copy) == "vllm-defaults"


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.slow)])
def test_a_worker_trial_asked_once_the_search_ended_is_not_run_and_its_point_queued_again(
        tmp_path: Path, monkeypatch, request, backend: str) -> None:
    """A worker looks at search_done, then Optuna's ask creates its trial: a run that ended its search in between,
    having looked for running trials before the ask, neither waited for that trial nor named it, and the worker
    measured it. Now the worker looks again once the trial exists: it is not run, and the baseline it had popped is
    queued again; the run does not count it as a trial, nor as one left out."""
    from autotune.study import _waited_trials, run_worker

    url = request.getfixturevalue("postgres").url if backend == "postgres" else ""
    cfg = _cfg(tmp_path, trials=0, storage=url, study=f"late-{backend}-{tmp_path.name}")
    study = _queued_study(cfg)
    records.write_search_done(study, False)
    ask = optuna.Study.ask

    def ask_after_the_search_ended(self, *args, **kwargs):
        records.write_search_done(self, True)  # the run, between this worker's look and its ask
        return ask(self, *args, **kwargs)

    monkeypatch.setattr(optuna.Study, "ask", ask_after_the_search_ended)
    said = _Worker()
    outcome = run_worker(replace(cfg, n_trials=2), open_storage(cfg.storage_url), said)
    assert said.started == [] and outcome.n_trials_run == 0 and outcome.stopped_by == "search done"
    study = optuna.load_study(study_name=cfg.study_name, storage=cfg.storage_url)
    [late] = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    record = records.read_trial(late)
    assert "search" in record.not_started and record.result is None
    [copy] = [t for t in study.trials if t.state == optuna.trial.TrialState.WAITING
              and records.queued_baseline(t) == records.queued_baseline(late)]
    assert copy.system_attrs["fixed_params"] == late.system_attrs["fixed_params"] and copy.number > late.number
    assert not records.read_trial(copy).not_started
    assert records.count_finished(records.read_trials(study)) == 0
    assert _waited_trials(study, [late.number], "still running", set()) == ((), ())  # neither compared nor left out


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # the storage's own retry callback
def test_on_postgres_a_trial_dead_in_its_ask_is_failed_after_three_heartbeats_and_measured_next(
        postgres, tmp_path: Path, monkeypatch) -> None:
    """On PostgreSQL, a trial created RUNNING by an ask whose process died stayed RUNNING forever: every run waited
    for it to the bound and left it out, and the baseline it had popped was never measured again (a RUNNING
    baseline counts as queued). Now the first run that waits fails it after three heartbeats and queues it again,
    the next run does not wait, and a run with a trial to spare measures the baseline."""
    monkeypatch.setenv("AUTOTUNE_HEARTBEAT_S", "1")  # three heartbeats: 3 s
    cfg = _cfg(tmp_path, trials=0, storage=postgres.url, study=f"dead-in-ask-{tmp_path.name}")
    study = _queued_study(cfg)
    number = _dead_in_ask(cfg)
    started = time.monotonic()
    first = run_study(cfg, open_storage(cfg.storage_url))
    waited_s = time.monotonic() - started
    [left] = first.left_out
    assert left.number == number and "before its first heartbeat" in left.why and 3 <= waited_s < 3 + 5
    started = time.monotonic()
    assert run_study(cfg, open_storage(cfg.storage_url)).left_out == () and time.monotonic() - started < 3
    run_study(replace(cfg, n_trials=2), open_storage(cfg.storage_url))  # the queued baselines
    study = optuna.load_study(study_name=cfg.study_name, storage=cfg.storage_url)
    copy = _copy_of(study, number)
    assert copy.state == optuna.trial.TrialState.COMPLETE and records.queued_baseline(copy) == "vllm-defaults"
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # the storage's own retry callback
@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # the dead run's trial, asked by hand
def test_the_next_run_says_a_dead_runs_kept_result_is_added_not_lost(tmp_path: Path) -> None:
    """A run SIGKILLed after its trial's result was kept (a baseline's re-measurement runs inside its trial): the
    next run fails the trial left RUNNING and queues it again, which alone read as if its measurement were lost;
    the kept result goes into the copy, and the console says so."""
    import threading as _threading

    from autotune import journal
    from autotune.progress import ThreadedProgress
    from autotune.study import _journal_dir, _prepare

    class Said(Progress):
        def __init__(self) -> None:
            self.failed: list[tuple[int, ...]] = []
            self.added: list[tuple[tuple[int, ...], Path]] = []

        def dead_run_trials_failed(self, numbers: tuple[int, ...]) -> None:
            self.failed.append(numbers)

        def kept_trials_added(self, numbers: tuple[int, ...], folder: Path) -> None:
            self.added.append((numbers, folder))

    cfg = _cfg(tmp_path, trials=1)
    storage = open_storage(cfg.storage_url, exclusive=True)  # as `autotune run` holds it
    said = Said()
    study = _prepare(cfg, storage, ThreadedProgress(said, _threading.Lock()))
    trial = study.ask()  # the dead run's trial: measured, kept, never told
    trial.suggest_int("max-num-seqs", 64, 1024)
    result = TrialResult(flags={"max-num-seqs": trial.params["max-num-seqs"]}, feasible=True, output_tok_s=500.0,
                         concurrency=8)
    journal.keep(_journal_dir(cfg), trial, records.trial_result_attrs(result), {"p99_ttft_minus_limit_ms": -100.0},
                 500.0)
    study = _prepare(cfg, storage, ThreadedProgress(said, _threading.Lock()))
    assert said.failed == [(trial.number,)] and said.added == [((trial.number,), _journal_dir(cfg))]
    [done] = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done.value == 500.0 and done.user_attrs.get("replayed_from_trial") == trial.number


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # the storage's own retry callback
@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # the dead run's trial, asked by hand
def test_a_copy_of_a_trial_that_stored_its_result_takes_it_and_the_journal_of_it_is_not_added_again(
        tmp_path: Path) -> None:
    """A run's baseline stored its result, kept it in the run's journal and died in its re-measurement; the heartbeat
    check queued a copy. A worker, which cannot see the run's journal, took the copy and measured the baseline again,
    and the resumed run added its kept result beside both. The copy takes the stored result, no server started, and
    the run's journal of it is found in the study."""
    from autotune import journal
    from autotune.study import _journal_dir, baseline_launch_flags, run_worker

    cfg = _cfg(tmp_path, trials=0)
    study = _queued_study(cfg)
    records.write_search_done(study, False)  # the run searching
    dead = study.ask()  # the vllm-defaults baseline, measured by the run that dies
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)  # seed-profile: out of the queue
    flags = baseline_launch_flags("vllm-defaults", cfg.settings.model, cfg.settings.gpus, cfg.space.fixed)
    result = TrialResult(flags=flags, feasible=True, output_tok_s=500.0, concurrency=8)
    journal.keep(_journal_dir(cfg), dead, records.finished_trial_attrs(dead, result),
                 {"p99_ttft_minus_limit_ms": -100.0}, 500.0)
    records.write_trial_result(dead, result)
    _fail_and_queue_again(study, dead)
    copy_number = _copy_of(study, dead.number).number

    class Worker(_Worker):
        def __init__(self) -> None:
            super().__init__()
            self.taken: list[tuple[int, int]] = []

        def trial_result_taken(self, number: int, baseline: str, measured_as: int, taken: TrialResult) -> None:
            self.taken.append((number, measured_as))
            records.write_search_done(study, True)  # the run moves on: the worker's next look ends it

    said = Worker()
    outcome = run_worker(replace(cfg, n_trials=1, out_dir=tmp_path / "worker"), open_storage(cfg.storage_url), said)
    assert said.taken == [(copy_number, dead.number)] and said.started == []  # no server started for it
    assert outcome.n_trials_run == 0  # measured by the run that died, not by this worker
    study = optuna.load_study(study_name=cfg.study_name, storage=cfg.storage_url)
    copy = records.read_trial(study.trials[copy_number])
    assert copy.complete and copy.result == result and copy.measured_as == dead.number
    assert study.trials[copy_number].value == 500.0
    assert study.trials[copy_number].system_attrs["constraints:p99_ttft_minus_limit_ms"] == pytest.approx(
        result.constraints_ms({"ttft": 500.0})["ttft"])
    trials_before = len(study.trials)
    assert journal.replay(study, _journal_dir(cfg)) == []  # the resumed run: the study has it
    assert len(study.trials) == trials_before and not journal.pending(_journal_dir(cfg))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_live_trial_of_a_worker_that_writes_no_started_note_is_waited_for_not_failed(tmp_path: Path,
                                                                                       monkeypatch) -> None:
    """A worker of an older autotune never noted that its objective started, which the run then looked for; only
    Optuna's heartbeat thread said it lived, and the run took its trial for dead after three heartbeats and failed
    it under the worker. The heartbeat is what the run looks for now: it waits for the trial and compares it."""
    monkeypatch.setenv("AUTOTUNE_HEARTBEAT_S", "2")  # taken for dead after 6 s
    monkeypatch.setattr("autotune.study._WAIT_POLL_S", 0.1)
    # the wait's bound: a longest trial of 5 s plus the 8 s a heartbeat check takes, 13 s: the worker's 7 s end well
    # inside it on a busy host (with no trial finished, 8 s: a second's margin)
    monkeypatch.setattr("autotune.study._trial_walls_s", lambda trials: [5.0])
    cfg = _cfg(tmp_path, trials=0)
    _queued_study(cfg)
    storage = optuna.storages.RDBStorage(cfg.storage_url, heartbeat_interval=2, grace_period=6)
    study = optuna.load_study(study_name=cfg.study_name, storage=storage)
    trial = study.ask()
    done = threading.Event()

    def old_worker() -> None:  # heartbeats as Optuna's thread records them, no note; measures for 7 s
        until = time.monotonic() + 7.0
        while time.monotonic() < until:
            storage.record_heartbeat(trial._trial_id)
            time.sleep(0.5)
        records.write_trial_result(trial, TrialResult(flags={}, feasible=True, output_tok_s=1.0, concurrency=8))
        study.tell(trial, 1.0)
        done.set()

    class StartsWithTheWait(Progress):
        worker: threading.Thread | None = None

        def waiting_for_trials(self, numbers: tuple[int, ...], at_most_s: float) -> None:
            self.worker = threading.Thread(target=old_worker)
            self.worker.start()

    progress = StartsWithTheWait()
    try:
        outcome = run_study(cfg, open_storage(cfg.storage_url), progress)
    finally:
        if progress.worker is not None:
            progress.worker.join()
    assert done.is_set() and outcome.left_out == ()
    assert not records.read_declared_dead(study)
    assert optuna.load_study(study_name=cfg.study_name, storage=cfg.storage_url).trials[trial.number].state == \
        optuna.trial.TrialState.COMPLETE


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # the storage's own retry callback
def test_a_worker_trial_failed_elsewhere_as_it_finds_the_search_ended_says_so(tmp_path: Path, monkeypatch) -> None:
    """A worker's trial, asked once the search had ended, was failed as dead by a run in the instant between the
    worker's first heartbeat and its look at the trial to queue its point again: the worker ended on a ValueError.
    Now it says that the trial was failed elsewhere (whose copy that run queued) and goes on."""
    from autotune.study import run_worker

    cfg = _cfg(tmp_path, trials=0)
    study = _queued_study(cfg)
    records.write_search_done(study, False)
    read_search_done = records.read_search_done
    taken: list[int] = []

    def search_done_and_failed_meanwhile(study_seen: optuna.Study) -> bool:
        running = study_seen.get_trials(states=(optuna.trial.TrialState.RUNNING,))
        if running and not taken:
            taken.append(running[0].number)
            records.write_search_done(study_seen, True)
            _fail_and_queue_again(study, running[0])
        return read_search_done(study_seen)

    monkeypatch.setattr(records, "read_search_done", search_done_and_failed_meanwhile)
    said = _Worker()
    outcome = run_worker(replace(cfg, n_trials=2), open_storage(cfg.storage_url), said)
    assert said.failed_elsewhere == [(taken[0], "")] and said.started == [] and outcome.n_trials_run == 0
    study = optuna.load_study(study_name=cfg.study_name, storage=cfg.storage_url)
    assert [t.number for t in study.trials if retried_trial(t) == taken[0]]  # the run's copy, and only it
    assert len([t for t in study.trials if records.queued_baseline(t) == "vllm-defaults"
                and t.state == optuna.trial.TrialState.WAITING]) == 1


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # the storage's own retry callback
def test_a_retried_trial_stores_its_own_constraint_not_the_dead_trials(tmp_path: Path) -> None:
    """A baseline's constraint is stored before its re-measurement (run inside its trial); its process dies there,
    and Optuna's retry copies the dead trial's system attrs, its constraint among them, into the queued copy. The
    process that ran the copy set its own constraint: Optuna kept the dead trial's (the sampler learnt those
    figures for the copy) and printed its "The constraint value is ignored" UserWarning, two raw lines, on the
    console."""
    import warnings

    cfg = _cfg(tmp_path, trials=0)
    study = _queued_study(cfg)
    dead = study.ask()  # the vllm-defaults baseline, popped from the queue
    dead.set_constraint("p99_ttft_minus_limit_ms", 12345.0)  # what the dead process had stored
    _fail_and_queue_again(study, dead)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_study(replace(cfg, n_trials=2), open_storage(cfg.storage_url))  # seed-profile, then the copy
    assert not [w for w in caught if "constraint" in str(w.message)]
    study = optuna.load_study(study_name=cfg.study_name, storage=cfg.storage_url)
    copy = _copy_of(study, dead.number)
    assert copy.state == optuna.trial.TrialState.COMPLETE
    result = records.read_trial(copy).result
    assert result is not None and result.feasible
    assert copy.system_attrs["constraints:p99_ttft_minus_limit_ms"] == pytest.approx(
        result.constraints_ms({"ttft": 500.0})["ttft"])


@pytest.mark.slow
def test_a_worker_whose_heartbeat_differs_from_its_runs_is_refused(tmp_path: Path, monkeypatch) -> None:
    """Each process fails a trial as dead three of its own heartbeats after the trial's last one: a run with
    AUTOTUNE_HEARTBEAT_S=1 failed, within seconds, the live trial of a worker beating every 30 s beside it (on
    PostgreSQL, by hand: its result kept only in the worker's pending folder, the baseline left out of the verdict)."""
    from autotune.errors import UsageError
    from autotune.study import run_worker

    monkeypatch.setenv("AUTOTUNE_HEARTBEAT_S", "1")
    cfg = _cfg(tmp_path, trials=0)
    study = _queued_study(cfg)
    records.write_search_done(study, False)  # the run searching
    monkeypatch.setenv("AUTOTUNE_HEARTBEAT_S", "30")
    with pytest.raises(UsageError, match="AUTOTUNE_HEARTBEAT_S=1 here"):
        run_worker(replace(cfg, n_trials=1), open_storage(cfg.storage_url))
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.COMPLETE))
    monkeypatch.setenv("AUTOTUNE_HEARTBEAT_S", "1")  # as the run's: it joins
    outcome = run_worker(replace(cfg, n_trials=1), open_storage(cfg.storage_url))
    assert outcome.n_trials_run == 1


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_run_resumed_at_another_heartbeat_while_a_trial_runs_is_refused(tmp_path: Path, monkeypatch) -> None:
    """A run resumed at another AUTOTUNE_HEARTBEAT_S would take the trials of workers still beating at the study's
    pace for dead (or they its own); while a trial runs it is refused, once none runs it sets the study's pace."""
    from autotune.errors import UsageError
    from autotune.study import open_study

    monkeypatch.setenv("AUTOTUNE_HEARTBEAT_S", "60")
    cfg = _cfg(tmp_path, trials=0)
    study = open_study(cfg, open_storage(cfg.storage_url))
    running = study.ask()  # a worker's trial
    monkeypatch.setenv("AUTOTUNE_HEARTBEAT_S", "5")
    with pytest.raises(UsageError, match=f"trial {running.number} of it still run .* AUTOTUNE_HEARTBEAT_S=60 to "
                                         "resume it"):
        open_study(cfg, open_storage(cfg.storage_url))
    assert records.read_heartbeat_s(study) == 60
    study.tell(running, state=optuna.trial.TrialState.FAIL)
    assert records.read_heartbeat_s(open_study(cfg, open_storage(cfg.storage_url))) == 5  # none runs: its own pace
