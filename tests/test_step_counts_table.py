"""benchmarks/step_counts_table.py (issue #21): a level's engine steps, rebuilt from the client's token times and
from vLLM's step histogram, GPU beside the in-process sim on the same requests."""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.benchmark_scripts import load_benchmark

sct = load_benchmark("step_counts_table")


def test_buckets_fall_into_their_groups() -> None:
    steps = {"le 1": 1, "le 64": 100, "le 256": 2, "le 512": 3, "le 2048": 20, "le 4096": 4, "le inf": 1}
    assert sct.grouped(steps) == {"decode only": 103, "one prefill": 23, "more": 5}


def _record(start_s: float, ttft_ms: float, gaps_ms: list[float]) -> dict:
    return {"warmup": False, "ok": True, "start_s": start_s, "ttft_ms": ttft_ms, "itl_ms": gaps_ms,
            "e2el_ms": ttft_ms + sum(gaps_ms), "prompt_tokens": 1000, "output_tokens": len(gaps_ms) + 1}


def test_steps_rebuilt_from_token_times() -> None:
    """Two streams sharing 6 ms decode steps; B's prefill rides in the step that ends at 68 ms, 26 ms long: the
    decode-only step is 6 ms and the prefill adds 20 ms."""
    a = _record(0.0, 30.0, [6.0, 6.0, 26.0, 6.0, 6.0])  # tokens at 30, 36, 42, 68, 74, 80 ms
    b = _record(0.040, 28.0, [6.0, 6.0])  # first token at 68 ms, then 74 and 80
    b["itl_ms"] = [x + 0.3 for x in b["itl_ms"]]  # its chunks trail A's by a fraction of a millisecond
    steps = sct.client_steps([a, b])
    assert steps["decode_step_ms"] == pytest.approx(6.0, abs=0.31)
    assert steps["first_tokens"] == 1
    assert steps["prefill_adds_ms"] == pytest.approx(20.0, abs=0.7)
    assert steps["steps"] == 4


def test_a_level_against_the_sim_on_the_same_requests(tmp_path: Path) -> None:
    (tmp_path / "configs.txt").write_text("defaults: \nbatch2048: --max-num-batched-tokens 2048\n")
    (tmp_path / "settings.txt").write_text("loads=4 8\nworkload=random:1024:128:0.5\nengine=vllm\nmodel=/tmp/model\n")
    level = {"concurrency": 4, "num_prompts": 12, "warmup_prompts": 4, "ramp_s": 2.0,
             "workload": {"spec": "random:1024:128:0.5", "seed": 1}, "tpot_ms": {"p50": 8.0, "p99": 9.0}}
    gpu = {**level, "itl_ms": {"p99": 41.0}, "output_tok_s": 500.0, "ttft_ms": {"p50": 29.0, "p99": 30.0},
           "server_metrics": {"steps_by_tokens": {"le 8": 300, "le 2048": 14, "le 4096": 1},
                              "server_mean_queue_ms": 3.0, "server_mean_prefill_ms": 20.0}}
    (tmp_path / "defaults-c4.json").write_text(json.dumps(gpu))
    # the next level on the same server with the same seed: its prompts were sent before (vLLM's prefix cache)
    (tmp_path / "defaults-c8.json").write_text(json.dumps({**gpu, "concurrency": 8, "num_prompts": 24,
                                                            "warmup_prompts": 8}))
    with gzip.open(tmp_path / "defaults-c4.jsonl.gz", "wt") as f:
        for r in (_record(0.0, 30.0, [6.0, 6.0, 26.0, 6.0, 6.0]), _record(0.040, 28.0, [6.0, 6.0])):
            f.write(json.dumps(r) + "\n")
    (tmp_path / "batch2048-c4.json").write_text("")  # a failed level: skipped
    rows = sct.table(tmp_path, {})
    assert [(r["config"], r["concurrency"], r["cached"]) for r in rows] == [("defaults", 4, False),
                                                                            ("defaults", 8, True)]
    assert rows[0]["gpu"]["steps"] == {"decode only": 300, "one prefill": 14, "more": 1}
    assert rows[0]["gpu"]["client_steps"]["first_tokens"] == 1
    assert rows[1]["gpu"]["client_steps"] is None  # no records kept
    # the TTFT's split: the records' mean (30 and 28 ms) less vLLM's queued and prefill means is outside the engine
    assert rows[0]["gpu"]["ttft_split"] == {"mean_ttft_ms": 29.0, "outside_ms": 6.0, "queue_ms": 3.0,
                                            "prefill_ms": 20.0}
    assert rows[1]["gpu"]["ttft_split"] is None
    # tokens at 30, 36, 42, 68, 74 and 80 ms, B's at the same times as A's: six deliveries over 50 ms
    assert rows[0]["gpu"]["deliveries"]["deliveries"] == 6
    assert rows[0]["gpu"]["deliveries"]["span_s"] == pytest.approx(0.050)
    assert rows[0]["sim"]["deliveries"]["deliveries"] > 0
    split = rows[0]["sim"]["ttft_split"]
    assert split["queue_ms"] >= 0 and split["prefill_ms"] > 0 and split["outside_ms"] >= 0
    assert split["outside_ms"] + split["queue_ms"] + split["prefill_ms"] == pytest.approx(split["mean_ttft_ms"])
    sim = rows[0]["sim"]["steps"]
    # 16 requests of 512-1,536 prompt tokens at concurrency 4: their prefills, and decode steps of at most 4 tokens
    assert sim["decode only"] > 10 * (sim["one prefill"] + sim["more"]) and sim["one prefill"] + sim["more"] >= 8
    assert rows[0]["sim"]["p99_itl_ms"] > 0
    assert 3.0 < rows[0]["sim"]["client_steps"]["decode_step_ms"] < 20.0


