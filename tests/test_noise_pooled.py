"""benchmarks/noise_pooled.py: the pooled run-to-run spread at a fixed load, and an extended level's one P99 ITL
counted once."""
from __future__ import annotations

import math

import numpy as np

from tests.benchmark_scripts import load_benchmark

npool = load_benchmark("noise_pooled")


def _run(workload: str, config: str, c: int, gpu: dict, sim: dict, trial: int = 0, copy: int = 0) -> dict:
    return {"dataset": "d", "workload": workload, "config": config, "concurrency": c, "trial": trial, "copy": copy,
            "gpu": gpu, "sim": sim}


def test_the_pooled_spread_is_the_gpus_and_what_it_has_beyond_the_streams() -> None:
    """Many points of four runs each, GPU log-figures spread by 5%, the sim's by 3%: the pooled CVs come back
    within sampling error, the residual is sqrt(5^2 - 3^2) = 4%, and the degrees of freedom are runs - points."""
    rng = np.random.default_rng(1)
    runs = []
    for point in range(200):
        base = 1000.0 * (1 + point)  # points of very different size: each is taken around its own mean
        for k in range(4):
            runs.append(_run("w", f"cfg{point}", 8, {"output_tok_s": base * math.exp(rng.normal(0, 0.05))},
                             {"output_tok_s": base * math.exp(rng.normal(0, 0.03))}, trial=k))
    s = npool.spread(runs, "output_tok_s")
    assert s["dof"] == 600
    assert math.isclose(s["gpu"], 0.05, rel_tol=0.1) and math.isclose(s["sim"], 0.03, rel_tol=0.1)
    assert s["gpu_interval"][0] < s["gpu"] < s["gpu_interval"][1]
    assert math.isclose(npool.residual(s), 0.04, rel_tol=0.15)
    assert npool.residual({"gpu": 0.02, "sim": 0.03}) == 0.0


def test_an_extended_levels_pooled_p99_itl_counts_once() -> None:
    """Two runs of one searched level store the same pooled P99 ITL: one value, so the point has no spread to
    pool; a re-measurement (another trial number) adds its own."""
    level = [_run("w", "a", 16, {"p99_itl_ms": 50.0}, {"p99_itl_ms": 40.0 + k}) for k in range(2)]
    assert npool.spread(level, "p99_itl_ms")["dof"] == 0
    again = level + [_run("w", "a", 16, {"p99_itl_ms": 55.0}, {"p99_itl_ms": 44.0}, trial=3)]
    s = npool.spread(again, "p99_itl_ms")
    assert s["dof"] == 1
    assert math.isclose(s["gpu"], abs(math.log(55 / 50)) / math.sqrt(2), rel_tol=1e-9)


def _fresh_run_files(folder, server: int, c: int, run: int, seed: int, flags: dict | None = None) -> None:
    """A run as `noise_repeats.sh` keeps it (`autotune bench --json` and its records), made here by the in-process
    sim on the weightless Flash model, vLLM's defaults, in the h200 card: the level any replay must reproduce."""
    import json

    from autotune.gpus import load_gpu
    from autotune.loadgen.runner import LoadConfig
    from autotune.loadgen.workload import parse_workload
    from autotune.models import spec_from_config
    from autotune.sim.engine import setup_engine
    from autotune.sim.inproc import bench_in_process
    from autotune.testing.models import WEIGHTLESS_FLASH_CONFIG

    spec = "random:512:24:0.5"
    name = folder / f"s{server}-c{c}-{run}"
    cfg = LoadConfig(concurrency=c, num_prompts=3 * c, warmup_prompts=c, ramp_s=0.5, seed=seed,
                     records_path=str(name) + ".jsonl.gz", records_itl=True)
    model = spec_from_config(WEIGHTLESS_FLASH_CONFIG, "weightless-flash", "weightless-flash")
    engine = setup_engine(model, load_gpu("h200"), flags or {})
    result = bench_in_process(engine, parse_workload(spec, seed=seed).requests(4 * c), cfg)
    (folder / f"{name.name}.json").write_text(json.dumps(
        {**result.to_json(), "concurrency": c, "num_prompts": 3 * c, "warmup_prompts": c, "ramp_s": 0.5,
         "workload": {"spec": spec, "seed": seed}}))


