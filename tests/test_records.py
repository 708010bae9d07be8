"""The typed study records: what goes into Optuna's storage comes back equal, NaN included, and a study
written by other records is refused with one line."""
from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import FloatDistribution

from autotune import records
from autotune.errors import UsageError
from autotune.records import (GainRecord, LevelRecord, Measurement, Remeasurement, SelectionRecord, StudyFingerprint,
                              TrialResult)

LEVEL = LevelRecord(concurrency=64, output_tok_s=5000.0, total_tok_s=15000.0, request_s=9.0, p99_ms=math.nan,
                    p99_low_ms=math.nan, p99_high_ms=math.nan, p99_fitted_ms=math.nan, runs=1, feasible=False, p99_ttft_ms=math.nan, p99_tpot_ms=20.0, p99_itl_ms=25.0, p99_e2el_ms=9000.0,
                    completed=0, failed=192, duration_s=60.0, wall_s=70.0, status="failed")
FP = StudyFingerprint(model="m", gpus=1, metric="ttft", limit_ms=500.0, workload={"spec": "random:8:8", "seed": 0},
                      engine="sim", gpu_type="h100", preset="flash", space="flash.yaml")


def _trial(study: optuna.Study, result: TrialResult | None, baseline: str = "") -> None:
    attrs = records.queue_attrs(baseline=baseline)
    if result is not None:
        attrs["result"] = result.to_json()
    study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                                              value=result.output_tok_s if result else 0.0, user_attrs=attrs))


def test_a_trial_comes_back_as_it_was_written_nan_included():
    result = TrialResult(flags={"max-num-seqs": 256}, feasible=False, output_tok_s=0.0, p99_ms=math.nan,
                         concurrency=64, levels=(LEVEL,), failure_class="no_feasible_load", log_tail="x" * 5000,
                         trial_wall_s=80.0)
    study = optuna.create_study(direction="maximize")
    _trial(study, result, baseline="vllm-defaults")
    back = records.read_trials(study)[0]
    assert back.baseline == "vllm-defaults" and back.complete and not back.feasible and back.value == 0.0
    assert math.isnan(back.result.p99_ms) and math.isnan(back.result.levels[0].p99_ttft_ms)
    assert back.result.levels[0].failed == 192 and len(back.result.log_tail) == 4000  # the tail is capped
    assert back.result.level(64) == back.result.levels[0] and back.result.level(32) is None
    assert back.result.constraint_ms(500.0) == 5000.0  # a failure is a large violation


def test_remeasurements_and_the_selection_round_trip():
    study = optuna.create_study(direction="maximize")
    rem = Remeasurement(3, 128, (181,), (Measurement(4400.0, 300.0, {"completed": 384}),
                                         Measurement(math.nan, math.nan, failure="oom: CUDA out of memory")))
    records.write_remeasurement(study, rem)
    back = records.read_remeasurement(study, 3)
    assert back.concurrency == 128 and back.stepped_down_from == (181,) and back.repeats[1].failure.startswith("oom")
    assert math.isnan(back.repeats[1].output_tok_s) and records.read_remeasurement(study, 4) is None
    gain = GainRecord(0, 0.0, False, 4400.0, math.inf, math.inf, math.inf, 0.9, True)  # a baseline that met no limit
    records.write_selection(study, SelectionRecord(3, "verdict", {"vllm-defaults": gain}))
    sel = records.read_selection(study)
    assert sel.winner_trial == 3 and sel.gains["vllm-defaults"].gain_pct == math.inf


def test_a_changed_setup_or_an_older_study_is_refused():
    study = optuna.create_study(study_name="s")
    records.check_fingerprint(study, FP)
    records.check_fingerprint(study, FP)  # same setup: resumes
    with pytest.raises(UsageError, match="was created with limit_ms=500.0, not 300.0"):
        records.check_fingerprint(study, StudyFingerprint(**{**FP.__dict__, "limit_ms": 300.0}))
    old = optuna.create_study(study_name="old")
    old.set_user_attr("fingerprint", {"model": "m", "gpus": 1})  # written before typed records
    with pytest.raises(UsageError, match="another version of autotune's records"):
        records.check_fingerprint(old, FP)
