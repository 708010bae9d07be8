"""The vLLM tracer (benchmarks/gpu/vllm_trace/sitecustomize.py) on stand-in modules of vLLM's names, and the table that
reads its traces (benchmarks/vllm_trace_table.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import vllm_trace_table as table  # noqa: E402

STAND_IN = {
    "vllm/v1/core/sched/scheduler.py": """
        from types import SimpleNamespace as NS
        class Scheduler:
            def schedule(self):
                return NS(scheduled_new_reqs=[NS(req_id="e1")], total_num_scheduled_tokens=900)
            def update_from_output(self, scheduler_output, model_output):
                return {0: NS(outputs=[NS(request_id="e1", new_token_ids=[7])])}
    """,
    "vllm/v1/engine/core.py": """
        class EngineCore:
            def preprocess_add_request(self, request):
                return request, 0
            def add_request(self, request, request_wave=0):
                return None
    """,
    "vllm/v1/engine/output_processor.py": """
        class OutputProcessor:
            def process_outputs(self, outputs, timestamp=None, stats=None):
                return "processed"
    """,
}


def _run_with_tracer(tmp_path: Path, code: str) -> list[list[str]]:
    for rel, src in STAND_IN.items():
        path = tmp_path / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(src))
        for parent in path.relative_to(tmp_path / "pkg").parents:
            if str(parent) != ".":
                (tmp_path / "pkg" / parent / "__init__.py").touch()
    env = dict(os.environ, VLLM_TRACE_DIR=str(tmp_path / "trace"),
               PYTHONPATH=os.pathsep.join([str(ROOT / "benchmarks/gpu/vllm_trace"), str(tmp_path / "pkg")]))
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, check=True, cwd=tmp_path)
    lines = []
    for f in sorted((tmp_path / "trace").glob("trace-*.tsv")):
        lines += [line.rstrip("\n").split("\t") for line in f.read_text().splitlines()]
    return lines


def test_the_tracer_stamps_a_request_through_the_engine_core(tmp_path):
    lines = _run_with_tracer(tmp_path, """
        from types import SimpleNamespace as NS
        from vllm.v1.engine.core import EngineCore
        from vllm.v1.core.sched.scheduler import Scheduler
        req = NS(request_id="e1", arrival_time=12.5)
        core, sched = EngineCore(), Scheduler()
        assert core.preprocess_add_request(req) == (req, 0)
        core.add_request(req)
        out = sched.schedule()
        assert list(sched.update_from_output(out, None)) == [0]
        sched.update_from_output(sched.schedule(), None)  # e1's second token: no second F
    """)
    events = [(e, key, extra) for e, _wall, _mono, key, extra in lines if e != "patched"]
    assert events == [("P", "e1", "12.5"), ("p", "e1", ""), ("Q", "e1", ""), ("K", "1", "900:e1"), ("U", "1", ""),
                      ("F", "e1", "1"), ("K", "2", "900:e1"), ("U", "2", "")]
    assert {key for e, _w, _m, key, _x in lines if e == "patched"} == {"vllm.v1.engine.core",
                                                                      "vllm.v1.core.sched.scheduler"}


def test_a_tracing_error_is_written_down_and_the_call_goes_on(tmp_path):
    lines = _run_with_tracer(tmp_path, """
        from vllm.v1.engine.output_processor import OutputProcessor
        assert OutputProcessor().process_outputs([object()]) == "processed"
    """)
    assert [(e, key) for e, _w, _m, key, _x in lines if e not in ("patched",)] == [("X", "O")]


def _write_trace(run_dir: Path, rows: list[tuple]) -> None:
    (run_dir / "trace-defaults").mkdir(parents=True)
    (run_dir / "levels.txt").write_text("defaults c1 100.0 200.0\n")
    text = "".join(f"{e}\t{t:.6f}\t0\t{k}\t{x}\n" for e, t, k, x in rows)
    (run_dir / "trace-defaults" / "trace-1.tsv").write_text(text)


def _request(stamp: str, engine_id: str, t0: float, step: int) -> list[tuple]:
    """One request's events: each segment a different length (ms) so that a join error shows."""
    handler = f"h{stamp}"
    marks = [("H", 0.0, "-", handler), ("R", 6.0, stamp, handler), ("A", 7.0, stamp, "x"),
             ("S", 8.0, engine_id, stamp), ("P", 9.5, engine_id, ""), ("p", 10.0, engine_id, ""),
             ("Q", 22.0, engine_id, ""), ("K", 23.0, str(step), f"900:{engine_id}"), ("U", 70.0, str(step), ""),
             ("F", 70.5, engine_id, str(step)), ("O", 72.0, engine_id, ""), ("W", 75.0, stamp, "")]
    return [(e, t0 + ms / 1e3, k, x) for e, ms, k, x in marks]


