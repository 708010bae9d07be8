"""A trial left RUNNING in a SQLite study that this process holds locked is a dead process's: failed and queued
again at once. PostgreSQL (another worker may be running it) and an unlocked SQLite file are left to the heartbeat."""
from __future__ import annotations

import optuna
import pytest

from autotune.storage import fail_dead_processes_trials, open_storage


# a trial asked outside Study.optimize, as autotune's own trial loop does
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")


def _study_with_a_running_trial(url: str, exclusive: bool) -> optuna.Study:
    study = optuna.create_study(study_name="s", storage=open_storage(url, exclusive=exclusive))
    study.enqueue_trial({"x": 1.0}, user_attrs={"tag": "kept"})
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 2)})
    assert trial.number == 0 and study.trials[0].state == optuna.trial.TrialState.RUNNING
    return study


def test_a_running_trial_of_a_locked_sqlite_study_is_failed_and_queued_again(tmp_path):
    url = f"sqlite:///{tmp_path}/locked.db"
    study = _study_with_a_running_trial(url, exclusive=True)
    assert fail_dead_processes_trials(study, url) == [0]
    failed, retry = study.trials
    assert failed.state == optuna.trial.TrialState.FAIL
    assert retry.state == optuna.trial.TrialState.WAITING
    assert retry.system_attrs["failed_trial"] == 0
    assert retry.params == {"x": 1.0} and retry.user_attrs == {"tag": "kept"}
    assert fail_dead_processes_trials(study, url) == []  # nothing RUNNING is left


def test_an_unlocked_sqlite_study_is_left_to_the_heartbeat(tmp_path):
    url = f"sqlite:///{tmp_path}/shared.db"
    study = _study_with_a_running_trial(url, exclusive=False)
    assert fail_dead_processes_trials(study, url) == []
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_trials_with_heartbeat_reads_optunas_own_table_and_an_in_memory_storage_has_none(tmp_path) -> None:
    """The trials of which a heartbeat was recorded, this study's only; Optuna's in-memory storage (the decision
    benchmark's) keeps none and has no table to read."""
    from autotune.storage import trials_with_heartbeat

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/s.db", heartbeat_interval=60)
    mine, other = (optuna.create_study(storage=storage, study_name=name) for name in ("mine", "other"))
    mine.ask()  # trial 0: no heartbeat
    beating = mine.ask()
    storage.record_heartbeat(beating._trial_id)
    storage.record_heartbeat(other.ask()._trial_id)  # the other study's trial 0
    assert beating.number == 1 and trials_with_heartbeat(storage, "mine") == {1}
    memory = optuna.storages.InMemoryStorage()
    optuna.create_study(storage=memory, study_name="m").ask()
    assert trials_with_heartbeat(memory, "m") == set()
