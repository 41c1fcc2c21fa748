#!/usr/bin/env python3
"""Forced tool calls through the official `openai` SDK (driven by tests/all/openai_sdk.rs).

    python3 tests/sdk/openai_forced_calls.py --base-url http://127.0.0.1:PORT/v1

Prints one JSON line per request: what the SDK assembled, streamed and not.
"""
import argparse
import json

import openai

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}, {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a time zone",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]},
    },
}]
MESSAGES = [{"role": "user", "content": "What's the weather in Paris and in Rome, and the time in Tokyo?"}]


def plain(client, **kw):
    reply = client.chat.completions.create(model="default", messages=MESSAGES, tools=TOOLS, **kw)
    choice = reply.choices[0]
    calls = [{"index": i, "id": c.id, "name": c.function.name, "arguments": c.function.arguments}
             for i, c in enumerate(choice.message.tool_calls or [])]
    return {"content": choice.message.content, "finish_reason": choice.finish_reason, "calls": calls}


def streamed(client, **kw):
    stream = client.chat.completions.create(model="default", messages=MESSAGES, tools=TOOLS, stream=True, **kw)
    content, finish, calls, order = "", None, {}, []
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        content += choice.delta.content or ""
        for delta in choice.delta.tool_calls or []:
            if delta.index not in calls:
                order.append(delta.index)
                calls[delta.index] = {"index": delta.index, "id": delta.id, "name": "", "arguments": "", "deltas": 0}
            call = calls[delta.index]
            if delta.function and delta.function.name:
                call["name"] = delta.function.name
            if delta.function and delta.function.arguments:
                call["arguments"] += delta.function.arguments
                call["deltas"] += 1
    return {"content": content or None, "finish_reason": finish, "calls": [calls[i] for i in order], "order": order}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key="not-needed")
    named = {"type": "function", "function": {"name": "get_weather"}}
    for seed in range(1, 9):
        for mode, run in (("plain", plain), ("stream", streamed)):
            out = run(client, tool_choice=named, seed=seed, temperature=1.0, max_tokens=80)
            print(json.dumps({"check": "named", "seed": seed, "mode": mode, **out}))
    for seed in (1,):
        for mode, run in (("plain", plain), ("stream", streamed)):
            out = run(client, tool_choice="required", parallel_tool_calls=False, seed=seed, temperature=1.0,
                      max_tokens=80)
            print(json.dumps({"check": "required_single", "seed": seed, "mode": mode, **out}))
            out = run(client, tool_choice="required", seed=seed, temperature=1.0, max_tokens=120)
            print(json.dumps({"check": "required_parallel", "seed": seed, "mode": mode, **out}))
    for max_tokens in (4, 6, 10):
        for mode, run in (("plain", plain), ("stream", streamed)):
            out = run(client, tool_choice=named, seed=5, temperature=1.0, max_tokens=max_tokens)
            print(json.dumps({"check": "cut", "max_tokens": max_tokens, "mode": mode, **out}))
    for mode, run in (("plain", plain), ("stream", streamed)):
        out = run(client, tool_choice=named, seed=5, temperature=1.0, max_tokens=80, stop=["celsius", "fahrenheit"])
        print(json.dumps({"check": "cut_by_stop", "mode": mode, **out}))


if __name__ == "__main__":
    main()
