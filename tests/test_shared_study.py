"""A study shared with other processes (workers): what a run counts as its own, and what the storage's retries and a
run's kept results make of one trial. In-process, on SQLite standing in for the shared database: the other
process's trials are added to the study from a progress hook, as a worker's would land there."""
from __future__ import annotations

from pathlib import Path

import optuna

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
