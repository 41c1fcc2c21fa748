//! What parsing costs: every bundled parser stays linear in its output when a tool call
//! carries a 1 MB argument streamed 1 or 4 characters at a time (work counted in wasm
//! instructions, never timed), and `/metrics` shows each plugin's calls and time.

use std::sync::OnceLock;

use rapid_host::parsers::{AssembledMessage, ParserPipeline, PipelineConfig};
use rapid_host::plugins::{PluginRuntime, PluginSet, SandboxLimits};
use serde_json::Value;

use crate::support::plugins_dir;

/// The shipped plugins on a runtime that counts instructions, with the server's limits.
fn metered_plugins() -> &'static PluginSet {
    static SET: OnceLock<PluginSet> = OnceLock::new();
    SET.get_or_init(|| {
        let runtime = PluginRuntime::metered(SandboxLimits::default(), None).expect("runtime");
        let set = PluginSet::load_dir(runtime, &plugins_dir()).expect("plugins dir");
        assert!(set.failures.is_empty(), "{:?}", set.failures);
        set
    })
}

/// A source file of about `bytes` bytes with what trips parsers up: quotes, braces, angle
/// brackets, commas, backslashes and multi-byte characters. It starts and ends with
/// non-whitespace, so formats that trim a value's edges keep it whole.
fn source_file(bytes: usize) -> String {
    const LINE: &str = "    let s = format!(\"{} <b>{}</b>, [{x}] \\\\ é日🌍\", a, b); // line\n";
    let mut text = String::from("fn main() {\n");
    while text.len() < bytes {
        text.push_str(LINE);
    }
    text.push('}');
    text
}

/// A write_file call carrying `file`, in one parser's wire format.
struct Case {
    tool_parser: Option<&'static str>,
    reasoning_parser: Option<&'static str>,
    raw: fn(&str) -> String,
    /// The file comes back as reasoning, not as a call argument.
    as_reasoning: bool,
}

fn json_args(file: &str) -> String {
    format!("{{\"path\": \"src/main.rs\", \"content\": {}}}", serde_json::to_string(file).expect("json"))
}

fn cases() -> Vec<Case> {
    let call = |tool: &'static str, raw: fn(&str) -> String| Case {
        tool_parser: Some(tool),
        reasoning_parser: None,
        raw,
        as_reasoning: false,
    };
    vec![
        call("hermes", |f| {
            format!(
                "Writing it. <tool_call>\n{{\"name\": \"write_file\", \"arguments\": {}}}\n</tool_call>",
                json_args(f)
            )
        }),
        call("qwen3_coder_xml", |f| {
            format!(
                "<tool_call>\n<function=write_file>\n<parameter=path>\nsrc/main.rs\n</parameter>\n\
                 <parameter=content>\n{f}\n</parameter>\n</function>\n</tool_call>"
            )
        }),
        call("llama", |f| format!("{{\"name\": \"write_file\", \"parameters\": {}}}", json_args(f))),
        call("deepseek", |f| {
            format!(
                "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>write_file\n```json\n{}\n```\
                 <｜tool▁call▁end｜><｜tool▁calls▁end｜>",
                json_args(f)
            )
        }),
        call("deepseek_v31", |f| {
            format!(
                "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>write_file<｜tool▁sep｜>{}<｜tool▁call▁end｜>\
                 <｜tool▁calls▁end｜>",
                json_args(f)
            )
        }),
        call("glm47", |f| {
            format!(
                "<tool_call>write_file\n<arg_key>path</arg_key>\n<arg_value>src/main.rs</arg_value>\n\
                 <arg_key>content</arg_key>\n<arg_value>{f}</arg_value>\n</tool_call>"
            )
        }),
        call("kimi", |f| {
            format!(
                "<|tool_calls_section_begin|><|tool_call_begin|>functions.write_file:0\
                 <|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|>",
                json_args(f)
            )
        }),
        call("minimax", |f| {
            format!(
                "<minimax:tool_call>\n<invoke name=\"write_file\">\n<parameter name=\"path\">src/main.rs</parameter>\n\
                 <parameter name=\"content\">{f}</parameter>\n</invoke>\n</minimax:tool_call>"
            )
        }),
        Case {
            tool_parser: Some("gemma4"),
            reasoning_parser: Some("gemma4"),
            raw: |f| {
                format!(
                    "<|channel>thought\nA file.<channel|><|tool_call>call:write_file{{path:<|\"|>src/main.rs<|\"|>,\
                     content:<|\"|>{f}<|\"|>}}<tool_call|>"
                )
            },
            as_reasoning: false,
        },
        Case {
            tool_parser: Some("harmony"),
            reasoning_parser: Some("harmony"),
            raw: |f| {
                format!(
                    "<|channel|>analysis<|message|>Write it.<|end|><|start|>assistant<|channel|>commentary \
                     to=functions.write_file <|constrain|>json<|message|>{}<|call|>",
                    json_args(f)
                )
            },
            as_reasoning: false,
        },
        Case {
            tool_parser: None,
            reasoning_parser: Some("qwen3"),
            raw: |f| format!("<think>{f}</think>Done."),
            as_reasoning: true,
        },
    ]
}

