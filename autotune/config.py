"""From what a user asked for (:class:`RunOptions`, filled by the CLI or by code) to one validated
:class:`~autotune.study.StudyConfig`. Every decision about a study's setup lives here, not in the CLI: which
engine runs, which card is modelled, which GPUs a trial gets, the noise floor a verdict assumes.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from autotune.engines.base import vllm_installed
from autotune.errors import UsageError
from autotune.fileio import folder_problem, read_yaml
from autotune.flags import LAUNCHER_FLAGS, PARALLEL_FLAGS, check_flag_value, mm_limit, normalize_flag_name
from autotune.gpu_ids import GpuId, parse_gpu_ids
from autotune.gpus import FALLBACK_CARD, GpuSpec, detect_gpu, gpu_indices, load_gpu, measured_card, visible_gpus
from autotune.loadgen.workload import DEFAULT_WORKLOAD, Workload, parse_workload
from autotune.loadsearch import LoadSearchConfig
from autotune.models import PRESETS, ModelSpec, resolve_model
from autotune.sim.faults import FaultPlan, parse_fault_plan
from autotune.sim.noise import NOISE_MODELS
from autotune.space import SearchSpace, load_space
from autotune.storage import DEFAULT_STORAGE, sqlite_dir
from autotune.study import StudyConfig
from autotune.trial import LevelShape, TrialSettings

__all__ = ["RunOptions", "EngineChoice", "choose_engine", "build_study_config", "study_limits_ms", "worker_options",
           "gpu_layout", "GpuLayout", "check_workload_model", "check_workload_flags", "REAL_GPU_NOISE_FLOOR",
           "DEFAULT_WORKLOAD", "DEFAULT_P99_METRIC", "MAX_CONCURRENCY_PER_GPU"]

# Relative run-to-run noise of throughput that no interval on real GPUs is narrower than: two runs of one
# configuration on two fresh H100s differed by 2.5% in output tok/s; every repeat on the H200 pooled gives a
# coefficient of variation of 2.6% [2.3, 2.8] (docs/results/h200-noise.md, "Fresh servers").
REAL_GPU_NOISE_FLOOR = 0.03
# The run-to-run spread of each P99 at a fixed load on real GPUs (coefficient of variation), vLLM 0.26.0 on the
# H200: pooled over every point measured 2-8 times, the three reproducibility pairs' levels and re-measurements and
# fresh servers at a fourth workload (133 degrees of freedom, 72 for ITL; docs/results/h200-noise.md, "Fresh
# servers"). One run's own interval held the other runs' pooled P99 in 1 of 6 runs for TTFT and 3 of 6 for ITL on
# one server: its state drifts between runs, so a level's interval is never narrower than this.
REAL_GPU_P99_RUN_CV = {"ttft": 0.172, "tpot": 0.040, "itl": 0.086, "e2el": 0.034}
# The metric --p99-ms limits when --p99-metric is not given.
DEFAULT_P99_METRIC = "ttft"
# The default --max-concurrency per GPU of a trial: the space's largest max-num-seqs, which one engine (one DP rank)
# runs at once; more requests only queue.
MAX_CONCURRENCY_PER_GPU = 1024

_Metric = Literal["ttft", "tpot", "itl", "e2el"]


class RunOptions(BaseModel):
    """What `autotune run` takes. Unknown keys are an error."""

    # No option is infinite or NaN: a limit, a count of prompts or a time scale of inf is a typing slip, and the
    # limits are stored as JSON, where they would come back as NaN.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: str
    gpus: int = Field(1, gt=0)
    # The limits (study_limits_ms): --p99-ms on one metric, --slo on several, or both (one more limit each).
    p99_ms: float | None = Field(None, gt=0)
    p99_metric: _Metric | None = None  # the metric p99_ms limits; None: DEFAULT_P99_METRIC
    slo_ms: dict[_Metric, Annotated[float, Field(gt=0)]] | None = None
    engine: Literal["auto", "vllm", "sim"] = "auto"
    gpu_type: str | None = None
    trials: int = Field(20, ge=0)
    timeout_s: float | None = Field(None, gt=0)
    study: str | None = None
    storage: str | None = None
    space: str | None = None
    workload: str = DEFAULT_WORKLOAD
    out: str | None = None
    seed: int = Field(0, ge=0, lt=2**32)  # Optuna's TPE sampler seeds numpy's legacy generator: 32 bits
    top_k: int = Field(3, ge=0)
    repeats: int = Field(1, ge=0)
    max_repeats: int = Field(3, ge=0)  # with --timeout: what time left over may buy (never fewer than repeats)
    patience: int = Field(12, ge=0)
    load_format: str | None = None
    set_flags: tuple[str, ...] = ()  # FLAG=VALUE
    sim_server: bool = False  # the sim engine as an HTTP subprocess per trial, not in-process
    sim_time_scale: float = Field(20.0, gt=0)
    sim_noise: Literal["off", "h200"] = "off"  # run-to-run noise of the in-process sim (sim/noise.py)
    start_concurrency: int | None = Field(None, gt=0)  # None: LoadSearchConfig's, or max_concurrency where lower
    # None: MAX_CONCURRENCY_PER_GPU x gpus, so that data parallelism's engines (max-num-seqs x DP at once) are not
    # held below their knee on several GPUs
    max_concurrency: int | None = Field(None, gt=0)
    prompts_per_level: float = Field(LevelShape.prompts_per_level, gt=0)
    startup_timeout_s: float = Field(900.0, gt=0)
    request_timeout_s: float = Field(600.0, gt=0)
    parallel: int | None = Field(None, gt=0)  # trials at once, at most (default: as many as the GPUs allow)
    # the GPUs this run may use: "0,1,2,3", GPU UUIDs or MIG UUIDs (default: CUDA_VISIBLE_DEVICES, else all)
    gpu_ids: str | None = None
    sim_fault: str | None = None  # FAULT[@TRIAL,...] for the sim server (sim/faults.py)
    try_file: str | None = None
    confidence: float = Field(0.9, gt=0, lt=1)
    max_extensions: int = Field(1, ge=0)  # loadsearch.LoadSearchConfig says why


# What a worker decides for itself when it joins a study (the rest it reads from the study, as its run was asked):
# where the storage is (never stored: it may hold a password), which study, how many trials and for how long, its
# own GPUs, and where its logs go.
_LOCAL_OPTIONS = ("storage", "study", "trials", "timeout_s", "parallel", "gpu_ids", "out", "sim_fault")


def worker_options(stored: Mapping[str, Any] | None, study: str, storage: str, **local: Any) -> RunOptions:
    """The options of a worker joining ``study``: those its run stored, with this worker's own (``local``: any of
    the options a worker sets for itself)."""
    if stored is None:
        raise UsageError(f"study {study!r} was not created by `autotune run` of this version (no run options "
                         "stored): start it with `autotune run ... --storage URL --study NAME` first")
    unknown = sorted(set(local) - set(_LOCAL_OPTIONS))
    if unknown:
        raise UsageError(f"a worker does not set {unknown[0]}: it is the study's")
    given = {k: v for k, v in local.items() if v is not None}
    stored = dict(stored)
    start, ceiling = stored.get("start_concurrency"), stored.get("max_concurrency")
    if isinstance(start, int) and isinstance(ceiling, int) and start > ceiling:
        # stored by an earlier version, which wrote its default start (8) and began the search at the ceiling
        stored["start_concurrency"] = None
    try:
        return RunOptions(**{**stored, "study": study, "storage": storage, **given})
    except pydantic.ValidationError as e:
        first = e.errors()[0]["loc"]
        if first and first[0] in given:
            raise  # the worker's own option, not the study's: the command line names it
        raise UsageError(f"study {study!r} stores options this version cannot read ({str(e).splitlines()[0]})") \
            from None


@dataclass(frozen=True)
class EngineChoice:
    engine: str  # vllm | sim
    notice: str  # why ``auto`` fell back to the sim engine; empty otherwise


def choose_engine(requested: str) -> EngineChoice:
    """auto: the real vLLM when it is installed and a GPU is visible, else the sim engine (with a notice). vllm:
    refused where vLLM is not installed, before a study starts (its every trial would fail to launch)."""
    has_vllm = vllm_installed()
    if requested == "vllm" and not has_vllm:
        raise UsageError("--engine vllm: vLLM is not installed (no `vllm` on PATH, no vllm module for this Python); "
                         "install it (pip install -e '.[vllm]') or use --engine sim")
    if requested != "auto":
        return EngineChoice(requested, "")
    has_gpu = bool(visible_gpus()) or bool(os.environ.get("AUTOTUNE_ASSUME_GPU"))  # any NVIDIA GPU, known or not
    if has_vllm and has_gpu:
        return EngineChoice("vllm", "")
    why = "vLLM is not installed" if not has_vllm else "no NVIDIA GPU is visible"
    return EngineChoice("sim", f"{why}: using the SIM engine (a performance model, not real measurements). "
                               "Pass --engine vllm on a GPU machine.")


@dataclass(frozen=True)
class GpuLayout:
    slots: tuple[tuple[GpuId, ...], ...]  # the GPUs of each trial that may run at once
    idle: tuple[GpuId, ...]  # the run's GPUs that no trial gets


def gpu_layout(gpus: int, parallel: int | None, gpu_ids: str | None, engine: str) -> GpuLayout:
    """The run's GPUs (``--gpu-ids``, else CUDA_VISIBLE_DEVICES, else every GPU nvidia-smi lists) cut into groups of
    ``gpus``, at most ``parallel`` of them, and those left over. Indices, GPU UUIDs or MIG UUIDs, each kept as
    written (:mod:`autotune.gpu_ids`). The sim engine has no GPUs: without ``--gpu-ids`` it is given
    ``gpus x parallel`` made-up indices whatever this machine's GPUs are, so that parallel trials run (and are
    tested) on a CPU exactly as on a GPU machine."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids: tuple[GpuId, ...]
    if gpu_ids is not None:
        ids, source = parse_gpu_ids(gpu_ids, "--gpu-ids"), "--gpu-ids"
    elif visible and engine == "vllm":
        ids, source = parse_gpu_ids(visible, "CUDA_VISIBLE_DEVICES"), "CUDA_VISIBLE_DEVICES"
    elif engine == "vllm":
        ids, source = tuple(gpu_indices() or map(str, range(gpus))), "nvidia-smi"
    else:
        ids, source = tuple(map(str, range(gpus * (parallel or 1)))), "the sim engine"
    if len(ids) < gpus:
        raise UsageError(f"--gpus {gpus} but {source} gives {len(ids)} GPUs ({','.join(ids)})")
    n = len(ids) // gpus if parallel is None else min(parallel, len(ids) // gpus)
    return GpuLayout(tuple(ids[i * gpus:(i + 1) * gpus] for i in range(n)), ids[n * gpus:])


