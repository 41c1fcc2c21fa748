#!/usr/bin/env python3
"""Per-feed cost of every bundled parser on short and 1 MiB outputs, streamed one character
at a time, as coding agents stream whole files as tool arguments.

    python3 bench/parsers.py [--binary target/release/rapid-host] [--baseline REF] [--runs 3]

Each parser gets a write_file call in its own wire format whose `content` argument is a
source file of about 100 bytes (short) or 1 MiB, fed through `rapid-host parse --chunk 1
--cost`; the time is what the pipeline measures around each call into the plugin (the
/metrics histogram's sum), divided by the feeds. Medians of --runs.

--baseline REF builds the plugins of git revision REF (e.g. the commit before the linear
scanner) into a temporary directory and measures them in the same run, alternating with
ours, at 64 KiB (a rescanning parser takes minutes at 1 MiB); the ratio is theirs / ours.
Not a test: numbers depend on the machine and on what else runs.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def source_file(size):
    line = '    let s = format!("{} <b>{}</b>, [{x}] \\\\ é日🌍", a, b); // line\n'
    text = "fn main() {\n"
    while len(text.encode()) < size:
        text += line
    return text + "}"


def json_args(f):
    return '{"path": "src/main.rs", "content": %s}' % json.dumps(f, ensure_ascii=False)


# (parser name, tool parser, reasoning parser, output with the file as an argument)
CASES = [
    ("hermes", "hermes", None,
     lambda f: 'Writing it. <tool_call>\n{"name": "write_file", "arguments": %s}\n</tool_call>' % json_args(f)),
    ("qwen3_coder_xml", "qwen3_coder_xml", None,
     lambda f: "<tool_call>\n<function=write_file>\n<parameter=path>\nsrc/main.rs\n</parameter>\n"
               "<parameter=content>\n%s\n</parameter>\n</function>\n</tool_call>" % f),
    ("llama", "llama", None, lambda f: '{"name": "write_file", "parameters": %s}' % json_args(f)),
    ("deepseek", "deepseek", None,
     lambda f: "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>write_file\n```json\n%s\n```"
               "<｜tool▁call▁end｜><｜tool▁calls▁end｜>" % json_args(f)),
    ("deepseek_v31", "deepseek_v31", None,
     lambda f: "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>write_file<｜tool▁sep｜>%s<｜tool▁call▁end｜>"
               "<｜tool▁calls▁end｜>" % json_args(f)),
    ("glm47", "glm47", None,
     lambda f: "<tool_call>write_file\n<arg_key>path</arg_key>\n<arg_value>src/main.rs</arg_value>\n"
               "<arg_key>content</arg_key>\n<arg_value>%s</arg_value>\n</tool_call>" % f),
    ("kimi", "kimi", None,
     lambda f: "<|tool_calls_section_begin|><|tool_call_begin|>functions.write_file:0"
               "<|tool_call_argument_begin|>%s<|tool_call_end|><|tool_calls_section_end|>" % json_args(f)),
    ("minimax", "minimax", None,
     lambda f: '<minimax:tool_call>\n<invoke name="write_file">\n<parameter name="path">src/main.rs</parameter>\n'
               '<parameter name="content">%s</parameter>\n</invoke>\n</minimax:tool_call>' % f),
    ("gemma4", "gemma4", "gemma4",
     lambda f: '<|channel>thought\nA file.<channel|><|tool_call>call:write_file{path:<|"|>src/main.rs<|"|>,'
               'content:<|"|>%s<|"|>}<tool_call|>' % f),
    ("harmony", "harmony", "harmony",
     lambda f: "<|channel|>analysis<|message|>Write it.<|end|><|start|>assistant<|channel|>commentary "
               "to=functions.write_file <|constrain|>json<|message|>%s<|call|>" % json_args(f)),
    ("qwen3 (reasoning)", None, "qwen3", lambda f: "<think>%s</think>Done." % f),
]


def measure(binary, plugins, case, text):
    """Microseconds per feed inside the plugins, and the feeds."""
    _, tool, reasoning, _ = case
    cmd = [str(binary), "parse", "--chunk", "1", "--cost", "--plugins", str(plugins)]
    if tool:
        cmd += ["--tool-parser", tool]
    if reasoning:
        cmd += ["--reasoning-parser", reasoning]
    out = subprocess.run(cmd, input=text.encode(), capture_output=True, check=False)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr.decode(errors='replace')}")
    calls = seconds = feeds = 0
    for line in out.stderr.decode().splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            calls += doc["calls"]
            seconds += doc["seconds"]
            feeds = max(feeds, doc["feeds"])
    message = json.loads(out.stdout)
    if tool and not message.get("tool_calls") and not message.get("reasoning_content"):
        sys.exit(f"{case[0]}: no tool call parsed")
    return seconds / max(feeds, 1) * 1e6, feeds


def build_baseline(ref, into):
    """The plugins of git revision `ref`, built into `into` (a fresh target directory)."""
    src = Path(into) / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "plugins", "wit"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    env = dict(os.environ, CARGO_TARGET_DIR=str(Path(into) / "target"))
    subprocess.run(["cargo", "build", "--release", "--quiet", "--target", "wasm32-wasip2"],
                   cwd=src / "plugins", env=env, check=True)
    out = Path(into) / "plugins"
    out.mkdir()
    release = Path(into) / "target" / "wasm32-wasip2" / "release"
    for manifest in (src / "plugins").glob("*/Cargo.toml"):
        text = manifest.read_text()
        if 'crate-type = ["cdylib"]' not in text:
            continue
        name = next(l.split('"')[1] for l in text.splitlines() if l.startswith("name = "))
        shutil.copy(release / (name.replace("-", "_") + ".wasm"), out / (name + ".wasm"))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", type=Path, default=None, help="rapid-host to run (default: build the release one)")
    ap.add_argument("--baseline", default=None, help="git revision whose plugins to compare against, at 64 KiB")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    binary = args.binary
    if binary is None:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
        binary = ROOT / "target" / "release" / "rapid-host"
    ours = ROOT / "plugins"
    tmp = tempfile.mkdtemp(prefix="rapid-parsers-bench-")
    theirs = build_baseline(args.baseline, tmp) if args.baseline else None
    short, large, mid = source_file(100), source_file(1 << 20), source_file(64 << 10)
    print(f"binary {binary}; {args.runs} runs each; 1-character chunks; time inside the plugin per feed")
    header = "| parser | short: µs/feed | 1 MiB: µs/feed | 1 MiB / short |"
    if theirs:
        header += f" 64 KiB ours | 64 KiB {args.baseline} | ratio |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for case in CASES:
        s = statistics.median(measure(binary, ours, case, case[3](short))[0] for _ in range(args.runs))
        l = statistics.median(measure(binary, ours, case, case[3](large))[0] for _ in range(args.runs))
        row = f"| {case[0]} | {s:.2f} | {l:.2f} | {l / s:.2f} |"
        if theirs:
            ratios, o_all, t_all = [], [], []
            for _ in range(args.runs):
                o = measure(binary, ours, case, case[3](mid))[0]
                t = measure(binary, theirs, case, case[3](mid))[0]
                o_all.append(o)
                t_all.append(t)
                ratios.append(t / o)
            row += f" {statistics.median(o_all):.2f} | {statistics.median(t_all):.2f} | {statistics.median(ratios):.1f} |"
        print(row, flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
