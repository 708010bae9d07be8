"""Rich console view of a study: a live trial table, best so far, elapsed and ETA. Consumes events only."""
from __future__ import annotations

import math
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from autotune.progress import Event

__all__ = ["StudyView", "short_flags"]

_SHORT = {"max-num-seqs": "seqs", "max-num-batched-tokens": "batch", "kv-cache-dtype": "kv",
          "gpu-memory-utilization": "mem", "enable-prefix-caching": "prefix", "async-scheduling": "async",
          "max-cudagraph-capture-size": "graphs", "tensor-parallel-size": "tp", "data-parallel-size": "dp",
          "enable-expert-parallel": "ep", "mm-encoder-tp-mode": "mm", "enable-chunked-prefill": "chunked"}


def short_flags(flags: dict[str, Any]) -> str:
    parts = []
    for key, value in flags.items():
        if key == "enable-chunked-prefill":
            continue
        name = _SHORT.get(key, key)
        if isinstance(value, bool):
            parts.append(name if value else f"no-{name}")
        else:
            parts.append(f"{name}={value}")
    return " ".join(parts) or "(vLLM defaults)"


def _fmt(value: Any, spec: str = ",.0f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


class StudyView:
    """Callable progress sink: ``with StudyView(console) as view: run_study(..., sink=view)``."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.rows: dict[int, dict[str, Any]] = {}
        self.current: int | None = None
        self.status = "starting"
        self.started = time.monotonic()
        self.n_trials = 0
        self.timeout_s: float | None = None
        self.metric = "ttft"
        self.limit_ms = math.nan
        self.best: dict[str, Any] | None = None
        self.durations: list[float] = []
        # Not a terminal (CI, a log file): one plain line per event instead of a live table.
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False) \
            if self.console.is_terminal else None

    def __enter__(self) -> StudyView:
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live:
            self.live.update(self._render())
            self.live.__exit__(*exc)
        else:
            self.console.print(self._render())

    def __call__(self, event: Event) -> None:
        d = event.data
        if event.kind == "study_started":
            self.n_trials, self.timeout_s = d["n_trials"], d.get("timeout_s")
            self.metric, self.limit_ms = d["metric"], d["limit_ms"]
            self.status = f"study {d['study']} on the {d['engine']} engine ({d['existing_trials']} earlier trials)"
        elif event.kind == "trial_started":
            self.current = d["number"]
            self.rows[d["number"]] = {"flags": short_flags(d["flags"]), "baseline": d["baseline"], "state": "starting"}
        elif event.kind == "engine_ready" and self.current in self.rows:
            self.rows[self.current]["state"] = "load search"
        elif event.kind == "load_level" and self.current in self.rows:
            self.rows[self.current]["state"] = (f"c={d['concurrency']} {_fmt(d['output_tok_s'])} tok/s "
                                                f"p99 {_fmt(d['p99_ms'])} ms")
        elif event.kind == "trial_finished":
            row = self.rows.setdefault(d["number"], {"flags": short_flags(d["flags"]), "baseline": d["baseline"]})
            row.update(state="ok" if d["feasible"] else (d["failure_class"] or "infeasible"),
                       value=d["value"] if d["feasible"] else None, p99=d["p99_ms"], c=d["concurrency"])
            self.durations.append(d["wall_s"])
            if d["feasible"] and (self.best is None or d["value"] > self.best["value"]):
                self.best = {"number": d["number"], "value": d["value"]}
        elif event.kind == "remeasure":
            self.status = f"re-measuring trial {d['trial']} ({d['repeat']}/{d['of']}) at concurrency {d['concurrency']}"
        elif event.kind == "study_finished":
            self.status = f"done ({d['stopped_by']}): {d['verdict']}"
        if self.live:
            self.live.update(self._render())
        else:
            self._log_line(event)

    def _log_line(self, event: Event) -> None:
        d = event.data
        stamp = f"[{(time.monotonic() - self.started) / 60:5.1f} min]"
        if event.kind == "trial_started":
            line = f"trial {d['number']} {d['baseline'] or ''} {short_flags(d['flags'])}"
        elif event.kind == "engine_ready":
            st = d["startup"]
            line = f"  engine ready in {_fmt(st.get('ready_s'), '.0f')} s, KV {_fmt(st.get('kv_cache_tokens'))} tokens"
        elif event.kind == "load_level":
            line = (f"  concurrency {d['concurrency']}: {_fmt(d['output_tok_s'])} output tok/s, "
                    f"p99 {d['metric']} {_fmt(d['p99_ms'])} ms {'ok' if d['feasible'] else 'over the limit'}")
        elif event.kind == "trial_finished":
            line = (f"trial {d['number']} done: {_fmt(d['value'])} tok/s at concurrency {_fmt(d['concurrency'], 'd')}"
                    if d["feasible"] else f"trial {d['number']} infeasible: {d['failure_class']} {d['failure_reason']}")
            line += f" ({d['wall_s']:.0f} s)"
            if d.get("stop_reason") == "deadline":
                line += "; load search cut short by --timeout (the knee may lie higher)"
        elif event.kind in ("study_started", "remeasure", "study_finished"):
            line = self.status
        elif event.kind == "remeasured":
            line = f"  re-measured: {_fmt(d['output_tok_s'])} tok/s, p99 {_fmt(d['p99_ms'])} ms"
        elif event.kind == "remeasure_skipped":
            line = (f"  not re-measuring trial {d['trial']} ({d['repeat']}/{d['of']}): its expected "
                    f"{d['expected_s']:.0f} s would run past --timeout")
        elif event.kind == "remeasure_step_down":
            line = (f"  over the limit at concurrency {d['from_concurrency']}: re-measuring trial {d['trial']} "
                    f"at its next lower level, {d['concurrency']}")
        else:
            return
        self.console.print(f"{stamp} {line}", highlight=False, soft_wrap=True)

    def _render(self) -> Group:
        elapsed = time.monotonic() - self.started
        run = len(self.durations)
        eta = ""
        if self.durations and self.n_trials:
            left = max(0, self.n_trials - run) * (sum(self.durations) / run)
            if self.timeout_s:
                left = min(left, max(0.0, self.timeout_s - elapsed))
            eta = f", ETA ~{left / 60:.1f} min"
        best = (f"best so far: trial {self.best['number']} at {self.best['value']:,.0f} output tok/s"
                if self.best else "best so far: none within the limit yet")
        head = Text(f"{self.status}\n{best}  |  elapsed {elapsed / 60:.1f} min{eta}  |  "
                    f"P99 {self.metric} <= {_fmt(self.limit_ms, ',.0f')} ms")
        table = Table(expand=False, show_lines=False)
        for col in ("#", "baseline", "flags", "status", "output tok/s", f"p99 {self.metric} ms", "conc."):
            table.add_column(col)
        for number in sorted(self.rows)[-25:]:
            r = self.rows[number]
            table.add_row(str(number), r.get("baseline") or "", r["flags"], r.get("state", ""),
                          _fmt(r.get("value")), _fmt(r.get("p99")), _fmt(r.get("c"), "d"))
        return Group(head, table)
