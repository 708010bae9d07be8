"""The typed study records: what goes into Optuna's storage comes back equal, NaN included, and a study
written by other records is refused with one line."""
from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import FloatDistribution

from autotune import records
from autotune.errors import UsageError
from autotune.records import (GainRecord, LevelRecord, Measurement, P99Record, Remeasurement, RunRecord,
                              SelectionRecord, StudyFingerprint, ThroughputRecord, TrialResult)

NAN = math.nan
LEVEL = LevelRecord(concurrency=64, output_tok_s=5000.0, total_tok_s=15000.0, request_s=9.0,
                    p99={"ttft": P99Record(NAN, NAN, NAN, NAN), "itl": P99Record(25.0, 24.0, 27.0, NAN)}, runs=1,
                    feasible=False, p99_ttft_ms=NAN, p99_tpot_ms=20.0, p99_itl_ms=25.0, p99_e2el_ms=9000.0,
                    completed=0, failed=192, duration_s=60.0, wall_s=70.0, status="failed")
FP = StudyFingerprint(model="m", gpus=1, limits_ms={"ttft": 500.0}, workload={"spec": "random:8:8", "seed": 0},
                      engine="sim", gpu_type="h100", preset="flash", space="flash.yaml")


def _trial(study: optuna.Study, result: TrialResult | None, baseline: str = "") -> None:
    attrs = records.queue_attrs(baseline=baseline)
    if result is not None:
        attrs["result"] = result.to_json()
    study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                                              value=result.output_tok_s if result else 0.0, user_attrs=attrs))


def test_a_trial_comes_back_as_it_was_written_nan_included():
    result = TrialResult(flags={"max-num-seqs": 256}, feasible=False, output_tok_s=0.0,
                         concurrency=64, levels=(LEVEL,), failure_class="no_feasible_load", log_tail="x" * 5000,
                         trial_wall_s=80.0)
    study = optuna.create_study(direction="maximize")
    _trial(study, result, baseline="vllm-defaults")
    back = records.read_trials(study)[0]
    assert back.baseline == "vllm-defaults" and back.complete and not back.feasible and back.value == 0.0
    assert math.isnan(back.result.p99_ms["ttft"]) and math.isnan(back.result.levels[0].p99_ttft_ms)
    assert back.result.levels[0] == LEVEL and list(back.result.p99_ms) == ["ttft", "itl"]  # the limits' order
    assert back.result.levels[0].failed == 192 and len(back.result.log_tail) == 4000  # the tail is capped
    assert back.result.level(64) == back.result.levels[0] and back.result.level(32) is None
    # no level met the limits: a P99 never measured is a large violation, one measured under its limit stays
    assert back.result.constraints_ms({"ttft": 500.0, "itl": 50.0}) == {"ttft": 5000.0, "itl": -25.0}


def test_remeasurements_and_the_selection_round_trip():
    study = optuna.create_study(direction="maximize")
    failed = Measurement(NAN, {"ttft": NAN, "itl": NAN}, failure_class="oom", failure_reason="CUDA out of memory")
    rem = Remeasurement(3, 128, (181,), (Measurement(4400.0, {"ttft": 300.0, "itl": 40.0}, {"completed": 384}), failed))
    records.write_remeasurement(study, rem)
    back = records.read_remeasurement(study, 3)
    assert back.concurrency == 128 and back.stepped_down_from == (181,)
    assert (back.repeats[1].failure_class, back.repeats[1].failure) == ("oom", "oom: CUDA out of memory")
    assert back.repeats[0].failure_class == "" and back.repeats[0].failure == ""
    assert math.isnan(back.repeats[1].output_tok_s) and records.read_remeasurement(study, 4) is None
    assert back.repeats[0].p99_ms == {"ttft": 300.0, "itl": 40.0} and math.isnan(back.repeats[1].p99_ms["itl"])
    assert back.repeats[0].over_limits({"ttft": 500.0, "itl": 35.0}) == ["itl"]
    assert back.repeats[1].over_limits({"ttft": 500.0, "itl": 35.0}) == []  # a failed server saw no P99
    gain = GainRecord(0, 0.0, False, 4400.0, math.inf, math.inf, math.inf, 0.9, True)  # a baseline that met no limit
    tput = ThroughputRecord(4400.0, 0.0, 4400.0, 4400.0, 1, 132.0, 0.9)
    at_limit = ThroughputRecord(4600.0, 0.0, 4600.0, 4600.0, 1, 138.0, 0.9)
    written = SelectionRecord(3, "verdict", {"vllm-defaults": gain}, winner_concurrency=128, winner_output_tok_s=tput,
                              winner_at_limit_tok_s=at_limit, winner_p99_ms={"ttft": 300.0, "itl": NAN})
    records.write_selection(study, written)
    sel = records.read_selection(study)
    assert sel.winner_trial == 3 and sel.gains["vllm-defaults"].gain_pct == math.inf
    assert sel.winner_output_tok_s == tput and sel.winner_at_limit_tok_s == at_limit and sel.winner_concurrency == 128
    assert sel.winner_p99_ms["ttft"] == 300.0 and math.isnan(sel.winner_p99_ms["itl"])
    no_winner = optuna.create_study()
    records.write_selection(no_winner, SelectionRecord(None, "no configuration met the limits"))
    assert records.read_selection(no_winner).winner_output_tok_s is None


