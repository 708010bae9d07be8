"""LaunchSpec, startup-log parsing, failure classes, command lines, environment, GPU memory reading."""
from __future__ import annotations

import os
import shlex
import sys
import types
from pathlib import Path

import pytest

from autotune.engines.base import LaunchSpec, StartupInfo, classify_failure, parse_startup_log
from autotune.engines.launcher import EngineServer, gpu_memory_used_mib
from autotune.errors import UsageError
from autotune.models import PRESETS, resolve_model
from tests.fake_engine import OOM_LINES, SAMPLE_VLLM_LOG


def _spec(tmp_path: Path, **kw: object) -> LaunchSpec:
    args: dict[str, object] = dict(engine="vllm", model=PRESETS["flash"], flags={"max-num-seqs": 64},
                                   gpu_ids=("0",), served_model_name="autotune-s-1", log_path=tmp_path / "t.log")
    args.update(kw)
    return LaunchSpec(**args)  # type: ignore[arg-type]


def test_parse_sample_vllm_log() -> None:
    info = parse_startup_log(SAMPLE_VLLM_LOG)
    assert info == StartupInfo(model_memory_gib=17.5812, model_load_s=5.312871, available_kv_gib=52.24,
                               kv_cache_tokens=1_369_488, max_concurrency=10.45, max_concurrency_len=131_072,
                               compile_s=38.45, graph_capture_s=24.0, graph_memory_gib=0.68, engine_init_s=79.86)


def test_parse_memory_accounting_of_vllm_0_26() -> None:
    """vLLM 0.26.0's own split of a rank's budget (from a TP2 start of the weightless GLM-4.6V on an H200)."""
    text = (
        "(Worker_TP0 pid=1330) INFO 11-30 19:33:26 [gpu_model_runner.py:6737] Estimated CUDA graph memory: "
        "0.96 GiB total\n"
        "(Worker_TP0 pid=1330) INFO 11-30 19:33:26 [gpu_worker.py:560] Available KV cache memory: 24.7 GiB\n"
        "(Worker_TP0 pid=1330) INFO 11-30 19:33:50 [gpu_worker.py:857] Free memory on device (137.8/139.8 GiB) on "
        "startup. Desired GPU memory utilization is (0.92, 128.62 GiB). Actual usage is 99.6 GiB for weight, "
        "3.21 GiB for peak activation, 0.14 GiB for non-torch memory, and 1.26 GiB for CUDAGraph memory. Replace "
        "gpu_memory_utilization config with `--kv-cache-memory=26052535399` (24.26 GiB) to fit into requested "
        "memory, or `--kv-cache-memory=35910893056` (33.44 GiB) to fully utilize gpu memory. Current kv cache "
        "memory in use is 24.7 GiB.\n"
    )
    info = parse_startup_log(text)
    assert (info.gpu_memory_utilization, info.memory_budget_gib) == (0.92, 128.62)
    assert (info.peak_activation_gib, info.non_torch_gib) == (3.21, 0.14)
    assert (info.graph_memory_estimate_gib, info.graph_memory_gib, info.available_kv_gib) == (0.96, 1.26, 24.7)
    # the parsed parts add up to the parsed budget: weights (99.6 in this line) + activation + non-torch + graph
    # estimate + KV, as vLLM sized the cache
    parts = 99.6 + info.peak_activation_gib + info.non_torch_gib + info.graph_memory_estimate_gib + info.available_kv_gib
    assert parts == pytest.approx(info.memory_budget_gib, abs=0.02)


def test_parse_newer_formats_merged_line_and_last_occurrence() -> None:
    text = "\n".join([
        "INFO [gpu_model_runner.py:1] Model loading took 9.1 GiB and 3.500000 seconds",
        "INFO [gpu_worker.py:2] Available KV cache memory: 60.5 GiB (process-scoped)",
        "INFO [kv_cache_utils.py:3] GPU KV cache size: 12,345 tokens, Maximum concurrency for 4,096 tokens "
        "per request: 3.01x",
        # a relaunch later in the same log: the later figures win
        "INFO [kv_cache_utils.py:3] GPU KV cache size: 2,000,000 tokens, Maximum concurrency for 8,192 tokens "
        "per request: 244.14x",
        "INFO [core.py:4] init engine (profile, create kv cache, warmup model) took 41.20 s (compilation: 20.10 s)",
    ])
    info = parse_startup_log(text)
    assert (info.model_memory_gib, info.model_load_s, info.available_kv_gib) == (9.1, 3.5, 60.5)
    assert (info.kv_cache_tokens, info.max_concurrency_len, info.max_concurrency) == (2_000_000, 8192, 244.14)
    assert (info.engine_init_s, info.compile_s) == (41.2, 20.1)
    assert info.graph_capture_s is None and info.ready_s is None


def test_parse_empty_log_is_all_none() -> None:
    assert all(v is None for v in parse_startup_log("nothing useful\n").as_dict().values())


