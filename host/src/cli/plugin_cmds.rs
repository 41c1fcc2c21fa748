//! `parse`, `plugin test`: parser and policy plugins driven from the command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::*;
use rapid_host::host_facts::{ByteSize, HostFacts};
use rapid_host::parsers::{AssembledMessage, ParserPipeline, PipelineConfig};
use rapid_host::plugins::{PluginKind, PluginRuntime, PluginSet, SandboxLimits};
use rapid_host::registry::AliasRegistry;
use rapid_host::resolve::ModelResolver;
use rapid_host::scaffold::{ScaffoldKind, ScaffoldLang, default_sdk_path, scaffold};

/// `rapid-host plugin new`: writes the project and says what to run next.
pub(crate) fn plugin_new(
    name: &str,
    kind: ScaffoldKind,
    lang: ScaffoldLang,
    dir: &Path,
    sdk: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let sdk = sdk.unwrap_or_else(default_sdk_path);
    let root = scaffold(name, kind, lang, dir, &sdk)?;
    println!("created {}", root.display());
    let build = match lang {
        ScaffoldLang::Rust => "cargo build --release",
        ScaffoldLang::Js => "npm install && npm run build",
        ScaffoldLang::Python => "./build.sh",
    };
    println!("next: cd {} && {build}, then `rapid-host plugin test` as README.md says", root.display());
    Ok(ExitCode::SUCCESS)
}

/// Runs `input` through a parser pipeline, whole or `chunk` characters at a time.
pub(crate) fn parse_text(
    set: &PluginSet,
    config: &PipelineConfig,
    input: &str,
    chunk: Option<usize>,
) -> anyhow::Result<AssembledMessage> {
    let mut pipeline = ParserPipeline::new(set, config)?;
    let mut message = AssembledMessage::default();
    match chunk {
        Some(n) => {
            let chars: Vec<char> = input.chars().collect();
            for piece in chars.chunks(n) {
                message.extend(&pipeline.feed(&piece.iter().collect::<String>()));
            }
        }
        None => message.extend(&pipeline.feed(input)),
    }
    // The output ends here: a call still open was cut short, and stays a call with the
    // arguments it has (as `serve` answers a response cut by max_tokens).
    let tools: Vec<serde_json::Value> = serde_json::from_str(&config.tools_json).unwrap_or_default();
    let names = rapid_plugin_sdk::grammar::tool_names(&tools);
    message.extend(&pipeline.finish_cut(&names, None));
    for reason in &message.malformed {
        eprintln!("warning: malformed tool call kept as content: {reason}");
    }
    for failure in &pipeline.failures {
        eprintln!("warning: {failure}; the rest of the output was passed through unparsed");
    }
    Ok(message)
}

/// `parse --cost`: one JSON line per parser plugin on stderr.
pub(crate) fn print_parser_costs_json(set: &PluginSet) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    for (plugin, cost) in set.runtime().parser_costs().snapshot() {
        let (seconds, calls) = cost.call_seconds.sum_and_count();
        let line = serde_json::json!({
            "plugin": plugin,
            "feeds": cost.feeds.load(Ordering::Relaxed),
            "finishes": cost.finishes.load(Ordering::Relaxed),
            "input_bytes": cost.input_bytes.load(Ordering::Relaxed),
            "calls": calls,
            "seconds": seconds,
        });
        eprintln!("{}", serde_json::to_string(&line)?);
    }
    Ok(())
}

