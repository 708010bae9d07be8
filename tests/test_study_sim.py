"""`autotune run` end to end on the sim engine, launched as a real subprocess over HTTP (`--sim-server`: the
launcher's whole lifecycle) and in-process (the default), and resuming a study."""
from __future__ import annotations

import json

import optuna
import pytest
import yaml

from autotune.cli import main

pytestmark = pytest.mark.slow


def run_json(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_writes_profile_and_resume_accumulates(capsys, tmp_path):
    url = f"sqlite:///{tmp_path}/studies/autotune.db"
    args = ["run", "--model", "flash", "--gpus", "1", "--p99-ms", "500", "--engine", "sim", "--storage", url,
            "--study", "e2e", "--trials", "3", "--workload", "random:512:64", "--top-k", "1", "--repeats", "1",
            "--sim-server", "--sim-time-scale", "20", "--json"]
    code, out, err = run_json(capsys, *args)
    assert code == 0, err
    report = json.loads(out)  # exactly one JSON object on stdout
    assert report["best"]["flags"] and report["best"]["vllm_serve_cmd"].startswith("vllm serve")
    assert report["output_tok_s"] > 0 and report["ttft_ms"]["p99"] <= 500
    assert set(report["baselines"]) == {"vllm-defaults", "seed-profile"}
    profile = yaml.safe_load(open(report["profile_path"]))
    assert profile["objective"]["limit_ms"] == 500 and profile["hardware"]["engine"] == "sim"
    assert profile["study"]["storage"] == url
    trial_logs = list((tmp_path / "studies" / "e2e" / "trials").glob("*/server.log"))
    assert len(trial_logs) >= 2 and "GPU KV cache size" in trial_logs[0].read_text()
    levels0 = sorted((tmp_path / "studies" / "e2e" / "trials" / "0" / "levels").glob("*.jsonl.gz"))
    assert levels0 and levels0[0].name.startswith("00-c")  # every level's requests are kept
    assert list((tmp_path / "studies" / "e2e" / "remeasure").glob("*/levels/00-c*.jsonl.gz"))

    study = optuna.load_study(study_name="e2e", storage=url)
    first = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(first) == 3
    assert {t.user_attrs.get("baseline") for t in first} >= {"vllm-defaults", "seed-profile"}
    for t in first:
        assert "p99_minus_limit_ms" in str(t.system_attrs) or t.constraints
        assert t.user_attrs["levels"] or t.user_attrs["failure_class"]

    code, out, err = run_json(capsys, *args[:-1][:args.index("--trials")], "--trials", "2",
                              *args[args.index("--trials") + 2:])
    assert code == 0, err
    study = optuna.load_study(study_name="e2e", storage=url)
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 5
    assert [t.number for t in first] == [t.number for t in study.trials[:3]]

    code, out, err = run_json(capsys, "best", "--study", "e2e", "--storage", url, "--json")
    assert code == 0 and json.loads(out)["flags"]
    code, out, err = run_json(capsys, "studies", "--storage", url, "--json")
    assert code == 0 and json.loads(out)["studies"][0]["trials"] == 5


def test_resume_with_another_limit_is_refused(capsys, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    common = ["run", "--model", "flash", "--engine", "sim", "--storage", url, "--study", "x", "--trials", "0",
              "--repeats", "0", "--top-k", "0"]
    main([*common, "--p99-ms", "500", "--json"])
    capsys.readouterr()
    code, out, err = run_json(capsys, *common, "--p99-ms", "300")
    assert code == 2 and "was created with limit_ms=500.0" in err


def test_no_feasible_config_exits_3(capsys, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    code, out, err = run_json(capsys, "run", "--model", "flash", "--engine", "sim", "--storage", url,
                              "--p99-ms", "1", "--trials", "2", "--workload", "random:512:16", "--repeats", "0",
                              "--start-concurrency", "1", "--json")
    assert code == 3, err
    assert json.loads(out)["best"] is None
    study = optuna.load_study(study_name=optuna.get_all_study_names(url)[0], storage=url)
    assert len(study.trials) == 2  # everything recorded


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
    trial = optuna.load_study(study_name="dl", storage=url).trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.user_attrs["stop_reason"] == "deadline"
    assert trial.user_attrs["feasible"] and trial.value > 0 and trial.user_attrs["levels"]
    profile = yaml.safe_load(open(tmp_path / "out" / "dl" / "profile.yaml"))
    assert profile["search_stop_reason"] == "deadline" and profile["concurrency"] == trial.user_attrs["concurrency"]