@pytest.mark.parametrize(("text", "exited", "timed_out", "expected"), [
    (OOM_LINES, True, False, "oom"),
    ("RuntimeError: CUDA error: out of memory", True, False, "oom"),
    ("ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`", True, False,
     "kv_too_small"),
    ("ValueError: To serve at least one request with the models's max seq len (131072), (20.0 GiB KV cache is "
     "needed, which is larger than the available KV cache memory (5.0 GiB).", True, False, "kv_too_small"),
    ("The model's max seq len (131072) is larger than the maximum number of tokens that can be stored in KV "
     "cache (40000).", True, False, "kv_too_small"),
    ("ERROR: [Errno 98] error while attempting to bind on address ('127.0.0.1', 8000): address already in use",
     True, False, "port_in_use"),
    ("OSError: [Errno 98] Address already in use", True, False, "port_in_use"),
    ("vllm serve: error: unrecognized arguments: --max-num-seq 4", True, False, "bad_flags"),
    ("vllm serve: error: argument --max-num-seqs: invalid int value: 'x'", True, False, "bad_flags"),
    ("INFO loading...\n", False, True, "timeout"),
    (OOM_LINES, False, True, "oom"),  # evidence in the log beats a timeout
    ("Segmentation fault (core dumped)", True, False, "crash"),
])
def test_classify_failure(text: str, exited: bool, timed_out: bool, expected: str) -> None:
    assert classify_failure(text, exited=exited, timed_out=timed_out) == expected


def test_spec_rejects_launcher_flags_and_unknown_engine(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="port"):
        _spec(tmp_path, flags={"port": 9000})
    with pytest.raises(UsageError, match="served-model-name"):
        _spec(tmp_path, flags={"served_model_name": "x"})
    with pytest.raises(UsageError, match="engine"):
        _spec(tmp_path, engine="tgi")


def test_vllm_command_and_profile_cmd(tmp_path: Path) -> None:
    spec = _spec(tmp_path, flags={"max-num-seqs": 64, "kv-cache-dtype": "fp8", "enable-prefix-caching": False},
                 vllm_cmd=("vllm", "serve"))
    server = EngineServer(spec, port=18123)
    assert server.command == ["vllm", "serve", "zai-org/GLM-4.6V-Flash", "--no-enable-prefix-caching",
                              "--kv-cache-dtype", "fp8", "--max-num-seqs", "64", "--port", "18123",
                              "--host", "127.0.0.1", "--served-model-name", "autotune-s-1"]
    assert server.vllm_serve_cmd == ("vllm serve zai-org/GLM-4.6V-Flash --no-enable-prefix-caching "
                                     "--kv-cache-dtype fp8 --max-num-seqs 64")
    assert server.url == "http://127.0.0.1:18123" and server.pid is None and not server.alive()


def test_default_vllm_cmd_follows_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    spec = _spec(tmp_path, python="/usr/bin/python3")
    assert spec.serve_cmd == ("/usr/bin/python3", "-m", "vllm.entrypoints.cli.main", "serve")
    fake = tmp_path / "vllm"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert spec.serve_cmd == ("vllm", "serve")


def test_sim_command_uses_local_path_or_preset_name(tmp_path: Path, weightless_flash_dir: Path) -> None:
    spec = _spec(tmp_path, engine="sim", gpu_type="h100", time_scale=0.5, python="py")
    argv = EngineServer(spec, port=18124).command
    assert argv == ["py", "-m", "autotune.sim", "serve", "flash", "--max-num-seqs", "64", "--port", "18124",
                    "--host", "127.0.0.1", "--served-model-name", "autotune-s-1", "--gpu-type", "h100",
                    "--time-scale", "0.5"]
    local = _spec(tmp_path, engine="sim", model=resolve_model(str(weightless_flash_dir)))
    assert EngineServer(local).command[4] == str(weightless_flash_dir.resolve())
    # the exported command names what `vllm serve` needs, quoted for a shell
    assert shlex.split(EngineServer(local).vllm_serve_cmd)[2] == str(weightless_flash_dir.resolve())


def test_environment_forces_no_nvls_and_sets_gpus(tmp_path: Path) -> None:
    spec = _spec(tmp_path, gpu_ids=("2", "3"), extra_env={"NCCL_NVLS_ENABLE": "1", "FOO": "bar"})
    env = EngineServer(spec)._env()
    assert env["NCCL_NVLS_ENABLE"] == "0" and env["TORCH_SYMM_MEM_DISABLE_MULTICAST"] == "1"
    assert env["NVSHMEM_DISABLE_NVLS"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["FOO"] == "bar"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    for uuids in (_GPU_UUIDS, ("MIG-1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d",)):  # UUIDs verbatim, in their order
        assert EngineServer(_spec(tmp_path, gpu_ids=uuids))._env()["CUDA_VISIBLE_DEVICES"] == ",".join(uuids)
    assert env["PATH"] == os.environ["PATH"]


def test_an_integer_gpu_id_is_refused_when_the_spec_is_made(tmp_path: Path) -> None:
    """GPU ids are strings end to end; an integer index (two benchmark scripts still gave one) passed an in-process
    sim and failed at a server's launch (',' joining CUDA_VISIBLE_DEVICES)."""
    with pytest.raises(TypeError, match="strings"):
        _spec(tmp_path, gpu_ids=(0,))


def _fake_smi(folder: Path, output: str) -> None:
    smi = folder / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho \"$@\" > {folder}/smi_args\nprintf '{output}'\n")
    smi.chmod(0o755)


