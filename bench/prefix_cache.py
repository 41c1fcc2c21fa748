#!/usr/bin/env python3
"""Time to first token with a repeated prefix: `rapid-host serve` (prefix cache) against llama.cpp's
`llama-server` (`cache_prompt`), in the same run.

    python3 bench/prefix_cache.py --llama-server PATH [--rounds 5] [--threads 2] [--autogroup-nice -10]

Both servers run SmolLM2-135M Q4_1 with the same thread count on 127.0.0.1 (llama-server with one slot,
`-np 1`, so its prompt cache is the slot's previous prompt), one side at a time, alternating which side
goes first every round (the machine's speed swings within minutes).

- repeated prefix: a ~1000-token system prompt made unique per round (a nonce at its start, so nothing
  earlier is reused), asked one question (cold: the whole prompt is prefilled), then another question
  with the same system prompt (warm: only the question and the template's tail are new). Reported per
  side: cold and warm TTFT (medians) and the median over rounds of cold / warm.
- multi-turn chat: the same system prompt, four turns, each resending the whole conversation (the
  previous answers included). Reported per side: median TTFT of turn 1 (cold) and of turns 2-4.

TTFT is measured by the client: request sent to the first streamed content. Greedy, 8 tokens per
answer. Not a test: numbers depend on the machine and on what else runs.
"""
import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# The server start-up helpers are the batching benchmark's (same folder, on sys.path when run as a script).
from serve_batching import free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

RULES = [
    "Members may borrow up to eight books for three weeks and renew them twice unless another member reserved them.",
    "The reading room on the first floor is for quiet study; phones must be silent and calls taken outside.",
    "Children under twelve need a parent or guardian to sign their membership form at the front desk.",
    "Printing and copying cost ten cents a page in black and white and fifty cents a page in colour.",
    "The meeting room on the ground floor can be booked by local groups for up to three hours a week.",
    "Late returns cost twenty cents a day per book, up to the price of the book; audiobooks count as books.",
    "Lost cards are replaced for two dollars; bring a photo identity document and proof of address.",
    "Wireless internet is free; the network name and password are printed on every receipt.",
]
QUESTIONS = [
    "When does the library close on Saturday?",
    "How many books can I borrow at once?",
    "Can my ten year old get a card?",
    "How much does colour printing cost?",
    "Can our chess club book the meeting room?",
]


def system_prompt(nonce):
    """About 1000 tokens of instructions, starting with `nonce` so no two rounds share a prefix."""
    lines = [f"Session {nonce}. You are the help desk assistant of the town library."]
    for i in range(5):
        for j, rule in enumerate(RULES):
            lines.append(f"Rule {i * len(RULES) + j + 1}: {rule}")
    lines.append("Answer in one short sentence.")
    return "\n".join(lines)


