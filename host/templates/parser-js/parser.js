// `{{parser}}`: a tool-call parser plugin for rapid-host, in JavaScript.
//
// Wire format handled (change it to your model's): calls wrapped in `<call>…</call>`, each
// a JSON object `{"name": ..., "arguments": {...}}`. Text outside calls is content.
//
// The host calls `Session.create(config)` once per response, then `feed(delta)` for every
// piece of model output (one character, half a marker, or everything at once), then
// `finish()`. Whatever the chunking, the assembled result must be the same; README.md says
// how `rapid-host plugin test` checks that.

const PARSER = "{{parser}}";
const OPEN = "<call>";
const CLOSE = "</call>";

// Characters at the end of `text` that could be the start of `marker`: held back until
// more text shows whether they are.
function partialSuffix(text, marker) {
  for (let n = Math.min(marker.length - 1, text.length); n > 0; n--) {
    if (marker.startsWith(text.slice(text.length - n))) return n;
  }
  return 0;
}

// Content with rapid-host's whitespace rule: leading whitespace of the answer and trailing
// whitespace at its end are dropped; around a tool call, whitespace collapses to what came
// before the call ("Checking. <call>…</call> Done." reads "Checking. Done.").
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

// One complete section → [{name, args}] or an error string.
function parseSection(section) {
  const body = section.slice(OPEN.length, section.endsWith(CLOSE) ? -CLOSE.length : undefined);
  let call;
  try { call = JSON.parse(body); } catch (e) { return "call is not JSON"; }
  if (!call || typeof call.name !== "string" || call.name === "") return "call has no name";
  const args = call.arguments === undefined || call.arguments === null ? {} : call.arguments;
  if (typeof args !== "object" || Array.isArray(args)) return "arguments are not an object";
  // JSON.stringify keeps the model's key order and writes compact JSON, as the host expects.
  return [{ name: call.name, args: JSON.stringify(args) }];
}

class Session {
  constructor() {
    this.pending = "";      // text outside a call: at most a partial OPEN between feeds
    this.section = null;    // pieces of the call being read, joined once it is complete
    this.piece = "";        // the newest piece: short appends go here, so a call streamed one
                            // character at a time is not a million tiny strings
    this.tail = "";         // the end of the call so far, where CLOSE may have been cut in two
    this.nextIndex = 0;
    this.content = new Channel();
  }

  static create(config) {
    // Throw a string for an error: the host reports it and uses no parser for the response.
    if (config.parser !== PARSER) throw `this plugin provides ${PARSER}, not ${config.parser}`;
    return new Session();
  }

  emitContent(text, out) {
    const t = this.content.push(text);
    if (t !== "") out.push({ tag: "content", val: t });
  }

  // Each character is looked at once: inside a call only the new text (and the few
  // characters before it where CLOSE may start) is searched, so a call with a 1 MB
  // argument streamed one character at a time costs what it costs whole.
  run(text, eof) {
    const out = [];
    for (;;) {
      if (this.section !== null) {
        const joined = this.tail + text;
        const at = joined.indexOf(CLOSE);
        if (at < 0 && !eof) {
          this.append(text);
          this.tail = joined.slice(-(CLOSE.length - 1));
          return out;
        }
        const end = at < 0 ? text.length : at + CLOSE.length - this.tail.length;
        this.append(text.slice(0, end));
        text = text.slice(end);
        this.section.push(this.piece);
        this.piece = "";
        this.endSection(this.section.join(""), out);
        this.section = null;
        continue;
      }
      if (text === "") return out;
      const at = text.indexOf(OPEN);
      if (at >= 0) {
        this.emitContent(text.slice(0, at), out);
        this.content.close();
        this.section = [];
        this.tail = "";
        text = text.slice(at);
        continue;
      }
      const keep = eof ? 0 : partialSuffix(text, OPEN);
      this.emitContent(text.slice(0, text.length - keep), out);
      this.pending = text.slice(text.length - keep);
      return out;
    }
  }

  append(text) {
    this.piece += text;
    if (this.piece.length >= 64) {
      this.section.push(this.piece);
      this.piece = "";
    }
  }

  endSection(section, out) {
    const calls = parseSection(section);
    if (typeof calls === "string") {
      // Broken: its text goes out as content, and the host counts the malformed call.
      this.emitContent(section, out);
      out.push({ tag: "malformed", val: calls });
      return;
    }
    for (const call of calls) {
      const index = this.nextIndex++;
      out.push({ tag: "tool-call-begin", val: { index, id: "", name: call.name } });
      out.push({ tag: "tool-call-arguments", val: { index, fragment: call.args } });
      out.push({ tag: "tool-call-end", val: index });
    }
  }

  feed(delta) {
    const text = this.pending + delta;
    this.pending = "";
    return this.run(text, false);
  }

  finish() {
    const text = this.pending;
    this.pending = "";
    return this.run(text, true);
  }
}

export const outputParser = {
  info() {
    return {
      name: "{{name}}",
      version: "0.1.0",
      description: "Tool calls in <call>{json}</call>",
      provides: [{ name: PARSER, kind: "tool-call-parser" }],
    };
  },
  Session,
  // A Lark grammar for forced tool calls, or undefined to let the host constrain the
  // output to a bare {"name", "arguments"} object.
  toolCallGrammar(parser, toolsJson) {
    return undefined;
  },
  // A system-prompt section teaching your format to models whose template ignores tools,
  // or undefined to let the host write one.
  toolPrompt(parser, toolsJson) {
    return undefined;
  },
};
