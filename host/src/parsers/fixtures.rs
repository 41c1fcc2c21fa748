//! Parser fixtures: raw model output → expected message, the format of our own corpus
//! (`tests/parsers/*.json`) and of `rapid-host plugin test`, defined by the JSON Schema
//! `docs/fixture.schema.json`. Files are checked against that schema before they are read,
//! so a mistake is reported with the file, the case and the field.

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
    #[error("{path}: not JSON: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("{path} does not follow the fixture format (docs/fixture.schema.json):\n  {}", problems.join("\n  "))]
    Invalid { path: PathBuf, problems: Vec<String> },
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
            let value: Value =
                serde_json::from_str(&text).map_err(|source| FixtureError::Parse { path: file.clone(), source })?;
            let problems = schema_problems(&value);
            if !problems.is_empty() {
                return Err(FixtureError::Invalid { path: file, problems });
            }
            let mut parsed: FixtureFile =
                serde_json::from_value(value).map_err(|source| FixtureError::Parse { path: file.clone(), source })?;
            parsed.path = file;
            Ok(parsed)
        })
        .collect()
}

/// The fixture format, as published in `docs/fixture.schema.json`.
pub const SCHEMA: &str = include_str!("../../../docs/fixture.schema.json");

/// Where `value` breaks the fixture schema, each problem naming the case (by its `name`)
/// and the field; empty when it follows it.
pub fn schema_problems(value: &Value) -> Vec<String> {
    let schema: Value = match serde_json::from_str(SCHEMA) {
        Ok(schema) => schema,
        Err(e) => return vec![format!("the fixture schema itself is not JSON: {e}")],
    };
    let mut problems = Vec::new();
    check_schema(&schema, &schema, value, &mut Vec::new(), &mut problems);
    problems
        .into_iter()
        .map(|(path, message)| {
            let (case, field) = describe(value, &path);
            format!("{case}{field}: {message}")
        })
        .collect()
}

