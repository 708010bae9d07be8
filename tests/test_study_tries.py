"""`autotune run --try FILE`: a hand-tuned point runs exactly as given, inside the search space or not, and a
resumed study does not queue it again."""
from __future__ import annotations

import optuna

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


def test_an_older_studys_tries_are_not_queued_again(capsys, tmp_path):
    """A study from before the flags were kept marked its --try trials `True` and kept their projection only: a
    resume with the same file matches them on it, as Optuna's skip_if_exists did."""
    import sqlite3

    url, args = _run_args(tmp_path, "old", "{max-num-seqs: 256}\n")
    assert main([*args, "--trials", "3"]) == 0, capsys.readouterr().err
    with sqlite3.connect(tmp_path / "s.db") as db:  # as an older autotune stored the point
        changed = db.execute("UPDATE trial_user_attributes SET value_json = 'true' WHERE key = 'tried'").rowcount
    assert changed == 1
    study = optuna.load_study(study_name="old", storage=url)
    assert [records.queued_try_unkept(t) for t in study.trials].count(True) == 1
    assert main([*args, "--trials", "1"]) == 0, capsys.readouterr().err
    study = optuna.load_study(study_name="old", storage=url)
    assert len(study.trials) == 4 and sum(t.tried for t in records.read_trials(study)) == 1
