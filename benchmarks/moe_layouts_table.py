"""What `benchmarks/gpu/moe_layouts.sh` measured per parallel layout of the weightless GLM-4.6V folder, beside what
autotune's memory plan (`autotune.memory.plan_memory`) says for the same flags on the same card (issue #20).

    python benchmarks/moe_layouts_table.py DIR [--gpu-type h200] [--model PATH|PRESET] [--json]

Per layout (DIR/<layout>/: cmd.txt the server's command, result.txt the script's key=value record, startup.txt
vLLM's start-up lines, bench.json the closed-loop level, gpu-serving.txt nvidia-smi while it served):
- model GiB per GPU: vLLM's "Model loading took X GiB" of the fullest rank (every tensor-parallel worker and every
  data-parallel engine logs its own, "(Worker_TP1 pid=N) ..." or "(EngineCore_DP1 pid=N) ...") against the plan's
  weights_gib_per_gpu;
- KV tokens per engine: "GPU KV cache size: N tokens" (one per data-parallel engine; the smallest) against the
  plan's kv_cache_tokens; "Available KV cache memory" per rank against the plan's kv_cache_gib_per_gpu;
- whether the server started, against whether the plan said it would (and vLLM's failure class where not);
- the load's output tok/s and P99 TTFT / ITL where BENCH ran.
The plan uses DIR/config.json (the folder the script served; `--model` for another), and the error is
(measured / planned - 1) in %: an error beyond 2% (OFF_PCT) marks a figure the plan gets wrong.
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from autotune.engines.base import StartupInfo, classify_failure, parse_startup_log
from autotune.errors import UsageError
from autotune.flags import effective_flags
from autotune.gpus import GpuSpec, load_gpu
from autotune.jsonsafe import json_safe
from autotune.memory import plan_memory
from autotune.models import ModelSpec, resolve_model
from autotune.sim.args import parse_serve_args

OFF_PCT = 2.0  # a measured figure further than this from the plan is a fault of the plan (issue #20)

# vLLM's per-process log prefix (vllm/v1/executor/multiproc_executor.py names workers Worker[_DPn][_TPn][_EPn];
# engine cores are EngineCore or EngineCore_DPn; the API server APIServer)
_PREFIX = re.compile(r"^\((?P<proc>[A-Za-z][\w.-]*) pid=\d+\) ")
# vllm/v1/core/kv_cache_utils.py when the KV cache cannot hold one request of max-model-len: "... (%.2f GiB KV cache
# is needed, which is larger than the available KV cache memory (%.2f GiB). Based on the available memory, the
# estimated maximum model length is %d. ..." (the same words autotune.memory writes for a refused plan)
_REFUSED_KV_GIB = re.compile(r"larger than the available KV cache memory \(([\d.]+) GiB\)")
_REFUSED_TOKENS = re.compile(r"estimated maximum model length is (\d+)")


def startup_by_process(text: str) -> dict[str, StartupInfo]:
    """Start-up figures per logging process ("Worker_TP0", "EngineCore_DP1", ...; "" for unprefixed lines)."""
    lines: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = _PREFIX.match(line)
        lines.setdefault(m["proc"] if m else "", []).append(line)
    return {proc: parse_startup_log("\n".join(group)) for proc, group in lines.items()}


def serve_flags(command: str) -> dict[str, Any]:
    """The vLLM flags of a `vllm serve MODEL ...` (or `... sim serve MODEL ...`) command line, canonical names."""
    words = shlex.split(command)
    if "serve" not in words:
        raise ValueError(f"not a serve command: {command!r}")
    try:
        args = parse_serve_args(words[words.index("serve") + 1:])
    except SystemExit:
        raise ValueError(f"flags the memory plan does not know in: {command!r}") from None
    return dict(args.flags)


def read_result(path: Path) -> dict[str, str]:
    """The script's key=value record of a layout (state, ready_s, exit_code, stop_s, bench_exit)."""
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def gpu_used_gib(path: Path) -> list[float]:
    """nvidia-smi's memory.used per GPU ("0, 129394 MiB, 143771 MiB" lines) in GiB."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[1].endswith("MiB"):
            out.append(float(parts[1].split()[0]) / 1024)
    return out


def measured_figures(text: str) -> dict[str, Any]:
    """The start-up figures of one server log, per rank and summed up as the plan states them (per GPU, per engine)."""
    procs = startup_by_process(text)
    model = {p: s.model_memory_gib for p, s in procs.items() if s.model_memory_gib is not None}
    kv_tokens = {p: s.kv_cache_tokens for p, s in procs.items() if s.kv_cache_tokens is not None}
    kv_gib = {p: s.available_kv_gib for p, s in procs.items() if s.available_kv_gib is not None}
    conc = [s.max_concurrency for s in procs.values() if s.max_concurrency is not None]
    init = [s.engine_init_s for s in procs.values() if s.engine_init_s is not None]
    # vLLM's split of the budget, from the rank with the least KV memory (the one that sizes the cache)
    accounted = [s for s in procs.values() if s.memory_budget_gib is not None and s.available_kv_gib is not None]
    tightest = min(accounted, key=lambda s: s.available_kv_gib or 0.0, default=None)
    return {
        "model_gib_per_gpu": max(model.values()) if model else None,  # the fullest rank
        "kv_cache_tokens": min(kv_tokens.values()) if kv_tokens else None,  # per engine; the smallest
        "kv_cache_gib_per_gpu": min(kv_gib.values()) if kv_gib else None,
        "max_concurrency": min(conc) if conc else None,
        "engine_init_s": max(init) if init else None,
        "model_gib_by_rank": model, "kv_cache_tokens_by_engine": kv_tokens, "kv_cache_gib_by_rank": kv_gib,
        "accounting": None if tightest is None else {
            "gpu_memory_utilization": tightest.gpu_memory_utilization, "budget_gib": tightest.memory_budget_gib,
            "weights_gib": tightest.model_memory_gib, "peak_activation_gib": tightest.peak_activation_gib,
            "non_torch_gib": tightest.non_torch_gib, "graph_estimate_gib": tightest.graph_memory_estimate_gib,
            "kv_gib": tightest.available_kv_gib},
    }


def refused_figures(text: str) -> dict[str, Any]:
    """What a start refused for too small a KV cache still tells: the KV memory each engine had and the tokens it
    would have held (vLLM's estimated maximum model length), the smallest over the engines that said so."""
    out: dict[str, Any] = {}
    if gib := [float(m[1]) for m in _REFUSED_KV_GIB.finditer(text)]:
        out["kv_cache_gib_per_gpu"] = min(gib)
    if tokens := [int(m[1]) for m in _REFUSED_TOKENS.finditer(text)]:
        out["kv_cache_tokens"] = min(tokens)
    return out


def _error_pct(measured: float | None, planned: float | None) -> float | None:
    if measured is None or not planned:
        return None
    return 100.0 * (measured / planned - 1.0)


def _bench(path: Path) -> dict[str, Any] | None:
    if not path.is_file() or not path.read_text().strip():
        return None
    try:
        b = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return {"output_tok_s": b.get("output_tok_s"), "p99_ttft_ms": (b.get("ttft_ms") or {}).get("p99"),
            "p99_itl_ms": (b.get("itl_ms") or {}).get("p99"), "completed": b.get("completed"),
            "failed": b.get("failed"), "concurrency": b.get("concurrency")}


def startup_text(folder: Path) -> str:
    """A layout's start-up lines: the whole server log where it was kept (gzipped in docs/results/raw), else the
    lines the script kept (startup.txt; before the memory accounting was among them, it lacks those)."""
    for name in ("server.log", "server.log.gz", "startup.txt"):
        path = folder / name
        if path.is_file():
            if path.suffix == ".gz":
                with gzip.open(path, "rt", errors="replace") as f:
                    return f.read()
            return path.read_text(errors="replace")
    return ""


def layout_row(folder: Path, model: ModelSpec, gpu: GpuSpec) -> dict[str, Any]:
    """One layout: its flags, the plan for them, what the server logged, and the errors."""
    flags = serve_flags((folder / "cmd.txt").read_text().strip())
    plan = plan_memory(model, gpu, flags)
    result = read_result(folder / "result.txt")
    state = result.get("state", "not run")
    measured = measured_figures(startup_text(folder))
    measured["gpu_used_gib"] = gpu_used_gib(folder / "gpu-serving.txt")
    failure = ""
    if state in ("exited", "timeout"):
        tail = next((folder / n for n in ("server.log", "log-tail.txt") if (folder / n).is_file()), None)
        text = tail.read_text(errors="replace") if tail else ""
        failure = classify_failure(text, exited=state == "exited", timed_out=state == "timeout")
        measured.update(refused_figures(text))
    planned = {"fits": plan.fits, "failure_class": plan.failure_class,
               "model_gib_per_gpu": plan.weights_gib_per_gpu, "kv_cache_tokens": plan.kv_cache_tokens,
               "kv_cache_gib_per_gpu": plan.kv_cache_gib_per_gpu, "max_concurrency": plan.max_concurrency,
               "budget_gib_per_gpu": gpu.memory_gib * float(effective_flags(flags)["gpu-memory-utilization"]),
               "reserve_gib_per_gpu": plan.reserve_gib_per_gpu}
    errors = {k: _error_pct(measured[k], planned[k])
              for k in ("model_gib_per_gpu", "kv_cache_tokens", "kv_cache_gib_per_gpu")}
    started = {"ready": True, "exited": False}.get(state)  # None: timed out, skipped or not run
    return {
        "name": folder.name, "flags": {k: v for k, v in flags.items() if k != "load-format"},
        "state": state, "failure_class": failure,
        "ready_s": float(result["ready_s"]) if "ready_s" in result else None,
        "stop_s": float(result["stop_s"]) if "stop_s" in result else None,
        "plan_agrees_on_start": None if started is None else started == plan.fits,
        "measured": measured, "planned": planned, "error_pct": errors,
        "off": sorted(k for k, e in errors.items() if e is not None and abs(e) > OFF_PCT),
        "bench": _bench(folder / "bench.json"),
    }


def layout_folders(root: Path) -> list[Path]:
    """The layouts in the order they ran (layouts.txt), else every sub-folder with a cmd.txt."""
    order = root / "layouts.txt"
    if order.is_file():
        names = [n for line in order.read_text().splitlines() if not line.startswith("#") for n in line.split()]
        return [root / n for n in dict.fromkeys(names) if (root / n / "cmd.txt").is_file()]  # each once, in order
    return sorted(p.parent for p in root.glob("*/cmd.txt"))


def table(root: Path, model_ref: str | None = None, gpu_type: str = "h200") -> dict[str, Any]:
    if model_ref is None:
        if not (root / "config.json").is_file():
            raise FileNotFoundError(f"{root}/config.json missing: give --model (the folder or preset served)")
        model_ref = str(root)
    model, gpu = resolve_model(model_ref), load_gpu(gpu_type)
    return {"model": model_ref, "architecture": model.architecture, "params_b": model.total_params / 1e9,
            "gpu_type": gpu.name, "memory_gib": gpu.memory_gib, "off_pct": OFF_PCT,
            "layouts": [layout_row(folder, model, gpu) for folder in layout_folders(root)]}


def _f(value: float | None, fmt: str = "{:,.1f}") -> str:
    return "—" if value is None else fmt.format(value)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1f}%" + (" **off**" if abs(value) > OFF_PCT else "")


