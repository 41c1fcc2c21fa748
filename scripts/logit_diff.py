#!/usr/bin/env python3
"""How far the engine's logits are from llama.cpp's on the same GGUF file, step by step.

    python3 scripts/logit_diff.py --llama-python PY [--model FILE] [--case N]

Feeds both the prompt of each parity case (tests/fixtures/parity) and then llama.cpp's own
greedy continuation, and prints per step the largest absolute logit difference and whether
the top tokens agree. Zero everywhere means bit-identical arithmetic. PY is a Python with
llama-cpp-python; the engine side is `cargo run --release --example teacher_forced_logits`.
A diagnostic for the parity work, not a test.
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LLAMA_SIDE = r"""
import sys, json, numpy as np, llama_cpp
model, prompt, cont, out = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
llm = llama_cpp.Llama(model_path=model, n_ctx=512, n_threads=2, logits_all=True, verbose=False)
llm.eval(prompt)
rows = [np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)]
for tok in cont[:-1]:
    llm.eval([tok])
    rows.append(np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32))
np.stack(rows).tofile(out)
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-python", required=True)
    ap.add_argument("--model", default="SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--case", type=int, action="append")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    import numpy as np

    name = Path(args.model).stem
    doc = json.loads((ROOT / "tests/fixtures/parity" / f"{name}.json").read_text())
    model = str(ROOT / "models" / args.model)
    subprocess.run(["cargo", "build", "--release", "--example", "teacher_forced_logits"], cwd=ROOT, check=True,
                   stderr=subprocess.DEVNULL)
    binary = ROOT / "target/release/examples/teacher_forced_logits"
    for index, case in enumerate(doc["cases"]):
        if args.case and index not in args.case:
            continue
        prompt, cont = case["prompt_tokens"], case["tokens"]
        with tempfile.TemporaryDirectory() as tmp:
            ours_file, theirs_file = Path(tmp) / "ours.f32", Path(tmp) / "theirs.f32"
            subprocess.run([str(binary), model, str(ours_file), ",".join(map(str, prompt)), ",".join(map(str, cont))],
                           check=True)
            subprocess.run([args.llama_python, "-c", LLAMA_SIDE, model, json.dumps(prompt), json.dumps(cont),
                            str(theirs_file)], check=True)
            ours = np.fromfile(ours_file, dtype=np.float32).reshape(len(cont), -1)
            theirs = np.fromfile(theirs_file, dtype=np.float32).reshape(len(cont), -1)
        delta = ours - theirs
        if args.verbose:
            for step in range(min(3, len(delta))):
                d = delta[step]
                print(f"  step {step}: mean {d.mean():+.3e} std {d.std():.3e} |max| {np.abs(d).max():.3e} "
                      f"ours top {ours[step].max():.3f} theirs top {theirs[step].max():.3f}")
        diffs = np.abs(delta).max(axis=1)
        tops = [(int(o.argmax()), int(t.argmax())) for o, t in zip(ours, theirs)]
        flips = sum(a != b for a, b in tops)
        inexact = [int(i) for i in np.nonzero(diffs)[0]]
        if inexact and args.verbose:
            print(f"  inexact steps: {inexact[:10]}")
        print(f"case {index} {case['prompt'][:40]!r}: max |diff| first {diffs[0]:.2e}, median {np.median(diffs):.2e}, "
              f"worst {diffs.max():.2e}, exact steps {int((diffs == 0).sum())}/{len(diffs)}, top-token flips {flips}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
