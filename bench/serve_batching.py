#!/usr/bin/env python3
"""Concurrent streaming clients against `rapid-host serve` and llama.cpp's `llama-server -np 8`.

    python3 bench/serve_batching.py --llama-server PATH [--clients 1 2 4 8] [--rounds 3]
                                    [--threads 2] [--max-tokens 64] [--models smollm2 gemma]
                                    [--autogroup-nice -10] [--json out.json]

Both servers run the same GGUF with the same thread count, on 127.0.0.1, one side at a time,
alternating sides every round (the machine's speed swings within minutes). For N clients, N
streaming /v1/completions requests start together, each with its own prompt (prompts of
different lengths), greedy, `max_tokens` tokens each with `ignore_eos` (both servers accept
it), prompt caching off on llama-server (rapid-host has no prefix cache yet). Reported per side
and N: aggregate completion tok/s (all tokens / wall time of the round), time to first token
(median over requests), inter-token latency p50 / p99 (gaps between streamed tokens, all
streams pooled); medians over rounds, and the ratio rapid-host / llama-server of aggregate
tok/s per round, median. Each side first runs every prompt alone once; every later answer is
compared with the same prompt's answer alone (greedy: batching must not change a token), and
mismatches are counted per side. The load average is recorded with every round. Not a test:
numbers depend on the machine and on what else runs.

`--autogroup-nice N` (Linux, root for N < 0) starts a new session and sets its autogroup's nice:
with `kernel.sched_autogroup_enabled=1` a `nice -n 10` on other sessions' builds only counts
inside their own autogroup, so without it a benchmark gets one equal share per busy session
(llama-server decoded ~1 tok/s instead of ~60 on SmolLM2 that way on the shared VM).

llama-server is built from the llama.cpp sources in the llama-cpp-python==0.3.36 sdist (see
bench/README.md); this script does not build it.
"""
import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma": "gemma-3-270m-q4_k_m.gguf",
}
TOPICS = [
    "the history of the printing press",
    "how a steam engine works",
    "why the sky is blue",
    "the life cycle of a star",
    "how bread rises",
    "the rules of chess",
    "how vaccines train the immune system",
    "the water cycle",
]


def prompt_for(i):
    """Prompts of different lengths (about 15 to 90 tokens)."""
    filler = " Please be thorough, give examples, and explain each step in plain words." * (i % 4)
    return f"Write a detailed essay about {TOPICS[i % len(TOPICS)]}.{filler}\n\nEssay:"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, proc, path, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server on {port} exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"server on {port} not ready after {timeout}s")


def one_stream(port, body, out, index=0):
    """Streams one completion; records start, token arrival times, the text and the token count."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        out.append({"error": f"{resp.status} {resp.read()[:200]!r}"})
        return
    arrivals, usage, text = [], None, []
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            break
        chunk = json.loads(data)
        if chunk.get("usage"):
            usage = chunk["usage"].get("completion_tokens")
        choices = chunk.get("choices") or []
        if choices and choices[0].get("text"):
            arrivals.append(time.perf_counter())
            text.append(choices[0]["text"])
    out.append({"index": index, "start": start, "arrivals": arrivals, "text": "".join(text),
                "tokens": usage if usage else len(arrivals)})


def request_body(i, max_tokens, extra):
    return {"prompt": prompt_for(i), "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}, **extra}


def alone_answers(port, clients, max_tokens, extra):
    """Every prompt's answer with no other request in flight."""
    answers = {}
    for i in range(clients):
        out = []
        one_stream(port, request_body(i, max_tokens, extra), out, i)
        if "error" in out[0]:
            sys.exit(f"request failed: {out[0]['error']}")
        answers[i] = out[0]["text"]
    return answers


