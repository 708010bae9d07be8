"""`autotune run` bad inputs: one line on stderr, exit 2, no traceback, nothing written to the study."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import yaml

from autotune.cli import main
from autotune.space import default_space_path


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
    (["--model", "flash"], "no latency limit: give --p99-ms MS [--p99-metric METRIC] or --slo METRIC=MS"),
    (["--model", "flash", "--p99-ms", "0"], "must be positive"),
    (["--model", "flash", "--p99-ms", "-5"], "must be positive"),
    (["--model", "flash", "--p99-ms", "500", "--gpus", "0"], "must be positive"),
    # an infinite limit was taken (and stored as NaN); the --slo spelling was refused
    (["--model", "flash", "--p99-ms", "inf"], "--p99-ms: input should be a finite number, got inf"),
    (["--model", "flash", "--p99-ms", "500", "--prompts-per-level", "inf"], "--prompts-per-level: input should be "
     "a finite number"),
    # a seed numpy cannot take ended the run with exit 1 and the numpy error, after the study's checks
    (["--model", "flash", "--p99-ms", "500", "--seed", "-1"], "--seed: must not be negative, got -1"),
    (["--model", "flash", "--p99-ms", "500", "--seed", str(2**32)], "--seed: input should be less than 4294967296"),
    # a space whose TP choices the model's heads do not divide leaves no layout to search
    (["--model", "flash", "--p99-ms", "500", "--gpus", "3", "--space", "{space_tp3}"],
     "on --gpus 3: model 'flash' has 32 attention heads, which tensor-parallel-size 3 does not divide"),
    (["--model", "flash", "--p99-ms", "500", "--trials", "-1"], "must not be negative"),
    (["--model", "flash", "--p99-ms", "500", "--timeout", "soon"], "not a duration"),
    (["--model", "flash", "--p99-ms", "500", "--p99-metric", "p50"], "Invalid value for '--p99-metric'"),
    (["--model", "flash", "--p99-ms", "500", "--gpu-type", "a100"], "unknown GPU type 'a100'"),
    (["--model", "flash", "--p99-ms", "500", "--set", "max-num-seqz=4"], "unknown vLLM flag"),
    (["--model", "flash", "--p99-ms", "500", "--set", "kv-cache-dtype=fp8"], "searched by the space"),
    (["--model", "flash", "--p99-ms", "500", "--set", "tensor-parallel-size=3"], "follows --gpus"),
    (["--model", "flash", "--p99-ms", "500", "--set", "dp=2"], "--set data-parallel-size: the GPUs' layout"),
    # the search started at the ceiling without a word
    (["--model", "flash", "--p99-ms", "500", "--start-concurrency", "128", "--max-concurrency", "64"],
     "--start-concurrency 128 is above --max-concurrency 64"),
    # the last value won without a word
    (["--model", "flash", "--p99-ms", "500", "--set", "max-model-len=4096", "--set", "max_model_len=2048"],
     "--set max-model-len: given twice"),
    # several limits (--slo): every one must be a known metric with a positive limit, each metric limited once
    (["--model", "flash", "--slo", "latency=5"], "Invalid value for '--slo': expected METRIC=MS with METRIC one of"),
    (["--model", "flash", "--slo", "ttft=500,itl"], "expected METRIC=MS"),
    (["--model", "flash", "--slo", "ttft=0"], "the limit for ttft must be a positive number"),
    (["--model", "flash", "--slo", "ttft=500,itl=-5"], "the limit for itl must be a positive number"),
    (["--model", "flash", "--slo", "itl=inf"], "the limit for itl must be a positive number"),
    (["--model", "flash", "--slo", "ttft=fast"], "'fast' is not a number of milliseconds"),
    (["--model", "flash", "--slo", "ttft=500,itl=50,ttft=400"], "ttft is given twice"),
    (["--model", "flash", "--p99-ms", "500", "--slo", "ttft=400"], "P99 ttft is already limited by --p99-ms 500"),
    (["--model", "flash", "--p99-ms", "50", "--p99-metric", "itl", "--slo", "ttft=500,itl=40"],
     "--slo itl=40: P99 itl is already limited by --p99-ms 50"),
    (["--model", "flash", "--p99-metric", "itl", "--slo", "ttft=500"], "--p99-metric itl needs --p99-ms MS"),
    # GPU ids: one form to a list (an index and a UUID may name one GPU), each GPU once, nothing but GPU ids
    (["--model", "flash", "--p99-ms", "500", "--gpu-ids", "0,GPU-5f2c0d1e-8a3b-4c6d-9e0f-1a2b3c4d5e6f"],
     "mixes GPU indices and GPU UUIDs; give one form"),
    (["--model", "flash", "--p99-ms", "500", "--gpu-ids",
      "GPU-5f2c0d1e-8a3b-4c6d-9e0f-1a2b3c4d5e6f,GPU-5F2C0D1E-8A3B-4C6D-9E0F-1A2B3C4D5E6F"], "a GPU is listed twice"),
    (["--model", "flash", "--p99-ms", "500", "--gpu-ids", "gpu0"], "'gpu0' is not a GPU id; expected GPU indices"),
])
def test_bad_input_exit_2_one_line(capsys, storage, tmp_path, args, message):
    url, db = storage
    space_tp3 = tmp_path / "tp3.yaml"
    space_tp3.write_text("parallel: {tensor-parallel-size: [3]}\n")
    args = [a.format(space_tp3=space_tp3) for a in args]
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
    # a range whose ends pass the flag's check but whose values between them vLLM refuses: every trial failed
    ("params:\n  max-num-seqs: {type: float, low: 64, high: 256}\n",
     "max-num-seqs takes int values, not a range of type float (use type: int)"),
    ("params:\n  max-num-seqs: {type: int, low: 64, high: 256, step: 64.5}\n", "int needs whole numbers"),
    ("params:\n  block-size: {type: int, low: 16, high: 128}\n", "block-size takes one of 16, 32, 64, 128"),
    ("params:\n  enable-prefix-caching: {type: int, low: 0, high: 1}\n", "takes bool values, not a range"),
])
def test_bad_space_file(capsys, storage, tmp_path, space, message):
    url, db = storage
    path = tmp_path / "space.yaml"
    path.write_text(space)
    code, out, err = run_cli(capsys, *BASE, "--storage", url, "--model", "flash", "--p99-ms", "500",
                             "--space", str(path))
    assert code == 2 and message in err and "Traceback" not in err
    assert trial_count(db) == 0


@pytest.mark.parametrize("point, message", [
    ("max-num-seqs: abc\n", "flag max-num-seqs: 'abc' is not a valid int"),
    ("foo: 1\n", "unknown vLLM flag 'foo'"),
    ("max-model-len: 4096\n", "max-model-len is not searched by the space: --set max-model-len=VALUE gives it to "
                               "every trial, or --space FILE searches it"),
    ("data-parallel-size: 2\n",
     "data-parallel-size is not set by hand: it follows from --gpus / tensor-parallel-size, here 1 / 1"),
])
def test_bad_try_file_names_the_file(capsys, storage, tmp_path, point, message):
    """A bad flag or value in --try FILE was reported without naming the file (--set and the space take flags
    too)."""
    url, db = storage
    path = tmp_path / "try.yaml"
    path.write_text(point)
    code, out, err = run_cli(capsys, *BASE, "--storage", url, "--model", "flash", "--p99-ms", "500",
                             "--try", str(path))
    assert code == 2 and err == f"autotune: error: --try {path}: {message}\n", err
    assert trial_count(db) == 0


def test_unreadable_space_file(capsys, storage, tmp_path):
    url, _ = storage
    code, _, err = run_cli(capsys, *BASE, "--storage", url, "--model", "flash", "--p99-ms", "500",
                           "--space", str(tmp_path / "missing.yaml"))
    assert code == 2 and "cannot read search space" in err


def test_a_binary_file_for_a_yaml_one_is_one_line(capsys, storage, tmp_path):
    """A study's database given as the --space (or --try, or a card) was 'UnicodeDecodeError', exit 1."""
    url, db = storage
    path = tmp_path / "studies.db"
    path.write_bytes(b"\xfb\xff\x00\x01")
    for option in ("--space", "--try"):
        code, _, err = run_cli(capsys, *BASE, "--storage", url, "--model", "flash", "--p99-ms", "500", option,
                               str(path))
        assert code == 2 and f"{path}: not a text file" in err and err.count("\n") == 1, err
    assert trial_count(db) == 0


