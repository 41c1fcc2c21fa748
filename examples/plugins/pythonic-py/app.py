"""A rapid-host tool-call parser plugin in Python: the "pythonic" format of Llama 3.2 and
Llama 4, `[get_weather(city="Paris")]`, which rapid-host does not ship. See README.md.

This module is what componentize-py builds (`componentize app`): it holds the world's
exported functions. The session resource is in `output_parser.py`, the parsing in
`pythonic.py`."""

from wit_world import exports
from wit_world.imports.types import Capability, CapabilityKind, PluginInfo

import pythonic
from output_parser import PARSER


class OutputParser(exports.OutputParser):
    def info(self):
        return PluginInfo(
            name="pythonic-py",
            version="0.1.0",
            description="Llama 3.2 / Llama 4 pythonic tool calls, written in Python",
            provides=[Capability(name=PARSER, kind=CapabilityKind.TOOL_CALL_PARSER)],
        )

    def tool_call_grammar(self, parser, tools_json):
        return None  # the host constrains forced calls to a bare JSON object instead

    def tool_prompt(self, parser, tools_json):
        return pythonic.tool_prompt(tools_json)
