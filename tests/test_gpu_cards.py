"""The card a study on vLLM plans memory with: the run's GPUs as nvidia-smi lists them. An NVIDIA GPU no built-in card
names (an A100, a B200) once made `--engine auto` fall back to the sim ("no NVIDIA GPU is visible"), and `--engine
vllm` plan every point with the H100's 80 GB: two B200s' study of GLM-4.6V refused every point unlaunched."""
from __future__ import annotations

from pathlib import Path

import pytest

from autotune.config import RunOptions, build_study_config, choose_engine
from autotune.config import EngineChoice
from autotune.gpus import card_caveats, detect_gpu, load_gpu, measured_card, visible_gpus
from autotune.memory import plan_memory
from autotune.models import resolve_model
from autotune.profile import environment
from autotune.study import study_fingerprint

H200 = "NVIDIA H200, 143771"
H100_NVL = "NVIDIA H100 NVL, 95830"
B200 = "NVIDIA B200, 183359"
A100_40 = "NVIDIA A100-SXM4-40GB, 40960"


def fake_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *gpus: str, with_vllm: bool = False) -> None:
    """nvidia-smi (and `vllm`) on PATH: GPU i listed as "i, GPU-000i, NAME, MiB, DRIVER" (csv, noheader, nounits)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    lines = "".join(f"{i}, GPU-0000000{i}, {gpu}, 580.95.05\\n" for i, gpu in enumerate(gpus))
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\nprintf '{lines}'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    if with_vllm:
        (bin_dir / "vllm").write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / "vllm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_nvidia_smis_list_is_read_once_for_names_indices_and_memory(tmp_path, monkeypatch):
    fake_machine(tmp_path, monkeypatch, H200, "NVIDIA H200, [N/A]")
    first, second = visible_gpus()
    assert (first.index, first.uuid, first.name) == ("0", "GPU-00000000", "NVIDIA H200")
    assert first.memory_gib == pytest.approx(143771 / 1024) and second.memory_gib != second.memory_gib  # NaN
    assert detect_gpu() == "h200" and first.driver == "580.95.05"
    hardware, _ = environment("vllm", "h200", 2)  # what a study and its profile record of the machine
    assert (hardware.gpu_name, hardware.driver, hardware.gpu_memory) == ("NVIDIA H200", "580.95.05", "143771 MiB")


def test_a_built_in_card_is_kept_where_the_memory_agrees(tmp_path, monkeypatch):
    fake_machine(tmp_path, monkeypatch, H200, H200)
    assert measured_card(["0", "1"]) == load_gpu("h200") and not card_caveats(load_gpu("h200"))


def test_another_size_of_a_known_card_gets_its_own_memory(tmp_path, monkeypatch):
    fake_machine(tmp_path, monkeypatch, H100_NVL)
    card = measured_card(["0"])
    h100 = load_gpu("h100")
    assert (card.name, card.base, card.card_ref) == ("h100-nvl", "h100", "h100")
    assert card.memory_gib == pytest.approx(95830 / 1024, abs=1e-3) and card.hbm_tb_s == h100.hbm_tb_s
    [caveat] = card_caveats(card)
    assert caveat.startswith("GPU 'NVIDIA H100 NVL' has 93.6 GiB, the h100 card 79.6 GiB: ")


def test_a_gpu_no_card_names_gets_its_memory_and_the_fallback_cards_constants(tmp_path, monkeypatch):
    """The smallest memory of the run's GPUs; GPUs by index or UUID; none of them listed (MIG slices): None."""
    fake_machine(tmp_path, monkeypatch, B200, A100_40, B200)
    assert measured_card(["0", "2"]).memory_gib == pytest.approx(183359 / 1024, abs=1e-3)
    card = measured_card(["GPU-00000000", "GPU-00000001"])
    assert (card.name, card.base, card.memory_gib) == ("a100-sxm4-40gb", "h100", 40.0)
    assert "is none of autotune's cards (h100, h200)" in card_caveats(card)[0]
    assert measured_card(["MIG-GPU-00000000-0000-0000-0000-000000000000/1/0"]) is None


def test_auto_runs_vllm_on_a_gpu_no_card_names(tmp_path, monkeypatch):
    fake_machine(tmp_path, monkeypatch, B200, with_vllm=True)
    assert choose_engine("auto") == EngineChoice("vllm", "")
    fake_machine(tmp_path / "none", monkeypatch, with_vllm=True)
    assert choose_engine("auto").engine == "sim"


def test_a_vllm_study_on_two_b200s_plans_glm_4_6v_on_their_memory(tmp_path, monkeypatch):
    """GLM-4.6V's ~100 GiB of weights per GPU at TP 2: on the H100's 80 GB every point was refused unlaunched; two
    B200s hold it. The study's GPU type is theirs, and its start line and profile say what the plan rests on."""
    fake_machine(tmp_path, monkeypatch, B200, B200)
    opts = RunOptions(model="glm-4.6v", gpus=2, p99_ms=500, engine="vllm", storage=f"sqlite:///{tmp_path}/s.db",
                      out=str(tmp_path / "out"))
    cfg = build_study_config(opts, EngineChoice("vllm", ""))
    flags = {"tensor-parallel-size": 2}
    model = resolve_model("glm-4.6v")
    assert plan_memory(model, cfg.settings.gpu, flags).fits
    assert not plan_memory(model, load_gpu("h100"), flags).fits
    assert study_fingerprint(cfg).gpu_type == "b200"
    assert cfg.settings.card_caveats() == card_caveats(cfg.settings.gpu) != []
    assert build_study_config(opts.model_copy(update={"gpu_type": "h100"}), EngineChoice("vllm", "")).settings.gpu \
        == load_gpu("h100")  # --gpu-type is the user's word


def test_the_list_is_asked_once_per_process_where_nvidia_smi_answered(tmp_path, monkeypatch):
    """A run's start reads it for its engine, its GPUs, its card and its record of the machine: one nvidia-smi call.
    One that answered nothing is asked again."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls, answer = tmp_path / "calls", tmp_path / "answer"
    answer.write_text("")
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\necho x >> {calls}\ncat {answer}\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    assert visible_gpus() == [] and visible_gpus() == []
    answer.write_text(f"0, GPU-00000000, {H200}, 580.95.05\n")
    assert len(visible_gpus()) == 1 and detect_gpu() == "h200" and measured_card(["0"]) == load_gpu("h200")
    assert calls.read_text().count("x") == 3  # twice without an answer, then once
