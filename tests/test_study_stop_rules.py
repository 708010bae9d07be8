"""The study's stop rules: stagnation, and a deadline that no trial may overrun (also across a resume)."""
from __future__ import annotations

import time

import optuna

from autotune.study import _StopRules


def _run(rules: _StopRules, values: list[float], wall_s: float = 10.0) -> int:
    """Optimize with the rules as callback; trial i returns values[i]. Returns how many trials ran."""
    study = optuna.create_study(direction="maximize")

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("feasible", True)
        trial.set_user_attr("trial_wall_s", wall_s)
        return values[trial.number]

    study.optimize(objective, n_trials=len(values), callbacks=[rules])
    return len(study.trials)


def test_longest_trial_decides_whether_the_next_fits():
    assert _run(_StopRules(0, time.monotonic() + 60.0, earlier_durations=[10.0]), [1, 2, 3]) == 3
    # a median of 10 s would let the next trial start; the longest earlier trial (100 s) does not fit
    rules = _StopRules(0, time.monotonic() + 60.0, earlier_durations=[10.0, 10.0, 100.0])
    assert _run(rules, [1, 2, 3]) == 1 and rules.reason == "timeout"


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