def markdown(t: dict[str, Any]) -> str:
    head = (f"Model {t['model']} ({t['architecture']}, {t['params_b']:.2f} B parameters); plan for {t['gpu_type']} "
            f"({t['memory_gib']} GiB per GPU). Error = measured / planned - 1; **off** beyond {t['off_pct']:.0f}%.")
    columns = ("| layout | state | ready s | model GiB/GPU measured | planned | error | KV tokens/engine measured "
               "| planned | error | KV GiB/GPU measured | planned | error | out tok/s | P99 TTFT ms | P99 ITL ms |")
    out = [head, "", columns, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for r in t["layouts"]:
        m, p, e, b = r["measured"], r["planned"], r["error_pct"], r["bench"] or {}
        state = r["state"] + (f" ({r['failure_class']})" if r["failure_class"] else "")
        plan_kv = _f(p["kv_cache_tokens"], "{:,}") + ("" if p["fits"] else f" (refused: {p['failure_class']})")
        out.append(f"| {r['name']} | {state} | {_f(r['ready_s'], '{:.0f}')} | {_f(m['model_gib_per_gpu'], '{:.2f}')} "
                   f"| {p['model_gib_per_gpu']:.2f} | {_pct(e['model_gib_per_gpu'])} "
                   f"| {_f(m['kv_cache_tokens'], '{:,}')} | {plan_kv} | {_pct(e['kv_cache_tokens'])} "
                   f"| {_f(m['kv_cache_gib_per_gpu'], '{:.2f}')} | {p['kv_cache_gib_per_gpu']:.2f} "
                   f"| {_pct(e['kv_cache_gib_per_gpu'])} | {_f(b.get('output_tok_s'), '{:,.0f}')} "
                   f"| {_f(b.get('p99_ttft_ms'), '{:,.0f}')} | {_f(b.get('p99_itl_ms'), '{:,.1f}')} |")
        ranks = [f"{k or 'main'} {v:.2f}" for k, v in m["model_gib_by_rank"].items()]
        engines = [f"{k or 'main'} {v:,}" for k, v in m["kv_cache_tokens_by_engine"].items()]
        if len(ranks) > 1 or len(engines) > 1 or m["gpu_used_gib"]:
            used = ", ".join(f"{g:.1f}" for g in m["gpu_used_gib"])
            notes.append(f"- {r['name']}: model GiB by rank: {'; '.join(ranks) or '—'}; KV tokens by engine: "
                         f"{'; '.join(engines) or '—'}; GPU memory used while serving (GiB): {used or '—'} "
                         f"(budget {p['budget_gib_per_gpu']:.1f})")
        if r["plan_agrees_on_start"] is False:
            notes.append(f"- {r['name']}: the plan said {'it fits' if p['fits'] else 'refused: ' + p['failure_class']}"
                         f", vLLM {state}")
    off = [f"{r['name']} {k} ({r['error_pct'][k]:+.1f}%)" for r in t["layouts"] for k in r["off"]]
    measured_any = any(r["measured"]["model_gib_per_gpu"] is not None for r in t["layouts"])
    out += ["", *notes, ""] if notes else [""]
    accounted = [r for r in t["layouts"] if r["measured"].get("accounting")]
    if accounted:
        out += ["vLLM's split of a rank's budget (its tightest rank) against the plan's, GiB:", "",
                ("| layout | budget vLLM / plan | weights | peak activation + non-torch + graphs (estimate) | plan's "
                 "reserve | KV vLLM / plan |"), "|---|---|---|---|---|---|"]
        for r in accounted:
            a, p = r["measured"]["accounting"], r["planned"]
            kept = [a["peak_activation_gib"], a["non_torch_gib"], a["graph_estimate_gib"]]
            out.append(f"| {r['name']} | {_f(a['budget_gib'], '{:.2f}')} ({_f(a['gpu_memory_utilization'], '{:.2f}')})"
                       f" / {p['budget_gib_per_gpu']:.2f} | {_f(a['weights_gib'], '{:.2f}')} / "
                       f"{p['model_gib_per_gpu']:.2f} | " + " + ".join(_f(v, "{:.2f}") for v in kept)
                       + f" | {p['reserve_gib_per_gpu']:.2f} | {_f(a['kv_gib'], '{:.2f}')} / "
                       f"{p['kv_cache_gib_per_gpu']:.2f} |")
        out.append("")
    if not measured_any:
        out.append("Nothing measured yet: the planned columns only.")
    elif off:
        out.append(f"Off by more than {t['off_pct']:.0f}%: " + "; ".join(off))
    else:
        out.append(f"Every measured figure within {t['off_pct']:.0f}% of the plan.")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path, help="the folder moe_layouts.sh wrote")
    ap.add_argument("--gpu-type", default="h200", help="the card of the plan (autotune/calibration/<name>.yaml)")
    ap.add_argument("--model", default=None, help="folder or preset for the plan (default: DIR/config.json)")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args(argv)
    try:
        t = table(args.dir, args.model, args.gpu_type)
    except (FileNotFoundError, ValueError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(json_safe(t), indent=2) if args.json else markdown(t))
    return 0


if __name__ == "__main__":
    sys.exit(main())
