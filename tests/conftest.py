from __future__ import annotations

import json
from pathlib import Path

import pytest

# config.json of the weightless GLM-4-9B-shaped model the device kit builds (../shared/device/mkmodel.py).
WEIGHTLESS_FLASH_CONFIG = {
    "architectures": ["Glm4ForCausalLM"], "model_type": "glm4", "attention_bias": True, "head_dim": 128,
    "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 13696, "max_position_embeddings": 131072,
    "num_attention_heads": 32, "num_hidden_layers": 40, "num_key_value_heads": 2, "partial_rotary_factor": 0.5,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "vocab_size": 151552, "eos_token_id": 1,
}


@pytest.fixture
def weightless_flash_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "flash-weightless"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(WEIGHTLESS_FLASH_CONFIG))
    return folder
