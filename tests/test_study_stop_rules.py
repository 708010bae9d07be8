"""The study's stop rules: stagnation, and a deadline that no trial may overrun (also across a resume)."""
from __future__ import annotations

import time

from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from autotune import records
from autotune.progress import Progress, StudyEta
from autotune.records import TrialResult
from autotune.study import _StopRules as _Rules
from autotune.study import _failing_interrupted


def _StopRules(patience: int, deadline: float | None, earlier_durations: list[float] = (),  # noqa: N802
               reserve_s=lambda: 0.0, n_trials: int = 100, progress: Progress | None = None,
               worker: bool = False, slots: int = 1) -> _Rules:
    cfg = SimpleNamespace(patience=patience, n_trials=n_trials, out_dir=Path("no-journal-here"), study_name="s",
                          gpu_slots=tuple((str(i),) for i in range(slots)))
    return _Rules(cfg, deadline, list(earlier_durations), reserve_s, progress or Progress(), worker=worker)


def _run(rules: _Rules, values: list[float], wall_s: float = 10.0, study: optuna.Study | None = None) -> int:
    """Optimize with the rules as callback; trial i returns values[i]. Returns how many trials ran."""
    study = study or optuna.create_study(direction="maximize")

    def objective(trial: optuna.Trial) -> float:
        records.write_trial_result(trial, TrialResult(flags={}, feasible=True, output_tok_s=values[trial.number],
                                                      concurrency=8, trial_wall_s=wall_s))
        return values[trial.number]

    while len(study.trials) < len(values) and not rules.reason:  # as the study's scheduler asks them
        study.optimize(objective, n_trials=1, callbacks=[rules])
    return len(study.trials)


def test_longest_trial_decides_whether_the_next_fits():
    assert _run(_StopRules(0, time.monotonic() + 60.0, earlier_durations=[10.0]), [1, 2, 3]) == 3
    # a median of 10 s would let the next trial start; the longest earlier trial (100 s) does not fit
    rules = _StopRules(0, time.monotonic() + 60.0, earlier_durations=[10.0, 10.0, 100.0])
    assert _run(rules, [1, 2, 3]) == 1 and rules.reason == "timeout"


def test_a_study_that_ran_its_trials_stopped_by_trials_not_by_the_deadline():
    """--trials 1 with a deadline the next trial would overrun: no next trial was wanted, so the study stopped
    because its trials were done (an H200 study said "done (timeout)" with 6.6 of its 14 min left)."""
    rules = _StopRules(0, time.monotonic() + 60.0, earlier_durations=[100.0], n_trials=1)
    rules.launched = 1  # as _run_trials counts the trial it started
    assert _run(rules, [1.0]) == 1 and rules.reason == ""
    rules = _StopRules(0, time.monotonic() + 60.0, earlier_durations=[100.0], n_trials=2)
    rules.launched = 1
    assert _run(rules, [1.0, 2.0]) == 1 and rules.reason == "timeout"


def test_resumed_study_with_no_room_for_a_trial_starts_none():
    assert _StopRules(0, time.monotonic() + 30.0, earlier_durations=[60.0]).would_overrun()
    assert not _StopRules(0, time.monotonic() + 90.0, earlier_durations=[60.0]).would_overrun()
    assert not _StopRules(0, None, earlier_durations=[60.0]).would_overrun()
    assert not _StopRules(0, time.monotonic() + 1.0).would_overrun()  # nothing known yet: the first trial runs


def test_stagnation_counts_trials_without_a_one_percent_gain():
    rules = _StopRules(patience=3, deadline=None)
    assert _run(rules, [100.0, 100.5, 100.9, 100.2, 200.0]) == 4  # none beats 100 by 1% in 3 trials
    assert rules.reason == "stagnation: no 1% gain in 3 trials"
    rules = _StopRules(patience=3, deadline=None)
    assert _run(rules, [100.0, 102.0, 101.0, 101.5, 103.1]) == 5 and rules.reason == ""


def test_time_reserved_for_the_remeasurements_keeps_the_next_trial_out():
    assert _StopRules(0, time.monotonic() + 90.0, [60.0], reserve_s=lambda: 40.0).would_overrun()
    assert not _StopRules(0, time.monotonic() + 90.0, [60.0], reserve_s=lambda: 20.0).would_overrun()


def test_the_eta_counts_the_stagnation_stop_and_the_remeasurements():
    etas: list[StudyEta] = []

    class Etas(Progress):
        def study_eta(self, eta: StudyEta) -> None:
            etas.append(eta)

    rules = _StopRules(patience=3, deadline=None, reserve_s=lambda: 50.0, n_trials=20, progress=Etas())
    _run(rules, [100.0, 100.5, 100.9, 100.2], wall_s=10.0)
    # after trial 2 (no gain in 1): at most 2 more before the stagnation stop, not the 18 of --trials
    assert (etas[1].trials_left, etas[1].eta_s) == (2, 2 * 10.0 + 50.0)
    assert etas[-1].trials_left == 0 and etas[-1].eta_s == 50.0  # stopped: only the re-measurements are left


def test_trials_that_run_side_by_side_count_in_rounds_in_the_eta():
    """With --parallel 3 the ETA counted 8 more trials of 10 s as 80 s, three times too long: 3 rounds, 30 s."""
    etas: list[StudyEta] = []

    class Etas(Progress):
        def study_eta(self, eta: StudyEta) -> None:
            etas.append(eta)

    study = optuna.create_study(direction="maximize")
    _run(_StopRules(patience=0, deadline=None, n_trials=10, progress=Etas(), slots=3), [1.0, 2.0], study=study)
    assert (etas[-1].trials_left, etas[-1].eta_s) == (8, 3 * 10.0)
    assert records.read_search_left(study).search_left_s == 3 * 10.0  # what its workers' estimates read


