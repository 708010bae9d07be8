"""`autotune run` bad inputs: one line on stderr, exit 2, no traceback, nothing written to the study."""
from __future__ import annotations

import sqlite3

import pytest

from autotune.cli import main


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def storage(tmp_path):
    return f"sqlite:///{tmp_path}/s.db", tmp_path / "s.db"


def trial_count(db_path):
    if not db_path.exists():
        return 0
    with sqlite3.connect(db_path) as con:
        try:
            return con.execute("select count(*) from trials").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


BASE = ["run", "--gpus", "1", "--engine", "sim", "--trials", "1"]


@pytest.mark.parametrize("args, message", [
    (["--model", "nosuchpreset", "--p99-ms", "500"], "unknown model preset 'nosuchpreset'"),
    (["--model", "flash"], "Missing option '--p99-ms'"),
    (["--model", "flash", "--p99-ms", "0"], "must be positive"),
    (["--model", "flash", "--p99-ms", "-5"], "must be positive"),
    (["--model", "flash", "--p99-ms", "500", "--gpus", "0"], "must be positive"),
    (["--model", "flash", "--p99-ms", "500", "--trials", "-1"], "must not be negative"),
    (["--model", "flash", "--p99-ms", "500", "--timeout", "soon"], "not a duration"),
    (["--model", "flash", "--p99-ms", "500", "--p99-metric", "p50"], "Invalid value for '--p99-metric'"),
    (["--model", "flash", "--p99-ms", "500", "--gpu-type", "a100"], "unknown GPU type 'a100'"),
    (["--model", "flash", "--p99-ms", "500", "--set", "max-num-seqz=4"], "unknown vLLM flag"),
    (["--model", "flash", "--p99-ms", "500", "--set", "kv-cache-dtype=fp8"], "searched by the space"),
])
def test_bad_input_exit_2_one_line(capsys, storage, args, message):
    url, db = storage
    code, out, err = run_cli(capsys, *BASE, "--storage", url, *args)
    assert code == 2, err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert out == ""
    assert trial_count(db) == 0


@pytest.mark.parametrize("space, message", [
    ("params:\n  max-num-seqz: {type: int, low: 1, high: 2}\n", "unknown vLLM flag"),
    ("params:\n  kv-cache-dtype: {type: categorical, choices: []}\n", "non-empty 'choices'"),
    ("params:\n  max-num-seqs: {type: int, low: 512, high: 64}\n", "low (512.0) > high (64.0)"),
    ("params: {{{\n", "invalid YAML"),
])
def test_bad_space_file(capsys, storage, tmp_path, space, message):
    url, db = storage
    path = tmp_path / "space.yaml"
    path.write_text(space)
    code, out, err = run_cli(capsys, *BASE, "--storage", url, "--model", "flash", "--p99-ms", "500",
                             "--space", str(path))
    assert code == 2 and message in err and "Traceback" not in err
    assert trial_count(db) == 0


def test_unreadable_space_file(capsys, storage, tmp_path):
    url, _ = storage
    code, _, err = run_cli(capsys, *BASE, "--storage", url, "--model", "flash", "--p99-ms", "500",
                           "--space", str(tmp_path / "missing.yaml"))
    assert code == 2 and "cannot read search space" in err


@pytest.mark.parametrize("url, message", [
    ("notaurl", "not a valid SQLAlchemy URL"),
    ("sqlite:////proc/definitely/not/here.db", "cannot create"),
    ("postgresql+psycopg2://u:secret@127.0.0.1:9/x", "storage"),
])
def test_unreachable_storage(capsys, url, message):
    code, _, err = run_cli(capsys, *BASE, "--storage", url, "--model", "flash", "--p99-ms", "500")
    assert code == 2, err
    assert message in err and "secret" not in err and "Traceback" not in err


def test_bad_workload(capsys, storage):
    url, db = storage
    code, _, err = run_cli(capsys, *BASE, "--storage", url, "--model", "flash", "--p99-ms", "500",
                           "--workload", "random:abc:1")
    assert code == 2 and "Traceback" not in err
    assert trial_count(db) == 0


def test_model_folder_without_config(capsys, storage, tmp_path):
    url, _ = storage
    code, _, err = run_cli(capsys, *BASE, "--storage", url, "--model", str(tmp_path), "--p99-ms", "500")
    assert code == 2 and "has no config.json" in err


def test_best_of_unknown_study(capsys, storage):
    url, _ = storage
    code, _, err = run_cli(capsys, "best", "--study", "nope", "--storage", url)
    assert code == 2 and "no study named 'nope'" in err