def study_limits_ms(opts: RunOptions) -> dict[str, float]:
    """The study's P99 limits by metric: ``--p99-ms`` on ``--p99-metric`` first, then ``--slo``'s in their order.
    ``--p99-ms`` beside ``--slo`` is one more limit (``--p99-ms 500 --slo itl=50``: TTFT and ITL); a metric given
    a limit twice, a ``--p99-metric`` without ``--p99-ms``, or no limit at all is refused."""
    limits: dict[str, float] = {}
    if opts.p99_ms is not None:
        limits[opts.p99_metric or DEFAULT_P99_METRIC] = opts.p99_ms
    elif opts.p99_metric is not None:
        raise UsageError(f"--p99-metric {opts.p99_metric} needs --p99-ms MS (or give its limit in --slo "
                         f"{opts.p99_metric}=MS)")
    for metric, limit_ms in (opts.slo_ms or {}).items():
        if metric in limits:
            raise UsageError(f"--slo {metric}={limit_ms:g}: P99 {metric} is already limited by --p99-ms "
                             f"{opts.p99_ms:g}; give each metric one limit")
        limits[metric] = limit_ms
    if not limits:
        raise UsageError("no latency limit: give --p99-ms MS [--p99-metric METRIC] or --slo METRIC=MS[,METRIC=MS...] "
                         "(e.g. --slo ttft=500,itl=50)")
    return limits


