"""The sim engine in-process on a virtual clock: the same load shape and figures as over HTTP, the same verdict
for the same seed whatever the CPU load, and the launcher's failure classes."""
from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

from autotune.cli import main
from autotune.engines.base import LaunchSpec
from autotune.engines.launcher import EngineServer
from autotune.errors import EngineStartError
from autotune.gpus import load_gpu
from autotune.loadgen.runner import LoadConfig, run_bench
from autotune.loadgen.workload import parse_workload
from autotune.loadsearch import LoadSearchConfig
from autotune.models import PRESETS, resolve_model
from autotune.sim.engine import setup_engine
from autotune.sim.inproc import InProcessSim, bench_in_process
from autotune.sim.vclock import Deadlock, VirtualClockLoop
from autotune.trial import LevelShape, TrialSettings, level_load_config, run_trial

FLASH = PRESETS["flash"]
H100 = load_gpu("h100")
# wall-clock times (and where the files went) may differ; every figure must not
# the clock's, not the seed's: wall times, and what the run records of its search for workers (its trials' wall
# times, when it recorded them)
WALL_KEYS = {"wall_s", "engine_wall_s", "load_wall_s", "trial_wall_s", "ready_s", "log_path", "search_left_s",
             "recorded_at"}


def settings(workload: str = "random:512:64:0.5", **kw: Any) -> TrialSettings:
    return TrialSettings(engine="sim", model=FLASH, gpu=H100, gpus=1, workload=parse_workload(workload, seed=0),
                         search=LoadSearchConfig(limits_ms={"ttft": 500.0}, max_concurrency=64), **kw)


def spec(tmp_path: Path, flags: dict[str, Any], name: str = "sim.log", time_scale: float = 1.0) -> LaunchSpec:
    return LaunchSpec(engine="sim", model=FLASH, flags=flags, gpu_ids=("0",), served_model_name="m",
                      log_path=tmp_path / name, gpu_type="h100", time_scale=time_scale, startup_timeout_s=60)


def records(folder: Path) -> dict[str, list[dict]]:
    return {p.name: [json.loads(line) for line in gzip.open(p, "rt")] for p in sorted(folder.glob("*.jsonl.gz"))}


