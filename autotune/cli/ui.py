"""The rich console view of a study. It only consumes the core's progress (:class:`autotune.progress.Progress`).

In a terminal: a live table of the trials, the best so far, elapsed time and an ETA that knows about the
stagnation stop and the re-measurements. Not in a terminal (a log, CI, a pipe): plain lines, one per trial and
one per re-measurement, never wrapped or cut, so that a study name or a `vllm serve` line stays whole.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from autotune.gpu_ids import GpuId
from autotune.hostcpu import PREFILL_WAITS, others_note
from autotune.metrics import describe_limits, fmt_ms
from autotune.progress import CalibrationStep, Progress, StudyEta, StudyInterrupted, StudyStart
from autotune.records import LevelRecord, Measurement, SearchLeft, TrialResult
from autotune.selection import LeftOutTrial
from autotune.sim.calibrate import Calibration

__all__ = ["StudyView", "CalibrationConsole", "short_flags"]

_SHORT = {"max-num-seqs": "seqs", "max-num-batched-tokens": "batch", "kv-cache-dtype": "kv",
          "gpu-memory-utilization": "mem", "enable-prefix-caching": "prefix", "async-scheduling": "async",
          "max-cudagraph-capture-size": "graphs", "tensor-parallel-size": "tp", "data-parallel-size": "dp",
          "enable-expert-parallel": "ep", "mm-encoder-tp-mode": "mm", "enable-chunked-prefill": "chunked",
          "limit-mm-per-prompt": "mm-limit", "mm-processor-cache-gb": "mm-cache-gb",
          "mm-processor-cache-type": "mm-cache", "skip-mm-profiling": "skip-mm-profile"}


def short_flags(flags: Mapping[str, Any]) -> str:
    parts = []
    for key, value in flags.items():
        if key == "enable-chunked-prefill" or value is None:  # None: vLLM's default, the flag not given
            continue
        name = _SHORT.get(key, key)
        if isinstance(value, bool):
            parts.append(name if value else f"no-{name}")
        elif isinstance(value, dict):
            parts.append(f"{name}={json.dumps(value, separators=(',', ':'))}")
        else:
            parts.append(f"{name}={value}")
    return " ".join(parts) or "(vLLM defaults)"


def _fmt(value: Any, spec: str = ",.0f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _p99s(level: LevelRecord | None) -> str:
    """Each limited metric's P99 at a level with its interval: ``p99 ttft 480 ms [450, 510], itl 45.2 ms [..]``."""
    if level is None or not level.p99:
        return "p99 -"
    parts = []
    for metric, p99 in level.p99.items():
        interval = "" if math.isnan(p99.low_ms) else f" [{fmt_ms(p99.low_ms)}, {fmt_ms(p99.high_ms)}]"
        parts.append(f"{metric} {fmt_ms(p99.value_ms)} ms{interval}")
    runs = f", {level.runs} runs" if level.runs > 1 else ""
    return "p99 " + ", ".join(parts) + runs


def _run_search_text(run: SearchLeft | None) -> str:
    """What ends a worker's trials, its run's search, as the run last recorded it."""
    if run is None:
        return "the run's search ends (the run recorded no trial budget: an autotune before this one)"
    timeout = ", or sooner by its --timeout" if run.timeout else ""
    after = f"after {run.trials_left} more of its trials at most" if run.trials_left else "with the trials it runs"
    return f"the run's search ends {after} (its --trials {run.trials}{timeout})"


def _trial_name(number: int, baseline: str) -> str:
    return f"trial {number}" + (f" ({baseline})" if baseline else "")


def _outcome(result: TrialResult) -> str:
    """A finished trial's figure in a few words: its throughput and load, or why it has none."""
    return (f"{_fmt(result.output_tok_s)} tok/s at concurrency {result.concurrency}" if result.feasible
            else result.failure_class or "infeasible")


def _leftover_line(served_model_name: str, port: int, gpu_ids: tuple[GpuId, ...]) -> str:
    on_gpus = f", GPUs {','.join(gpu_ids)}" if gpu_ids else ""
    return f"stopped server {served_model_name} (port {port}{on_gpus}) left running by an earlier run that died"


