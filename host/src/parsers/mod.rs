//! Output parsing: raw model text → content, reasoning and tool calls, through the parser
//! plugins named by the model's alias.
//!
//! - [`session`]: one wasm parser session (its own store), with trap containment.
//! - [`pipeline`]: the reasoning parser, then the tool-call parser, as one stream; tool-call
//!   indices and ids are assigned here, once per response.
//! - [`cost`]: calls, bytes and time inside each parser plugin, for `/metrics`.
//! - [`partial`]: tool calls that generation cut short keep their name and arguments so far.
//! - [`message`]: assembles the OpenAI `message` a client would build from the stream.

pub mod cost;
pub mod fixtures;
pub mod message;
pub mod partial;
pub mod pipeline;
pub mod session;

pub use message::AssembledMessage;
pub use pipeline::{ParserPipeline, PipelineConfig, tool_call_grammar, tool_prompt};
pub use session::ParserSession;

/// What a parser produces: the SDK's event type, shared by guests and host. Tool-call
/// indices are per response once they leave the [`ParserPipeline`].
pub use rapid_plugin_sdk::tool_calls::Event as ParseEvent;
