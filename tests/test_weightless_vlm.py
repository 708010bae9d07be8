"""The weightless GLM-4.6V-Flash folder (autotune/testing/weightless_vlm.py): what vLLM reads from it, checked
without vLLM. The files parse; the tokenizer covers every id with GLM's special tokens at the ids the config
names; transformers loads config, tokenizer, chat template and image processor, and the image processor's patch
counts are the sim's."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from autotune.models import GLM46V_FLASH_CONFIG, GLM46V_FLASH_PREPROCESSOR, resolve_model
from autotune.testing.weightless_vlm import SPECIAL_TOKENS, build_folder, check_folder, main


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vlm")
    build_folder(out)
    return out


def test_config_is_the_real_architecture_and_the_sim_reads_it(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["Glm4vForConditionalGeneration"] and config["dtype"] == "bfloat16"
    assert config["text_config"] == GLM46V_FLASH_CONFIG["text_config"]
    assert config["vision_config"] == GLM46V_FLASH_CONFIG["vision_config"]
    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    assert preprocessor["size"] == GLM46V_FLASH_PREPROCESSOR["size"]
    assert preprocessor["image_processor_type"] == "Glm46VImageProcessor"
    video = json.loads((folder / "video_preprocessor_config.json").read_text())
    assert video["video_processor_type"] == "Glm46VVideoProcessor" and video["size"]["longest_edge"] == 100352000
    # the folder as a model: the same architecture as the flash preset (the weights the memory plan counts)
    model, preset = resolve_model(str(folder)), resolve_model("flash")
    assert model.total_params == preset.total_params and model.vision == preset.vision
    assert model.kv_bytes_per_token() == preset.kv_bytes_per_token() == 40 * 2 * 2 * 128 * 2


def test_glm4v_processor_family_names_the_older_classes(tmp_path: Path) -> None:
    build_folder(tmp_path, "glm4v")
    preprocessor = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert (preprocessor["image_processor_type"], preprocessor["processor_class"]) == \
        ("Glm4vImageProcessor", "Glm4vProcessor")


def test_tokenizer_covers_every_id_with_the_special_tokens_at_the_config_ids(folder: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    vocab_size = GLM46V_FLASH_CONFIG["text_config"]["vocab_size"]
    assert tok.get_vocab_size() == vocab_size
    assert sorted(tok.get_vocab().values()) == list(range(vocab_size))  # every id, once
    cfg = GLM46V_FLASH_CONFIG
    placeholder = tok.encode("<|begin_of_image|><|image|><|end_of_image|>").ids
    assert placeholder == [cfg["image_start_token_id"], cfg["image_token_id"], cfg["image_end_token_id"]]
    assert tok.token_to_id("<|video|>") == cfg["video_token_id"] == 151364
    for eos in cfg["text_config"]["eos_token_id"]:
        assert tok.id_to_token(eos) == SPECIAL_TOKENS[eos]
    ids = [1000, 29999, 151551, 5]  # ordinary ids up to the last one decode and encode back to themselves
    assert tok.encode(tok.decode(ids)).ids == ids
    assert tok.encode("an unknown word").ids == [0, 0, 0]  # <unk>: one token per word
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [151329, 151336, 151338]


@pytest.mark.slow
def test_transformers_loads_it_and_counts_image_patches_as_the_sim(folder: Path) -> None:
    lines = check_folder(folder)
    assert any(line.startswith("image processor: ") for line in lines), lines


def test_bad_output_folder_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main([str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cannot write {blocker / 'sub'}") and err.count("\n") == 1
