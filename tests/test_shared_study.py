"""A study shared with other processes (workers): what a run counts as its own, and what the storage's retries and a
run's kept results make of one trial. In-process, on SQLite standing in for the shared database: the other
process's trials are added to the study from a progress hook, as a worker's would land there."""
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
from autotune.storage import open_storage
from autotune.study import run_study


def _cfg(tmp_path: Path, trials: int):
    options = RunOptions(model="flash", engine="sim", p99_ms=500, storage=f"sqlite:///{tmp_path}/s.db", study="shared",
                         trials=trials, repeats=0, top_k=1, workload="random:256:16", max_concurrency=16)
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
    study's next run: nobody runs it now), the trial that never sent a heartbeat is waited for no longer than the
    study's longest trial plus the heartbeat grace period, and the verdict names both."""
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
    assert "still running after" in silent.why
    assert "trial 1 (seed-profile)" in outcome.selection.verdict and "trial 2" in outcome.selection.verdict
    assert "trial 1 (seed-profile)" in records.read_selection(
        optuna.load_study(study_name=cfg.study_name, storage=cfg.storage_url)).verdict  # what `best` shows
    study = optuna.load_study(study_name=cfg.study_name, storage=cfg.storage_url)
    [copy] = [t for t in study.trials if t.state == optuna.trial.TrialState.WAITING]
    assert records.queued_baseline(copy) == "seed-profile"  # the next run measures it first
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
