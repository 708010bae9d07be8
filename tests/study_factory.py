"""Studies as `autotune run` stores them, made in milliseconds for the readers' tests (export, compare, the
dashboard): trials with load levels, the baselines, re-measurements, the selection and a run record, all written
through :mod:`autotune.records` and chosen by the study's own code (candidates, Welch's verdict). Figures come
from a seeded generator: tests compare what the readers show with what the records hold, never with constants."""
from __future__ import annotations

import random
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from autotune import records
from autotune.engines.base import vllm_serve_cmd
from autotune.records import LevelRecord, Measurement, P99Record, RunRecord, StudyFingerprint, TrialResult
from autotune.selection import select_winner
from autotune.study import SEED_PROFILE, candidates_from_study, selection_record

MODEL = "zai-org/GLM-4.6V-Flash"
DISTRIBUTIONS = {"max-num-seqs": IntDistribution(128, 1024, step=128),
                 "kv-cache-dtype": CategoricalDistribution(["auto", "fp8"]),
                 "gpu-memory-utilization": FloatDistribution(0.85, 0.95, step=0.05),
                 "enable-prefix-caching": CategoricalDistribution([True, False])}
CONCURRENCIES = (8, 16, 32, 64, 128, 256)


def _levels(rng: random.Random, limits_ms: dict[str, float], over: bool) -> tuple[LevelRecord, ...]:
    """A load search's levels: throughput saturating with concurrency, every P99 growing with it (``over``: from
    above the limits at the lowest level)."""
    peak = rng.uniform(6000, 11000)
    knee = rng.uniform(20, 90)
    tightness = rng.uniform(0.3, 0.8)
    base = {"ttft": rng.uniform(60, 140), "tpot": rng.uniform(8, 14), "itl": rng.uniform(8, 14),
            "e2el": rng.uniform(3000, 6000)}
    if over:
        base.update({m: limit * rng.uniform(1.2, 2.0) for m, limit in limits_ms.items()})
    levels = []
    for c in CONCURRENCIES:
        p99 = {m: v * (1 + tightness * c / knee) for m, v in base.items()}
        feasible = all(p99[m] <= limit for m, limit in limits_ms.items())
        tput = peak * c / (c + knee)
        levels.append(LevelRecord(
            concurrency=c, output_tok_s=tput, total_tok_s=3 * tput, request_s=tput / 512,
            p99={m: P99Record(p99[m], 0.9 * p99[m], 1.1 * p99[m], p99[m]) for m in limits_ms}, runs=1,
            feasible=feasible, p99_ttft_ms=p99["ttft"], p99_tpot_ms=p99["tpot"], p99_itl_ms=p99["itl"],
            p99_e2el_ms=p99["e2el"], completed=3 * c, failed=0, duration_s=30.0, wall_s=40.0, status="ok"))
        if not feasible:
            break
    return tuple(levels)


def _result(flags: dict[str, Any], levels: tuple[LevelRecord, ...], model: str) -> TrialResult:
    feasible = [lv for lv in levels if lv.feasible]
    chosen = feasible[-1] if feasible else levels[0]
    return TrialResult(flags=flags, feasible=bool(feasible), output_tok_s=chosen.output_tok_s if feasible else 0.0,
                       concurrency=chosen.concurrency, best_metrics=chosen.metrics(), levels=levels,
                       failure_class="" if feasible else "no_feasible_load",
                       vllm_serve_cmd=vllm_serve_cmd(model, flags), engine_wall_s=120.0, load_wall_s=240.0,
                       trial_wall_s=360.0, stop_reason="limit")


def throwaway_storage(sqlite_url: str) -> optuna.storages.RDBStorage:
    """An Optuna storage in a SQLite file that is thrown away after the tests: no fsync per trial (4x faster to
    build)."""
    from sqlalchemy import event

    storage = optuna.storages.RDBStorage(sqlite_url)
    storage.engine.dispose()

    @event.listens_for(storage.engine, "connect")
    def _unsynced(connection, _record) -> None:
        connection.execute("PRAGMA synchronous=OFF")

    return storage


