"""One trial: memory check -> launch the engine -> load search on the live server -> tear down.

The sim engine runs in-process on a virtual clock by default (:class:`~autotune.sim.inproc.InProcessSim`:
fast, and the same figures however busy the CPU); ``sim_server`` runs it as a real `autotune sim serve`
subprocess driven over HTTP, paced by ``time_scale``, for the launcher's whole path.

Failures are results, not exceptions: an infeasible memory plan, a server that never becomes ready or a
load search that finds no level within the limit all come back as a :class:`~autotune.records.TrialResult`
with its failure class, so the study records them and the sampler steers away.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from autotune.engines.base import LaunchSpec
from autotune.engines.launcher import EngineServer
from autotune.errors import EngineStartError, ServerUnreachable
from autotune.gpu_ids import GpuId
from autotune.gpus import GpuSpec, card_caveats, sim_caveats
from autotune.hostcpu import HostCpuMeter
from autotune.loadgen.runner import LoadConfig, run_bench
from autotune.loadgen.workload import Workload
from autotune.jsonsafe import json_safe
from autotune.loadsearch import LoadSearchConfig, LoadSearchResult, StopSearch, infeasible_reason, search_load
from autotune.memory import plan_memory
from autotune.metrics import BenchResult
from autotune.models import ModelSpec
from autotune.progress import NULL_PROGRESS, Progress
from autotune.records import MEMORY_PLAN_REFUSED, STOPPED_AT_MAX_CONCURRENCY, TrialResult
from autotune.sim.noise import RunNoise
from autotune.sim.inproc import InProcessSim

__all__ = ["LevelShape", "TrialSettings", "run_trial", "measure_once", "level_load_config"]


# Kept before a deadline for stopping the server (vLLM: SIGTERM, wait, port and GPU memory back).
TEARDOWN_RESERVE_S = {"vllm": 30.0, "sim": 5.0}
# Between SIGTERM and SIGKILL of a server's group at a trial's end: vLLM may take seconds to free its GPU memory
# gracefully; the sim server exits in well under a second, so a longer wait only delays the next trial.
STOP_GRACE_S = {"vllm": 20.0, "sim": 3.0}
UNREACHABLE = "the server stopped answering"  # a load search's stop reason when it did


@dataclass(frozen=True)
class LevelShape:
    """How a study's load level at one concurrency C runs, and what `autotune bench --concurrency C` runs by
    default: a closed loop, its first wave ramped and left out as warm-up, throughput over the steady window."""

    prompts_per_level: float = 3.0  # measured prompts = this x concurrency, within the bounds below
    min_prompts: int = 32
    max_prompts: int = 1500
    # Warm-up prompts (excluded from figures) = this x concurrency: the whole first wave. Its prefills queue
    # behind each other (on the H100 ~33 prompts of 1k tokens a second while earlier ones decode); with
    # 0.5 x C half of them were measured, and that alone set every trial's P99 TTFT knee
    # (docs/results/h100-flash.md).
    warmup_factor: float = 1.0
    ramp_s: float = 2.0  # first wave spread over this many seconds of the server's clock (no synchronized start)

    def load_config(self, concurrency: int) -> LoadConfig:
        """The level at ``concurrency`` (in the server's clock; no timeouts, scraping or records)."""
        n = int(min(self.max_prompts, max(self.min_prompts, self.prompts_per_level * concurrency)))
        warmup = int(max(1, self.warmup_factor * concurrency))
        return LoadConfig(concurrency=concurrency, num_prompts=n, warmup_prompts=warmup, ramp_s=self.ramp_s,
                          steady_state=True)


@dataclass(frozen=True)
class TrialSettings:
    """Everything about how trials run that is not a searched flag."""

    engine: str  # vllm | sim
    model: ModelSpec
    gpu: GpuSpec
    gpus: int
    workload: Workload
    search: LoadSearchConfig
    gpu_ids: tuple[GpuId, ...] = ("0",)
    time_scale: float = 1.0  # sim server only: modelled seconds per wall second
    sim_server: bool = False  # sim only: a real `autotune sim serve` subprocess over HTTP, not in-process
    sim_noise: RunNoise | None = None  # in-process sim only: run-to-run noise (None: exact)
    seed: int = 0  # the study's: seeds the sim's noise
    startup_timeout_s: float = 900.0
    level: LevelShape = LevelShape()
    request_timeout_s: float = 600.0
    extra_env: dict[str, str] = field(default_factory=dict)
    vllm_cmd: tuple[str, ...] | None = None
    ledger_dir: Path | None = None  # where started servers are recorded until stopped (engines/ledger.py)
    sim_fault: str = ""  # sim server only: `autotune sim serve --fault` for this trial's server (sim/faults.py)

    def sim_model(self) -> dict[str, Any]:
        """On the sim engine, what its figures rest on: the card's constants and the run-to-run noise model
        (in-process only); nothing on vLLM, whose figures rest on the GPU."""
        if self.engine != "sim":
            return {}
        noise = asdict(self.sim_noise) if self.sim_noise and not self.sim_server else "off"
        return {"card": self.gpu.constants(), "noise": noise}

    def sim_caveats(self) -> list[str]:
        """On the sim engine: what it is known to get wrong on this card under the study's limits (its card's
        calibration says); none on vLLM."""
        return sim_caveats(self.gpu, self.search.limits_ms) if self.engine == "sim" else []

    def card_caveats(self) -> list[str]:
        """On a GPU no built-in card describes as it is: what the memory plan and the sim's prediction rest on."""
        return card_caveats(self.gpu)


def sim_predicted_knee(settings: TrialSettings, flags: dict[str, Any], folder: Path) -> int | None:
    """The concurrency the in-process sim engine (exact, no noise) finds for these flags under the study's limits
    and workload: seconds of CPU, no server. None where it finds none within the limits. Its log and levels go to
    ``folder``, the trial's own: it runs on a daemon thread that an ending process stops mid-way, so a temporary
    folder would be left behind."""
    sim = replace(settings, engine="sim", sim_server=False, sim_noise=None, sim_fault="", ledger_dir=None,
                  time_scale=1.0)
    result = run_trial(sim, flags, "prior", folder / "server.log")
    return result.concurrency if result.feasible else None


def level_load_config(settings: TrialSettings, concurrency: int, records_path: Path | None = None) -> LoadConfig:
    # The in-process sim's clock is the modelled one: nothing to scale.
    scale = settings.time_scale if not runs_in_process(settings) else 1.0
    return replace(
        settings.level.load_config(concurrency),
        # A time-scaled sim may lag the wall clock when the CPU cannot keep up: never below 2 minutes of wall.
        request_timeout_s=max(settings.request_timeout_s / max(scale, 1e-9), min(settings.request_timeout_s, 120.0)),
        scrape_metrics=True, time_scale=scale, records_path=str(records_path) if records_path else None,
    )


def runs_in_process(settings: TrialSettings) -> bool:
    """The in-process sim engine: a trial costs seconds of CPU, no server."""
    return settings.engine == "sim" and not settings.sim_server


def _engine(settings: TrialSettings, spec: LaunchSpec,
            progress: Progress = NULL_PROGRESS) -> EngineServer | InProcessSim:
    if runs_in_process(settings):
        return InProcessSim(spec, progress)
    return EngineServer(spec, progress=progress, grace_s=STOP_GRACE_S.get(settings.engine, 20.0))


def _launch_spec(settings: TrialSettings, flags: dict[str, Any], name: str, log_path: Path) -> LaunchSpec:
    return LaunchSpec(
        engine=settings.engine, model=settings.model, flags=flags, gpu_ids=settings.gpu_ids,
        served_model_name=name, log_path=log_path, gpu_type=settings.gpu.card_ref, time_scale=settings.time_scale,
        sim_noise=settings.sim_noise, sim_noise_seed=settings.seed,
        startup_timeout_s=settings.startup_timeout_s, extra_env=dict(settings.extra_env),
        ledger_dir=settings.ledger_dir, sim_fault=settings.sim_fault,
        **({"vllm_cmd": settings.vllm_cmd} if settings.vllm_cmd else {}),
    )


def level_records_name(index: int, concurrency: int) -> str:
    """The file of a level's requests in its server's ``levels`` folder, numbered in the order the levels ran:
    ``NN-cC.jsonl.gz``."""
    return f"{index:02d}-c{concurrency}.jsonl.gz"


def level_records_concurrency(path: Path) -> int:
    """The concurrency of the level whose requests ``path`` holds (:func:`level_records_name`)."""
    return int(path.name.split("-c")[1].split(".")[0])


def _measure_fn(settings: TrialSettings, server: EngineServer | InProcessSim, name: str, records_dir: Path,
                cancel: threading.Event | None = None):
    """Each level on a server gets prompts it has not seen: reusing them would hit vLLM's prefix cache and
    make later levels look faster (seen on the H100). The stream stays deterministic for the seed. Every
    level's requests are kept in ``records_dir`` (``NN-cC.jsonl.gz``). Once ``cancel`` is set no level starts,
    and the level in flight (its server stopped under it) is not kept."""
    used = 0
    levels = 0

    def measure(concurrency: int) -> BenchResult:
        nonlocal used, levels
        if cancel is not None and cancel.is_set():
            raise StopSearch("interrupted")
        cfg = level_load_config(settings, concurrency, records_dir / level_records_name(levels, concurrency))
        levels += 1
        total = cfg.warmup_prompts + cfg.num_prompts
        requests = settings.workload.requests(used + total, start=used)
        used += total
        if isinstance(server, InProcessSim):
            result = server.bench(requests, cfg)
        else:
            meter = HostCpuMeter()
            meter.start()
            try:
                result = run_bench(server.url, name, requests, cfg)
            except ServerUnreachable as e:  # it died or stopped answering between levels
                raise StopSearch(f"{UNREACHABLE}: {e}") from None
            if (host_cpu := meter.stop()) is not None:
                result.extra["host_cpu"] = host_cpu.to_json()
        result.extra["workload"] = {**settings.workload.describe(), "first_request": used - total}
        if cancel is not None and cancel.is_set():
            raise StopSearch("interrupted")
        return result
    return measure


def run_trial(settings: TrialSettings, flags: dict[str, Any], served_name: str, log_path: Path,
              progress: Progress = NULL_PROGRESS, deadline: float | None = None,
              cancel: threading.Event | None = None,
              start_concurrency: Callable[[], int] | None = None) -> TrialResult:
    """Check memory, launch, search the load, tear down. Never raises for engine or load failures.
    ``deadline`` (``time.monotonic()``): no load level starts that would end after it, teardown included.
    ``cancel`` set (the study was interrupted): the search ends with the levels measured so far
    (``stop_reason`` "interrupted"); the caller decides what an interrupted trial is.
    ``start_concurrency``: asked once the server is ready, where the load search starts (in place of the
    settings'): a prediction computed while the engine starts costs the trial no time."""
    plan = plan_memory(settings.model, settings.gpu, flags)
    out = TrialResult(flags=flags, feasible=False, output_tok_s=0.0, concurrency=None,
                      memory=plan.as_dict(), log_path=str(log_path))
    if not plan.fits:
        return replace(out, failure_class=plan.failure_class, failure_reason=plan.reason,
                       stop_reason=MEMORY_PLAN_REFUSED)
    spec = _launch_spec(settings, flags, served_name, log_path)
    started = time.perf_counter()
    server = _engine(settings, spec, progress)
    load_wall_s = 0.0
    failure: tuple[str, str, str] | None = None  # class, reason, log tail
    out = replace(out, vllm_serve_cmd=server.vllm_serve_cmd)
    result: LoadSearchResult | None = None
    held_back = settings.search.max_concurrency < _concurrency_ceiling(flags)  # the study's ceiling, not the engine's
    try:
        try:
            server.start()
        except EngineStartError as e:
            failure = (e.failure_class, str(e), e.log_tail)
        else:
            startup = _as_dict(server.startup)
            out = replace(out, startup=startup)
            engine_ready = time.perf_counter()
            cfg = replace(settings.search,
                          max_concurrency=min(settings.search.max_concurrency, _concurrency_ceiling(flags)))
            if start_concurrency:
                cfg = cfg.starting_at(start_concurrency())
            measure = _measure_fn(settings, server, served_name, log_path.parent / "levels", cancel)
            result = search_load(measure, cfg, progress, deadline,
                                 reserve_s=TEARDOWN_RESERVE_S.get(settings.engine, 30.0))
            load_wall_s = time.perf_counter() - engine_ready
            some_requests_failed = any(lv.result.failed for lv in result.levels)
            if not server.alive() or (some_requests_failed and not server.answers()):
                failure = ("crash", "the server died during the load search", server.log_tail(40))
            elif result.stop_reason.startswith(UNREACHABLE):
                failure = ("crash", result.stop_reason, server.log_tail(40))
    finally:
        server.stop()
        out = replace(out, engine_wall_s=time.perf_counter() - started - load_wall_s, load_wall_s=load_wall_s)
    if result is not None:
        stop_reason = STOPPED_AT_MAX_CONCURRENCY if result.stop_reason == "ceiling" and held_back \
            else result.stop_reason
        out = replace(out, levels=tuple(lv.record() for lv in result.levels), stop_reason=stop_reason)
    if failure:
        return replace(out, failure_class=failure[0], failure_reason=failure[1], log_tail=failure[2])
    assert result is not None
    best = result.best
    if best is None:
        lowest = result.lowest
        out = replace(out, concurrency=lowest.concurrency if lowest else None)
        requests_failed = _requests_failure(lowest.result, settings.search) if lowest else None
        if requests_failed:  # the server answered badly, not slowly: say how, with its log
            return replace(out, failure_class=requests_failed[0], failure_reason=requests_failed[1],
                           log_tail=server.log_tail(40))
        return replace(out, failure_class="no_feasible_load", failure_reason=infeasible_reason(result, settings.search))
    return replace(out, feasible=True, best_metrics=json_safe(best.result.to_json()),
                   output_tok_s=best.result.output_tok_s, concurrency=best.concurrency)


def measure_once(settings: TrialSettings, flags: dict[str, Any], concurrency: int, served_name: str,
                 log_path: Path) -> BenchResult:
    """A fresh server and one load level (re-measurement of a candidate). Raises EngineStartError."""
    with _engine(settings, _launch_spec(settings, flags, served_name, log_path)) as server:
        return _measure_fn(settings, server, served_name, log_path.parent / "levels")(concurrency)


def _requests_failure(level: BenchResult, cfg: LoadSearchConfig) -> tuple[str, str] | None:
    """``requests_<kind>`` and a reason when more of the level's requests failed than a level may lose, by the
    load generator's commonest error kind (timeout, malformed_stream, http_5xx, disconnect, ...); else None."""
    total = level.completed + level.failed
    if not level.errors or level.failed <= cfg.max_error_rate * total:
        return None
    kind = max(level.errors, key=lambda k: level.errors[k])
    example = next((o.error for o in level.outputs if not o.success and o.error_kind == kind), "")
    others = ", ".join(f"{k}: {n}" for k, n in level.errors.items() if k != kind)
    return (f"requests_{kind}", f"{level.failed} of {total} requests failed ({kind}: {level.errors[kind]}, "
            f"e.g. {example}{'; ' + others if others else ''})")


def _concurrency_ceiling(flags: dict[str, Any]) -> int:
    """More concurrent requests than the engine runs at once (max-num-seqs x DP) only queue."""
    max_seqs = int(flags.get("max-num-seqs") or 1024)
    dp = int(flags.get("data-parallel-size") or 1)
    return max(1, max_seqs * dp)


def _as_dict(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if hasattr(obj, "__dataclass_fields__"):
        return {k: getattr(obj, k) for k in obj.__dataclass_fields__}
    return dict(obj)
