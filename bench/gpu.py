#!/usr/bin/env python3
"""GPU against CPU on one machine: random-weight Llamas in the mlx-community 4-bit layout, run by
`engine_bench MODEL DEVICE 120 64 RUNS` (the engine alone, built with `--no-default-features --features
cuda` by scripts/device/build; medians of RUNS after a warm-up, which also fills the CUDA driver's JIT
cache for Candle's PTX kernels). On CUDA the 4-bit layers are Candle's quantized matmul over the same
Q4_1 blocks the CPU kernels run; with `--dequantize` every layer is f32 there (the old layout).

    python3 bench/gpu.py --binary PATH/TO/engine_bench [--shapes smollm2-135m,llama-1b] [--devices cuda,cpu]

The checkpoints are written with numpy alone (random packed words, scales and biases), so this
runs where mlx-lm does not, such as a GPU machine without internet. Not a test.
"""
import argparse
import json
import os
import re
import resource
import shutil
import statistics
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

# The fixtures' tokenizer: from the checkout named by RAPID_HOST_REPO (a copy on a GPU machine), else
# this script's own.
ROOT = Path(os.environ.get("RAPID_HOST_REPO") or Path(__file__).resolve().parent.parent)
STATS = re.compile(r"\[run: (\d+) prompt tokens, (\d+) generated tokens, prefill ([\d.]+) tok/s, decode ([\d.]+) tok/s")
WEIGHTS = re.compile(r"loaded in [\d.]+ s: (.*)")

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


def measure(binary: Path, model: Path, device: str, runs: int, dequantize: bool, prompt=120, tokens=64):
    env = dict(os.environ)
    env.pop("RAPID_HOST_MLX_DEQUANTIZE", None)
    if dequantize:
        env["RAPID_HOST_MLX_DEQUANTIZE"] = "1"
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    p = subprocess.run([str(binary), str(model), device, str(prompt), str(tokens), str(runs)], capture_output=True, text=True,
                       env=env)
    rss = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    found = STATS.findall(p.stderr)
    if p.returncode != 0 or not found:
        sys.exit(f"engine_bench failed:\n{p.stderr}")
    weights = WEIGHTS.search(p.stderr)
    pp = statistics.median(float(r[2]) for r in found)
    tg = statistics.median(float(r[3]) for r in found)
    return pp, tg, rss, weights.group(1) if weights else "?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True, help="engine_bench (examples/engine_bench.rs)")
    ap.add_argument("--out", default="/tmp/gpu-bench")
    ap.add_argument("--shapes", default="smollm2-135m,llama-1b")
    ap.add_argument("--devices", default="cuda,cpu")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per row, after one warm-up")
    ap.add_argument("--dequantize", action="store_true", help="also a row with every layer in f32")
    ap.add_argument("--prompt", type=int, default=120, help="prompt tokens")
    ap.add_argument("--tokens", type=int, default=64, help="generated tokens")
    args = ap.parse_args()
    print("| shape | device | layers | prefill tok/s | decode tok/s | weights held | peak RSS (max so far) |")
    print("|---|---|---|---|---|---|---|", flush=True)
    for shape in args.shapes.split(","):
        model = Path(args.out) / shape
        if not (model / "config.json").is_file():
            build(model, shape)
        for device in args.devices.split(","):
            for dequantize in [False, True] if args.dequantize else [False]:
                pp, tg, rss, held = measure(Path(args.binary), model, device, args.runs, dequantize, args.prompt,
                                         args.tokens)
                layers = "f32" if dequantize else "4-bit packed"
                print(f"| {shape} | {device} | {layers} | {pp:.0f} | {tg:.1f} | {held} | {rss:.0f} MiB |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
