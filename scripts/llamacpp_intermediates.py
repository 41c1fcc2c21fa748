#!/usr/bin/env python3
"""Intermediate tensors of llama.cpp and of the engine on the same GGUF file and prompt,
compared one by one: where the first difference appears, and how large it is.

    python3 scripts/llamacpp_intermediates.py --llama-python PY [--model FILE] [--case N] [--decode]

PY is a Python with llama-cpp-python (its graph callback reads each tensor as it is
computed). The engine writes its own through RAPID_HOST_DUMP_DIR (models::debug_dump,
named as llama.cpp's graph names them). Without --decode the prompt's batched pass is
compared; with it, the decode step of the first continuation token. A diagnostic for the
parity work (tests/all/parity.rs), not a test.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["inp_scaled", "attn_norm", "Qcur", "kqv_out", "attn_out", "attn_post_norm", "sa_out", "ffn_inp",
         "ffn_norm", "ffn_gate", "ffn_up", "ffn_swiglu", "ffn_geglu", "ffn_out", "l_out"]

LLAMA_SIDE = r"""
import sys, json, ctypes, numpy as np, llama_cpp
model, prompt, outdir = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
want = set(sys.argv[4].split(',')) if len(sys.argv) > 4 else None
seen = {}
@llama_cpp.ggml_backend_sched_eval_callback
def cb(t, ask, ud):
    base = ctypes.cast(t, ctypes.c_void_p).value
    name = ctypes.string_at(base + 256, 64).split(b'\0')[0].decode()
    if ask:
        return want is None or name in want
    typ = ctypes.c_int32.from_address(base).value
    ne = [ctypes.c_int64.from_address(base + 16 + 8*i).value for i in range(4)]
    nb = [ctypes.c_uint64.from_address(base + 48 + 8*i).value for i in range(4)]
    data = ctypes.c_void_p.from_address(base + 248).value
    if typ == 0 and data:
        n = ne[0]*ne[1]*ne[2]*ne[3]
        if nb[1] == 4*ne[0] and nb[2] == nb[1]*ne[1]:
            arr = np.frombuffer(ctypes.string_at(data, 4*n), dtype=np.float32).reshape(ne[3], ne[2], ne[1], ne[0])
            key = name
            k = 1
            while key in seen:
                key = f"{name}#{k}"; k += 1
            seen[key] = arr.copy()
        else:
            # permuted views: gather with strides
            arr = np.lib.stride_tricks.as_strided(np.frombuffer(ctypes.string_at(data, nb[3]*ne[3] if ne[3] else 0) if False else ctypes.string_at(data, max(nb[i]*(ne[i]-1) for i in range(4)) + 4), dtype=np.float32), shape=(ne[3], ne[2], ne[1], ne[0]), strides=(nb[3], nb[2], nb[1], nb[0])).copy()
            key = name + "@perm"
            k = 1
            while key in seen:
                key = f"{name}@perm#{k}"; k += 1
            seen[key] = arr
    return True
llm = llama_cpp.Llama(model_path=model, n_ctx=512, n_threads=2, verbose=False)
# re-create context with callback
cp = llm.context_params
cp.cb_eval = cb
cp.cb_eval_user_data = None
ctx = llama_cpp.llama_init_from_model(llm.model, cp)
batch = llama_cpp.llama_batch_init(len(prompt), 0, 1)
batch.n_tokens = len(prompt)
for i, tok in enumerate(prompt):
    batch.token[i] = tok; batch.pos[i] = i; batch.n_seq_id[i] = 1; batch.seq_id[i][0] = 0; batch.logits[i] = (i == len(prompt)-1)
assert llama_cpp.llama_decode(ctx, batch) == 0
if len(sys.argv) > 5:
    seen.clear()
    nxt = int(sys.argv[5])
    b2 = llama_cpp.llama_batch_init(1, 0, 1)
    b2.n_tokens = 1; b2.token[0] = nxt; b2.pos[0] = len(prompt); b2.n_seq_id[0] = 1; b2.seq_id[0][0] = 0; b2.logits[0] = True
    assert llama_cpp.llama_decode(ctx, b2) == 0
for k, v in seen.items():
    np.save(f"{outdir}/{k}.npy", v)
print(sorted(seen))

"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-python", required=True)
    ap.add_argument("--model", default="SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--case", type=int, default=0)
    ap.add_argument("--decode", action="store_true")
    ap.add_argument("--all", action="store_true", help="print exact tensors too")
    args = ap.parse_args()
    import numpy as np

    case = json.loads((ROOT / "tests/fixtures/parity" / (Path(args.model).stem + ".json")).read_text())["cases"][args.case]
    prompt, cont = case["prompt_tokens"], case["tokens"]
    model = str(ROOT / "models" / args.model)
    subprocess.run(["cargo", "build", "--release", "--example", "teacher_forced_logits"], cwd=ROOT, check=True,
                   stderr=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory() as theirs, tempfile.TemporaryDirectory() as ours:
        layers = range(64)
        wanted = ",".join(["inp_scaled"] + [f"{n}-{l}" for l in layers for n in NAMES])
        extra = [str(cont[0])] if args.decode else []
        subprocess.run([args.llama_python, "-c", LLAMA_SIDE, model, json.dumps(prompt), theirs, wanted, *extra],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        steps = cont[:2] if args.decode else cont[:1]
        subprocess.run([str(ROOT / "target/release/examples/teacher_forced_logits"), model, os.devnull,
                        ",".join(map(str, prompt)), ",".join(map(str, steps))],
                       check=True, env={**os.environ, "RAPID_HOST_DUMP_DIR": ours})
        first = None
        for l in [None, *layers]:
            for n in (["inp_scaled"] if l is None else NAMES):
                name = n if l is None else f"{n}-{l}"
                a, b = Path(ours) / f"{name}.f32", Path(theirs) / f"{name}.npy"
                if not (a.exists() and b.exists()):
                    continue
                x, y = np.fromfile(a, dtype=np.float32), np.load(b).ravel()
                if x.size != y.size:
                    print(f"{name:18s} sizes differ: {x.size} vs {y.size}")
                    continue
                d = np.abs(x - y)
                if d.max() > 0 and first is None:
                    first = name
                if args.all or d.max() > 0:
                    print(f"{name:18s} exact {np.mean(d == 0) * 100:6.2f}%  max|diff| {d.max():.3e}")
        print(f"first difference: {first or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
