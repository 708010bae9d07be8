"""Where a request's time goes inside vLLM, level by level, from the traces of ``TRACE=1 bash
benchmarks/gpu/step_counts.sh`` (``benchmarks/gpu/vllm_trace/sitecustomize.py`` says what each event is).

    python benchmarks/vllm_trace_table.py DIR [DIR ...] [--json]
    python benchmarks/vllm_trace_table.py DIR --compact TO   # a smaller copy of DIR's traces (for docs/results/raw)

Each DIR holds ``levels.txt`` (``config cC start_s end_s``, wall clock) and ``trace-CONFIG/trace-PID.tsv[.gz]``.
A request belongs to the level during which it was rendered; the first C of a level (its warm-up wave, sent first)
are left out. Segments, each the mean over the level's measured requests in ms (``--json``: mean, P50, P90, P99):

    render     handler start -> rendered and tokenized (vLLM's arrival stamp is taken at its start)
    to_add     rendered -> AsyncLLM.add_request (the handler returns, the response stream starts)
    inputs     add_request -> handed to the engine core's socket (input processing, the output processor's entry)
    to_core    handed over -> the engine core's input thread has it (ZMQ, decoding)
    request    the input thread builds the engine's Request (block hashes)
    to_loop    built -> the engine core's loop adds it to the scheduler (vLLM's QUEUED)
    queued     QUEUED -> scheduled (vLLM's request_queue_time)
    prefill    scheduled -> its first token leaves the scheduler (vLLM's request_prefill_time)
    to_api     -> the API server's output handler has the first token
    to_stream  -> the completions stream yields it
    ttft       handler start -> stream yields the first token
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _shared import Level, add_card_constants_option, parse_args_with_constants, read_levels

SEGMENTS = [("render", "H", "R"), ("to_add", "R", "A"), ("inputs", "A", "S"), ("to_core", "S", "P"),
            ("request", "P", "p"), ("to_loop", "p", "Q"), ("queued", "Q", "K"), ("prefill", "K", "F"),
            ("to_api", "F", "O"), ("to_stream", "O", "W"), ("ttft", "H", "W")]


@dataclass
class Request:
    times: dict[str, float] = field(default_factory=dict)  # event -> wall seconds
    scheduled_step: int = 0
    first_token_step: int = 0


@dataclass
class Trace:
    requests: list[Request]  # in the order vLLM stamped them
    step_ends_s: dict[int, float]  # step number -> when its output reached the scheduler
    step_starts_s: dict[int, float]  # step number -> when it was scheduled
    step_tokens: dict[int, int]
    # TRACE=loop only: the API server's output batches (start, end, outputs) and stream chunks, as runs of chunks
    # less than CHUNK_RUN_GAP_S apart (start, end, chunks)
    batches: list[tuple[float, float, int]] = field(default_factory=list)
    chunk_runs: list[tuple[float, float, int]] = field(default_factory=list)


CHUNK_RUN_GAP_S = 1e-3


def _lines(trace_dir: Path):
    for path in sorted(trace_dir.glob("trace-*.tsv*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) == 5:
                    yield parts


def read_trace(trace_dir: Path) -> Trace:
    """Every request's events, joined across the two processes by vLLM's arrival stamp and engine request id."""
    rows = sorted(_lines(trace_dir), key=lambda r: float(r[1]))
    by_stamp: dict[str, Request] = {}
    by_engine_id: dict[str, Request] = {}
    handler_start: dict[str, float] = {}
    step_ends: dict[int, float] = {}
    step_starts: dict[int, float] = {}
    step_tokens: dict[int, int] = {}
    pending_sched: dict[str, tuple[int, float]] = {}
    tokenize_starts: list[float] = []
    tokenizations: list[tuple[float, float]] = []
    batch_start: tuple[float, int] | None = None
    batches: list[tuple[float, float, int]] = []
    runs: list[list] = []
    for event, wall, _mono, key, extra in rows:
        t = float(wall)
        if event == "T":
            tokenize_starts.append(t)
        elif event == "t" and tokenize_starts:
            tokenizations.append((tokenize_starts.pop(0), t))
        elif event == "B":
            batch_start = (t, int(extra))
        elif event == "b" and batch_start:
            batches.append((batch_start[0], t, batch_start[1]))
            batch_start = None
        elif event == "Y":
            if runs and t - runs[-1][1] < CHUNK_RUN_GAP_S:
                runs[-1][1], runs[-1][2] = t, runs[-1][2] + 1
            else:
                runs.append([t, t, 1])
        elif event == "y":
            runs.append([t, float(extra), int(key)])
        elif event == "H":
            handler_start[extra] = t
        elif event == "R":
            req = by_stamp.setdefault(key, Request())
            req.times["R"] = t
            if extra in handler_start:
                req.times["H"] = handler_start.pop(extra)
        elif event in ("A", "W"):
            by_stamp.setdefault(key, Request()).times[event] = t
        elif event == "S":
            req = by_stamp.setdefault(extra, Request())
            req.times["S"] = t
            by_engine_id[key] = req
            if key in pending_sched:
                req.scheduled_step, req.times["K"] = pending_sched.pop(key)
        elif event == "K":
            tokens, _, new_ids = extra.partition(":")
            step = int(key)
            step_starts[step], step_tokens[step] = t, int(tokens)
            for rid in filter(None, new_ids.split(",")):
                if rid in by_engine_id:
                    by_engine_id[rid].scheduled_step, by_engine_id[rid].times["K"] = step, t
                else:
                    pending_sched[rid] = (step, t)
        elif event == "U":
            step_ends[int(key)] = t
        elif event in ("P", "p", "Q", "F", "O", "s"):
            req = by_engine_id.get(key)
            if req is None:
                continue
            req.times[event] = t
            if event == "F" and extra:
                req.first_token_step = int(extra)
    requests = sorted((r for r in by_stamp.values() if "R" in r.times), key=lambda r: r.times["R"])
    if tokenizations and len(tokenizations) == len(requests):  # one worker, renders in order: the k-th is the k-th
        for req, (start, end) in zip(requests, tokenizations):
            req.times["T"], req.times["t"] = start, end
    return Trace(requests, step_ends, step_starts, step_tokens, batches, [tuple(r) for r in runs])


def _stats_ms(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = 1e3 * np.asarray(values)
    return {"n": len(a), "mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
            "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99))}


def _render_queue(inside: list[Request], level: Level) -> dict:
    """The renderer as one first-come-first-served worker: each render's own time runs from the later of its
    handler's start and the previous render's end; the rest is its wait behind earlier renders. Measured requests
    only (each still paired with the request before it, warm-up or not)."""
    rendered = [r for r in inside if "H" in r.times]
    in_order = all(a.times["H"] <= b.times["H"] for a, b in zip(rendered, rendered[1:]))
    own, wait = [], []
    for before, r in list(zip(rendered, rendered[1:]))[max(level.concurrency - 1, 0):]:
        own.append(r.times["R"] - max(r.times["H"], before.times["R"]))
        wait.append(max(0.0, before.times["R"] - r.times["H"]))
    if not own:
        return {}
    span_s = rendered[-1].times["R"] - rendered[-len(own) - 1].times["R"]
    return {"renders_in_handler_order": in_order, "render_own_ms": _stats_ms(own), "render_wait_ms": _stats_ms(wait),
            "renderer_busy": float(np.sum(own) / span_s) if span_s > 0 else None}


def _loop_join(trace: Trace, measured: list[Request], ends_s: np.ndarray) -> dict:
    """When the engine core's loop added each request to its scheduler, against the first step end after its
    Request was built: ms after that end, and how many step ends lay between (0: it joined at that one)."""
    after, later = [], []
    all_ends = np.array(sorted(trace.step_ends_s.values()))
    for r in measured:
        if "p" not in r.times or "Q" not in r.times:
            continue
        i = int(np.searchsorted(all_ends, r.times["p"]))
        if i >= len(all_ends) or all_ends[i] > r.times["Q"]:
            continue
        after.append(r.times["Q"] - all_ends[i])
        later.append(int(np.searchsorted(all_ends, r.times["Q"], side="right")) - i - 1)
    if not after:
        return {}
    return {"joined_after_step_end_ms": _stats_ms(after), "joined_steps_later": np.bincount(later).tolist()}


def _longest_quiet(busy: list[tuple[float, float]], start_s: float, end_s: float) -> float:
    """The longest part of [start_s, end_s] that no interval of ``busy`` (sorted by start) covers."""
    longest, covered_to = 0.0, start_s
    for a, b in busy:
        if b <= covered_to:
            continue
        if a >= end_s:
            break
        longest = max(longest, a - covered_to)
        covered_to = b
    return max(longest, end_s - covered_to)


def _covered(busy: list[tuple[float, float]], start_s: float, end_s: float) -> float:
    """How much of [start_s, end_s] the intervals of ``busy`` (sorted by start) cover, in seconds."""
    total, covered_to = 0.0, start_s
    for a, b in busy:
        if a >= end_s:
            break
        if b > covered_to:
            total += min(b, end_s) - max(a, covered_to)
            covered_to = min(b, end_s)
    return total


def _api_loop(trace: Trace, inside: list[Request], measured: list[Request], level: Level) -> dict:
    """TRACE=loop: the renderer's tokenization against the waits around it, and what the API server's loop did."""
    tokenized = [r for r in measured if "T" in r.times and "H" in r.times]
    if not tokenized:
        return {}
    previous_end = {id(b): a.times.get("t", 0.0) for a, b in zip(inside, inside[1:])}
    batches = [b for b in trace.batches if level.start_s <= b[0] <= level.end_s]
    runs = [r for r in trace.chunk_runs if level.start_s <= r[0] <= level.end_s]
    service_s = float(np.mean([r.times["t"] - r.times["T"] for r in tokenized]))
    free_s, replay_wait = 0.0, []
    for r in inside:  # the handler starts replayed through one worker of the level's mean tokenization time
        if "H" not in r.times:
            continue
        start = max(r.times["H"], free_s)
        free_s = start + service_s
        if r in measured:
            replay_wait.append(start - r.times["H"])
    passes, chunks = [], []
    starts = np.array([b[0] for b in batches])
    for k, (b_start, b_end, _n) in enumerate(batches[:-1]):
        during = [run for run in runs if b_end <= run[0] < starts[k + 1]]
        if during:
            passes.append(during[-1][1] - b_start)
            chunks.append(sum(run[2] for run in during))
    busy = sorted([(b[0], b[1]) for b in batches] + [(run[0], run[1]) for run in runs])
    busy_gaps, covered = [], []
    for r in tokenized:
        for a, b in (("H", "T"), ("t", "R")):
            if r.times[b] - r.times[a] > 0.05:
                busy_gaps.append(_longest_quiet(busy, r.times[a], r.times[b]))
                covered.append(_covered(busy, r.times[a], r.times[b]) / (r.times[b] - r.times[a]))
    return {"tokenize_ms": _stats_ms([r.times["t"] - r.times["T"] for r in tokenized]),
            "worker_wait_ms": _stats_ms([r.times["T"] - max(r.times["H"], previous_end.get(id(r), 0.0))
                                         for r in tokenized]),
            "one_worker_replay_wait_ms": _stats_ms(replay_wait),
            "before_tokenize_ms": _stats_ms([r.times["T"] - r.times["H"] for r in tokenized]),
            "after_tokenize_ms": _stats_ms([r.times["R"] - r.times["t"] for r in tokenized]),
            "output_us": 1e6 * float(np.mean([(b[1] - b[0]) / b[2] for b in batches if b[2]])) if batches else None,
            "outputs_per_batch": float(np.mean([b[2] for b in batches])) if batches else None,
            "pass_ms": _stats_ms(passes), "chunks_per_pass": float(np.mean(chunks)) if chunks else None,
            "waits_over_50ms": len(busy_gaps),
            "longest_quiet_ms_in_them": 1e3 * max(busy_gaps) if busy_gaps else None,
            "output_work_share_in_them": float(np.median(covered)) if covered else None}


STEP_TOKEN_BINS = ((0, 1), (600, 1500), (1500, 2600), (2600, 4000), (7000, 8192))  # (lo, hi]; the first: decode


def _step_intervals(trace: Trace, level: Level) -> dict[str, dict]:
    """A step's output reaches the scheduler only once the step after it is launched. So where a step that carries
    prefills (tokens in a bin) comes between decode-only steps (at most C tokens), its cost shows in two intervals
    between step ends: the one before its own end's predecessor ends ("before": the previous step held while this
    one is launched) and its own ("after"). Per bin: the medians of both and of their sum, and how many such steps;
    the first bin is the decode-only step's own interval."""
    steps = sorted(s for s, t in trace.step_ends_s.items() if level.start_s <= t <= level.end_s)
    ends, tokens, c = trace.step_ends_s, trace.step_tokens, level.concurrency
    out = {}
    for lo, hi in STEP_TOKEN_BINS:
        if (lo, hi) == (0, 1):
            own = [ends[s] - ends[s - 1] for s in steps
                   if s - 1 in ends and tokens.get(s, c + 1) <= c and tokens.get(s + 1, c + 1) <= c]
            out["decode"] = {"n": len(own), "after": _stats_ms(own), "before": None, "sum": None}
            continue
        lo = max(lo, c)
        before, after = [], []
        for s in steps:  # s + 1 carries the prefills; s and s + 2 are decode-only
            if (lo < tokens.get(s + 1, 0) <= hi and tokens.get(s, c + 1) <= c and tokens.get(s + 2, c + 1) <= c
                    and s - 1 in ends and s + 1 in ends):
                before.append(ends[s] - ends[s - 1])
                after.append(ends[s + 1] - ends[s])
        out[f"{lo}-{hi}"] = {"n": len(before), "before": _stats_ms(before), "after": _stats_ms(after),
                             "sum": _stats_ms([x + y for x, y in zip(before, after)])}
    return out


