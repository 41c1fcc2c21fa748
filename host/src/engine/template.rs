//! Chat templates: the model's own Jinja template rendered with minijinja (plus the Python
//! string methods templates use), or a built-in one for families whose files lack it.

use minijinja::{Environment, ErrorKind, Value};
use serde_json::{Map, json};

use super::EngineError;
use super::gguf::GgufFile;
use super::tokenizer::ModelTokenizer;

/// Gemma's turn format, for GGUF files that carry no template (gemma-3-270m).
const GEMMA: &str = "{{ bos_token }}{% for message in messages %}\
{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}\
{% if role == 'system' %}{% set role = 'user' %}{% endif %}\
<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}\
{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}";

/// ChatML, the fallback for anything else without a template.
const CHATML: &str = "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}\
{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Where a file's chat template comes from: `("gguf", None)` when it carries one, else the
/// built-in template for its family.
pub fn template_source(gguf: &GgufFile, arch: &str) -> (&'static str, Option<&'static str>) {
    if gguf.get("tokenizer.chat_template").is_some() {
        ("gguf", None)
    } else if arch.starts_with("gemma") {
        ("built-in:gemma", Some(GEMMA))
    } else {
        ("built-in:chatml", Some(CHATML))
    }
}

pub struct ChatTemplate {
    /// Where the template came from: `gguf` or `built-in:<family>`.
    pub source: String,
    env: Environment<'static>,
    bos: String,
    eos: String,
    /// The template renders the request's `tools` itself; decided once at load by rendering
    /// a probe tool (templates that ignore `tools` get the tool parser's own prompt instead).
    pub supports_tools: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("supports_tools", &self.supports_tools)
            .finish_non_exhaustive()
    }
}

fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    pub fn new(source: &str, template: &str, bos: String, eos: String) -> Result<Self, EngineError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", template.to_string())
            .map_err(|e| EngineError::Template { name: source.to_string(), message: e.to_string() })?;
        let mut template = Self { source: source.to_string(), env, bos, eos, supports_tools: false };
        template.supports_tools = template.renders_tools();
        Ok(template)
    }

    /// Whether a probe tool's name reaches the rendered prompt.
    fn renders_tools(&self) -> bool {
        const PROBE: &str = "rapid_host_probe_tool_7c1f";
        let messages = json!([{"role": "user", "content": "hello"}]);
        let tools = json!([{"type": "function", "function": {
            "name": PROBE, "description": "probe", "parameters": {"type": "object", "properties": {}}
        }}]);
        self.render(&messages, Some(&tools), true, &Map::new()).is_ok_and(|prompt| prompt.contains(PROBE))
    }

    /// The template of a GGUF file, or the built-in one for its architecture.
    pub fn from_gguf(gguf: &GgufFile, arch: &str, tokenizer: &ModelTokenizer) -> Result<Self, EngineError> {
        let name = |id: Option<u32>| id.and_then(|i| tokenizer.token(i)).unwrap_or_default().to_string();
        let bos = name(tokenizer.bos);
        let eos = name(gguf.u32("tokenizer.ggml.eos_token_id").ok());
        let (source, builtin) = template_source(gguf, arch);
        match builtin {
            Some(template) => Self::new(source, template, bos, eos),
            None => Self::new(source, &gguf.string("tokenizer.chat_template")?, bos, eos),
        }
    }

    /// The template of a checkpoint directory: `chat_template.jinja`, else
    /// `tokenizer_config.json`'s `chat_template` (a string, or a list of named templates of
    /// which `default` is used), else built-in ChatML.
    pub fn from_dir(dir: &std::path::Path, tokenizer: &ModelTokenizer) -> Result<Self, EngineError> {
        let name = |id: Option<u32>| id.and_then(|i| tokenizer.token(i)).unwrap_or_default().to_string();
        let bos = name(tokenizer.bos);
        let eos = name(tokenizer.stop_ids.first().copied());
        if let Ok(template) = std::fs::read_to_string(dir.join("chat_template.jinja")) {
            return Self::new("chat_template.jinja", &template, bos, eos);
        }
        let config: Option<serde_json::Value> =
            std::fs::read_to_string(dir.join("tokenizer_config.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
        let template = match config.as_ref().and_then(|c| c.get("chat_template")) {
            Some(serde_json::Value::String(t)) => Some(t.clone()),
            Some(serde_json::Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template").and_then(|t| t.as_str()))
                .map(str::to_string),
            _ => None,
        };
        match template {
            Some(t) => Self::new("tokenizer_config.json", &t, bos, eos),
            None => Self::new("built-in:chatml", CHATML, bos, eos),
        }
    }

    /// Renders `messages` (OpenAI format) with `tools`, the generation prompt and
    /// `chat_template_kwargs` such as `enable_thinking`.
    pub fn render(
        &self,
        messages: &serde_json::Value,
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
        kwargs: &Map<String, serde_json::Value>,
    ) -> Result<String, EngineError> {
        let mut context = kwargs.clone();
        context.insert("messages".into(), messages.clone());
        context.insert("add_generation_prompt".into(), json!(add_generation_prompt));
        context.insert("bos_token".into(), json!(self.bos));
        context.insert("eos_token".into(), json!(self.eos));
        if let Some(tools) = tools {
            context.insert("tools".into(), tools.clone());
        }
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| EngineError::Template { name: self.source.clone(), message: e.to_string() })?;
        template
            .render(Value::from_serialize(&context))
            .map_err(|e| EngineError::Template { name: self.source.clone(), message: format!("{e:#}") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemma_builtin_renders_turns() {
        let t = ChatTemplate::new("built-in:gemma", GEMMA, "<bos>".into(), "<eos>".into()).expect("compiles");
        let out = t.render(&json!([{"role": "user", "content": "Hi"}]), None, true, &Map::new()).expect("renders");
        assert_eq!(out, "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n");
    }

    #[test]
    fn python_methods_and_exceptions_work() {
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ messages[0]['content'].strip().upper() }}";
        let t = ChatTemplate::new("test", src, String::new(), String::new()).expect("compiles");
        assert_eq!(
            t.render(&json!([{"role": "user", "content": " hi "}]), None, false, &Map::new()).expect("ok"),
            "HI"
        );
        let err = t.render(&json!([{"role": "system", "content": "x"}]), None, false, &Map::new()).expect_err("raises");
        assert!(err.to_string().contains("first must be user") && err.to_string().contains("test"), "{err}");
    }

    #[test]
    fn tool_support_is_decided_at_load() {
        let plain = ChatTemplate::new("built-in:chatml", CHATML, String::new(), String::new()).expect("compiles");
        assert!(!plain.supports_tools);
        let src =
            "{% if tools %}{% for t in tools %}{{ t.function.name }}{% endfor %}{% endif %}{{ messages[0].content }}";
        let with_tools = ChatTemplate::new("test", src, String::new(), String::new()).expect("compiles");
        assert!(with_tools.supports_tools);
    }

    #[test]
    fn a_broken_template_is_an_error_naming_it() {
        let err = ChatTemplate::new("gguf", "{% for x in %}", String::new(), String::new()).expect_err("syntax error");
        assert!(err.to_string().contains("chat template `gguf`"), "{err}");
    }
}