@pytest.mark.parametrize("url, message", [
    ("notaurl", "not a valid SQLAlchemy URL"),
    ("sqlite:////proc/definitely/not/here.db", "cannot create"),
    ("postgresql+psycopg2://u:secret@127.0.0.1:9/x", "storage"),
])
def test_unreachable_storage(capsys, url, message):
    code, _, err = run_cli(capsys, *BASE, "--storage", url, "--model", "flash", "--p99-ms", "500")
    assert code == 2, err
    assert message in err and "secret" not in err and "Traceback" not in err


def test_a_sqlite_storage_whose_lock_file_cannot_be_made_is_one_line(capsys, tmp_path):
    """A SQLite file in a folder that takes no new file (unwritable; here the lock file's name taken by a folder)
    ended the run as Python's error ("autotune: error: FileNotFoundError: ...", exit 1), not naming the storage."""
    (tmp_path / "s.db.lock").mkdir()
    code, _, err = run_cli(capsys, *BASE, "--storage", f"sqlite:///{tmp_path}/s.db", "--model", "flash",
                           "--p99-ms", "500")
    assert code == 2 and err.count("\n") == 1 and "lock file" in err and "s.db" in err, err


def test_a_storage_it_cannot_open_is_the_only_line_under_the_auto_engine(capsys, monkeypatch):
    """``--engine auto`` on a machine without vLLM falls back to the sim with a notice; a storage it cannot open
    still ends the run on one line, the notice not printed before it."""
    import autotune.cli.run as run_module
    from autotune.config import EngineChoice

    monkeypatch.setattr(run_module, "choose_engine", lambda requested: EngineChoice("sim", "the sim, because"))
    code, _, err = run_cli(capsys, "run", "--storage", "sqlite:////proc/definitely/not/here.db", "--model", "flash",
                           "--p99-ms", "500")
    assert code == 2 and err.count("\n") == 1 and "cannot create" in err, err


