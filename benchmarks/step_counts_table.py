"""How vLLM packs prefills beside decodes, against the sim on the same requests (issue #21).

Reads folders `benchmarks/gpu/step_counts.sh` writes (one fresh server per configuration CFG; per load C:
`CFG-cC.json`, the `autotune bench --json` result, and `CFG-cC.jsonl.gz`, its requests with their inter-token gaps;
`configs.txt`, each configuration's flags; `settings.txt`, the workload) and replays each level on the in-process
sim engine (card `h200`, the weightless Flash text backbone) with the same requests (the run's seed) and load shape.

Per level, GPU and sim side by side:
- the engine's steps as the client sees them: every token's arrival time (a request's start + TTFT + its gaps)
  put on one time line; a step ends where the running requests' next tokens arrive together (within 1 ms). The
  median step without a first token is the decode-only step; (window − steps × that median) / first tokens is
  the time one prefill adds. This needs no server metric, so it holds for vLLM and the sim alike;
- the step histogram of vLLM's /metrics (`server_metrics.steps_by_tokens`, with `--scrape-metrics`) where the run
  has one: steps by tokens per step, decode-only (at most 256 tokens), one prefill beside them (257-2,048), more;
- P99 ITL, P50 TPOT and output tok/s;
- where a request's TTFT goes, as vLLM's own histograms split it (with `--scrape-metrics`): their mean over every
  request of the level (its warm-up wave too, as the scrape counts them) of the time queued (joined the engine's
  scheduler → first scheduled) and in prefill (→ the step that samples its first token), and the rest of the
  client's mean TTFT, outside the engine (HTTP, the API server, the hand-over to the engine core and back); the
  sim reports the same figures with vLLM's timestamps (autotune.sim.engine_times). Then P50 and P99 TTFT
  over the measured requests;
- how the tokens reach the clients and how the requests arrive, over the whole level: the engine's steps (vLLM's
  histogram, the sim's own count) against the client's deliveries (a new one after a gap of more than 1 ms on
  the time line above: an API server that falls behind sends several steps' tokens at once, one that takes more
  than 1 ms for a step's tokens splits them), and how the measured requests' starts vary from one 250 ms window
  to the next (coefficient of variation: in a closed loop, how much the endings bunch up).
- what the GPU and the host did, where the job logged it (`gpu-telemetry.csv.gz` and `host-cpu.txt.gz`, every
  250 ms, and `levels.txt`): the shares of the host's CPU time busy and stolen by the hypervisor; over the
  level's samples in which a kernel ran (utilization above 0), the mean SM clock and power and the share the driver
  throttled for power or heat; and the GPU's busy seconds over the level (utilization × time). A prefill's GEMMs
  are compute-bound, as fast as the SM clock; a decode step reads memory. Over fresh servers, the correlation of
  what a prefill adds with the SM clock, the GPU's busy seconds and the host's busy CPUs: the same requests need the
  same GPU work, so a server whose prefills take longer without more busy seconds spends the difference with its
  GPU idle, waiting on the host.
A level whose prompts an earlier level on the same server had already sent (same seed: step_counts.sh before it
seeded each level by its concurrency) is marked "cached": vLLM's prefix cache served those prompts without their
prefill, the sim's fresh engine did not.

    python benchmarks/step_counts_table.py DIR [DIR ...] [--constants NAME=VALUE ...] [--json]
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import shlex
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from _shared import (add_card_constants_option, level_records, load_records,
                     parse_args_with_constants, read_levels, replay_bench_level)
from noise_pooled import METRICS, cv_interval, difference_interval, log_ratio_interval, model_cv, pooled
from scipy import stats

from autotune.hostcpu import cpu_line_jiffies
from autotune.sim.args import parse_serve_args

GROUPS = (("decode only", 0, 256), ("one prefill", 257, 2048), ("more", 2049, float("inf")))


def grouped(steps: dict[str, int]) -> dict[str, int]:
    """Steps by ``le N`` bucket summed into GROUPS (a bucket belongs to the group holding its upper bound)."""
    out = {name: 0 for name, _, _ in GROUPS}
    for key, count in steps.items():
        bound = float(key.split()[1])
        name = next(n for n, lo, hi in GROUPS if lo <= bound <= hi)
        out[name] += int(count)
    return out


def configs(folder: Path) -> dict[str, dict[str, Any]]:
    """Each configuration's vLLM flags, from `configs.txt` ("NAME: FLAGS" lines)."""
    out = {}
    for line in (folder / "configs.txt").read_text().splitlines():
        name, _, flags = line.partition(":")
        args = parse_serve_args(["/tmp/model", *shlex.split(flags)])
        out[name.strip()] = dict(args.flags)
    return out