def test_the_table_joins_both_processes_and_leaves_the_warmup_out(tmp_path):
    rows = _request("101.0", "e-a", 101.0, 1) + _request("102.0", "e-b", 102.0, 2)
    rows[3:3] = [("H", 102.0, "-", "hother")]  # another handler starts meanwhile, never rendered here
    rows.append(("U", 102.0195, "0", ""))  # a step ends 2.5 ms before the second request joins the scheduler
    _write_trace(tmp_path / "run", rows)
    [row] = table.summarize([tmp_path / "run"])
    assert row["requests"] == 1  # the first (C = 1) is the warm-up wave
    means = {name: s["mean"] for name, s in row["segments_ms"].items()}
    expected = {"render": 6.0, "to_add": 1.0, "inputs": 1.0, "to_core": 1.5, "request": 0.5, "to_loop": 12.0,
                "queued": 1.0, "prefill": 47.5, "to_api": 1.5, "to_stream": 3.0, "ttft": 75.0}
    assert means == pytest.approx(expected, abs=1e-3)
    assert row["steps_scheduled_to_first_token"] == 0 and row["first_token_in_its_step"] == 1.0
    assert row["steps"] == 3
    assert row["renders_in_handler_order"]
    assert row["render_own_ms"]["mean"] == pytest.approx(6.0, abs=1e-3) and row["render_wait_ms"]["mean"] == 0
    assert row["joined_after_step_end_ms"]["mean"] == pytest.approx(2.5, abs=1e-3)
    assert row["joined_steps_later"] == [1]


def test_a_render_that_waits_for_the_one_before_it(tmp_path):
    first, second = _request("101.0", "e-a", 101.0, 1), _request("101.002", "e-b", 101.002, 2)
    _write_trace(tmp_path / "run", first + second)  # the second handler starts 4 ms before the first render ends
    [row] = table.summarize([tmp_path / "run"])
    assert row["render_wait_ms"]["mean"] == pytest.approx(4.0, abs=1e-3)
    assert row["render_own_ms"]["mean"] == pytest.approx(2.0, abs=1e-3)


def test_a_compacted_trace_reads_the_same(tmp_path):
    rows = _request("101.0", "e-a", 101.0, 1) + _request("102.0", "e-b", 102.0, 2)
    _write_trace(tmp_path / "run", rows)
    table.compact_traces(tmp_path / "run", tmp_path / "small")
    (tmp_path / "small" / "levels.txt").write_text((tmp_path / "run" / "levels.txt").read_text())
    full, small = table.summarize([tmp_path / "run"]), table.summarize([tmp_path / "small"])
    for a, b in zip(full, small):
        for name, stats in a["segments_ms"].items():
            assert b["segments_ms"][name]["mean"] == pytest.approx(stats["mean"], abs=0.1)


def test_a_folder_without_levels_is_a_one_line_error(tmp_path, capsys):
    assert table.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def _with_the_loop(rows: list[tuple], t0: float) -> list[tuple]:
    """A TRACE=loop request: tokenized 0.5-5.5 ms after its handler starts (rendered at 6); an output batch of 4 outputs (0.2 ms) at
    +71 ms, its 4 chunks 0.1 ms apart after it, and the next batch at +80 ms."""
    loop = [("T", 0.5, "-", ""), ("t", 5.5, "-", ""), ("B", 71.0, "-", "4"), ("b", 71.2, "-", ""),
            *[("Y", 71.3 + 0.1 * k, "-", "") for k in range(4)], ("B", 80.0, "-", "4"), ("b", 80.2, "-", "")]
    return rows + [(e, t0 + ms / 1e3, k, x) for e, ms, k, x in loop]