def test_engine_vllm_without_vllm_is_refused_before_the_study(capsys, storage, monkeypatch):
    """Every trial would fail to launch, and the study end with 'no configuration met the limits' (exit 3)."""
    import importlib.util
    import shutil

    which, find_spec = shutil.which, importlib.util.find_spec
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "vllm" else which(name, *a, **k))
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "vllm" else find_spec(name, *a, **k))
    url, db = storage
    code, out, err = run_cli(capsys, "run", "--storage", url, "--model", "flash", "--p99-ms", "500", "--engine", "vllm")
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "--engine vllm: vLLM is not installed" in err and "Traceback" not in err
    assert not db.exists()


@pytest.mark.parametrize("out, message", [
    ("{file}/x", "Not a directory"),
    ("/proc/autotune-out", "making a folder in /proc: "),  # a virtual file system: nothing can be made there
])
def test_an_out_folder_it_cannot_create_is_refused_before_the_study(capsys, storage, tmp_path, out, message):
    url, db = storage
    (tmp_path / "a-file").write_text("")
    out = out.format(file=tmp_path / "a-file")
    code, stdout, err = run_cli(capsys, *BASE, "--storage", url, "--model", "flash", "--p99-ms", "500", "--out", out)
    assert code == 2 and stdout == "" and err.count("\n") == 1, err
    assert f"--out {out}: cannot create the study's folder {out}/flash-1gpu-p99ttft500ms (" in err and message in err
    assert not db.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no probe left behind


def test_bad_workload(capsys, storage):
    url, db = storage
    code, _, err = run_cli(capsys, *BASE, "--storage", url, "--model", "flash", "--p99-ms", "500",
                           "--workload", "random:abc:1")
    assert code == 2 and "Traceback" not in err
    assert trial_count(db) == 0