PROMPTS_PER_BIN = (0, 1, 2, 3, 8)  # the prompts of ~1,024 tokens a step of each STEP_TOKEN_BINS bin carries


def sim_step_ms(concurrency: int, prompts: int, constants: dict[str, float] | None = None) -> float:
    """The sim's step (card h200, the Flash text backbone, vLLM's defaults) with ``concurrency`` decodes of 1,088-token
    contexts (a 1,024-token prompt and half a 128-token output) beside ``prompts`` whole 1,024-token prefills
    (fewer tokens where the 8,192-token budget ends)."""
    from dataclasses import replace

    from autotune.gpus import load_gpu
    from autotune.models import resolve_model
    from autotune.sim.perf import PerfModel

    gpu = load_gpu("h200")
    if constants:
        gpu = replace(gpu, extra={**(gpu.extra or {}), **constants})
    perf = PerfModel(resolve_model("flash"), gpu, {})
    ctx = concurrency * 1088
    prefill = min(prompts * 1024, 8192 - concurrency)
    step = perf.step_time_s(concurrency + prefill, concurrency + prompts, concurrency + prompts,
                            ctx + prefill * 512, ctx + prefill, prefill == 0)
    return 1e3 * step


def level_summary(trace: Trace, level: Level) -> dict:
    """The level's measured requests (its warm-up wave left out): each segment's spread, and its engine steps."""
    inside = [r for r in trace.requests if level.start_s <= r.times["R"] <= level.end_s]
    measured = inside[level.concurrency:]
    segments = {}
    for name, a, b in SEGMENTS:
        segments[name] = _stats_ms([r.times[b] - r.times[a] for r in measured if a in r.times and b in r.times])
    steps = sorted(s for s, t in trace.step_ends_s.items() if level.start_s <= t <= level.end_s)
    ends = np.array([trace.step_ends_s[s] for s in steps])
    gaps_ms = 1e3 * np.diff(ends) if len(ends) > 1 else np.zeros(0)
    decode_only = [1e3 * (trace.step_ends_s[s] - trace.step_ends_s[s - 1]) for s in steps
                   if s - 1 in trace.step_ends_s and trace.step_tokens.get(s, 0) <= level.concurrency]
    lag = [r.first_token_step - r.scheduled_step for r in measured if r.first_token_step and r.scheduled_step]
    return {**_render_queue(inside, level), **_loop_join(trace, measured, ends),
            **_api_loop(trace, inside, measured, level),
            "step_intervals_ms": _step_intervals(trace, level),
            "first_token_in_its_step": float(np.mean(np.array(lag) == 0)) if lag else None,"config": level.config, "concurrency": level.concurrency, "requests": len(measured),
            "segments_ms": segments, "steps": len(steps),
            "mean_step_ms": float(gaps_ms.mean()) if len(gaps_ms) else None,
            "median_decode_step_ms": float(np.median(decode_only)) if decode_only else None,
            "steps_scheduled_to_first_token": float(np.mean(lag)) if lag else None}