class JsonView(Progress):
    """The progress of `run --json` and `worker --json`: stdout holds their one object alone, so nothing is said
    while the study runs but, on stderr, a server an earlier run left running and this one stopped (a process of
    the user's machine ended: never silently). If a signal stops the study, what it kept, for the object."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.interrupted: StudyInterrupted | None = None

    def leftover_stopped(self, served_model_name: str, port: int, gpu_ids: tuple[GpuId, ...]) -> None:
        self.console.print(f"autotune: {_leftover_line(served_model_name, port, gpu_ids)}", markup=False,
                           highlight=False, soft_wrap=True)

    def study_interrupted(self, interrupted: StudyInterrupted) -> None:
        self.interrupted = interrupted

    @contextmanager
    def kept_on_signal(self) -> Iterator[None]:
        """Around the study: if a signal stops it (the launcher's handlers raise KeyboardInterrupt or SystemExit),
        the command's one object on stdout says what the study kept."""
        from autotune.cli.common import echo_json

        try:
            yield
        except (KeyboardInterrupt, SystemExit):
            if self.interrupted is not None:
                echo_json({"interrupted": True, **asdict(self.interrupted)})
            raise


class StudyView(Progress):
    """``with StudyView(console) as view: run_study(..., progress=view)``."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.rows: dict[int, dict[str, Any]] = {}
        self.current: int | None = None
        self.status = "starting"
        self.started = time.monotonic()
        self.limits_ms: dict[str, float] = {}  # P99 limit by metric: one table column each
        self.best: tuple[int, float] | None = None  # trial, output tok/s
        self.gpus = 1
        self.eta: StudyEta | None = None
        self.remeasuring: dict[int, str] = {}  # what each trial's re-measurement in flight is (parallel slots)
        self.eta_at = 0.0  # when the ETA was given
        # a log (no terminal) of a study on served engines gets a line per server start and load level: its trials
        # take minutes, the in-process sim's seconds
        self.log_levels = False
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

    # -- the core's progress ---------------------------------------------------------------------------------
    def study_started(self, start: StudyStart) -> None:
        self.limits_ms, self.gpus = dict(start.limits_ms), start.gpus
        self.log_levels = start.served and self.live is None
        within = f" within {round(start.timeout_s / 60, 1):g} min" if start.timeout_s else ""
        budget = f"up to {start.n_trials} trial{'s' if start.n_trials != 1 else ''}{within}"
        if start.worker:
            budget = f"until {_run_search_text(start.run_search)}; {budget} here"
        self.status = (f"{'worker on ' if start.worker else ''}study {start.study} on the {start.engine} engine, "
                       f"{describe_limits(start.limits_ms)}: {budget} ({start.existing_trials} earlier)")
        if len(start.gpu_slots) > 1:
            self.status += (f"; {len(start.gpu_slots)} trials at once, on GPUs "
                            + " and ".join(",".join(slot) for slot in start.gpu_slots))
        if start.idle_gpus:
            self.status += f"; GPUs {','.join(start.idle_gpus)} left idle"
        self._log(self.status)
        for caveat in start.caveats:
            self._log(f"caution: {caveat}")
        if start.baseline_layout:  # what the gains are over: said in a terminal too
            self._say(f"note: {start.baseline_layout}")

    def trial_started(self, number: int, flags: Mapping[str, Any], baseline: str) -> None:
        self.current = number
        self.rows[number] = {"flags": short_flags(flags), "baseline": baseline, "state": "starting"}
        self._refresh()

    def engine_ready(self, startup: Mapping[str, Any], trial: int | None = None) -> None:
        number = self.current if trial is None else trial
        if number in self.rows:
            self.rows[number]["state"] = "load search"
        ready_s = startup.get("ready_s")
        if self.log_levels and ready_s is not None:
            self._log(f"trial {number}: server ready after {ready_s:.0f} s")
        self._refresh()

    def load_level(self, level: LevelRecord, limits_ms: Mapping[str, float], trial: int | None = None) -> None:
        number = self.current if trial is None else trial
        if number in self.rows:
            busy = others_note([level.host_cpu])
            self.rows[number]["state"] = (f"c={level.concurrency} {_fmt(level.output_tok_s)} tok/s {_p99s(level)}"
                                          + (f" ({busy})" if busy else ""))
            if self.log_levels:
                self._log(f"trial {number}: {self.rows[number]['state']}")
        self._refresh()

    def leftover_stopped(self, served_model_name: str, port: int, gpu_ids: tuple[GpuId, ...]) -> None:
        self._say(_leftover_line(served_model_name, port, gpu_ids))

    def dead_run_trials_failed(self, numbers: tuple[int, ...]) -> None:
        which = ", ".join(str(n) for n in numbers)
        self._say(f"trial{'s' if len(numbers) > 1 else ''} {which} left running by an earlier run that died: "
                  "failed and queued again")

    def trial_failed_elsewhere(self, number: int, why: str) -> None:
        if number in self.rows:
            self.rows[number]["state"] = "failed elsewhere"
        self._say(f"trial {number} was failed by another process while this one ran it, taken for dead: "
                  f"{why or 'its heartbeats came too late'}; not recorded here, going on")

    def kept_trials_added(self, numbers: tuple[int, ...], folder: Path) -> None:
        which = ", ".join(str(n) for n in numbers)
        its, is_ = ("their results", "are") if len(numbers) > 1 else ("its result", "is")
        self._say(f"trial{'s' if len(numbers) > 1 else ''} {which}: {its}, kept in {folder} by an earlier run that "
                  f"died or lost its database, {is_} added to the study as measured, not measured again")

    def study_interrupted(self, interrupted: StudyInterrupted) -> None:
        i = interrupted
        cut = ""
        if i.interrupted_trials:
            numbers = ", ".join(str(n) for n in i.interrupted_trials)
            trials, their, records_ = (("trials", "their", "their records") if len(i.interrupted_trials) > 1
                                       else ("trial", "its", "its record"))
            levels = "level" if i.levels_kept == 1 else "levels"
            cut = (f"; interrupted: {trials} {numbers} (marked failed, {their} {i.levels_kept} measured load {levels} "
                   f"kept in {records_}, {their} flags queued again)")
        finished = "trial" if i.complete_trials == 1 else "trials"
        self._say(f"interrupted: every server is stopped; study {i.study} keeps its {i.complete_trials} finished "
                  f"{finished} in {i.storage}{cut}. To resume, run the same command again (same --study and "
                  "--storage).")

    def trial_finished(self, number: int, baseline: str, result: TrialResult) -> None:
        row = self.rows.setdefault(number, {"flags": short_flags(result.flags), "baseline": baseline})
        row.update(state="ok" if result.feasible else (result.failure_class or "infeasible"),
                   value=result.output_tok_s if result.feasible else None, p99=result.p99_ms, c=result.concurrency)
        self._note_best(number, result)
        name = _trial_name(number, baseline)
        if result.feasible:
            what = (f"{_fmt(result.output_tok_s)} tok/s at concurrency {result.concurrency}, "
                    f"{_p99s(result.level(result.concurrency))}")
        else:
            what = f"{result.failure_class or 'infeasible'}: {result.failure_reason}"
        cut = ("; load search cut short by --timeout (the knee may lie higher)"
               if result.stop_reason == "deadline" else "")
        if result.knee_may_lie_higher:
            cut += (f"; every limit held up to --max-concurrency ({result.top_concurrency}): "
                    "the knee may lie higher")
        if busy := others_note(lv.host_cpu for lv in result.levels):
            cut += f"; {busy}, while it measured: {PREFILL_WAITS}"
        self._log(f"{name} {short_flags(result.flags)}: {what} ({result.trial_wall_s:.0f} s, "
                  f"{result.trial_wall_s / 60 * self.gpus:.1f} GPU-min, {len(result.levels)} "
                  f"level{'s' if len(result.levels) != 1 else ''}){cut}")

    def trial_not_run(self, number: int, same_flags_as: int, earlier: TrialResult) -> None:
        self.rows[number] = {"flags": short_flags(earlier.flags), "baseline": "",
                             "state": f"same flags as trial {same_flags_as}: not run"}
        self._log(f"trial {number} {short_flags(earlier.flags)}: the same flags as trial {same_flags_as}, not run "
                  f"again (the sampler is told trial {same_flags_as}'s result again: {_outcome(earlier)})")

    def trial_result_taken(self, number: int, baseline: str, measured_as: int, result: TrialResult) -> None:
        self.rows[number] = {"flags": short_flags(result.flags), "baseline": baseline,
                             "state": f"measured as trial {measured_as}", "p99": result.p99_ms, "c": result.concurrency,
                             "value": result.output_tok_s if result.feasible else None}
        self._note_best(number, result)
        self._say(f"{_trial_name(number, baseline)} {short_flags(result.flags)}: trial {measured_as} measured these "
                  f"flags before its process died, and its result is stored: taken ({_outcome(result)}), not measured "
                  "again")

    def _note_best(self, number: int, result: TrialResult) -> None:
        if result.feasible and (self.best is None or result.output_tok_s > self.best[1]):
            self.best = (number, result.output_tok_s)

    def study_eta(self, eta: StudyEta) -> None:
        self.eta, self.eta_at = eta, time.monotonic()
        if estimate := self._eta_text():
            self._log(estimate.removeprefix("; "))
        else:
            self._refresh()

    def remeasure_started(self, trial: int, repeat: int, of: int, concurrency: int, baseline: str) -> None:
        self.eta = None  # until the next trial's estimate: a baseline's are made right after its trial
        self.status = f"re-measuring trial {trial} ({repeat}/{of}) at concurrency {concurrency}"
        self.remeasuring[trial] = self.status
        if self.log_levels:  # a fresh server: minutes until the result
            self._log(f"{self.status}: a fresh server")
        else:
            self._refresh()

    def remeasured(self, trial: int, measurement: Measurement, limits_ms: Mapping[str, float]) -> None:
        failed = f" (server failed: {measurement.failure})" if measurement.failure else ""
        if busy := others_note([measurement.host_cpu]):
            failed += f" ({busy})"
        p99s = ", ".join(f"{metric} {fmt_ms(measurement.p99_ms.get(metric))} ms" for metric in limits_ms)
        what = self.remeasuring.pop(trial, f"re-measuring trial {trial}")
        self._log(f"{what}: {_fmt(measurement.output_tok_s)} tok/s, p99 {p99s}{failed}")

    def remeasure_skipped(self, trial: int, repeat: int, of: int, expected_s: float) -> None:
        self._log(f"not re-measuring trial {trial} ({repeat}/{of}): its expected {expected_s:.0f} s would run "
                  "past --timeout")

    def remeasure_stepped_down(self, trial: int, from_concurrency: int, concurrency: int) -> None:
        self._log(f"trial {trial} over a limit at concurrency {from_concurrency}: re-measuring it at {concurrency}")

    def spare_round(self, finalists: int, repeat: int) -> None:
        self._log(f"time left before --timeout: one more fresh-server run of each of the {finalists} finalists "
                  f"compared (re-measurement {repeat})")

    def waiting_for_trials(self, numbers: tuple[int, ...], at_most_s: float) -> None:
        self.eta = None
        which = ", ".join(str(n) for n in numbers)
        trials, processes, them = (("trials", "other processes", "them") if len(numbers) > 1 else
                                   ("trial", "another process", "it"))
        self.status = (f"search done; waiting up to {at_most_s:.0f} s for {trials} {which}, still running on "
                       f"{processes}, to include {them} in the final comparison")
        self._log(self.status)

    def waited_for_trials(self, finished: tuple[int, ...], left_out: tuple[LeftOutTrial, ...], waited_s: float) -> None:
        if finished:
            which = ", ".join(str(n) for n in finished)
            self._log(f"trial{'s' if len(finished) > 1 else ''} {which}, run elsewhere, finished after "
                      f"{waited_s:.0f} s of waiting: in the final comparison")
        for trial in left_out:  # the verdict names them too: one of them may have been the best
            self._say(f"left out of the final comparison: {trial.describe()}")

    def study_finished(self, study: str, stopped_by: str, verdict: str, profile_path: Path | None,
                       gpu_minutes: float) -> None:
        self.eta = None
        self.status = f"study {study} done ({stopped_by}), {gpu_minutes:.1f} GPU-min"
        self._log(self.status)

    # -- drawing -----------------------------------------------------------------------------------------------
    def _log(self, line: str) -> None:
        if self.live:
            self._refresh()
            return
        stamp = f"[{(time.monotonic() - self.started) / 60:5.1f} min]"
        self.console.print(f"{stamp} {line}", markup=False, highlight=False, soft_wrap=True)

    def _say(self, line: str) -> None:
        """A line that matters after the run too: printed above the live table in a terminal as well."""
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def _refresh(self) -> None:
        if self.live:
            self.live.update(self._render())

    def _eta_text(self) -> str:
        if self.eta is None or (self.eta.trials_left == 0 and self.eta.remeasure_s <= 0):
            return ""  # nothing left to estimate
        e = self.eta
        trials = f"{e.trials_left} more trial{'s' if e.trials_left != 1 else ''}"
        if e.eta_s is None:  # a worker's, whose run has not told what ends its search
            why = ("" if e.run_search is None or e.run_search.search_left_s is not None
                   else " until the run has timed a trial")
            return f"; ETA unknown{why}: this worker stops when {_run_search_text(e.run_search)}"
        left = max(0.0, e.eta_s - (time.monotonic() - self.eta_at))
        budget = "" if e.time_left_s is None else f" of {e.time_left_s / 60:.1f} min left"
        if e.worker_stops_first:
            return (f"; ETA ~{left / 60:.1f} min{budget}: {trials} at most (this worker's --trials), before "
                    f"{_run_search_text(e.run_search)}")
        if e.worker:
            return f"; ETA ~{left / 60:.1f} min{budget}: until {_run_search_text(e.run_search)}"
        return (f"; ETA ~{left / 60:.1f} min{budget}: {trials} at most, then {e.remeasure_s / 60:.1f} min for the "
                "final comparison")

    def _render(self) -> Group:
        elapsed = time.monotonic() - self.started
        best = (f"best so far: trial {self.best[0]} at {self.best[1]:,.0f} output tok/s"
                if self.best else "best so far: none within the limits yet")
        head = Text(f"{self.status}\n{best}  |  elapsed {elapsed / 60:.1f} min{self._eta_text()}")
        table = Table(expand=False, show_lines=False)
        for col in ("#", "baseline", "flags", "status", "output tok/s", *(f"p99 {m} ms" for m in self.limits_ms),
                    "conc."):
            table.add_column(col)
        for number in sorted(self.rows)[-25:]:
            r = self.rows[number]
            p99 = r.get("p99") or {}
            table.add_row(str(number), r.get("baseline") or "", r["flags"], r.get("state", ""),
                          _fmt(r.get("value")), *(fmt_ms(p99.get(m)) for m in self.limits_ms), _fmt(r.get("c"), "d"))
        return Group(head, table)


class CalibrationConsole(Progress):
    """`autotune sim calibrate`'s view: a line per evaluation of the fit on stderr, then the card's constants and
    how far the sim is from the measured runs before and after, on stdout."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.err = Console(stderr=True, soft_wrap=True, highlight=False)

    def calibration_step(self, step: CalibrationStep) -> None:
        if self.quiet:
            return
        tried = ", ".join(f"{name} {value:.4g}" for name, value in step.constants.items())
        self.err.print(f"fit {step.evaluation}/~{step.max_evaluations}: {tried}: loss "
                       f"{step.loss:.4g} (best {step.best_loss:.4g})")

    def finished(self, result: Calibration, card_path: str) -> None:
        out = Console(soft_wrap=True, highlight=False)
        table = Table(title=f"sim calibrate: {len(result.runs)} measured runs, {result.evaluations} evaluations")
        for column in ("constant", f"{result.base} card", "this host"):
            table.add_column(column, justify="left" if column == "constant" else "right")
        if result.interval_90:
            table.add_column("90% interval, servers resampled", justify="right")
        if result.without_trial:
            table.add_column("without one trial", justify="right")
        for name, value in result.constants.items():
            others = [constants[name] for constants in result.without_trial.values()]
            interval = result.interval_90.get(name)
            table.add_row(name, f"{result.start[name]:.4g}", f"{value:.4g}",
                          *([f"{interval[0]:.4g} to {interval[1]:.4g}"] if interval else []),
                          *([f"{min(others):.4g} to {max(others):.4g}"] if others else []))
        out.print(table)
        errors = Table(title="the sim against the measured runs (median \\[min, max] of sim / measured - 1)")
        for column in ("figure", f"{result.base} card", "this host"):
            errors.add_column(column, justify="left" if column == "figure" else "right")
        for figure, fitted in result.errors_pct.items():
            errors.add_row(figure, _pct_spread(result.errors_start_pct[figure]), _pct_spread(fitted))
        out.print(errors)
        if result.left_out:
            out.print(f"{len(result.left_out)} runs left out, e.g. {result.left_out[0]}")
        caution = result.caution()
        if caution:
            out.print(f"[yellow]caution: {caution}[/]")
        out.print(f"wrote {card_path}: use it as --gpu-type {card_path}")


def _pct_spread(errors: tuple[float, ...]) -> str:
    finite = [e for e in errors if math.isfinite(e)]
    if not finite:
        return "-"
    return f"{sorted(finite)[len(finite) // 2]:+.1f}% [{min(finite):+.1f}, {max(finite):+.1f}]"