def round_of(port, clients, max_tokens, extra, alone):
    results, threads = [], []
    for i in range(clients):
        body = request_body(i, max_tokens, extra)
        threads.append(threading.Thread(target=one_stream, args=(port, body, results, i)))
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        sys.exit(f"requests failed: {errors}")
    tokens = sum(r["tokens"] for r in results)
    ttft = [r["arrivals"][0] - r["start"] for r in results if r["arrivals"]]
    gaps = [b - a for r in results for a, b in zip(r["arrivals"], r["arrivals"][1:])]
    gaps.sort()
    pct = lambda p: gaps[min(len(gaps) - 1, int(p * len(gaps)))] if gaps else float("nan")
    differ = sum(1 for r in results if alone is not None and r["text"] != alone[r["index"]])
    return {"tok_s": tokens / wall, "tokens": tokens, "ttft": statistics.median(ttft), "itl_p50": pct(0.5),
            "itl_p99": pct(0.99), "differ": differ, "load": os.getloadavg()[0]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-server", required=True)
    ap.add_argument("--rapid-host", default=str(ROOT / "target/release/rapid-host"))
    ap.add_argument("--baseline", help="another rapid-host binary (e.g. main's) as a third side, for before/after")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--clients", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--autogroup-nice", type=int,
                    help="run in a new session whose autogroup has this nice (see the module doc)")
    args = ap.parse_args()
    if args.autogroup_nice is not None:
        if os.getpid() != os.getsid(0):
            os.setsid()
        Path("/proc/self/autogroup").write_text(str(args.autogroup_nice))
        print(f"autogroup: {Path('/proc/self/autogroup').read_text().strip()}", file=sys.stderr)
    env = {**os.environ, "RUST_LOG": "warn"}
    report = {}
    for name in args.models:
        path = ROOT / "models" / MODELS[name]
        ours_port, theirs_port, base_port = free_port(), free_port(), free_port()

        def rapid_host(binary, port):
            return subprocess.Popen([binary, "serve", str(path), "--port", str(port), "--threads", str(args.threads),
                                     "--max-running-requests", "8", "--max-concurrent-requests", "16",
                                     "--plugins", str(ROOT / "plugins")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        ours = rapid_host(args.rapid_host, ours_port)
        base = rapid_host(args.baseline, base_port) if args.baseline else None
        theirs = subprocess.Popen([args.llama_server, "-m", str(path), "--port", str(theirs_port), "--host",
                                   "127.0.0.1", "-t", str(args.threads), "-tb", str(args.threads), "-np", "8", "-c",
                                   "8192"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(ours_port, ours, "/health/ready")
            wait_ready(theirs_port, theirs, "/health")
            sides = {"rapid-host": (ours_port, {}), "llama-server": (theirs_port, {"cache_prompt": False})}
            if base:
                wait_ready(base_port, base, "/health/ready")
                sides["baseline"] = (base_port, {})
            for port, extra in sides.values():  # warm-up
                round_of(port, 2, 8, extra, None)
            alone = {side: alone_answers(port, max(args.clients), args.max_tokens, extra)
                     for side, (port, extra) in sides.items()}
            rows = {}
            for n in args.clients:
                runs = {side: [] for side in sides}
                for r in range(args.rounds):
                    order = list(sides) if r % 2 == 0 else list(reversed(list(sides)))
                    for side in order:
                        port, extra = sides[side]
                        runs[side].append(round_of(port, n, args.max_tokens, extra, alone[side]))
                        print(f"{name} n={n} round {r} {side}: {runs[side][-1]}", file=sys.stderr)
                med = {side: {k: statistics.median(run[k] for run in runs[side]) for k in runs[side][0]}
                       for side in sides}
                ratio = {side: statistics.median(a["tok_s"] / b["tok_s"] for a, b in zip(runs[side], runs["llama-server"]))
                         for side in sides}
                rows[n] = {"median": med, "ratio": ratio, "runs": runs}
            report[name] = rows
        finally:
            for p in (ours, theirs, base):
                if p:
                    p.terminate()
                    p.wait()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    for name, rows in report.items():
        names = list(rows[min(rows)]["median"])
        one = {side: rows[min(rows)]["median"][side]["tok_s"] for side in names}
        itl1 = {side: rows[min(rows)]["median"][side]["itl_p50"] for side in names}
        print(f"\n{name} ({args.threads} threads, {args.max_tokens} tokens per request, medians of {args.rounds})")
        print("| clients | side | aggregate tok/s | x one client | TTFT ms | ITL p50 ms | x one client | ITL p99 ms "
              "| answers differing from alone | load avg | / llama-server |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for n, row in rows.items():
            for side in names:
                m = row["median"][side]
                differ = sum(run["differ"] for run in row["runs"][side])
                total = n * len(row["runs"][side])
                loads = [run["load"] for run in row["runs"][side]]
                ratio = f"{row['ratio'][side]:.2f}" if side != "llama-server" else ""
                print(f"| {n} | {side} | {m['tok_s']:.1f} | {m['tok_s'] / one[side]:.2f} | {m['ttft'] * 1000:.0f} | "
                      f"{m['itl_p50'] * 1000:.1f} | {m['itl_p50'] / itl1[side]:.2f} | {m['itl_p99'] * 1000:.1f} | "
                      f"{differ} / {total} | {min(loads):.1f}-{max(loads):.1f} | {ratio} |")


if __name__ == "__main__":
    main()