def test_constants_reach_the_sim(tmp_path: Path) -> None:
    """--constants: a slower HBM makes the sim's decode-only steps longer."""
    level = {"concurrency": 8, "num_prompts": 24, "warmup_prompts": 8, "ramp_s": 2.0,
             "workload": {"spec": "random:1024:128:0.5", "seed": 8}}
    fast = sct.sim_level({}, level, {"hbm_efficiency": 0.9})["client_steps"]["decode_step_ms"]
    slow = sct.sim_level({}, level, {"hbm_efficiency": 0.45})["client_steps"]["decode_step_ms"]
    assert slow > 1.5 * fast


def test_error_ranges_over_the_levels_that_have_the_figure() -> None:
    def level(gpu_itl: float, sim_itl: float, split: bool) -> dict:
        side = {"p99_itl_ms": 0.0, "output_tok_s": 0.0, "p50_tpot_ms": 0.0, "p99_ttft_ms": 0.0, "client_steps": None}
        gpu = {**side, "p99_itl_ms": gpu_itl, "ttft_split": {"mean_ttft_ms": 100.0} if split else None}
        return {"gpu": gpu, "sim": {**side, "p99_itl_ms": sim_itl, "ttft_split": {"mean_ttft_ms": 80.0}}}
    ranges = sct.error_ranges([level(50, 60, True), level(40, 36, False)])
    assert ranges["P99 ITL"] == pytest.approx((-10.0, 20.0, 2))
    assert ranges["mean TTFT"] == pytest.approx((-20.0, -20.0, 1))  # one level has no split
    assert "tok/s" not in ranges  # no level has the GPU's figure


