"""The serve load: where a deployment's P99s stay within the limits in most runs, below the knee a study chose, from
the trial's load curve and the run-to-run P99 spread; in the profile, `run`'s summary and `bench --profile`."""
from __future__ import annotations

import json
import math
import subprocess

import pytest
import yaml

from autotune.cli import main
from autotune.config import REAL_GPU_P99_RUN_CV
from autotune.profile import ServeLoad, read_profile, write_profile
from autotune.records import Measurement, SelectionRecord, ServeLoadRecord
from autotune.selection import Candidate, LoadCurve, serve_load
from autotune.winner import describe_serve
from tests.test_run_summary import CURVE, SLOWER, _study, _trial

LIMIT = {"ttft": 500.0}
Z_95 = 1.6448536269514722  # the one-sided normal quantile at 0.95 (confidence 0.9)
Z_975 = 1.959963984540054  # at 0.975: each of two limits' share of the 5% (Bonferroni)
# (concurrency, output tok/s, P99 TTFT ms): each figure rises with load, so the curve is the levels as they are
LEVELS = [(32, 2000.0, 150.0), (64, 3000.0, 250.0), (96, 3500.0, 420.0), (128, 3800.0, 650.0)]


def winner(levels=LEVELS, concurrency=96, runs=((3500.0, 420.0), (3600.0, 480.0))) -> Candidate:
    """The winner at ``concurrency``: its trial's run there (the level's figures) and one fresh-server run."""
    (search_tok_s, search_ms), *fresh = runs
    curve = LoadCurve.from_levels([(c, t, {"ttft": p}) for c, t, p in levels])
    return Candidate(1, {}, concurrency, search_tok_s, {"ttft": search_ms}, curve=curve,
                     repeats=[Measurement(t, {"ttft": p}) for t, p in fresh])


def by_hand(cv: float, levels=LEVELS, concurrency=96, runs=((3500.0, 420.0), (3600.0, 480.0)),
            limit_ms: float = LIMIT["ttft"], z: float = Z_95) -> tuple[int, float, float]:
    """The serve load, its throughput and its P99, computed from the definition: the levels' P99s shifted through
    the runs' geometric mean, their crossing of limit / exp(z cv sqrt(1 + 1/n)) interpolated in log load, rounded
    down; the runs' mean throughput times the levels' throughput ratio between that load and ``concurrency``, and
    the shifted P99 there, in log-log."""
    loads = [c for c, _, _ in levels]
    level_ms = {c: p for c, _, p in levels}
    level_tok_s = {c: t for c, t, _ in levels}
    expected_ms = math.prod(p for _, p in runs) ** (1 / len(runs))
    margin_ms = limit_ms / math.exp(z * cv * math.sqrt(1 + 1 / len(runs)))
    shifted = {c: level_ms[c] * expected_ms / level_ms[concurrency] for c in loads}
    lo, hi = next((a, b) for a, b in zip(loads, loads[1:]) if shifted[a] <= margin_ms < shifted[b])
    x = math.log(lo) + (math.log(margin_ms / shifted[lo]) / math.log(shifted[hi] / shifted[lo])
                        * math.log(hi / lo))
    serve = min(concurrency, math.floor(math.exp(x)))
    lo, hi = max(c for c in loads if c <= serve), min(c for c in loads if c >= serve)

    def at_serve(y: dict[int, float]) -> float:
        return y[lo] if lo == hi else math.exp(math.log(y[lo]) + math.log(serve / lo) / math.log(hi / lo)
                                               * math.log(y[hi] / y[lo]))

    mean_tok_s = sum(t for t, _ in runs) / len(runs)
    return serve, mean_tok_s * at_serve(level_tok_s) / level_tok_s[concurrency], at_serve(shifted)