@pytest.mark.parametrize("command", [
    [*BASE, "--p99-ms", "500", "--model", "flash"],
    ["sim", "predict", "--model", "flash"],
    ["bench", "--url", "http://127.0.0.1:9", "--model", "m", "--concurrency", "4"],
])
def test_a_huge_image_is_refused_at_once_by_every_command(capsys, storage, command):
    """One workload parser: `run`, `sim predict` and `bench` refuse an image vLLM would not open, before any work."""
    url, db = storage
    storage_args = ["--storage", url] if command[0] == "run" else []
    code, out, err = run_cli(capsys, *command, *storage_args, "--workload", "mm:256:32:1:100000x100000")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "image size 100000x100000 is 10,000,000,000 pixels, over the" in err
    assert not db.exists()


def test_model_folder_without_config(capsys, storage, tmp_path):
    url, _ = storage
    code, _, err = run_cli(capsys, *BASE, "--storage", url, "--model", str(tmp_path), "--p99-ms", "500")
    assert code == 2 and "has no config.json" in err


def test_best_of_unknown_study(capsys, storage):
    from autotune.storage import open_storage

    url, _ = storage
    open_storage(url)  # a storage that exists, without the study
    code, _, err = run_cli(capsys, "best", "--study", "nope", "--storage", url)
    assert code == 2 and "no study named 'nope'" in err


@pytest.mark.parametrize("options, limits, name", [
    ({"p99_ms": 500}, {"ttft": 500.0}, "flash-1gpu-p99ttft500ms"),  # one limit, as before
    ({"p99_ms": 50, "p99_metric": "itl"}, {"itl": 50.0}, "flash-1gpu-p99itl50ms"),
    ({"slo_ms": {"ttft": 500, "itl": 50}}, {"ttft": 500.0, "itl": 50.0}, "flash-1gpu-p99ttft500ms-itl50ms"),
    # --p99-ms beside --slo: one more limit, first
    ({"p99_ms": 500, "slo_ms": {"itl": 50}}, {"ttft": 500.0, "itl": 50.0}, "flash-1gpu-p99ttft500ms-itl50ms"),
    ({"p99_ms": 2000, "p99_metric": "e2el", "slo_ms": {"ttft": 500}}, {"e2el": 2000.0, "ttft": 500.0},
     "flash-1gpu-p99e2el2000ms-ttft500ms"),
])
def test_the_limits_and_the_default_study_name(tmp_path, options, limits, name):
    from autotune.config import RunOptions, build_study_config, choose_engine, study_limits_ms

    opts = RunOptions(model="flash", engine="sim", storage=f"sqlite:///{tmp_path}/s.db", **options)
    assert study_limits_ms(opts) == limits and list(study_limits_ms(opts)) == list(limits)
    cfg = build_study_config(opts, choose_engine("sim"))
    assert cfg.settings.search.limits_ms == limits and cfg.study_name == name


def test_the_options_model_checks_limits_given_by_code():
    import pydantic

    from autotune.config import RunOptions

    for slo in ({"latency": 5.0}, {"ttft": 0.0}, {"itl": float("inf")}):
        with pytest.raises(pydantic.ValidationError):
            RunOptions(model="flash", slo_ms=slo)


def test_image_workload_on_a_text_only_model_is_refused_before_any_server(capsys, storage, weightless_flash_dir):
    # a text-only model would answer every request 400 and the study end with exit 3; refused up front instead
    url, db = storage
    code, out, err = run_cli(capsys, *BASE, "--storage", url, "--model", str(weightless_flash_dir), "--p99-ms", "500",
                             "--workload", "mm:128:32:2:448x448")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "sends images, but model" in err and "(Glm4ForCausalLM) has no vision tower" in err
    assert not db.exists() and not (db.parent / "studies").exists()


def test_image_size_the_model_refuses_is_refused_before_any_server(capsys, storage):
    # vLLM answers each request with a 16x4000 image 400 (GLM's processor: aspect ratio over 200)
    url, db = storage
    code, out, err = run_cli(capsys, *BASE, "--storage", url, "--model", "flash", "--p99-ms", "500",
                             "--workload", "mm:128:32:1:16x4000")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "refuses a 16x4000 image (absolute aspect ratio must be smaller than 200" in err
    assert not db.exists()


