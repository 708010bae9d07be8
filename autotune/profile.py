"""The profile: what `run` writes for the winner and `export` reads. YAML, self-describing, reproducible."""
from __future__ import annotations

import datetime as dt
import math
import platform
import shlex
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import yaml

from pydantic import BaseModel, ConfigDict

from autotune import __version__
from autotune.engines.base import StartupInfo
from autotune.fileio import write_text_atomically
from autotune.gpus import visible_gpus
from autotune.hostcpu import winner_notes
from autotune.jsonsafe import json_safe
from autotune.metrics import fmt_ms
from autotune.records import SelectionRecord, TrialRecord
from autotune.selection import Candidate, Selection
from autotune.storage import DEFAULT_STORAGE, redact_url

if TYPE_CHECKING:
    from autotune.study import StudyConfig

__all__ = ["Profile", "ServeLoad", "build_profile", "write_profile", "read_profile", "environment", "PROFILE_VERSION"]

# 9: serve, the load whose P99s stay within the limits in most runs; 8: a gain's finalists_compared; 7: a half_width
# may be null (one run: no interval); 6: study.not_run; 5: metrics.output_tok_s_at_limit with its interval; 4:
# metrics.output_tok_s_at_limit; 3: several P99 limits (objective.limits_ms, metrics.p99)
PROFILE_VERSION = 9


class _Record(BaseModel):
    """A part of the profile: frozen, and unknown keys are an error when a profile is read."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRef(_Record):
    name: str
    hf_id: str | None
    preset: str | None
    architecture: str | None


class Hardware(_Record):
    gpu_type: str
    gpus: int
    engine: str
    gpu_name: str | None = None
    driver: str | None = None
    gpu_memory: str | None = None


class Software(_Record):
    autotune: str
    vllm: str | None
    torch: str | None
    optuna: str
    python: str


class Objective(_Record):
    maximize: str = "output_tok_s"
    limits_ms: dict[str, float]  # by metric (ttft, tpot, itl, e2el): each one's P99 must stay at or under its limit


class ThroughputStats(_Record):
    """Output tok/s over the winner's measurements (re-measurements, else the search's own figure): the
    selection's records.ThroughputRecord, as `best` gives it."""

    mean: float
    std: float
    min: float
    max: float
    n: int
    # of the mean's t interval at ``confidence``, never below the noise floor x mean; None from one run (t with no
    # degrees of freedom bounds nothing)
    half_width: float | None
    confidence: float


class AtLimitStats(ThroughputStats):
    """Output tok/s at the limit: each measurement carried to its own knee along the trial's load curve (what
    the verdict compares; selection.py says how), summarized as `best` gives it, and each run's value."""

    values: list[float | None]


class P99Stats(_Record):
    """One limited metric's P99 over the winner's measurements."""

    mean_ms: float | None
    max_ms: float | None
    values_ms: list[float | None]


class ProfileMetrics(_Record):
    output_tok_s: ThroughputStats  # as measured at the chosen load
    output_tok_s_at_limit: AtLimitStats
    p99: dict[str, P99Stats]  # of each limited metric, by metric
    repeats: int  # fresh-server re-measurements behind the figures (0: the search's figure alone)
    at_chosen_load: dict[str, Any]  # the last measurement's full metrics


class ServeLoad(_Record):
    """Where a deployment keeps each limited P99 within its limit in most runs (``runs_within_limits`` of them), the
    profile's ``concurrency`` being the knee, where a run's P99 lies near its limit: derived from the winner's load
    curve and the run-to-run spread of each P99 (selection.serve_load), not measured at that load."""

    concurrency: int
    runs_within_limits: float
    output_tok_s: float  # expected there
    p99_ms: dict[str, float]  # each limited metric's P99 expected there (the runs' geometric mean, carried), by metric
    p99_run_cv: dict[str, float]  # the run-to-run spread of each limited P99 allowed for (log sd), by metric
    below_searched_loads: bool  # further below the winner's lowest searched load than its search resolves


class Gain(_Record):
    baseline_trial: int
    baseline_output_tok_s: float
    baseline_meets_limit: bool
    gain_output_tok_s: float
    gain_pct: float | None  # None: the baseline met no limit (an infinite gain)
    gain_pct_low: float | None  # the gain's interval at ``confidence``
    gain_pct_high: float | None
    confidence: float
    significant: bool  # the whole interval lies above 0
    finalists_compared: int = 2  # the interval holds jointly over this many finalists' pairwise differences


class NotRunTrial(_Record):
    """A sampled trial whose launch flags an earlier finished trial had: not run again, not a measurement."""

    trial: int
    same_flags_as: int


class StudyRef(_Record):
    name: str
    trial_number: int
    storage: str  # without its password
    trials: int  # finished, measured or failed; not those in not_run
    not_run: list[NotRunTrial] = []


