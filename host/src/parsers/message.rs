//! The OpenAI `message` a client assembles from parser events.

use serde_json::{Value, json};

use super::ParseEvent;

/// One tool call, assembled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssembledCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssembledMessage {
    pub content: String,
    pub reasoning: String,
    pub tool_calls: Vec<AssembledCall>,
    pub malformed: Vec<String>,
}

impl AssembledMessage {
    pub fn push(&mut self, event: &ParseEvent) {
        match event {
            ParseEvent::Content(t) => self.content.push_str(t),
            ParseEvent::Reasoning(t) => self.reasoning.push_str(t),
            ParseEvent::ToolCallBegin { index, id, name } => {
                let slot = *index as usize;
                if self.tool_calls.len() <= slot {
                    self.tool_calls.resize(
                        slot + 1,
                        AssembledCall { id: String::new(), name: String::new(), arguments: String::new() },
                    );
                }
                self.tool_calls[slot].id.clone_from(id);
                self.tool_calls[slot].name.clone_from(name);
            }
            ParseEvent::ToolCallArguments { index, fragment } => {
                if let Some(call) = self.tool_calls.get_mut(*index as usize) {
                    call.arguments.push_str(fragment);
                }
            }
            ParseEvent::ToolCallEnd(index) => {
                if let Some(call) = self.tool_calls.get_mut(*index as usize).filter(|c| c.arguments.is_empty()) {
                    call.arguments.push_str("{}");
                }
            }
            ParseEvent::Malformed(reason) => self.malformed.push(reason.clone()),
        }
    }

    pub fn extend<'a>(&mut self, events: impl IntoIterator<Item = &'a ParseEvent>) {
        for e in events {
            self.push(e);
        }
    }

    /// `{"role":"assistant","content","reasoning_content","tool_calls"?}`; empty text is null.
    pub fn to_openai(&self) -> Value {
        let text = |s: &str| if s.is_empty() { Value::Null } else { Value::String(s.to_string()) };
        let mut message = json!({
            "role": "assistant",
            "content": text(&self.content),
            "reasoning_content": text(&self.reasoning),
        });
        if !self.tool_calls.is_empty() {
            message["tool_calls"] = self
                .tool_calls
                .iter()
                .map(|c| json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": c.arguments } }))
                .collect();
        }
        message
    }
}
