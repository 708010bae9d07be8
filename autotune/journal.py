"""Finished trials not yet safe in the study's storage, one JSON file each in ``<out>/<study>/pending/``.

A trial's result is written here before it is written to the storage, and removed once the storage has it
(Optuna told, the trial COMPLETE). When the database is lost in between, the study stops (exit 1) and the file
stays; the next run or worker on the study, with the database back, adds the trial to the study as it was measured
(:func:`replay`) and fails the one left RUNNING. So a lost database costs no measurement, only the wait.

Why not keep running and retry: trials are minutes of GPU time each, and a database that is gone for long would
have them pile up unrecorded; a clear stop with nothing lost is easier to reason about than a queue that grows.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import distribution_to_json, json_to_distribution

from autotune import records
from autotune.storage import retried_trial

__all__ = ["keep", "settled", "pending", "replay"]


def _path(folder: Path, number: int) -> Path:
    return folder / f"trial-{number}.json"


def keep(folder: Path, trial: optuna.Trial, user_attrs: Mapping[str, Any], constraints: Mapping[str, float],
         value: float) -> None:
    """Write the trial as it will be stored (before the storage is asked to)."""
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"number": trial.number, "value": value, "params": trial.params,
             "distributions": {k: distribution_to_json(d) for k, d in trial.distributions.items()},
             "user_attrs": dict(user_attrs), "constraints": dict(constraints)}
    tmp = _path(folder, trial.number).with_suffix(".tmp")
    tmp.write_text(json.dumps(entry))
    os.replace(tmp, _path(folder, trial.number))


def settled(folder: Path, number: int) -> None:
    """The storage has the trial: its entry goes."""
    _path(folder, number).unlink(missing_ok=True)


def pending(folder: Path) -> list[Path]:
    return sorted(folder.glob("trial-*.json")) if folder.is_dir() else []


def replay(study: optuna.Study, folder: Path) -> list[int]:
    """Add each kept trial to the study as a finished trial and return the original numbers. The original, left
    RUNNING by the run that lost its database, is failed. Where the storage's heartbeat got there first (the
    database was gone for longer than three heartbeats), the original is failed already and a copy of it waits in
    the queue (Optuna's retry): the kept result goes into that copy, or the same flags would be measured again.
    Else it is added under a new number. A kept trial the study holds already is not added again: the storage took
    it after all, or took its result before the process died and a copy of it took that result since (another
    process, a worker, that found the copy in the queue first: study._measured_before)."""
    replayed = []
    for path in pending(folder):
        entry = json.loads(path.read_text())
        original = study.trials[entry["number"]] if entry["number"] < len(study.trials) else None
        if original is not None and original.state == optuna.trial.TrialState.COMPLETE \
                or _measured_as_recorded(study, int(entry["number"])):
            path.unlink()
            continue
        if original is not None and original.state == optuna.trial.TrialState.RUNNING:
            study._storage.set_trial_state_values(original._trial_id, optuna.trial.TrialState.FAIL)  # noqa: SLF001
        user_attrs = records.replayed_attrs(entry["user_attrs"], int(entry["number"]))
        retry = _claim_retry(study, int(entry["number"]))
        if retry is not None:
            for key, value in user_attrs.items():
                retry.set_user_attr(key, value)
            records.write_constraints(retry, entry["constraints"])
            study.tell(retry, entry["value"])
        else:
            study.add_trial(optuna.trial.create_trial(
                state=optuna.trial.TrialState.COMPLETE, value=entry["value"], params=entry["params"],
                distributions={k: json_to_distribution(d) for k, d in entry["distributions"].items()},
                user_attrs=user_attrs, constraints=entry["constraints"]))
        path.unlink()
        replayed.append(int(entry["number"]))
    return replayed


def _measured_as_recorded(study: optuna.Study, number: int) -> bool:
    """Whether a finished trial of the study holds the result measured as trial ``number`` (records.take_result, or
    an earlier replay)."""
    return any(t.measured_as == number and t.state == optuna.trial.TrialState.COMPLETE
               for t in records.read_trials(study))


def _claim_retry(study: optuna.Study, original_number: int) -> optuna.Trial | None:
    """The queued copy of a failed trial (:func:`storage.retried_trial`), taken from the queue as a trial run would
    take it, so that no process runs it; None where there is none to take."""
    storage = study._storage  # noqa: SLF001 - the claim of one particular queued trial
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        if retried_trial(t) == original_number \
                and storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.RUNNING):  # noqa: SLF001
            return optuna.Trial(study, t._trial_id)  # noqa: SLF001
    return None