def test_each_run_is_its_own_record_and_gpu_minutes_add_up():
    study = optuna.create_study()
    first = RunRecord(started_at="2026-01-01T10:00:00+00:00", finished_at="2026-01-01T11:00:00+00:00",
                      wall_s=3600.0, gpus=4, trials_run=12, stopped_by="trials", engine="vllm",
                      gpu_name="NVIDIA H100 80GB HBM3", vllm_version="0.26.0", autotune_version="0.1.0")
    resumed = RunRecord(**{**first.__dict__, "started_at": "2026-01-02T09:00:00+00:00", "wall_s": 900.0,
                           "stopped_by": "interrupted", "vllm_version": None})
    records.write_run(study, resumed)  # written out of order: read back oldest first
    records.write_run(study, first)
    assert records.read_runs(study) == [first, resumed]
    assert first.gpu_minutes == 240.0 and sum(r.gpu_minutes for r in records.read_runs(study)) == 300.0
    assert records.read_runs(optuna.create_study()) == []


def test_a_changed_setup_or_an_older_study_is_refused():
    study = optuna.create_study(study_name="s")
    records.check_fingerprint(study, FP)
    records.check_fingerprint(study, FP)  # same setup: resumes
    records.check_fingerprint(study, StudyFingerprint(**{**FP.__dict__, "limits_ms": {"ttft": 500}}))  # 500 == 500.0
    with pytest.raises(UsageError, match=r"was created with limits_ms.ttft=500.0, not 300.0;"):
        records.check_fingerprint(study, StudyFingerprint(**{**FP.__dict__, "limits_ms": {"ttft": 300.0}}))
    for other in ({"ttft": 500.0, "itl": 50.0}, {"itl": 500.0}):  # other limits: the whole mapping
        with pytest.raises(UsageError, match=r"was created with limits_ms=\{'ttft': 500.0\}, not"):
            records.check_fingerprint(study, StudyFingerprint(**{**FP.__dict__, "limits_ms": other}))
    # a sim study's model: compared where the study recorded one (a study written before it was: not)
    card = {"card": {"hbm_tb_s": 4.8}, "noise": "off"}
    sim = optuna.create_study(study_name="sim")
    records.check_fingerprint(sim, StudyFingerprint(**{**FP.__dict__, "sim_model": card}))
    assert records.read_fingerprint(sim).sim_model == card
    with pytest.raises(UsageError, match=r"was created with sim_model.card.hbm_tb_s=4.8, not 4.0;"):
        records.check_fingerprint(sim, StudyFingerprint(**{**FP.__dict__, "sim_model": {**card, "card": {"hbm_tb_s": 4.0}}}))
    records.check_fingerprint(study, StudyFingerprint(**{**FP.__dict__, "sim_model": card}))  # recorded none
    # a workload key the study's version did not record (a file's sha256): not compared
    records.check_fingerprint(study, StudyFingerprint(**{**FP.__dict__, "workload": {**FP.workload, "sha256": "ab"}}))
    several = optuna.create_study(study_name="several")
    fp = StudyFingerprint(**{**FP.__dict__, "limits_ms": {"ttft": 500.0, "itl": 50.0}})
    records.check_fingerprint(several, fp)
    assert records.read_fingerprint(several) == fp
    records.check_fingerprint(several, StudyFingerprint(**{**FP.__dict__, "limits_ms": {"itl": 50.0, "ttft": 500.0}}))
    old = optuna.create_study(study_name="old")
    old.set_user_attr("fingerprint", {"model": "m", "gpus": 1})  # written before typed records
    with pytest.raises(UsageError, match="another version of autotune's records"):
        records.check_fingerprint(old, FP)


