"""Model presets and the architecture facts read from a model's config.json.

A :class:`ModelSpec` is what the memory check and the sim engine's performance model need:
layer shapes, parameter counts (total and active for MoE), KV bytes per token, vision encoder size.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from autotune.errors import UsageError

__all__ = ["ModelSpec", "PRESETS", "resolve_model", "spec_from_config", "KV_DTYPE_BYTES", "WEIGHT_DTYPE_BYTES"]

# Bytes per element of the KV cache for each --kv-cache-dtype ("auto" follows the weights' dtype).
KV_DTYPE_BYTES: dict[str, float] = {"auto": 2.0, "bfloat16": 2.0, "float16": 2.0, "fp8": 1.0,
                                    "fp8_e4m3": 1.0, "fp8_e5m2": 1.0}
WEIGHT_DTYPE_BYTES: dict[str, float] = {"bfloat16": 2.0, "float16": 2.0, "float32": 4.0, "fp8": 1.0}


@dataclass(frozen=True)
class VisionSpec:
    """Vision tower of a VLM: enough to cost an image (parameters, tokens per image)."""

    num_layers: int = 24
    hidden_size: int = 1536
    intermediate_size: int = 13696
    patch_size: int = 14
    spatial_merge_size: int = 2

    @property
    def params(self) -> int:
        per_layer = 4 * self.hidden_size**2 + 2 * self.hidden_size * self.intermediate_size
        return self.num_layers * per_layer

    def patches(self, width: int, height: int) -> int:
        return max(1, (width // self.patch_size) * (height // self.patch_size))

    def llm_tokens(self, width: int, height: int) -> int:
        """Tokens an image of this size adds to the prompt after the spatial merge."""
        return max(1, self.patches(width, height) // (self.spatial_merge_size**2))


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of a decoder LLM (dense or MoE), optionally with a vision tower."""

    name: str  # preset name, HF id or local path, as the user gave it
    hf_id: str  # what `vllm serve` is given
    architecture: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    weight_dtype: str = "bfloat16"
    max_position_embeddings: int = 131072
    # MoE (num_experts == 0: dense)
    num_experts: int = 0
    num_experts_per_tok: int = 0
    num_shared_experts: int = 0
    moe_intermediate_size: int = 0
    first_k_dense: int = 0
    vision: VisionSpec | None = None
    local_path: str | None = None  # folder holding config.json, when the model is on disk
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_vlm(self) -> bool:
        return self.vision is not None

    @property
    def attention_params_per_layer(self) -> int:
        q = self.hidden_size * self.num_attention_heads * self.head_dim
        kv = 2 * self.hidden_size * self.num_kv_heads * self.head_dim
        return 2 * q + kv  # q and o projections, k and v projections

    @property
    def dense_mlp_params(self) -> int:
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def expert_params(self) -> int:
        return 3 * self.hidden_size * self.moe_intermediate_size

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.first_k_dense if self.is_moe else 0

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def total_params(self) -> int:
        """All weights, every expert included, vision tower included."""
        dense_layers = self.num_layers - self.num_moe_layers
        moe_layer = (self.num_experts + self.num_shared_experts) * self.expert_params + self.hidden_size * self.num_experts
        body = self.num_layers * self.attention_params_per_layer + dense_layers * self.dense_mlp_params
        body += self.num_moe_layers * moe_layer
        vision = self.vision.params if self.vision else 0
        return body + self.embedding_params + vision

    @property
    def active_params_per_token(self) -> int:
        """Weights one decoded token multiplies with (routed top-k + shared experts; LM head once)."""
        dense_layers = self.num_layers - self.num_moe_layers
        moe_layer = (self.num_experts_per_tok + self.num_shared_experts) * self.expert_params
        body = self.num_layers * self.attention_params_per_layer + dense_layers * self.dense_mlp_params
        return body + self.num_moe_layers * moe_layer + self.vocab_size * self.hidden_size

    def weight_bytes(self, quantization: str | None = None) -> float:
        dtype = "fp8" if quantization == "fp8" else self.weight_dtype
        return self.total_params * WEIGHT_DTYPE_BYTES.get(dtype, 2.0)

    def kv_bytes_per_token(self, kv_cache_dtype: str = "auto") -> float:
        """layers × 2 (K and V) × KV heads × head dim × bytes per element."""
        if kv_cache_dtype not in KV_DTYPE_BYTES:
            raise UsageError(f"unknown kv-cache-dtype {kv_cache_dtype!r}; known: {', '.join(KV_DTYPE_BYTES)}")
        elem = KV_DTYPE_BYTES[kv_cache_dtype] if kv_cache_dtype != "auto" else WEIGHT_DTYPE_BYTES.get(self.weight_dtype, 2.0)
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * elem

    def with_name(self, name: str, hf_id: str | None = None) -> ModelSpec:
        return replace(self, name=name, hf_id=hf_id or self.hf_id)


