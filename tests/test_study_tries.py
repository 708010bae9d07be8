"""`autotune run --try FILE`: a hand-tuned point runs exactly as given, inside the search space or not, and a
resumed study does not queue it again."""
from __future__ import annotations

import optuna
import pytest

from autotune import records
from autotune.cli import main


def _run_args(tmp_path, study: str, points_yaml: str) -> tuple[str, list[str]]:
    """The storage URL and a short sim study's `run` arguments, with POINTS_YAML as its --try file."""
    points = tmp_path / "try.yaml"
    points.write_text(points_yaml)
    url = f"sqlite:///{tmp_path}/s.db"
    return url, ["run", "--model", "flash", "--gpus", "1", "--p99-ms", "500", "--engine", "sim", "--storage", url,
                 "--study", study, "--try", str(points), "--workload", "random:256:32", "--max-concurrency", "32",
                 "--repeats", "0", "--top-k", "0", "--json"]


@pytest.mark.slow
def test_a_try_point_runs_as_given_and_is_queued_once(capsys, tmp_path):
    # 300 lies between the flash space's max-num-seqs steps of 128, 0.92 between its 0.05 steps; the second point
    # leaves every other searched flag to vLLM
    url, args = _run_args(tmp_path, "tries",
                          "- {max-num-seqs: 300, gpu-memory-utilization: 0.92}\n- {max-num-batched-tokens: 4096}\n")
    code = main([*args, "--trials", "4"])
    assert code == 0, capsys.readouterr().err
    study = optuna.load_study(study_name="tries", storage=url)
    tried = [t for t in records.read_trials(study) if t.tried]
    assert [t.result.flags for t in tried] == [
        {"enable-chunked-prefill": True, "max-num-seqs": 300, "gpu-memory-utilization": 0.92},
        {"enable-chunked-prefill": True, "max-num-batched-tokens": 4096}]
    assert tried[0].result.vllm_serve_cmd.endswith(
        "--enable-chunked-prefill --gpu-memory-utilization 0.92 --max-num-seqs 300")
    assert tried[1].result.vllm_serve_cmd.endswith("--enable-chunked-prefill --max-num-batched-tokens 4096")

    code = main([*args, "--trials", "1"])  # resumed with the same file: one sampled trial, no try again
    assert code == 0, capsys.readouterr().err
    study = optuna.load_study(study_name="tries", storage=url)
    assert [t.number for t in records.read_trials(study) if t.tried] == [t.number for t in tried]
    assert len(study.trials) == 5


@pytest.mark.slow
@pytest.mark.parametrize("ran", [True, False], ids=["finished", "still queued"])
def test_an_older_studys_tries_are_not_queued_again(capsys, tmp_path, ran):
    """A study from before the flags were kept marked its --try trials `True` and kept their projection only: a
    resume with the same file matches them on it, as Optuna's skip_if_exists did; also where the point had not run
    yet (a waiting trial has no params, only the values it was queued with)."""
    import sqlite3

    url, args = _run_args(tmp_path, "old", "{max-num-seqs: 256, kv-cache-dtype: fp8_e5m2}\n")
    # --trials 0: everything queued, nothing run, no winner (exit 3)
    assert main([*args, "--trials", "3" if ran else "0"]) == (0 if ran else 3), capsys.readouterr().err
    with sqlite3.connect(tmp_path / "s.db") as db:  # as an older autotune stored the point
        changed = db.execute("UPDATE trial_user_attributes SET value_json = 'true' WHERE key = 'tried'").rowcount
    assert changed == 1
    study = optuna.load_study(study_name="old", storage=url)
    before = len(study.trials)
    [old] = [t for t in study.trials if records.queued_try_unkept(t) is not None]
    assert old.state == (optuna.trial.TrialState.COMPLETE if ran else optuna.trial.TrialState.WAITING)
    assert main([*args, "--trials", "1"]) == 0, capsys.readouterr().err
    study = optuna.load_study(study_name="old", storage=url)
    assert len(study.trials) == before + (1 if ran else 0)  # a sampled trial, or the first queued one run
    assert sum(t.tried for t in records.read_trials(study)) == 1
