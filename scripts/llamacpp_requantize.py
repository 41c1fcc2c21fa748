#!/usr/bin/env python3
"""Requantizes SmolLM2's Q4_1 file to Q4_0 with llama.cpp's own quantizer (llama-cpp-python), for
the Q4_0 parity fixture: every Q4_1 matrix becomes Q4_0 and the Q8_0 embedding table is
requantized to Q8_0, from ggml's reference quantizers, which tests/all/parity.rs repeats through
Candle's (byte for byte the same file contents).

usage: PYTHON_WITH_LLAMA_CPP scripts/llamacpp_requantize.py
       PYTHON_WITH_LLAMA_CPP scripts/llamacpp_reference.py SmolLM2-135M-Instruct.Q4_0-requantized.gguf
"""
import ctypes
from pathlib import Path

import llama_cpp

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TARGET = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_0-requantized.gguf"
MOSTLY_Q4_0 = 2


def main() -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = MOSTLY_Q4_0
    params.allow_requantize = True
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(SOURCE).encode(), str(TARGET).encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"quantization failed: {rc}")
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
