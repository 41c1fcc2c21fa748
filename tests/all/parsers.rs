//! The golden parser corpus (tests/parsers/*.json) through the real wasm plugins: every
//! case whole, at chunk sizes 1, 2, 3 and 7, and at random chunkings, must assemble to the
//! expected message.

use std::sync::OnceLock;

use rapid_host::parsers::fixtures::{self, Chunking, FixtureCase, FixtureFile};
use rapid_host::parsers::{AssembledMessage, ParseEvent, ParserPipeline, PipelineConfig};
use rapid_host::plugins::{PluginRuntime, PluginSet, SandboxLimits};

use crate::support::{plugins_dir, repo_root, test_limits};

/// The shipped plugins, compiled once for all parser tests. These tests check what the
/// parsers answer, not their deadline (tests/all/limits.rs and traps.rs do): a per-call
/// deadline of seconds, so a busy CI machine (servers of other tests spinning beside these)
/// cannot turn a slow call into a failure.
fn plugins() -> &'static PluginSet {
    static SET: OnceLock<PluginSet> = OnceLock::new();
    SET.get_or_init(|| {
        let limits = SandboxLimits { call_timeout: std::time::Duration::from_secs(10), ..test_limits() };
        let set = PluginSet::load_dir(PluginRuntime::new(limits, None).expect("runtime"), &plugins_dir())
            .expect("plugins dir");
        assert!(set.failures.is_empty(), "{:?}", set.failures);
        set
    })
}

/// Every corpus case with its file's defaults applied.
fn corpus() -> Vec<(FixtureFile, FixtureCase)> {
    let files = fixtures::load(&repo_root().join("tests/parsers")).expect("corpus loads");
    let cases: Vec<(FixtureFile, FixtureCase)> =
        files.iter().flat_map(|f| f.cases.iter().map(move |c| (f.clone(), c.clone()))).collect();
    assert!(cases.len() >= 60, "corpus has {} cases", cases.len());
    cases
}

fn run(file: &FixtureFile, case: &FixtureCase, chunking: &Chunking) -> fixtures::Run {
    let run = fixtures::run(plugins(), &file.config(case), &case.raw, chunking).expect("pipeline");
    assert!(run.failures.is_empty(), "{}: {:?}", case.name, run.failures);
    run
}

/// What holds for every run, beyond matching the expectation.
fn check_invariants(case: &FixtureCase, message: &AssembledMessage, events: &[ParseEvent]) {
    let mut ids: Vec<&str> = message.tool_calls.iter().map(|c| c.id.as_str()).collect();
    for call in &message.tool_calls {
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&call.arguments)
            .unwrap_or_else(|e| panic!("{}: arguments not a JSON object string: {e}", case.name));
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), message.tool_calls.len(), "{}: duplicate ids", case.name);
    // Each call: begin once, then arguments, then end, indices 0..n in order.
    let begins: Vec<u32> = events
        .iter()
        .filter_map(|e| if let ParseEvent::ToolCallBegin { index, .. } = e { Some(*index) } else { None })
        .collect();
    assert_eq!(begins, (0..begins.len() as u32).collect::<Vec<_>>(), "{}", case.name);
}

#[test]
fn corpus_cases_parse_identically_whole_and_at_every_chunk_size() {
    let mut failures = Vec::new();
    for (file, case) in corpus() {
        for chunking in fixtures::standard_chunkings() {
            let run = run(&file, &case, &chunking);
            check_invariants(&case, &run.message, &run.events);
            if let Err(diff) = fixtures::check(&case.expect, &run) {
                failures.push(format!("{} / {} at {chunking}: {diff}", file.path.display(), case.name));
                break;
            }
        }
    }
    assert!(failures.is_empty(), "{} corpus failures:\n{}", failures.len(), failures.join("\n"));
}

/// xorshift64*: deterministic, so a failing chunking can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[test]
fn random_chunkings_give_one_answer() {
    for (n, (file, case)) in corpus().iter().enumerate() {
        let reference = run(file, case, &Chunking::Whole).message;
        let strip_ids = |m: &AssembledMessage| {
            let mut m = m.clone();
            m.tool_calls.iter_mut().for_each(|c| c.id.clear());
            m
        };
        for seed in 1..=12u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(n as u64));
            let sizes: Vec<usize> = (0..64).map(|_| 1 + rng.below(12) as usize).collect();
            let got = run(file, case, &Chunking::Sizes(sizes.clone()));
            check_invariants(case, &got.message, &got.events);
            assert_eq!(strip_ids(&got.message), strip_ids(&reference), "{}: chunking seed {seed} {sizes:?}", case.name);
        }
    }
}

