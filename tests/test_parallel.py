"""Trials side by side on one machine: `--parallel 2` with the sim server on made-up GPU ids. Two servers run at
once, never on the same GPU or port, and a GPU goes to the next trial only once the server before it is stopped
(its port free). With SQLite, a second process on the study is refused."""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest

from autotune import records
from autotune.config import GpuLayout, RunOptions, build_study_config, choose_engine, gpu_layout
from autotune.engines.launcher import live_servers, port_is_free
from autotune.errors import UsageError
from autotune.progress import Progress, StudyStart
from autotune.storage import open_storage
from autotune.study import run_study


class _Timeline(Progress):
    def __init__(self) -> None:
        self.events: list[tuple[str, int, tuple[str, ...], int | None, bool]] = []
        self.starts: list[StudyStart] = []
        self.lock = threading.Lock()
        self.waited_for: list[int] = []  # trials of other processes the final comparison waited for

    def study_started(self, start: StudyStart) -> None:
        self.starts.append(start)

    def engine_starting(self, engine, port, command, log_path, gpu_ids=(), trial=None) -> None:
        with self.lock:
            self.events.append(("start", port, tuple(gpu_ids), trial, port is None or port_is_free(port)))

    def engine_stopped(self, port, gpu_ids, problems, trial=None) -> None:
        with self.lock:
            self.events.append(("stop", port, tuple(gpu_ids), trial, (port is None or port_is_free(port)) and not problems))

    def waiting_for_trials(self, numbers, at_most_s) -> None:
        self.waited_for.extend(numbers)


@pytest.mark.slow
def test_two_trials_at_once_never_share_a_gpu_or_a_port(tmp_path: Path) -> None:
    opts = RunOptions(model="flash", engine="sim", p99_ms=500, storage=f"sqlite:///{tmp_path}/s.db", study="par",
                      trials=4, repeats=1, top_k=1, workload="random:256:32", max_concurrency=16, sim_server=True,
                      sim_time_scale=200, parallel=2, out=str(tmp_path / "out"))
    cfg = build_study_config(opts, choose_engine("sim"))
    assert cfg.gpu_slots == (("0",), ("1",))
    timeline = _Timeline()
    outcome = run_study(cfg, open_storage(cfg.storage_url, exclusive=True), timeline)
    live: dict[int, tuple[str, ...]] = {}  # port -> GPUs of the servers running
    most = 0
    for kind, port, gpus, trial, free in timeline.events:
        if kind == "start":
            assert free, f"port {port} was taken when trial {trial} started on it"
            assert port not in live and not set(gpus) & {g for gg in live.values() for g in gg}, timeline.events
            live[port] = gpus
            most = max(most, len(live))
        else:
            assert free and live.pop(port) == gpus  # stopped, its port free, before its GPUs went on
    assert most == 2 and not live  # two at once, all stopped
    assert live_servers() == []
    study = optuna.load_study(study_name="par", storage=cfg.storage_url)
    done = [t for t in records.read_trials(study) if t.complete]
    assert len(done) == 4 and {t.baseline for t in done} >= {"vllm-defaults", "seed-profile"}
    assert outcome.selection.winner is not None  # the final comparison ran on the two slots too
    assert timeline.waited_for == [] and outcome.left_out == ()  # its own trials' threads were over: none to wait for
    assert {g for _, _, gpus, trial, _ in timeline.events if trial is None for g in gpus} <= {"0", "1"}


def test_gpu_slots_from_the_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert gpu_layout(2, None, None, "vllm").slots == (("4", "5"), ("6", "7"))  # N/G trials at once
    assert gpu_layout(2, 1, None, "vllm").slots == (("4", "5"),)  # --parallel caps it
    assert gpu_layout(1, None, "3,1", "vllm").slots == (("3",), ("1",))  # --gpu-ids wins
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpu_layout(2, 3, None, "sim").slots == (("0", "1"), ("2", "3"), ("4", "5"))  # the sim's made-up GPUs
    for bad in ("0,0", "a,b", "", "0,00"):
        with pytest.raises(UsageError):
            gpu_layout(1, None, bad or ",", "vllm")
    with pytest.raises(UsageError, match="--gpus 4 but --gpu-ids gives 2 GPUs"):
        gpu_layout(4, None, "0,1", "vllm")
    # GPUs no trial gets are named: --gpus that does not divide them, or --parallel below what they allow
    assert gpu_layout(3, None, "0,1,2,3,4,5,6,7", "vllm") == GpuLayout((("0", "1", "2"), ("3", "4", "5")), ("6", "7"))
    assert gpu_layout(2, 1, "0,1,2,3", "vllm").idle == ("2", "3")
    assert gpu_layout(2, None, "0,1,2,3", "vllm").idle == ()


