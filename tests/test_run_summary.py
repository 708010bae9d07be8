"""`run`'s summary states the winner as `best` and `export` do: the same figures, the same interval, the same words,
from the same records (a selection, its stored record, the profile), without a study run end to end."""
from __future__ import annotations

import io
import math
from dataclasses import replace
from types import SimpleNamespace

import optuna
from rich.console import Console

from autotune import records
from autotune.cli.run import print_summary, run_report
from autotune.models import resolve_model
from autotune.profile import Profile, build_profile
from autotune.records import LevelRecord, Measurement, P99Record, TrialResult
from autotune.selection import select_winner
from autotune.study import _candidate, baseline_summary, finalist_summary, selection_record
from autotune.winner import StudyRecords, find_winner

LIMIT = {"ttft": 500.0}


def _level(c: int, tok_s: float, p99: float) -> LevelRecord:
    return LevelRecord(concurrency=c, output_tok_s=tok_s, total_tok_s=tok_s * 3, request_s=1.0,
                       p99={"ttft": P99Record(p99, p99 * 0.9, p99 * 1.1, p99)}, runs=1, feasible=p99 <= 500,
                       p99_ttft_ms=p99, p99_tpot_ms=20.0, p99_itl_ms=25.0, p99_e2el_ms=9000.0,
                       completed=3 * c, failed=0, duration_s=60.0, wall_s=1.0, status="ok")


def _trial(number: int, levels: tuple[tuple[int, float, float], ...], concurrency: int, baseline: str = "",
           flags: dict | None = None) -> records.TrialRecord:
    lv = tuple(_level(*level) for level in levels)
    chosen = next(x for x in lv if x.concurrency == concurrency)
    result = TrialResult(flags=flags if flags is not None else {"max-num-seqs": 256}, feasible=True,
                         output_tok_s=chosen.output_tok_s, concurrency=concurrency,
                         best_metrics={"ttft_ms": {"p99": chosen.p99_ttft_ms}}, levels=lv, engine_wall_s=10.0)
    return records.TrialRecord(number, optuna.trial.TrialState.COMPLETE, baseline, False, result)


CURVE = ((64, 3000.0, 200.0), (128, 4500.0, 350.0), (181, 5000.0, 480.0), (215, 5200.0, 700.0))
SLOWER = ((64, 2800.0, 300.0), (128, 3800.0, 600.0))  # vLLM's defaults, their knee lower


def _summary(trials: list[records.TrialRecord], remeasured: dict[int, list[Measurement]],
             steps: dict[int, list[int]] | None = None, p99_run_cv: dict[str, float] | None = None) -> tuple[str, str]:
    """``run``'s printed summary and `best`'s figures (the Winner that best and export read), for finalists re-measured
    with ``remeasured`` (by trial, each list's runs in order; ``steps``: the loads a finalist stepped down to first);
    ``p99_run_cv``: the study's run-to-run P99 spread (a GPU study's; none: the noiseless sim's)."""
    out, best, _ = _study(trials, remeasured, steps, p99_run_cv)
    return out, best


def _study(trials: list[records.TrialRecord], remeasured: dict[int, list[Measurement]],
           steps: dict[int, list[int]] | None = None,
           p99_run_cv: dict[str, float] | None = None, confidence: float = 0.9) -> tuple[str, str, Profile]:
    """:func:`_summary`'s two, and the profile the study wrote (``confidence``: the study's --confidence)."""
    candidates = []
    for t in trials:
        cand = _candidate(t)
        for load in (steps or {}).get(t.number, []):
            cand.repeats = [remeasured[t.number].pop(0)]
            cand.move_to(load)
        cand.repeats = remeasured[t.number]
        candidates.append(cand)
    selection = select_winner(candidates, LIMIT, repeats=1, noise_floor=0.03)
    stored = selection_record(selection, LIMIT, 0.03, confidence, p99_run_cv or {})
    winner_trial = next(t for t in trials if t.number == selection.winner.trial_number)
    settings = SimpleNamespace(search=SimpleNamespace(limits_ms=LIMIT, p99_run_cv=p99_run_cv or {}),
                               model=resolve_model("flash"), engine="sim", gpu=SimpleNamespace(name="h200"), gpus=1,
                               workload=SimpleNamespace(describe=lambda: {"spec": "random:8:8", "seed": 0}),
                               sim_caveats=list, card_caveats=list)
    cfg = SimpleNamespace(settings=settings, noise_floor=0.03, confidence=confidence, preset="flash", study_name="s",
                          storage_url="sqlite:///x.db", baseline_layout_note=lambda: "")
    profile = build_profile(cfg, selection, stored, winner_trial, len(trials))
    outcome = SimpleNamespace(profile=profile, profile_path="s/profile.yaml", selection=selection,
                              baselines=baseline_summary(selection, cfg, trials),
                              finalists=finalist_summary(selection, cfg), n_trials_total=len(trials),
                              n_trials_run=len(trials), stopped_by="trials", left_out=(), not_run=())
    out = io.StringIO()
    print_summary(run_report(outcome, cfg), Console(file=out, width=80, soft_wrap=True))
    data = StudyRecords("s", None, trials, stored, [], {c.trial_number: c.remeasurement() for c in candidates})
    w = find_winner(data)
    assert w is not None
    w = replace(w, limits_ms=LIMIT)  # the study's fingerprint holds them
    return out.getvalue(), f"{w.throughput_text()}, {w.p99_text()}", profile


