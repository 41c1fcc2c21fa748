"""`{{name}}`: a rapid-host tool-call parser plugin in Python, built with componentize-py
(`./build.sh`). This module holds the world's exported functions; the session resource is
in `output_parser.py`, the wire format in `calls.py`."""

from wit_world import exports
from wit_world.imports.types import Capability, CapabilityKind, PluginInfo

from output_parser import PARSER


class OutputParser(exports.OutputParser):
    def info(self):
        return PluginInfo(
            name="{{name}}",
            version="0.1.0",
            description="Tool calls in <call>{json}</call>",
            provides=[Capability(name=PARSER, kind=CapabilityKind.TOOL_CALL_PARSER)],
        )

    def tool_call_grammar(self, parser, tools_json):
        # A Lark grammar for forced tool calls, or None to let the host constrain the output
        # to a bare {"name", "arguments"} object.
        return None

    def tool_prompt(self, parser, tools_json):
        # A system-prompt section teaching your format to models whose template ignores
        # tools, or None to let the host write one.
        return None
