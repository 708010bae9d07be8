"""`autotune run` end to end on the sim engine, launched as a real subprocess over HTTP (`--sim-server`: the
launcher's whole lifecycle) and in-process (the default), and resuming a study."""
from __future__ import annotations

import io
import json

import optuna
import pytest
from rich.console import Console

from autotune import records
from autotune.cli import main
from autotune.cli.run import print_summary
from autotune.profile import read_profile

pytestmark = pytest.mark.slow


def run_json(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_other_finalists_are_reported_with_what_the_verdict_compared(capsys, tmp_path):
    """Two finalists re-measured at the same figures could be judged apart (each run is carried to the limit along
    its own trial's curve) with nothing on the console to show why: each finalist's throughput at the limit and
    standing are reported."""
    url = f"sqlite:///{tmp_path}/s.db"
    args = ["run", "--model", "flash", "--engine", "sim", "--storage", url, "--study", "f", "--p99-ms", "800",
            "--p99-metric", "e2el", "--repeats", "2", "--trials", "6", "--workload", "random:256:64:0.2"]
    code, out, err = run_json(capsys, *args, "--json")
    assert code == 0, err
    report = json.loads(out)
    study = optuna.load_study(study_name="f", storage=url)
    selection = records.read_selection(study)
    others = {r.trial_number for r in records.read_remeasurements(study)}
    baselines = {b["trial"] for b in report["baselines"].values()}
    finalists = {f["trial"]: f for f in report["finalists"]}
    assert finalists and set(finalists) == others - baselines - {report["best"]["trial"]}
    equal = selection.verdict.split(";")[0].removeprefix("equal within noise: ") \
        if selection.verdict.startswith("equal within noise") else ""
    for number, f in finalists.items():
        assert (f["standing"] == "equal within noise") == (f"trial {number}" in equal.split(", ")), f
        assert f["output_tok_s_at_limit"] > 0 and f["runs_at_limit"] == 3
    console = io.StringIO()
    print_summary(report, Console(file=console, width=80, soft_wrap=True))  # as `run` prints it
    shown = [line for line in console.getvalue().splitlines() if line.startswith("  finalist trial ")]
    assert len(shown) == len(finalists) and all("tok/s at the limit (3 runs from concurrency" in x for x in shown)


def test_run_writes_profile_and_resume_accumulates(capsys, tmp_path):
    url = f"sqlite:///{tmp_path}/studies/autotune.db"
    args = ["run", "--model", "flash", "--gpus", "1", "--p99-ms", "500", "--engine", "sim", "--storage", url,
            "--study", "e2e", "--trials", "3", "--workload", "random:512:64", "--top-k", "1", "--repeats", "1",
            "--sim-server", "--sim-time-scale", "100", "--max-concurrency", "32", "--json"]
    code, out, err = run_json(capsys, *args)
    assert code == 0, err
    report = json.loads(out)  # exactly one JSON object on stdout
    assert report["best"]["flags"] and report["best"]["vllm_serve_cmd"].startswith("vllm serve")
    assert report["output_tok_s"] > 0 and report["ttft_ms"]["p99"] <= 500
    assert set(report["baselines"]) == {"vllm-defaults", "seed-profile"}
    profile = read_profile(report["profile_path"])  # the typed profile: unknown or missing keys would fail
    assert profile.objective.limits_ms == {"ttft": 500.0} and profile.hardware.engine == "sim"
    assert profile.study.storage == url
    trial_logs = list((tmp_path / "studies" / "e2e" / "trials").glob("*/server.log"))
    assert len(trial_logs) >= 2 and "GPU KV cache size" in trial_logs[0].read_text()
    levels0 = sorted((tmp_path / "studies" / "e2e" / "trials" / "0" / "levels").glob("*.jsonl.gz"))
    assert levels0 and levels0[0].name.startswith("00-c")  # every level's requests are kept
    assert list((tmp_path / "studies" / "e2e" / "remeasure").glob("*/levels/00-c*.jsonl.gz"))

    study = optuna.load_study(study_name="e2e", storage=url)
    first = [t for t in records.read_trials(study) if t.complete]
    assert len(first) == 3
    assert {t.baseline for t in first} >= {"vllm-defaults", "seed-profile"}
    # a served engine: the first trial starts at half the sim's predicted knee (32, the cap), later ones at the best
    # knee so far
    assert first[0].result.levels[0].concurrency == 16
    assert first[1].result.levels[0].concurrency == first[0].result.concurrency
    # the prediction it started from is kept in the trial's folder, its levels included
    prediction = tmp_path / "studies" / "e2e" / "trials" / "0" / "sim-prediction"
    assert (prediction / "server.log").is_file() and list((prediction / "levels").glob("*-c*.jsonl.gz"))
    for t in first:
        assert study.trials[t.number].constraints == {"p99_ttft_minus_limit_ms": pytest.approx(
            t.result.constraints_ms({"ttft": 500.0})["ttft"])}
        assert t.result.levels or t.result.failure_class
    # a served engine's levels and re-measurements say what the host's CPUs did meanwhile (the sim server keeps
    # about one CPU of ours busy)
    hosts = [lv.host_cpu for t in first for lv in t.result.levels]
    assert hosts and all(h is not None and h.cpus >= 1 and 0 <= h.others_cores <= h.busy_cores for h in hosts)
    remeasured = [m for r in records.read_remeasurements(study) for m in r.repeats]
    assert remeasured and all(m.host_cpu is not None for m in remeasured)

    code, out, err = run_json(capsys, *args[:-1][:args.index("--trials")], "--trials", "2",
                              *args[args.index("--trials") + 2:])
    assert code == 0, err
    study = optuna.load_study(study_name="e2e", storage=url)
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 5
    assert [t.number for t in first] == [t.number for t in study.trials[:3]]

    # each invocation is a run record: the trials it ran and its GPU time; the selection keeps the winner's figures.
    # Seeded alike, the resumed sampler proposed the first run's first sampled point again; its seed now follows the
    # study's size, and it draws new points.
    assert records.not_run(records.read_trials(study)) == []
    runs = records.read_runs(study)
    assert [r.trials_run for r in runs] == [3, 2] and all(r.gpu_minutes > 0 and r.engine == "sim" for r in runs)
    assert runs[0].started_at < runs[1].started_at and runs[1].vllm_version is None
    assert all(r.made_selection for r in runs)  # each ran its final comparison: an export's header names the last
    selection = records.read_selection(study)
    profile = read_profile(json.loads(out)["profile_path"])
    tput = selection.winner_output_tok_s
    assert selection.winner_trial == profile.study.trial_number and selection.winner_concurrency == profile.concurrency
    assert (tput.mean, tput.half_width, tput.n) == (profile.metrics.output_tok_s.mean,
                                                  profile.metrics.output_tok_s.half_width,
                                                  profile.metrics.output_tok_s.n)
    assert selection.winner_p99_ms["ttft"] == profile.metrics.p99["ttft"].mean_ms
    assert selection.winner_at_limit_tok_s.mean == pytest.approx(profile.metrics.output_tok_s_at_limit.mean)

    code, out, err = run_json(capsys, "best", "--study", "e2e", "--storage", url, "--json")
    best = json.loads(out)["best"]
    assert code == 0 and best["flags"]
    code, out, err = run_json(capsys, "studies", "--storage", url, "--json")
    listed = json.loads(out)["studies"][0]
    assert code == 0 and listed["trials"] == 5 and listed["not_run"] == []
    # the list's winner is the selection's, as `best` gives it, not the largest single trial figure
    assert listed["winner"]["trial"] == best["trial"] == selection.winner_trial
    assert listed["winner"]["output_tok_s_at_limit"] == pytest.approx(selection.winner_at_limit_tok_s.mean)
    assert listed["winner"]["output_tok_s"] == pytest.approx(tput.mean)


def test_resume_with_another_limit_is_refused(capsys, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    common = ["run", "--model", "flash", "--engine", "sim", "--storage", url, "--study", "x", "--trials", "0",
              "--repeats", "0", "--top-k", "0"]
    main([*common, "--p99-ms", "500", "--json"])
    capsys.readouterr()
    code, out, err = run_json(capsys, *common, "--p99-ms", "300")
    assert code == 2 and "was created with limits_ms.ttft=500.0, not 300.0" in err, err


def test_resume_with_another_sim_model_is_refused(capsys, tmp_path):
    """A sim study's figures rest on its card's constants and its noise model: a card file rewritten by a new
    calibration, or another --sim-noise, between two runs of one study is refused, naming what changed."""
    url = f"sqlite:///{tmp_path}/s.db"
    card = tmp_path / "host.yaml"
    card.write_text("base: h200\neager_step_overhead_ms: 6.0\n")
    common = ["run", "--model", "flash", "--engine", "sim", "--storage", url, "--study", "x", "--trials", "0",
              "--repeats", "0", "--top-k", "0", "--p99-ms", "500", "--gpu-type", str(card)]
    for _ in range(2):  # the same card: resumes (no trial runs; the queued baselines are not counted as run)
        code, out, err = run_json(capsys, *common, "--json")
        assert code == 3 and json.loads(out)["trials"] == 0 and "in 0 trials of study 'x'" in err, err
    card.write_text("base: h200\neager_step_overhead_ms: 5.0\n")
    code, out, err = run_json(capsys, *common)
    assert code == 2 and "was created with sim_model.card.eager_step_overhead_ms=6.0, not 5.0" in err, err
    card.write_text("base: h200\neager_step_overhead_ms: 6.0\n")
    code, out, err = run_json(capsys, *common, "--sim-noise", "h200")
    assert code == 2 and "was created with sim_model.noise='off', not {'latency_cv'" in err, err


def test_resume_on_a_rewritten_workload_file_is_refused(capsys, tmp_path):
    """A dataset's content is the workload: resuming a jsonl study after its file was rewritten at the same path
    was taken, putting two workloads' figures under one study."""
    url = f"sqlite:///{tmp_path}/s.db"
    data = tmp_path / "w.jsonl"
    data.write_text('{"prompt": "hello hello", "output_len": 8}\n')
    common = ["run", "--model", "flash", "--engine", "sim", "--storage", url, "--study", "x", "--trials", "0",
              "--repeats", "0", "--top-k", "0", "--p99-ms", "500", "--workload", f"jsonl:{data}"]
    for _ in range(2):  # the same file: resumes
        code, out, err = run_json(capsys, *common, "--json")
        assert code == 3 and "in 0 trials of study 'x'" in err, err
    data.write_text('{"prompt": "hello hello hello hello", "output_len": 800}\n')
    code, out, err = run_json(capsys, *common)
    assert code == 2 and "was created with workload.sha256=" in err, err


def test_a_set_flag_holds_in_the_baselines_too(capsys, tmp_path):
    """--set fixes a flag in every trial: the seed profile ran its own kv-cache-dtype over the user's."""
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  max-num-seqs: {type: int, low: 128, high: 1024, step: 128}\n")
    code, out, err = run_json(capsys, "run", "--model", "flash", "--engine", "sim", "--storage",
                              f"sqlite:///{tmp_path}/s.db", "--out", str(tmp_path), "--trials", "2", "--repeats", "0",
                              "--top-k", "0", "--p99-ms", "500", "--workload", "random:256:32",
                              "--max-concurrency", "32", "--space", str(space), "--set", "kv-cache-dtype=auto",
                              "--json")
    assert code == 0, err
    baselines = json.loads(out)["baselines"]
    assert baselines["seed-profile"]["flags"]["kv-cache-dtype"] == "auto"
    assert baselines["vllm-defaults"]["flags"]["kv-cache-dtype"] == "auto"


def test_no_feasible_config_exits_3(capsys, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    code, out, err = run_json(capsys, "run", "--model", "flash", "--engine", "sim", "--storage", url,
                              "--p99-ms", "1", "--trials", "2", "--workload", "random:512:16", "--repeats", "0",
                              "--start-concurrency", "1", "--json")
    assert code == 3, err
    assert json.loads(out)["best"] is None
    study = optuna.load_study(study_name=optuna.get_all_study_names(url)[0], storage=url)
    assert len(study.trials) == 2  # everything recorded


def test_with_no_winner_run_and_best_say_why_in_the_same_words(capsys, tmp_path):
    """Once "No configuration met the limits (no configuration met the limits in re-measurement)" and "in 1 trials",
    with nothing re-measured."""
    url = f"sqlite:///{tmp_path}/s.db"
    common = ["run", "--model", "flash", "--engine", "sim", "--storage", url, "--workload", "random:512:16"]
    code, out, err = run_json(capsys, *common, "--study", "tight", "--p99-ms", "1", "--trials", "1")
    why = "no finalist met the limits at any load its trial measured"
    assert code == 3 and f"No winner: {why}." in out and "in 1 trial of study 'tight'" in err, err
    code, out, err = run_json(capsys, *common, "--study", "none-run", "--p99-ms", "500", "--trials", "0", "--json")
    assert code == 3 and json.loads(out)["verdict"] == "no trial has finished", err
    for study, said in (("tight", why), ("none-run", "no trial has finished")):
        code, out, err = run_json(capsys, "best", "--study", study, "--storage", url)
        assert code == 3 and f"study {study!r} has no winner: {said} (" in err, err
        code, out, err = run_json(capsys, "best", "--study", study, "--storage", url, "--json")
        assert code == 3 and json.loads(out) == {"study": study, "best": None}, err


def test_the_profile_states_the_winners_figures_as_best_does(capsys, tmp_path):
    """The profile's throughput at the limit once had its mean and values only, where `best` showed its interval."""
    url = f"sqlite:///{tmp_path}/s.db"
    code, out, err = run_json(capsys, "run", "--model", "flash", "--engine", "sim", "--storage", url, "--study", "p",
                              "--p99-ms", "800", "--p99-metric", "e2el", "--repeats", "2", "--trials", "3",
                              "--workload", "random:256:64:0.2", "--json")
    assert code == 0, err
    profile = read_profile(json.loads(out)["profile_path"])
    code, out, err = run_json(capsys, "best", "--study", "p", "--storage", url, "--json")
    best = json.loads(out)["best"]
    assert code == 0 and best["trial"] == profile.study.trial_number
    at_limit = profile.metrics.output_tok_s_at_limit.model_dump()
    assert len(at_limit.pop("values")) == best["output_tok_s_at_limit"]["n"] == 3
    assert at_limit == best["output_tok_s_at_limit"] and set(at_limit) >= {"std", "min", "max", "half_width"}
    assert profile.metrics.output_tok_s.model_dump() == best["output_tok_s_interval"]
    assert profile.verdict == best["verdict"]
    assert {k: g.model_dump() for k, g in profile.gains.items()} == best["gains"]


def test_timeout_ends_the_last_trial_with_the_levels_it_measured(capsys, tmp_path):
    # The sim server runs 4x faster than real time, so the first trial's levels take seconds each: the 20 s
    # budget ends its load search early. No level runs past the deadline; the trial keeps its feasible levels.
    url = f"sqlite:///{tmp_path}/s.db"
    code, out, err = run_json(capsys, "run", "--model", "flash", "--engine", "sim", "--storage", url, "--study", "dl",
                              "--p99-ms", "500", "--trials", "5", "--timeout", "20", "--top-k", "0", "--repeats", "0",
                              "--sim-server", "--sim-time-scale", "4", "--workload", "random:1024:256",
                              "--start-concurrency", "8",
                              "--out", str(tmp_path / "out"))
    assert code == 0, err
    assert "cut short by --timeout" in out + err  # the console says so
    trial = records.read_trial(optuna.load_study(study_name="dl", storage=url).trials[0])
    assert trial.complete and trial.result.stop_reason == "deadline"
    assert trial.feasible and trial.value > 0 and trial.result.levels
    profile = read_profile(tmp_path / "out" / "dl" / "profile.yaml")
    assert profile.search_stop_reason == "deadline" and profile.concurrency == trial.result.concurrency


def test_several_limits_end_to_end(capsys, tmp_path):
    """--slo ttft=...,itl=...: one Optuna constraint per limit, every limit in the records, the report and the
    profile; a resume with other limits is refused; a limit nothing can meet exits 3 and says which limit broke."""
    from autotune.study import constraint_key

    url = f"sqlite:///{tmp_path}/s.db"
    limits = {"ttft": 500.0, "itl": 200.0}
    common = ["run", "--model", "flash", "--engine", "sim", "--storage", url, "--workload", "random:512:64",
              "--sim-time-scale", "20"]
    code, out, err = run_json(capsys, *common, "--slo", "ttft=500,itl=200", "--trials", "2", "--top-k", "1",
                              "--repeats", "1", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["limits_ms"] == limits
    assert report["ttft_ms"]["p99"] <= 500 and report["itl_ms"]["p99"] <= 200
    profile = read_profile(report["profile_path"])
    assert profile.objective.limits_ms == limits and set(profile.metrics.p99) == {"ttft", "itl"}
    assert all(p.mean_ms is not None and p.mean_ms <= limits[m] for m, p in profile.metrics.p99.items())

    name = report["study"]
    assert name == "flash-1gpu-p99ttft500ms-itl200ms"
    study = optuna.load_study(study_name=name, storage=url)
    trials = [t for t in records.read_trials(study) if t.complete]
    assert len(trials) == 2
    for t in trials:
        constraints = study.trials[t.number].constraints
        assert set(constraints) == {constraint_key("ttft"), constraint_key("itl")}  # one per limit
        assert t.feasible == all(v <= 0 for v in constraints.values())  # Optuna agrees with the verdict
        assert all(set(lv.p99) == {"ttft", "itl"} for lv in t.result.levels)
        for lv in t.result.levels:  # a level is feasible only when every limit holds
            assert not lv.feasible or all(lv.p99[m].judged_ms <= limit for m, limit in limits.items())
    assert records.read_fingerprint(study).limits_ms == limits

    code, out, err = run_json(capsys, *common, "--study", name, "--slo", "ttft=500,itl=100", "--trials", "0")
    assert code == 2 and "was created with limits_ms.itl=200.0, not 100.0" in err, err

    # an ITL limit no level can meet: TTFT holds, ITL breaks; the constraints say which
    code, out, err = run_json(capsys, *common, "--study", "tight", "--p99-ms", "10000", "--slo", "itl=1",
                              "--trials", "1", "--repeats", "0", "--start-concurrency", "1", "--json")
    assert code == 3, err
    trial = optuna.load_study(study_name="tight", storage=url).trials[0]
    result = records.read_trial(trial).result
    assert result.failure_class == "no_feasible_load"
    assert "P99 itl" in result.failure_reason and "ttft" not in result.failure_reason
    assert trial.constraints[constraint_key("ttft")] < 0 < trial.constraints[constraint_key("itl")]


def test_a_baseline_is_remeasured_right_after_its_trial(tmp_path):
    """The baselines are finalists whatever the search finds: their fresh-server re-measurements run before the
    first searched trial, and the final comparison does not repeat them."""
    from autotune.config import RunOptions, build_study_config, choose_engine
    from autotune.progress import Progress
    from autotune.storage import open_storage
    from autotune.study import run_study

    class Order(Progress):
        def __init__(self) -> None:
            self.events: list[tuple[str, int]] = []

        def trial_started(self, trial, flags, baseline="") -> None:
            self.events.append(("trial", trial))

        def remeasure_started(self, trial, repeat, of, concurrency, baseline) -> None:
            self.events.append(("remeasure", trial))

    opts = RunOptions(model="flash", engine="sim", p99_ms=500, storage=f"sqlite:///{tmp_path}/s.db", study="early",
                      trials=3, repeats=2, top_k=1, workload="random:256:32", max_concurrency=32,
                      out=str(tmp_path / "out"))
    cfg = build_study_config(opts, choose_engine("sim"))
    order = Order()
    outcome = run_study(cfg, open_storage(cfg.storage_url, exclusive=True), order)
    assert order.events[:6] == [("trial", 0), ("remeasure", 0), ("remeasure", 0),
                                ("trial", 1), ("remeasure", 1), ("remeasure", 1)], order.events
    assert order.events.count(("remeasure", 0)) == 2  # not again at the end
    assert all(len(c.repeats) == 2 for c in outcome.selection.candidates if c.concurrency is not None)


def test_sampler_seed_gives_one_study_per_seed_and_new_points_on_resume_and_per_worker():
    """A new study's run keeps --seed; a resumed run's seed follows the study's size (the same history, the same
    points); workers joining at once do not draw each other's points."""
    from autotune.study import sampler_seed
    assert sampler_seed(7, 0, worker=False) == 7
    assert sampler_seed(7, 5, worker=False) == sampler_seed(7, 5, worker=False) != sampler_seed(7, 6, worker=False)
    assert sampler_seed(7, 5, worker=True) != sampler_seed(7, 5, worker=True)
