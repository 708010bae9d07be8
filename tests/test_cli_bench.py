from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autotune.cli import main
from autotune.loadgen.runner import read_records
from autotune.testing.fakeserver import FakeServer
from tests.processes import signal_and_collect


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    with FakeServer() as srv:
        yield srv


def _bench(server: FakeServer, *args: str) -> list[str]:
    # no ramp: a study level's 2 s would be most of these tests' time
    return ["bench", "--url", server.url, "--model", "fake-model", "--workload", "random:16:4", "--ramp-s", "0", *args]


def test_json_only_on_stdout(server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.configure(ttft_ms=2, itl_ms=1)
    code = main(_bench(server, "--concurrency", "4", "--num-prompts", "12", "--warmup", "2",
                       "--slo", "ttft=500,tpot=50", "--scrape-metrics", "--json"))
    out = capsys.readouterr().out
    assert code == 0
    data = json.loads(out)  # exactly one JSON object, nothing else
    assert out.strip().count("\n") == 0
    assert data["completed"] == 12 and data["failed"] == 0 and data["status"] == "ok"
    for key in ("output_tok_s", "total_tok_s", "request_s", "duration_s", "goodput_request_s"):
        assert isinstance(data[key], float) and data[key] > 0
    assert set(data["ttft_ms"]) == {"mean", "p50", "p90", "p95", "p99"}
    assert data["concurrency"] == 4 and data["workload"]["spec"] == "random:16:4"
    assert data["slo_ms"] == {"ttft": 500.0, "tpot": 50.0} and "server_metrics" in data


def test_rich_summary(server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.configure()
    code = main(_bench(server, "--rate", "100", "--num-prompts", "8"))
    out = capsys.readouterr().out
    assert code == 0 and "output tok/s" in out and "TTFT" in out and "rate 100.0/s" in out


def test_all_failed_exits_1_with_nulls(server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.configure(fault="http500")
    code = main(_bench(server, "--concurrency", "2", "--num-prompts", "4", "--json"))
    captured = capsys.readouterr()
    assert code == 1
    data = json.loads(captured.out)
    assert data["status"] == "failed" and data["completed"] == 0 and data["failed"] == 4
    assert data["output_tok_s"] is None and data["ttft_ms"]["p99"] is None
    assert data["errors"] == {"http_5xx": 4}
    assert "every request failed (http_5xx: 4)" in captured.err


@pytest.mark.parametrize("args, words", [
    # each names the option it is about, not the load generator's field
    (["--concurrency", "0"], "Invalid value for '--concurrency': 0 is not in the range x>=1"),
    (["--rate", "-2"], "Invalid value for '--rate'"),
    (["--rate", "3", "--burstiness", "0"], "Invalid value for '--burstiness'"),
    (["--concurrency", "2", "--warmup", "-1"], "Invalid value for '--warmup'"),
    (["--concurrency", "2", "--timeout-s", "0"], "Invalid value for '--timeout-s'"),
    (["--rate", "3", "--ramp-s", "-1"], "Invalid value for '--ramp-s'"),
    (["--concurrency", "2", "--rate", "3"], "exactly one of"),
    ([], "exactly one of"),
    (["--concurrency", "2", "--num-prompts", "0"], "Invalid value for '--num-prompts'"),
    (["--concurrency", "2", "--workload", "random:x:1"], "IN must be an integer"),
    (["--concurrency", "2", "--slo", "latency=3"], "--slo"),
    (["--concurrency", "2", "--slo", "ttft=-1"], "positive"),
    (["--concurrency", "2", "--records-itl"], "--records-itl needs --records"),
    (["--rate", "3", "--whole-run"], "--whole-run is for a closed loop"),
    (["--rate", "3", "--ramp-s", "1"], "--ramp-s is for a closed loop"),
])
def test_usage_errors_exit_2(server: FakeServer, capsys: pytest.CaptureFixture[str], args: list[str],
                             words: str) -> None:
    code = main(_bench(server, *args, "--json"))
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert words in captured.err and captured.err.count("\n") == 1


def test_wrong_model_exits_2(server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.configure()
    code = main(["bench", "--url", server.url, "--model", "other", "--concurrency", "1", "--json"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert "does not serve model 'other' (it serves: fake-model)" in captured.err


@pytest.mark.slow  # among the fast loop's longest (1.3-1.4 s); the full suite runs it
def test_trace_replay_from_a_jsonl_file(server: FakeServer, capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    server.configure(ttft_ms=2, itl_ms=1)
    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(json.dumps({"prompt": [1001, 1002], "output_len": 2, "arrival_s": 10 + 0.05 * i}) + "\n"
                             for i in range(8)))
    args = ["bench", "--url", server.url, "--model", "fake-model", "--workload", f"jsonl:{trace}", "--num-prompts"]
    assert main([*args, "6", "--warmup", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["completed"] == 6 and data["replay"] is True
    assert data["trace_span_s"] == pytest.approx(0.35) and data["rate"] is None
    assert main([*args, "6", "--rate", "50", "--json"]) == 0  # a rate overrides the trace's times
    assert "replay" not in json.loads(capsys.readouterr().out)
    assert main([*args, "6"]) == 0
    assert "trace replay over 0.2 s" in capsys.readouterr().out  # 0.25 s for the first 6
    assert main([*args, "9", "--json"]) == 0  # a cap: the trace has 8
    assert json.loads(capsys.readouterr().out)["completed"] == 8


@pytest.mark.parametrize("name", ["requests.jsonl", "requests.jsonl.gz"])
def test_records_every_request_with_warmup_flagged(server: FakeServer, capsys: pytest.CaptureFixture[str],
                                                   tmp_path, name: str) -> None:
    import gzip
    server.configure(ttft_ms=30, itl_ms=25)  # gaps that a busy host's scheduling delay does not merge
    path = tmp_path / "out" / name
    code = main(_bench(server, "--concurrency", "3", "--num-prompts", "7", "--warmup", "2", "--records", str(path),
                       "--json"))
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    text = (gzip.open(path, "rt") if name.endswith(".gz") else open(path)).read()
    rows = [json.loads(line) for line in text.splitlines()]
    assert [r["i"] for r in rows] == list(range(9)) and [r["warmup"] for r in rows] == [True] * 2 + [False] * 7
    measured = [r for r in rows if not r["warmup"]]
    assert all(r["ok"] and r["output_tokens"] == 4 for r in rows)
    # in ms (the server's 30 ms TTFT, 25 ms gaps); the upper bound only catches a unit slip, not a busy host's delay
    assert all(30 <= r["ttft_ms"] < 3000 and r["itl_max_ms"] >= 20 and r["e2el_ms"] > r["ttft_ms"] for r in rows)
    # the summary's percentiles come from exactly the measured records
    import numpy as np
    assert np.percentile([r["ttft_ms"] for r in measured], 50) == pytest.approx(data["ttft_ms"]["p50"], rel=1e-3)
    assert all("itl_ms" not in r for r in rows)  # the gaps only on request


def test_records_where_they_cannot_be_written_is_refused_before_the_run(
        server: FakeServer, capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    """They are written after the run: a folder that is a file was an exit 1 (FileExistsError) once the whole run
    was done, its figures lost."""
    server.configure()  # counts requests from 0
    (tmp_path / "afile").write_text("")
    code = main(_bench(server, "--concurrency", "2", "--num-prompts", "4", "--records",
                       str(tmp_path / "afile" / "r.jsonl.gz"), "--json"))
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.strip().endswith(f"cannot write the records to {tmp_path / 'afile' / 'r.jsonl.gz'}: "
                                         f"{tmp_path / 'afile'} is a file, not a folder")
    assert server.stats()["requests"] == 0  # nothing was sent


def test_records_itl_lists_each_gap(server: FakeServer, capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    import numpy as np
    server.configure(ttft_ms=20, itl_ms=25)  # gaps that a busy host's scheduling delay does not merge
    path = tmp_path / "r.jsonl"
    code = main(_bench(server, "--concurrency", "2", "--num-prompts", "5", "--records", str(path), "--records-itl",
                       "--json"))
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    # 4 output tokens, 4 token chunks: 3 gaps each, about the server's 25 ms; the summary's ITLs are exactly these
    assert all(len(r["itl_ms"]) == 3 and max(r["itl_ms"]) == r["itl_max_ms"] for r in rows)
    gaps = [g for r in rows if not r["warmup"] for g in r["itl_ms"]]
    # the median, not the minimum: on a busy CPU one late chunk is followed by one early (gaps of 0-2 ms seen)
    assert 20 <= np.median(gaps) < 100
    assert np.percentile(gaps, 90) == pytest.approx(data["itl_ms"]["p90"], rel=1e-3)


def test_a_trace_is_replayed_whole_by_default(server: FakeServer, capsys: pytest.CaptureFixture[str],
                                              tmp_path) -> None:
    """Every request of a trace at its time, without --num-prompts (it once sent 200, or refused a shorter trace);
    --num-prompts caps it, and a warm-up that leaves nothing to measure is refused."""
    server.configure(ttft_ms=2, itl_ms=1)
    trace = tmp_path / "trace.jsonl"
    size = 7
    trace.write_text("".join(json.dumps({"prompt": [1001, 1002], "output_len": 2, "arrival_s": 0.01 * i}) + "\n"
                             for i in range(size)))
    args = ["bench", "--url", server.url, "--model", "fake-model", "--workload", f"jsonl:{trace}", "--json"]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["replay"] is True and data["completed"] == data["num_prompts"] == size
    assert data["trace_span_s"] == pytest.approx(0.01 * (size - 1))
    assert main([*args, "--warmup", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["completed"] == size - 2
    assert main([*args, "--num-prompts", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["completed"] == 3
    assert main([*args, "--warmup", str(size)]) == 2
    err = capsys.readouterr().err
    assert f"the trace has {size} requests: none left to measure after --warmup {size}" in err


def test_a_concurrency_runs_a_study_level(server: FakeServer, capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    """`bench --concurrency C` measures as a study's level at C does, so its figures compare with the profile's and
    `sim predict`'s: the level's warm-up wave and measured requests, throughput over its steady window (the study's
    own summary of a level's records gives the same figure); --whole-run counts the whole run instead."""
    from autotune.loadgen.runner import read_records, steady_level_result
    from autotune.trial import LevelShape

    server.configure(ttft_ms=2, itl_ms=1)
    concurrency, path = 4, tmp_path / "level.jsonl"
    level = LevelShape().load_config(concurrency)
    assert main(_bench(server, "--concurrency", str(concurrency), "--records", str(path), "--json")) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["num_prompts"], data["warmup_prompts"]) == (level.num_prompts, level.warmup_prompts)
    study = steady_level_result(read_records(path))  # the records' times are to the microsecond
    assert data["steady_window_s"] == pytest.approx(study.duration_s, rel=1e-3)
    assert data["output_tok_s"] == pytest.approx(study.output_tok_s, rel=1e-3)
    measured = [o for o, warmup in read_records(path) if not warmup]  # the whole run: first start to last end
    span_s = max(o.start_s + o.e2el_s for o in measured) - min(o.start_s for o in measured)
    assert data["whole_run_output_tok_s"] == pytest.approx(sum(o.output_tokens for o in measured) / span_s, rel=1e-3)

    assert main(_bench(server, "--concurrency", str(concurrency), "--whole-run", "--json")) == 0
    data = json.loads(capsys.readouterr().out)
    assert "steady_window_s" not in data and "whole_run_output_tok_s" not in data
    assert main(_bench(server, "--concurrency", str(concurrency), "--num-prompts", "40")) == 0
    out = capsys.readouterr().out
    assert "steady window (s)" in out and "output tok/s, whole run" in out


def test_an_error_without_json_is_one_line(server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    """Into a log or a pipe, no progress bar: the error is the only line on stderr."""
    server.configure()
    code = main(["bench", "--url", server.url, "--model", "other", "--concurrency", "1"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.startswith("autotune: error: ") and captured.err.count("\n") == 1, repr(captured.err)


def test_the_default_workload_is_a_studys() -> None:
    """A study's level and a bench with no --workload send requests of one shape (bench once sent fixed lengths)."""
    from autotune.cli.bench import bench
    from autotune.loadgen.workload import DEFAULT_WORKLOAD

    assert next(p for p in bench.params if p.name == "workload").default == DEFAULT_WORKLOAD


@pytest.mark.slow
def test_ctrl_c_keeps_the_records_of_the_requests_that_finished(server: FakeServer, tmp_path: Path) -> None:
    """`bench --records` writes its file after the run: a Ctrl-C in a long run left no file at all. Now the
    requests that finished are recorded, each whole, and the run says where (with --json, in its one object)."""
    server.configure(itl_ms=20.0)
    records = tmp_path / "r.jsonl.gz"
    proc = subprocess.Popen([sys.executable, "-m", "autotune", *_bench(server, "--concurrency", "4", "--warmup", "0",
                                                                       "--num-prompts", "400", "--records",
                                                                       str(records), "--json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60  # the interpreter's start, slow on a busy host; then requests of ~60 ms
    while server.stats()["requests"] < 12 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # 12 sent: the first two waves' 8 have finished
    out, err = signal_and_collect(proc, signal.SIGINT, 30)
    assert proc.returncode == 130, err
    assert f"recorded in {records}" in err and "Traceback" not in err
    assert json.loads(out) == {"interrupted": True, "records": str(records)}
    kept = read_records(records)
    assert 0 < len(kept) < 400 and all(out.success and out.output_tokens == 4 for out, _ in kept)


def test_a_ctrl_c_before_the_run_does_not_point_at_a_records_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during the start (the workload's requests, the server's check) writes no records: the run said they
    were recorded anyway, naming the file an earlier run had left there."""
    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("autotune.loadgen.runner.run_bench", interrupted)
    earlier = tmp_path / "r.jsonl"
    earlier.write_text('{"i": 0}\n')
    code = main(["bench", "--url", "http://127.0.0.1:9", "--model", "m", "--workload", "random:16:4",
                 "--concurrency", "2", "--records", str(earlier), "--json"])
    out, err = capsys.readouterr()
    assert code == 130 and "recorded in" not in err, err
    assert json.loads(out) == {"interrupted": True, "records": None}
    assert earlier.read_text() == '{"i": 0}\n'