def test_the_best_line_gives_the_figures_and_the_interval_best_and_export_give():
    """`run` headlined the throughput at the chosen load with its interval (± 0, n=2 on the README's sim study),
    `best` and `export` the throughput at the limit with its own (± 279, 3 fresh-server runs): the same winner
    with two different intervals."""
    tuned = _trial(5, CURVE, 181)
    defaults = _trial(0, SLOWER, 64, baseline="vllm-defaults", flags={})
    out, best = _summary([tuned, defaults], {5: [Measurement(5050.0, {"ttft": 470.0})],
                                             0: [Measurement(2750.0, {"ttft": 310.0})]})
    [line] = [line for line in out.splitlines() if line.startswith("Best")]
    throughput, p99 = best.rsplit(", P99 ", 1)
    assert line.startswith(f"Best: trial 5 — {throughput}, P99 ttft 475 ms (mean of 480, 470; limit 500 ms)"), line
    assert "at the limit ±" in line and p99 == "ttft 475 ms (limit 500 ms)"


def test_a_step_down_says_how_many_runs_its_load_rests_on():
    """A re-measurement over the limit at 181 moved the winner to the midpoint 152, which its search never measured:
    its figures there rest on that one fresh server, while its throughput at the limit rests on three runs."""
    tuned = _trial(5, CURVE, 181)
    out, best = _summary([tuned], {5: [Measurement(5100.0, {"ttft": 560.0}), Measurement(4700.0, {"ttft": 420.0})]},
                         steps={5: [152]})
    assert "3 fresh-server runs); measured 4,700 at concurrency 152 (1 run there; stepped down from 181, where a " \
           "fresh server broke a limit)" in best
    assert best.split(", P99 ")[0] in out


def test_a_winner_over_its_limit_at_its_load_is_not_said_to_be_within_it():
    """A trial that started at the best knee so far has no level below its chosen one; its fresh server there drew
    high, and the mean P99 of its two runs (480 and 540 ms) is over the limit. It still meets the limit a little
    lower (every run's knee within the search's 1.2x), but `run` printed "P99 ttft 510 ms ≤ 500 ms"."""
    tuned = _trial(5, ((181, 5000.0, 480.0), (215, 5200.0, 700.0)), 181)
    defaults = _trial(0, SLOWER, 64, baseline="vllm-defaults", flags={})
    out, best = _summary([tuned, defaults], {5: [Measurement(5000.0, {"ttft": 540.0})],
                                             0: [Measurement(2750.0, {"ttft": 310.0})]})
    [line] = [line for line in out.splitlines() if line.startswith("Best")]
    assert "≤" not in line and "P99 ttft 510 ms (mean of 480, 540; over its 500 ms limit at this load: its knee " \
                               "lies below it)" in line, line
    assert best.endswith("P99 ttft 510 ms (over its 500 ms limit at this load: its knee lies below it)")
    [note] = [line for line in out.splitlines() if line.startswith("note: at concurrency 181")]
    assert note == ("note: at concurrency 181 the winner's P99 ttft (510 ms on average over its runs there) is over "
                    "its 500 ms limit: it met the limits because each run's knee lies within the search's resolution "
                    "below that load (concurrency 175 to 184, 180 on average), where its throughput at the limit is; "
                    "serve it below concurrency 181")


def test_a_baseline_whose_fresh_servers_failed_is_said_so_not_to_miss_a_limit():
    """vLLM's defaults met the limit in their search; their re-measurement's server did not start. The summary said
    "misses a limit" and "the winner's gain is unbounded (the baseline met no limit)"."""
    tuned = _trial(5, CURVE, 181)
    defaults = _trial(0, SLOWER, 64, baseline="vllm-defaults", flags={})
    failed = Measurement(math.nan, {"ttft": math.nan}, failure_class="oom", failure_reason="CUDA out of memory")
    out, _ = _summary([tuned, defaults], {5: [Measurement(5050.0, {"ttft": 470.0})], 0: [failed]})
    [line] = [line for line in out.splitlines() if "against vllm-defaults" in line]
    assert line == "  against vllm-defaults (trial 0): its fresh-server re-measurements failed: oom (not compared)"
