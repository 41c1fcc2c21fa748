#!/usr/bin/env python3
"""Speed and memory of rapid-host against llama.cpp on the same GGUF files, as ratios.

    python3 bench/run.py [--runs 3] [--threads 1 2] [--llama-python PATH]

Measures, per model and thread count: prefill tok/s on a ~128-token prompt, decode tok/s
over 128 greedy tokens, and peak RSS, for `target/release/rapid-host generate` and for
llama.cpp through llama-cpp-python (bench/llamacpp_side.py, run with --llama-python, a
Python that has `llama_cpp` installed). Medians of --runs. Not a test: numbers depend on
the machine and on what else runs.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = [("smollm2-135m-q4_1", "SmolLM2-135M-Instruct.Q4_1.gguf"), ("gemma3-270m-q4_k_m", "gemma-3-270m-q4_k_m.gguf")]
N_GEN = 128
PROMPT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, oil-based inks and a wooden press adapted from wine making. Within fifty years, "
    "presses were running in more than two hundred cities across Europe, and the number of books grew "
    "from thousands of hand-copied manuscripts to millions of printed volumes. Scholars could compare "
    "identical copies, errors could be corrected in later editions, and ideas travelled faster than ever "
    "before. The consequences reached far beyond the workshops: literacy spread, vernacular languages "
    "gained standard spellings, and new forms such as newspapers and scientific journals appeared. Explain"
)
STATS = re.compile(r"\[(\d+) prompt tokens, (\d+) generated tokens, prefill ([\d.]+) tok/s, decode ([\d.]+) tok/s")


def measured(cmd):
    """Peak RSS of cmd via a helper that waits on it with wait4."""
    helper = (
        "import os, sys, subprocess, json\n"
        "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)\n"
        "out, err = p.communicate()\n"
        "import resource\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(json.dumps({'rc': p.returncode, 'out': out.decode('utf-8', 'replace'), 'err': err.decode('utf-8', 'replace'), 'rss_kib': rss}))\n"
    )
    result = subprocess.run([sys.executable, "-c", helper, *cmd], capture_output=True, text=True, check=True)
    doc = json.loads(result.stdout)
    if doc["rc"] != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{doc['err']}")
    return doc["out"], doc["err"], doc["rss_kib"] / 1024


def rapid(binary, alias, threads, prompt_file):
    _, err, rss = measured([str(binary), "generate", alias, "--prompt", Path(prompt_file).read_text(),
                            "--max-tokens", str(N_GEN), "--ignore-eos", "--threads", str(threads),
                            "--plugins", str(ROOT / "plugins"), "--models-dir", str(ROOT / "models")])
    m = STATS.search(err)
    if not m:
        sys.exit(f"no stats line from rapid-host:\n{err}")
    return {"prompt_tokens": int(m[1]), "prefill_tps": float(m[3]), "decode_tps": float(m[4]), "rss_mib": rss}


def llama(python, file, threads, prompt_file):
    out, _, rss = measured([python, str(ROOT / "bench" / "llamacpp_side.py"), str(ROOT / "models" / file),
                            str(threads), prompt_file, str(N_GEN)])
    doc = json.loads(out)
    doc["rss_mib"] = rss
    return doc


def median(rows, key):
    return statistics.median(r[key] for r in rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--llama-python", default=os.environ.get("LLAMA_PYTHON", sys.executable))
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--bin", "rapid-host"], cwd=ROOT, check=True)
    binary = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "rapid-host"
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(PROMPT)
        prompt_file = f.name
    lines = ["| model | threads | rapid-host pp / tg tok/s, RSS | llama.cpp pp / tg tok/s, RSS | ratio pp / tg / RSS |",
             "|---|---|---|---|---|"]
    for alias, file in MODELS:
        for threads in args.threads:
            # Alternate the two sides, so that a slower or faster spell of a shared machine
            # falls on both; each ratio is the median of the ratios of adjacent pairs.
            ours, peer = [], []
            for _ in range(args.runs):
                ours.append(rapid(binary, alias, threads, prompt_file))
                peer.append(llama(args.llama_python, file, threads, prompt_file))
            keys = ("prefill_tps", "decode_tps", "rss_mib")
            o = {k: median(ours, k) for k in keys}
            p = {k: median(peer, k) for k in keys}
            r = {k: statistics.median(a[k] / b[k] for a, b in zip(ours, peer)) for k in keys}
            lines.append(
                f"| {alias} ({ours[0]['prompt_tokens']} prompt tokens) | {threads} "
                f"| {o['prefill_tps']:.0f} / {o['decode_tps']:.1f}, {o['rss_mib']:.0f} MiB "
                f"| {p['prefill_tps']:.0f} / {p['decode_tps']:.1f}, {p['rss_mib']:.0f} MiB "
                f"| {r['prefill_tps']:.2f} / {r['decode_tps']:.2f} / {r['rss_mib']:.2f} |"
            )
            print(lines[-1], flush=True)
    print("\n".join(["", f"medians of {args.runs} alternating runs, {N_GEN} greedy tokens; ratio = median of the "
                     "rapid-host / llama.cpp ratios of adjacent runs (above 1 is faster for speed, bigger for RSS)",
                     *lines]))


if __name__ == "__main__":
    main()
