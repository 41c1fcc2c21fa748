#!/usr/bin/env python3
"""The official `anthropic` SDK against `rapid-host serve` (driven by tests/all/sdk_apis.rs).

    python3 tests/sdk/anthropic_messages.py --base-url http://127.0.0.1:PORT [--api-key KEY]

Note the base URL has no `/v1`: the SDK appends `/v1/messages` itself. Prints one JSON line
per check.
"""
import argparse
import json

import anthropic
import pydantic

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
GREEDY = {"temperature": 0}  # sampling fields travel in the body: this SDK has no keyword for them
ASK = [{"role": "user", "content": "What is the capital of France?"}]
TERSE = "Answer in one word."


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=40)
    country: str = pydantic.Field(max_length=40)


def blocks(message):
    return [b.model_dump() for b in message.content]


def out(check, **kw):
    print(json.dumps({"check": check, **kw}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--api-key", default="not-needed")
    args = ap.parse_args()
    client = anthropic.Anthropic(base_url=args.base_url, api_key=args.api_key, max_retries=0)

    reply = client.messages.create(model="default", max_tokens=24, messages=ASK, system=TERSE, extra_body=GREEDY)
    out("plain", id=reply.id, blocks=blocks(reply), stop_reason=reply.stop_reason, usage=reply.usage.model_dump())

    events = []
    with client.messages.stream(model="default", max_tokens=24, messages=ASK, system=TERSE, extra_body=GREEDY) as stream:
        for event in stream:
            events.append(event.type)
        final = stream.get_final_message()
    out("stream", events=events, blocks=blocks(final), stop_reason=final.stop_reason,
        usage=final.usage.model_dump())

    # A system prompt as blocks, and a `system` role inside `messages` (Claude Code does both).
    reply = client.messages.create(
        model="default", max_tokens=8, extra_body=GREEDY,
        system=[{"type": "text", "text": "You are terse."}],
        messages=[{"role": "system", "content": "Answer in English."}, *ASK])
    out("system_role", stop_reason=reply.stop_reason, blocks=blocks(reply))

    reply = client.messages.create(model="default", max_tokens=40, messages=ASK, system=TERSE, extra_body=GREEDY,
                                   stop_sequences=["Paris", "paris"])
    out("stop_sequence", stop_reason=reply.stop_reason, stop_sequence=reply.stop_sequence, blocks=blocks(reply))

    reply = client.messages.create(model="default", max_tokens=3, messages=ASK, extra_body=GREEDY)
    out("max_tokens", stop_reason=reply.stop_reason, usage=reply.usage.model_dump())

    # A forced tool call, non-streamed and streamed (input_json_delta), then its result sent back.
    weather = [{"role": "user", "content": "What's the weather in Paris?"}]
    forced = {"type": "tool", "name": "get_weather"}
    reply = client.messages.create(model="default", max_tokens=80, messages=weather, tools=[WEATHER],
                                   tool_choice=forced, extra_body=GREEDY)
    out("tool_use", stop_reason=reply.stop_reason, blocks=blocks(reply))
    with client.messages.stream(model="default", max_tokens=80, messages=weather, tools=[WEATHER],
                                tool_choice=forced, extra_body=GREEDY) as stream:
        kinds = [e.type + (":" + e.delta.type if e.type == "content_block_delta" else "") for e in stream]
        final = stream.get_final_message()
    out("tool_use_stream", events=kinds, stop_reason=final.stop_reason, blocks=blocks(final))
    call = next(b for b in reply.content if b.type == "tool_use")
    followup = client.messages.create(
        model="default", max_tokens=24, tools=[WEATHER], extra_body=GREEDY,
        messages=[*weather, {"role": "assistant", "content": [call.model_dump()]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                "content": [{"type": "text", "text": "18 C and sunny"}]}]}])
    out("tool_result", stop_reason=followup.stop_reason, blocks=blocks(followup))

    # tool_choice any with parallel use disabled: one call.
    reply = client.messages.create(model="default", max_tokens=80, messages=weather, tools=[WEATHER],
                                   tool_choice={"type": "any", "disable_parallel_tool_use": True}, extra_body=GREEDY)
    out("tool_any", stop_reason=reply.stop_reason, blocks=blocks(reply))

    # A forced call cut by max_tokens: still a tool_use block, stop_reason max_tokens.
    reply = client.messages.create(model="default", max_tokens=6, messages=weather, tools=[WEATHER],
                                   tool_choice=forced, extra_body=GREEDY)
    out("tool_use_cut", stop_reason=reply.stop_reason, blocks=blocks(reply))

    # Structured output through the SDK's own parse helper (output_config.format).
    parsed = client.messages.parse(model="default", max_tokens=80, extra_body=GREEDY,
                                   messages=[{"role": "user", "content": "Describe Paris as JSON."}],
                                   output_format=City)
    out("structured", parsed=parsed.parsed_output.model_dump() if parsed.parsed_output else None,
        blocks=blocks(parsed))

    count = client.messages.count_tokens(model="default", messages=ASK, system=TERSE)
    out("count_tokens", input_tokens=count.input_tokens)
    beta = client.beta.messages.count_tokens(model="default", messages=ASK, system=TERSE)
    out("count_tokens_beta", input_tokens=beta.input_tokens)

    for name, kw in (
        ("bad_image", {"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]}),
        ("bad_empty", {"messages": []}),
        ("bad_role", {"messages": [{"role": "robot", "content": "hi"}]}),
        ("bad_choice", {"messages": ASK, "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}}),
    ):
        try:
            client.messages.create(model="default", max_tokens=8, **kw)
            out(name, status=200)
        except anthropic.APIStatusError as e:
            out(name, status=e.status_code, body=e.body)
    try:
        client.messages.create(model="no-such-model", max_tokens=8, messages=ASK)
        out("unknown_model", status=200)
    except anthropic.NotFoundError as e:
        out("unknown_model", status=e.status_code, body=e.body)
    if args.api_key != "not-needed":
        intruder = anthropic.Anthropic(base_url=args.base_url, api_key="wrong-key", max_retries=0)
        try:
            intruder.messages.create(model="default", max_tokens=8, messages=ASK)
            out("wrong_key", status=200)
        except anthropic.AuthenticationError as e:
            out("wrong_key", status=e.status_code, body=e.body)


if __name__ == "__main__":
    main()
