//! Parser fixtures: raw model output → expected message, the format of our own corpus
//! (`tests/parsers/*.json`) and of `rapid-host plugin test`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::{AssembledMessage, ParserPipeline, PipelineConfig};
use crate::parsers::pipeline::PipelineError;
use crate::plugins::PluginSet;

/// One fixture file: defaults for its cases, and the cases.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureFile {
    #[serde(skip)]
    pub path: PathBuf,
    #[serde(default)]
    pub about: Option<String>,
    #[serde(default)]
    pub tool_parser: Option<String>,
    #[serde(default)]
    pub reasoning_parser: Option<String>,
    pub cases: Vec<FixtureCase>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureCase {
    pub name: String,
    pub raw: String,
    pub expect: Expected,
    #[serde(default)]
    pub tool_parser: Option<String>,
    #[serde(default)]
    pub reasoning_parser: Option<String>,
    /// The request's `tools` array, for schema-typed values.
    #[serde(default)]
    pub tools: Option<Value>,
    #[serde(default)]
    pub reasoning_started: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    pub content: Option<String>,
    pub reasoning_content: Option<String>,
    #[serde(default)]
    pub tool_calls: Vec<ExpectedCall>,
    #[serde(default)]
    pub malformed: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedCall {
    pub name: String,
    /// The exact arguments string (compact JSON, the model's key order).
    pub arguments: String,
    /// Only for formats that carry their own ids (kimi); others get `call_…` ids.
    #[serde(default)]
    pub id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("no fixture files (*.json) in {0}")]
    Empty(PathBuf),
}

/// `path` itself, or every `*.json` directly in it when it is a directory, in name order.
pub fn json_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    Ok(files)
}

/// Loads one `.json` file, or every `*.json` in a directory (name order).
pub fn load(path: &Path) -> Result<Vec<FixtureFile>, FixtureError> {
    let files = json_files(path).map_err(|source| FixtureError::Read { path: path.to_path_buf(), source })?;
    if files.is_empty() {
        return Err(FixtureError::Empty(path.to_path_buf()));
    }
    files
        .into_iter()
        .map(|file| {
            let text =
                std::fs::read_to_string(&file).map_err(|source| FixtureError::Read { path: file.clone(), source })?;
            let mut parsed: FixtureFile =
                serde_json::from_str(&text).map_err(|source| FixtureError::Parse { path: file.clone(), source })?;
            parsed.path = file;
            Ok(parsed)
        })
        .collect()
}

impl FixtureFile {
    /// The pipeline configuration of `case`, its own parsers overriding the file's.
    pub fn config(&self, case: &FixtureCase) -> PipelineConfig {
        PipelineConfig {
            tool_parser: case.tool_parser.clone().or_else(|| self.tool_parser.clone()),
            reasoning_parser: case.reasoning_parser.clone().or_else(|| self.reasoning_parser.clone()),
            tools_json: case.tools.as_ref().map_or_else(|| String::from("[]"), Value::to_string),
            reasoning_started: case.reasoning_started,
        }
    }
}

/// How raw text is cut into stream deltas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunking {
    Whole,
    /// Character counts, cycled.
    Sizes(Vec<usize>),
}

impl std::fmt::Display for Chunking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Whole => f.write_str("whole"),
            Self::Sizes(sizes) if sizes.len() == 1 => write!(f, "{}", sizes[0]),
            Self::Sizes(sizes) => write!(f, "{sizes:?}"),
        }
    }
}

/// Whole, and 1, 2, 3 and 7 characters at a time.
pub fn standard_chunkings() -> Vec<Chunking> {
    let mut all = vec![Chunking::Whole];
    all.extend([1, 2, 3, 7].map(|n| Chunking::Sizes(vec![n])));
    all
}

/// The outcome of one run: the message, and any plugin failures during it.
#[derive(Debug)]
pub struct Run {
    pub message: AssembledMessage,
    pub events: Vec<super::ParseEvent>,
    pub failures: Vec<String>,
}

/// Streams `raw` through a fresh pipeline.
pub fn run(plugins: &PluginSet, config: &PipelineConfig, raw: &str, chunking: &Chunking) -> Result<Run, PipelineError> {
    let mut pipeline = ParserPipeline::new(plugins, config)?;
    let mut events = Vec::new();
    match chunking {
        Chunking::Whole => events.extend(pipeline.feed(raw)),
        Chunking::Sizes(sizes) => {
            let chars: Vec<char> = raw.chars().collect();
            let (mut at, mut i) = (0, 0);
            while at < chars.len() {
                let n = sizes.get(i % sizes.len().max(1)).copied().unwrap_or(1).clamp(1, chars.len() - at);
                events.extend(pipeline.feed(&chars[at..at + n].iter().collect::<String>()));
                at += n;
                i += 1;
            }
        }
    }
    events.extend(pipeline.finish());
    let mut message = AssembledMessage::default();
    message.extend(&events);
    Ok(Run { message, events, failures: pipeline.failures.iter().map(ToString::to_string).collect() })
}

/// Compares a run with the expectation; `Err` describes every difference.
pub fn check(expected: &Expected, run: &Run) -> Result<(), String> {
    let mut diffs = Vec::new();
    let m = &run.message;
    let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
    if text(&m.content) != expected.content {
        diffs.push(format!("content {:?}, want {:?}", text(&m.content), expected.content));
    }
    if text(&m.reasoning) != expected.reasoning_content {
        diffs.push(format!("reasoning_content {:?}, want {:?}", text(&m.reasoning), expected.reasoning_content));
    }
    let got: Vec<(&str, &str)> = m.tool_calls.iter().map(|c| (c.name.as_str(), c.arguments.as_str())).collect();
    let want: Vec<(&str, &str)> = expected.tool_calls.iter().map(|c| (c.name.as_str(), c.arguments.as_str())).collect();
    if got != want {
        diffs.push(format!("tool calls {got:?}, want {want:?}"));
    }
    for (call, want) in m.tool_calls.iter().zip(&expected.tool_calls) {
        match &want.id {
            Some(id) if *id != call.id => diffs.push(format!("id {:?}, want {id:?}", call.id)),
            None if !(call.id.starts_with("call_") && call.id.len() == 29) => {
                diffs.push(format!("id {:?} is not call_ + 24 hex digits", call.id));
            }
            _ => {}
        }
    }
    if m.malformed.len() != expected.malformed {
        diffs.push(format!("{} malformed, want {} ({:?})", m.malformed.len(), expected.malformed, m.malformed));
    }
    if !run.failures.is_empty() {
        diffs.push(format!("plugin failed: {}", run.failures.join("; ")));
    }
    if diffs.is_empty() { Ok(()) } else { Err(diffs.join("; ")) }
}
