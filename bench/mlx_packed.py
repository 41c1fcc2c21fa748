#!/usr/bin/env python3
"""What keeping MLX 4-bit layers packed costs and saves: a ~150M-parameter Llama built and
quantized by mlx-lm (random weights, mlx-community layout), run by `rapid-host generate`
with 4-bit layers packed as Q4_1 (the default) and with every layer dequantized to f32
(RAPID_HOST_MLX_DEQUANTIZE=1). Prints prefill / decode tok/s and peak RSS for both.

    /work/mlxvenv/bin/python bench/mlx_packed.py [--out /tmp/mlx-bench] [--threads 2]

Needs a Python with `mlx-cpu mlx mlx-lm` (see tests/fixtures/mlx/README.md) for building the
checkpoint; `target/release/rapid-host` for running it. Not a test.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATS = re.compile(r"\[(\d+) prompt tokens, (\d+) generated tokens, prefill ([\d.]+) tok/s, decode ([\d.]+) tok/s")
CONFIG = {
    "model_type": "llama", "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 12,
    "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 64, "rms_norm_eps": 1e-5,
    "vocab_size": 32000, "max_position_embeddings": 2048, "rope_theta": 10000.0, "tie_word_embeddings": False,
}


def build(out: Path):
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten, tree_map
    from mlx_lm.models import llama
    from mlx_lm.utils import save_config, save_model

    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs.from_dict(CONFIG))
    model.update(tree_map(lambda p: (mx.random.normal(p.shape) * 0.02).astype(mx.bfloat16), model.parameters()))
    nn.quantize(model, group_size=64, bits=4)
    out.mkdir(parents=True, exist_ok=True)
    save_model(out, model)
    save_config({**CONFIG, "quantization": {"group_size": 64, "bits": 4}}, out / "config.json")
    fixture = ROOT / "tests/fixtures/mlx/llama"
    for name in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
        shutil.copy(fixture / name, out / name)
    n = sum(v.size for _, v in tree_flatten(model.parameters()))
    print(f"built {out} ({n / 1e6:.0f}M stored values)", file=sys.stderr)


def measure(binary: Path, model: Path, threads: int, dequantize: bool, device: str = "cpu"):
    env = dict(os.environ)
    env.pop("RAPID_HOST_MLX_DEQUANTIZE", None)
    if dequantize:
        env["RAPID_HOST_MLX_DEQUANTIZE"] = "1"
    helper = (
        "import sys, subprocess, json, resource\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(json.dumps({'rc': p.returncode, 'err': p.stderr,"
        " 'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))\n"
    )
    prompt = "The history of the printing press " * 12
    cmd = [str(binary), "generate", str(model), "--prompt", prompt, "--max-tokens", "64", "--ignore-eos",
           "--threads", str(threads), "--device", device, "--plugins", str(ROOT / "plugins")]
    doc = json.loads(subprocess.run([sys.executable, "-c", helper, *cmd], capture_output=True, text=True,
                                    env=env, check=True).stdout)
    m = STATS.search(doc["err"])
    if doc["rc"] != 0 or not m:
        sys.exit(f"rapid-host failed:\n{doc['err']}")
    return float(m.group(3)), float(m.group(4)), doc["rss"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/mlx-bench")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    out = Path(args.out)
    if not (out / "config.json").is_file():
        build(out)
    binary = ROOT / "target/release/rapid-host"
    print("| weights | prefill tok/s | decode tok/s | peak RSS |")
    print("|---|---|---|---|")
    for label, dequantize in [("4-bit layers packed (Q4_1)", False), ("all f32 (RAPID_HOST_MLX_DEQUANTIZE=1)", True)]:
        pp, tg, rss = measure(binary, out, args.threads, dequantize)
        print(f"| {label} | {pp:.0f} | {tg:.1f} | {rss:.0f} MiB |")


if __name__ == "__main__":
    main()