def default_study_name(model: str, gpus: int, limits_ms: Mapping[str, float]) -> str:
    """``flash-1gpu-p99ttft500ms``; with several limits ``flash-1gpu-p99ttft500ms-itl50ms``."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name if Path(model).exists() else model).strip("-")
    return f"{base}-{gpus}gpu-p99" + "-".join(f"{metric}{limit:g}ms" for metric, limit in limits_ms.items())


def check_workload_model(workload: Workload, model: ModelSpec) -> None:
    """An image workload needs a model with a vision tower, and image sizes its image processor takes: refused here,
    before any server starts (vLLM answers every other request 400, and the study would end with no feasible
    configuration)."""
    images = workload.max_images_per_request
    if images and not model.is_vlm:
        raise UsageError(f"workload {workload.spec!r} sends images, but model {model.name!r} "
                         f"({model.architecture}) has no vision tower; use a text workload or a vision-language model")
    for width, height in workload.image_sizes_px if model.vision else ():
        try:
            model.vision.resized_px(width, height)
        except ValueError as e:  # vLLM answers each such request 400: every level would fail
            raise UsageError(f"workload {workload.spec!r}: the image processor of model {model.name!r} refuses "
                             f"a {width}x{height} image ({e}), and so would vLLM: every request would fail") from None


def check_workload_flags(workload: Workload, flags: Mapping[str, Any], where: str) -> None:
    """limit-mm-per-prompt must let every request of the workload through."""
    images = workload.max_images_per_request
    allowed = mm_limit(flags.get("limit-mm-per-prompt"), "image")
    if images > allowed:
        raise UsageError(f"{where}: limit-mm-per-prompt allows {allowed} image(s) per prompt, the workload "
                         f"{workload.spec!r} sends up to {images}")


def _extra_flags(pairs: tuple[str, ...]) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"--set {pair!r}: expected FLAG=VALUE (e.g. --set load-format=dummy)")
        key, value = pair.split("=", 1)
        name = normalize_flag_name(key)
        if name in LAUNCHER_FLAGS:
            raise UsageError(f"--set {name}: set by the launcher")
        if name in PARALLEL_FLAGS:
            raise UsageError(f"--set {name}: the GPUs' layout follows --gpus and the space's 'parallel' choices")
        if name in flags:
            raise UsageError(f"--set {name}: given twice; give each flag one value")
        flags[name] = check_flag_value(name, value)
    return flags


def _tries(path: str | None, space: SearchSpace, gpus: int) -> tuple[dict[str, Any], ...]:
    """`--try FILE`: one mapping of flags, or a list of them, to queue after the baselines. A point may set
    tensor-parallel-size where the space searches it (data-parallel-size follows as GPUs / TP)."""
    if not path:
        return ()
    data = read_yaml(path, "--try file")
    points = data if isinstance(data, list) else [data]
    out = []
    for point in points:
        if not isinstance(point, dict):
            raise UsageError(f"--try {path}: expected a mapping of vLLM flags or a list of them")
        try:
            flags = {normalize_flag_name(k): check_flag_value(k, v) for k, v in point.items()}
        except UsageError as e:  # say which input holds the bad flag: --set and the space take flags too
            raise UsageError(f"--try {path}: {e}") from None
        if "data-parallel-size" in flags:
            how = ("; give tensor-parallel-size instead" if len(space.tp_choices) > 1
                   else f", here {gpus} / {space.default_tp}")
            raise UsageError(f"--try {path}: data-parallel-size is not set by hand: it follows from --gpus / "
                             f"tensor-parallel-size{how}")
        searched = set(space.params) | ({"tensor-parallel-size"} if len(space.tp_choices) > 1 else set())
        outside = sorted(set(flags) - searched)
        if outside:
            # the sampler learns a trial's result as a function of the space's flags alone: a flag outside them
            # would move one trial's result unseen by it
            raise UsageError(f"--try {path}: {outside[0]} is not searched by the space: --set {outside[0]}=VALUE "
                             "gives it to every trial, or --space FILE searches it")
        tp = flags.get("tensor-parallel-size")
        if tp is not None and tp not in space.tp_choices:
            raise UsageError(f"--try {path}: tensor-parallel-size {tp} is not among the space's choices for these "
                             f"GPUs ({', '.join(map(str, space.tp_choices))})")
        out.append(flags)
    return tuple(out)


def build_study_config(opts: RunOptions, engine: EngineChoice | None = None) -> StudyConfig:
    """Validate every input before anything touches the storage. ``engine``: from :func:`choose_engine`
    (default: chosen here)."""
    limits_ms = study_limits_ms(opts)
    model = resolve_model(opts.model)
    preset = opts.model if opts.model in PRESETS else None
    engine_name = (engine or choose_engine(opts.engine)).engine
    # Token-id prompts: exact lengths on any engine, no tokenizer needed. A trace's times are not used: each
    # load level sets its own concurrency, so its requests are a dataset here (shuffled by the seed, cycled).
    workload = parse_workload(opts.workload, seed=opts.seed).without_times()
    check_workload_model(workload, model)
    space = load_space(opts.space, model, opts.gpus, preset=preset, images_per_request=workload.max_images_per_request)
    extra = _extra_flags(opts.set_flags)
    if opts.load_format:
        extra["load-format"] = check_flag_value("load-format", opts.load_format)
    overlap = set(extra) & set(space.params)
    if overlap:
        raise UsageError(f"--set {sorted(overlap)[0]}: that flag is searched by the space; remove it from one")
    space.fixed = {**space.fixed, **extra}
    check_workload_flags(workload, space.fixed, "--set or the space's fixed flags")
    if opts.sim_noise != "off" and (engine_name != "sim" or opts.sim_server):
        raise UsageError("--sim-noise is for the in-process sim engine (not with --sim-server or a real engine)")
    # A sim with a GPU's noise is judged as a GPU study is: the same P99 widening and throughput noise floor.
    gpu_like = engine_name == "vllm" or opts.sim_noise != "off"
    max_concurrency = opts.max_concurrency or MAX_CONCURRENCY_PER_GPU * opts.gpus
    if opts.start_concurrency is not None and opts.start_concurrency > max_concurrency:
        raise UsageError(f"--start-concurrency {opts.start_concurrency} is above --max-concurrency "
                         f"{max_concurrency}: the load search starts at or below its ceiling")
    start = opts.start_concurrency or min(LoadSearchConfig.start_concurrency, max_concurrency)
    search = LoadSearchConfig(limits_ms=limits_ms, start_concurrency=start,
                              max_concurrency=max_concurrency, confidence=opts.confidence,
                              max_extensions=opts.max_extensions,
                              p99_run_cv=REAL_GPU_P99_RUN_CV if gpu_like else {})
    layout = gpu_layout(opts.gpus, opts.parallel, opts.gpu_ids, engine_name)
    gpu = _card(opts.gpu_type, engine_name, [gpu_id for slot in layout.slots for gpu_id in slot])
    fault = _fault_plan(opts, engine_name)
    storage_url = opts.storage or DEFAULT_STORAGE
    study_name = opts.study or default_study_name(opts.model, opts.gpus, limits_ms)
    out_dir = Path(opts.out) if opts.out else (sqlite_dir(storage_url) or Path("studies"))
    if problem := folder_problem(out_dir / study_name):  # its logs and profile: refused before any trial runs
        option = f"--out {opts.out}: " if opts.out else ""
        raise UsageError(f"{option}cannot create the study's folder {out_dir / study_name} ({problem})"
                         + ("" if opts.out else "; give --out DIR"))
    settings = TrialSettings(
        engine=engine_name, model=model, gpu=gpu, gpus=opts.gpus, workload=workload, search=search,
        gpu_ids=layout.slots[0], time_scale=opts.sim_time_scale if engine_name == "sim" else 1.0,
        startup_timeout_s=opts.startup_timeout_s, level=LevelShape(prompts_per_level=opts.prompts_per_level),
        sim_server=opts.sim_server, sim_noise=NOISE_MODELS[opts.sim_noise], seed=opts.seed,
        request_timeout_s=opts.request_timeout_s, ledger_dir=out_dir / study_name / "servers",
    )
    tries = _tries(opts.try_file, space, opts.gpus)
    for point in tries:
        check_workload_flags(workload, {**space.fixed, **point}, f"--try {opts.try_file}")
    return StudyConfig(
        study_name=study_name, storage_url=storage_url, space=space, settings=settings, preset=preset,
        n_trials=opts.trials, timeout_s=opts.timeout_s, patience=opts.patience, top_k=opts.top_k,
        # the noiseless sim repeats a run's figures exactly: time left over buys nothing there
        repeats=opts.repeats, max_repeats=max(opts.repeats, opts.max_repeats) if gpu_like else opts.repeats,
        noise_floor=REAL_GPU_NOISE_FLOOR if gpu_like else 0.0,
        confidence=opts.confidence, seed=opts.seed,
        out_dir=out_dir, tries=tries, gpu_slots=layout.slots, idle_gpus=layout.idle, sim_fault=fault,
        run_options=opts.model_dump(exclude=set(_LOCAL_OPTIONS)),
    )


def _card(gpu_type: str | None, engine: str, gpu_ids: list[GpuId]) -> GpuSpec:
    """``--gpu-type``'s card; else on vLLM the run's GPUs as this machine has them (their memory sets which points
    can start: a GPU no built-in card describes gets its own, gpus.measured_card), else the h100 card."""
    if gpu_type:
        return load_gpu(gpu_type)
    if engine == "vllm":
        measured = measured_card(gpu_ids)
        if measured is not None:
            return measured
        return load_gpu(detect_gpu() or FALLBACK_CARD)  # MIG slices, or no nvidia-smi to ask
    return load_gpu(FALLBACK_CARD)


def _fault_plan(opts: RunOptions, engine: str) -> FaultPlan | None:
    if not opts.sim_fault:
        return None
    if engine != "sim" or not opts.sim_server:
        raise UsageError("--sim-fault needs --engine sim and --sim-server: faults are made by the sim server process")
    try:
        return parse_fault_plan(opts.sim_fault)
    except ValueError as e:
        raise UsageError(f"--sim-fault {e}") from None