def test_server_spread_over_fresh_servers_of_one_configuration() -> None:
    """NAME.N levels at one load are one configuration on N servers: their spread is the SD of the log figure,
    with a chi-square interval around it; a level that re-sent earlier prompts, a configuration on one server and
    one without a server number are left out."""
    def level(config: str, c: int, tok_s: float, prefill_ms: float | None, cached: bool = False,
              folder: str = "f") -> dict:
        client = {"decode_step_ms": 6.3, "prefill_adds_ms": prefill_ms} if prefill_ms else None
        gpu = {"output_tok_s": tok_s, "p99_ttft_ms": 150.0, "p99_tpot_ms": 11.0, "p99_itl_ms": 50.0,
               "client_steps": client}
        return {"folder": folder, "config": config, "concurrency": c, "cached": cached, "gpu": gpu}
    rows = [level("defaults.1", 16, 1000.0, 30.0), level("defaults.2", 16, 1100.0, 36.0),
            level("defaults.3", 16, 1050.0, None), level("defaults.3", 16, 5000.0, 90.0, cached=True),
            level("defaults.1", 24, 1400.0, 30.0), level("defaults", 16, 3000.0, 10.0)]
    spreads = sct.server_spread(rows)
    assert [(s["config"], s["concurrency"], s["servers"]) for s in spreads] == [("defaults", 16, 3)]
    figures = spreads[0]["figures"]
    tok_s = figures["output_tok_s"]
    logs = np.log([1000.0, 1100.0, 1050.0])
    assert tok_s["cv"] == pytest.approx(float(np.std(logs, ddof=1)))
    assert tok_s["cv_interval"][0] < tok_s["cv"] < tok_s["cv_interval"][1]
    assert tok_s["model_cv"] == pytest.approx(0.018)  # the h200 noise model's throughput CV
    assert figures["a prefill adds ms"]["values"] == [30.0, 36.0]  # the server without records has none
    assert figures["a prefill adds ms"]["model_cv"] is None
    assert figures["p99_ttft_ms"]["cv"] == 0.0
    # another host at the same load: its own entry, and one pooled around each host's own mean
    other = [level("defaults.1", 16, 2000.0, 30.0, folder="g"), level("defaults.2", 16, 2400.0, 30.0, folder="g")]
    spreads = sct.server_spread(rows + other)
    assert [(s["folder"], s["servers"]) for s in spreads] == [("f", 3), ("g", 2), ("pooled", 5)]
    both = spreads[2]["figures"]["output_tok_s"]
    ss = float(((logs - logs.mean()) ** 2).sum()) + float(np.log(2400 / 2000) ** 2 / 2)
    assert both["dof"] == 3 and both["cv"] == pytest.approx(np.sqrt(ss / 3))


def _telemetry_folder(folder: Path) -> None:
    """Two levels on the job's clock; nvidia-smi's rows an hour ahead of it (its local time), one sample every
    250 ms: 1,980 MHz at 40% utilization in the first level (its first two samples idle, at 345 MHz), 1,755 MHz
    (power-capped) at 80% in the second."""
    (folder / "gpu-telemetry-clock.txt").write_text("1000 1970/01/01 01:16:40\n")  # 1000 s after the epoch, +1 h
    (folder / "levels.txt").write_text("defaults.1 c16 1010.0 1012.0\ndefaults.1 c24 1012.5 1014.0\n")
    header = ("timestamp, index, clocks.current.sm [MHz], clocks.current.memory [MHz], power.draw [W], "
              "temperature.gpu, clocks_event_reasons.active, pstate, utilization.gpu [%]")
    rows = [header]
    for i in range(60):  # 1005 s to 1019.75 s on the job's clock
        t = 1005 + i / 4
        clock, reasons, util = (1980, "0x0000000000000000", 40) if t < 1012.25 else (1755, "0x0000000000000004", 80)
        if t < 1010.5:
            clock, reasons, util = 345, "0x0000000000000001", 0
        rows.append(f"1970/01/01 01:{int(t // 60):02d}:{t % 60:06.3f}, 0, {clock}, 2619, "
                    f"{'[N/A]' if i == 23 else '450.0'}, 41, {reasons}, P0, {util}")
        if i == 30:
            rows.append(header)  # nvidia-smi repeats its header now and then
    rows.append("1970/01/01 01:16:59.900, 0, 19")  # cut short by the job's end
    with gzip.open(folder / "gpu-telemetry.csv.gz", "wt") as f:
        f.write("\n".join(rows) + "\n")


