"""Model presets and the architecture facts read from a model's config.json.

A :class:`ModelSpec` is what the memory check and the sim engine's performance model need:
layer shapes, parameter counts (total and active for MoE), KV bytes per token, vision encoder size.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from autotune.errors import UsageError

__all__ = ["ModelSpec", "VisionSpec", "PRESETS", "resolve_model", "spec_from_config", "KV_DTYPE_BYTES",
           "WEIGHT_DTYPE_BYTES", "GLM46V_FLASH_CONFIG", "GLM46V_FLASH_PREPROCESSOR"]

# Bytes per element of the KV cache for each --kv-cache-dtype ("auto" follows the weights' dtype).
KV_DTYPE_BYTES: dict[str, float] = {"auto": 2.0, "bfloat16": 2.0, "float16": 2.0, "fp8": 1.0,
                                    "fp8_e4m3": 1.0, "fp8_e5m2": 1.0}
WEIGHT_DTYPE_BYTES: dict[str, float] = {"bfloat16": 2.0, "float16": 2.0, "float32": 4.0, "fp8": 1.0}


@dataclass(frozen=True)
class VisionSpec:
    """Vision tower of a GLM-4.1V-style VLM: enough to size, time and count an image.

    Shapes as vLLM builds the tower (vllm/model_executor/models/glm4_1v.py, ``Glm4vVisionTransformer``; read at
    vllm-project/vllm commit 002d181a): ``depth`` blocks of width ``hidden_size`` whose gated MLP is
    ``out_hidden_size`` wide (not ``intermediate_size``); a 2×2 conv (``downsample``) from ``hidden_size`` to
    ``out_hidden_size`` per merged token; a patch merger (``proj`` out×out, gated MLP ``intermediate_size``).
    Image sizes as the HF image processor resizes them (transformers ``models/glm4v/image_processing_glm4v.py``
    ``smart_resize``; read at huggingface/transformers commit 052f526c): each side a multiple of
    ``patch_size × spatial_merge_size``, the area (× ``temporal_patch_size``, an image is two identical frames)
    kept within ``[min_pixels, max_pixels]`` (the model's preprocessor_config.json ``size``).
    """

    num_layers: int = 24  # vision_config.depth
    hidden_size: int = 1536
    num_heads: int = 12
    out_hidden_size: int = 4096
    intermediate_size: int = 13696  # the patch merger's MLP
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    in_channels: int = 3
    image_size: int = 336  # the learned position embedding's grid (image_size / patch_size)²
    min_pixels: int = 112 * 112  # preprocessor_config.json size.shortest_edge
    max_pixels: int = 28 * 28 * 2 * 6144  # size.longest_edge: 9,633,792 for GLM-4.6V-Flash
    marker_tokens_per_image: int = 2  # <|begin_of_image|> and <|end_of_image|> around each image's tokens

    @property
    def block_params(self) -> int:
        """One ViT block: qkv + proj (4 h²) and the gated MLP (gate, up, down over out_hidden_size)."""
        h = self.hidden_size
        return 4 * h * h + 3 * h * self.out_hidden_size

    @property
    def patch_embed_params(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size**2 * self.hidden_size

    @property
    def merger_params(self) -> int:
        """Per merged token: the 2×2 downsample conv, the merger's proj and its gated MLP."""
        o = self.out_hidden_size
        downsample = self.hidden_size * self.spatial_merge_size**2 * o
        return downsample + o * o + 3 * o * self.intermediate_size

    @property
    def params(self) -> int:
        position = (self.image_size // self.patch_size) ** 2 * self.hidden_size
        return self.num_layers * self.block_params + self.patch_embed_params + self.merger_params + position

    def resized_px(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the image processor's resize. Raises ValueError where it does (aspect > 200)."""
        factor, frames = self.patch_size * self.spatial_merge_size, self.temporal_patch_size
        if width < 1 or height < 1:
            raise ValueError(f"image size {width}x{height} is empty")
        if height < factor or width < factor:  # scaled up until the short side is one merged patch
            scale = max(factor / height, factor / width)
            height, width = int(height * scale), int(width * scale)
        if max(height, width) / min(height, width) > 200:
            aspect = max(height, width) / min(height, width)
            raise ValueError(f"absolute aspect ratio must be smaller than 200, got {aspect}")
        h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
        if frames * h_bar * w_bar > self.max_pixels:
            beta = math.sqrt(frames * height * width / self.max_pixels)
            h_bar = max(factor, math.floor(height / beta / factor) * factor)
            w_bar = max(factor, math.floor(width / beta / factor) * factor)
        elif frames * h_bar * w_bar < self.min_pixels:
            beta = math.sqrt(self.min_pixels / (frames * height * width))
            h_bar = math.ceil(height * beta / factor) * factor
            w_bar = math.ceil(width * beta / factor) * factor
        return w_bar, h_bar

    def patches(self, width: int, height: int) -> int:
        """ViT input patches of one image (its grid_h × grid_w; grid_t is 1 for an image)."""
        w, h = self.resized_px(width, height)
        return (w // self.patch_size) * (h // self.patch_size)

    def llm_tokens(self, width: int, height: int) -> int:
        """Image tokens an image of this size adds to the prompt after the spatial merge."""
        return self.patches(width, height) // self.spatial_merge_size**2

    def prompt_tokens(self, width: int, height: int) -> int:
        """What an image adds to the prompt's token count (the usage's prompt_tokens): its image tokens and
        the begin/end markers around them."""
        return self.llm_tokens(width, height) + self.marker_tokens_per_image

    def encoder_flops(self, width: int, height: int) -> float:
        """FLOPs of one image through the tower: the blocks' GEMMs on every patch, full attention over the
        image's patches (QKᵀ and AV, 2 × 2·n²·h per block), and the downsample and merger on the merged tokens."""
        n = self.patches(width, height)
        merged = n / self.spatial_merge_size**2
        gemm = 2.0 * n * (self.num_layers * self.block_params + self.patch_embed_params)
        attention = 4.0 * n * n * self.hidden_size * self.num_layers
        return gemm + attention + 2.0 * merged * self.merger_params


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

    def tensor_parallel_problem(self, tp: int) -> str:
        """Why vLLM refuses to split this model over ``tp`` GPUs by tensor parallelism; "" where it can. Its
        attention heads must divide by ``tp`` (ModelConfig.verify_with_parallel_config), and its KV heads too, or
        ``tp`` by them where each rank holds a replica of one (QKVParallelLinear)."""
        if self.num_attention_heads % tp:
            return (f"model {self.name!r} has {self.num_attention_heads} attention heads, which tensor-parallel-size "
                    f"{tp} does not divide (vLLM splits them evenly over the GPUs)")
        kv = self.num_kv_heads
        if (kv % tp) if tp < kv else (tp % kv):
            return (f"model {self.name!r} has {kv} KV heads, which tensor-parallel-size {tp} neither divides nor "
                    "is a multiple of (vLLM splits them evenly over the GPUs, or gives each GPU a replica of one)")
        return ""

    def largest_tensor_parallel_size(self, gpus: int) -> int:
        """The largest TP that divides ``gpus`` and that vLLM can split this model by (TP 1 always can)."""
        return max(tp for tp in range(1, gpus + 1) if gpus % tp == 0 and not self.tensor_parallel_problem(tp))

    def with_name(self, name: str, hf_id: str | None = None) -> ModelSpec:
        return replace(self, name=name, hf_id=hf_id or self.hf_id)




def _get(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if key in cfg and cfg[key] is not None:
            return cfg[key]
    return default


def spec_from_config(cfg: dict[str, Any], name: str, hf_id: str, local_path: str | None = None,
                     preprocessor: dict[str, Any] | None = None) -> ModelSpec:
    """Build a ModelSpec from a HF config.json dict (dense, Qwen/GLM/DeepSeek-style MoE, VLM wrappers) and, for a
    VLM, its preprocessor_config.json (the image processor's pixel bounds; GLM-4.6V-Flash's when absent)."""
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
        size = (preprocessor or {}).get("size") or {}
        base = VisionSpec()
        vision = VisionSpec(
            num_layers=int(_get(vcfg, "depth", "num_hidden_layers", default=base.num_layers)),
            hidden_size=int(_get(vcfg, "hidden_size", default=base.hidden_size)),
            num_heads=int(_get(vcfg, "num_heads", "num_attention_heads", default=base.num_heads)),
            out_hidden_size=int(_get(vcfg, "out_hidden_size", default=base.out_hidden_size)),
            intermediate_size=int(_get(vcfg, "intermediate_size", default=base.intermediate_size)),
            patch_size=int(_get(vcfg, "patch_size", default=base.patch_size)),
            spatial_merge_size=int(_get(vcfg, "spatial_merge_size", default=base.spatial_merge_size)),
            temporal_patch_size=int(_get(vcfg, "temporal_patch_size", default=base.temporal_patch_size)),
            in_channels=int(_get(vcfg, "in_channels", default=base.in_channels)),
            image_size=int(_get(vcfg, "image_size", default=base.image_size)),
            min_pixels=int(_get(size, "shortest_edge", "min_pixels", default=base.min_pixels)),
            max_pixels=int(_get(size, "longest_edge", "max_pixels", default=base.max_pixels)),
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


# GLM-4.6V-Flash's config.json (Glm4vForConditionalGeneration: the GLM-4-9B-shaped text backbone of GLM-4.1V-9B
# with GLM-4.1V's vision tower). Sources, as no copy of zai-org/GLM-4.6V-Flash's own config.json is stored here:
# - transformers Glm4vConfig / Glm4vTextConfig / Glm4vVisionConfig defaults (models/glm4v/configuration_glm4v.py,
#   huggingface/transformers commit 05cd1ec1): the GLM-4.1V-9B shapes (40 layers, hidden 4096, 32 heads, 2 KV heads,
#   MLP 13696, vocab 151552; vision depth 24, hidden 1536, 12 heads, out 4096, merger 13696, patch 14, merge 2,
#   temporal 2);
# - the GGUF metadata of GLM-4.6V-Flash quoted in ggml-org/llama.cpp issue #18164 (head_count 32, head_count_kv 2,
#   feed_forward_length 13696, rope freq_base 500000, rope sections [8, 12, 12], 151552 tokens);
# - the config.json of fine-tunes of it on the Hugging Face hub (AiAsistent/GLM-4.6V-Flash-Polymath-Instruct,
#   luli2949/glyph_dim4): image_token_id 151363 and video_token_id 151364 (GLM-4.5V's, not GLM-4.1V's 151343),
#   max_position_embeddings 131072, eos [151329, 151336, 151338], pad 151329;
# - zai-org/GLM-V issue #220: GLM-4.6V-Flash and GLM-4.1V-Thinking have the same architecture.
# rope in the transformers-4.57 spelling (rope_scaling + rope_theta + partial_rotary_factor), which transformers 5
# still reads (Glm4vTextConfig pops rope_scaling into rope_parameters).
GLM46V_FLASH_CONFIG: dict[str, Any] = {
    "architectures": ["Glm4vForConditionalGeneration"],
    "model_type": "glm4v",
    "image_start_token_id": 151339, "image_end_token_id": 151340,
    "video_start_token_id": 151341, "video_end_token_id": 151342,
    "image_token_id": 151363, "video_token_id": 151364,
    "tie_word_embeddings": False,
    "text_config": {
        "model_type": "glm4v_text", "vocab_size": 151552, "hidden_size": 4096, "intermediate_size": 13696,
        "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 2, "hidden_act": "silu",
        "attention_bias": True, "attention_dropout": 0.0, "rms_norm_eps": 1e-05, "initializer_range": 0.02,
        "max_position_embeddings": 131072, "use_cache": True, "dtype": "bfloat16",
        "pad_token_id": 151329, "eos_token_id": [151329, 151336, 151338],
        "partial_rotary_factor": 0.5, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "default", "mrope_section": [8, 12, 12]},
    },
    "vision_config": {
        "depth": 24, "hidden_size": 1536, "num_heads": 12, "intermediate_size": 13696, "out_hidden_size": 4096,
        "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "image_size": 336, "in_channels": 3,
        "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0, "hidden_dropout_prob": 0.0,
        "rms_norm_eps": 1e-05, "initializer_range": 0.02,
    },
}
# Its preprocessor_config.json: the same 367 bytes in every copy of the model on the hub that was checked
# (a2s-ai/GLM-4.6V-Flash, "fork from zai-org"; Firworks/GLM-4.6V-Flash-nvfp4; animaslabs/GLM-4.6V-Flash-8bit).
GLM46V_FLASH_PREPROCESSOR: dict[str, Any] = {
    "size": {"shortest_edge": 12544, "longest_edge": 9633792},
    "do_rescale": True, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Glm46VImageProcessor", "processor_class": "Glm46VProcessor",
}
_FLASH = spec_from_config(GLM46V_FLASH_CONFIG, "flash", "zai-org/GLM-4.6V-Flash",
                          preprocessor=GLM46V_FLASH_PREPROCESSOR)
# GLM-4.6V: 106B MoE, 12B active; 128 routed experts top-8 + 1 shared, first layer dense.
_GLM46V = ModelSpec(
    name="glm-4.6v", hf_id="zai-org/GLM-4.6V", architecture="Glm4vMoeForConditionalGeneration",
    num_layers=46, hidden_size=4096, num_attention_heads=96, num_kv_heads=8, head_dim=128,
    intermediate_size=10944, vocab_size=151552, max_position_embeddings=131072,
    num_experts=128, num_experts_per_tok=8, num_shared_experts=1, moe_intermediate_size=1408, first_k_dense=1,
    vision=VisionSpec(),
)
PRESETS: dict[str, ModelSpec] = {"flash": _FLASH, "glm-4.6v": _GLM46V}


def _read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object file beside config.json, or None where there is none (or it is not an object)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    return data if isinstance(data, dict) else None


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
        return spec_from_config(cfg, name=model, hf_id=folder, local_path=folder,
                                preprocessor=_read_json_object(cfg_path.parent / "preprocessor_config.json"))
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