class Profile(_Record):
    """The winner of a study: what `run` writes and `export` reads."""

    autotune_profile: int
    created_at: str
    model: ModelRef
    hardware: Hardware
    software: Software
    workload: dict[str, Any]
    objective: Objective
    flags: dict[str, Any]
    vllm_serve_cmd: str
    concurrency: int
    # a lower load where the P99s stay within the limits in most runs; None where runs do not spread (the noiseless
    # sim), where the winner's load curve does not bring a P99 down to its margin (one level, a flat curve), or
    # before version 9
    serve: ServeLoad | None = None
    stepped_down_from: list[int]  # load levels whose re-measurement broke the limit (a marginal knee)
    # why the winner's load search ended; "deadline" or "max_concurrency": its knee may lie higher
    search_stop_reason: str
    metrics: ProfileMetrics
    gains: dict[str, Gain]
    verdict: str
    equal_within_noise: list[int]  # trials the winner does not beat beyond noise (itself included)
    unconfirmed: list[int]  # finalists cut short before they were measured as the others
    baseline: str | None  # the winner's baseline name when a baseline won
    study: StudyRef
    # what the engine said about the winner that no serve flag changes (untuned kernels); on the sim engine, what it
    # is known to get wrong under the study's limits on this card; the baselines' GPU layout where it is not TP over
    # every GPU (the gains are over those); a winner whose load search met every limit at --max-concurrency
    notes: list[str] = []


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        try:  # vLLM brought in by PYTHONPATH (the device kit) has no dist-info on the path
            module = __import__(package)
            return getattr(module, "__version__", None)
        except Exception:  # noqa: BLE001 - any import failure means: not available
            return None


def environment(engine: str, gpu_type: str, gpus: int) -> tuple[Hardware, Software]:
    """Hardware and software the figures were measured on."""
    hw: dict[str, Any] = {"gpu_type": gpu_type, "gpus": gpus, "engine": engine}
    if engine == "sim":
        hw["gpu_name"] = f"{gpu_type} (simulated by the autotune sim engine)"
    elif gpus := visible_gpus():
        first = gpus[0]
        hw.update(gpu_name=first.name, driver=first.driver,
                  gpu_memory=None if math.isnan(first.memory_gib) else f"{round(first.memory_gib * 1024)} MiB")
    sw = Software(autotune=__version__, vllm=_version("vllm") if engine == "vllm" else None,
                  torch=_version("torch") if engine == "vllm" else None, optuna=optuna.__version__,
                  python=platform.python_version())
    return Hardware(**hw), sw