def test_the_api_servers_loop_from_a_loop_trace_and_its_compacted_copy(tmp_path):
    rows = _with_the_loop(_request("101.0", "e-a", 101.0, 1), 101.0)
    rows = _with_the_loop(rows + _request("102.0", "e-b", 102.0, 2), 102.0)
    _write_trace(tmp_path / "run", rows)
    table.compact_traces(tmp_path / "run", tmp_path / "small")
    (tmp_path / "small" / "levels.txt").write_text((tmp_path / "run" / "levels.txt").read_text())
    for run in ("run", "small"):
        [row] = table.summarize([tmp_path / run])
        assert row["tokenize_ms"]["mean"] == pytest.approx(5.0, abs=0.1)
        assert row["before_tokenize_ms"]["mean"] == pytest.approx(0.5, abs=0.1)
        assert row["after_tokenize_ms"]["mean"] == pytest.approx(0.5, abs=0.1)
        assert row["output_us"] == pytest.approx(50.0, abs=1.0)
        assert row["pass_ms"]["mean"] == pytest.approx(0.6, abs=0.1)  # batch start to its last chunk
        assert row["chunks_per_pass"] == 4


def test_the_longest_quiet_stretch_of_a_wait():
    busy = [(0.0, 1.0), (0.5, 2.0), (5.0, 6.0), (9.0, 12.0)]
    assert table._longest_quiet(busy, 1.5, 10.0) == pytest.approx(3.0)  # 2.0 to 5.0
    assert table._longest_quiet(busy, 10.0, 15.0) == pytest.approx(3.0)  # 12.0 to 15.0
    assert table._longest_quiet([], 1.0, 2.0) == pytest.approx(1.0)
    assert table._covered(busy, 1.5, 10.0) == pytest.approx(0.5 + 1.0 + 1.0)
    assert table._covered(busy, 0.0, 0.75) == pytest.approx(0.75)


def test_the_sims_step_beside_the_gpus_grows_with_its_prompts():
    decode, one, two = (table.sim_step_ms(24, k) for k in (0, 1, 2))
    assert decode < one < two
    assert table.sim_step_ms(24, 1, {"eager_step_overhead_ms": 50.0}) > one + 40.0  # the constants reach the card


def test_a_constant_without_a_value_is_a_one_line_error(tmp_path, capsys):
    _write_trace(tmp_path / "run", _request("101.0", "e-a", 101.0, 1))
    with pytest.raises(SystemExit) as exit_info:
        table.main([str(tmp_path / "run"), "--constants", "eager_step_overhead_ms"])
    assert exit_info.value.code == 2
    assert "NAME=VALUE" in capsys.readouterr().err


def test_a_step_with_prefills_between_decode_steps_shows_in_two_intervals(tmp_path):
    tokens = {1: 24, 2: 24, 3: 1048, 4: 24, 5: 24}
    ends_ms = {1: 0.0, 2: 35.0, 3: 40.0, 4: 46.5, 5: 53.0}  # step 2's tokens wait 35 ms while step 3 is launched
    rows = [("K", 100.0 + s / 1e3, str(s), f"{n}:") for s, n in tokens.items()]
    rows += [("U", 100.1 + ms / 1e3, str(s), "") for s, ms in ends_ms.items()]
    run = tmp_path / "run"
    (run / "trace-defaults").mkdir(parents=True)
    (run / "levels.txt").write_text("defaults c24 99.0 101.0\n")
    (run / "trace-defaults" / "trace-1.tsv").write_text(
        "".join(f"{e}\t{t:.6f}\t0\t{k}\t{x}\n" for e, t, k, x in rows))
    [row] = table.summarize([run])
    steps = row["step_intervals_ms"]
    assert steps["decode"]["n"] == 1 and steps["decode"]["after"]["p50"] == pytest.approx(6.5, abs=1e-3)
    mixed = steps["600-1500"]
    assert mixed["n"] == 1
    assert (mixed["before"]["p50"], mixed["after"]["p50"], mixed["sum"]["p50"]) == pytest.approx((35.0, 5.0, 40.0),
                                                                                                abs=1e-3)
    assert steps["1500-2600"]["n"] == 0
