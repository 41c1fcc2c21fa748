//! Harmony (gpt-oss): messages `<|channel|>analysis<|message|>R<|end|>` (reasoning),
//! `<|start|>assistant<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>
//! {ARGS}<|call|>` (a tool call) and `<|channel|>final<|message|>C<|return|>` (content).
//! `<|call|>` and `<|return|>` are stop tokens and often missing; names may contain `-`.
//! Provides `harmony` as tool-call and as reasoning parser: one session routes every
//! channel, and no harmony marker ever reaches content.

use rapid_plugin_sdk::json::{self, Tools};
use rapid_plugin_sdk::markers::{Channel, Pending, find_first, partial_suffix};
use rapid_plugin_sdk::output_parser::{
    Adapter, CapabilityKind, ParserPlugin, PluginInfo, SessionConfig, parser_info, unknown_parser,
};
use rapid_plugin_sdk::tool_calls::{Event, Splitter};

const MESSAGE: &str = "<|message|>";
/// What ends a message body. `<|start|>` and `<|channel|>` also begin the next header.
const BODY_END: &[&str] = &["<|end|>", "<|call|>", "<|return|>", "<|start|>", "<|channel|>"];
const CONSUMED_END: &[&str] = &["<|end|>", "<|call|>", "<|return|>"];

#[derive(Debug, Clone, PartialEq)]
enum Route {
    Reasoning,
    Content,
    Tool(String),
}

#[derive(Debug)]
enum State {
    /// Before anything: plain text here means the model is not speaking harmony.
    Start,
    /// Reading a header up to `<|message|>`.
    Header(String),
    Body(Route, String),
}

struct HarmonySplitter {
    _tools: Tools,
    buf: Pending,
    state: State,
    content: Channel,
    reasoning: Channel,
    next_index: u32,
}

fn route_of(header: &str) -> Route {
    if let Some(at) = header.find("to=") {
        let target: String = header[at + 3..].chars().take_while(|c| !c.is_whitespace() && *c != '<').collect();
        let name = target.strip_prefix("functions.").unwrap_or(&target);
        if !name.is_empty() {
            return Route::Tool(name.to_string());
        }
    }
    let channel = header
        .rsplit("<|channel|>")
        .next()
        .filter(|_| header.contains("<|channel|>"))
        .map(|c| c.trim().split(|ch: char| ch.is_whitespace() || ch == '<').next().unwrap_or(""));
    match channel {
        Some("analysis") => Route::Reasoning,
        _ => Route::Content,
    }
}

impl HarmonySplitter {
    fn new(tools: Tools) -> Self {
        Self {
            _tools: tools,
            buf: Pending::default(),
            state: State::Start,
            content: Channel::default(),
            reasoning: Channel::default(),
            next_index: 0,
        }
    }

    fn stream(&mut self, route: &Route, text: &str, out: &mut Vec<Event>) {
        match route {
            Route::Reasoning => {
                let t = self.reasoning.push(text);
                if !t.is_empty() {
                    out.push(Event::Reasoning(t));
                }
            }
            Route::Content => {
                let t = self.content.push(text);
                if !t.is_empty() {
                    out.push(Event::Content(t));
                }
            }
            Route::Tool(_) => {}
        }
    }

    fn end_message(&mut self, route: Route, body: String, out: &mut Vec<Event>) {
        match route {
            Route::Reasoning => self.reasoning.close(),
            Route::Content => self.content.close(),
            Route::Tool(name) => {
                let args = json::arguments_text(&body);
                match args {
                    Some(arguments) => {
                        self.content.close();
                        let index = self.next_index;
                        self.next_index += 1;
                        out.push(Event::ToolCallBegin { index, id: String::new(), name });
                        out.push(Event::ToolCallArguments { index, fragment: arguments });
                        out.push(Event::ToolCallEnd(index));
                    }
                    None => {
                        let t = self.content.push(&body);
                        if !t.is_empty() {
                            out.push(Event::Content(t));
                        }
                        out.push(Event::Malformed(format!("arguments of {name} are not a JSON object")));
                    }
                }
            }
        }
    }