# GLM-4.6V-Flash: GLM-4-9B text backbone (what ../shared/device/mkmodel.py builds) + GLM-4.1V vision tower.
_FLASH = ModelSpec(
    name="flash", hf_id="zai-org/GLM-4.6V-Flash", architecture="Glm4vForConditionalGeneration",
    num_layers=40, hidden_size=4096, num_attention_heads=32, num_kv_heads=2, head_dim=128,
    intermediate_size=13696, vocab_size=151552, max_position_embeddings=131072,
    vision=VisionSpec(),
)
# GLM-4.6V: 106B MoE, 12B active; 128 routed experts top-8 + 1 shared, first layer dense.
_GLM46V = ModelSpec(
    name="glm-4.6v", hf_id="zai-org/GLM-4.6V", architecture="Glm4vMoeForConditionalGeneration",
    num_layers=46, hidden_size=4096, num_attention_heads=96, num_kv_heads=8, head_dim=128,
    intermediate_size=10944, vocab_size=151552, max_position_embeddings=131072,
    num_experts=128, num_experts_per_tok=8, num_shared_experts=1, moe_intermediate_size=1408, first_k_dense=1,
    vision=VisionSpec(),
)
PRESETS: dict[str, ModelSpec] = {"flash": _FLASH, "glm-4.6v": _GLM46V}


def _get(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if key in cfg and cfg[key] is not None:
            return cfg[key]
    return default


def spec_from_config(cfg: dict[str, Any], name: str, hf_id: str, local_path: str | None = None) -> ModelSpec:
    """Build a ModelSpec from a HF config.json dict (dense, Qwen/GLM/DeepSeek-style MoE, VLM wrappers)."""
    text = cfg.get("text_config") or cfg
    try:
        hidden = int(_get(text, "hidden_size", "d_model"))
        heads = int(_get(text, "num_attention_heads", "n_head"))
        layers = int(_get(text, "num_hidden_layers", "n_layer", "num_layers"))
    except (TypeError, ValueError):
        raise UsageError(f"{name}: config.json lacks hidden_size / num_attention_heads / num_hidden_layers") from None
    vision = None
    vcfg = cfg.get("vision_config")
    if isinstance(vcfg, dict):
        vision = VisionSpec(
            num_layers=int(_get(vcfg, "depth", "num_hidden_layers", default=24)),
            hidden_size=int(_get(vcfg, "hidden_size", default=1536)),
            intermediate_size=int(_get(vcfg, "intermediate_size", default=13696)),
            patch_size=int(_get(vcfg, "patch_size", default=14)),
            spatial_merge_size=int(_get(vcfg, "spatial_merge_size", default=2)),
        )
    archs = cfg.get("architectures") or ["unknown"]
    return ModelSpec(
        name=name, hf_id=hf_id, architecture=str(archs[0]),
        num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
        num_kv_heads=int(_get(text, "num_key_value_heads", "multi_query_group_num", default=heads)),
        head_dim=int(_get(text, "head_dim", default=hidden // heads)),
        intermediate_size=int(_get(text, "intermediate_size", "ffn_hidden_size", default=4 * hidden)),
        vocab_size=int(_get(text, "vocab_size", "padded_vocab_size", default=32000)),
        tie_word_embeddings=bool(_get(cfg, "tie_word_embeddings", default=False)),
        weight_dtype=str(_get(text, "torch_dtype", "dtype", default="bfloat16")).replace("torch.", ""),
        max_position_embeddings=int(_get(text, "max_position_embeddings", "seq_length", default=131072)),
        num_experts=int(_get(text, "n_routed_experts", "num_experts", "num_local_experts", default=0) or 0),
        num_experts_per_tok=int(_get(text, "num_experts_per_tok", "moe_topk", default=0) or 0),
        num_shared_experts=int(_get(text, "n_shared_experts", "num_shared_experts", default=0) or 0),
        moe_intermediate_size=int(_get(text, "moe_intermediate_size", default=0) or 0),
        first_k_dense=int(_get(text, "first_k_dense_replace", default=0) or 0),
        vision=vision, local_path=local_path,
    )


def _hf_cached_config(hf_id: str) -> dict[str, Any] | None:
    """config.json of a HF id from the local HF cache, if it has been downloaded (no network here)."""
    try:
        from huggingface_hub import try_to_load_from_cache  # optional: present wherever vLLM is
    except ImportError:
        return None
    path = try_to_load_from_cache(hf_id, "config.json")
    if isinstance(path, str) and Path(path).is_file():
        return json.loads(Path(path).read_text())
    return None


def resolve_model(model: str) -> ModelSpec:
    """A preset name, a local folder with config.json, or a HF id whose config.json is in the local cache."""
    if model in PRESETS:
        return PRESETS[model]
    path = Path(model).expanduser()
    if path.exists():
        cfg_path = path / "config.json" if path.is_dir() else path
        if not cfg_path.is_file():
            raise UsageError(f"model folder {model} has no config.json")
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UsageError(f"cannot read {cfg_path}: {e}") from None
        folder = str(cfg_path.parent.resolve())
        return spec_from_config(cfg, name=model, hf_id=folder, local_path=folder)
    if "/" in model and not model.startswith(("/", ".")):
        for preset in PRESETS.values():
            if preset.hf_id.lower() == model.lower():
                return preset.with_name(model, hf_id=preset.hf_id)
        cfg = _hf_cached_config(model)
        if cfg is not None:
            return spec_from_config(cfg, name=model, hf_id=model)
        raise UsageError(f"model {model!r}: its config.json is not in the local Hugging Face cache; "
                         f"download it first (huggingface-cli download {model} config.json) or pass a local folder")
    raise UsageError(f"unknown model preset {model!r}; presets: {', '.join(PRESETS)}, or give a HF id or a local folder")
