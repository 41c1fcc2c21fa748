"""`{{parser}}`: the wire format, in plain Python (no WebAssembly imports, so you can run and
test it with any python3).

Wire format handled (change it to your model's): calls wrapped in `<call>...</call>`, each a
JSON object `{"name": ..., "arguments": {...}}`. Text outside calls is content.

Whatever the chunking of the output, the result must be the same; `rapid-host plugin test`
checks that. Streaming stays linear: each character is looked at once, so a call with a
1 MB argument streamed one character at a time costs what it costs whole.
"""

import io
import json

OPEN = "<call>"
CLOSE = "</call>"


class Channel:
    """Content with rapid-host's whitespace rule: leading whitespace of the answer and
    trailing whitespace at its end are dropped; around a tool call whitespace collapses to
    what came before the call ("Checking. <call>...</call> Done." reads "Checking. Done.")."""

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
    """Characters at the end of `text` that could start `marker`: held back until more text
    shows whether they do."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def parse_section(section):
    """One complete section -> [(name, arguments as compact JSON)], or an error string."""
    body = section[len(OPEN):]
    if body.endswith(CLOSE):
        body = body[: -len(CLOSE)]
    try:
        call = json.loads(body)
    except ValueError:
        return "call is not JSON"
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
        return "call has no name"
    args = call.get("arguments")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return "arguments are not an object"
    # Compact, keys in the model's order: what the host expects as the arguments string.
    return [(call["name"], json.dumps(args, ensure_ascii=False, separators=(",", ":")))]


class Splitter:
    """One response. `feed` and `finish` return events, as tuples:
    ("content", text), ("call", index, name, arguments), ("malformed", reason)."""

    def __init__(self):
        self.pending = ""  # text outside a call: at most a partial OPEN between feeds
        self.section = None  # the call being read (io.StringIO: appends in amortized O(1))
        self.tail = ""  # the end of the call so far, where CLOSE may have been cut in two
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
        return out

    def run(self, text, eof, out):
        while True:
            if self.section is not None:
                # Only the new text (and the few characters before it) is searched.
                joined = self.tail + text
                at = joined.find(CLOSE)
                if at < 0 and not eof:
                    self.section.write(text)
                    self.tail = joined[-(len(CLOSE) - 1):]
                    return
                end = len(text) if at < 0 else at + len(CLOSE) - len(self.tail)
                self.section.write(text[:end])
                text = text[end:]
                section = self.section.getvalue()
                self.section = None
                self.end_section(section, out)
                continue
            if not text:
                return
            at = text.find(OPEN)
            if at >= 0:
                self.emit_content(text[:at], out)
                self.content.close()
                self.section = io.StringIO()
                self.tail = ""
                text = text[at:]
                continue
            keep = 0 if eof else partial_suffix(text, OPEN)
            self.emit_content(text[: len(text) - keep], out)
            self.pending = text[len(text) - keep:]
            return

    def end_section(self, section, out):
        calls = parse_section(section)
        if isinstance(calls, str):
            # Broken: its text goes out as content, and the host counts the malformed call.
            self.emit_content(section, out)
            out.append(("malformed", calls))
            return
        for name, arguments in calls:
            out.append(("call", self.next_index, name, arguments))
            self.next_index += 1

    def emit_content(self, text, out):
        text = self.content.push(text)
        if text:
            out.append(("content", text))
