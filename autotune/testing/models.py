"""Model folders that tests and benchmarks share."""
from __future__ import annotations

__all__ = ["WEIGHTLESS_FLASH_CONFIG"]

# config.json of the weightless GLM-4-9B-shaped model (GLM-4.6V-Flash's text backbone) that the device kit builds
# (../shared/device/mkmodel.py) and the real H100 and H200 runs served with `--load-format dummy`.
WEIGHTLESS_FLASH_CONFIG = {
    "architectures": ["Glm4ForCausalLM"], "model_type": "glm4", "attention_bias": True, "head_dim": 128,
    "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 13696, "max_position_embeddings": 131072,
    "num_attention_heads": 32, "num_hidden_layers": 40, "num_key_value_heads": 2, "partial_rotary_factor": 0.5,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "vocab_size": 151552, "eos_token_id": 1,
}