def test_each_level_gets_what_the_gpu_did_in_it(tmp_path: Path) -> None:
    _telemetry_folder(tmp_path)
    samples = sct.read_telemetry(tmp_path)
    assert len(samples["t_s"]) == 60 and samples["t_s"][0] == pytest.approx(1005.0)
    levels = sct.level_telemetry(tmp_path)
    first, second = levels[("defaults.1", 16)], levels[("defaults.1", 24)]
    # the idle samples count for the busy seconds (none) but not for the clock
    assert first["samples"] == 9 and first["sm_mhz"] == 1980.0 and first["throttled_share"] == 0.0
    assert first["busy_s"] == pytest.approx(7 * 0.25 * 0.40)
    assert first["power_w"] == 450.0  # the sample without a power reading is left out of the mean
    assert second["samples"] == 7 and second["sm_mhz"] == 1755.0 and second["throttled_share"] == 1.0
    assert second["busy_s"] == pytest.approx(7 * 0.25 * 0.80)
    assert sct.level_telemetry(tmp_path / "missing") == {}


def test_each_level_gets_what_the_host_cpus_did_in_it(tmp_path: Path) -> None:
    """/proc/stat's cpu line every 250 ms: 16 CPUs (1,600 jiffies a second), a quarter busy in the first level, all
    busy with 2% stolen in the second; between the levels, a line cut short."""
    (tmp_path / "levels.txt").write_text("quiet.1 c16 10.0 12.0\nbusy.1 c16 12.5 14.0\n")
    busy = idle = steal = 0
    lines = []
    for i in range(64):  # 0 s to 15.75 s
        t = i / 4
        lines.append(f"{t:.6f} cpu  {busy} 0 0 {idle} 0 0 0 {steal} 0 0")
        b, s = (100, 0) if t < 12.25 else (392, 8)  # jiffies per 250 ms of 400
        busy, idle, steal = busy + b, idle + 400 - b - s, steal + s
        if i == 49:
            lines.append("12.3 cpu  17")
    with gzip.open(tmp_path / "host-cpu.txt.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    levels = sct.level_telemetry(tmp_path)
    assert levels[("quiet.1", 16)] == {"host_busy_share": pytest.approx(0.25), "host_steal_share": 0.0}
    assert levels[("busy.1", 16)]["host_busy_share"] == pytest.approx(0.98)
    assert levels[("busy.1", 16)]["host_steal_share"] == pytest.approx(0.02)
    assert "sm_mhz" not in levels[("busy.1", 16)]  # no GPU telemetry in this folder


def test_prefill_against_the_gpu_over_servers() -> None:
    """Servers whose prefill takes time inversely to their SM clock (all of it clock-bound): r and the elasticity
    are −1, with two hosts each around its own mean; the busy seconds, the same on every server, give none; too
    few servers give none."""
    def gpu(clock: float, prefill_ms: float) -> dict:
        return {"client_steps": {"prefill_adds_ms": prefill_ms}, "telemetry": {"sm_mhz": clock, "busy_s": 6.0}}
    host_a = [gpu(c, 30.0 * 1980 / c) for c in (1980, 1900, 1800)]
    host_b = [gpu(c, 40.0 * 1980 / c) for c in (1950, 1700)]
    fit = sct.prefill_correlation([host_a, host_b], "SM clock MHz")
    assert fit["servers"] == 5
    assert fit["r"] == pytest.approx(-1.0) and fit["elasticity"] == pytest.approx(-1.0)
    assert fit["r_interval"][0] <= -0.99
    assert sct.prefill_correlation([host_a, host_b], "GPU busy s") is None
    assert sct.prefill_correlation([host_a], "SM clock MHz") is None  # three servers
    spread = sct.server_spread([{"folder": "f", "config": f"defaults.{i}", "concurrency": 16, "cached": False,
                                 "gpu": {"output_tok_s": 1000.0, **g}}
                                for i, g in enumerate(host_a + [gpu(c, 30.0 * 1980 / c) for c in (1950, 1700)])])
    assert spread[0]["prefill_against"]["SM clock MHz"]["r"] == pytest.approx(-1.0)
    assert "GPU busy s" not in spread[0]["prefill_against"]


def test_a_busy_host_against_a_quiet_one_per_workload() -> None:
    """host_contention.sh's levels: busy[.inLEN].N against quiet[.inLEN].N at one load, each prompt size on its
    own; the ratio of geometric means with Welch's interval on the logs; a pair with one level a side has none."""
    def level(config: str, tok_s: float, prefill_ms: float) -> dict:
        gpu = {"output_tok_s": tok_s, "p99_ttft_ms": 150.0, "p99_tpot_ms": 11.0, "p99_itl_ms": 50.0,
               "client_steps": {"decode_step_ms": 6.5, "prefill_adds_ms": prefill_ms}}
        return {"folder": "f", "config": config, "concurrency": 16, "cached": False, "contention": True, "gpu": gpu}
    rows = [level("quiet.in1024.1", 1100.0, 28.0), level("busy.in1024.1", 880.0, 56.0),
            level("quiet.in1024.2", 1050.0, 30.0), level("busy.in1024.2", 900.0, 60.0),
            level("quiet.in4096.1", 710.0, 115.0), level("busy.in4096.1", 690.0, 122.0),
            level("quiet.in4096.2", 720.0, 113.0), level("busy.in4096.2", 695.0, 120.0),
            level("quiet.in256.1", 1500.0, 20.0), level("busy.in256.1", 1200.0, 45.0)]
    effects = {e["levels"]: e["figures"] for e in sct.contention_effects(rows)}
    assert set(effects) == {"in1024", "in4096"}
    adds = effects["in1024"]["a prefill adds ms"]
    assert adds["quiet"] == [28.0, 30.0] and adds["busy"] == [56.0, 60.0]
    assert adds["ratio"] == pytest.approx(2.0)
    lo, hi = adds["ratio_interval"]
    assert lo < 2.0 < hi
    assert adds["difference"] == pytest.approx(29.0)
    lo, hi = adds["difference_interval"]
    assert lo < 29.0 < hi and hi - lo > 1.0
    assert effects["in1024"]["p99_ttft_ms"]["difference_interval"] == (0.0, 0.0)
    assert effects["in4096"]["a prefill adds ms"]["ratio"] == pytest.approx(np.sqrt(122 * 120 / (115 * 113)))
    assert effects["in1024"]["p99_ttft_ms"]["ratio"] == 1.0  # no spread either side: no change, no width
    assert effects["in1024"]["p99_ttft_ms"]["ratio_interval"] == (1.0, 1.0)
    assert sct.server_spread(rows) == []  # one server's levels with prompts of their own: not fresh servers' spread
    # one workload: quiet.N and busy.N
    plain = [dict(r, config=r["config"].replace(".in1024", "")) for r in rows[:4]]
    assert [e["levels"] for e in sct.contention_effects(plain)] == ["all"]


def test_records_kept_in_git_history_are_named_once_not_read(tmp_path, capsys) -> None:
    """A raw folder whose request records moved to git history keeps a RESTORE.txt: a level without its records gives
    None (its figures left out) and stderr says once per folder how to restore them."""
    shared = sys.modules["_shared"]
    folder = tmp_path / "dataset"
    (folder / "server1").mkdir(parents=True)
    (folder / "RESTORE.txt").write_text("git archive abc1234 docs/results/raw/dataset | tar -x\n")
    assert shared.level_records(folder / "server1" / "a-c16.jsonl.gz") is None
    assert shared.level_records(folder / "server1" / "a-c24.jsonl.gz") is None
    err = capsys.readouterr().err
    assert err.count("git archive abc1234 docs/results/raw/dataset | tar -x") == 1
    with gzip.open(folder / "server1" / "b-c16.jsonl.gz", "wt") as f:
        f.write(json.dumps(_record(0.0, 30.0, [10.0])) + "\n")
    assert shared.level_records(folder / "server1" / "b-c16.jsonl.gz") == [_record(0.0, 30.0, [10.0])]