def chat(port, messages, extra, max_tokens=8):
    """One streamed greedy chat completion: (TTFT seconds, answer text, usage)."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, **extra}
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        sys.exit(f"request failed: {resp.status} {resp.read()[:300]!r}")
    first, text, usage = None, [], None
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
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                if first is None:
                    first = time.perf_counter()
                text.append(piece)
    if first is None:
        first = time.perf_counter()
    return first - start, "".join(text), usage


def repeated_prefix(port, extra, nonce):
    system = {"role": "system", "content": system_prompt(nonce)}
    cold, _, usage = chat(port, [system, {"role": "user", "content": QUESTIONS[0]}], extra)
    warm, _, warm_usage = chat(port, [system, {"role": "user", "content": QUESTIONS[1]}], extra)
    return {"cold": cold, "warm": warm, "prompt_tokens": (usage or {}).get("prompt_tokens"),
            "warm_cached": ((warm_usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens")}


def multi_turn(port, extra, nonce, turns=4):
    messages = [{"role": "system", "content": system_prompt(nonce)}]
    ttfts = []
    for q in QUESTIONS[:turns]:
        messages.append({"role": "user", "content": q})
        ttft, answer, _ = chat(port, messages, extra)
        ttfts.append(ttft)
        messages.append({"role": "assistant", "content": answer})
    return {"turn1": ttfts[0], "later": statistics.median(ttfts[1:]), "turns": ttfts}


def launch(cmd, nice):
    if nice is None:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The VM shares the CPU between sessions (autogroups) before `nice` applies inside one.
    shell = f"echo {nice} > /proc/self/autogroup; exec \"$@\""
    return subprocess.Popen(["setsid", "sh", "-c", shell, "sh", *cmd], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-server", required=True)
    ap.add_argument("--rapid-host", default=str(ROOT / "target/release/rapid-host"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--autogroup-nice", type=int, help="run both servers in an autogroup of this nice value")
    ap.add_argument("--json", help="write the raw results here")
    args = ap.parse_args()
    ours_port, theirs_port = free_port(), free_port()
    ours = launch([args.rapid_host, "serve", str(MODEL), "--port", str(ours_port), "--threads", str(args.threads),
                   "--plugins", str(ROOT / "plugins")], args.autogroup_nice)
    theirs = launch([args.llama_server, "-m", str(MODEL), "--port", str(theirs_port), "--host", "127.0.0.1", "-t",
                     str(args.threads), "-tb", str(args.threads), "-np", "1", "-c", "8192"], args.autogroup_nice)
    sides = {"rapid-host": (ours_port, {}), "llama-server": (theirs_port, {"cache_prompt": True})}
    runs = {side: {"prefix": [], "chat": []} for side in sides}
    try:
        wait_ready(ours_port, ours, "/health/ready", timeout=300)
        wait_ready(theirs_port, theirs, "/health", timeout=300)
        for port, extra in sides.values():  # warm-up
            chat(port, [{"role": "user", "content": "Hello"}], extra, max_tokens=4)
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(list(sides)))
            for side in order:
                port, extra = sides[side]
                nonce = f"{r}-{side}-{time.time_ns()}"
                runs[side]["prefix"].append(repeated_prefix(port, extra, nonce))
                runs[side]["chat"].append(multi_turn(port, extra, nonce + "-chat"))
                print(f"round {r} {side}: {runs[side]['prefix'][-1]} {runs[side]['chat'][-1]}", file=sys.stderr)
    finally:
        for p in (ours, theirs):
            p.terminate()
            p.wait()
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    med = statistics.median
    print(f"\nSmolLM2-135M Q4_1, {args.threads} threads, medians of {args.rounds} rounds "
          f"(~{runs['rapid-host']['prefix'][0]['prompt_tokens']}-token prompt)")
    print("| side | cold TTFT ms | warm TTFT ms | cold / warm | chat turn 1 ms | chat turns 2-4 ms | turn 1 / turns 2-4 |")
    print("|---|---|---|---|---|---|---|")
    for side in sides:
        p, c = runs[side]["prefix"], runs[side]["chat"]
        print(f"| {side} | {med(x['cold'] for x in p) * 1000:.0f} | {med(x['warm'] for x in p) * 1000:.0f} | "
              f"{med(x['cold'] / x['warm'] for x in p):.1f}x | {med(x['turn1'] for x in c) * 1000:.0f} | "
              f"{med(x['later'] for x in c) * 1000:.0f} | {med(x['turn1'] / x['later'] for x in c):.1f}x |")
    warm_ratio = med(a["warm"] / b["warm"] for a, b in zip(runs["rapid-host"]["prefix"], runs["llama-server"]["prefix"]))
    chat_ratio = med(a["later"] / b["later"] for a, b in zip(runs["rapid-host"]["chat"], runs["llama-server"]["chat"]))
    print(f"\nwarm TTFT rapid-host / llama-server (median of per-round ratios): {warm_ratio:.2f}")
    print(f"chat turns 2-4 TTFT rapid-host / llama-server (median of per-round ratios): {chat_ratio:.2f}")


if __name__ == "__main__":
    main()