def ttft_split(records: list[dict[str, Any]], server_metrics: dict[str, Any]) -> dict[str, float] | None:
    """The level's mean TTFT over all its requests (the warm-up wave too) split as vLLM's histograms split it:
    queued, in prefill, and the rest, outside the engine (module docstring). None without the histograms."""
    ttft = [r["ttft_ms"] for r in records if r["ok"]]
    if "server_mean_queue_ms" not in server_metrics or not ttft:
        return None
    queue, prefill = server_metrics["server_mean_queue_ms"], server_metrics["server_mean_prefill_ms"]
    mean = float(np.mean(ttft))
    split = {"mean_ttft_ms": mean, "outside_ms": mean - queue - prefill, "queue_ms": queue, "prefill_ms": prefill}
    if "server_mean_ttft_ms" in server_metrics:  # vLLM's own TTFT starts at its renderer's arrival stamp
        split["before_arrival_ms"] = mean - server_metrics["server_mean_ttft_ms"]
        split["arrival_to_queue_ms"] = server_metrics["server_mean_ttft_ms"] - queue - prefill
    return split


# (table, key) of each figure whose sim error --ranges summarises: the sim's value over the GPU's, less one
RANGED = {"P99 ITL": (None, "p99_itl_ms"), "tok/s": (None, "output_tok_s"), "P50 TPOT": (None, "p50_tpot_ms"),
          "decode step": ("client_steps", "decode_step_ms"), "a prefill adds": ("client_steps", "prefill_adds_ms"),
          "mean TTFT": ("ttft_split", "mean_ttft_ms"), "P99 TTFT": (None, "p99_ttft_ms")}


def error_ranges(rows: list[dict[str, Any]]) -> dict[str, tuple[float, float, int]]:
    """Per figure of RANGED: the smallest and largest error of the sim against the GPU, in %, over the levels
    that have it, and how many levels those are."""
    out = {}
    for name, (table_key, key) in RANGED.items():
        errors = []
        for r in rows:
            g, s = ((r[side].get(table_key) if table_key else r[side]) for side in ("gpu", "sim"))
            if g and s and g.get(key) and s.get(key) is not None:
                errors.append(100 * (s[key] / g[key] - 1))
        if errors:
            out[name] = (min(errors), max(errors), len(errors))
    return out