def strip_wall(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return strip_wall(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {k: strip_wall(v) for k, v in obj.items() if k not in WALL_KEYS}
    if isinstance(obj, (list, tuple)):
        return [strip_wall(v) for v in obj]
    return obj


# ---- the virtual clock ------------------------------------------------------------------------------------

def test_virtual_clock_jumps_to_timers_and_reports_a_deadlock() -> None:
    async def sleepers() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        seen: list[tuple[str, float]] = []

        async def one(name: str, delay_s: float) -> None:
            await asyncio.sleep(delay_s)
            seen.append((name, loop.time()))
        await asyncio.gather(one("late", 3600.0), one("early", 0.25), one("mid", 2.0))
        return seen

    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        assert runner.run(sleepers()) == [("early", 0.25), ("mid", 2.0), ("late", 3600.0)]

    async def stuck() -> None:
        await asyncio.Event().wait()

    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner, pytest.raises(Deadlock):
        runner.run(stuck())


# ---- one level: load shape, records, failures as data -------------------------------------------------------

def test_level_has_the_trials_load_shape(tmp_path: Path) -> None:
    s = settings()
    cfg = level_load_config(s, 16, tmp_path / "00-c16.jsonl.gz")
    assert cfg.time_scale == 1.0 and cfg.ramp_s == s.level.ramp_s  # the virtual clock is the modelled one
    requests = s.workload.requests(cfg.warmup_prompts + cfg.num_prompts)
    r = bench_in_process(setup_engine(FLASH, H100, {}), requests, cfg)
    assert r.completed == cfg.num_prompts == 48 and r.failed == 0  # the warm-up wave is not in the figures
    assert r.extra["clock"] == "sim" and r.extra["steady_window_s"] > 0 and r.output_tok_s > 0
    assert r.extra["server_metrics"]["max_requests_running"] == 16
    # the engine steps by tokens per step, as vLLM's iteration-tokens histogram counts them: 64 prompts' prefills
    # (the workload's 1,024 tokens) beside decode-only steps of at most 16 tokens
    steps = r.extra["server_metrics"]["steps_by_tokens"]
    assert steps["le 16"] > 0 and sum(n for k, n in steps.items() if k in ("le 1", "le 8", "le 16")) > 0.8 * sum(
        steps.values())
    assert sum(n for k, n in steps.items() if k not in ("le 1", "le 8", "le 16")) >= 64 // 16  # prefill steps
    recs = [json.loads(line) for line in gzip.open(tmp_path / "00-c16.jsonl.gz", "rt")]
    assert len(recs) == 64 and sum(x["warmup"] for x in recs) == 16
    first_wave = sorted(x["start_s"] for x in recs[:16])
    assert first_wave[0] == 0.0 and 1.7 < first_wave[-1] < 2.0  # ramped over 2 modelled seconds
    assert [x["output_tokens"] for x in recs] == [q.output_len for q in requests]  # ignore_eos: every token


def test_engine_times_split_ttft_as_vllms_queue_and_prefill_histograms() -> None:
    """The in-process sim reports the time queued and in prefill as a scrape of vLLM's histograms gives them: a
    request on an idle engine is scheduled at once (queue 0) and, with no API server cost on the H100's card, its
    prefill is its whole TTFT; with one running request at a time the others queue
    until the one before them finishes, so the mean queue is about the mean request's whole length."""
    one = bench_in_process(setup_engine(FLASH, H100, {}), parse_workload("random:1024:16", seed=0).requests(1),
                           LoadConfig(concurrency=1, num_prompts=1))
    m = one.extra["server_metrics"]
    assert m["server_mean_queue_ms"] == 0.0 and m["server_mean_prefill_ms"] == pytest.approx(one.ttft_ms.p50)
    serial = bench_in_process(setup_engine(FLASH, H100, {"max-num-seqs": 1}),
                              parse_workload("random:256:64", seed=0).requests(4),
                              LoadConfig(concurrency=4, num_prompts=4))
    m = serial.extra["server_metrics"]
    # 4 requests at once, one at a time, each d long: they queue 0, d, 2d and 3d (1.5d on average) and end after
    # d, 2d, 3d and 4d (2.5d)
    assert m["server_mean_queue_ms"] == pytest.approx(1.5 / 2.5 * serial.e2el_ms.mean, rel=0.02)
    assert m["server_mean_queue_ms"] + m["server_mean_prefill_ms"] == pytest.approx(serial.ttft_ms.mean)


def test_too_long_requests_fail_as_data_and_timeouts_abort() -> None:
    setup = setup_engine(FLASH, H100, {"max-model-len": 2048})
    reqs = parse_workload("random:2000:100", seed=0).requests(4) + parse_workload("random:64:8", seed=0).requests(4)
    r = bench_in_process(setup, reqs, LoadConfig(concurrency=2, num_prompts=8))
    assert r.completed == 4 and r.errors == {"http_4xx": 4}  # vLLM answers 400; the run goes on
    slow = bench_in_process(setup, parse_workload("random:64:1500", seed=0).requests(2),
                            LoadConfig(concurrency=2, num_prompts=2, request_timeout_s=1.0))
    assert slow.errors == {"timeout": 2} and slow.status == "failed" and math.isnan(slow.output_tok_s)


# ---- the launcher's contract: failure classes and log tails ------------------------------------------------

@pytest.mark.parametrize("flags, failure_class, line", [
    ({"gpu-memory-utilization": 0.2}, "kv_too_small", "ValueError: No available memory for the cache blocks"),
    ({"max-model-len": 8192, "enable-chunked-prefill": False, "max-num-batched-tokens": 2048}, "bad_flags",
     "1 validation error for SchedulerConfig"),
    ({"kv-cache-dtype": "fp4"}, "bad_flags", "vllm serve: error: argument --kv-cache-dtype: invalid choice"),
    ({"tensor-parallel-size": 3}, "bad_flags", "32 attention heads, which tensor-parallel-size 3 does not divide"),
])
def test_refuses_to_start_like_the_sim_server(tmp_path: Path, flags: dict[str, Any], failure_class: str,
                                              line: str) -> None:
    engine = InProcessSim(spec(tmp_path, flags))
    with pytest.raises(EngineStartError) as exc:
        engine.start()
    assert exc.value.failure_class == failure_class and line in exc.value.log_tail
    assert not engine.alive()


@pytest.mark.slow
def test_failure_class_is_the_sim_servers(tmp_path: Path) -> None:
    flags = {"max-model-len": 8192, "enable-chunked-prefill": False, "max-num-batched-tokens": 2048}
    with pytest.raises(EngineStartError) as http:
        EngineServer(spec(tmp_path, flags, "http.log", time_scale=20.0), grace_s=5).start()
    with pytest.raises(EngineStartError) as inproc:
        InProcessSim(spec(tmp_path, flags, "inproc.log")).start()
    assert http.value.failure_class == inproc.value.failure_class == "bad_flags"


def test_a_search_held_back_by_max_concurrency_says_so(tmp_path: Path) -> None:
    """On 4 or 8 GPUs every trial stayed within the limits up to the default --max-concurrency, and its throughput
    there read as its throughput at the limit. Stopped by --max-concurrency below what the engine runs at once
    (max-num-seqs x DP), a trial says so; stopped by the engine's own ceiling it does not (more load only queues)."""
    s = settings("random:128:16")
    ceiling = s.search.max_concurrency
    capped = run_trial(s, {"max-num-seqs": 2 * ceiling}, "m", tmp_path / "capped" / "server.log")
    assert capped.feasible and capped.concurrency == ceiling and capped.knee_may_lie_higher
    engine = run_trial(s, {"max-num-seqs": ceiling // 4, "data-parallel-size": 2, "tensor-parallel-size": 1},
                       "m", tmp_path / "engine" / "server.log")
    assert engine.feasible and engine.concurrency == ceiling // 2
    assert engine.stop_reason == "ceiling" and not engine.knee_may_lie_higher


def test_trial_keeps_startup_figures_and_failure_classes(tmp_path: Path) -> None:
    s = settings()
    ok = run_trial(s, {"max-num-seqs": 32}, "m", tmp_path / "ok" / "server.log")
    assert ok.feasible and ok.startup["kv_cache_tokens"] > 0 and ok.startup["max_concurrency"] > 0
    assert "GPU KV cache size" in (tmp_path / "ok" / "server.log").read_text()
    assert sorted(p.name for p in (tmp_path / "ok" / "levels").glob("*.jsonl.gz"))[0] == "00-c8.jsonl.gz"
    bad = run_trial(s, {"max-model-len": 8192, "enable-chunked-prefill": False, "max-num-batched-tokens": 2048},
                    "m", tmp_path / "bad" / "server.log")  # fits in memory: refused at start, not by the plan
    assert not bad.feasible and bad.failure_class == "bad_flags"
    assert "validation error for SchedulerConfig" in bad.log_tail and not bad.levels


@pytest.mark.parametrize("sim_server", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_moe_data_parallel_with_fp8_weights_dies_under_load_as_vllm_does(tmp_path: Path, sim_server: bool) -> None:
    """vLLM 0.26.0 starts GLM-4.6V with DP2 and fp8 weights, serves one request, and its engine dies at the first
    batch of several (docs/results/glm-4.6v-h200x2.md): in the sim too, a crash with vLLM's error, not a winner."""
    s = dataclasses.replace(settings("random:1024:128:0.5", time_scale=20.0, sim_server=sim_server),
                            model=resolve_model("glm-4.6v"), gpu=load_gpu("h200"), gpus=2, gpu_ids=("0", "1"))
    dp_fp8 = {"tensor-parallel-size": 1, "data-parallel-size": 2, "enable-expert-parallel": True,
              "quantization": "fp8", "kv-cache-dtype": "fp8"}
    dead = run_trial(s, dp_fp8, "m", tmp_path / "dp" / "server.log")
    assert not dead.feasible and dead.failure_class == "crash", (dead.failure_class, dead.failure_reason)
    assert "AssertionError" in dead.log_tail and "EngineDeadError" in dead.log_tail
    assert dead.startup["kv_cache_tokens"] > 0  # it started, as vLLM did
    tp_fp8 = run_trial(s, {"tensor-parallel-size": 2, "quantization": "fp8"}, "m", tmp_path / "tp" / "server.log")
    assert tp_fp8.feasible and tp_fp8.failure_class == ""


# ---- determinism ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_same_seed_same_trial_whatever_the_cpu_load(tmp_path: Path) -> None:
    s = settings(level=LevelShape(max_prompts=200))
    flags = {"max-num-seqs": 64, "kv-cache-dtype": "fp8"}
    quiet = run_trial(s, flags, "m", tmp_path / "a" / "server.log")
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # a busy CPU beside the second run
    try:
        busy = run_trial(settings(level=LevelShape(max_prompts=200)), flags, "m", tmp_path / "b" / "server.log")
    finally:
        burner.kill()
        burner.wait()
    assert quiet.feasible and len(quiet.levels) >= 3
    assert strip_wall(quiet.levels) == strip_wall(busy.levels)
    assert (quiet.output_tok_s, quiet.p99_ms, quiet.concurrency) == (busy.output_tok_s, busy.p99_ms, busy.concurrency)
    assert records(tmp_path / "a" / "levels") == records(tmp_path / "b" / "levels")  # every request, every figure


@pytest.mark.slow
def test_same_seed_same_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def study(name: str) -> tuple[dict, list[dict], dict]:
        url = f"sqlite:///{tmp_path}/{name}.db"
        code = main(["run", "--model", "flash", "--gpus", "1", "--p99-ms", "500", "--engine", "sim", "--storage", url,
                     "--study", "s", "--trials", "4", "--workload", "random:512:64:0.5", "--max-concurrency", "128",
                     "--top-k", "1", "--repeats", "1", "--out", str(tmp_path / name), "--json"])
        out = capsys.readouterr().out
        assert code == 0
        study = optuna.load_study(study_name="s", storage=url)
        trials = [strip_wall({"params": t.params, "value": t.value, **t.user_attrs["result"]}) for t in study.trials]
        runs = [k for k in study.user_attrs if k.startswith("run.")]
        assert len(runs) == 1  # the invocation's record: its dates and wall time are the clock's, not the seed's
        return json.loads(out), trials, strip_wall({k: v for k, v in study.user_attrs.items() if k not in runs})

    report_a, trials_a, study_a = study("a")
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # a busy CPU beside the second study
    try:
        report_b, trials_b, study_b = study("b")
    finally:
        burner.kill()
        burner.wait()
    assert len(trials_a) == 4 and trials_a == trials_b  # flags, value, every level's figures
    assert any(k.startswith("remeasure.") for k in study_a) and study_a == study_b  # re-measurements, selection
    assert records(tmp_path / "a" / "s" / "trials" / "2" / "levels") == records(tmp_path / "b" / "s" / "trials" / "2" / "levels")
    keep = ("best", "baselines", "verdict", "output_tok_s", "ttft_ms")
    assert {k: strip_wall(report_a[k]) for k in keep} == {k: strip_wall(report_b[k]) for k in keep}


# ---- agreement with the HTTP sim server ----------------------------------------------------------------------

@pytest.mark.slow
def test_level_agrees_with_the_http_sim_server(tmp_path: Path) -> None:
    # A small level the HTTP sim keeps up with at time scale 5 on a busy 2-core machine.
    flags = {"max-num-seqs": 64, "enable-chunked-prefill": True}
    s_inproc = settings(time_scale=5.0)
    s_http = settings(time_scale=5.0, sim_server=True)
    cfg_inproc, cfg_http = level_load_config(s_inproc, 32), level_load_config(s_http, 32)
    requests = s_inproc.workload.requests(cfg_inproc.warmup_prompts + cfg_inproc.num_prompts)
    with InProcessSim(spec(tmp_path, flags, "inproc.log")) as engine:
        mine = engine.bench(requests, cfg_inproc)
    with EngineServer(spec(tmp_path, flags, "http.log", time_scale=5.0), grace_s=5) as server:
        theirs = run_bench(server.url, "m", requests, cfg_http)
    assert mine.completed == theirs.completed == cfg_inproc.num_prompts
    assert mine.output_tok_s == pytest.approx(theirs.output_tok_s, rel=0.05)
    assert mine.tpot_ms.p50 == pytest.approx(theirs.tpot_ms.p50, rel=0.05)
    # Over HTTP each arrival comes the client's wall-clock latency (x the time scale) after the step that freed
    # its slot, so which step it joins, and TTFT, move from run to run (52 against 63 ms seen at this level).
    assert mine.ttft_ms.p50 == pytest.approx(theirs.ttft_ms.p50, rel=0.4)
    # both report the time queued and in prefill as vLLM's histograms do (the HTTP one through its /metrics)
    mine_m, theirs_m = mine.extra["server_metrics"], theirs.extra["server_metrics"]
    assert mine_m["server_mean_queue_ms"] == theirs_m["server_mean_queue_ms"] == 0.0  # 32 requests, 64 seqs
    assert mine_m["server_mean_prefill_ms"] == pytest.approx(theirs_m["server_mean_prefill_ms"], rel=0.4)
    # and the engine steps by tokens per step, as vLLM's iteration-tokens histogram gives them
    assert set(theirs_m["steps_by_tokens"]) == set(mine_m["steps_by_tokens"])
    assert sum(theirs_m["steps_by_tokens"].values()) == pytest.approx(sum(mine_m["steps_by_tokens"].values()),
                                                                       rel=0.2)


# ---- sim predict: the study's requests and load shape --------------------------------------------------------

def test_predict_cli_is_a_study_level(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["sim", "predict", "--model", "flash", "--workload", "random:512:64:0.5", "--concurrency", "16",
                 "--json", "--max-num-seqs", "32"])
    out = json.loads(capsys.readouterr().out)
    assert code in (0, None)
    s = settings()
    cfg = level_load_config(s, 16)
    with InProcessSim(spec(tmp_path, {"max-num-seqs": 32})) as engine:
        level = engine.bench(s.workload.requests(cfg.warmup_prompts + cfg.num_prompts), cfg)
    assert out["output_tok_s"] == level.output_tok_s and out["ttft_ms"] == level.ttft_ms.to_json()
    assert (out["warmup_prompts"], out["num_prompts"], out["ramp_s"]) == (16, 48, 2.0)
    assert out["workload"] == {**s.workload.describe()}


def test_predict_cli_json_has_null_not_nan(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sim", "predict", "--model", "flash", "--workload", "random:64:1", "--concurrency", "4", "--json"])
    text = capsys.readouterr().out
    assert code in (0, None) and "NaN" not in text and json.loads(text)["tpot_ms"]["p99"] is None  # 1 token: no TPOT


@pytest.mark.parametrize("num_prompts, warmup", [(4, 0), (40, 0)])
def test_predict_cli_counts_the_whole_run_when_the_loop_never_runs_full(capsys: pytest.CaptureFixture[str],
                                                                       num_prompts: int, warmup: int) -> None:
    """At concurrency 64, 4 (or 40) measured requests and no warm-up are the first wave alone, started along its
    2 s ramp: the steady window was that ramp, in which no request finished (0 requests/s). Throughput is then the
    whole run's, and the result says so."""
    code = main(["sim", "predict", "--model", "flash", "--workload", "random:256:32", "--num-prompts", str(num_prompts),
                 "--warmup", str(warmup), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code in (0, None) and data["completed"] == num_prompts
    assert "steady_window_s" not in data and "whole run" in data["no_steady_window"]
    assert data["request_s"] == pytest.approx(num_prompts / data["duration_s"])
    assert data["output_tok_s"] == pytest.approx(num_prompts * 32 / data["duration_s"])


def test_predict_cli_fails_when_every_request_fails(capsys: pytest.CaptureFixture[str]) -> None:
    """Prompts longer than --max-model-len: the server refuses each one. The figures are printed (null in JSON), but
    the command fails (exit 1) and says why on one line, as `bench` does, so that a script cannot read NaN as a
    measurement."""
    code = main(["sim", "predict", "--model", "flash", "--workload", "random:256:8", "--concurrency", "4", "--json",
                 "--max-model-len", "128"])
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert code == 1 and data["status"] == "failed" and data["completed"] == 0 and data["output_tok_s"] is None
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"every request failed (http_4xx: {data['failed']}); the first: HTTP 400: " in err
    assert "maximum context length is 128 tokens" in err


def test_predict_cli_refuses_an_image_the_model_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    """GLM's image processor (vLLM's) refuses an aspect ratio over 200: every request would fail, so such a size is
    refused up front (exit 2), one below it is predicted."""
    assert main(["sim", "predict", "--model", "flash", "--workload", "mm:128:8:1:448x448,4000x16", "--concurrency",
                 "2", "--num-prompts", "2", "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refuses a 4000x16 image (absolute aspect ratio must be smaller than 200" in err
    assert main(["sim", "predict", "--model", "flash", "--workload", "mm:128:8:1:3000x16", "--concurrency", "2",
                 "--num-prompts", "2", "--json"]) == 0


def test_predict_cli_checks_the_workload_like_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "predict", "--model", "flash", "--workload", "random:1024:512:1.5", "--json"]) == 2
    assert "RANGE must be in [0, 1)" in capsys.readouterr().err


def test_predict_cli_refuses_a_tp_the_model_cannot_split(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "predict", "--model", "flash", "--tensor-parallel-size", "3", "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert "model 'flash' has 32 attention heads, which tensor-parallel-size 3 does not divide" in err


def test_predict_matches_the_engine_start_rules() -> None:
    from autotune.sim.predict import predict

    with pytest.raises(EngineStartError) as exc:
        predict(resolve_model("flash"), H100, {"gpu-memory-utilization": 0.2}, 1024, 512, 8, 8)
    assert exc.value.failure_class == "kv_too_small"
