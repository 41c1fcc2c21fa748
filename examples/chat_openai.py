#!/usr/bin/env python3
"""Use a running `rapid-host serve` with the official `openai` SDK (pip install openai).

    python3 examples/chat_openai.py [--base-url http://127.0.0.1:8000/v1] [--api-key KEY]

Prints one JSON line per check so scripts (and tests/all/openai_sdk.rs) can read it.
"""
import argparse
import json

import openai
import pydantic

WEATHER_TOOLS = [{
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


class City(pydantic.BaseModel):
    # Bounds are part of the grammar: a small model cannot ramble past them.
    name: str = pydantic.Field(max_length=40)
    country: str = pydantic.Field(max_length=40)
    population: int = pydantic.Field(ge=0, le=50_000_000)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--api-key", default="not-needed", help="the server's --api-key, if it has one")
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key)

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

    # tool_choice="required": decoding is constrained to the tool parser's wire format, so even
    # a 135M model answers with a valid call.
    reply = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "What's the weather in Paris?"}],
        tools=WEATHER_TOOLS, tool_choice="required", max_tokens=80, temperature=0)
    choice = reply.choices[0]
    calls = [{"name": c.function.name, "arguments": json.loads(c.function.arguments), "id": c.id}
             for c in choice.message.tool_calls or []]
    print(json.dumps({"check": "tool_required", "finish_reason": choice.finish_reason, "calls": calls}))

    stream = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "What time is it in Tokyo?"}],
        tools=WEATHER_TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=80, temperature=0, stream=True)
    streamed, finish = {}, None
    for chunk in stream:
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        for delta in chunk.choices[0].delta.tool_calls or []:
            call = streamed.setdefault(delta.index, {"name": "", "arguments": ""})
            if delta.function and delta.function.name:
                call["name"] = delta.function.name
            if delta.function and delta.function.arguments:
                call["arguments"] += delta.function.arguments
    print(json.dumps({"check": "tool_named_stream", "finish_reason": finish,
                      "calls": [{"name": c["name"], "arguments": json.loads(c["arguments"])}
                                for c in streamed.values()]}))

    # Structured output through the SDK's own pydantic helper (a strict json_schema).
    parsed = client.chat.completions.parse(
        model="default", messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format=City, max_tokens=80, temperature=0)
    city = parsed.choices[0].message.parsed
    print(json.dumps({"check": "json_schema", "parsed": city.model_dump() if city else None,
                      "content": parsed.choices[0].message.content}))

    reply = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "List two colours as JSON."}],
        response_format={"type": "json_object"}, max_tokens=120, temperature=0, frequency_penalty=0.5)
    print(json.dumps({"check": "json_object", "content": reply.choices[0].message.content,
                      "finish_reason": reply.choices[0].finish_reason}))

    if args.api_key != "not-needed":
        intruder = openai.OpenAI(base_url=args.base_url, api_key="wrong-key")
        try:
            intruder.models.list()
            print(json.dumps({"check": "wrong_key", "status": 200}))
        except openai.AuthenticationError as e:
            print(json.dumps({"check": "wrong_key", "status": e.status_code, "message": e.message}))

    try:
        client.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}], n=2)
        print(json.dumps({"check": "bad_request", "status": 200}))
    except openai.BadRequestError as e:
        print(json.dumps({"check": "bad_request", "status": e.status_code, "message": e.message}))


if __name__ == "__main__":
    main()