def _nan_none(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else value


def _p99_stats(winner: Candidate, metric: str) -> P99Stats:
    values = winner.p99_values_ms(metric)
    measured = [v for v in values if not math.isnan(v)]
    return P99Stats(mean_ms=_nan_none(winner.p99_mean_ms(metric)),
                    max_ms=max(measured) if measured else None, values_ms=[_nan_none(v) for v in values])


def build_profile(cfg: StudyConfig, selection: Selection, record: SelectionRecord, winner_trial: TrialRecord,
                  n_trials: int, measured_on: tuple[Hardware, Software] | None = None,
                  not_run: Sequence[TrialRecord] = ()) -> Profile:
    """``record``: what the study stored of ``selection`` (study.selection_record), whose figures and verdict
    `best`, `export` and `compare` read: the profile states the same. ``measured_on``: the study's
    :func:`environment` when the caller has it already (else read here). ``not_run``: the study's trials that were
    not run (records.not_run), which ``n_trials`` leaves out."""
    winner = selection.winner
    assert winner is not None and winner_trial.result is not None and winner.concurrency is not None
    assert record.winner_output_tok_s is not None and record.winner_at_limit_tok_s is not None
    s = cfg.settings
    at_load = winner_trial.result.metrics_at(winner.concurrency, winner.repeats)
    hardware, software = measured_on or environment(s.engine, s.gpu.name, s.gpus)
    return Profile(
        autotune_profile=PROFILE_VERSION,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        model=ModelRef(name=s.model.name, hf_id=s.model.hf_id, preset=cfg.preset, architecture=s.model.architecture),
        hardware=hardware, software=software,
        workload=json_safe(s.workload.describe()),
        objective=Objective(limits_ms=dict(s.search.limits_ms)),
        flags=json_safe(winner.flags), vllm_serve_cmd=winner.vllm_serve_cmd, concurrency=winner.concurrency,
        serve=ServeLoad(**record.winner_serve.to_json()) if record.winner_serve else None,
        stepped_down_from=list(winner.stepped_down_from), search_stop_reason=winner_trial.result.stop_reason,
        metrics=ProfileMetrics(
            output_tok_s=ThroughputStats(**record.winner_output_tok_s.to_json()),
            output_tok_s_at_limit=AtLimitStats(
                **record.winner_at_limit_tok_s.to_json(),
                values=[_nan_none(v) for v in winner.at_limit_tok_s(s.search.limits_ms)]),
            p99={metric: _p99_stats(winner, metric) for metric in s.search.limits_ms},
            repeats=len(winner.repeats), at_chosen_load=json_safe(at_load)),
        gains={name: Gain(**g.to_json()) for name, g in record.gains.items()},
        verdict=record.verdict, equal_within_noise=list(record.equal_within_noise),
        unconfirmed=list(record.unconfirmed), baseline=winner.baseline or None,
        study=StudyRef(name=cfg.study_name, trial_number=winner.trial_number, storage=redact_url(cfg.storage_url),
                       trials=n_trials, not_run=[NotRunTrial(trial=t.number, same_flags_as=t.same_flags_as)
                                                 for t in not_run if t.same_flags_as is not None]),
        notes=(engine_notes(StartupInfo.from_dict(winner_trial.result.startup))
               + winner_notes([lv.host_cpu for lv in winner_trial.result.levels] + [m.host_cpu for m in winner.repeats])
               + s.card_caveats() + s.sim_caveats() + ([layout] if (layout := cfg.baseline_layout_note()) else [])
               + _ceiling_notes(winner_trial) + _over_limit_notes(winner, s.search.limits_ms)),
    )


def _over_limit_notes(winner: Candidate, limits_ms: Mapping[str, float]) -> list[str]:
    """Where the winner's mean P99 at its concurrency is over a limit: it still met the limits because every run's
    knee lies within the search's resolution below that load (selection.Candidate.meets), and its throughput at the
    limit is there. Served at the profile's concurrency it would break the limit."""
    over = [f"P99 {metric} ({fmt_ms(p99)} ms on average over its runs there) is over its {limit:g} ms limit"
            for metric, limit in limits_ms.items() if (p99 := winner.p99_mean_ms(metric)) > limit]
    knees = winner.knee_concurrencies(limits_ms)
    if not over or winner.concurrency is None:
        return []
    where = (f" (concurrency {min(knees):,.0f} to {max(knees):,.0f}, {sum(knees) / len(knees):,.0f} on average)"
             if knees else "")
    return [f"at concurrency {winner.concurrency} the winner's {' and '.join(over)}: it met the limits because each "
            f"run's knee lies within the search's resolution below that load{where}, where its throughput at the "
            f"limit is; serve it below concurrency {winner.concurrency}"]


def _ceiling_notes(winner_trial: TrialRecord) -> list[str]:
    """Where the winner's load search stopped at --max-concurrency with every limit held. The ceiling is the one its
    search ran under, its top level: a resumed run's --max-concurrency (the note's advice) may differ."""
    if winner_trial.result is None or not winner_trial.result.knee_may_lie_higher:
        return []
    max_concurrency = winner_trial.result.top_concurrency
    return [f"every limit held up to --max-concurrency {max_concurrency} in the winner's load search, below what its "
            "engine runs at once: its knee may lie higher, and its throughput at the limit is that at "
            f"{max_concurrency}; run again with a higher --max-concurrency to find it"]


def engine_notes(startup: StartupInfo) -> list[str]:
    """What the winner's server said at start that a user can act on outside the serve flags."""
    notes = []
    if missing := startup.untuned_moe_config:
        notes.append(
            f"vLLM ran the MoE layers on its fused-MoE kernel's default config: no tuned config {missing} ships for "
            "this GPU and shape. Tuning one (vLLM's benchmarks/kernels/benchmark_moe.py --tune, then "
            "VLLM_TUNED_CONFIG_FOLDER) is a lever outside the serve flags; on two H200s, on the default config, "
            "GLM-4.6V's fp8 weights served no more than bf16 at equal load (docs/results/glm-4.6v-h200x2.md).")
    return notes


def write_profile(profile: Profile, path: Path) -> Path:
    """The profile as YAML, after two comment lines saying where a reader of it goes next."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # export opens the default storage unless told the study's (a PostgreSQL one's password stays masked here)
    storage = "" if profile.study.storage == DEFAULT_STORAGE else f" --storage {shlex.quote(profile.study.storage)}"
    serve = profile.serve
    at_serve = (f" (at its serve load, concurrency {serve.concurrency}: add --serve-load)"
                if serve is not None and serve.concurrency < profile.concurrency else "")
    header = (f"# autotune profile of study {profile.study.name!r}. Deploy it: autotune export --study "
              f"{shlex.quote(profile.study.name)}{storage} --to REPO\n# Check a server started from its vllm_serve_cmd: "
              f"autotune bench --url URL --model SERVED_NAME --profile {shlex.quote(str(path))}{at_serve}\n")
    body = yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False, width=120)
    return write_text_atomically(path, header + body)


def read_profile(path: Path) -> Profile:
    return Profile.model_validate(yaml.safe_load(Path(path).read_text()))
