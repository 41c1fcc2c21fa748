//! Gemma 4: tool calls `<|tool_call>call:NAME{key:<|"|>text<|"|>,n:5,flag:true,
//! nested:{…},list:[…]}<tool_call|>` (not JSON: `<|"|>` delimits strings, which may hold
//! `{`, `}` and `,`), and reasoning `<|channel>thought\n…<channel|>`. One session handles
//! both, so this plugin provides `gemma4` as tool-call and as reasoning parser.

use rapid_plugin_sdk::json::{self, ObjectBuilder, Tools};
use rapid_plugin_sdk::output_parser::{
    Adapter, CapabilityKind, ParserPlugin, PluginInfo, SessionConfig, parser_info, unknown_parser,
};
use rapid_plugin_sdk::reasoning::{ReasoningSplitter, TagReasoning};
use rapid_plugin_sdk::tool_calls::{
    Call, CallFormat, Chain, Scan, Section, Splitter, ToolCallSplitter, floor_char_boundary,
};

const OPEN: &str = "<|tool_call>";
const CLOSE: &str = "<tool_call|>";
const QUOTE: &str = "<|\"|>";

const REASONING: TagReasoning = TagReasoning {
    open: &["<|channel>thought"],
    close: &["<channel|>"],
    strip: &["<|channel>content\n", "<|channel>content", "<|channel>final\n", "<|channel>final"],
};

/// A cursor over Gemma's argument syntax, producing JSON text.
struct ArgParser<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> ArgParser<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn skip_ws(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<String, String> {
        if depth > 64 {
            return Err(String::from("arguments nested too deeply"));
        }
        self.skip_ws();
        let rest = self.rest();
        if let Some(after) = rest.strip_prefix(QUOTE) {
            let end = after.find(QUOTE).ok_or("unterminated <|\"|> string")?;
            self.pos += QUOTE.len() + end + QUOTE.len();
            return Ok(json::string(&after[..end]));
        }
        if rest.starts_with('"') {
            let len = json_string_len(rest).ok_or("unterminated string")?;
            self.pos += len;
            return Ok(rest[..len].to_string());
        }
        if rest.starts_with('{') {
            return self.object(depth + 1);
        }
        if rest.starts_with('[') {
            self.pos += 1;
            let mut items = Vec::new();
            if !self.eat("]") {
                loop {
                    items.push(self.value(depth + 1)?);
                    if self.eat("]") {
                        break;
                    }
                    if !self.eat(",") {
                        return Err(String::from("expected , or ] in list"));
                    }
                }
            }
            return Ok(format!("[{}]", items.join(",")));
        }
        // A bare token up to the next delimiter: number, true/false/null, or text.
        let end = rest.find([',', '}', ']']).unwrap_or(rest.len());
        let token = rest[..end].trim();
        if token.is_empty() {
            return Err(String::from("missing value"));
        }
        self.pos += end;
        let is_literal = matches!(token, "true" | "false" | "null") || token.parse::<f64>().is_ok_and(f64::is_finite);
        Ok(if is_literal { json::minify(token).unwrap_or_else(|| json::string(token)) } else { json::string(token) })
    }

    fn object(&mut self, depth: usize) -> Result<String, String> {
        if !self.eat("{") {
            return Err(String::from("expected {"));
        }
        let mut obj = ObjectBuilder::default();
        if self.eat("}") {
            return Ok(obj.finish());
        }
        loop {
            self.skip_ws();
            let rest = self.rest();
            let key = if let Some(after) = rest.strip_prefix(QUOTE) {
                let end = after.find(QUOTE).ok_or("unterminated key")?;
                self.pos += QUOTE.len() + end + QUOTE.len();
                after[..end].to_string()
            } else if rest.starts_with('"') {
                let len = json_string_len(rest).ok_or("unterminated key")?;
                self.pos += len;
                serde_json::from_str::<String>(&rest[..len]).map_err(|e| e.to_string())?
            } else {
                let end = rest.find(':').ok_or("expected key:value")?;
                self.pos += end;
                rest[..end].trim().to_string()
            };
            if key.is_empty() || !self.eat(":") {
                return Err(String::from("expected key:value"));
            }
            let value = self.value(depth)?;
            obj.push(&key, &value);
            if self.eat("}") {
                return Ok(obj.finish());
            }
            if !self.eat(",") {
                return Err(String::from("expected , or } in arguments"));
            }
        }
    }
}