def test_image_limit_below_the_workload_is_refused(capsys, storage, tmp_path):
    url, db = storage
    code, _, err = run_cli(capsys, *BASE, "--storage", url, "--model", "flash", "--p99-ms", "500",
                           "--workload", "mm:128:32:1-3:448x448", "--space", str(default_space_path("generic")),
                           "--set", 'limit-mm-per-prompt={"image": 2}')
    assert code == 2 and err.count("\n") == 1
    assert "limit-mm-per-prompt allows 2 image(s) per prompt, the workload 'mm:128:32:1-3:448x448' sends up to 3" in err
    assert trial_count(db) == 0


@pytest.mark.parametrize("args, message", [
    (["--trials", "-1"], "autotune: error: --trials: must not be negative, got -1\n"),
    (["--parallel", "0"], "autotune: error: --parallel: must be positive, got 0\n"),
])
def test_a_workers_own_bad_option_is_named_not_blamed_on_the_study(capsys, tmp_path, args, message):
    """A worker's own bad value was reported as the study storing options this version cannot read."""
    import optuna

    from autotune import records

    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="s", storage=url)
    records.write_run_options(study, {"model": "flash", "engine": "sim", "p99_ms": 500.0})
    assert main(["worker", "--study", "s", "--storage", url, *args]) == 2
    assert capsys.readouterr().err == message


def test_a_worker_on_a_sqlite_file_that_is_not_there_makes_none(capsys, tmp_path):
    """A worker joins a study a run made: it made an empty database and its lock file before saying the study was
    not there."""
    url = f"sqlite:///{tmp_path}/typo.db"
    assert main(["worker", "--study", "s", "--storage", url]) == 2
    assert capsys.readouterr().err == f"autotune: error: storage {url}: no database file at {tmp_path}/typo.db\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [
    ["worker", "--study", "s"],
    ["best", "--study", "s"],
    [*BASE, "--model", "flash", "--p99-ms", "500"],
])
def test_a_sqlite_file_name_too_long_is_one_line_naming_the_storage(capsys, tmp_path, command):
    """A worker (and a reader) given a SQLite file whose name the file system refuses printed Python's error,
    "autotune: error: OSError: [Errno 36] File name too long: ...", exit 1; `run` named its lock file. Each says
    the same line now, and makes nothing."""
    database = tmp_path / f"{'a' * 300}.db"
    url = f"sqlite:///{database}"
    code, _, err = run_cli(capsys, *command, "--storage", url)
    assert code == 2 and err == (f"autotune: error: storage {url}: cannot look up its database file {database}: "
                                 "File name too long\n"), err
    assert list(tmp_path.iterdir()) == []


def test_a_sqlite_storage_under_home_is_the_file_there_not_one_in_a_folder_named_tilde(tmp_path, monkeypatch):
    """sqlite:///~/s.db: the checks and the lock took ~ as the home folder, and SQLite opened the URL's path as
    written, ./~/s.db: a worker found HOME/s.db there and then made an empty database in a folder named "~" (its
    study not found), or ended in 'unable to open database file', exit 1; a run wrote its study there."""
    import optuna

    from autotune.storage import open_storage

    home, here = tmp_path / "home", tmp_path / "here"
    home.mkdir()
    (here / "~").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(here)
    optuna.create_study(study_name="s", storage=f"sqlite:///{home}/s.db")
    assert optuna.get_all_study_names(open_storage("sqlite:///~/s.db", create=False)) == ["s"]
    optuna.create_study(study_name="new", storage=open_storage("sqlite:///~/new.db"))
    assert (home / "new.db").is_file() and list((here / "~").iterdir()) == []