def test_gpu_memory_used_mib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # no NVML fallback either
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu_memory_used_mib(["0"]) is None  # no nvidia-smi
    _fake_smi(tmp_path, "1234\\n567\\n")
    assert gpu_memory_used_mib(["0", "3"]) == [1234, 567]
    assert (tmp_path / "smi_args").read_text().split() == [
        "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0,3"]
    assert gpu_memory_used_mib(["0"]) is None  # count mismatch: not trusted
    assert gpu_memory_used_mib([]) is None


_GPU_UUIDS = ("GPU-5f2c0d1e-8a3b-4c6d-9e0f-1a2b3c4d5e6f", "GPU-0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0")


def test_gpu_memory_is_read_by_uuid_and_not_for_a_mig_slice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU UUID goes to nvidia-smi -i as written. A MIG slice is not asked about: nvidia-smi's GPU query gives
    its parent GPU's memory, which other slices move, so the stop relies on the process group and the port."""
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setenv("PATH", str(tmp_path))
    _fake_smi(tmp_path, "1234\\n567\\n")
    assert gpu_memory_used_mib(list(_GPU_UUIDS)) == [1234, 567]
    assert (tmp_path / "smi_args").read_text().split() == [
        "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", ",".join(_GPU_UUIDS)]
    (tmp_path / "smi_args").unlink()
    for mig in ("MIG-1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d", f"MIG-{_GPU_UUIDS[0]}/1/0"):
        assert gpu_memory_used_mib([mig]) is None
    assert not (tmp_path / "smi_args").exists()


def test_gpu_memory_from_nvml_by_index_or_uuid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without nvidia-smi, NVML is asked for an index's handle by index and a UUID's by UUID."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    asked: list[tuple[str, object]] = []
    used_mib = {3: 700, _GPU_UUIDS[1]: 900}
    nvml = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: asked.append(("index", i)) or i,
        nvmlDeviceGetHandleByUUID=lambda u: asked.append(("uuid", u)) or u,
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=used_mib[h] * 2**20))
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert gpu_memory_used_mib(["3"]) == [700] and gpu_memory_used_mib([_GPU_UUIDS[1]]) == [900]
    assert asked == [("index", 3), ("uuid", _GPU_UUIDS[1])]


def test_the_profiling_runs_own_time() -> None:
    """vLLM 0.26.0's "Initial profiling/warmup run took" line (the GLM-4.6V-Flash start on an H200): the start-up
    time --skip-mm-profiling saves, apart from the compile cache's."""
    text = ("(EngineCore pid=5979) INFO 11-30 21:13:39 [monitor.py:81] Initial profiling/warmup run took 0.56 s\n"
            "(EngineCore pid=5979) INFO 11-30 21:13:58 [core.py:340] init engine (profile, create kv cache, warmup "
            "model) took 48.59 s (compilation: 27.05 s)\n")
    info = parse_startup_log(text)
    assert (info.profile_run_s, info.engine_init_s, info.compile_s) == (0.56, 48.59, 27.05)
    assert parse_startup_log("").profile_run_s is None


def test_an_untuned_moe_kernel_is_named_and_noted() -> None:
    """vLLM 0.26.0 on two H200s, GLM-4.6V with fp8 weights (its profiling run): the tuning file it did not find is
    kept, and the profile says what it means; a dense model's start has neither."""
    from autotune.profile import engine_notes

    text = ("(Worker_TP0 pid=4635) WARNING 11-30 23:42:14 [fused_moe.py:1107] Using default MoE config. Performance "
            "might be sub-optimal! Config file not found at /tmp/site/vllm/model_executor/layers/fused_moe/configs/"
            "E=128,N=704,device_name=NVIDIA_H200,dtype=fp8_w8a8.json, /tuned/E=128,N=704,device_name=NVIDIA_H200,"
            "dtype=fp8_w8a8.json\n")
    name = "E=128,N=704,device_name=NVIDIA_H200,dtype=fp8_w8a8.json"
    info = parse_startup_log(SAMPLE_VLLM_LOG + text)
    assert info.untuned_moe_config == name and info.kv_cache_tokens == 1_369_488
    (note,) = engine_notes(StartupInfo.from_dict(info.as_dict()))  # as a trial record keeps it
    assert name in note and "benchmark_moe.py --tune" in note
    assert parse_startup_log(SAMPLE_VLLM_LOG).untuned_moe_config is None
    assert engine_notes(StartupInfo.from_dict({"kv_cache_tokens": 5, "a_later_figure": 1.0})) == []
