#!/usr/bin/env python3
"""The llama.cpp side of bench/run.py: one measurement, printed as JSON.

usage: llamacpp_side.py MODEL.gguf THREADS PROMPT_FILE N_GEN
Prefill is timed over one eval of the prompt; decode over N_GEN-1 single-token evals after
the first token, greedy, ignoring end-of-sequence (as rapid-host --ignore-eos does).
"""
import json
import sys
import time

import llama_cpp


def main() -> None:
    model, threads, prompt_file, n_gen = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    prompt = open(prompt_file, encoding="utf-8").read()
    llm = llama_cpp.Llama(model_path=model, n_ctx=1024, n_threads=threads, n_threads_batch=threads,
                          n_batch=512, verbose=False)
    add_bos = llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"
    tokens = llm.tokenize(prompt.encode(), add_bos=add_bos, special=True)
    llm.reset()
    start = time.perf_counter()
    llm.eval(tokens)
    prefill = time.perf_counter() - start
    token = int(llm.scores[llm.n_tokens - 1].argmax())
    start = time.perf_counter()
    for _ in range(n_gen - 1):
        llm.eval([token])
        token = int(llm.scores[llm.n_tokens - 1].argmax())
    decode = time.perf_counter() - start
    print(json.dumps({"prompt_tokens": len(tokens), "prefill_tps": len(tokens) / prefill,
                      "decode_tps": (n_gen - 1) / decode}))


if __name__ == "__main__":
    main()
