#!/usr/bin/env python3
"""GPU against CPU on one machine: random-weight Llamas in the mlx-community 4-bit layout, run by
`rapid-host generate --device cuda` and `--device cpu` (medians of `--runs` after a warm-up, which also
fills the CUDA driver's JIT cache for Candle's PTX kernels). On CUDA every layer is dequantized
to f32 (the packed Q4_1 kernels are CPU code); on CPU 4-bit layers stay packed.

    python3 bench/gpu.py --binary PATH/TO/rapid-host [--shapes smollm2-135m,llama-1b] [--threads N]

The checkpoints are written with numpy alone (random packed words, scales and biases), so this
runs where mlx-lm does not, such as a GPU machine without internet. Not a test.
"""
import argparse
import json
import os
import shutil
import statistics
import struct
import sys
from pathlib import Path

import numpy as np

from mlx_packed import ROOT, measure

SHAPES = {
    # SmolLM2-135M's layer shapes, Llama 3.2 1B's (vocabulary cut to 32000 for both).
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=64),
}
GROUP = 64


def quantized(rng, out_dim: int, in_dim: int) -> dict:
    """A 4-bit affine layer whose weights fall in about +-0.02, like a trained model's."""
    words = rng.integers(0, 2**32, size=(out_dim, in_dim // 8), dtype=np.uint32)
    scales = (rng.uniform(0.5, 1.5, size=(out_dim, in_dim // GROUP)) * 0.02 / 7.5).astype(np.float16)
    return {"weight": words, "scales": scales, "biases": (-7.5 * scales).astype(np.float16)}


def save_safetensors(path: Path, tensors: dict):
    dtypes = {np.dtype(np.uint32): "U32", np.dtype(np.float16): "F16"}
    header, offset = {"__metadata__": {"format": "mlx"}}, 0
    for name, array in tensors.items():
        header[name] = {"dtype": dtypes[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for array in tensors.values():
            f.write(np.ascontiguousarray(array).tobytes())


def build(out: Path, shape: str):
    cfg = {"model_type": "llama", "rms_norm_eps": 1e-5, "vocab_size": 32000, "max_position_embeddings": 2048,
           "rope_theta": 10000.0, "tie_word_embeddings": False, **SHAPES[shape],
           "quantization": {"group_size": GROUP, "bits": 4}}
    rng = np.random.default_rng(0)
    h, i, d = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    tensors = {}

    def add(prefix, out_dim, in_dim):
        for part, array in quantized(rng, out_dim, in_dim).items():
            tensors[f"{prefix}.{part}"] = array

    add("model.embed_tokens", cfg["vocab_size"], h)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        for name, o, n in [("self_attn.q_proj", q, h), ("self_attn.k_proj", kv, h), ("self_attn.v_proj", kv, h),
                           ("self_attn.o_proj", h, q), ("mlp.gate_proj", i, h), ("mlp.up_proj", i, h),
                           ("mlp.down_proj", h, i)]:
            add(f"{p}.{name}", o, n)
        for norm in ["input_layernorm", "post_attention_layernorm"]:
            tensors[f"{p}.{norm}.weight"] = np.ones(h, dtype=np.float16)
    tensors["model.norm.weight"] = np.ones(h, dtype=np.float16)
    add("lm_head", cfg["vocab_size"], h)
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(out / "model.safetensors", tensors)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    fixture = ROOT / "tests/fixtures/mlx/llama"
    for name in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
        shutil.copy(fixture / name, out / name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(ROOT / "target/release/rapid-host"))
    ap.add_argument("--out", default="/tmp/gpu-bench")
    ap.add_argument("--shapes", default="smollm2-135m,llama-1b")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--devices", default="cuda,cpu")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per row, after one warm-up")
    args = ap.parse_args()
    print("| shape | device | prefill tok/s | decode tok/s | peak RSS |")
    print("|---|---|---|---|---|", flush=True)
    for shape in args.shapes.split(","):
        model = Path(args.out) / shape
        if not (model / "config.json").is_file():
            build(model, shape)
        for device in args.devices.split(","):
            runs = [measure(Path(args.binary), model, args.threads, False, device) for _ in range(args.runs + 1)][1:]
            pp = statistics.median(r[0] for r in runs)
            tg = statistics.median(r[1] for r in runs)
            rss = max(r[2] for r in runs)
            print(f"| {shape} | {device} | {pp:.0f} | {tg:.1f} | {rss:.0f} MiB |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