/// Streams `raw` `chars` characters at a time; returns the message and the instructions the
/// plugins ran. A stage that runs past `fuel` traps, and the test reports it.
fn parse_metered(case: &Case, raw: &str, chars: usize, fuel: u64) -> (AssembledMessage, u64) {
    let config = PipelineConfig {
        tool_parser: case.tool_parser.map(str::to_string),
        reasoning_parser: case.reasoning_parser.map(str::to_string),
        tools_json: String::from("[]"),
        reasoning_started: false,
    };
    let mut pipeline = ParserPipeline::new(metered_plugins(), &config).expect("pipeline");
    assert!(pipeline.set_fuel(fuel), "runtime is metered");
    let mut message = AssembledMessage::default();
    let bounds: Vec<usize> = raw.char_indices().map(|(i, _)| i).step_by(chars).chain([raw.len()]).collect();
    for piece in bounds.windows(2) {
        message.extend(&pipeline.feed(&raw[piece[0]..piece[1]]));
    }
    message.extend(&pipeline.finish());
    let used = pipeline.fuel_used().expect("metered");
    assert!(
        pipeline.failures.is_empty(),
        "{:?} at {chars}-character chunks: {:?} (a parser whose work grows faster than its output runs out of fuel)",
        case.tool_parser.or(case.reasoning_parser),
        pipeline.failures
    );
    (message, used)
}

fn check_file(case: &Case, message: &AssembledMessage, file: &str) {
    let name = case.tool_parser.or(case.reasoning_parser).unwrap_or_default();
    if case.as_reasoning {
        assert!(message.reasoning == file, "{name}: reasoning differs ({} bytes)", message.reasoning.len());
        assert_eq!(message.content, "Done.", "{name}");
        return;
    }
    assert_eq!(message.tool_calls.len(), 1, "{name}: {:?}", message.malformed);
    let call = &message.tool_calls[0];
    assert_eq!(call.name, "write_file", "{name}");
    let args: Value = serde_json::from_str(&call.arguments).expect("arguments are JSON");
    assert_eq!(args["path"], "src/main.rs", "{name}");
    assert!(args["content"].as_str() == Some(file), "{name}: the file came back changed");
}

/// 16 times the text may cost at most 24 times the instructions (linear work costs ~16
/// times, plus per-call overhead that the longer text amortizes; a parser that rescans its
/// buffer on every feed costs ~256 times and runs out of the fuel it is given long before).
#[test]
fn a_one_megabyte_argument_parses_in_linear_work_in_every_bundled_parser() {
    const SMALL: usize = 64 << 10;
    const LARGE: usize = 1 << 20;
    let (small_file, large_file) = (source_file(SMALL), source_file(LARGE));
    let scale = large_file.len() as f64 / small_file.len() as f64;
    let mut report = Vec::new();
    for case in cases() {
        let name = case.tool_parser.or(case.reasoning_parser).unwrap_or_default();
        for chars in [1, 4] {
            let (message, small) = parse_metered(&case, &(case.raw)(&small_file), chars, u64::MAX);
            check_file(&case, &message, &small_file);
            let budget = (small as f64 * scale * 2.0) as u64;
            let (message, large) = parse_metered(&case, &(case.raw)(&large_file), chars, budget);
            check_file(&case, &message, &large_file);
            let growth = large as f64 / small as f64;
            report.push(format!(
                "{name} at {chars}: {:.0} instructions/byte, x{growth:.1} for x{scale:.1} the text",
                large as f64 / large_file.len() as f64
            ));
            assert!(growth <= scale * 1.5, "{name} at {chars}-character chunks is not linear: {}", report.join("\n"));
        }
    }
    eprintln!("{}", report.join("\n"));
}

/// `/metrics` shows each parser plugin's calls, input bytes and time inside it.
#[tokio::test]
async fn metrics_show_time_in_each_parser_plugin() {
    use crate::server::{send, state};
    let app = rapid_host::server::router(state());
    // With tools, so the served tool parser (hermes) reads the answer.
    let body = r#"{"messages":[{"role":"user","content":"Weather in Paris?"}],"max_tokens":3,"temperature":0,
        "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]}"#;
    let (status, _, _) = send(app.clone(), "POST", "/v1/chat/completions", body).await;
    assert_eq!(status.as_u16(), 200);
    let (_, _, text) = send(app, "GET", "/metrics", "").await;
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    };
    assert!(value("rapid_host_parser_plugin_calls_total{plugin=\"hermes\",call=\"feed\"}") >= 1.0, "{text}");
    assert!(value("rapid_host_parser_plugin_calls_total{plugin=\"hermes\",call=\"finish\"}") >= 1.0, "{text}");
    assert!(value("rapid_host_parser_plugin_input_bytes_total{plugin=\"hermes\"}") >= 1.0, "{text}");
    assert!(value("rapid_host_parser_plugin_call_seconds_count{plugin=\"hermes\"}") >= 2.0, "{text}");
    assert!(value("rapid_host_parser_plugin_call_seconds_sum{plugin=\"hermes\"}") > 0.0, "{text}");
    assert!(text.contains("rapid_host_parser_plugin_call_seconds_bucket{plugin=\"hermes\",le=\"+Inf\"}"), "{text}");
    assert!(text.contains("# TYPE rapid_host_parser_plugin_call_seconds histogram"), "{text}");
}
