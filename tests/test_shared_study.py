"""A study shared with other processes (workers): what a run counts as its own, and what the storage's retries and a
run's kept results make of one trial. In-process, on SQLite standing in for the shared database: the other
process's trials are added to the study from a progress hook, as a worker's would land there."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from autotune import records
from autotune.config import RunOptions, build_study_config, choose_engine
from autotune.progress import Progress
from autotune.records import TrialResult
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


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_kept_trial_the_heartbeat_queued_again_is_not_measured_twice(tmp_path: Path) -> None:
    """The database gone for longer than three heartbeats: on its return the storage fails the trial the run left
    RUNNING and queues a copy of it. The kept result goes into that copy; it was added as a trial of its own
    beside it, and the copy then measured the same flags again."""
    from autotune import journal
    from autotune.storage import MAX_RETRIES

    study = optuna.create_study(study_name="lost", storage=f"sqlite:///{tmp_path}/s.db", direction="maximize")
    trial = study.ask()
    trial.suggest_int("max-num-seqs", 64, 1024)
    result = TrialResult(flags={"max-num-seqs": trial.params["max-num-seqs"]}, feasible=True, output_tok_s=500.0,
                         concurrency=8)
    folder = tmp_path / "pending"
    journal.keep(folder, trial, records.trial_result_attrs(result), {"p99_ttft_minus_limit_ms": -100.0}, 500.0)
    # the database lost before the tell, then the storage's heartbeat check: failed, and a copy queued
    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)(study, study.trials[trial.number])

    assert journal.replay(study, folder) == [trial.number]
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.WAITING not in states  # nothing left to measure the kept flags again
    [done] = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done.value == 500.0 and done.params == trial.params
    assert done.user_attrs.get("replayed_from_trial") == trial.number
    assert done.system_attrs.get("constraints:p99_ttft_minus_limit_ms") == -100.0
    assert len(study.trials) == 2


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