def test_the_serve_load_is_where_the_shifted_curve_meets_the_margin_the_spread_asks():
    """Runs of 420 and 480 ms at 96 (449 on average, geometrically) under 500 ms: a run there breaks the limit often.
    With the H200's 17.2% run-to-run spread, a run stays within 500 ms 19 times in 20 where the mean is 354 ms."""
    serve = serve_load(winner(), LIMIT, {"ttft": 0.172})
    concurrency, output_tok_s, p99_ms = by_hand(0.172)
    assert serve is not None and serve.concurrency == concurrency == 79
    assert serve.output_tok_s == pytest.approx(output_tok_s, rel=1e-9)
    assert serve.p99_ms["ttft"] == pytest.approx(p99_ms, rel=1e-9)
    assert serve.runs_within_limits == 0.95 and serve.p99_run_cv == {"ttft": 0.172}
    assert not serve.below_searched_loads
    # the P99 expected there is within the margin: 500 ms / exp(1.645 * 0.172 * sqrt(1.5)) = 353.6 ms
    assert 340.0 < serve.p99_ms["ttft"] <= 500.0 / math.exp(Z_95 * 0.172 * math.sqrt(1.5))
    # runs far apart: their geometric mean, 423 ms, is what a run's P99 is expected at, not their mean, 440 ms
    apart = ((3500.0, 320.0), (3600.0, 560.0))
    spread_out = serve_load(winner(runs=apart), LIMIT, {"ttft": 0.172})
    assert spread_out is not None and spread_out.p99_ms["ttft"] == pytest.approx(by_hand(0.172, runs=apart)[2])


def test_a_wider_run_to_run_spread_gives_a_lower_serve_load():
    loads = [serve_load(winner(), LIMIT, {"ttft": cv}).concurrency for cv in (0.05, 0.10, 0.172, 0.25)]
    assert loads == [by_hand(cv)[0] for cv in (0.05, 0.10, 0.172, 0.25)]
    assert loads == sorted(loads, reverse=True) and len(set(loads)) == 4, loads
    # a higher confidence asks more margin too
    assert serve_load(winner(), LIMIT, {"ttft": 0.172}, confidence=0.98).concurrency < loads[2]


def test_the_serve_load_is_never_above_the_chosen_load_nor_below_one():
    """A P99 far below its limit: the shifted curve meets the margin above 96, where the study did not choose."""
    low = serve_load(winner(runs=((3500.0, 200.0),)), LIMIT, {"ttft": 0.01})
    assert low is not None and low.concurrency == 96 and low.output_tok_s == pytest.approx(3500.0)
    # chosen at 2, over the margin (156 ms): the curve meets it at 1.25, rounded down to 1
    one = serve_load(winner([(1, 50.0, 100.0), (2, 90.0, 400.0)], 2, ((90.0, 400.0),)), LIMIT, {"ttft": 0.5})
    assert one is not None and one.concurrency == 1


def test_a_serve_load_further_below_the_searched_loads_than_their_resolution_is_flagged():
    """The search measured 96 and 128 only (a trial that started at the best knee so far): a serve load more than
    the search's 1.2x below 96 is the curve's slope carried down, not a measurement."""
    levels = LEVELS[2:]
    near = serve_load(winner(levels), LIMIT, {"ttft": 0.172})
    far = serve_load(winner(levels), LIMIT, {"ttft": 0.3})
    assert near is not None and 96 / 1.2 <= near.concurrency < 96 and not near.below_searched_loads
    assert far is not None and far.concurrency < 96 / 1.2 and far.below_searched_loads


def test_with_several_limits_the_tightest_margin_sets_the_serve_load():
    """P99 ITL a tenth of P99 TTFT at every level and in every run: under 40 ms with its 8.6% spread it binds as
    P99 TTFT would under 400 ms with that spread. Two limits share the 5% of runs allowed over one: each margin at
    the 97.5% quantile, so that both hold in 19 runs of 20."""
    levels = [(c, t, {"ttft": p, "itl": p / 10}) for c, t, p in LEVELS]
    both = Candidate(1, {}, 96, 3500.0, {"ttft": 420.0, "itl": 42.0}, curve=LoadCurve.from_levels(levels),
                     repeats=[Measurement(3600.0, {"ttft": 480.0, "itl": 48.0})])
    cv = {"ttft": 0.172, "itl": 0.086}
    ttft_bound = serve_load(both, {"ttft": 500.0, "itl": 60.0}, cv)
    itl_bound = serve_load(both, {"ttft": 500.0, "itl": 40.0}, cv)
    assert ttft_bound is not None and ttft_bound.concurrency == by_hand(0.172, z=Z_975)[0]
    assert ttft_bound.concurrency < serve_load(winner(), LIMIT, cv).concurrency == by_hand(0.172)[0]  # TTFT alone
    assert itl_bound is not None and itl_bound.concurrency < ttft_bound.concurrency
    assert itl_bound.concurrency == by_hand(0.086, limit_ms=400.0, z=Z_975)[0] \
        != by_hand(0.172, limit_ms=400.0, z=Z_975)[0]
    assert ttft_bound.p99_ms["ttft"] <= 500.0 / math.exp(Z_975 * 0.172 * math.sqrt(1.5))
    assert itl_bound.p99_ms["itl"] <= 40.0 / math.exp(Z_975 * 0.086 * math.sqrt(1.5))
    assert set(itl_bound.p99_ms) == {"ttft", "itl"} and itl_bound.p99_run_cv == cv


