"""Re-measurement of a candidate whose knee was marginal: a repeat over the limit steps down, to the midpoint
between the level and the trial's next lower feasible level when that is far below, else to that level, and a
resumed study replays the step-downs."""
from __future__ import annotations

import time
from pathlib import Path
from dataclasses import dataclass, replace
from types import SimpleNamespace

import optuna
from optuna.distributions import FloatDistribution

import autotune.study as study_mod
from autotune import records
from autotune.records import HostCpuRecord
from autotune.metrics import summarize
from autotune.progress import Progress
from autotune.records import LevelRecord, Measurement, P99Record, Remeasurement, TrialResult


def _level(c: int, tok_s: float, p99: float) -> LevelRecord:
    # level wall seconds as on the H100 (about 0.2 s a concurrent request)
    return LevelRecord(concurrency=c, output_tok_s=tok_s, total_tok_s=tok_s * 3, request_s=1.0,
                       p99={"ttft": P99Record(p99, p99 * 0.9, p99 * 1.1, p99)}, runs=1, feasible=p99 <= 500,
                       p99_ttft_ms=p99, p99_tpot_ms=20.0, p99_itl_ms=25.0, p99_e2el_ms=9000.0,
                       completed=3 * c, failed=0, duration_s=60.0, wall_s=c * 0.2, status="ok")


RESULT = TrialResult(flags={"max-num-seqs": 256}, feasible=True, output_tok_s=5000.0, concurrency=181,
                     best_metrics={"ttft_ms": {"p99": 480.0}},
                     levels=tuple(_level(c, t, p) for c, t, p in ((64, 3000.0, 200.0), (128, 4500.0, 350.0),
                                                                  (181, 5000.0, 480.0), (215, 5200.0, 700.0))),
                     engine_wall_s=130.0)  # server start and stop as on the H100


def _study() -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)}, value=5000.0,
        user_attrs={"result": RESULT.to_json(), **records.queue_attrs(baseline="vllm-defaults")}))
    return study


@dataclass(frozen=True)
class _Settings:
    search: SimpleNamespace
    gpu_ids: tuple[str, ...] = ("0",)


def _cfg(tmp_path: Path, repeats: int = 2, limits_ms: dict[str, float] | None = None, max_repeats: int = 0,
         gpu_slots: tuple[tuple[str, ...], ...] = (("0",),)) -> SimpleNamespace:
    search = SimpleNamespace(limits_ms=limits_ms or {"ttft": 500.0}, p99_run_cv={})
    return SimpleNamespace(top_k=1, repeats=repeats, max_repeats=max(repeats, max_repeats), noise_floor=0.0,
                           confidence=0.9, out_dir=tmp_path, study_name="s", settings=_Settings(search=search),
                           gpu_slots=gpu_slots)


def _fake_measure(p99_by_concurrency: dict[int, float], calls: list[int], log_paths: list | None = None,
                  itl_ms_by_concurrency: dict[int, float] | None = None):
    def measure_once(settings, flags, concurrency, name, log_path):
        calls.append(concurrency)
        if log_paths is not None:
            log_paths.append(log_path)
        from autotune.metrics import RequestOutput
        ttft = p99_by_concurrency[concurrency] / 1000.0
        itl = (itl_ms_by_concurrency or {}).get(concurrency, 10.0) / 1000.0
        out = RequestOutput(success=True, prompt_tokens=10, output_tokens=100, ttft_s=ttft, itl_s=(itl,) * 99,
                            e2el_s=ttft + 99 * itl, start_s=0.0)
        return summarize([out] * 4, 10.0)
    return measure_once