def test_fresh_runs_are_replayed_with_their_own_requests_and_load_shape(tmp_path) -> None:
    """Runs made by the sim itself, as noise_repeats.sh names them (two servers, one load): replayed from what their
    JSON says (workload, seed, warm-up wave, measured requests, ramp), the sim's figures are the runs' own; a run
    whose JSON names another seed is replayed with that seed's requests and no longer matches."""
    import json

    for server, seed in ((1, 11), (2, 12)):
        _fresh_run_files(tmp_path, server, 4, 1, seed)
    (tmp_path / "s2-c4-2.json").write_text("{not json")  # a failed run: skipped, its .err says why
    runs = npool.fresh_runs(tmp_path)
    assert [(r["copy"], r["concurrency"], r["workload"]) for r in runs] == [("s1", 4, "random:512:24:0.5"),
                                                                            ("s2", 4, "random:512:24:0.5")]
    for r in runs:
        for metric in npool.METRICS:
            assert math.isclose(r["gpu"][metric], r["sim"][metric], rel_tol=1e-9), (r["copy"], metric)
    bench = json.loads((tmp_path / "s1-c4-1.json").read_text())
    (tmp_path / "s1-c4-1.json").write_text(json.dumps({**bench, "workload": {**bench["workload"], "seed": 99}}))
    moved = npool.fresh_runs(tmp_path)[0]
    assert not math.isclose(moved["gpu"]["p99_ttft_ms"], moved["sim"]["p99_ttft_ms"], rel_tol=1e-6)


def test_fresh_points_are_judged_against_the_gpus_interval() -> None:
    """One fresh point, GPU throughput spread 4%, the sim's streams 3%: with a residual of 2.6% (hypot = 4%) the
    sim lands inside the GPU's interval, the shipped model's figure is reported beside it."""
    rng = np.random.default_rng(3)
    runs = [_run("w", "vLLM defaults", 48, {"output_tok_s": 1000 * math.exp(rng.normal(0, 0.04))},
                 {"output_tok_s": 1000 * math.exp(rng.normal(0, 0.03))}, copy=k) for k in range(400)]
    s = npool.spread(runs, "output_tok_s")
    residual = math.sqrt(max(s["gpu"] ** 2 - s["sim"] ** 2, 0.0))
    judged = npool.judge_fresh(runs, {m: residual for m in npool.METRICS})["output_tok_s"]
    assert judged["dof"] == 399 and judged["residual_inside"]
    assert math.isclose(judged["with_model"], math.hypot(s["sim"], npool.model_cv("output_tok_s")), rel_tol=1e-12)
    far = npool.judge_fresh(runs, {m: 0.2 for m in npool.METRICS})["output_tok_s"]
    assert not far["residual_inside"]