def test_nothing_to_add_without_a_curve_a_load_or_a_run_to_run_spread():
    assert serve_load(winner(), LIMIT, {}) is None  # the noiseless sim: its runs do not spread
    assert serve_load(winner(), LIMIT, {"itl": 0.086}) is None  # a spread of no limited metric
    no_curve = winner()
    no_curve.curve = None
    assert serve_load(no_curve, LIMIT, REAL_GPU_P99_RUN_CV) is None
    no_load = winner()
    no_load.concurrency = None
    assert serve_load(no_load, LIMIT, REAL_GPU_P99_RUN_CV) is None


def test_the_serve_line_says_when_the_profiles_own_load_holds_and_when_the_load_is_an_extrapolation():
    own = ServeLoad(concurrency=96, runs_within_limits=0.95, output_tok_s=3500.0, p99_ms={"ttft": 250.0},
                    p99_run_cv={"ttft": 0.172}, below_searched_loads=False)
    assert describe_serve(own, 96, 3600.0) == ("serve at concurrency ≤ 96, the load it was chosen at: its P99s stay "
                                              "within the limits in 19 runs of 20 (P99 ttft 250 ms expected there, "
                                              "run-to-run spread 17.2%)")
    far = own.model_copy(update={"concurrency": 60, "output_tok_s": 2700.0, "below_searched_loads": True})
    assert describe_serve(far, 96, 3000.0).endswith(
        ": about 2,700 output tok/s, 10.0% below its throughput at the limit; below the loads its search measured: an "
        "extrapolation along its load curve")
    assert describe_serve(far, 96, 2600.0).endswith(", no less than its throughput at the limit; below the loads its "
                                                    "search measured: an extrapolation along its load curve")


def _profiles(p99_run_cv, confidence=0.9):
    tuned = _trial(5, CURVE, 181)
    defaults = _trial(0, SLOWER, 64, baseline="vllm-defaults", flags={})
    remeasured = {5: [Measurement(5050.0, {"ttft": 470.0})], 0: [Measurement(2750.0, {"ttft": 310.0})]}
    return _study([tuned, defaults], remeasured, p99_run_cv=p99_run_cv, confidence=confidence)


def test_the_profile_keeps_its_serve_load_and_one_without_reads_as_before(tmp_path):
    _, _, gpu = _profiles({"ttft": 0.172})
    _, _, sim = _profiles(None)
    assert gpu.serve is not None and sim.serve is None and gpu.autotune_profile == 9
    for profile in (gpu, sim):
        assert read_profile(write_profile(profile, tmp_path / "profile.yaml")) == profile
    data = yaml.safe_load((tmp_path / "profile.yaml").read_text())
    assert data["serve"] is None
    # a profile written before version 9 has no serve section
    del data["serve"]
    (tmp_path / "v8.yaml").write_text(yaml.safe_dump({**data, "autotune_profile": 8}))
    old = read_profile(tmp_path / "v8.yaml")
    assert old.serve is None and old.autotune_profile == 8


def test_run_says_where_to_serve_for_the_limits_to_hold_in_most_runs():
    """Runs of 480 and 470 ms at 181 under 500 ms: the expected 475 ms falls to the 354 ms margin at 130 along the
    levels' curve (346 ms at 128, 475 at 181)."""
    out, _, profile = _profiles({"ttft": 0.172})
    serve = profile.serve
    assert serve is not None and serve.concurrency == 130
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("Best"))
    cost = 1 - serve.output_tok_s / profile.metrics.output_tok_s_at_limit.mean
    assert lines[at + 2] == (f"  serve at concurrency ≤ 130 for its P99s within the limits in 19 runs of 20 (P99 ttft "
                             f"{serve.p99_ms['ttft']:.0f} ms expected there, run-to-run spread 17.2%): about "
                             f"{serve.output_tok_s:,.0f} output tok/s, {cost:.1%} below its throughput at the limit")
    assert 0.05 < cost < 0.2
    noiseless, _, _ = _profiles(None)
    assert "serve at" not in noiseless
    # the study's --confidence sets the share of runs
    out, _, sure = _profiles({"ttft": 0.172}, confidence=0.95)
    assert sure.serve is not None and sure.serve.runs_within_limits == 0.975 and sure.serve.concurrency < 130
    assert "within the limits in 39 runs of 40 (" in out


