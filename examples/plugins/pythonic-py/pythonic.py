"""The "pythonic" tool-call format of Llama 3.2 and Llama 4, streamed.

    [get_weather(city="Paris"), get_time(tz="UTC")]                 a list of calls, as the answer
    <|python_start|>[get_weather(city="Paris")]<|python_end|>       Llama 4's tagged form, anywhere

Keyword arguments are Python literals (strings, numbers, True/False/None, lists, dicts).
A plain answer that happens to start with `[` ("[1] See the docs") stays content.

Pure Python with no WebAssembly imports, so it runs (and is tested) natively too;
`output_parser.py` adapts it to the rapid-host contract. Streaming stays linear in the
output: every character is looked at once, however finely the text is chunked.
"""

import ast
import io
import json

OPEN_TAG = "<|python_start|>"
CLOSE_TAG = "<|python_end|>"


class Channel:
    """Content with rapid-host's whitespace rule: leading whitespace of the answer and
    trailing whitespace at its end are dropped; around a tool call whitespace collapses to
    what came before the call. Trailing whitespace is held until something else follows."""

    def __init__(self):
        self.started = False
        self.skip_leading = False
        self.pending = ""

    def push(self, text):
        if not self.started or self.skip_leading:
            text = text.lstrip()
        if not text:
            return ""
        self.skip_leading = False
        self.started = True
        body = text.rstrip()
        if not body:
            self.pending += text
            return ""
        out = self.pending + body
        self.pending = text[len(body):]
        return out

    def close(self):
        self.skip_leading = True


def partial_suffix(text, marker):
    """How many characters at the end of `text` could be the start of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def dotted_name(node):
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted_name(node.value)
        return None if base is None else base + "." + node.attr
    return None


def parse_calls(source):
    """`[f(a=1), g(b="x")]` -> [(name, arguments as compact JSON)], or None if `source` is
    not such a list."""
    try:
        node = ast.parse(source.strip(), mode="eval").body
    except (SyntaxError, ValueError):
        return None
    if not isinstance(node, ast.List) or not node.elts:
        return None
    calls = []
    for call in node.elts:
        name = dotted_name(call.func) if isinstance(call, ast.Call) else None
        if name is None or call.args:
            return None
        args = {}
        for keyword in call.keywords:
            if keyword.arg is None:  # **kwargs
                return None
            try:
                args[keyword.arg] = ast.literal_eval(keyword.value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                return None
        try:
            text = json.dumps(args, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError):
            return None
        calls.append((name, text))
    return calls


def looks_like_calls(source):
    """`[name(` at the start: meant as calls, so a failure to parse is reported."""
    rest = source.lstrip()[1:].lstrip()
    name_len = 0
    while name_len < len(rest) and (rest[name_len].isalnum() or rest[name_len] in "_."):
        name_len += 1
    return name_len > 0 and rest[name_len:].lstrip().startswith("(")


class ListScan:
    """Finds where a `[...]` list ends, matching brackets outside string literals. State is
    kept between feeds, so each character is scanned once."""

    def __init__(self):
        self.depth = 0
        self.quote = None
        self.escaped = False

    def scan(self, text):
        """Characters of `text` up to and including the closing `]`, or None if not yet."""
        for i, c in enumerate(text):
            if self.quote is not None:
                if self.escaped:
                    self.escaped = False
                elif c == "\\":
                    self.escaped = True
                elif c == self.quote:
                    self.quote = None
            elif c in "\"'":
                self.quote = c
            elif c in "([{":
                self.depth += 1
            elif c in ")]}":
                self.depth -= 1
                if self.depth <= 0:
                    return i + 1
        return None


class Splitter:
    """One response: feed text, get events back. Events are tuples:
    ("content", text), ("call", index, name, arguments), ("malformed", reason)."""

    def __init__(self):
        self.pending = ""  # text outside a call: at most a partial OPEN_TAG between feeds
        self.section = None  # the call section being read (io.StringIO: appends in amortized O(1))
        self.tagged = False
        self.scan = None
        self.tail = ""  # the end of a tagged section, where CLOSE_TAG may have been cut
        self.seen_text = False
        self.next_index = 0
        self.content = Channel()

    def feed(self, delta):
        text, self.pending = self.pending + delta, ""
        out = []
        self.run(text, False, out)
        return out

    def finish(self):
        text, self.pending = self.pending, ""
        out = []
        self.run(text, True, out)
        if self.section is not None:
            self.end_section(out)
        return out

    def run(self, text, eof, out):
        while True:
            if self.section is not None:
                end = self.section_end(text)
                if end is None:
                    self.section.write(text)
                    return
                self.section.write(text[:end])
                text = text[end:]
                self.end_section(out)
                continue
            if not text:
                return
            if not self.seen_text:
                text = text.lstrip()  # leading whitespace is never content
                if text.startswith("["):
                    self.start_section(tagged=False)
                    continue
                if not text:
                    return
            at = text.find(OPEN_TAG)
            if at >= 0:
                self.emit_content(text[:at], out)
                text = text[at:]
                self.start_section(tagged=True)
                continue
            keep = 0 if eof else partial_suffix(text, OPEN_TAG)
            self.emit_content(text[: len(text) - keep], out)
            self.pending = text[len(text) - keep:]
            return

    def start_section(self, tagged):
        self.content.close()
        self.seen_text = True
        self.section = io.StringIO()
        self.tagged = tagged
        self.scan = ListScan()
        self.tail = ""

    def section_end(self, text):
        """Where in `text` the current section ends, or None if it goes on."""
        if not self.tagged:
            return self.scan.scan(text)
        joined = self.tail + text
        at = joined.find(CLOSE_TAG)
        if at >= 0:
            return at + len(CLOSE_TAG) - len(self.tail)
        self.tail = joined[-(len(CLOSE_TAG) - 1):]
        return None

    def end_section(self, out):
        section = self.section.getvalue()
        self.section = None
        body = section
        if self.tagged:
            body = body[len(OPEN_TAG):]
            if body.endswith(CLOSE_TAG):
                body = body[: -len(CLOSE_TAG)]
        calls = parse_calls(body)
        if calls:
            self.content.close()
            for name, arguments in calls:
                out.append(("call", self.next_index, name, arguments))
                self.next_index += 1
        elif self.tagged or looks_like_calls(body):
            self.emit_content(section, out)
            out.append(("malformed", "not a list of calls with literal keyword arguments"))
        else:
            self.emit_content(section, out)

    def emit_content(self, text, out):
        if text.strip():
            self.seen_text = True
        text = self.content.push(text)
        if text:
            out.append(("content", text))


def tool_prompt(tools_json):
    """A system-prompt section teaching the format, for models whose template ignores tools."""
    try:
        tools = json.loads(tools_json)
    except ValueError:
        return None
    if not isinstance(tools, list) or not tools:
        return None
    listed = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return (
        "You can call these functions:\n" + listed + "\n\n"
        "To call functions, answer with nothing but a Python list of calls with keyword "
        'arguments, e.g. [get_weather(city="Paris"), get_time(tz="UTC")].'
    )