    fn run(&mut self, eof: bool, out: &mut Vec<Event>) {
        loop {
            match std::mem::replace(&mut self.state, State::Start) {
                State::Start => {
                    // Leading whitespace is never content: drop it now rather than look at
                    // it again on every feed.
                    let rest = self.buf.as_str();
                    let skip = rest.len() - rest.trim_start().len();
                    self.buf.take(skip);
                    let rest = self.buf.as_str();
                    // Wait for the first character after `<` to tell a marker from text.
                    if rest.is_empty() || (!eof && rest == "<") {
                        if eof {
                            self.buf.take_all_but(0);
                        }
                        self.state = State::Start;
                        return;
                    }
                    // Harmony output starts with a marker; anything else is plain content
                    // up to the first harmony marker.
                    self.state = if rest.starts_with("<|") {
                        State::Header(String::new())
                    } else {
                        State::Body(Route::Content, String::new())
                    };
                }
                State::Header(mut header) => match self.buf.as_str().find(MESSAGE) {
                    Some(pos) => {
                        header.push_str(self.buf.take(pos));
                        self.buf.take(MESSAGE.len());
                        let route = route_of(&header);
                        self.state = State::Body(route, String::new());
                    }
                    None => {
                        if eof {
                            // An unfinished header carries nothing for the user.
                            self.buf.take_all_but(0);
                            self.state = State::Header(header);
                            return;
                        }
                        let keep = partial_suffix(self.buf.as_str(), &[MESSAGE]);
                        header.push_str(self.buf.take_all_but(keep));
                        self.state = State::Header(header);
                        return;
                    }
                },
                State::Body(route, mut body) => match find_first(self.buf.as_str(), BODY_END) {
                    Some((pos, i)) => {
                        let piece = self.buf.take(pos).to_string();
                        if CONSUMED_END.contains(&BODY_END[i]) {
                            self.buf.take(BODY_END[i].len());
                        }
                        self.stream(&route, &piece, out);
                        if matches!(route, Route::Tool(_)) {
                            body.push_str(&piece);
                        }
                        self.end_message(route, body, out);
                        self.state = State::Header(String::new());
                    }
                    None => {
                        let keep = if eof { 0 } else { partial_suffix(self.buf.as_str(), BODY_END) };
                        let piece = self.buf.take_all_but(keep).to_string();
                        self.stream(&route, &piece, out);
                        if matches!(route, Route::Tool(_)) {
                            body.push_str(&piece);
                        }
                        if eof {
                            self.end_message(route, body, out);
                            self.state = State::Header(String::new());
                        } else {
                            self.state = State::Body(route, body);
                        }
                        return;
                    }
                },
            }
        }
    }
}

impl Splitter for HarmonySplitter {
    fn feed(&mut self, delta: &str) -> Vec<Event> {
        self.buf.push(delta);
        let mut out = Vec::new();
        self.run(false, &mut out);
        out
    }

    fn finish(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        self.run(true, &mut out);
        out
    }
}

struct Harmony;

impl ParserPlugin for Harmony {
    fn info() -> PluginInfo {
        parser_info(
            "harmony",
            "gpt-oss Harmony channels: analysis, commentary tool calls, final",
            &[("harmony", CapabilityKind::ToolCallParser), ("harmony", CapabilityKind::ReasoningParser)],
        )
    }

    fn splitter(config: &SessionConfig) -> Result<Box<dyn Splitter>, String> {
        if config.parser != "harmony" {
            return Err(unknown_parser(config, &["harmony"]));
        }
        Ok(Box::new(HarmonySplitter::new(Tools::parse(&config.tools_json))))
    }
}

type Component = Adapter<Harmony>;
rapid_plugin_sdk::output_parser::export_output_parser!(Component);