#[test]
fn markers_never_leak_into_well_formed_output() {
    const MARKERS: &[&str] = &[
        "<tool_call>",
        "</tool_call>",
        "<think>",
        "</think>",
        "<|channel|>",
        "<|message|>",
        "<|start|>",
        "<|end|>",
        "<|call|>",
        "<|return|>",
        "<|constrain|>",
        "to=functions.",
        "<|tool_call>",
        "<tool_call|>",
        "<|channel>",
        "<channel|>",
        "<｜tool",
        "<|tool_calls_section",
        "<minimax:tool_call>",
        "<function=",
        "<|python_tag|>",
    ];
    for (file, case) in corpus().iter().filter(|(_, c)| c.expect.malformed == 0) {
        let message = run(file, case, &Chunking::Sizes(vec![1])).message;
        for marker in MARKERS {
            assert!(!message.content.contains(marker), "{}: content leaks {marker}: {:?}", case.name, message.content);
            assert!(!message.reasoning.contains(marker), "{}: reasoning leaks {marker}", case.name);
        }
    }
}

#[test]
fn random_text_never_traps_a_parser() {
    const PIECES: &[&str] = &[
        "<",
        ">",
        "|",
        "{",
        "}",
        "[",
        "]",
        "\"",
        ":",
        ",",
        "\n",
        " ",
        "a",
        "7",
        "é",
        "日",
        "🌍",
        "｜",
        "▁",
        "<tool_call>",
        "</tool_call>",
        "<think>",
        "</think>",
        "<|channel|>",
        "<|message|>",
        "<|start|>",
        "<|end|>",
        "<|call|>",
        "<|tool_call>",
        "<tool_call|>",
        "<|\"|>",
        "call:",
        "<function=",
        "<parameter=",
        "</parameter>",
        "</function>",
        "<|python_tag|>",
        "<｜tool▁calls▁begin｜>",
        "<｜tool▁call▁begin｜>",
        "<｜tool▁sep｜>",
        "<｜tool▁call▁end｜>",
        "<|tool_calls_section_begin|>",
        "<|tool_call_begin|>",
        "<|tool_call_argument_begin|>",
        "<minimax:tool_call>",
        "<invoke name=\"",
        "<arg_key>",
        "<arg_value>",
        "to=functions.",
        "analysis",
        "final",
        "\\",
        "null",
        "true",
        "-1e9",
    ];
    let pairs: &[(Option<&str>, Option<&str>)] = &[
        (Some("hermes"), Some("qwen3")),
        (Some("qwen3_coder_xml"), None),
        (Some("llama"), None),
        (Some("gemma4"), Some("gemma4")),
        (Some("harmony"), Some("harmony")),
        (Some("deepseek"), Some("deepseek_r1")),
        (Some("deepseek_v31"), None),
        (Some("glm47"), Some("glm4")),
        (Some("minimax"), Some("minimax")),
        (Some("kimi"), None),
    ];
    let mut rng = Rng(0xDEAD_BEEF_CAFE_F00D);
    for (tool, reasoning) in pairs {
        for round in 0..40 {
            let text: String = (0..rng.below(200)).map(|_| PIECES[rng.below(PIECES.len() as u64) as usize]).collect();
            let config = PipelineConfig {
                tool_parser: tool.map(str::to_string),
                reasoning_parser: reasoning.map(str::to_string),
                tools_json: String::from("[]"),
                reasoning_started: round % 2 == 0,
            };
            let mut pipeline = ParserPipeline::new(plugins(), &config).expect("pipeline");
            let chars: Vec<char> = text.chars().collect();
            for piece in chars.chunks(1 + rng.below(5) as usize) {
                pipeline.feed(&piece.iter().collect::<String>());
            }
            pipeline.finish();
            assert!(
                pipeline.failures.is_empty(),
                "{tool:?}/{reasoning:?} trapped on {text:?}: {:?}",
                pipeline.failures
            );
        }
    }
}

#[test]
fn unknown_parser_names_are_refused_with_the_available_ones() {
    let config = PipelineConfig { tool_parser: Some("nope".into()), ..PipelineConfig::default() };
    let err = ParserPipeline::new(plugins(), &config).expect_err("unknown parser");
    let text = err.to_string();
    assert!(text.contains("`nope`") && text.contains("hermes"), "{text}");
}

#[test]
fn concurrent_sessions_never_share_state() {
    let config = PipelineConfig { tool_parser: Some("hermes".into()), ..PipelineConfig::default() };
    let mut a = ParserPipeline::new(plugins(), &config).expect("a");
    let mut b = ParserPipeline::new(plugins(), &config).expect("b");
    let mut ma = AssembledMessage::default();
    let mut mb = AssembledMessage::default();
    ma.extend(&a.feed("Hi <tool_call>{\"name\": \"f\", "));
    mb.extend(&b.feed("Plain answer from b"));
    ma.extend(&a.feed("\"arguments\": {\"x\": 1}}</tool_call>"));
    mb.extend(&b.feed(" with more text."));
    ma.extend(&a.finish());
    mb.extend(&b.finish());
    assert_eq!(ma.content, "Hi");
    assert_eq!(ma.tool_calls.len(), 1);
    assert_eq!(mb.content, "Plain answer from b with more text.");
    assert!(mb.tool_calls.is_empty());
}
