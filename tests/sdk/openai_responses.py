#!/usr/bin/env python3
"""The official `openai` SDK's Responses API against `rapid-host serve` (driven by
tests/all/sdk_apis.rs).

    python3 tests/sdk/openai_responses.py --base-url http://127.0.0.1:PORT/v1

Prints one JSON line per check.
"""
import argparse
import json

import openai
import pydantic

TOOLS = [{
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
    "strict": True,
}]


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=40)
    country: str = pydantic.Field(max_length=40)


def out(check, **kw):
    print(json.dumps({"check": check, **kw}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--api-key", default="not-needed")
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0)

    terse = "Answer in one word."
    reply = client.responses.create(model="default", input="What is the capital of France?", instructions=terse,
                                    max_output_tokens=24, temperature=0)
    out("plain", id=reply.id, status=reply.status, text=reply.output_text,
        output=[i.type for i in reply.output], usage=reply.usage.model_dump())

    with client.responses.stream(model="default", input="What is the capital of France?", instructions=terse,
                                 max_output_tokens=24, temperature=0) as stream:
        events = [(e.type, e.sequence_number) for e in stream]
        final = stream.get_final_response()
    out("stream", events=events, text=final.output_text, status=final.status)

    reply = client.responses.create(
        model="default", instructions="Answer in one word.", max_output_tokens=16, temperature=0,
        input=[{"role": "developer", "content": "Be terse."},
               {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Capital of Italy?"}]}])
    out("items", status=reply.status, text=reply.output_text)

    # A forced function call; its output sent back as items; and again through previous_response_id.
    ask = [{"role": "user", "content": "What's the weather in Paris?"}]
    reply = client.responses.create(model="default", input=ask, tools=TOOLS, max_output_tokens=80,
                                    tool_choice={"type": "function", "name": "get_weather"}, temperature=0)
    calls = [i.model_dump() for i in reply.output if i.type == "function_call"]
    out("function_call", id=reply.id, status=reply.status, calls=calls, output=[i.type for i in reply.output])
    call = calls[0]
    followup = client.responses.create(
        model="default", tools=TOOLS, max_output_tokens=24, temperature=0,
        input=[*ask, {"type": "function_call", "call_id": call["call_id"], "name": call["name"],
                      "arguments": call["arguments"]},
               {"type": "function_call_output", "call_id": call["call_id"], "output": "18 C and sunny"}])
    out("function_call_output", status=followup.status, text=followup.output_text)
    chained = client.responses.create(
        model="default", previous_response_id=reply.id, tools=TOOLS, max_output_tokens=24, temperature=0,
        input=[{"type": "function_call_output", "call_id": call["call_id"], "output": "18 C and sunny"}])
    out("previous_response_id", status=chained.status, text=chained.output_text,
        previous=chained.previous_response_id, input_tokens=chained.usage.input_tokens,
        followup_input_tokens=followup.usage.input_tokens)
    fetched = client.responses.retrieve(reply.id)
    out("retrieve", id=fetched.id, status=fetched.status)

    with client.responses.stream(model="default", input=ask, tools=TOOLS, max_output_tokens=80,
                                 tool_choice="required", parallel_tool_calls=False, temperature=0) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_response()
    out("function_call_stream", events=events,
        calls=[i.model_dump() for i in final.output if i.type == "function_call"])

    # Non-function tools (Codex sends them) are skipped, not refused.
    reply = client.responses.create(model="default", input="Say hi.", max_output_tokens=8, temperature=0,
                                    tools=[{"type": "web_search"}, *TOOLS])
    out("other_tools", status=reply.status)

    # Structured output: text.format json_schema through the SDK's parse helper, and json_object.
    parsed = client.responses.parse(model="default", input="Describe Paris as JSON.", max_output_tokens=80,
                                    temperature=0, text_format=City)
    out("structured", parsed=parsed.output_parsed.model_dump() if parsed.output_parsed else None)
    reply = client.responses.create(model="default", input="List two colours as JSON.", max_output_tokens=120,
                                    temperature=0, text={"format": {"type": "json_object"}})
    out("json_object", text=reply.output_text, status=reply.status)

    reply = client.responses.create(model="default", input="Tell me a long story.", max_output_tokens=4,
                                    temperature=0)
    out("incomplete", status=reply.status, reason=reply.incomplete_details.reason if reply.incomplete_details else None)

    unstored = client.responses.create(model="default", input="Hi", max_output_tokens=4, store=False, temperature=0)
    try:
        client.responses.create(model="default", input="Again", previous_response_id=unstored.id,
                                max_output_tokens=4)
        out("store_false", status=200)
    except openai.BadRequestError as e:
        out("store_false", status=e.status_code, body=e.body)

    for name, kw in (
        ("bad_image", {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]}),
        ("bad_input", {"input": 42}),
        ("bad_choice", {"input": "hi", "tools": TOOLS, "tool_choice": {"type": "function", "name": "nope"}}),
        ("bad_format", {"input": "hi", "text": {"format": {"type": "yaml"}}}),
    ):
        try:
            client.responses.create(model="default", max_output_tokens=8, **kw)
            out(name, status=200)
        except openai.APIStatusError as e:
            out(name, status=e.status_code, body=e.body)


if __name__ == "__main__":
    main()