def _level(c: int, ttft: tuple[float, float], itl: tuple[float, float], feasible: bool) -> LevelRecord:
    """A level whose TTFT and ITL P99s are (measured, fitted)."""
    return LevelRecord(concurrency=c, output_tok_s=100.0 * c, total_tok_s=300.0 * c, request_s=1.0,
                       p99={"ttft": P99Record(ttft[0], NAN, NAN, ttft[1]), "itl": P99Record(itl[0], NAN, NAN, itl[1])},
                       runs=1, feasible=feasible, p99_ttft_ms=ttft[0], p99_tpot_ms=NAN, p99_itl_ms=itl[0],
                       p99_e2el_ms=NAN, completed=c, failed=0, duration_s=10.0, wall_s=12.0, status="ok")


def test_one_constraint_per_limit():
    limits = {"ttft": 500.0, "itl": 50.0}
    # feasible: the values the verdict rests on, the fitted P99s (ITL measured 52 ms, fitted 49 ms with the level
    # above it): every one <= 0, so Optuna agrees the trial is feasible
    ok = TrialResult(flags={}, feasible=True, output_tok_s=4000.0, concurrency=40,
                     levels=(_level(40, (300.0, 300.0), (52.0, 49.0), True),
                             _level(48, (450.0, 450.0), (46.0, 49.0), False)))
    assert ok.constraints_ms(limits) == {"ttft": -200.0, "itl": -1.0}
    assert ok.p99_ms == {"ttft": 300.0, "itl": 52.0}  # as measured
    # nothing met the limits: ITL over at the lowest level, TTFT under its limit (the sampler learns which broke)
    itl_over = TrialResult(flags={}, feasible=False, output_tok_s=0.0, concurrency=1, failure_class="no_feasible_load",
                           levels=(_level(1, (80.0, NAN), (70.0, NAN), False),))
    assert itl_over.constraints_ms(limits) == {"ttft": -420.0, "itl": 20.0}
    # nothing met the limits though every P99 is under its limit (too many failed requests): all raised above 0
    failed = TrialResult(flags={}, feasible=False, output_tok_s=0.0, concurrency=1, failure_class="no_feasible_load",
                         levels=(_level(1, (80.0, NAN), (30.0, NAN), False),))
    assert failed.constraints_ms(limits) == {"ttft": 1e-3, "itl": 1e-3}
    # a server that never started
    oom = TrialResult(flags={}, feasible=False, output_tok_s=0.0, concurrency=None, failure_class="oom")
    assert oom.constraints_ms(limits) == {"ttft": 5000.0, "itl": 500.0} and oom.p99_ms == {}


def test_reading_a_study_reads_its_attributes_from_the_storage_once():
    """Each ``study.user_attrs`` is a query of the storage (a round trip to a shared PostgreSQL): ``read_study``
    reads them once for the fingerprint, the selection, the runs and the re-measurements, and each record comes
    back as its own reader gives it."""
    from autotune.winner import read_study

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    records.check_fingerprint(study, FP)
    _trial(study, TrialResult(flags={}, feasible=True, output_tok_s=4000.0, concurrency=40))
    rem = Remeasurement(0, 40, (), (Measurement(4100.0, {"ttft": 300.0}),))
    records.write_remeasurement(study, rem)
    records.write_selection(study, SelectionRecord(0, "the only finalist"))
    run = RunRecord(started_at="2026-01-01T10:00:00+00:00", finished_at="2026-01-01T11:00:00+00:00", wall_s=3600.0,
                    gpus=1, trials_run=1, stopped_by="trials", engine="sim", gpu_name=None, vllm_version=None,
                    autotune_version="0.1.0")
    records.write_run(study, run)
    reads = {"get_study_user_attrs": 0, "get_study_system_attrs": 0}

    def counted(name):
        read = getattr(storage, name)

        def wrapper(*args, **kwargs):
            reads[name] += 1
            return read(*args, **kwargs)
        return wrapper

    for name in reads:
        setattr(storage, name, counted(name))
    data = read_study(study)
    assert reads == {"get_study_user_attrs": 1, "get_study_system_attrs": 0}
    assert data.fingerprint == FP and data.selection == records.read_selection(study)
    assert data.runs == [run] and data.remeasurements == {0: rem}


def test_a_failed_measurement_recorded_as_one_text_reads_back_with_its_class():
    """Studies recorded before the class was kept apart hold "<class>: <reason>" under "failure"."""
    old = {"output_tok_s": None, "p99_ms": {"ttft": None}, "metrics": {},
           "failure": "kv_too_small: no cache blocks: max-model-len: 32768"}
    back = Measurement.from_json(old)
    assert (back.failure_class, back.failure_reason) == ("kv_too_small", "no cache blocks: max-model-len: 32768")
    started = Measurement.from_json({**old, "output_tok_s": 10.0, "failure": ""})
    assert started.failure_class == "" and started.failure == ""