fn json_string_len(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in text.char_indices().skip(1) {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            return Some(i + 1);
        }
    }
    None
}

/// `call:NAME{…}` → a call.
fn parse_call(body: &str) -> Result<Call, String> {
    let body = body.trim();
    let body = body.strip_prefix("call:").ok_or("expected call:NAME{…}")?;
    let brace = body.find('{').ok_or("call without arguments")?;
    let name = body[..brace].trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(format!("bad tool name {name:?}"));
    }
    let mut parser = ArgParser { text: body, pos: brace };
    let args = parser.object(0)?;
    if !parser.rest().trim().is_empty() {
        return Err(String::from("text after the arguments"));
    }
    Ok(Call::new(name, args))
}

struct Gemma4Calls;

impl CallFormat for Gemma4Calls {
    fn openers(&self) -> &[&'static str] {
        &[OPEN]
    }

    fn leading_openers(&self) -> &[&'static str] {
        &["call:"]
    }

    fn section_len(&self, buf: &str, scan: &mut Scan, eof: bool) -> Option<usize> {
        if buf.starts_with(OPEN) {
            return scan.until_closer(buf, &[CLOSE], eof);
        }
        // The stripped form `call:NAME{…}` ends with its balanced arguments object,
        // counting braces outside <|"|> strings. `scan.depth` is 0 while the name is read.
        if scan.depth == 0 {
            // `call:` then a name then `{`; anything else means this is prose, decided as
            // soon as it shows so the text can stream.
            let from = scan.pos.max("call:".len());
            let Some(name_len) = buf[from..].find(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.')))
            else {
                scan.pos = buf.len();
                return eof.then_some(buf.len());
            };
            let brace = from + name_len;
            if !buf[brace..].starts_with('{') {
                return Some(brace);
            }
            scan.pos = brace;
        }
        let mut i = scan.pos;
        while i < buf.len() {
            let rest = &buf[i..];
            if scan.quoted {
                match rest.find(QUOTE) {
                    Some(end) => {
                        i += end + QUOTE.len();
                        scan.quoted = false;
                        continue;
                    }
                    None => {
                        // Resume where a closing quote cut in two may start.
                        scan.pos = floor_char_boundary(buf, buf.len().saturating_sub(QUOTE.len() - 1)).max(i);
                        return eof.then_some(buf.len());
                    }
                }
            }
            if rest.starts_with(QUOTE) {
                i += QUOTE.len();
                scan.quoted = true;
                continue;
            }
            if rest.len() < QUOTE.len() && QUOTE.starts_with(rest) {
                // Half a quote marker: wait for the rest.
                break;
            }
            let Some(c) = rest.chars().next() else { break };
            match c {
                '{' => scan.depth += 1,
                '}' => {
                    scan.depth = scan.depth.saturating_sub(1);
                    if scan.depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
            i += c.len_utf8();
        }
        scan.pos = i;
        eof.then_some(buf.len())
    }

    fn parse(&self, section: &str, _tools: &Tools) -> Section {
        let stripped = !section.starts_with(OPEN);
        let body = section.strip_prefix(OPEN).unwrap_or(section);
        let body = body.strip_suffix(CLOSE).unwrap_or(body);
        match parse_call(body) {
            Ok(call) => Section::Calls(vec![call]),
            // `call:` at the start of a plain answer that is not a call is just text.
            Err(_) if stripped => Section::NotACall,
            Err(e) => Section::Malformed(e),
        }
    }
}

struct Gemma4;

impl ParserPlugin for Gemma4 {
    fn info() -> PluginInfo {
        parser_info(
            "gemma4",
            "Gemma 4 tool calls and thought channel",
            &[("gemma4", CapabilityKind::ToolCallParser), ("gemma4", CapabilityKind::ReasoningParser)],
        )
    }

    fn splitter(config: &SessionConfig) -> Result<Box<dyn Splitter>, String> {
        if config.parser != "gemma4" {
            return Err(unknown_parser(config, &["gemma4"]));
        }
        let reasoning = ReasoningSplitter::new(REASONING, config.reasoning_started);
        let calls = ToolCallSplitter::new(Gemma4Calls, Tools::parse(&config.tools_json));
        Ok(Box::new(Chain::new(Box::new(reasoning), Box::new(calls))))
    }
}

type Component = Adapter<Gemma4>;
rapid_plugin_sdk::output_parser::export_output_parser!(Component);
