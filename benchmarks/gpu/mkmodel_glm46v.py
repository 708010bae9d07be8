"""Write a weightless GLM-4.6V-shaped model folder for ``vllm serve --load-format dummy``.

GLM-4.6V (``Glm4vMoeForConditionalGeneration``) is a vision tower in front of a GLM-4.5-Air-shaped MoE
text backbone. vLLM can load that backbone alone as ``Glm4MoeForCausalLM`` (model_type ``glm4_moe``),
which is what this folder describes: 46 layers (the first dense, intermediate 10944; 45 MoE layers with
128 routed experts, top-8, + 1 shared expert of moe_intermediate 1408), hidden 4096, 96 query heads,
8 KV heads of dim 128, vocab 151552. The vision tower is left out (no image inputs; about 1.2 B
parameters, ~2.3 GiB bf16, fewer than the ``glm-4.6v`` preset counts). With dummy weights the output
text is noise, but memory, kernels, communication and timings are those of the real shape.

Field names follow vLLM's ``vllm/model_executor/models/glm4_moe.py`` (it reads n_routed_experts,
n_shared_experts, num_experts_per_tok, moe_intermediate_size, first_k_dense_replace, routed_scaling_factor,
n_group, topk_group, norm_topk_prob, use_qk_norm, attention_bias, head_dim, partial_rotary_factor) and
transformers' ``Glm4MoeConfig``. ``num_nextn_predict_layers`` is 0: no MTP layer is built.

Usage:
    python benchmarks/gpu/mkmodel_glm46v.py OUT_DIR --tokenizer-from /tmp/model

The tokenizer (tokenizer.json, tokenizer_config.json, generation_config.json, ... ) is copied from the
given folder (the device kit's ``/tmp/model`` from ``mkmodel.py`` has a small BPE one); its EOS/PAD ids
are carried into config.json. Then, on four H100s (bf16 weights: ~186 GiB without the vision tower):

    vllm serve OUT_DIR --load-format dummy --tensor-parallel-size 4 [--enable-expert-parallel]
    vllm serve OUT_DIR --load-format dummy --tensor-parallel-size 2 --data-parallel-size 2

and wherever bf16 cannot fit (two H100s: ~93 GiB per GPU at TP2; one H100), quantize online to fp8
(about half the bytes: Linear and MoE weights in fp8, embedding and LM head stay bf16):

    vllm serve OUT_DIR --load-format dummy --quantization fp8 --tensor-parallel-size 2 \\
        [--enable-expert-parallel] --kv-cache-dtype fp8 --max-model-len 8192

(``--quantization fp8`` on a bf16 checkpoint quantizes at load time; with dummy weights it still allocates
the fp8 layout.) Through autotune: ``autotune run --model OUT_DIR --gpus 2 --engine vllm
--space FILE`` with ``quantization: fp8`` under ``fixed:`` in the space file.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

CONFIG: dict = {
    "architectures": ["Glm4MoeForCausalLM"],
    "model_type": "glm4_moe",
    "hidden_size": 4096,
    "num_hidden_layers": 46,
    "num_attention_heads": 96,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 10944,  # the dense first layer
    "first_k_dense_replace": 1,
    "n_routed_experts": 128,
    "num_experts_per_tok": 8,
    "n_shared_experts": 1,
    "moe_intermediate_size": 1408,
    "routed_scaling_factor": 1.0,
    "n_group": 1,
    "topk_group": 1,
    "norm_topk_prob": True,
    "use_qk_norm": False,
    "attention_bias": True,
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "partial_rotary_factor": 0.5,
    "rope_theta": 1000000.0,
    "rope_scaling": None,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-05,
    "vocab_size": 151552,
    "num_nextn_predict_layers": 0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "initializer_range": 0.02,
    "use_cache": True,
    "eos_token_id": 1,
    "pad_token_id": 0,
}

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "vocab.json", "merges.txt", "tokenizer.model")


def build(out_dir: Path, tokenizer_from: Path | None) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    config = dict(CONFIG)
    copied = []
    if tokenizer_from is not None:
        if not (tokenizer_from / "tokenizer.json").exists() and not (tokenizer_from / "tokenizer.model").exists():
            raise SystemExit(f"{tokenizer_from}: no tokenizer.json / tokenizer.model to copy")
        for name in TOKENIZER_FILES:
            src = tokenizer_from / name
            if src.exists():
                shutil.copy2(src, out_dir / name)
                copied.append(name)
        gen = out_dir / "generation_config.json"
        if gen.exists():
            g = json.loads(gen.read_text())
            for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
                if g.get(key) is not None:
                    config[key] = g[key]
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return {"out_dir": str(out_dir), "tokenizer_files": copied, "config": config}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--tokenizer-from", type=Path, default=None,
                    help="folder whose tokenizer files are copied (e.g. the device kit's /tmp/model)")
    args = ap.parse_args(argv)
    info = build(args.out_dir, args.tokenizer_from)
    if not info["tokenizer_files"]:
        print("warning: no tokenizer copied (--tokenizer-from not given); vllm serve needs one", file=sys.stderr)
    print(f"model folder ready: {info['out_dir']} (Glm4MoeForCausalLM, tokenizer: "
          f"{', '.join(info['tokenizer_files']) or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