def make_study(storage: optuna.storages.BaseStorage | str, name: str, *, limits_ms: dict[str, float] | None = None,
               gpus: int = 1, engine: str = "vllm", n_trials: int = 8, seed: int = 0, feasible: bool = True,
               select: bool = True, extra_flags: dict[str, Any] | None = None,
               workload: str = "random:1024:512:0.5", preset: str = "flash", model: str = MODEL,
               parallel: dict[str, Any] | None = None) -> optuna.Study:
    """A finished study: baselines first, ``n_trials`` in all (one of them an OOM), re-measured finalists and the
    selection (``select``); ``feasible=False``: no level of any trial meets the limits. Every trial runs
    ``parallel``, the GPUs' layout (default: TP over all of them)."""
    limits_ms = dict(limits_ms or {"ttft": 500.0})
    rng = random.Random(f"{name}-{seed}")
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    records.check_fingerprint(study, StudyFingerprint(
        model=preset, gpus=gpus, limits_ms=limits_ms, workload={"spec": workload, "seed": 0},
        engine=engine, gpu_type="h100", preset=preset, space=f"{preset}.yaml", weight_dtype="bfloat16"))
    tp = dict(parallel) if parallel is not None else {"tensor-parallel-size": gpus} if gpus > 1 else {}
    for number in range(n_trials):
        baseline = {0: "vllm-defaults", 1: "seed-profile"}.get(number, "")
        params = {"max-num-seqs": rng.randrange(128, 1025, 128), "kv-cache-dtype": rng.choice(["auto", "fp8"]),
                  "gpu-memory-utilization": rng.choice([0.85, 0.9, 0.95]),
                  "enable-prefix-caching": rng.choice([True, False])}
        flags = {**tp, **params, **(extra_flags or {})}
        if baseline == "vllm-defaults":
            flags = {**tp, **(extra_flags or {})}
        elif baseline == "seed-profile":
            flags = {**tp, **SEED_PROFILE, **(extra_flags or {})}
        if number == n_trials - 1 and n_trials > 3:  # one configuration does not start
            result = TrialResult(flags=flags, feasible=False, output_tok_s=0.0, concurrency=None,
                                 failure_class="oom", failure_reason="CUDA out of memory",
                                 vllm_serve_cmd=vllm_serve_cmd(model, flags))
        else:
            result = _result(flags, _levels(rng, limits_ms, over=not feasible), model)
        attrs = {**records.queue_attrs(baseline=baseline), "result": result.to_json()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=DISTRIBUTIONS,
                                                  value=result.output_tok_s, user_attrs=attrs))
    if select:
        _select(study, limits_ms, rng)
    records.write_run(study, RunRecord(
        started_at=f"2026-03-0{1 + seed % 9}T10:00:00+00:00", finished_at=f"2026-03-0{1 + seed % 9}T12:30:00+00:00",
        wall_s=9000.0, gpus=gpus, trials_run=n_trials, stopped_by="trials", engine=engine,
        gpu_name="NVIDIA H100 80GB HBM3" if engine == "vllm" else "h100 (simulated by the autotune sim engine)",
        vllm_version="0.26.0" if engine == "vllm" else None, autotune_version="0.1.0", made_selection=select))
    return study


def _select(study: optuna.Study, limits_ms: dict[str, float], rng: random.Random) -> None:
    """The study's own re-measurement stage with made-up fresh-server figures: two repeats per finalist, near
    what its trial measured."""
    candidates = candidates_from_study(records.read_trials(study), top_k=2)
    for cand in candidates:
        if cand.concurrency is None:
            continue
        cand.repeats = [Measurement(cand.search_output_tok_s * rng.uniform(0.97, 1.03),
                                    {m: p * rng.uniform(0.95, 1.02) for m, p in cand.search_p99_ms.items()})
                        for _ in range(2)]
        records.write_remeasurement(study, cand.remeasurement())
    selection = select_winner(candidates, limits_ms, repeats=2, noise_floor=0.03, confidence=0.9)
    records.write_selection(study, selection_record(selection, limits_ms, 0.03, 0.9, {}))

