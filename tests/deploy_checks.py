"""How the runtimes read an exported file, for the export tests: vLLM's ``--config`` rules and the
production-stack chart's container arguments, each as its source documents it, ending in the sim engine's
``vllm serve`` parser (autotune.sim.args: vLLM's spelling of every flag autotune knows, ``--no-`` forms of the
booleans, unknown flags refused).

- ``vllm serve --config FILE`` (vllm/utils/argparse_utils.py, FlexibleArgumentParser.load_config_file and
  _pull_args_from_config, read at vllm-project/vllm 00da11e): the extension must be yaml or yml; each key is
  a long option name and becomes ``--key``; true -> ``--key``; false is dropped (0.26.0 as released, seen on
  an H200: refused here, the export writes ``no-key: true``); a list -> ``--key`` and its
  items; a mapping -> JSON; anything else -> ``str(value)``; a ``model`` key gives the model when the command
  line has none.
- the production-stack chart (helm/templates/deployment-vllm-multi.yaml at vllm-project/production-stack
  6d98f83): ``vllm serve MODEL_URL --host 0.0.0.0 --port PORT``, then ``vllmConfig``'s typed keys in the
  template's order (``enableChunkedPrefill`` when present; ``enablePrefixCaching``, absent meaning
  ``--no-enable-prefix-caching``; ``maxModelLen``, ``dtype``, ``tensorParallelSize``, ``maxNumSeqs``,
  ``gpuMemoryUtilization`` spelt ``--gpu_memory_utilization``), then ``extraArgs``; an emptyDir in memory at
  ``/dev/shm`` (``shmSize``, default 20Gi) only where ``vllmConfig`` has the key ``tensorParallelSize``; the pod's
  ``nvidia.com/gpu`` is ``requestGPU`` (read at vllm-project/production-stack a6c01db, helm/templates/_helpers.tpl
  ``chart.resources``).
- KServe's huggingface runtime (python/huggingfaceserver/huggingfaceserver/vllm/vllm_model.py at kserve/kserve
  aaac4e2): ``start_engine`` sets ``tensor_parallel_size = torch.cuda.device_count()`` whatever the arguments say.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from autotune.sim.args import parse_serve_args


class NotAccepted(AssertionError):
    """The file breaks a rule of the runtime that reads it."""


def vllm_config_argv(path: Path) -> list[str]:
    """The arguments ``vllm serve --config PATH`` inserts before the command line's own."""
    if path.suffix not in (".yaml", ".yml"):
        raise NotAccepted(f"Config file must be of a yaml/yml type. {path.suffix} supplied")
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict):
        raise NotAccepted("a vLLM config file is a mapping of option names to values")
    argv: list[str] = []
    for key, value in config.items():
        if not isinstance(key, str) or key.startswith("-") or len(key) < 3:
            raise NotAccepted(f"{key!r}: keys are long option names without their dashes")
        if value is None:  # str(None): vLLM would be given the word None
            raise NotAccepted(f"{key}: null")
        if isinstance(value, bool):  # vLLM 0.26 drops a false one: it would not turn the flag off
            if not value:
                raise NotAccepted(f"{key}: false is dropped by vLLM's config reader; write no-{key}: true")
            argv.append(f"--{key}")
        elif isinstance(value, list):
            argv += [f"--{key}", *map(str, value)] if value else []
        elif isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def serve_flags(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """(MODEL, flags) of ``vllm serve`` arguments; the model may come as ``--model X``. Unknown or malformed flags
    fail the way vLLM's parser does (argparse's exit 2), as NotAccepted."""
    argv = list(argv)
    if "--model" in argv:
        i = argv.index("--model")
        model = argv[i + 1]
        argv = [model, *argv[:i], *argv[i + 2:]]
    try:
        parsed = parse_serve_args(argv)
    except SystemExit as e:
        raise NotAccepted(f"vllm serve refuses {argv!r} (exit {e.code})") from None
    return parsed.model, dict(parsed.flags)


def helm_container_args(values: dict[str, Any]) -> list[list[str]]:
    """Each modelSpec's container command after ``vllm serve``, as the chart's template renders it."""
    engine = values["servingEngineSpec"]
    port = str(engine.get("containerPort", 8000))
    commands = []
    for spec in engine["modelSpec"]:
        args = [spec["modelURL"], "--host", "0.0.0.0", "--port", port]
        cfg = spec.get("vllmConfig")
        if cfg is not None:
            if "enableChunkedPrefill" in cfg:
                args.append("--enable-chunked-prefill" if cfg["enableChunkedPrefill"]
                            else "--no-enable-chunked-prefill")
            args.append("--enable-prefix-caching" if cfg.get("enablePrefixCaching") else "--no-enable-prefix-caching")
            for key, flag in (("maxModelLen", "--max-model-len"), ("dtype", "--dtype"),
                              ("tensorParallelSize", "--tensor-parallel-size"), ("maxNumSeqs", "--max-num-seqs"),
                              ("gpuMemoryUtilization", "--gpu_memory_utilization")):
                if key in cfg:
                    args += [flag, str(cfg[key])]
            args += [str(a) for a in cfg.get("extraArgs") or []]
        commands.append(args)
    return commands


def helm_shm_size(values: dict[str, Any]) -> list[str | None]:
    """Each modelSpec's /dev/shm size as the chart's template mounts it; None: no /dev/shm mounted."""
    return [spec.get("shmSize", "20Gi") if "tensorParallelSize" in (spec.get("vllmConfig") or {}) else None
            for spec in values["servingEngineSpec"]["modelSpec"]]


def shm_sizes(pod_spec: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """The sizes of the in-memory volumes mounted at /dev/shm in ``container`` (one, where it is done right)."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    sizes = []
    for mount in container.get("volumeMounts", []):
        if mount["mountPath"] == "/dev/shm":
            empty = volumes[mount["name"]]["emptyDir"]
            assert empty["medium"] == "Memory", empty
            sizes.append(empty["sizeLimit"])
    return sizes
