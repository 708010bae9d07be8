"""The console view's pieces that need no study: how a trial's flags read in one line, and what a log of a
study (no terminal) prints."""
from __future__ import annotations

import dataclasses
import io
import math

from rich.console import Console

from autotune.cli.ui import StudyView, short_flags
from autotune.progress import StudyEta, StudyInterrupted, StudyStart
from autotune.records import LevelRecord, Measurement, P99Record, SearchLeft, TrialResult


def test_short_flags_of_the_vision_knobs() -> None:
    flags = {"limit-mm-per-prompt": {"image": 4, "video": 0}, "mm-processor-cache-gb": 0, "mm-encoder-tp-mode": "data",
             "skip-mm-profiling": True, "mm-processor-cache-type": None, "enable-chunked-prefill": True}
    assert short_flags(flags) == 'mm-limit={"image":4,"video":0} mm-cache-gb=0 mm=data skip-mm-profile'
    assert short_flags({"limit-mm-per-prompt": None}) == "(vLLM defaults)"  # None: the flag is not given


def _view() -> tuple[StudyView, io.StringIO]:
    out = io.StringIO()
    return StudyView(Console(file=out, width=200, force_terminal=False)), out


def _start(served: bool) -> StudyStart:
    return StudyStart(study="s", engine="vllm" if served else "sim", limits_ms={"ttft": 500.0}, gpus=1, n_trials=20,
                      timeout_s=None, existing_trials=0, served=served)


def _level(concurrency: int) -> LevelRecord:
    return LevelRecord(concurrency=concurrency, output_tok_s=6828.0, total_tok_s=9000.0, request_s=8.0,
                       p99={"ttft": P99Record(276.0, 196.0, 355.0, math.nan)}, runs=1, feasible=True,
                       p99_ttft_ms=276.0, p99_tpot_ms=15.0, p99_itl_ms=55.0, p99_e2el_ms=10700.0, completed=270,
                       failed=0, duration_s=20.0, wall_s=31.0, status="ok")


def test_a_log_of_served_trials_gets_each_server_start_and_level() -> None:
    """Without a terminal, a study on served engines (minutes a trial) logs every server start and load level; on
    the in-process sim (seconds a trial) one line per trial is enough."""
    view, out = _view()
    view.study_started(_start(served=True))
    view.trial_started(0, {}, "vllm-defaults")
    view.engine_ready({"ready_s": 127.7})
    view.load_level(_level(90), {"ttft": 500.0})
    lines = out.getvalue().splitlines()
    assert lines[-2].endswith("trial 0: server ready after 128 s")
    assert lines[-1].endswith("trial 0: c=90 6,828 tok/s p99 ttft 276 ms [196, 355]")
    view, out = _view()
    view.study_started(_start(served=False))
    view.trial_started(0, {}, "vllm-defaults")
    view.engine_ready({"ready_s": 1.0})
    view.load_level(_level(90), {"ttft": 500.0})
    assert len(out.getvalue().splitlines()) == 1  # the study's start alone


def test_a_trials_line_then_its_remeasurement_then_the_estimate() -> None:
    """A baseline is re-measured right after its trial: the log gives the trial's line, the fresh server's start and
    result, then the estimate that follows them."""
    view, out = _view()
    view.study_started(_start(served=True))
    view.trial_started(0, {}, "vllm-defaults")
    view.trial_finished(0, "vllm-defaults", TrialResult(flags={}, feasible=True, output_tok_s=6828.0, concurrency=90,
                                                        levels=(_level(90),), trial_wall_s=320.0))
    view.remeasure_started(0, 1, 1, 90, "vllm-defaults")
    view.remeasured(0, Measurement(output_tok_s=6700.0, p99_ms={"ttft": 290.0}), {"ttft": 500.0})
    view.study_eta(StudyEta(trials_left=1, trial_s=320.0, remeasure_s=120.0, eta_s=440.0, time_left_s=600.0))
    lines = [line.split("] ", 1)[1] for line in out.getvalue().splitlines()[1:]]
    assert lines == [
        "trial 0 (vllm-defaults) (vLLM defaults): 6,828 tok/s at concurrency 90, p99 ttft 276 ms [196, 355] "
        "(320 s, 5.3 GPU-min, 1 level)",
        "re-measuring trial 0 (1/1) at concurrency 90: a fresh server",
        "re-measuring trial 0 (1/1) at concurrency 90: 6,700 tok/s, p99 ttft 290 ms",
        "ETA ~7.3 min of 10.0 min left: 1 more trial at most, then 2.0 min for the final comparison"]


