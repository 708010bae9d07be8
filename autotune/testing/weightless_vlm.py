"""A weightless GLM-4.6V-Flash folder for ``vllm serve DIR --load-format dummy``: the real architecture, random
weights, so that vLLM builds the same model (Glm4vForConditionalGeneration, its vision tower included), runs the
same multimodal processor and profiles memory as for the real checkpoint, without 20 GB of weights.

    python -m autotune.testing.weightless_vlm OUT_DIR [--processor-family auto|glm46v|glm4v] [--check]

What it writes, and where each part comes from:
- ``config.json``: :data:`autotune.models.GLM46V_FLASH_CONFIG` (the sources are listed there).
- ``preprocessor_config.json`` and ``video_preprocessor_config.json``: the image processor's settings
  (:data:`autotune.models.GLM46V_FLASH_PREPROCESSOR`); the video one as the hub's copies of the model carry it
  (mlx-community/GLM-4.6V-Flash-4bit: longest_edge 100352000). Their classes are ``Glm46V*`` as in the model's
  files; ``--processor-family glm4v`` names ``Glm4v*`` instead for a transformers without GLM-4.6V (the same
  image processing: transformers' glm46v modules derive from glm4v's). ``auto``: glm46v when the installed
  transformers has it.
- a tokenizer (``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``): every id of the 151,552-token
  vocabulary is a token, so whatever a random-weight model samples decodes; GLM's special tokens sit at their
  real ids (:data:`SPECIAL_TOKENS`). The ordinary tokens are words ``t<id>`` split at whitespace (a WordLevel
  model), so decoding ids and encoding the text gives the same ids back, and a word it does not know is one
  ``<unk>`` token. The real tokenizer (BPE, 151,329 ordinary tokens) is not reproduced: the prompt's token
  counts differ from the real model's for the same text, not for the same ids.
- ``generation_config.json``: the EOS ids of the config.

``--check`` loads the folder with transformers (config, tokenizer, chat template, image processor and, where
torchvision is installed, the whole processor) and checks the ids, the shapes and images' patch counts against
:class:`autotune.models.VisionSpec`; it needs transformers, jinja2 and Pillow (all there wherever vLLM is).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from autotune.models import GLM46V_FLASH_CONFIG, GLM46V_FLASH_PREPROCESSOR, spec_from_config

__all__ = ["SPECIAL_TOKENS", "CHAT_TEMPLATE", "build_folder", "check_folder", "main"]

_CFG = GLM46V_FLASH_CONFIG
_TEXT = _CFG["text_config"]
UNK_TOKEN = "<unk>"  # id 0: a word outside the vocabulary
# GLM-4's special tokens 151329-151342 as its tokenizer has them (THUDM/glm-4-9b added_tokens.json, the same in
# GLM-4.1V and GLM-4.5V), and the image/video placeholders at the ids the config names (151363, 151364: the
# <|image|> and <|video|> that transformers' Glm4vProcessor looks up by name). The real tokenizer's tokens at
# 151343-151362 (GLM-4.5's audio, thinking and tool-call tokens) are not needed by vLLM's image path and were not
# found in a stored source: they are reserved placeholders here.
SPECIAL_TOKENS: dict[int, str] = {
    0: UNK_TOKEN,
    151329: "<|endoftext|>", 151330: "[MASK]", 151331: "[gMASK]", 151332: "[sMASK]", 151333: "<sop>", 151334: "<eop>",
    151335: "<|system|>", 151336: "<|user|>", 151337: "<|assistant|>", 151338: "<|observation|>",
    _CFG["image_start_token_id"]: "<|begin_of_image|>", _CFG["image_end_token_id"]: "<|end_of_image|>",
    _CFG["video_start_token_id"]: "<|begin_of_video|>", _CFG["video_end_token_id"]: "<|end_of_video|>",
    **{i: f"<|reserved_{i}|>" for i in range(151343, 151363)},
    _CFG["image_token_id"]: "<|image|>", _CFG["video_token_id"]: "<|video|>",
}
# GLM's chat format ([gMASK]<sop>, a role token per turn, the assistant's turn opened): an image part becomes the
# placeholder vLLM's GLM-4V processor expands (glm4_1v.py get_placeholder_str). Iterating over message['content']
# makes vLLM pass content parts to it ("openai" content format). Written here, not copied from the model's own.
CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{%- for m in messages -%}"
    "{%- set role = {'system': '<|system|>', 'user': '<|user|>', 'assistant': '<|assistant|>', "
    "'tool': '<|observation|>'}[m['role']] -%}"
    "{{ role ~ '\\n' }}"
    "{%- if m['content'] is string -%}{{ m['content'] }}"
    "{%- else -%}{%- for part in m['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- elif part['type'] in ('image', 'image_url') -%}<|begin_of_image|><|image|><|end_of_image|>"
    "{%- elif part['type'] in ('video', 'video_url') -%}<|begin_of_video|><|video|><|end_of_video|>"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)
_VIDEO_LONGEST_EDGE = 100352000  # video_preprocessor_config.json size.longest_edge (mlx-community/GLM-4.6V-Flash-4bit)


def ordinary_token(token_id: int) -> str:
    return f"t{token_id}"


def _tokenizer_json() -> dict[str, Any]:
    """tokenizer.json (the `tokenizers` library's format, version 1.0): WordLevel over whitespace-split words."""
    vocab_size = int(_TEXT["vocab_size"])
    vocab = {SPECIAL_TOKENS.get(i, ordinary_token(i)): i for i in range(vocab_size)}
    added = [{"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for i, text in sorted(SPECIAL_TOKENS.items())]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK_TOKEN}}


def _processor_names(family: str) -> tuple[str, str, str]:
    """(image processor, video processor, processor) class names of a family."""
    prefix = {"glm46v": "Glm46V", "glm4v": "Glm4v"}[family]
    return f"{prefix}ImageProcessor", f"{prefix}VideoProcessor", f"{prefix}Processor"


def resolve_processor_family(family: str) -> str:
    """``auto``: glm46v where the installed transformers has GLM-4.6V's processor (or none is installed), else glm4v."""
    if family != "auto":
        return family
    try:
        import transformers
    except ImportError:
        return "glm46v"
    return "glm46v" if hasattr(transformers, "Glm46VProcessor") else "glm4v"


def build_folder(out_dir: Path, processor_family: str = "glm46v") -> list[str]:
    """Write the folder; returns the file names written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    image_cls, video_cls, processor_cls = _processor_names(processor_family)
    eos_ids = list(_TEXT["eos_token_id"])
    config = copy.deepcopy(_CFG)
    config["dtype"] = _TEXT["dtype"]  # vLLM's --dtype auto reads it from the top level
    preprocessor = {**GLM46V_FLASH_PREPROCESSOR, "image_processor_type": image_cls, "processor_class": processor_cls}
    video = {**{k: v for k, v in GLM46V_FLASH_PREPROCESSOR.items() if k != "image_processor_type"},
             "size": {**GLM46V_FLASH_PREPROCESSOR["size"], "longest_edge": _VIDEO_LONGEST_EDGE},
             "video_processor_type": video_cls, "processor_class": processor_cls}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": int(_TEXT["max_position_embeddings"]),
        "eos_token": SPECIAL_TOKENS[eos_ids[0]], "pad_token": SPECIAL_TOKENS[int(_TEXT["pad_token_id"])],
        "unk_token": UNK_TOKEN, "clean_up_tokenization_spaces": False, "processor_class": processor_cls,
        "chat_template": CHAT_TEMPLATE,  # for transformers that do not read chat_template.jinja
    }
    files: dict[str, Any] = {
        "config.json": config,
        "preprocessor_config.json": preprocessor,
        "video_preprocessor_config.json": video,
        "generation_config.json": {"eos_token_id": eos_ids, "pad_token_id": int(_TEXT["pad_token_id"])},
        "tokenizer_config.json": tokenizer_config,
        "tokenizer.json": _tokenizer_json(),
    }
    for name, data in files.items():
        (out_dir / name).write_text(json.dumps(data, indent=None if name == "tokenizer.json" else 2) + "\n")
    (out_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return [*files, "chat_template.jinja"]


def check_folder(folder: Path, image_px: tuple[int, int] = (896, 672)) -> list[str]:
    """Load the folder with transformers and check it against the config and :class:`VisionSpec`; returns what was
    checked, one line each. Raises AssertionError on a mismatch, ImportError without transformers."""
    from transformers import AutoConfig, AutoTokenizer

    done = []
    config = AutoConfig.from_pretrained(str(folder))
    text = config.text_config
    assert (text.num_hidden_layers, text.hidden_size, text.num_attention_heads, text.num_key_value_heads) == \
        (40, 4096, 32, 2), f"text shapes {text}"
    rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
    theta = rope.get("rope_theta", getattr(text, "rope_theta", None))  # transformers 5 moves it into rope_parameters
    partial = rope.get("partial_rotary_factor", getattr(text, "partial_rotary_factor", None))
    assert list(rope.get("mrope_section", [])) == [8, 12, 12] and theta == 500000 and partial == 0.5, f"rope {rope}"
    done.append(f"config: {type(config).__name__}, text 40 x 4096, 32 heads, 2 KV heads, mrope {rope}")
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert len(tok) == _TEXT["vocab_size"], f"len(tokenizer) {len(tok)}"
    for token_id, text_ in SPECIAL_TOKENS.items():
        assert tok.convert_tokens_to_ids(text_) == token_id, f"{text_} -> {tok.convert_tokens_to_ids(text_)}"
    ids = [1000, 2345, 151363, 77]
    assert tok.encode(tok.decode(ids), add_special_tokens=False) == ids
    done.append(f"tokenizer: {len(tok)} ids, {len(SPECIAL_TOKENS)} special tokens at their ids, "
                "decode/encode round trip")
    prompt = tok.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                                     tokenize=False, add_generation_prompt=True)
    assert prompt == "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>hi<|assistant|>\n", prompt
    done.append(f"chat template: {prompt!r}")
    from PIL import Image
    from transformers import AutoImageProcessor

    image_processor = AutoImageProcessor.from_pretrained(str(folder))
    vision = spec_from_config(_CFG, "check", "check", preprocessor=GLM46V_FLASH_PREPROCESSOR).vision
    assert vision is not None
    for width, height in (image_px, (448, 448), (40, 24), (4000, 3000)):
        grid = image_processor(images=[Image.new("RGB", (width, height))], return_tensors="np")["image_grid_thw"][0]
        patches = int(grid[0] * grid[1] * grid[2])
        assert patches == vision.patches(width, height), \
            f"{width}x{height}: grid {grid.tolist()}, VisionSpec counts {vision.patches(width, height)} patches"
    done.append(f"image processor: {type(image_processor).__name__}, patches as VisionSpec counts them "
                f"({image_px[0]}x{image_px[1]}: {vision.llm_tokens(*image_px)} image tokens)")
    try:
        import torchvision  # noqa: F401 - transformers' video processor, part of the full processor, needs it
    except ImportError:
        done.append("processor: not loaded (transformers' video processor needs torchvision)")
        return done
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(folder))
    assert processor.image_token_id == _CFG["image_token_id"], f"image token id {processor.image_token_id}"
    out = processor(text=[prompt], images=[Image.new("RGB", image_px)], return_tensors="np")
    image_tokens = int((out["input_ids"][0] == _CFG["image_token_id"]).sum())
    assert image_tokens == vision.llm_tokens(*image_px), f"{image_tokens} image tokens in the processed prompt"
    done.append(f"processor: {type(processor).__name__}, the prompt expanded to {image_tokens} <|image|> tokens")
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m autotune.testing.weightless_vlm",
        description="Write a weightless GLM-4.6V-Flash folder for vllm serve --load-format dummy.")
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--processor-family", choices=("auto", "glm46v", "glm4v"), default="auto",
                    help="the processor classes named in the folder (auto: glm46v if transformers has it)")
    ap.add_argument("--check", action="store_true", help="load it with transformers and check it")
    args = ap.parse_args(argv)
    try:
        args.out_dir.mkdir(parents=True, exist_ok=True)  # before transformers is imported: it may warn on stderr
        written = build_folder(args.out_dir, resolve_processor_family(args.processor_family))
    except OSError as e:
        print(f"cannot write {args.out_dir}: {e.strerror or e}", file=sys.stderr)
        return 2
    family = json.loads((args.out_dir / "preprocessor_config.json").read_text())["processor_class"]
    print(f"weightless GLM-4.6V-Flash folder: {args.out_dir} ({', '.join(written)}; {family})")
    if args.check:
        try:
            for line in check_folder(args.out_dir):
                print(f"  ok  {line}")
        except (AssertionError, ImportError) as e:
            print(f"check failed: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