/// `rapid-host plugin test`: every fixture case at every standard chunking; a table; exit 1
/// if anything fails.
pub(crate) fn plugin_test(wasm: &Path, fixture_path: &Path, with_plugins: Option<&Path>) -> anyhow::Result<ExitCode> {
    use rapid_host::parsers::fixtures::{self, Chunking, standard_chunkings};

    // Metered: the cost report below counts the plugin's wasm instructions per byte, a
    // number that does not depend on this machine or its load.
    let runtime = PluginRuntime::metered(SandboxLimits::default(), PluginRuntime::default_cache_dir())?;
    let mut set = PluginSet::empty(runtime);
    // The plugin under test first, so it wins over a same-named one among the companions.
    set.load_file(wasm);
    if let Some(failure) = set.failures.first() {
        bail!("{}", failure.error);
    }
    if let Some(dir) = with_plugins {
        set.load_dir_into(dir)?;
    }
    let summary = set.plugins.first().context("plugin did not register")?.clone();
    println!("{} ({} {}, rapid:plugin@{})", wasm.display(), summary.name, summary.version, summary.wit_version);
    if summary.kind == PluginKind::AliasPolicy {
        return policy_test(&set, &summary.name, fixture_path);
    }
    let own_tool: Vec<&str> =
        summary.provides.iter().filter(|c| c.kind == "tool-call-parser").map(|c| c.name.as_str()).collect();
    let own_reasoning: Vec<&str> =
        summary.provides.iter().filter(|c| c.kind == "reasoning-parser").map(|c| c.name.as_str()).collect();

    let chunkings = standard_chunkings();
    let mut rows: Vec<[String; 4]> = Vec::new();
    let mut problems = Vec::new();
    let (mut passed, mut failed) = (0, 0);
    // At 1-character chunks: input bytes and instructions, for the cost per byte.
    let (mut char_bytes, mut char_instructions) = (0u64, 0u64);
    for file in fixtures::load(fixture_path)? {
        let file_label = file_name(&file.path);
        for case in &file.cases {
            let mut config = file.config(case);
            // Fixtures that name no parser use the plugin's own (when it has exactly one).
            if config.tool_parser.is_none() && config.reasoning_parser.is_none() {
                match (own_tool.as_slice(), own_reasoning.as_slice()) {
                    ([tool], _) => config.tool_parser = Some((*tool).to_string()),
                    ([], [reasoning]) => config.reasoning_parser = Some((*reasoning).to_string()),
                    _ => {}
                }
            }
            let mut marks = Vec::new();
            let mut ok = true;
            for chunking in &chunkings {
                let outcome =
                    fixtures::run(&set, &config, &case.raw, chunking).map_err(|e| e.to_string()).and_then(|run| {
                        if *chunking == Chunking::Sizes(vec![1]) {
                            char_bytes += case.raw.len() as u64;
                            char_instructions += run.instructions.unwrap_or(0);
                        }
                        fixtures::check(&case.expect, &run)
                    });
                match outcome {
                    Ok(()) => marks.push(String::from("ok")),
                    Err(diff) => {
                        marks.push(String::from("FAIL"));
                        if ok {
                            problems.push(format!("{file_label} / {}, chunks {chunking}: {diff}", case.name));
                        }
                        ok = false;
                    }
                }
            }
            if ok {
                passed += 1
            } else {
                failed += 1
            }
            rows.push([
                file_label.clone(),
                case.name.clone(),
                marks.join(" "),
                String::from(if ok { "pass" } else { "FAIL" }),
            ]);
        }
    }
    let chunk_header = format!("CHUNKS ({})", chunkings.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "));
    print_table(&["FIXTURE", "CASE", chunk_header.as_str(), "RESULT"], &rows);
    for problem in &problems {
        println!("  {problem}");
    }
    print_parser_cost(&set, &summary.name, char_bytes, char_instructions);
    println!("\n{passed} passed, {failed} failed");
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// What the plugin cost over all runs: calls, time inside it, and wasm instructions per
/// input byte at 1-character chunks (the streaming worst case).
fn print_parser_cost(set: &PluginSet, plugin: &str, char_bytes: u64, char_instructions: u64) {
    use std::sync::atomic::Ordering;
    let Some((_, cost)) = set.runtime().parser_costs().snapshot().into_iter().find(|(name, _)| name == plugin) else {
        return;
    };
    let feeds = cost.feeds.load(Ordering::Relaxed);
    let (seconds, calls) = cost.call_seconds.sum_and_count();
    let per_call = if calls == 0 { 0.0 } else { seconds / calls as f64 * 1e6 };
    println!(
        "\ncost of {plugin}: {feeds} feeds and {} finishes, {} bytes in; {:.1} ms inside the plugin ({per_call:.1} µs per call)",
        cost.finishes.load(Ordering::Relaxed),
        cost.input_bytes.load(Ordering::Relaxed),
        seconds * 1e3,
    );
    if char_bytes > 0 && char_instructions > 0 {
        println!(
            "  {:.0} wasm instructions per input byte at 1-character chunks (counted, not timed: \
             the same on any machine; a parser that rescans its buffer on every feed grows with the output)",
            char_instructions as f64 / char_bytes as f64
        );
    }
}

/// Alias-policy fixtures: model name (and free memory) → expected resolution or refusal.
pub(crate) fn policy_test(set: &PluginSet, policy_name: &str, fixture_path: &Path) -> anyhow::Result<ExitCode> {
    use rapid_host::resolve::PolicyFixtures;

    let registry = AliasRegistry::builtin()?;
    let policy = set.policy(policy_name).context("policy did not register")?;
    let mut rows: Vec<[String; 3]> = Vec::new();
    let mut problems = Vec::new();
    let (mut passed, mut failed) = (0, 0);
    for (path, fixtures) in PolicyFixtures::load(fixture_path)? {
        for case in &fixtures.cases {
            let mut facts = HostFacts::detect("cpu");
            if let Some(free) = &case.free_memory {
                facts.free_memory_bytes = free.parse::<ByteSize>().map_err(anyhow::Error::msg)?.0;
            }
            let outcome = ModelResolver::new(&registry, policy, facts).resolve(&case.model);
            let result = match case.check(&outcome) {
                Ok(()) => {
                    passed += 1;
                    "pass"
                }
                Err(diff) => {
                    failed += 1;
                    problems.push(format!("{} / {}: {diff}", file_name(&path), case.name));
                    "FAIL"
                }
            };
            rows.push([file_name(&path), case.name.clone(), String::from(result)]);
        }
    }
    print_table(&["FIXTURE", "CASE", "RESULT"], &rows);
    for problem in &problems {
        println!("  {problem}");
    }
    println!("\n{passed} passed, {failed} failed");
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
