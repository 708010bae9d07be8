"""The profile: what `run` writes for the winner and `export` reads. YAML, self-describing, reproducible."""
from __future__ import annotations

import datetime as dt
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna
import yaml

from autotune import __version__
from autotune.jsonsafe import json_safe
from autotune.selection import Selection
from autotune.storage import redact_url

__all__ = ["build_profile", "write_profile", "read_profile", "fingerprint", "PROFILE_VERSION"]

PROFILE_VERSION = 1


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        try:  # vLLM brought in by PYTHONPATH (the device kit) has no dist-info on the path
            module = __import__(package)
            return getattr(module, "__version__", None)
        except Exception:  # noqa: BLE001 - any import failure means: not available
            return None


def fingerprint(engine: str, gpu_type: str, gpus: int) -> dict[str, Any]:
    """Hardware and software the figures were measured on."""
    hw: dict[str, Any] = {"gpu_type": gpu_type, "gpus": gpus, "engine": engine}
    if engine == "sim":
        hw["gpu_name"] = f"{gpu_type} (simulated by the autotune sim engine)"
    elif shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
            if out:
                name, driver, mem = [x.strip() for x in out[0].split(",")]
                hw.update(gpu_name=name, driver=driver, gpu_memory=mem)
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    sw = {"autotune": __version__, "vllm": _version("vllm") if engine == "vllm" else None,
          "torch": _version("torch") if engine == "vllm" else None,
          "optuna": optuna.__version__, "python": platform.python_version()}
    return {"hardware": hw, "software": sw}


def _search_metrics(attrs: dict[str, Any], concurrency: int | None) -> dict[str, Any]:
    """The search's figures at ``concurrency``: the trial's full metrics at its best level, else (a level that
    a re-measurement stepped down to, never re-measured) that level's summary in the same shape."""
    if concurrency == attrs.get("concurrency"):
        return attrs.get("best_metrics") or {}
    for lv in attrs.get("levels") or []:
        if lv.get("concurrency") == concurrency:
            return {"concurrency": concurrency, **{k: lv.get(k) for k in ("output_tok_s", "total_tok_s", "request_s",
                                                                          "completed", "failed")},
                    **{f"{m}_ms": {"p99": lv.get(f"p99_{m}_ms")} for m in ("ttft", "tpot", "itl", "e2el")}}
    return {}


def build_profile(study: optuna.Study, cfg: Any, selection: Selection) -> dict[str, Any]:
    winner = selection.winner
    assert winner is not None
    s = cfg.settings
    stats = winner.stats(cfg.noise_floor)
    last = winner.repeats[-1].metrics if winner.repeats else None
    if not last:
        last = _search_metrics(study.trials[winner.trial_number].user_attrs, winner.concurrency)
    p99 = [m.p99_ms for m in winner.measurements()]
    fp = fingerprint(s.engine, s.gpu.name, s.gpus)
    profile = {
        "autotune_profile": PROFILE_VERSION,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": s.model.name, "hf_id": s.model.hf_id, "preset": cfg.preset,
                  "architecture": s.model.architecture},
        **fp,
        "workload": s.workload.describe(),
        "objective": {"maximize": "output_tok_s", "metric": s.search.metric,
                      f"p99_{s.search.metric}_limit_ms": s.search.limit_ms, "limit_ms": s.search.limit_ms},
        "flags": winner.flags,
        "vllm_serve_cmd": winner.vllm_serve_cmd,
        "concurrency": winner.concurrency,
        # load levels whose re-measurement broke the limit (the search's knee was marginal there)
        "stepped_down_from": winner.stepped_down_from,
        # why the winner's load search ended; "deadline": cut by --timeout, its knee may lie higher
        "search_stop_reason": study.trials[winner.trial_number].user_attrs.get("stop_reason", ""),
        "metrics": {
            "output_tok_s": stats,
            f"p99_{s.search.metric}_ms": {"mean": stats["p99_mean_ms"], "max": stats["p99_max_ms"], "values": p99},
            "repeats": len(winner.repeats),
            "at_chosen_load": last,
        },
        "gains": selection.gains,
        "verdict": selection.verdict,
        "baseline": winner.baseline or None,
        "study": {"name": cfg.study_name, "trial_number": winner.trial_number,
                  "storage": redact_url(cfg.storage_url), "trials": len(study.trials)},
    }
    return json_safe(profile)


def write_profile(profile: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(profile, sort_keys=False, width=120))
    tmp.replace(path)
    return path


def read_profile(path: Path) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())
