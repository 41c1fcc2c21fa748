"""The `output-parser` interface's `session` resource. componentize-py looks for it here:
the class must be named `Session` and live in a top-level module named after the
interface (`output-parser` -> `output_parser.py`)."""

from componentize_py_types import Err
from wit_world.exports import output_parser as wit

import pythonic

PARSER = "pythonic"


def to_event(event):
    kind = event[0]
    if kind == "content":
        return wit.Event_Content(event[1])
    if kind == "malformed":
        return wit.Event_Malformed(event[1])
    raise ValueError(kind)


def to_events(events):
    out = []
    for event in events:
        if event[0] == "call":
            _, index, name, arguments = event
            out.append(wit.Event_ToolCallBegin(wit.ToolCallBegin(index=index, id="", name=name)))
            out.append(wit.Event_ToolCallArguments(wit.ToolCallArguments(index=index, fragment=arguments)))
            out.append(wit.Event_ToolCallEnd(index))
        else:
            out.append(to_event(event))
    return out


class Session(wit.Session):
    def __init__(self):
        self.splitter = pythonic.Splitter()

    @classmethod
    def create(cls, config):
        # An error here is a value, not a trap: raise Err with a message.
        if config.parser != PARSER:
            raise Err(f"this plugin provides {PARSER}, not `{config.parser}`")
        return cls()

    def feed(self, delta):
        return to_events(self.splitter.feed(delta))

    def finish(self):
        return to_events(self.splitter.finish())
