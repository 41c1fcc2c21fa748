#!/usr/bin/env python3
"""Use a running `rapid-host serve` with the official `openai` SDK (pip install openai).

    python3 examples/chat_openai.py [--base-url http://127.0.0.1:8000/v1]

Prints one JSON line per check so scripts (and tests/all/openai_sdk.rs) can read it.
"""
import argparse
import json

import openai


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key="not-needed")

    reply = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24, temperature=0)
    print(json.dumps({"check": "chat", "content": reply.choices[0].message.content,
                      "finish_reason": reply.choices[0].finish_reason,
                      "usage": reply.usage.model_dump()}))

    stream = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24, temperature=0, stream=True, stream_options={"include_usage": True})
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage.model_dump()
    print(json.dumps({"check": "stream", "content": text, "finish_reason": finish, "usage": usage}))

    completion = client.completions.create(model="default", prompt="The capital of France is", max_tokens=4, temperature=0)
    print(json.dumps({"check": "completion", "text": completion.choices[0].text}))

    models = client.models.list()
    print(json.dumps({"check": "models", "ids": [m.id for m in models.data]}))

    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        print(json.dumps({"check": "unknown_model", "status": 200}))
    except openai.NotFoundError as e:
        print(json.dumps({"check": "unknown_model", "status": e.status_code, "message": e.message}))

    try:
        client.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}], n=2)
        print(json.dumps({"check": "bad_request", "status": 200}))
    except openai.BadRequestError as e:
        print(json.dumps({"check": "bad_request", "status": e.status_code, "message": e.message}))


if __name__ == "__main__":
    main()
