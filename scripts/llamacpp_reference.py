#!/usr/bin/env python3
"""Records llama.cpp's greedy continuations of fixed prompts, the reference our engine must
match token for token (tests/all/parity.rs).

Needs `pip install llama-cpp-python` (it builds llama.cpp) and the models from
scripts/fetch_models.py. Writes tests/fixtures/parity/<model>.json:
  {"model": file, "llama_cpp_python": version, "cases": [{"prompt", "prompt_tokens", "tokens", "text"}]}
Prompts are raw text (no chat template), tokenized by llama.cpp with BOS as the model asks.
"""
import json
import sys
from pathlib import Path

import llama_cpp

ROOT = Path(__file__).resolve().parent.parent
N_TOKENS = 32
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "<|im_start|>user\nWhat is 12 times 7?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a land far away, there lived a",
]
MODELS = ["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"]


TOP = 8


def top_logits(llm, prompt_tokens, tokens):
    """The TOP largest logits (id, value) at every step of the greedy path: after the prompt
    (one batch, as the engine prefills), then after each continuation token fed alone. The
    values are llama.cpp's f32 numbers, which JSON's shortest round-trip repr keeps exactly."""
    llm.reset()
    steps = []
    llm.eval(prompt_tokens)
    for i in range(len(tokens)):
        row = llm.scores[llm.n_tokens - 1]
        best = sorted(range(len(row)), key=lambda t: -row[t])[:TOP]
        steps.append([[t, float(row[t])] for t in best])
        if i + 1 < len(tokens):
            llm.eval([tokens[i]])
    return steps


def record(file_name: str) -> dict:
    llm = llama_cpp.Llama(model_path=str(ROOT / "models" / file_name), n_ctx=512, n_threads=2,
                          logits_all=True, verbose=False)
    cases = []
    for prompt in PROMPTS:
        prompt_tokens = llm.tokenize(prompt.encode(), add_bos=llm.metadata.get("tokenizer.ggml.add_bos_token", "true") == "true", special=True)
        llm.reset()
        tokens = []
        for token in llm.generate(prompt_tokens, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
            if token == llm.token_eos() or len(tokens) == N_TOKENS:
                break
            tokens.append(token)
        text = llm.detokenize(tokens, special=True).decode("utf-8", errors="replace")
        cases.append({"prompt": prompt, "prompt_tokens": prompt_tokens, "tokens": tokens, "text": text,
                      "top_logits": top_logits(llm, prompt_tokens, tokens)})
    return {"model": file_name, "llama_cpp_python": llama_cpp.__version__, "cases": cases}


def main() -> None:
    out_dir = ROOT / "tests" / "fixtures" / "parity"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in sys.argv[1:] or MODELS:
        doc = record(name)
        path = out_dir / (Path(name).stem + ".json")
        path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
