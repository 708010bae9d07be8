"""Search spaces: YAML files of vLLM flags to search, validated, and sampled into an Optuna trial.

    params:                       # searched flags, vLLM spelling
      max-num-seqs: {type: int, low: 64, high: 1024, log: true}
      kv-cache-dtype: {type: categorical, choices: [auto, fp8]}
      mm-encoder-tp-mode: {type: categorical, choices: [weights, data], when: [vlm, tp>1]}
      limit-mm-per-prompt: {type: categorical, choices: [null, {image: 4, video: 0}], when: [vlm, images]}
    fixed: {enable-chunked-prefill: true}
    parallel: {tensor-parallel-size: [1, 2, 4]}   # data-parallel-size = GPUs / TP

Conditions (``when``) are all of: ``vlm`` (the model has a vision tower), ``moe``, ``tp>1``, ``gpus>1`` (the
engine spans several GPUs, by TP or DP: where expert parallelism spreads the experts), ``images`` (the workload
sends images). A JSON-object flag's choices are mappings (Optuna sees each as its canonical JSON text);
a limit-mm-per-prompt choice that allows fewer images than the workload's requests carry is dropped. Only
restart-requiring knobs belong here; the load level is searched on the live server, not by Optuna.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import optuna
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from autotune.errors import UsageError
from autotune.fileio import read_yaml
from autotune.flags import (LAUNCHER_FLAGS, PARALLEL_FLAGS, VLLM_FLAGS, check_flag_value, mm_limit,
                            normalize_flag_name)
from autotune.models import ModelSpec

__all__ = ["SearchSpace", "ParamSpec", "load_space", "default_space_path", "CONDITIONS"]

CONDITIONS = ("vlm", "moe", "tp>1", "gpus>1", "images")


class ParamSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: list[Any] | None = None
    when: list[str] = []

    @field_validator("when")
    @classmethod
    def _known_conditions(cls, value: list[str]) -> list[str]:
        bad = [c for c in value if c not in CONDITIONS]
        if bad:
            raise ValueError(f"unknown condition {bad[0]!r} (known: {', '.join(CONDITIONS)})")
        return value

    @model_validator(mode="after")
    def _shape(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None:
                raise ValueError("categorical takes 'choices', not low/high")
        else:
            if self.low is None or self.high is None:
                raise ValueError(f"{self.type} needs 'low' and 'high'")
            if self.low > self.high:
                raise ValueError(f"low ({self.low}) > high ({self.high})")
            if self.log and self.low <= 0:
                raise ValueError("log scale needs low > 0")
            if self.log and self.step is not None:
                raise ValueError("log scale and step cannot be combined")
            if self.step is not None and self.step <= 0:
                raise ValueError("step must be positive")
            if self.type == "int" and any(v is not None and not float(v).is_integer()
                                          for v in (self.low, self.high, self.step)):
                raise ValueError("int needs whole numbers for low, high and step")
        return self

    def optuna_choices(self) -> list[Any]:
        """The choices as Optuna stores them: a mapping as its canonical JSON text (Optuna takes scalars only)."""
        return [_encode_choice(c) for c in self.choices or []]

    def flag_value(self, suggested: Any) -> Any:
        """The flag value of a choice Optuna suggested (:meth:`optuna_choices`)."""
        for choice in self.choices or []:
            if _encode_choice(choice) == suggested:
                return choice
        return suggested

    def domain_values(self) -> list[Any]:
        """Every value the parameter can take when the space is finite (for grids); else raises."""
        if self.type == "categorical":
            return list(self.choices or [])
        if self.type == "int" and not self.log:
            step = int(self.step or 1)
            return list(range(int(self.low), int(self.high) + 1, step))  # type: ignore[arg-type]
        if self.type == "float" and self.step is not None:
            n = int(round((self.high - self.low) / self.step))  # type: ignore[operator]
            return [round(self.low + i * self.step, 10) for i in range(n + 1)]  # type: ignore[operator]
        raise UsageError("a log-scale or continuous parameter has no finite grid")


class _SpaceFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = ""
    params: dict[str, ParamSpec] = {}
    fixed: dict[str, Any] = {}
    parallel: dict[str, list[int]] = {}


class SearchSpace:
    """A validated space bound to a model and a GPU count."""

    def __init__(self, params: dict[str, ParamSpec], fixed: dict[str, Any], tp_choices: list[int],
                 source: str, description: str = "", images_per_request: int = 0) -> None:
        self.params = params
        self.fixed = fixed
        self.tp_choices = tp_choices
        self.source = source
        self.description = description
        self.images_per_request = images_per_request  # the most images one of the workload's requests carries

    def conditions_hold(self, when: list[str], model: ModelSpec, tp: int, gpus: int) -> bool:
        facts = {"vlm": model.is_vlm, "moe": model.is_moe, "tp>1": tp > 1, "gpus>1": gpus > 1,
                 "images": self.images_per_request > 0}
        return all(facts[c] for c in when)

    def sample(self, trial: optuna.trial.BaseTrial, model: ModelSpec, gpus: int) -> dict[str, Any]:
        """Suggest every active parameter on ``trial``; returns the full flag dict (fixed included)."""
        tp = self.default_tp
        if len(self.tp_choices) > 1:
            tp = int(trial.suggest_categorical("tensor-parallel-size", self.tp_choices))
        flags: dict[str, Any] = {**self.fixed, **_parallel_flags(tp, gpus)}
        for name, spec in self.params.items():
            if not self.conditions_hold(spec.when, model, tp, gpus):
                continue
            if spec.type == "categorical":
                flags[name] = spec.flag_value(trial.suggest_categorical(name, spec.optuna_choices()))
            elif spec.type == "int":
                flags[name] = trial.suggest_int(name, int(spec.low), int(spec.high),  # type: ignore[arg-type]
                                                step=int(spec.step or 1), log=spec.log)
            else:
                flags[name] = trial.suggest_float(name, float(spec.low), float(spec.high),  # type: ignore[arg-type]
                                                  step=spec.step, log=spec.log)
        return flags

    @property
    def default_tp(self) -> int:
        """The tensor-parallel size of a point that does not set one."""
        return self.tp_choices[0] if self.tp_choices else 1

    def try_flags(self, point: dict[str, Any], gpus: int) -> dict[str, Any]:
        """The flags a ``--try`` point runs with: the space's fixed flags, the parallel layout of its TP (else
        :attr:`default_tp`) over the GPUs, and the point's own flags exactly as given, inside the space or not.
        A searched flag the point leaves out is not set: vLLM takes its own default."""
        tp = int(point.get("tensor-parallel-size", self.default_tp))
        return {**self.fixed, **_parallel_flags(tp, gpus), **point}

    def params_for(self, flags: dict[str, Any], model: ModelSpec, gpus: int) -> dict[str, Any]:
        """Optuna params (for enqueue_trial) that reproduce ``flags`` as closely as the space can: flags outside
        the space are dropped, searched flags missing from ``flags`` take vLLM's default, and a value the space
        does not hold (a baseline's default outside a user's choices) is projected onto it, the nearest value of
        a number, else left to the sampler. A baseline still runs its own flags; the projection is only what the
        sampler learns it as."""
        out: dict[str, Any] = {}
        tp = int(flags.get("tensor-parallel-size", self.default_tp))
        if len(self.tp_choices) > 1:
            out["tensor-parallel-size"] = tp if tp in self.tp_choices else min(self.tp_choices,
                                                                                key=lambda c: abs(c - tp))
        for name, spec in self.params.items():
            if not self.conditions_hold(spec.when, model, tp, gpus):
                continue
            value = _project(spec, _encode_choice(flags.get(name, VLLM_FLAGS[name].default)))
            if value is not _NOT_HELD:
                out[name] = value
        return out

    def grid(self, model: ModelSpec, gpus: int) -> list[dict[str, Any]]:
        """Every point of a finite space (TP choices expanded, conditions applied)."""
        import itertools

        points: list[dict[str, Any]] = []
        for tp in self.tp_choices or [1]:
            active = [(n, s.domain_values()) for n, s in self.params.items() if self.conditions_hold(s.when, model, tp, gpus)]
            for combo in itertools.product(*(vals for _, vals in active)):
                params = dict(zip([n for n, _ in active], combo))
                if len(self.tp_choices) > 1:
                    params["tensor-parallel-size"] = tp
                points.append(params)
        return points


def default_space_path(preset: str) -> Path | None:
    files = resources.files("autotune.search_spaces")
    candidate = files.joinpath(f"{preset}.yaml")
    return Path(str(candidate)) if candidate.is_file() else None


def load_space(path: str | Path | None, model: ModelSpec, gpus: int, preset: str | None = None,
               images_per_request: int = 0) -> SearchSpace:
    """Read and validate a space file (default: the preset's, else ``generic.yaml``), bound to a model, a GPU
    count and the most images a request of the workload carries."""
    if path is None:
        path = default_space_path(preset or "") or default_space_path("generic")
    path = Path(path)
    raw = read_yaml(path, "search space")
    if not isinstance(raw, dict):
        raise UsageError(f"search space {path}: expected a mapping with 'params'")
    try:
        parsed = _SpaceFile.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise UsageError(f"search space {path}: {where}: {err['msg']}") from None
    params: dict[str, ParamSpec] = {}
    for name, spec in parsed.params.items():
        key = _flag(name, path)
        if spec.type != "categorical":
            _check_range_flag(key, spec, path)
        for value in (spec.choices or []) + [v for v in (spec.low, spec.high) if v is not None]:
            _value(key, value, path)
        if key == "limit-mm-per-prompt" and images_per_request and spec.choices:
            spec = _admitting(spec, images_per_request, path)
        params[key] = spec
    fixed = {(k := _flag(name, path)): _value(k, value, path) for name, value in parsed.fixed.items()}
    overlap = set(params) & set(fixed)
    if overlap:
        raise UsageError(f"search space {path}: {sorted(overlap)[0]} is both searched and fixed")
    tp_choices = [int(v) for v in parsed.parallel.get("tensor-parallel-size", [])]
    extra = set(parsed.parallel) - {"tensor-parallel-size"}
    if extra:
        raise UsageError(f"search space {path}: parallel.{sorted(extra)[0]}: only tensor-parallel-size is searched "
                         "(data-parallel-size follows as GPUs / TP)")
    # without choices: an MoE over every GPU by TP where its heads split so (else TP x DP, as the baselines), a dense
    # model one replica per GPU
    tp_choices = ([tp for tp in tp_choices if gpus % tp == 0] if tp_choices
                  else [model.largest_tensor_parallel_size(gpus) if model.is_moe else 1])
    if not tp_choices:
        raise UsageError(f"search space {path}: no tensor-parallel-size choice divides --gpus {gpus}")
    problems = {tp: model.tensor_parallel_problem(tp) for tp in tp_choices}
    if all(problems.values()):
        raise UsageError(f"search space {path} on --gpus {gpus}: {problems[tp_choices[-1]]}")
    tp_choices = [tp for tp in tp_choices if not problems[tp]]
    if any(k in PARALLEL_FLAGS for k in list(params) + list(fixed)):
        raise UsageError(f"search space {path}: set parallelism under 'parallel', not as a flag")
    return SearchSpace(params, fixed, tp_choices, source=str(path), description=parsed.description,
                       images_per_request=images_per_request)


def _parallel_flags(tp: int, gpus: int) -> dict[str, Any]:
    """TP over ``tp`` GPUs and data parallelism over the rest; nothing where one GPU runs the engine."""
    flags: dict[str, Any] = {}
    if gpus > 1 or tp > 1:
        flags["tensor-parallel-size"] = tp
        if gpus // tp > 1:
            flags["data-parallel-size"] = gpus // tp
    return flags


_NOT_HELD = object()  # a value a parameter cannot take, and no nearest one: left to the sampler


def _project(spec: ParamSpec, value: Any) -> Any:
    """``value`` where ``spec`` holds it; else the nearest value it holds for a number; else ``_NOT_HELD``."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if spec.type == "categorical":
        choices = [_encode_choice(c) for c in spec.choices or []]  # a mapping is held as its JSON text
        if value in choices:
            return value
        numbers = [c for c in choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        return min(numbers, key=lambda c: abs(c - value)) if numeric and numbers else _NOT_HELD
    if not numeric:
        return _NOT_HELD
    try:
        values = spec.domain_values()
    except UsageError:  # continuous or log-scale: clip to the range
        return min(max(value, spec.low), spec.high)  # type: ignore[type-var]
    return value if value in values else min(values, key=lambda c: abs(c - value))


def _encode_choice(value: Any) -> Any:
    return json.dumps(value, sort_keys=True, separators=(",", ":")) if isinstance(value, dict) else value


def _admitting(spec: ParamSpec, images: int, path: Path) -> ParamSpec:
    """The limit-mm-per-prompt choices that let a request carry ``images`` images."""
    kept = [c for c in spec.choices or [] if mm_limit(c, "image") >= images]
    if not kept:
        raise UsageError(f"search space {path}: no limit-mm-per-prompt choice allows the workload's {images} "
                         "images per request")
    return spec.model_copy(update={"choices": kept})


def _flag(name: str, path: Path) -> str:
    try:
        key = normalize_flag_name(name)
    except UsageError:
        raise UsageError(f"search space {path}: unknown vLLM flag {name!r}") from None
    if key in LAUNCHER_FLAGS:
        raise UsageError(f"search space {path}: {key} is set by the launcher, not the search space")
    return key


def _check_range_flag(key: str, spec: ParamSpec, path: Path) -> None:
    """A range (int, float) suits only a number flag that takes any number of its kind: its ends passing the flag's
    check says nothing of the values between them, which every trial would then launch and vLLM refuse."""
    flag = VLLM_FLAGS[key]
    if flag.choices:
        raise UsageError(f"search space {path}: {key} takes one of {', '.join(map(str, flag.choices))}: "
                         "give them as type: categorical, not a range")
    if flag.type not in (int, float) or (spec.type == "float" and flag.type is int):
        raise UsageError(f"search space {path}: {key} takes {flag.type.__name__} values, not a range of type "
                         f"{spec.type}" + (" (use type: int)" if flag.type is int else ""))


def _value(key: str, value: Any, path: Path) -> Any:
    try:
        return check_flag_value(key, value)
    except UsageError as e:
        raise UsageError(f"search space {path}: {e}") from None
