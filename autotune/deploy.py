"""The one module that maps a study's winning flags to the files people deploy vLLM with.

Every format gets the same flags, turned into arguments by :func:`autotune.flags.flags_to_argv` (vLLM's
``--config`` file takes them as YAML keys), and the same provenance header. What each runtime does with them was
read from its source, not guessed:

- ``vllm serve --config FILE.yaml`` (vLLM's ``FlexibleArgumentParser.load_config_file``): the file must end in
  ``.yaml``/``.yml``; each key is a long option name without its dashes; ``true`` becomes ``--key``, ``false``
  ``--no-key`` (dropped without a word where vLLM has no ``--no-`` form); a mapping becomes JSON, anything else
  ``str(value)``, so a null would reach vLLM as the word ``None`` and is never written. A ``model`` key stands in
  for the positional MODEL; the command line overrides the file.
- the production-stack Helm chart (``helm/templates/deployment-vllm-multi.yaml``): ``vllmConfig``'s typed keys
  become flags (``enableChunkedPrefill``, ``maxModelLen``, ``dtype``, ``tensorParallelSize``, ``maxNumSeqs``,
  ``gpuMemoryUtilization`` when present; ``enablePrefixCaching`` always, absent meaning
  ``--no-enable-prefix-caching``), then ``extraArgs`` item by item. A flag goes to one place or the other. It has no
  key for data parallelism (``--data-parallel-size`` goes in ``extraArgs``), and it mounts ``/dev/shm``
  (``shmSize``, default 20Gi) only where ``vllmConfig`` has ``tensorParallelSize``; ``requestGPU`` is the pod's
  ``nvidia.com/gpu``.
- KServe's huggingface runtime (``python/huggingfaceserver``): vLLM's argument parser behind KServe's own
  (``--model_name``, ``--model_id``, ``--backend``); it turns ``--dtype auto`` into float16 on a GPU, so the dtype
  the study measured is given explicitly. KServe's server listens on 8080 with readiness at /v2/health/ready; its
  ClusterServingRuntime mounts ``/dev/shm``. It sets ``--tensor-parallel-size`` to the pod's GPU count
  (``vllm/vllm_model.py``, ``torch.cuda.device_count()``), so a data-parallel layout (TP x DP GPUs in one pod)
  cannot run on it: such a winner's InferenceService runs vLLM's own image as its predictor container instead.
- llm-d's model-server recipes (``guides/*/modelserver/gpu/vllm``): a Deployment ``decode`` whose container
  ``modelserver`` runs ``vllm serve`` with MODEL and the flags as ``args``; a strategic-merge patch replaces that
  list whole. The recipes mount a 20Gi ``/dev/shm`` named ``shm``; vLLM balances the data-parallel ranks of one
  pod itself (llm-d's router sees the pod as one endpoint).
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from autotune import __version__
from autotune.engines.base import serve_cmd_model, vllm_serve_cmd
from autotune.errors import UsageError
from autotune.flags import VLLM_FLAGS, deploy_flags, effective_flags, flags_to_argv
from autotune.metrics import describe_limits
from autotune.winner import StudyRecords, Winner

__all__ = ["FORMATS", "Deployment", "build_deployment", "render", "file_name", "parse_formats",
           "HELM_TYPED_KEYS", "VLLM_PORT", "KSERVE_PORT", "HEALTH_PATH"]

VLLM_PORT: int = VLLM_FLAGS["port"].default  # vLLM's own default: where its /health answers in a container
HEALTH_PATH = "/health"
KSERVE_PORT = 8080  # KServe's model server
KSERVE_READY_PATH = "/v2/health/ready"
IMAGE = "vllm/vllm-openai"
GPU_RESOURCE = "nvidia.com/gpu"
# Per GPU, a starting point for the pod's requests (the production-stack chart's example asks 6 CPUs and 16 GiB for
# one GPU, llm-d's recipe 10 CPUs and 20 GiB): the API server, tokenizer and engine processes, and pages of the
# weights while they load. A node's own sizing may call for more.
CPU_PER_GPU = 8
MEMORY_GIB_PER_GPU = 32
# /dev/shm: NCCL and vLLM's message queues between the processes of the GPUs (tensor- and data-parallel ranks), and
# the shm processor cache, need more than a container's default 64 MiB (vLLM's Kubernetes and Docker docs). The
# production-stack chart's and llm-d's recipes' size.
SHM_SIZE = "20Gi"
LLMD_SHM_VOLUME = "shm"  # the name llm-d's recipes give it, so that the patch's volume is theirs
K8S_SHM_VOLUME = "dshm"
# A cold start downloads the weights, compiles and captures CUDA graphs: 2-3 min for a 9B model on an H100
# (docs/results/h100-flash.md), far longer for a large one. The startup probe allows 30 min before giving up.
STARTUP_PERIOD_S = 10
STARTUP_FAILURES = 180
HF_TOKEN_SECRET = "hf-token"  # a Secret the cluster may hold (optional): the token itself is never exported
HF_TOKEN_KEY = "token"
# production-stack vllmConfig's typed keys, by vLLM flag (deployment-vllm-multi.yaml); every other flag goes to
# extraArgs.
HELM_TYPED_KEYS = {"max-model-len": "maxModelLen", "dtype": "dtype", "tensor-parallel-size": "tensorParallelSize",
                   "max-num-seqs": "maxNumSeqs", "gpu-memory-utilization": "gpuMemoryUtilization",
                   "enable-chunked-prefill": "enableChunkedPrefill", "enable-prefix-caching": "enablePrefixCaching"}
# llm-d's recipe: the Deployment and container its patches name.
LLMD_DEPLOYMENT = "decode"
LLMD_CONTAINER = "modelserver"


@dataclass(frozen=True)
class Deployment:
    """What every format is made from: the winner's model and deployable flags, where it was measured, and the
    provenance each file carries in its header."""

    study: str
    model: str  # what `vllm serve` is given: an HF id, or the folder the study read
    flags: dict[str, Any]  # the winner's flags without the measurement-only ones
    gpus: int
    gpu_type: str
    vllm_version: str | None  # None: measured on the sim engine
    weight_dtype: str  # what --dtype auto meant for this model when it was measured
    header: tuple[str, ...]  # provenance, one line each

    @property
    def name(self) -> str:
        """A Kubernetes object name (DNS-1123 label) after the model."""
        return _dns_label(f"vllm-{self.model_slug}")

    @property
    def model_slug(self) -> str:
        return re.sub(r"[^a-z0-9.-]+", "-", self.model.rstrip("/").rsplit("/", 1)[-1].lower()).strip("-.") or "model"

    @property
    def image_tag(self) -> str:
        """The vLLM release the study measured; ``latest`` after a sim study (no vLLM ran)."""
        return f"v{self.vllm_version}" if self.vllm_version else "latest"

    @property
    def tensor_parallel_size(self) -> int:
        return int(self.flags.get("tensor-parallel-size") or 1)

    @property
    def data_parallel_size(self) -> int:
        return int(self.flags.get("data-parallel-size") or 1)

    @property
    def needs_shm(self) -> bool:
        """Whether vLLM's processes share memory beyond a container's default /dev/shm: several GPUs, or the shm
        processor cache."""
        return self.gpus > 1 or self.flags.get("mm-processor-cache-type") == "shm"

    @property
    def args(self) -> list[str]:
        """`vllm serve` arguments: MODEL and the flags."""
        return [self.model, *flags_to_argv(self.flags)]

    def resources(self) -> dict[str, Any]:
        amount = {"cpu": str(CPU_PER_GPU * self.gpus), "memory": f"{MEMORY_GIB_PER_GPU * self.gpus}Gi",
                  GPU_RESOURCE: str(self.gpus)}
        return {"requests": dict(amount), "limits": dict(amount)}


def build_deployment(data: StudyRecords, winner: Winner) -> Deployment:
    if data.fingerprint is None:
        raise UsageError(f"study {data.name!r} has no fingerprint: it was not written by `autotune run`")
    fp = data.fingerprint
    flags, dropped = deploy_flags(dict(winner.flags))
    run = data.winner_run
    header = [f"autotune: study {data.name!r}, trial {winner.trial} ({winner.source})",
              f"throughput at the limit: {winner.throughput_text()}",
              f"constraint: {describe_limits(winner.limits_ms)}; measured {winner.p99_text()}"]
    if (serve := winner.serve_text()) is not None:
        header.append(serve)
    header += [f"gain over {name}: {text}" for name, text in winner.gain_texts().items()]
    if winner.verdict:
        header.append(f"verdict: {winner.verdict}")
    gpu_name = f" ({run.gpu_name})" if run and run.gpu_name and fp.engine != "sim" else ""
    header.append(f"GPU: {fp.gpus}x {fp.gpu_type}{gpu_name}")
    if fp.engine == "sim":
        header.append("engine: the autotune sim engine (a performance model, no vLLM ran): measure on the GPU")
    else:
        header.append(f"vLLM: {run.vllm_version if run and run.vllm_version else 'unknown'}")
    workload = fp.workload.get("spec", fp.workload)
    header.append(f"workload: {workload}, seed {fp.workload.get('seed', '-')}")
    header.append(f"autotune: measured with {run.autotune_version if run else 'unknown'}, exported by {__version__}")
    header.append(f"measured: {run.finished_at if run else 'unknown'}")
    for name, value in dropped.items():
        header.append(f"measured with --{name} {value}, left out here: a deployment loads the real weights")
    used = layout_gpus(flags)
    if used != fp.gpus:  # every layout autotune runs is GPUs = TP x DP: a record from elsewhere
        raise UsageError(f"study {data.name!r}: trial {winner.trial}'s flags use {used} GPU(s) (tensor x data x "
                         f"pipeline parallel) but the study ran on {fp.gpus}: not exported")
    return Deployment(study=data.name, model=serve_cmd_model(winner.vllm_serve_cmd), flags=flags, gpus=fp.gpus,
                      gpu_type=fp.gpu_type, vllm_version=run.vllm_version if run else None,
                      weight_dtype=fp.weight_dtype, header=tuple(header))


def layout_gpus(flags: dict[str, Any]) -> int:
    """The GPUs one `vllm serve` with ``flags`` uses: tensor x data x pipeline parallel size."""
    return math.prod(int(flags.get(name) or 1)
                     for name in ("tensor-parallel-size", "data-parallel-size", "pipeline-parallel-size"))


# -- the formats -------------------------------------------------------------------------------------------------
def _vllm_config(dep: Deployment) -> str:
    body: dict[str, Any] = {"model": dep.model}
    for name in sorted(dep.flags):
        value = dep.flags[name]
        if value is None:
            continue
        if value is False:
            # vLLM's config reader passes `key: true` on as --key and drops `key: false` without a word (0.26's
            # FlexibleArgumentParser.load_config_file; seen on an H200: prefix caching stayed on), so a flag
            # turned off is written as its --no- form.
            body[f"no-{name}"] = True
        elif isinstance(value, dict):
            # A mapping as its JSON text: the same argument on every vLLM version (older ones passed a YAML
            # mapping on as Python's repr).
            body[name] = flags_to_argv({name: value})[1]
        else:
            body[name] = value
    return _yaml(body)


def _sh(dep: Deployment) -> str:
    return ("#!/bin/sh\n" + _comment(dep.header) + "# Arguments given to this script go last: they override these "
            "(e.g. --port 8001).\n" + f"exec {vllm_serve_cmd(dep.model, dep.flags)} \"$@\"\n")


def _probe(path: str, port: int | str, period_s: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period_s, "failureThreshold": failures}


def _startup_probe(path: str, port: int | str) -> dict[str, Any]:
    return _probe(path, port, STARTUP_PERIOD_S, STARTUP_FAILURES)


def _helm(dep: Deployment) -> str:
    typed: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, value in dep.flags.items():
        (typed if name in HELM_TYPED_KEYS else extra)[name] = value
    if dep.needs_shm:  # the chart mounts /dev/shm only where tensorParallelSize is set (1 included)
        typed["tensor-parallel-size"] = dep.tensor_parallel_size
    vllm_config = {HELM_TYPED_KEYS[name]: value for name, value in sorted(typed.items())}
    # Set always: without it the chart adds --no-enable-prefix-caching, which is not vLLM's default.
    vllm_config["enablePrefixCaching"] = bool(effective_flags(dep.flags)["enable-prefix-caching"])
    if extra:
        vllm_config["extraArgs"] = flags_to_argv(extra)
    spec = {"name": _dns_label(dep.model_slug), "repository": IMAGE, "tag": dep.image_tag,
            "modelURL": dep.model, "replicaCount": 1, "requestCPU": CPU_PER_GPU * dep.gpus,
            "requestMemory": f"{MEMORY_GIB_PER_GPU * dep.gpus}Gi", "requestGPU": dep.gpus, "shmSize": SHM_SIZE,
            # not the chart's hf_token key: its secretKeyRef is never optional, so a cluster without the Secret
            # could not start the pod; modelSpec.env goes to the container as it is
            "env": [_hf_token_env()], "vllmConfig": vllm_config}
    return _yaml({"servingEngineSpec": {"modelSpec": [spec],
                                        "startupProbe": _startup_probe(HEALTH_PATH, VLLM_PORT)}})


def _hf_token_env() -> dict[str, Any]:
    return {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": HF_TOKEN_SECRET, "key": HF_TOKEN_KEY,
                                                                "optional": True}}}


def _labels(dep: Deployment) -> dict[str, str]:
    return {"app.kubernetes.io/name": dep.name, "app.kubernetes.io/managed-by": "autotune"}


def _annotations(dep: Deployment) -> dict[str, str]:
    return {"autotune/study": dep.study}


def _shm_mount(name: str = K8S_SHM_VOLUME) -> dict[str, Any]:
    return {"name": name, "mountPath": "/dev/shm"}


def _shm_volume(name: str = K8S_SHM_VOLUME) -> dict[str, Any]:
    return {"name": name, "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}}


def _k8s(dep: Deployment) -> str:
    container = {
        "name": "vllm", "image": f"{IMAGE}:{dep.image_tag}", "command": ["vllm", "serve"],
        "args": [*dep.args, *flags_to_argv({"port": VLLM_PORT})],
        "ports": [{"name": "http", "containerPort": VLLM_PORT}], "env": [_hf_token_env()],
        "resources": dep.resources(),
        "startupProbe": _startup_probe(HEALTH_PATH, "http"),
        "readinessProbe": _probe(HEALTH_PATH, "http", 5, 3),
        "livenessProbe": _probe(HEALTH_PATH, "http", 10, 3),
        "volumeMounts": [_shm_mount()],
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": dep.name, "labels": _labels(dep), "annotations": _annotations(dep)},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": dep.name}},
                 "template": {"metadata": {"labels": _labels(dep)},
                              "spec": {"containers": [container], "volumes": [_shm_volume()]}}},
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": dep.name, "labels": _labels(dep)},
        "spec": {"selector": {"app.kubernetes.io/name": dep.name},
                 "ports": [{"name": "http", "port": VLLM_PORT, "targetPort": "http"}]},
    }
    return _yaml(deployment) + "---\n" + _yaml(service)


def _kserve(dep: Deployment) -> str:
    if dep.data_parallel_size > 1:
        return _kserve_vllm_image(dep)
    flags = dict(dep.flags)
    if flags.get("dtype", "auto") == "auto":
        flags["dtype"] = dep.weight_dtype  # KServe reads auto as float16: state what was measured
    model = {
        "modelFormat": {"name": "huggingface"},
        "args": [f"--model_name={dep.name}", f"--model_id={dep.model}", "--backend=vllm", *flags_to_argv(flags)],
        "env": [_hf_token_env()], "resources": dep.resources(),
        "readinessProbe": _probe(KSERVE_READY_PATH, KSERVE_PORT, 10, 3),
    }
    return _inference_service(dep, {"model": model})


def _kserve_vllm_image(dep: Deployment) -> str:
    """The predictor as a container of vLLM's image running the study's `vllm serve` (KServe's custom predictor):
    the huggingface runtime would run TP over every GPU of the pod, on top of the data-parallel ranks."""
    container = {
        "name": "kserve-container", "image": f"{IMAGE}:{dep.image_tag}", "command": ["vllm", "serve"],
        "args": [*dep.args, *flags_to_argv({"port": VLLM_PORT})],
        # unnamed: Knative (KServe's serverless mode) takes only http1 or h2c as a port's name
        "ports": [{"containerPort": VLLM_PORT, "protocol": "TCP"}], "env": [_hf_token_env()],
        "resources": dep.resources(), "readinessProbe": _probe(HEALTH_PATH, VLLM_PORT, 10, 3),
        "volumeMounts": [_shm_mount()],
    }
    return _inference_service(dep, {"containers": [container], "volumes": [_shm_volume()]})


def _inference_service(dep: Deployment, predictor: dict[str, Any]) -> str:
    return _yaml({"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                  "metadata": {"name": dep.name, "labels": _labels(dep), "annotations": _annotations(dep)},
                  "spec": {"predictor": predictor}})


def _compose(dep: Deployment) -> str:
    health = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{VLLM_PORT}{HEALTH_PATH}')"
    service = {
        "image": f"{IMAGE}:{dep.image_tag}", "entrypoint": ["vllm", "serve"],
        "command": [*dep.args, *flags_to_argv({"port": VLLM_PORT})],
        "ports": [f"{VLLM_PORT}:{VLLM_PORT}"], "ipc": "host",
        # Compose reads the token from the environment of whoever starts it; nothing is written here.
        "environment": {"HF_TOKEN": "${HF_TOKEN:-}"},
        "volumes": ["${HOME}/.cache/huggingface:/root/.cache/huggingface"],
        "deploy": {"resources": {"reservations": {"devices": [
            {"driver": "nvidia", "count": dep.gpus, "capabilities": ["gpu"]}]}}},
        "healthcheck": {"test": ["CMD", "python3", "-c", health], "interval": "10s", "timeout": "5s",
                        "retries": 3, "start_period": f"{STARTUP_PERIOD_S * STARTUP_FAILURES}s"},
    }
    return _yaml({"services": {"vllm": service}})


def _kustomize(dep: Deployment) -> str:
    gpus = {GPU_RESOURCE: str(dep.gpus)}
    container: dict[str, Any] = {"name": LLMD_CONTAINER, "args": dep.args,
                                 "resources": {"requests": gpus, "limits": dict(gpus)}}
    pod: dict[str, Any] = {"containers": [container]}
    if dep.needs_shm:
        # Merged by mountPath and by volume name: a recipe's own /dev/shm becomes this one, and a base without one
        # gets it.
        container["volumeMounts"] = [_shm_mount(LLMD_SHM_VOLUME)]
        pod["volumes"] = [_shm_volume(LLMD_SHM_VOLUME)]
    return _yaml({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": LLMD_DEPLOYMENT},
                  "spec": {"template": {"spec": pod}}})


@dataclass(frozen=True)
class _Format:
    suffix: str
    usage: str | Callable[[Deployment], str]  # the first header line: how the file is used
    render: Callable[[Deployment], str]
    notes: Callable[[Deployment], list[str]] = lambda dep: []  # header lines after the usage: what this runtime
    # makes of the winner that the others do not


def _helm_notes(dep: Deployment) -> list[str]:
    if dep.data_parallel_size == 1:
        return []
    return [f"--data-parallel-size {dep.data_parallel_size} is in extraArgs: the chart's vllmConfig has no key for it"]


def _kserve_usage(dep: Deployment) -> str:
    if dep.data_parallel_size == 1:
        return "KServe InferenceService on the huggingface runtime (vLLM backend): kubectl apply -f FILE"
    return ("KServe InferenceService whose predictor runs vLLM's image, not the huggingface runtime (which sets "
            "--tensor-parallel-size to the pod's GPU count: no data parallelism): kubectl apply -f FILE")


def _kustomize_notes(dep: Deployment) -> list[str]:
    if dep.data_parallel_size == 1:
        return []
    return [f"vLLM balances its {dep.data_parallel_size} data-parallel ranks inside the pod: llm-d's router sees "
            "the pod as one endpoint"]


FORMATS: dict[str, _Format] = {
    "config": _Format(".vllm.yaml", "vLLM config file: vllm serve --config FILE (options on the command line "
                                    "override it)", _vllm_config),
    "sh": _Format(".serve.sh", "the vllm serve command", _sh),
    "helm": _Format(".helm-values.yaml", "values for the vLLM production-stack chart: helm install RELEASE "
                                         "vllm/vllm-stack -f FILE", _helm, _helm_notes),
    "kserve": _Format(".kserve.yaml", _kserve_usage, _kserve),
    "k8s": _Format(".k8s.yaml", "Kubernetes Deployment and Service running vllm serve: kubectl apply -f FILE", _k8s),
    "compose": _Format(".compose.yaml", "docker compose service: docker compose -f FILE up", _compose),
    "kustomize": _Format(".kustomize-patch.yaml", f"kustomize patch for llm-d's model server (Deployment "
                                                  f"{LLMD_DEPLOYMENT}, container {LLMD_CONTAINER}): add it under "
                                                  "patches: in your overlay", _kustomize, _kustomize_notes),
}


def parse_formats(text: str) -> list[str]:
    """``config,helm`` -> the formats in the given order; an unknown one is a usage error."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise UsageError(f"unknown export format {(unknown or [text])[0]!r}; known: {', '.join(FORMATS)}")
    return list(dict.fromkeys(names))


def file_name(fmt: str, dep: Deployment) -> str:
    """``<model>_<N>x<gpu>_<study><suffix>``, e.g. ``glm-4.6v-flash_1xh100_flash-1gpu-p99ttft500ms.vllm.yaml``."""
    study = re.sub(r"[^A-Za-z0-9._-]+", "-", dep.study).strip("-.") or "study"
    gpu = re.sub(r"[^A-Za-z0-9._-]+", "-", dep.gpu_type)
    return f"{dep.model_slug}_{dep.gpus}x{gpu}_{study}{FORMATS[fmt].suffix}"


def render(fmt: str, dep: Deployment) -> str:
    """The file's text: for YAML, the usage line and the provenance as comments, then the document."""
    spec = FORMATS[fmt]
    body = spec.render(dep)
    usage = spec.usage(dep) if callable(spec.usage) else spec.usage
    if fmt == "sh":
        return body.replace("#!/bin/sh\n", "#!/bin/sh\n" + _comment((usage,)), 1)
    return _comment((usage, *spec.notes(dep), *dep.header)) + body


def _comment(lines: tuple[str, ...] | list[str]) -> str:
    return "".join(f"# {line}\n" for line in lines)


def _yaml(obj: Any) -> str:
    # width: long arguments stay on one line; sort_keys off: each object reads in its conventional order
    return yaml.safe_dump(obj, sort_keys=False, width=1 << 16, default_flow_style=False, allow_unicode=True)


def _dns_label(text: str) -> str:
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].rstrip("-")
    return label or "vllm"