def test_a_worker_joins_a_study_whose_stored_start_lies_above_its_ceiling(tmp_path):
    """An earlier version stored its default start (8) beside --max-concurrency 4 and searched from 4: a worker of
    this version joins it, and its search starts at the ceiling as that run's did."""
    from autotune.config import build_study_config, choose_engine, worker_options

    stored = {"model": "flash", "engine": "sim", "p99_ms": 500.0, "start_concurrency": 8, "max_concurrency": 4}
    options = worker_options(stored, "s", f"sqlite:///{tmp_path}/s.db")
    assert options.start_concurrency is None
    assert build_study_config(options, choose_engine("sim")).settings.search.start_concurrency == 4


@pytest.mark.slow
@pytest.mark.parametrize("gpus, layout", [(3, "tp=1 dp=3"), (6, "tp=2 dp=3")])
def test_gpu_counts_the_heads_do_not_divide_run_to_a_verdict(capsys, storage, tmp_path, gpus, layout):
    """--gpus 3 and 6 were refused: the baselines ran TP over every GPU, which flash's 32 heads do not divide. They
    run the largest TP that splits the heads, with DP over the rest, and the run says so at its start, after its
    verdict and in the profile's notes."""
    url, _ = storage
    code, out, err = run_cli(capsys, "run", "--model", "flash", "--p99-ms", "500", "--engine", "sim", "--gpus",
                             str(gpus), "--storage", url, "--trials", "2", "--top-k", "0", "--workload",
                             "random:128:16", "--max-concurrency", "16", "--out", str(tmp_path / "out"))
    assert code == 0, err
    assert f"trial 0 (vllm-defaults) {layout}:" in err and f"trial 1 (seed-profile) {layout} " in err
    tp, dp = (int(part.split("=")[1]) for part in layout.split())
    note = (f"the baselines run tensor-parallel-size {tp} with data-parallel-size {dp} on the {gpus} GPUs, not TP "
            f"over all of them: model 'flash' has 32 attention heads, which tensor-parallel-size {gpus} does not "
            "divide")
    assert [line for line in err.splitlines() if line.startswith("note: ")][0].startswith(f"note: {note}")
    assert f"note: {note}" in out and "the baseline '" in out  # the verdict: one of the two
    profile = yaml.safe_load(Path(out.split("Profile: ")[1].split()[0]).read_text())
    assert any(n.startswith(note) for n in profile["notes"])
    assert f"--data-parallel-size {dp} " in profile["vllm_serve_cmd"]
    assert profile["flags"]["tensor-parallel-size"] == tp


@pytest.mark.slow
def test_a_winner_whose_search_stopped_at_max_concurrency_says_its_knee_may_lie_higher(capsys, storage, tmp_path):
    """On 8 GPUs every trial met the limits at the ceiling (the default 1024; 16 here) and its throughput there
    read as its throughput at the limit, without a word."""
    url, _ = storage
    code, out, err = run_cli(capsys, "run", "--model", "flash", "--p99-ms", "500", "--engine", "sim", "--gpus", "8",
                             "--storage", url, "--trials", "2", "--top-k", "0", "--workload", "random:128:16",
                             "--max-concurrency", "16", "--out", str(tmp_path / "out"))
    assert code == 0, err
    trial_lines = [line for line in err.splitlines() if "] trial " in line]
    assert len(trial_lines) == 2
    assert all(line.endswith("; every limit held up to --max-concurrency (16): the knee may lie higher")
               for line in trial_lines), trial_lines
    note = "every limit held up to --max-concurrency 16 in the winner's load search, below what its engine runs"
    assert f"note: {note}" in out
    profile = yaml.safe_load(Path(out.split("Profile: ")[1].split()[0]).read_text())
    assert any(n.startswith(note) for n in profile["notes"])
    # resumed as the note advises: the old winner's search still stopped at 16, whatever this run's ceiling
    code, out, err = run_cli(capsys, "run", "--model", "flash", "--p99-ms", "500", "--engine", "sim", "--gpus", "8",
                             "--storage", url, "--trials", "0", "--top-k", "0", "--workload", "random:128:16",
                             "--max-concurrency", "32", "--out", str(tmp_path / "out"))
    assert code == 0, err
    assert f"note: {note}" in out and "--max-concurrency 32" not in out