def deliveries(records: list[dict[str, Any]], same_step_ms: float = 1.0) -> dict[str, float]:
    """The level's token deliveries as the client saw them, every request (warm-up included), and the variation
    of the measured requests' starts per 250 ms (module docstring)."""
    times = [r["start_s"] * 1e3 + r["ttft_ms"] + np.cumsum(np.r_[0.0, r["itl_ms"]])
             for r in records if r["ok"] and r.get("itl_ms")]
    t = np.sort(np.concatenate(times)) if times else np.zeros(1)
    starts = np.sort([r["start_s"] for r in records if not r["warmup"] and r["ok"]])
    per_window = np.bincount(((starts - starts[0]) // 0.25).astype(int)) if len(starts) else np.ones(1)
    return {"deliveries": 1 + int((np.diff(t) > same_step_ms).sum()), "span_s": float(t[-1] - t[0]) / 1e3,
            "starts_cv": float(per_window.std() / per_window.mean())}


def client_steps(records: list[dict[str, Any]], same_step_ms: float = 1.0) -> dict[str, float]:
    """The engine's steps as the client sees them (module docstring), over the measured window."""
    decode_t, first_t, measured = [], [], [r for r in records if not r["warmup"] and r["ok"]]
    for r in records:
        if not r["ok"] or not r.get("itl_ms"):
            continue
        t = r["start_s"] * 1e3 + r["ttft_ms"]
        first_t.append(t)
        t += np.cumsum(r["itl_ms"])
        decode_t.extend(t.tolist())
    decode = np.sort(np.asarray(decode_t))
    first = np.sort(np.asarray(first_t))
    last_of_step = np.r_[np.nonzero(np.diff(decode) > same_step_ms)[0], len(decode) - 1]
    ends = decode[last_of_step]
    # a first token belongs to the step that ends with or just before it (its output may trail the others')
    firsts = np.searchsorted(first, ends[1:] + same_step_ms) - np.searchsorted(first, ends[:-1] + same_step_ms)
    lengths = np.diff(ends)
    t0 = min(r["start_s"] for r in measured) * 1e3
    t1 = max(r["start_s"] * 1e3 + r["e2el_ms"] for r in measured)
    window = (ends[1:] > t0) & (ends[1:] <= t1 + same_step_ms)
    lengths, firsts = lengths[window], firsts[window]
    decode_ms = float(np.median(lengths[firsts == 0]))
    return {"steps": int(window.sum()), "decode_step_ms": decode_ms,
            "prefill_adds_ms": float((lengths.sum() - len(lengths) * decode_ms) / max(1, firsts.sum())),
            "first_tokens": int(firsts.sum())}


# nvidia-smi's throttle reasons (clocks_throttle_reasons.active): software power cap, hardware slowdown, software and
# hardware thermal slowdown, power brake. Idle (0x1) and the application clock setting (0x2) are not throttling.
THROTTLE_MASK = 0x4 | 0x8 | 0x20 | 0x40 | 0x80


def read_telemetry(folder: Path) -> dict[str, np.ndarray] | None:
    """The job's GPU telemetry (benchmarks/gpu/background.sh `telemetry_start`) on its `date +%s` time line, a
    column per figure: t_s, sm_mhz, power_w, temperature_c, throttled (0/1), utilization (%). None without it.
    One GPU per job, as every job so far: several GPUs' rows would interleave (their `index` column is not read)."""
    path, clock = folder / "gpu-telemetry.csv.gz", folder / "gpu-telemetry-clock.txt"
    if not path.is_file() or not clock.is_file():
        return None
    epoch, local = clock.read_text().split(maxsplit=1)
    # nvidia-smi writes local time: its offset from the epoch is what `date` printed beside it, to the second
    offset_s = float(epoch) - _as_utc(local.strip(), "%Y/%m/%d %H:%M:%S")
    with gzip.open(path, "rt") as f:
        rows = list(csv.reader(f, skipinitialspace=True))
    if not rows:
        return None
    names = [h.split(" [")[0] for h in rows[0]]

    def column(part: str) -> int:
        return next(i for i, n in enumerate(names) if part in n)

    t, sm, power, temp, reasons, util = (column(p) for p in ("timestamp", ".sm", "power.draw", "temperature", "reasons",
                                                             "utilization.gpu"))
    parsed = []
    for row in rows[1:]:
        if len(row) != len(names) or row[0] == rows[0][0]:
            continue  # a header again, or a line cut short by the job's end
        try:
            parsed.append((_as_utc(row[t], "%Y/%m/%d %H:%M:%S.%f") + offset_s, float(row[sm]), _number(row[power]),
                           _number(row[temp]), float(bool(int(row[reasons], 16) & THROTTLE_MASK)), float(row[util])))
        except ValueError:
            continue  # a row that does not parse (a clock "[N/A]")
    columns = np.asarray(parsed, dtype=float).reshape(-1, 6).T
    return dict(zip(("t_s", "sm_mhz", "power_w", "temperature_c", "throttled", "utilization"), columns))


def _as_utc(text: str, fmt: str) -> float:
    return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc).timestamp()


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan  # "[N/A]"


def read_host_cpu(folder: Path) -> dict[str, np.ndarray] | None:
    """The host's CPU time as `telemetry_start` sampled /proc/stat (`host-cpu.txt.gz`: the epoch, then the "cpu"
    line), a column each: t_s and the jiffies busy, idle and stolen (`autotune.hostcpu.cpu_line_jiffies`). None
    without it."""
    path = folder / "host-cpu.txt.gz"
    if not path.is_file():
        return None
    rows = []
    with gzip.open(path, "rt") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 10 or fields[1] != "cpu":
                continue  # a line cut short by the job's end
            rows.append((float(fields[0]), *cpu_line_jiffies(fields[2:])))
    columns = np.asarray(rows, dtype=float).reshape(-1, 4).T
    return dict(zip(("t_s", "busy", "idle", "steal"), columns))


def level_telemetry(folder: Path) -> dict[tuple[str, int], dict[str, float]]:
    """Per level (configuration, concurrency) of `levels.txt`, what the GPU did (`gpu-telemetry.csv.gz`): over its
    samples in which a kernel ran, the mean SM clock and power and the share throttled (THROTTLE_MASK); its median
    temperature; and the GPU's busy seconds, utilization × the sampling interval summed over the level. And what the
    host's CPUs did (`host-cpu.txt.gz`): the shares of all their time busy and stolen by the hypervisor between the
    level's first and last sample. Empty without either."""
    gpu, host = read_telemetry(folder), read_host_cpu(folder)
    interval_s = float(np.median(np.diff(gpu["t_s"]))) if gpu is not None and len(gpu["t_s"]) > 1 else 0.0
    out: dict[tuple[str, int], dict[str, float]] = {}
    for level in read_levels(folder):
        figures = {}
        if gpu is not None and len(gpu["t_s"]) > 1:
            inside = (gpu["t_s"] >= level.start_s) & (gpu["t_s"] <= level.end_s)
            busy = inside & (gpu["utilization"] > 0)
            if busy.any():
                figures.update({
                    "sm_mhz": float(gpu["sm_mhz"][busy].mean()),
                    "power_w": float(np.nanmean(gpu["power_w"][busy])),
                    "throttled_share": float(gpu["throttled"][busy].mean()),
                    "temperature_c": float(np.nanmedian(gpu["temperature_c"][inside])),
                    "busy_s": float(gpu["utilization"][inside].sum() / 100 * interval_s),
                    "samples": int(inside.sum())})
        if host is not None:
            inside = np.nonzero((host["t_s"] >= level.start_s) & (host["t_s"] <= level.end_s))[0]
            if len(inside) > 1:
                first, last = inside[0], inside[-1]
                spent = {k: host[k][last] - host[k][first] for k in ("busy", "idle", "steal")}
                total = sum(spent.values())
                if total > 0:
                    figures.update({"host_busy_share": spent["busy"] / total,
                                    "host_steal_share": spent["steal"] / total})
        if figures:
            out[(level.config, level.concurrency)] = figures
    return out


def sim_level(flags: dict[str, Any], gpu_run: dict[str, Any], constants: dict[str, float]) -> dict[str, Any]:
    """The level as the GPU ran it (its seed, warm-up wave, measured requests, ramp), in-process."""
    with tempfile.TemporaryDirectory(prefix="step-counts-") as tmp:
        records = Path(tmp) / "level.jsonl.gz"
        r = replay_bench_level(flags, gpu_run, constants, records)
        sim_records = load_records(records)
    return {"steps_by_tokens": r.extra["server_metrics"]["steps_by_tokens"], "p99_itl_ms": r.itl_ms.p99,
            "p50_tpot_ms": r.tpot_ms.p50, "p99_tpot_ms": r.tpot_ms.p99, "output_tok_s": r.output_tok_s,
            "client_steps": client_steps(sim_records),
            "ttft_split": ttft_split(sim_records, r.extra["server_metrics"]), "p50_ttft_ms": r.ttft_ms.p50,
            "p99_ttft_ms": r.ttft_ms.p99, "deliveries": deliveries(sim_records)}


def table(folder: Path, constants: dict[str, float], config_prefix: str = "") -> list[dict[str, Any]]:
    """Each level of ``folder`` (of its configurations named ``config_prefix``...), GPU and sim side by side."""
    settings = dict(line.split("=", 1) for line in (folder / "settings.txt").read_text().splitlines() if "=" in line)
    order = [int(c) for c in settings["loads"].split()]  # the order the server saw the levels in
    contention = "hog" in settings  # host_contention.sh's: one server's levels, host quiet and busy in turn
    rows = []
    telemetry = level_telemetry(folder)
    for name, flags in configs(folder).items():
        if not name.startswith(config_prefix):
            continue
        seeds_sent: set[int] = set()
        runs = []
        for path in folder.glob(f"{name}-c*.json"):
            try:
                runs.append((path, json.loads(path.read_text())))
            except json.JSONDecodeError:
                continue  # the level failed: its .err says why
        for path, gpu in sorted(runs, key=lambda pr: order.index(int(pr[1]["concurrency"]))):
            seed = int(gpu["workload"]["seed"])
            cached = seed in seeds_sent
            seeds_sent.add(seed)
            steps = (gpu.get("server_metrics") or {}).get("steps_by_tokens") or {}
            sim = sim_level(flags, gpu, constants)
            records = path.with_suffix(".jsonl.gz")
            gpu_records = level_records(records)
            rows.append({"folder": folder.name, "config": name, "concurrency": int(gpu["concurrency"]),
                         "cached": cached, "contention": contention,
                         "gpu": {"steps": grouped(steps) if steps else None, "p99_itl_ms": gpu["itl_ms"]["p99"],
                                 "p50_tpot_ms": gpu["tpot_ms"]["p50"], "p99_tpot_ms": gpu["tpot_ms"]["p99"],
                                 "output_tok_s": gpu["output_tok_s"],
                                 "client_steps": client_steps(gpu_records) if gpu_records else None,
                                 "ttft_split": ttft_split(gpu_records, gpu.get("server_metrics") or {})
                                 if gpu_records else None,
                                 "p50_ttft_ms": gpu["ttft_ms"]["p50"], "p99_ttft_ms": gpu["ttft_ms"]["p99"],
                                 "deliveries": deliveries(gpu_records) if gpu_records else None,
                                 "telemetry": telemetry.get((name, int(gpu["concurrency"])))},
                         "sim": {"steps": grouped(sim["steps_by_tokens"]), "p99_itl_ms": sim["p99_itl_ms"],
                                 "p50_tpot_ms": sim["p50_tpot_ms"], "p99_tpot_ms": sim["p99_tpot_ms"],
                                 "output_tok_s": sim["output_tok_s"],
                                 "client_steps": sim["client_steps"], "ttft_split": sim["ttft_split"],
                                 "p50_ttft_ms": sim["p50_ttft_ms"], "p99_ttft_ms": sim["p99_ttft_ms"],
                                 "deliveries": sim["deliveries"]}})
    return rows


# Figures whose spread over fresh servers `server_spread` gives (the noise model's CV beside those it draws).
SPREAD_FIGURES = ("output_tok_s", "p99_ttft_ms", "p99_tpot_ms", "p99_itl_ms", "decode step ms", "a prefill adds ms",
                  "SM clock MHz", "GPU busy s", "host CPUs busy")


def _figure(gpu: dict[str, Any], name: str) -> float | None:
    client, telemetry = gpu["client_steps"] or {}, gpu.get("telemetry") or {}
    return {"decode step ms": client.get("decode_step_ms"), "a prefill adds ms": client.get("prefill_adds_ms"),
            "SM clock MHz": telemetry.get("sm_mhz"), "GPU busy s": telemetry.get("busy_s"),
            "host CPUs busy": telemetry.get("host_busy_share")}.get(name, gpu.get(name))


def server_spread(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where a folder ran one configuration on several fresh servers (NAME.1, NAME.2, ...: the same requests at
    each load, so the request streams add no spread): per folder, configuration and load, each figure's values
    over the servers and their CV (SD of the log) with its 90% interval, beside the sim's noise model's CV
    (`--sim-noise h200`, the spread it adds beyond the streams) where it has one. Where several folders (hosts) ran
    the same configuration and load, one more entry, folder "pooled": the servers' spread around their own host's
    mean, pooled over the hosts (what one host's fresh servers spread, with more degrees of freedom)."""
    # host_contention.sh's levels are one server's, each with prompts of its own: contention_effects reads them
    groups = {key: runs for key, runs in _repeats([r for r in rows if not r.get("contention")]).items()
              if len(runs) > 1}
    hosts: dict[tuple[str, int], list[list[dict[str, Any]]]] = {}
    for (_, base, c), runs in groups.items():
        hosts.setdefault((base, c), []).append(runs)
    out = [_spread(folder, base, c, [runs]) for (folder, base, c), runs in groups.items()]
    out += [_spread("pooled", base, c, per_host) for (base, c), per_host in hosts.items() if len(per_host) > 1]
    return out


def _repeats(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int], list[dict[str, Any]]]:
    """The GPU's levels by (folder, configuration, load), where a configuration ran several times (NAME.1, NAME.2,
    ...: fresh servers, or host_contention.sh's rounds), its prompts' cached levels left out."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        base, dot, _ = r["config"].rpartition(".")
        if dot and not r["cached"]:
            groups.setdefault((r["folder"], base, r["concurrency"]), []).append(r["gpu"])
    return groups


# Figures `contention_effects` compares, busy host against quiet.
CONTENTION_FIGURES = ("a prefill adds ms", "decode step ms", "output_tok_s", "p99_ttft_ms", "p99_tpot_ms",
                      "p99_itl_ms", "GPU busy s")


def contention_effects(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """host_contention.sh's levels (busy[.inLEN].ROUND against quiet[.inLEN].ROUND, at one load): per figure, the
    quiet and the busy levels' values, the ratio of their geometric means with Welch's 90% interval on the logs, and
    the difference of their means with Welch's 90% interval."""
    groups = _repeats([r for r in rows if r.get("contention")])
    out = []
    for (folder, base, c), busy in groups.items():
        quiet = groups.get((folder, "quiet" + base.removeprefix("busy"), c)) if base.startswith("busy") else None
        if not quiet:
            continue
        figures = {}
        for name in CONTENTION_FIGURES:
            values = [[v for v in (_figure(g, name) for g in runs) if v is not None and v > 0]
                      for runs in (quiet, busy)]
            if min(len(v) for v in values) < 2:
                continue
            ratio, interval = log_ratio_interval(values[1], values[0])
            difference, difference_ci = difference_interval(values[1], values[0])
            figures[name] = {"quiet": values[0], "busy": values[1], "ratio": ratio, "ratio_interval": interval,
                             "difference": difference, "difference_interval": difference_ci}
        if figures:
            out.append({"folder": folder, "levels": base.removeprefix("busy").lstrip(".") or "all",
                        "concurrency": c, "figures": figures})
    return out


def _print_contention(effects: list[dict[str, Any]]) -> None:
    print("\nA busy host against a quiet one (host_contention.sh): each figure's levels quiet, busy, and busy / quiet "
          "(ratio of geometric means) [Welch's 90% interval on the logs]; busy − quiet (difference of means) [Welch's "
          "90% interval].")
    for e in effects:
        print(f"- {e['folder']} {e['levels']} C = {e['concurrency']}:")
        for name, f in e["figures"].items():
            fmt = ",.0f" if name == "output_tok_s" else ",.1f"
            q, b = (", ".join(format(v, fmt) for v in f[side]) for side in ("quiet", "busy"))
            lo, hi = f["ratio_interval"]
            d_lo, d_hi = f["difference_interval"]
            print(f"  - {name}: quiet {q}; busy {b}; {100 * (f['ratio'] - 1):+.1f}% [{100 * (lo - 1):+.1f}, "
                  f"{100 * (hi - 1):+.1f}]; {f['difference']:+{fmt}} [{d_lo:{fmt}}, {d_hi:{fmt}}]")


def _spread(folder: str, config: str, concurrency: int, per_host: list[list[dict[str, Any]]]) -> dict[str, Any]:
    figures = {}
    for name in SPREAD_FIGURES:
        # a CV is of the log: a level whose prefills cost nothing measurable (cached prompts) has none
        values = [[v for v in (_figure(g, name) for g in runs) if v is not None and v > 0] for runs in per_host]
        ss, dof = pooled(values)
        if not dof:
            continue
        figures[name] = {"values": [v for host in values for v in host], "cv": math.sqrt(ss / dof),
                         "cv_interval": cv_interval(ss, dof), "dof": dof,
                         "model_cv": model_cv(name) if name in METRICS else None}
    return {"folder": folder, "config": config, "concurrency": concurrency,
            "servers": sum(len(runs) for runs in per_host), "figures": figures,
            "prefill_against": {name: c for name in ("SM clock MHz", "GPU busy s", "host CPUs busy")
                                if (c := prefill_correlation(per_host, name))}}


def prefill_correlation(per_host: list[list[dict[str, Any]]], figure: str) -> dict[str, Any] | None:
    """How what a prefill adds moves with ``figure`` (the SM clock, the GPU's busy seconds, the host's busy CPUs)
    over fresh servers: Pearson's r of the two logs over the servers that have both, each around its own host's
    mean (hosts with fewer than two such servers left out), with its 90% interval (Fisher's z, one degree of
    freedom less per host), and the slope (elasticity; against the SM clock −1 where a prefill's time is all
    clock-bound). None below four such servers, without a degree of freedom left, or where either does not vary."""
    xs, ys, hosts = [], [], 0
    for runs in per_host:
        pairs = [(math.log(x), math.log(p)) for x, p in ((_figure(g, figure), _figure(g, "a prefill adds ms"))
                                                         for g in runs) if x and p and x > 0 and p > 0]
        if len(pairs) > 1:
            x, y = np.asarray(pairs).T
            xs.extend(x - x.mean())
            ys.extend(y - y.mean())
            hosts += 1
    dof = len(xs) - hosts - 2  # Fisher's z has n - 3 for one host: one mean per host taken out
    if len(xs) < 4 or dof < 1 or np.allclose(xs, 0) or np.allclose(ys, 0):
        return None
    fit = stats.linregress(xs, ys)
    r = float(fit.rvalue)
    z, half = math.atanh(max(-0.999999, min(0.999999, r))), stats.norm.ppf(0.95) / math.sqrt(dof)
    return {"servers": len(xs), "r": r, "r_interval": (math.tanh(z - half), math.tanh(z + half)),
            "elasticity": float(fit.slope)}


def _print_server_spread(spreads: list[dict[str, Any]]) -> None:
    print("\nFresh servers against each other, the same requests: each figure's mean [min, max] over the servers, "
          "CV [90% interval]; the sim's noise model's CV (h200) after it where it has one.")
    for s in spreads:
        hosts = " (around each folder's own mean)" if s["folder"] == "pooled" else ""
        print(f"- {s['folder']} {s['config']} C = {s['concurrency']}, {s['servers']} servers{hosts}:")
        for name, f in s["figures"].items():
            v = f["values"]
            model = f" (noise model {100 * f['model_cv']:.1f}%)" if f["model_cv"] is not None else ""
            fmt = ",.0f" if name in ("output_tok_s", "SM clock MHz") else ",.2f"
            print(f"  - {name}: {np.mean(v):{fmt}} [{min(v):{fmt}}, {max(v):{fmt}}], CV {100 * f['cv']:.1f}% "
                  f"[{100 * f['cv_interval'][0]:.1f}, {100 * f['cv_interval'][1]:.1f}], {f['dof']} dof{model}")
        for name, c in s["prefill_against"].items():
            print(f"  - a prefill adds against {name}, {c['servers']} servers: r {c['r']:+.2f} "
                  f"[{c['r_interval'][0]:+.2f}, {c['r_interval'][1]:+.2f}], elasticity {c['elasticity']:+.2f}")


def _steps_cell(steps: dict[str, int] | None) -> str:
    if not steps:
        return "— (no step histogram)"
    total = sum(steps.values()) or 1
    return f"{total:,}: " + ", ".join(f"{100 * n / total:.1f}%" for n in steps.values())


def _pair(gpu: dict[str, float] | None, sim: dict[str, float], key: str, fmt: str) -> str:
    """A "GPU / sim" cell of the client-side step figures (— where the GPU run kept no records)."""
    return f"{format(gpu[key], fmt) if gpu else '—'} / {format(sim[key], fmt)}"


def _print_table(title: str, columns: list[str], rows: list[dict[str, Any]],
                 cells: Callable[[dict[str, Any], dict[str, Any]], list[str]]) -> None:
    """One markdown table: a row per level (folder, configuration, concurrency), ``cells(gpu, sim)`` after them."""
    print(title)
    print("| folder | config | C | " + " | ".join(columns) + " |")
    print("|---|---|---:|" + "---|" * len(columns))
    for r in rows:
        level = f"{r['folder']} | {r['config']} | {r['concurrency']}{' cached' if r['cached'] else ''}"
        print(f"| {level} | " + " | ".join(cells(r["gpu"], r["sim"])) + " |")


def _steps_cells(g: dict[str, Any], s: dict[str, Any]) -> list[str]:
    gc, sc = g["client_steps"], s["client_steps"]
    return [_pair(gc, sc, "decode_step_ms", ".2f"), _pair(gc, sc, "prefill_adds_ms", ".1f"),
            f"{g['p99_itl_ms']:.1f} / {s['p99_itl_ms']:.1f}", f"{g['p50_tpot_ms']:.2f} / {s['p50_tpot_ms']:.2f}",
            f"{g['output_tok_s']:,.0f} / {s['output_tok_s']:,.0f}", _steps_cell(g["steps"]), _steps_cell(s["steps"]),
            _telemetry_cell(g.get("telemetry"))]


def _telemetry_cell(t: dict[str, float] | None) -> str:
    parts = []
    if t and "sm_mhz" in t:
        parts.append(f"{t['sm_mhz']:,.0f} MHz, {t['power_w']:.0f} W, {100 * t['throttled_share']:.0f}% throttled, "
                     f"{t['temperature_c']:.0f} °C; busy {t['busy_s']:.1f} s")
    if t and "host_busy_share" in t:
        parts.append(f"host CPUs {100 * t['host_busy_share']:.0f}% busy, {100 * t['host_steal_share']:.1f}% stolen")
    return "; ".join(parts) or "—"


def _ttft_cells(g: dict[str, Any], s: dict[str, Any]) -> list[str]:
    return [*(_pair(g["ttft_split"], s["ttft_split"], key, ",.0f")
              for key in ("mean_ttft_ms", "outside_ms", "queue_ms", "prefill_ms")),
            f"{g['p50_ttft_ms']:,.0f} / {s['p50_ttft_ms']:,.0f}", f"{g['p99_ttft_ms']:,.0f} / {s['p99_ttft_ms']:,.0f}",
            _arrival_cell(g["ttft_split"])]


def _arrival_cell(split: dict[str, float] | None) -> str:
    if not split or "before_arrival_ms" not in split:
        return "—"
    return f"{split['before_arrival_ms']:,.0f} + {split['arrival_to_queue_ms']:,.0f}"


def _delivery_cells(g: dict[str, Any], s: dict[str, Any]) -> list[str]:
    gd, sd = g["deliveries"], s["deliveries"]
    g_steps = sum(g["steps"].values()) if g["steps"] else None
    s_steps = sum(s["steps"].values())
    g_ms = f"{1e3 * gd['span_s'] / g_steps:.1f}" if gd and g_steps else "—"
    return [f"{f'{g_steps:,}' if g_steps else '—'} / {s_steps:,}", _pair(gd, sd, "deliveries", ","),
            f"{g_ms} / {1e3 * sd['span_s'] / s_steps:.1f}", _pair(gd, sd, "starts_cv", ".2f")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", type=Path, nargs="+")
    add_card_constants_option(ap, "the sim with calibration/h200.yaml's constants overridden "
                                  "(e.g. frontend_chunk_us=0)")
    ap.add_argument("--json", action="store_true")
    args, constants = parse_args_with_constants(ap)
    rows = [row for folder in args.dirs for row in table(folder, constants)]
    spreads = server_spread(rows)
    effects = contention_effects(rows)
    if args.json:
        print(json.dumps({"levels": rows, "server_spread": spreads, "contention": effects}, indent=1))
        return 0
    _print_table("Each cell GPU / sim. Steps as the client sees them: decode-only step ms, ms one prefill adds. "
                 "vLLM's step histogram: total: " + ", ".join(n for n, _, _ in GROUPS) + " (shares).",
                 ["decode step ms", "a prefill adds ms", "P99 ITL ms", "P50 TPOT ms", "output tok/s", "vLLM's steps",
                  "sim's steps", "GPU running kernels: SM clock, power, throttled; busy s; host CPUs"], rows,
                 _steps_cells)
    _print_table("\nWhere the TTFT goes, GPU / sim: mean over the level's requests (warm-up wave included) and its "
                 "split as vLLM's histograms give it; P50 and P99 over the measured requests. ms.",
                 ["mean TTFT", "outside the engine", "queued", "prefill", "P50 TTFT", "P99 TTFT",
                  "GPU outside: before + after vLLM's arrival stamp"], rows, _ttft_cells)
    _print_table("\nHow the tokens reach the clients, GPU / sim, the whole level: engine steps, the client's "
                 "deliveries, mean ms per engine step; starts per 250 ms of the measured window: coefficient of "
                 "variation.", ["engine steps", "deliveries", "ms per step", "starts CV"], rows, _delivery_cells)
    print("\nThe sim's error against the GPU over these levels, min to max (levels that have the figure):")
    for name, (low, high, n) in error_ranges(rows).items():
        print(f"- {name}: {low:+.0f}% to {high:+.0f}% ({n})")
    if spreads:
        _print_server_spread(spreads)
    if effects:
        _print_contention(effects)
    return 0


if __name__ == "__main__":
    sys.exit(main())
