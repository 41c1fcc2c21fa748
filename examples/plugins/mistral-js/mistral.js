// A rapid-host tool-call parser plugin in JavaScript: Mistral's `[TOOL_CALLS]` format,
// which rapid-host does not ship. Built into a WebAssembly component with componentize-qjs
// (QuickJS); see README.md.
//
// Formats handled, streamed in chunks of any size:
//   [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}        (Mistral Small 3.2 / Devstral 2)
//   [TOOL_CALLS]get_weather{"city": "Paris"}              (name glued to the JSON)
//   [TOOL_CALLS] [{"name": "f", "arguments": {...}}, ...]  (older models: a JSON list)
// Several `[TOOL_CALLS]` may follow each other. Text outside calls is content.

const OPENER = "[TOOL_CALLS]";
const ARGS = "[ARGS]";

// Length of the JSON value (object or list) at the start of `text`, matching brackets
// outside strings; -1 while incomplete, -2 if `text` does not start with one.
function jsonLength(text) {
  if (text[0] !== "{" && text[0] !== "[") return -2;
  let depth = 0, inString = false, escaped = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (escaped) escaped = false;
      else if (c === "\\") escaped = true;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === "{" || c === "[") depth++;
    else if (c === "}" || c === "]") {
      depth--;
      if (depth === 0) return i + 1;
    }
  }
  return -1;
}

// Compact JSON that keeps the model's key order and spelling; null if invalid.
function minify(text) {
  try { JSON.parse(text); } catch (e) { return null; }
  let out = "", inString = false, escaped = false;
  for (const c of text) {
    if (inString) {
      out += c;
      if (escaped) escaped = false;
      else if (c === "\\") escaped = true;
      else if (c === '"') inString = false;
    } else if (c === '"') { inString = true; out += c; }
    else if (!/\s/.test(c)) out += c;
  }
  return out;
}

// Bytes at the end of `text` that could start the opener: held back until more arrives.
function partialOpener(text) {
  for (let n = Math.min(OPENER.length - 1, text.length); n > 0; n--) {
    if (OPENER.startsWith(text.slice(text.length - n))) return n;
  }
  return 0;
}

// Length of the call section at the start of `buf` (which starts with the opener),
// or -1 while incomplete.
function sectionLength(buf, eof) {
  let rest = buf.slice(OPENER.length);
  const lead = rest.length - rest.trimStart().length;
  rest = rest.trimStart();
  if (rest.startsWith("[") && !rest.startsWith(ARGS)) {
    const n = jsonLength(rest);
    if (n >= 0) return OPENER.length + lead + n;
    return eof ? buf.length : -1;
  }
  const brace = rest.indexOf("{");
  if (brace < 0) return eof ? buf.length : -1;
  const n = jsonLength(rest.slice(brace));
  if (n >= 0) return OPENER.length + lead + brace + n;
  return eof ? buf.length : -1;
}

// A section → list of {name, args}, or an error string.
function parseSection(section) {
  const body = section.slice(OPENER.length).trim();
  if (body.startsWith("[") && !body.startsWith(ARGS)) {
    let list;
    try { list = JSON.parse(body); } catch (e) { return "call list is not JSON"; }
    if (!Array.isArray(list) || list.length === 0) return "call list is empty";
    const calls = [];
    for (const call of list) {
      if (!call || typeof call.name !== "string" || call.name === "") return "call without a name";
      const args = call.arguments === undefined ? {} : call.arguments;
      if (typeof args !== "object" || Array.isArray(args) || args === null) return "arguments are not an object";
      calls.push({ name: call.name, args: JSON.stringify(args) });
    }
    return calls;
  }
  const brace = body.indexOf("{");
  if (brace < 0) return "call without arguments";
  let name = body.slice(0, brace).trim();
  if (name.endsWith(ARGS)) name = name.slice(0, -ARGS.length).trim();
  if (name === "" || /[\s{}\[\]"]/.test(name)) return "bad tool name";
  const args = minify(body.slice(brace));
  if (args === null || !args.startsWith("{")) return "arguments are not a JSON object";
  return [{ name, args }];
}

// Content with whitespace handled like rapid-host's SDK: leading and trailing whitespace of
// the answer dropped, whitespace around a call collapsed to what came before it.
class Channel {
  constructor() { this.started = false; this.skipLeading = false; this.pending = ""; }
  push(text) {
    if (!this.started || this.skipLeading) text = text.trimStart();
    if (text === "") return "";
    this.skipLeading = false;
    this.started = true;
    const body = text.trimEnd();
    if (body === "") { this.pending += text; return ""; }
    const out = this.pending + body;
    this.pending = text.slice(body.length);
    return out;
  }
  close() { this.skipLeading = true; }
}

class Session {
  constructor() {
    this.buf = "";
    this.inSection = false;
    this.nextIndex = 0;
    this.content = new Channel();
  }

  static create(config) {
    if (config.parser !== "mistral") throw `this plugin provides mistral, not ${config.parser}`;
    return new Session();
  }

  emitContent(text, out) {
    const t = this.content.push(text);
    if (t !== "") out.push({ tag: "content", val: t });
  }

  run(eof) {
    const out = [];
    for (;;) {
      if (this.inSection) {
        const n = sectionLength(this.buf, eof);
        if (n < 0) return out;
        const section = this.buf.slice(0, n);
        this.buf = this.buf.slice(n);
        this.inSection = false;
        const calls = parseSection(section);
        if (typeof calls === "string") {
          this.emitContent(section, out);
          out.push({ tag: "malformed", val: calls });
        } else {
          this.content.close();
          for (const call of calls) {
            const index = this.nextIndex++;
            out.push({ tag: "tool-call-begin", val: { index, id: "", name: call.name } });
            out.push({ tag: "tool-call-arguments", val: { index, fragment: call.args } });
            out.push({ tag: "tool-call-end", val: index });
          }
        }
        continue;
      }
      if (this.buf === "") return out;
      const at = this.buf.indexOf(OPENER);
      if (at >= 0) {
        this.emitContent(this.buf.slice(0, at), out);
        this.content.close();
        this.buf = this.buf.slice(at);
        this.inSection = true;
        continue;
      }
      const keep = eof ? 0 : partialOpener(this.buf);
      this.emitContent(this.buf.slice(0, this.buf.length - keep), out);
      this.buf = this.buf.slice(this.buf.length - keep);
      return out;
    }
  }

  feed(delta) {
    this.buf += delta;
    return this.run(false);
  }

  finish() {
    return this.run(true);
  }
}

export const outputParser = {
  info() {
    return {
      name: "mistral-js",
      version: "0.1.0",
      description: "Mistral [TOOL_CALLS] tool calls, written in JavaScript",
      provides: [{ name: "mistral", kind: "tool-call-parser" }],
    };
  },
  Session,
  toolCallGrammar(parser, toolsJson) {
    return undefined;
  },
  toolPrompt(parser, toolsJson) {
    return undefined;
  },
};