def test_a_workers_start_and_estimates_name_the_runs_search_that_ends_its_trials() -> None:
    """A worker said "up to 20 trials" and "ETA ~6.3 min: 19 more trials at most, then 2.0 min for the final
    comparison": its own --trials default and a comparison the run makes, where the run's --trials 4 ended its
    trials three trials later. It names the run's search now, its own --trials where those end first, and says
    when it cannot tell."""
    run = SearchLeft(trials_left=3, trials=4, search_left_s=600.0, timeout=True)

    def eta(**given) -> StudyEta:
        return StudyEta(**{"trials_left": 19, "trial_s": 20.0, "remeasure_s": 0.0, "eta_s": 600.0,
                           "time_left_s": None, "worker": True, "run_search": run, **given})

    view, out = _view()
    view.study_started(dataclasses.replace(_start(served=False), worker=True, run_search=run))
    view.study_eta(eta())
    view.study_eta(eta(trials_left=1, eta_s=20.0, worker_stops_first=True))
    view.study_eta(eta(eta_s=None, run_search=dataclasses.replace(run, search_left_s=None, timeout=False)))
    view.study_eta(eta(eta_s=None, run_search=None))
    view.study_eta(eta(eta_s=0.0, run_search=dataclasses.replace(run, trials_left=0, timeout=False)))
    lines = [line.split("] ", 1)[1] for line in out.getvalue().splitlines()]
    search = "the run's search ends after 3 more of its trials at most (its --trials 4, or sooner by its --timeout)"
    assert lines == [
        f"worker on study s on the sim engine, P99 ttft <= 500 ms: until {search}; up to 20 trials here (0 earlier)",
        f"ETA ~10.0 min: until {search}",
        f"ETA ~0.3 min: 1 more trial at most (this worker's --trials), before {search}",
        "ETA unknown until the run has timed a trial: this worker stops when the run's search ends after 3 more of its "
        "trials at most (its --trials 4)",
        "ETA unknown: this worker stops when the run's search ends (the run recorded no trial budget: an autotune "
        "before this one)",
        "ETA ~0.0 min: until the run's search ends with the trials it runs (its --trials 4)"]


def test_two_remeasurements_at_once_keep_their_own_names() -> None:
    view, out = _view()
    view.study_started(_start(served=False))
    view.remeasure_started(0, 1, 2, 90, "vllm-defaults")
    view.remeasure_started(3, 1, 2, 127, "")
    view.remeasured(0, Measurement(output_tok_s=6700.0, p99_ms={"ttft": 290.0}), {"ttft": 500.0})
    assert "re-measuring trial 0 (1/2) at concurrency 90: 6,700 tok/s" in out.getvalue().splitlines()[-1]


def test_a_last_trial_gets_no_empty_estimate_and_one_trial_is_singular() -> None:
    view, out = _view()
    view.study_started(dataclasses.replace(_start(served=True), n_trials=1))
    view.trial_finished(0, "vllm-defaults", TrialResult(flags={}, feasible=True, output_tok_s=6828.0, concurrency=90,
                                                        levels=(_level(90),), trial_wall_s=320.0))
    view.study_eta(StudyEta(trials_left=0, trial_s=320.0, remeasure_s=0.0, eta_s=0.0, time_left_s=None))
    lines = out.getvalue().splitlines()
    assert "up to 1 trial (0 earlier)" in lines[0]
    assert lines[-1].endswith("(320 s, 5.3 GPU-min, 1 level)") and len(lines) == 2


def test_the_start_says_how_the_gpus_are_shared_out_and_which_sit_idle() -> None:
    """8 GPUs and --gpus 3: two trials ran at once and two GPUs sat idle, with nothing on the console to say so."""
    view, out = _view()
    view.study_started(dataclasses.replace(_start(served=True), gpus=3, gpu_slots=(("0", "1", "2"), ("3", "4", "5")),
                                           idle_gpus=("6", "7")))
    assert out.getvalue().splitlines()[0].endswith(
        "(0 earlier); 2 trials at once, on GPUs 0,1,2 and 3,4,5; GPUs 6,7 left idle")
    migs = ("MIG-1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d", "MIG-9f8e7d6c-5b4a-3f2e-1d0c-9b8a7f6e5d4c")
    view, out = _view()  # MIG slices (or GPU UUIDs) are named as given
    view.study_started(dataclasses.replace(_start(served=True), gpu_slots=((migs[0],), (migs[1],))))
    assert out.getvalue().splitlines()[0].endswith(f"2 trials at once, on GPUs {migs[0]} and {migs[1]}")
    view, out = _view()
    view.study_started(dataclasses.replace(_start(served=True), gpu_slots=(("0",),)))
    assert out.getvalue().splitlines()[0].endswith("(0 earlier)")  # one trial at a time, every GPU used


def test_a_dead_runs_kept_results_are_said_to_be_added() -> None:
    from pathlib import Path

    view, out = _view()
    view.kept_trials_added((3,), Path("studies/s/pending"))
    view.kept_trials_added((3, 5), Path("studies/s/pending"))
    first, second = out.getvalue().splitlines()
    assert first == ("trial 3: its result, kept in studies/s/pending by an earlier run that died or lost its database, "
                     "is added to the study as measured, not measured again")
    assert second.startswith("trials 3, 5: their results, kept in") and "are added" in second


def test_what_an_interrupted_study_kept_reads_in_the_singular_and_the_plural() -> None:
    view, out = _view()
    view.study_interrupted(StudyInterrupted(study="s", storage="sqlite:///a.db", complete_trials=1,
                                            interrupted_trials=(2,), levels_kept=1))
    view.study_interrupted(StudyInterrupted(study="s", storage="sqlite:///a.db", complete_trials=4,
                                            interrupted_trials=(5, 6), levels_kept=3))
    one, two = out.getvalue().splitlines()
    assert "keeps its 1 finished trial in sqlite:///a.db; interrupted: trial 2 (marked failed, its 1 measured load " \
           "level kept in its record, its flags queued again)." in one
    assert "keeps its 4 finished trials in sqlite:///a.db; interrupted: trials 5, 6 (marked failed, their 3 " \
           "measured load levels kept in their records, their flags queued again)." in two