def test_over_the_limit_steps_down_to_the_midpoint_below(tmp_path, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(study_mod, "measure_once", _fake_measure({181: 560.0, 152: 380.0}, calls))
    study = _study()
    selection = study_mod.remeasure_and_select(study, _cfg(tmp_path), deadline=None)
    # one repeat over the limit at 181; the next feasible level, 128, is 1.4x below: both repeats at sqrt(181 x 128)
    assert calls == [181, 152, 152]
    assert selection.winner is not None and selection.winner.concurrency == 152
    assert selection.winner.stepped_down_from == [181] and len(selection.winner.repeats) == 2
    stored = records.read_remeasurement(study, 0)
    assert stored.concurrency == 152 and stored.stepped_down_from == (181,) and len(stored.repeats) == 2
    # the run that broke the limit at 181 is kept with its load, and counts: the trial's own run and three servers
    assert [(c, m.p99_ms) for c, m in stored.earlier] == [(181, {"ttft": 560.0})]
    assert len(selection.winner.at_limit_tok_s({"ttft": 500.0})) == 4
    from autotune.cli.studies import best_of_study
    best = best_of_study(study)  # `autotune best` reports the level that held, with its re-measured figures
    assert best["concurrency"] == 152 and best["stepped_down_from"] == [181] and best["p99_ms"] == {"ttft": 380.0}
    # its full metrics too: the last run at 152, not the trial's level at 181 that it stepped down from
    assert best["metrics"] == stored.repeats[-1].metrics and best["metrics"]["ttft_ms"]["p99"] == 380.0

    # resumed with one more repeat wanted: the step-down is replayed, only the missing repeat runs, at 152
    calls.clear()
    selection = study_mod.remeasure_and_select(study, _cfg(tmp_path, repeats=3), deadline=None)
    assert calls == [152] and selection.winner.concurrency == 152
    assert [c for c, _ in selection.winner.earlier_runs] == [181]  # replayed from the store, not lost


def test_over_any_limit_steps_down(tmp_path, monkeypatch):
    """With TTFT and ITL limits, a re-measurement within the TTFT limit but over the ITL one steps down too."""
    calls: list[int] = []
    monkeypatch.setattr(study_mod, "measure_once", _fake_measure({181: 300.0, 152: 300.0}, calls,
                                                                 itl_ms_by_concurrency={181: 60.0, 152: 45.0}))
    study = _study()
    limits = {"ttft": 500.0, "itl": 50.0}
    selection = study_mod.remeasure_and_select(study, _cfg(tmp_path, limits_ms=limits), deadline=None)
    assert calls == [181, 152, 152] and selection.winner.concurrency == 152
    stored = records.read_remeasurement(study, 0)
    assert stored.stepped_down_from == (181,) and stored.repeats[0].p99_ms == {"ttft": 300.0, "itl": 45.0}
    calls.clear()  # within both limits: no step-down
    selection = study_mod.remeasure_and_select(_study(), _cfg(tmp_path, limits_ms={"ttft": 500.0, "itl": 70.0}), None)
    assert calls == [181, 181] and selection.winner.concurrency == 181


def test_a_failed_midpoint_goes_to_the_searched_level_below(tmp_path, monkeypatch):
    calls: list[int] = []
    log_paths: list = []
    p99_ms = {181: 560.0, 152: 600.0, 128: 380.0}
    monkeypatch.setattr(study_mod, "measure_once", _fake_measure(p99_ms, calls, log_paths))
    study = _study()
    selection = study_mod.remeasure_and_select(study, _cfg(tmp_path), deadline=None)
    assert calls == [181, 152, 128, 128] and selection.winner.concurrency == 128
    assert len(set(log_paths)) == 4  # every server keeps its own log (the first repeat at each level is number 0)
    assert selection.winner.stepped_down_from == [181, 152]
    calls.clear()  # replayed on resume
    assert study_mod.remeasure_and_select(study, _cfg(tmp_path, repeats=3), None).winner.concurrency == 128
    assert calls == [128]


def test_no_lower_level_left_means_no_winner(tmp_path, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(study_mod, "measure_once", _fake_measure({c: 900.0 for c in (181, 152, 128, 91, 64)}, calls))
    selection = study_mod.remeasure_and_select(_study(), _cfg(tmp_path, repeats=1), deadline=None)
    assert calls == [181, 152, 128, 91, 64] and selection.winner is None


def test_the_timeout_covers_the_remeasurements(tmp_path, monkeypatch):
    study = _study()
    cost_s = 130.0 + 181 * 0.2  # the trial's server start and stop, and its level at 181
    assert abs(study_mod._candidate(records.read_trial(study.trials[0])).remeasure_s - cost_s) < 1e-9
    # two repeats of the one candidate, and two of a tuned candidate that the next trial may add (top-k 1)
    assert abs(study_mod.remeasure_reserve_s(study, _cfg(tmp_path)) - 4 * cost_s) < 1e-9
    assert study_mod.remeasure_reserve_s(study, _cfg(tmp_path, repeats=0)) == 0.0

    calls: list[int] = []
    skipped: list[int] = []

    class Skips(Progress):
        def remeasure_skipped(self, trial: int, repeat: int, of: int, expected_s: float) -> None:
            skipped.append(trial)

        def remeasure_started(self, *args: object) -> None:
            raise AssertionError("no re-measurement may start")

    monkeypatch.setattr(study_mod, "measure_once", _fake_measure({181: 450.0}, calls))
    deadline = time.monotonic() + cost_s - 5  # a re-measurement would run past it: none starts
    selection = study_mod.remeasure_and_select(study, _cfg(tmp_path), deadline, Skips())
    assert calls == [] and skipped == [0]
    assert selection.winner is not None and selection.winner.repeats == []  # the search's figure stands
    selection = study_mod.remeasure_and_select(study, _cfg(tmp_path), time.monotonic() + 3 * cost_s)
    assert calls == [181, 181] and len(selection.winner.repeats) == 2
    assert study_mod.remeasure_reserve_s(study, _cfg(tmp_path)) == 2 * cost_s  # only the next trial's part left


def test_resume_replays_the_path_taken_even_under_an_older_rule(tmp_path, monkeypatch):
    """A study whose re-measurement stepped from 181 straight to 128 (the rule before midpoints) resumes at 128,
    where its stored repeat was measured."""
    study = _study()
    records.write_remeasurement(study, Remeasurement(0, 128, (181,), (Measurement(4400.0, {"ttft": 300.0}),)))
    calls: list[int] = []
    monkeypatch.setattr(study_mod, "measure_once", _fake_measure({128: 310.0}, calls))
    selection = study_mod.remeasure_and_select(study, _cfg(tmp_path), deadline=None)
    assert calls == [128] and selection.winner.concurrency == 128 and len(selection.winner.repeats) == 2


def test_a_failed_server_is_kept_with_its_reason(tmp_path, monkeypatch):
    from autotune.errors import EngineStartError

    def measure_once(settings, flags, concurrency, name, log_path):
        raise EngineStartError("CUDA out of memory", "oom")

    monkeypatch.setattr(study_mod, "measure_once", measure_once)
    study = _study()
    selection = study_mod.remeasure_and_select(study, _cfg(tmp_path, repeats=1), deadline=None)
    assert selection.winner is None  # its only measurement failed
    assert records.read_remeasurement(study, 0).repeats[0].failure == "oom: CUDA out of memory"


def test_a_stepped_down_winner_never_remeasured_reports_that_levels_search_figures(tmp_path):
    """Seen on the H100: the re-measurement at the lower level was cut by --timeout, and the profile showed the
    P99 of the level above (the trial's best level) beside the lower level's throughput."""
    from autotune.models import resolve_model
    from autotune.profile import build_profile
    from autotune.selection import select_winner

    cand = study_mod._candidate(records.read_trial(_study().trials[0]))
    cand.move_to(128)
    search = SimpleNamespace(limits_ms={"ttft": 500.0}, p99_run_cv={})
    settings = SimpleNamespace(search=search, model=resolve_model("flash"), engine="sim",
                               gpu=SimpleNamespace(name="h100"),
                               gpus=1, workload=SimpleNamespace(describe=lambda: {"spec": "random:8:8", "seed": 0}),
                               sim_caveats=list, card_caveats=list)
    cfg = SimpleNamespace(settings=settings, noise_floor=0.0, confidence=0.9, preset="flash", study_name="s",
                          storage_url="sqlite:///x.db", baseline_layout_note=lambda: "")
    selection = select_winner([cand], {"ttft": 500.0}, repeats=0)
    stored = study_mod.selection_record(selection, {"ttft": 500.0}, 0.0, 0.9, {})
    profile = build_profile(cfg, selection, stored, records.read_trial(_study().trials[0]), 1)
    m = profile.metrics.at_chosen_load
    assert profile.concurrency == 128 and m["concurrency"] == 128 and m["output_tok_s"] == 4500.0
    assert m["ttft_ms"]["p99"] == 350.0
    assert profile.notes == []
    # a level of the winner's trial measured while other processes took the host's CPUs: the profile says so
    trial = records.read_trial(_study().trials[0])
    busy = HostCpuRecord(cpus=16, busy_cores=15.5, others_cores=12.0, steal_share=0.0)
    levels = (replace(trial.result.levels[0], host_cpu=busy), *trial.result.levels[1:])
    trial = replace(trial, result=replace(trial.result, levels=levels))
    profile = build_profile(cfg, selection, stored, trial, 1)
    [note] = profile.notes
    assert note.startswith("other processes took up to 12.0 of the host's 16 CPUs, all of them busy, while the winner")


def test_the_reserve_counts_a_restart_as_seen_once_one_was_timed(tmp_path):
    """On an H200 a re-measurement's server came up in 55-60 s where the trial's first one took 148 s: once the
    study has timed a re-measurement, the next ones are expected to restart as slowly as the slowest seen."""
    study = _study()
    level_s = 181 * 0.2
    timed = Measurement(5000.0, {"ttft": 450.0}, {"wall_s": level_s}, wall_s=60.0 + level_s)
    assert timed.restart_s == 60.0 and Measurement(1.0, {}, {"wall_s": 5.0}).restart_s == 0.0  # untimed: unknown
    records.write_remeasurement(study, Remeasurement(0, 181, (), (timed, timed)))
    # the baseline is done; the next trial's candidate (top-k 1) is expected at 60 s a restart, not 130
    assert abs(study_mod.remeasure_reserve_s(study, _cfg(tmp_path)) - 2 * (60.0 + level_s)) < 1e-9
    stored = records.read_remeasurement(study, 0).repeats[0]
    assert stored.wall_s == timed.wall_s
    older = {k: v for k, v in timed.to_json().items() if k != "wall_s"}  # recorded before walls were kept
    assert Measurement.from_json(older).wall_s == 0.0


# --- spare rounds: time left before the deadline buys more runs of every compared finalist -----------------------

TUNED = TrialResult(flags={"max-num-seqs": 512}, feasible=True, output_tok_s=5100.0, concurrency=181,
                    best_metrics={"ttft_ms": {"p99": 470.0}}, levels=RESULT.levels, engine_wall_s=130.0)
COST_S = 130.0 + 181 * 0.2  # one re-measurement of either: its trial's server start and stop, and its level at 181


def _two_finalists() -> optuna.Study:
    """vLLM's defaults (trial 0) and a tuned trial (1): with --top-k 1, both are finalists."""
    study = _study()
    study.add_trial(optuna.trial.create_trial(
        params={"x": 0.6}, distributions={"x": FloatDistribution(0, 1)}, value=5100.0,
        user_attrs={"result": TUNED.to_json(), **records.queue_attrs()}))
    return study


class _Clock:
    """The study's clock, moved on by each fake re-measurement as much as a real one costs."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def _timed_measure(clock: _Clock, p99_by_concurrency: dict[int, float], calls: list[tuple[int, int]]):
    untimed = _fake_measure(p99_by_concurrency, [])

    def measure_once(settings, flags, concurrency, name, log_path):
        calls.append((flags.get("max-num-seqs", 0), concurrency))
        clock.now += COST_S
        return untimed(settings, flags, concurrency, name, log_path)
    return measure_once


class _Rounds(Progress):
    def __init__(self) -> None:
        self.rounds: list[tuple[int, int]] = []

    def spare_round(self, finalists: int, repeat: int) -> None:
        self.rounds.append((finalists, repeat))


def test_time_left_buys_whole_rounds_of_every_compared_finalist(tmp_path, monkeypatch):
    clock, calls, progress = _Clock(), [], _Rounds()
    monkeypatch.setattr(study_mod.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(study_mod, "measure_once", _timed_measure(clock, {181: 450.0}, calls))
    study = _two_finalists()
    # the planned comparison (one run each) and one whole round fit; a second round would not
    deadline = clock.now + 4 * COST_S + 10
    selection = study_mod.remeasure_and_select(study, _cfg(tmp_path, repeats=1, max_repeats=3), deadline, progress)
    assert progress.rounds == [(2, 2)]
    assert sorted(calls) == [(256, 181), (256, 181), (512, 181), (512, 181)]
    assert all(len(c.repeats) == 2 for c in selection.candidates)  # measured alike
    assert all(len(records.read_remeasurement(study, t).repeats) == 2 for t in (0, 1))  # and stored


def test_spare_rounds_stop_at_max_repeats(tmp_path, monkeypatch):
    clock, calls, progress = _Clock(), [], _Rounds()
    monkeypatch.setattr(study_mod.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(study_mod, "measure_once", _timed_measure(clock, {181: 450.0}, calls))
    selection = study_mod.remeasure_and_select(_two_finalists(), _cfg(tmp_path, repeats=1, max_repeats=3),
                                               clock.now + 100 * COST_S, progress)
    assert progress.rounds == [(2, 2), (2, 3)] and len(calls) == 6
    assert all(len(c.repeats) == 3 for c in selection.candidates)


def test_no_spare_rounds_without_a_deadline_or_a_comparison(tmp_path, monkeypatch):
    clock, calls, progress = _Clock(), [], _Rounds()
    monkeypatch.setattr(study_mod.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(study_mod, "measure_once", _timed_measure(clock, {181: 450.0}, calls))
    study_mod.remeasure_and_select(_two_finalists(), _cfg(tmp_path, repeats=1, max_repeats=3), None, progress)
    assert len(calls) == 2 and progress.rounds == []  # no --timeout: --repeats, as asked
    calls.clear()
    study_mod.remeasure_and_select(_study(), _cfg(tmp_path, repeats=1, max_repeats=3), clock.now + 100 * COST_S,
                                   progress)
    assert len(calls) == 1 and progress.rounds == []  # one finalist: nothing to compare it with


def test_a_round_runs_on_every_gpu_slot(tmp_path, monkeypatch):
    """With two slots a round of two finalists costs one re-measurement's time, not two."""
    calls: list[int] = []
    progress = _Rounds()
    monkeypatch.setattr(study_mod, "measure_once", _fake_measure({181: 450.0}, calls))  # instant: no time passes
    deadline = time.monotonic() + 1.5 * COST_S  # room for one re-measurement's time, not two
    study_mod.remeasure_and_select(_two_finalists(), _cfg(tmp_path, repeats=1, max_repeats=2), deadline, progress)
    assert progress.rounds == [] and len(calls) == 2  # one slot: the round is priced at two re-measurements
    calls.clear()
    study_mod.remeasure_and_select(_two_finalists(), _cfg(tmp_path, repeats=1, max_repeats=2, gpu_slots=(("0",), ("1",))),
                                   deadline, progress)
    assert progress.rounds == [(2, 2)] and len(calls) == 4


def test_a_round_is_priced_at_the_re_measurements_seen(tmp_path, monkeypatch):
    """Restarts three times slower than the trial's own start: the round is priced at what they took."""
    clock, calls, progress = _Clock(), [], _Rounds()
    monkeypatch.setattr(study_mod.time, "monotonic", clock.monotonic)
    timed = _timed_measure(clock, {181: 450.0}, calls)

    def slow_measure(*args):
        clock.now += 2 * COST_S
        return timed(*args)

    monkeypatch.setattr(study_mod, "measure_once", slow_measure)
    # after the planned two (6 x COST_S), 4 x COST_S are left: enough at the expected price, not at the seen one
    study_mod.remeasure_and_select(_two_finalists(), _cfg(tmp_path, repeats=1, max_repeats=3),
                                   clock.now + 10 * COST_S, progress)
    assert len(calls) == 2 and progress.rounds == []


def test_a_step_down_in_a_spare_round_measures_the_new_load_as_every_finalist(tmp_path, monkeypatch):
    """A spare run over the limit steps the finalist down like any re-measurement; at the new load it gets
    ``repeats`` runs, so it stays compared (with none there it would drop out as unconfirmed)."""
    clock, calls, progress = _Clock(), [], _Rounds()
    monkeypatch.setattr(study_mod.time, "monotonic", clock.monotonic)
    # the tuned trial's spare run at 181 breaks the limit
    p99 = iter([450.0, 450.0, 560.0, 380.0, 450.0, 390.0])

    def measure_once(settings, flags, concurrency, name, log_path):
        calls.append((flags.get("max-num-seqs", 0), concurrency))
        clock.now += COST_S
        return _fake_measure({concurrency: next(p99)}, [])(settings, flags, concurrency, name, log_path)

    monkeypatch.setattr(study_mod, "measure_once", measure_once)
    study = _two_finalists()
    selection = study_mod.remeasure_and_select(study, _cfg(tmp_path, repeats=1, max_repeats=2),
                                               clock.now + 100 * COST_S, progress)
    tuned = next(c for c in selection.candidates if c.trial_number == 1)
    # planned: tuned, defaults; round 1: tuned over the limit at 181, then 152 at once, defaults; round 2: the
    # tuned trial alone, the only finalist under --max-repeats at its load
    assert calls == [(512, 181), (256, 181), (512, 181), (512, 152), (256, 181), (512, 152)]
    assert progress.rounds == [(2, 2), (1, 2)]
    assert tuned.concurrency == 152 and tuned.stepped_down_from == [181] and len(tuned.repeats) == 2
    assert [c for c, _ in tuned.earlier_runs] == [181, 181]  # both runs at 181 still count
    assert tuned.confirmed(1) and 1 not in selection.unconfirmed
