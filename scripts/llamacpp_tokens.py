#!/usr/bin/env python3
"""Records how llama.cpp tokenizes and detokenizes a set of awkward texts, for both default
models, into tests/fixtures/parity/tokenization.json (tests/all/parity.rs holds our tokenizer
to it).

usage: PYTHON_WITH_LLAMA_CPP scripts/llamacpp_tokens.py [MODELS_DIR]
Texts are tokenized without BOS, special tokens in the text recognized (`special=True`), as
rapid-host encodes a rendered chat template.
"""
import json
import sys
from pathlib import Path

import llama_cpp

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"]
TEXTS = [
    "Hello world",
    " Hello world",
    "  two  spaces   three    four",
    "   leading spaces",
    "trailing spaces   ",
    "\n\n\nnewlines\n\n",
    "tabs\tand\t\ttabs",
    "emoji 🦀🚀🧑‍🚀 and accents éàüñ",
    "中文字符和日本語のテキスト、한국어",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 ⅋ ꙮ",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>assistant\n",
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
    "mixed<unused0>special<eos>tokens",
    "numbers 1234567890 3.14159 -42 1e-9",
    "’curly quotes’ — em dash – en dash … ellipsis",
    "literal <0x41> byte text",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "def f(x):\n    return x ** 2  # square\n",
    "<html><body><p>Hi</p></body></html>",
    "Zero\u200bwidth\u00a0nbsp",
    "",
]


def main() -> None:
    models_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "models"
    doc = {"texts": TEXTS, "models": {}}
    for name in MODELS:
        llm = llama_cpp.Llama(model_path=str(models_dir / name), vocab_only=True, verbose=False)
        cases = []
        for text in TEXTS:
            ids = llm.tokenize(text.encode(), add_bos=False, special=True)
            back = llm.detokenize(ids, special=True).decode("utf-8", errors="replace")
            cases.append({"text": text, "ids": ids, "detokenized": back})
        doc["models"][name] = cases
    out = ROOT / "tests" / "fixtures" / "parity" / "tokenization.json"
    out.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