/// One step of a path into the document.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// `case "NAME" (cases[2]), ` and the field path within it.
fn describe(value: &Value, path: &[Step]) -> (String, String) {
    let (case, rest) = match path {
        [Step::Key(cases), Step::Index(i), rest @ ..] if cases == "cases" => {
            let name = value.pointer(&format!("/cases/{i}/name")).and_then(Value::as_str);
            let case = match name {
                Some(name) => format!("case {name:?} (cases[{i}])"),
                None => format!("case {} (cases[{i}], no name)", i + 1),
            };
            (case, rest)
        }
        _ => (String::from("file"), path),
    };
    let mut field = String::new();
    for step in rest {
        match step {
            Step::Key(k) if field.is_empty() => field.push_str(k),
            Step::Key(k) => field.push_str(&format!(".{k}")),
            Step::Index(i) => field.push_str(&format!("[{i}]")),
        }
    }
    if field.is_empty() { (case, String::new()) } else { (case, format!(", field `{field}`")) }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The subset of JSON Schema (2020-12) the fixture schema uses: `type`, `properties`,
/// `required`, `additionalProperties: false`, `items`, `minItems`, `minLength`, `minimum`
/// and local `$ref`s. Annotations (`description`, `title`, …) are ignored.
fn check_schema(
    root: &Value,
    schema: &Value,
    value: &Value,
    path: &mut Vec<Step>,
    problems: &mut Vec<(Vec<Step>, String)>,
) {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let target = reference.strip_prefix('#').and_then(|pointer| root.pointer(pointer));
        match target {
            Some(target) => check_schema(root, target, value, path, problems),
            None => problems.push((path.clone(), format!("schema error: unresolved $ref {reference}"))),
        }
        return;
    }
    if let Some(types) = schema.get("type") {
        let allowed: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let actual = type_name(value);
        let fits = allowed.iter().any(|t| *t == actual || (*t == "number" && actual == "integer"));
        if !fits {
            let article = |t: &str| if t.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
            let wanted: Vec<String> = allowed.iter().map(|t| format!("{} {t}", article(t))).collect();
            problems.push((path.clone(), format!("must be {}, not {} {actual}", wanted.join(" or "), article(actual))));
            return;
        }
    }
    match value {
        Value::Object(map) => {
            for key in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str)
            {
                if !map.contains_key(key) {
                    problems.push((path.clone(), format!("`{key}` is missing")));
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            for (key, item) in map {
                path.push(Step::Key(key.clone()));
                match properties.and_then(|p| p.get(key)) {
                    Some(sub) => check_schema(root, sub, item, path, problems),
                    None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                        let known: Vec<&str> =
                            properties.map(|p| p.keys().map(String::as_str).collect()).unwrap_or_default();
                        path.pop();
                        problems.push((path.clone(), format!("unknown field `{key}` (known: {})", known.join(", "))));
                        continue;
                    }
                    None => {}
                }
                path.pop();
            }
        }
        Value::Array(items) => {
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < min
            {
                problems.push((path.clone(), format!("needs at least {min} item(s)")));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    path.push(Step::Index(i));
                    check_schema(root, item_schema, item, path, problems);
                    path.pop();
                }
            }
        }
        Value::String(text) => {
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && (text.chars().count() as u64) < min
            {
                problems.push((path.clone(), format!("must be at least {min} character(s)")));
            }
        }
        Value::Number(n) => {
            if let (Some(min), Some(x)) = (schema.get("minimum").and_then(Value::as_f64), n.as_f64())
                && x < min
            {
                problems.push((path.clone(), format!("must be at least {min}")));
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
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
    /// Wasm instructions the parsers ran, on a metered runtime.
    pub instructions: Option<u64>,
}

/// Streams `raw` through a fresh pipeline.
pub fn run(plugins: &PluginSet, config: &PipelineConfig, raw: &str, chunking: &Chunking) -> Result<Run, PipelineError> {
    let mut pipeline = ParserPipeline::new(plugins, config)?;
    // Counted, not limited: the per-call deadline still bounds every call.
    let metered = pipeline.set_fuel(u64::MAX / 2);
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
    Ok(Run {
        message,
        events,
        failures: pipeline.failures.iter().map(ToString::to_string).collect(),
        instructions: if metered { pipeline.fuel_used() } else { None },
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every keyword the published schema uses is one the checker implements, so the file
    /// and the checker cannot drift apart silently.
    #[test]
    fn the_schema_uses_only_keywords_the_checker_knows() {
        const KNOWN: &[&str] = &[
            "$schema",
            "$id",
            "$defs",
            "$ref",
            "title",
            "description",
            "type",
            "properties",
            "required",
            "additionalProperties",
            "items",
            "minItems",
            "minLength",
            "minimum",
        ];
        fn walk(schema: &Value, in_properties: bool, bad: &mut Vec<String>) {
            if let Value::Object(map) = schema {
                for (key, sub) in map {
                    if !in_properties && !KNOWN.contains(&key.as_str()) {
                        bad.push(key.clone());
                    }
                    let names_map = !in_properties && (key == "properties" || key == "$defs");
                    walk(sub, names_map, bad);
                }
            }
        }
        let schema: Value = serde_json::from_str(SCHEMA).expect("schema is JSON");
        let mut bad = Vec::new();
        walk(&schema, false, &mut bad);
        assert!(bad.is_empty(), "unsupported keywords {bad:?}");
    }

    #[test]
    fn problems_name_the_case_and_the_field() {
        let doc: Value = serde_json::from_str(
            r#"{"tool_parser": "hermes", "cases": [
                {"name": "ok", "raw": "x", "expect": {"content": "x"}},
                {"name": "object args", "raw": "y", "expect": {"content": null,
                    "tool_calls": [{"name": "f", "arguments": {"a": 1}}], "malformed": -1}},
                {"raw": "z", "expect": {"contnet": "z"}}
            ]}"#,
        )
        .expect("json");
        let problems = schema_problems(&doc);
        assert_eq!(
            problems,
            [
                "case \"object args\" (cases[1]), field `expect.tool_calls[0].arguments`: must be a string, not an object",
                "case \"object args\" (cases[1]), field `expect.malformed`: must be at least 0",
                "case 3 (cases[2], no name): `name` is missing",
                "case 3 (cases[2], no name), field `expect`: unknown field `contnet` (known: content, reasoning_content, tool_calls, malformed)",
            ]
        );
        assert_eq!(schema_problems(&serde_json::json!([])), ["file: must be an object, not an array"]);
    }
}