@pytest.mark.slow  # a sim study with the H200's noise: about 5 s
def test_a_gpu_like_sim_study_writes_and_prints_its_serve_load(tmp_path, capsys):
    assert main(["run", "--model", "flash", "--gpus", "1", "--p99-ms", "200", "--gpu-type", "h200", "--sim-noise",
                 "h200", "--trials", "1", "--workload", "random:256:64",
                 "--storage", f"sqlite:///{tmp_path}/s.db"]) == 0
    out = capsys.readouterr().out
    profile = read_profile(tmp_path / "flash-1gpu-p99ttft200ms" / "profile.yaml")
    serve = profile.serve
    assert serve is not None and serve.concurrency < profile.concurrency and serve.runs_within_limits == 0.95
    assert serve.p99_run_cv == {"ttft": REAL_GPU_P99_RUN_CV["ttft"]}
    assert f"\n  serve at concurrency ≤ {serve.concurrency} for its P99s within the limits in 19 runs of 20 (P99 " \
           f"ttft {serve.p99_ms['ttft']:.0f} ms expected there, run-to-run spread 17.2%): about " \
           f"{serve.output_tok_s:,.0f} output tok/s, " in out
    # the study stores it with the verdict: `best`, `export`'s header and `compare` state it in the same words
    line = f"serve at concurrency ≤ {serve.concurrency} for its P99s within the limits in 19 runs of 20"
    storage = ["--storage", f"sqlite:///{tmp_path}/s.db"]
    assert main(["best", "--study", "flash-1gpu-p99ttft200ms", *storage]) == 0
    assert f"\n  {line}" in capsys.readouterr().out
    assert main(["best", "--study", "flash-1gpu-p99ttft200ms", "--json", *storage]) == 0
    assert json.loads(capsys.readouterr().out)["best"]["serve"]["concurrency"] == serve.concurrency
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    assert main(["export", "--study", "flash-1gpu-p99ttft200ms", *storage, "--to", str(repo), "--format", "sh"]) == 0
    assert f"\n# {line}" in next(repo.glob("*.sh")).read_text()
    assert main(["compare", *storage, "flash-1gpu-p99ttft200ms"]) == 0
    assert "serve load" in capsys.readouterr().out


def test_the_selection_record_keeps_the_serve_load_and_one_without_reads_as_before():
    serve = ServeLoadRecord(concurrency=130, runs_within_limits=0.95, output_tok_s=4600.0, p99_ms={"ttft": 352.0},
                            p99_run_cv={"ttft": 0.172}, below_searched_loads=False)
    record = SelectionRecord(5, "a verdict", winner_concurrency=181, winner_serve=serve)
    stored = json.loads(json.dumps(record.to_json()))
    assert SelectionRecord.from_json(stored) == record
    del stored["winner_serve"]  # a study selected before the serve load was kept
    assert SelectionRecord.from_json(stored).winner_serve is None


def test_no_serve_load_is_claimed_where_the_curve_does_not_bring_the_p99_down_to_its_margin():
    """One level searched, or a P99 curve flat below the chosen load: the curve cannot say where the expected 449 ms
    falls to the 354 ms margin. Its lowest load, with 449 ms expected there, is not where the P99s stay within the
    limits in 19 runs of 20 (about 7 in 10 at a 17.2% spread): no serve load is stated."""
    cv = {"ttft": 0.172}
    assert serve_load(winner([(96, 3500.0, 420.0)]), LIMIT, cv) is None
    assert serve_load(winner([(64, 3000.0, 420.0), (96, 3500.0, 420.0)]), LIMIT, cv) is None
    # chosen at 1, far over the margin: no load below it to serve at
    assert serve_load(winner([(1, 50.0, 400.0), (2, 90.0, 800.0)], 1, ((50.0, 490.0),)), LIMIT, {"ttft": 0.5}) is None
    # where the curve does reach the margin, the P99 expected at the serve load is within it
    found = serve_load(winner(), LIMIT, cv)
    assert found is not None and found.p99_ms["ttft"] <= 500.0 / math.exp(Z_95 * 0.172 * math.sqrt(1.5)) * (1 + 1e-9)