def summarize(run_dirs: list[Path]) -> list[dict]:
    out = []
    for run_dir in run_dirs:
        traces: dict[str, Trace] = {}
        levels = read_levels(run_dir)
        if not levels:
            raise SystemExit(f"{run_dir}: no levels.txt (a step_counts.sh TRACE=1 folder has one)")
        for level in levels:
            if level.config not in traces:
                traces[level.config] = read_trace(run_dir / f"trace-{level.config}")
            row = level_summary(traces[level.config], level)
            row["run"] = run_dir.name
            out.append(row)
    return out


def compact_traces(run_dir: Path, to_dir: Path) -> None:
    """Rewrites DIR's traces into TO (one gzipped file per configuration): times rounded to 0.1 ms, the monotonic
    column dropped, vLLM's stamps and request ids replaced by short ones; :func:`read_trace` reads either."""
    for trace_dir in sorted(run_dir.glob("trace-*")):
        names: dict[str, str] = {}

        def short(prefix: str, name: str) -> str:
            if name in ("", "-"):
                return name
            return names.setdefault(name, f"{prefix}{len(names)}")

        rows = sorted(_lines(trace_dir), key=lambda r: float(r[1]))
        out_dir = to_dir / trace_dir.name
        out_dir.mkdir(parents=True, exist_ok=True)
        with gzip.open(out_dir / "trace-all.tsv.gz", "wt", encoding="utf-8") as f:
            for event, wall, _mono, key, extra in rows:
                if event == "H":
                    extra = short("h", extra)
                elif event == "R":
                    key, extra = short("a", key), short("h", extra)
                elif event in ("A", "W"):
                    key, extra = short("a", key), ""
                elif event == "S":
                    key, extra = short("e", key), short("a", extra)
                elif event in ("P", "p", "Q", "O", "s"):
                    key, extra = short("e", key), ""
                elif event == "F":
                    key = short("e", key)
                elif event == "U":
                    extra = ""
                elif event == "K":
                    tokens, _, ids = extra.partition(":")
                    extra = tokens + ":" + ",".join(short("e", i) for i in ids.split(",") if i)
                elif event in ("T", "t", "b"):
                    key, extra = "-", ""
                elif event == "B":
                    key = "-"
                elif event not in ("y",):
                    continue
                f.write(f"{event}\t{float(wall):.4f}\t-\t{key}\t{extra}\n")
            for start, end, count in read_trace(trace_dir).chunk_runs:
                f.write(f"y\t{start:.4f}\t-\t{count}\t{end:.4f}\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--compact", type=Path, metavar="TO")
    add_card_constants_option(ap, "the sim's card constants to change for its step times")
    args, constants = parse_args_with_constants(ap, argv)
    if args.compact:
        for d in args.dirs:
            compact_traces(d, args.compact)
        return 0
    for d in args.dirs:
        if not (d / "levels.txt").is_file():
            print(f"error: {d}/levels.txt not found (a TRACE=1 run of benchmarks/gpu/step_counts.sh writes it)",
                  file=sys.stderr)
            return 2
    rows = summarize(args.dirs)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    names = [n for n, _, _ in SEGMENTS]
    print("mean ms over each level's measured requests (the warm-up wave left out)")
    print("| run | config | C | n | " + " | ".join(names) + " | mean step | decode step |")
    print("|---|---|---:|---:|" + "---:|" * (len(names) + 2))
    for row in rows:
        cells = [f"{row['segments_ms'][n]['mean']:.1f}" if row["segments_ms"][n] else "-" for n in names]
        step = f"{row['mean_step_ms']:.1f}" if row["mean_step_ms"] else "-"
        dec = f"{row['median_decode_step_ms']:.1f}" if row["median_decode_step_ms"] else "-"
        print(f"| {row['run']} | {row['config']} | {row['concurrency']} | {row['requests']} | "
              + " | ".join(cells) + f" | {step} | {dec} |")
    print("\nP99 ms of each segment")
    print("| run | config | C | " + " | ".join(names) + " |")
    print("|---|---|---:|" + "---:|" * len(names))
    for row in rows:
        cells = [f"{row['segments_ms'][n]['p99']:.1f}" if row["segments_ms"][n] else "-" for n in names]
        print(f"| {row['run']} | {row['config']} | {row['concurrency']} | " + " | ".join(cells) + " |")
    loop_rows = [row for row in rows if row.get("tokenize_ms")]
    if loop_rows:
        print("\nThe API server (TRACE=loop): tokenization on the renderer's worker and the waits around it, ms "
              "(mean; P90); its loop's output batches and stream chunks")
        print("| run | config | C | tokenize | wait for the worker | one-worker replay's wait | handler -> tokenize | "
              "tokenized -> rendered | µs per output | pass: batch and chunks | chunks per pass | "
              "waits > 50 ms: how many, output work's share (median) |")
        print("|---|---|---:|---:|---:|---:|---:|---|---:|---|---:|---|")
        for row in loop_rows:
            after, passes = row["after_tokenize_ms"], row["pass_ms"]
            quiet = row["longest_quiet_ms_in_them"]
            cells = [row["run"], row["config"], str(row["concurrency"]), f"{row['tokenize_ms']['mean']:.1f}",
                     f"{row['worker_wait_ms']['mean']:.1f}", f"{row['one_worker_replay_wait_ms']['mean']:.1f}",
                     f"{row['before_tokenize_ms']['mean']:.1f}", f"{after['mean']:.1f}; {after['p90']:.1f}",
                     f"{row['output_us']:.0f}" if row["output_us"] else "-",
                     f"{passes['mean']:.1f}; {passes['p90']:.1f}" if passes else "-",
                     f"{row['chunks_per_pass']:.0f}" if row["chunks_per_pass"] else "-",
                     f"{row['waits_over_50ms']}: {row['output_work_share_in_them']:.0%}" if quiet else "0"]
            print("| " + " | ".join(cells) + " |")
    print("\nThe engine's steps that carry prefills, between decode-only steps: the interval before (the previous "
          "step held while this one is launched) + its own = their sum, median ms (steps); the sim's step of C "
          "decodes beside 1, 2, 3 or 8 prompts of 1,024 tokens, which it delivers in one interval"
          f"{' (with ' + ' '.join(args.constants) + ')' if args.constants else ''}")
    print("| run | config | C | decode only | 600-1,500 tokens | 1,500-2,600 | 2,600-4,000 | 7,000-8,192 |")
    print("|---|---|---:|---:|---|---|---|---|")
    for row in rows:
        c, cells = row["concurrency"], []
        for (name, v), k in zip(row["step_intervals_ms"].items(), PROMPTS_PER_BIN):
            sim = f"sim {sim_step_ms(c, k, constants):.0f}"
            if name == "decode":
                cells.append(f"{v['after']['p50']:.1f} ({v['n']}); {sim}" if v["n"] else "-")
            else:
                cells.append(f"{v['before']['p50']:.0f} + {v['after']['p50']:.0f} = {v['sum']['p50']:.0f} ({v['n']}); "
                             f"{sim}" if v["n"] else "-")
        print(f"| {row['run']} | {row['config']} | {c} | " + " | ".join(cells) + " |")
    print("\nThe renderer (one first-come-first-served worker) and the engine core's loop; ms")
    print("| run | config | C | renders in order | render's own: median, mean | its wait: mean | renderer busy | "
          "joined after a step end: median | step ends skipped (0, 1, ...) | first token in its step |")
    print("|---|---|---:|---|---|---:|---:|---:|---|---:|")
    for row in rows:
        own, wait, join = row.get("render_own_ms"), row.get("render_wait_ms"), row.get("joined_after_step_end_ms")
        first = row.get("first_token_in_its_step")
        cells = [row["run"], row["config"], str(row["concurrency"]), str(row.get("renders_in_handler_order", "-")),
                 f"{own['p50']:.1f}, {own['mean']:.1f}" if own else "-", f"{wait['mean']:.1f}" if wait else "-",
                 f"{row['renderer_busy']:.0%}" if row.get("renderer_busy") is not None else "-",
                 f"{join['p50']:.2f}" if join else "-", str(row.get("joined_steps_later", "-")),
                 f"{first:.0%}" if first is not None else "-"]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