def test_a_servers_own_spread_is_told_from_the_spread_between_servers_and_every_repeat_is_pooled() -> None:
    """Fresh runs on four servers whose levels sit 10% apart, 1% around each server's own: the within-server spread
    is the 1%, all fresh runs show the 10%, every repeat pools the studies' points with the fresh ones (their
    degrees of freedom add up), and each fresh point sets the sim's mean beside the GPU's mean and range."""
    rng = np.random.default_rng(5)
    fresh = [{**_run("random:1024:256:0.5", "vLLM defaults", 48,
                     {m: 100 * math.exp(0.1 * server + rng.normal(0, 0.01)) for m in npool.METRICS},
                     {m: 100.0 for m in npool.METRICS}, copy=f"s{server}"), "dataset": "fresh"}
             for server in range(4) for _ in range(5)]
    studies = [_run("w", "a", 16, {m: 100 * math.exp(rng.normal(0, 0.05)) for m in npool.METRICS},
                    {m: 100 * math.exp(rng.normal(0, 0.03)) for m in npool.METRICS}, trial=k) for k in range(6)]
    out = npool.report(studies, fresh)
    within, every = out["fresh_within_server"]["output_tok_s"], out["all_gpu_repeats"]["output_tok_s"]
    assert within["dof"] == 16 and math.isclose(within["gpu"], 0.01, rel_tol=0.5)
    assert out["fresh"]["all"]["output_tok_s"]["gpu"] > 0.08
    assert every["dof"] == 19 + 5
    accuracy = out["fresh_accuracy"]["random:1024:256:0.5 C=48, vLLM defaults"]["output_tok_s"]
    assert math.isclose(accuracy["sim_mean"], 100.0) and accuracy["gpu_min"] < accuracy["gpu_mean"] < accuracy["gpu_max"]
    assert math.isclose(accuracy["error"], 100.0 / accuracy["gpu_mean"] - 1)


def test_a_folders_flags_are_the_servers_and_its_runs_are_replayed_with_them(tmp_path) -> None:
    """A folder whose servers ran fp8 KV and 2,048 batched tokens (settings.txt's flags, as noise_repeats.sh writes
    them): its configuration is named by them and each run is replayed with them, so the sim's figures are the
    run's own; a folder without flags is vLLM's defaults."""
    assert npool.served_flags(tmp_path) == ("vLLM defaults", {})
    flags = {"kv-cache-dtype": "fp8", "max-num-batched-tokens": 2048}
    (tmp_path / "settings.txt").write_text("servers=1\nflags=--kv-cache-dtype fp8 --max-num-batched-tokens 2048\n")
    assert npool.served_flags(tmp_path) == ("--kv-cache-dtype fp8 --max-num-batched-tokens 2048", flags)
    _fresh_run_files(tmp_path, 1, 4, 1, 21, flags)
    (run,) = npool.fresh_runs(tmp_path)
    assert run["config"] == "--kv-cache-dtype fp8 --max-num-batched-tokens 2048"
    for metric in npool.METRICS:
        assert math.isclose(run["gpu"][metric], run["sim"][metric], rel_tol=1e-9), metric


def test_two_configurations_at_one_load_are_ordered_where_the_gpu_tells_them_apart() -> None:
    """Eight runs each: the other configuration 5% faster on the GPU (1% noise), the sim 3% faster: told apart,
    same order; P99 TTFT equal on the GPU (interval holds 1): no order asked of the sim; a sim that says slower
    where the GPU says faster is flagged."""
    rng = np.random.default_rng(7)

    def runs(config: str, gpu_tok_s: float, sim_tok_s: float) -> list[dict]:
        return [_run("w", config, 48, {"output_tok_s": gpu_tok_s * math.exp(rng.normal(0, 0.01)),
                                       "p99_ttft_ms": 200 * math.exp(rng.normal(0, 0.2))},
                     {"output_tok_s": sim_tok_s, "p99_ttft_ms": 180.0}, copy=k) for k in range(8)]

    fresh = runs("vLLM defaults", 1000, 1000) + runs("fp8", 1050, 1030)
    (cells,) = npool.compare_configs(fresh).values()
    tok = cells["output_tok_s"]
    assert tok["gpu_tells_apart"] and tok["same_order"]
    assert tok["gpu_interval"][0] < tok["gpu"] < tok["gpu_interval"][1] and math.isclose(tok["sim"], 1.03)
    assert cells["p99_ttft_ms"]["same_order"] is None
    opposite = runs("vLLM defaults", 1000, 1000) + runs("fp8", 1050, 970)
    assert npool.compare_configs(opposite)["w C=48, fp8 / vLLM defaults"]["output_tok_s"]["same_order"] is False