class _Etas(Progress):
    def __init__(self) -> None:
        self.etas: list[StudyEta] = []

    def study_eta(self, eta: StudyEta) -> None:
        self.etas.append(eta)


def test_a_run_records_what_it_has_left_of_its_search_for_its_workers():
    study = optuna.create_study(direction="maximize")
    _run(_StopRules(patience=0, deadline=None, n_trials=4), [1.0], wall_s=10.0, study=study)
    left = records.read_search_left(study)
    assert (left.trials_left, left.trials, left.search_left_s, left.timeout) == (3, 4, 30.0, False)
    deadline = time.monotonic() + 100.0  # 3 more trials of 10 s would fit; 40 s of re-measurements leave 60 s
    _run(_StopRules(patience=0, deadline=deadline, n_trials=8, reserve_s=lambda: 40.0), [1.0, 1.0], study=study)
    left = records.read_search_left(study)
    assert left.trials_left == 7 and left.timeout and 55.0 < left.search_left_s <= 60.0


def test_a_workers_eta_follows_its_runs_search_not_its_own_trials():
    """A worker counted its own --trials (20 by default) and the run's final comparison: "19 more trials at most,
    then 2.0 min for the final comparison", where the run, with --trials 4, ends the search, and the worker's trials
    with it, after 3 more. Its estimate follows what the run recorded of its search; its own --trials where those
    end first; unknown where the run recorded nothing (an older autotune)."""
    study = optuna.create_study(direction="maximize")
    records.write_search_left(study, records.SearchLeft(trials_left=3, trials=4, search_left_s=120.0, timeout=False))
    said = _Etas()
    _run(_StopRules(patience=0, deadline=None, n_trials=20, reserve_s=lambda: 120.0, progress=said, worker=True),
         [1.0], wall_s=10.0, study=study)
    [eta] = said.etas
    assert eta.worker and eta.run_search.trials_left == 3 and eta.trials_left == 19 and eta.remeasure_s == 0.0
    assert 110.0 < eta.eta_s <= 120.0 and not eta.worker_stops_first
    said = _Etas()
    _run(_StopRules(patience=0, deadline=None, n_trials=2, progress=said, worker=True), [1.0, 1.0], study=study)
    [eta] = said.etas
    assert eta.eta_s == 10.0 and eta.worker_stops_first  # its own last trial ends before the run's search
    said = _Etas()
    _run(_StopRules(patience=0, deadline=None, n_trials=20, progress=said, worker=True), [1.0])  # nothing recorded
    [eta] = said.etas
    assert eta.eta_s is None and eta.run_search is None


def test_a_worker_reserves_no_time_for_the_runs_final_comparison():
    """A worker with --timeout kept the run's re-measurements' time free, which it never spends: it stopped a trial
    short of its own --timeout."""
    rules = _StopRules(0, time.monotonic() + 90.0, [60.0], reserve_s=lambda: 40.0, worker=True)
    assert not rules.would_overrun()


def test_a_trial_starts_its_load_search_at_the_best_knee_so_far_else_half_the_sims():
    from autotune.study import start_concurrency

    def rec(n: int, value: float, c: int | None, feasible: bool = True) -> records.TrialRecord:
        result = TrialResult(flags={}, feasible=feasible, output_tok_s=value, concurrency=c)
        return records.TrialRecord(n, optuna.trial.TrialState.COMPLETE, "", False, result)

    assert start_concurrency([], 8) == 8
    trials = [rec(0, 5000.0, 181), rec(1, 6000.0, 128), rec(2, 0.0, 512, feasible=False)]
    assert start_concurrency(trials, 8) == 128
    assert start_concurrency(trials, 8, predicted_knee=512) == 128  # a measured knee beats the prediction
    assert start_concurrency([rec(0, 5000.0, 5)], 8) == 8  # never below the default
    assert start_concurrency([rec(2, 0.0, 512, feasible=False)], 8, predicted_knee=512) == 256
    assert start_concurrency([], 8, predicted_knee=10) == 8


def test_an_interrupt_fails_the_trials_this_run_started_also_a_popped_baseline():
    """A signal between ``ask`` and the objective leaves a trial RUNNING; an enqueued baseline (WAITING before
    the run) popped by that ``ask`` is this run's too. A trial already RUNNING before the run is not."""
    storage = optuna.storages.RDBStorage("sqlite:///:memory:")
    study = optuna.create_study(direction="maximize", storage=storage)
    stale = study.ask()  # another run's trial, still RUNNING
    study.enqueue_trial({"x": 1})
    with pytest.raises(KeyboardInterrupt), _failing_interrupted(study, storage, alone=True):
        popped = study.ask({"x": optuna.distributions.IntDistribution(0, 2)})
        assert popped.params == {"x": 1}
        fresh = study.ask()
        raise KeyboardInterrupt
    states = {t.number: t.state for t in study.trials}
    assert states == {stale.number: optuna.trial.TrialState.RUNNING, popped.number: optuna.trial.TrialState.FAIL,
                      fresh.number: optuna.trial.TrialState.FAIL}


def test_on_a_shared_study_an_interrupt_fails_no_trial_of_another_process():
    """On a study shared with workers (PostgreSQL) a trial that became RUNNING meanwhile may be a live worker's:
    left to the heartbeat, as this process's own trial cut inside ``ask`` is."""
    storage = optuna.storages.RDBStorage("sqlite:///:memory:")
    study = optuna.create_study(direction="maximize", storage=storage)
    with pytest.raises(KeyboardInterrupt), _failing_interrupted(study, storage, alone=False):
        started_meanwhile = study.ask()
        raise KeyboardInterrupt
    assert study.trials[started_meanwhile.number].state == optuna.trial.TrialState.RUNNING