_UUIDS = ("GPU-5f2c0d1e-8a3b-4c6d-9e0f-1a2b3c4d5e6f", "GPU-0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0",
          "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
_MIGS = ("MIG-1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d", "MIG-9f8e7d6c-5b4a-3f2e-1d0c-9b8a7f6e5d4c")
_OLD_MIGS = (f"MIG-{_UUIDS[0]}/1/0", f"MIG-{_UUIDS[0]}/2/0")


def test_gpu_and_mig_uuids_are_cut_into_slots_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA_VISIBLE_DEVICES of GPU UUIDs (Slurm, container runtimes) or MIG slices was refused, and --gpu-ids took
    only integers: each id is kept as written, cut into trial slots as indices are."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ",".join(_UUIDS))
    assert gpu_layout(1, None, None, "vllm") == GpuLayout(tuple((u,) for u in _UUIDS), ())
    assert gpu_layout(2, None, None, "vllm") == GpuLayout((_UUIDS[:2],), _UUIDS[2:])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f" {_MIGS[0]} , {_MIGS[1]}")  # spaces around an id are not part of it
    assert gpu_layout(1, None, None, "vllm").slots == ((_MIGS[0],), (_MIGS[1],))
    assert gpu_layout(1, None, ",".join(_OLD_MIGS), "vllm").slots == ((_OLD_MIGS[0],), (_OLD_MIGS[1],))
    assert gpu_layout(1, None, ",".join(_UUIDS[:2]), "sim").slots == ((_UUIDS[0],), (_UUIDS[1],))  # the sim too
    for mixed in (f"0,{_UUIDS[0]}", f"{_UUIDS[0]},{_MIGS[0]}", f"3,{_OLD_MIGS[0]}"):
        with pytest.raises(UsageError, match="mixes .*; give one form"):
            gpu_layout(1, None, mixed, "vllm")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{_UUIDS[0]},{_UUIDS[0].upper()}")
    with pytest.raises(UsageError, match="CUDA_VISIBLE_DEVICES .*: a GPU is listed twice"):
        gpu_layout(1, None, None, "vllm")
    for bad in ("GPU-5f2c", "MIG-GPU-5f2c/1/0", "GPU-5f2c0d1e-8a3b-4c6d-9e0f-1a2b3c4d5e6fzz", "mig-1a2b"):
        with pytest.raises(UsageError, match="is not a GPU id"):
            gpu_layout(1, None, bad, "vllm")


def test_gpu_slots_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without CUDA_VISIBLE_DEVICES the GPUs are the indices nvidia-smi lists, as CUDA_VISIBLE_DEVICES takes them."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    smi = tmp_path / "nvidia-smi"
    lines = "".join(f"{i}, GPU-{i}, NVIDIA H200, 143771, 580.95.05\\n" for i in range(3))
    smi.write_text(f"#!/bin/sh\nprintf '{lines}'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu_layout(1, None, None, "vllm") == GpuLayout((("0",), ("1",), ("2",)), ())


@pytest.mark.slow
def test_a_sim_study_carries_uuid_gpu_ids_to_every_event(tmp_path: Path) -> None:
    """The slots, the StudyStart event and every engine event carry the ids as --gpu-ids gave them."""
    opts = RunOptions(model="flash", engine="sim", p99_ms=500, storage=f"sqlite:///{tmp_path}/s.db", study="uuids",
                      trials=2, repeats=1, top_k=1, workload="random:256:32", max_concurrency=16,
                      gpu_ids=",".join(_UUIDS[:2]), out=str(tmp_path / "out"))
    cfg = build_study_config(opts, choose_engine("sim"))
    assert cfg.gpu_slots == ((_UUIDS[0],), (_UUIDS[1],)) and cfg.settings.gpu_ids == (_UUIDS[0],)
    timeline = _Timeline()
    run_study(cfg, open_storage(cfg.storage_url, exclusive=True), timeline)
    assert timeline.starts and timeline.starts[0].gpu_slots == cfg.gpu_slots
    assert timeline.events and {gpus for _, _, gpus, _, _ in timeline.events} <= {(_UUIDS[0],), (_UUIDS[1],)}


def test_the_sim_engine_is_not_held_to_the_machines_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sim study of 2 or 8 GPUs on a machine whose CUDA_VISIBLE_DEVICES named one GPU (or a GPU's UUID) was
    refused: the sim's GPUs are made up, only --gpu-ids names them."""
    for visible in ("0", "GPU-5f6e0c1a-0000-0000-0000-000000000000"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        assert gpu_layout(2, None, None, "sim").slots == (("0", "1"),)
        assert gpu_layout(8, 2, None, "sim").slots == (tuple(map(str, range(8))), tuple(map(str, range(8, 16))))
        assert gpu_layout(1, None, "3,1", "sim").slots == (("3",), ("1",))


@pytest.mark.slow
def test_a_second_process_on_one_sqlite_study_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    open_storage(url, exclusive=True)  # this process runs trials on it
    for argv in (["run", "--model", "flash", "--engine", "sim", "--p99-ms", "500", "--trials", "1"],
                 ["worker", "--study", "x"]):
        proc = subprocess.run([sys.executable, "-m", "autotune", *argv, "--storage", url], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "is in use by another autotune process" in proc.stderr and "PostgreSQL" in proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    reader = subprocess.run([sys.executable, "-m", "autotune", "studies", "--storage", url, "--json"],
                            capture_output=True, text=True, timeout=120)
    assert reader.returncode == 0, reader.stderr  # reading is not running trials
