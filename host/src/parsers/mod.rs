//! Output parsing: raw model text → content, reasoning and tool calls, through the parser
//! plugins named by the model's alias.
//!
//! - [`session`]: one wasm parser session (its own store), with trap containment.
//! - [`pipeline`]: the reasoning parser, then the tool-call parser, as one stream; tool-call
//!   indices and ids are assigned here, once per response.
//! - [`message`]: assembles the OpenAI `message` a client would build from the stream.

pub mod fixtures;
pub mod message;
pub mod pipeline;
pub mod session;

pub use message::AssembledMessage;
pub use pipeline::{ParserPipeline, PipelineConfig, tool_prompt};
pub use session::ParserSession;

/// What a parser produces, in host terms. Tool-call indices are per response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseEvent {
    Content(String),
    Reasoning(String),
    ToolCallBegin {
        index: u32,
        id: String,
        name: String,
    },
    ToolCallArguments {
        index: u32,
        fragment: String,
    },
    ToolCallEnd(u32),
    /// A call that did not parse (its text went out as content); for metrics and logs.
    Malformed(String),
}
