"""From (model, card, flags) to a ready engine: memory plan, performance model, scheduler limits and the API
server in front of it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autotune.errors import EngineStartError
from autotune.flags import effective_flags, mm_limit
from autotune.gpus import GpuSpec
from autotune.memory import MemoryPlan, plan_memory
from autotune.models import ModelSpec
from autotune.sim.frontend import ApiServers, At, FrontEndConstants, api_server_count, renderer_workers
from autotune.sim.perf import PerfModel
from autotune.sim.scheduler import Scheduler, SchedulerConfig
from autotune.vllm_api.request import ServedModel

__all__ = ["EngineSetup", "setup_engine"]


@dataclass(frozen=True)
class EngineSetup:
    model: ModelSpec
    gpu: GpuSpec
    flags: dict[str, Any]  # effective flags (given over vLLM defaults)
    plan: MemoryPlan
    perf: PerfModel
    sched_cfg: SchedulerConfig
    frontend: FrontEndConstants = FrontEndConstants()
    # Where vLLM starts and then dies under load: the error it dies with (else ""). The sim's engine dies as a
    # request arrives while another is in flight (in-process: SimTransport; over HTTP: the server's source).
    dies_under_load: str = ""

    def new_scheduler(self) -> Scheduler:
        return Scheduler(self.sched_cfg, self.perf)

    def new_api_servers(self, at: At) -> ApiServers:
        """The deployment's API server processes (:mod:`autotune.sim.frontend`), shared by its DP replicas;
        ``at(t, fn)`` runs ``fn`` at modelled time ``t``."""
        return ApiServers(self.frontend, api_server_count(self.flags), at, renderer_workers(self.flags))

    def served_model(self, names: tuple[str, ...], root: str) -> ServedModel:
        """What the server's API checks requests against: context length, images and their tokens."""
        return ServedModel(names=names, root=root, max_model_len=self.plan.max_model_len,
                           image_tokens=self.perf.image_tokens if self.model.is_vlm else None,
                           max_images=mm_limit(self.flags.get("limit-mm-per-prompt"), "image"))


def setup_engine(model: ModelSpec, gpu: GpuSpec, flags: dict[str, Any]) -> EngineSetup:
    """Plan memory and build the step model; raises EngineStartError(reason, failure_class) where vLLM
    would refuse to start."""
    f = effective_flags(flags)
    if problem := model.tensor_parallel_problem(int(f["tensor-parallel-size"] or 1)):
        raise EngineStartError(problem, "bad_flags")
    plan = plan_memory(model, gpu, f)
    if not plan.fits:
        raise EngineStartError(plan.reason, plan.failure_class)
    block = int(f["block-size"] or 16)
    cfg = SchedulerConfig(
        max_num_seqs=int(f["max-num-seqs"]), max_num_batched_tokens=int(f["max-num-batched-tokens"]),
        chunked_prefill=bool(f["enable-chunked-prefill"]), block_size=block,
        num_blocks=plan.kv_cache_tokens // block, max_model_len=plan.max_model_len,
    )
    if not cfg.chunked_prefill and cfg.max_num_batched_tokens < cfg.max_model_len:
        # vLLM's SchedulerConfig check when chunked prefill is off
        raise EngineStartError(
            f"max_num_batched_tokens ({cfg.max_num_batched_tokens}) is smaller than max_model_len "
            f"({cfg.max_model_len}). This effectively limits the maximum sequence length to "
            f"max_num_batched_tokens and makes vLLM reject longer sequences. Please increase "
            f"max_num_batched_tokens or decrease max_model_len.", "bad_flags")
    if model.is_vlm and renderer_workers(f) > 1 and float(f["mm-processor-cache-gb"] or 0) > 0:
        # vLLM's ModelConfig check (vllm/config/model.py): the multimodal processor cache is not thread-safe
        raise EngineStartError(
            "Cannot use --renderer-num-workers > 1 with the multimodal processor cache enabled. The cache is not "
            "thread-safe and does not support concurrent renderer workers. Please set --renderer-num-workers 1 (the "
            "default), or disable the cache with --mm-processor-cache-gb 0.",
            "bad_flags")
    return EngineSetup(model, gpu, f, plan, PerfModel(model, gpu, f), cfg, FrontEndConstants.from_gpu(gpu),
                       engine_failure_under_load(model, f))


def engine_failure_under_load(model: ModelSpec, flags: dict[str, Any]) -> str:
    """vLLM 0.26.0's error where it starts, answers a request alone, and dies when its data-parallel ranks step with
    different token counts (``""`` where it serves). An MoE with DP > 1 and online fp8 weights: the MoE layer's
    dispatch over the DP ranks (``all_gatherv``) asserts. Seen on two H200s with DP2 + EP + fp8 weights and KV
    (docs/results/glm-4.6v-h200x2.md), and in vLLM issue #38999 with DP2 + fp8 without EP."""
    if model.is_moe and int(flags["data-parallel-size"] or 1) > 1 and flags.get("quantization") == "fp8":
        return ("AssertionError: the MoE layer's dispatch over the data-parallel ranks (all_gatherv) got ranks "
                "with different token counts (vLLM 0.26.0, data parallel with fp8 weights)")
    return ""
