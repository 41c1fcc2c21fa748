//! The `rapid-host` command line.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use std::io::Read;

use rapid_host::host_facts::{ByteSize, HostFacts};
use rapid_host::parsers::PipelineConfig;
use rapid_host::plugins::{PluginRuntime, PluginSet, SandboxLimits};
use rapid_host::registry::AliasRegistry;
use rapid_host::resolve::{ModelResolver, ResolveFailure, ResolvedModel};
use tracing_subscriber::EnvFilter;

mod cli;

use cli::*;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("RAPID_HOST_LOG").unwrap_or_else(|_| EnvFilter::new("warn,rapid_host=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Serve(args) => args.threads,
        Command::Generate(args) => args.threads,
        _ => None,
    };
    if let Some(n) = threads {
        limit_compute_threads(n.max(1));
    }
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--threads N` for every pool: rayon's, Candle's and its barrier pool (which our kernels
/// share) all size themselves from these variables when first used.
#[allow(unsafe_code)]
fn limit_compute_threads(n: usize) {
    // SAFETY: called from `main` before anything has started a thread (the runtime, the
    // plugin engine and every pool start later), so nothing reads the environment meanwhile.
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
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
        Command::Plugin { action: PluginAction::New { name, kind, lang, dir, sdk } } => {
            plugin_new(&name, kind, lang, &dir, sdk)
        }
        Command::Plugin { action: PluginAction::Test { wasm, fixtures, with_plugins } } => {
            plugin_test(&wasm, &fixtures, with_plugins.as_deref())
        }
        Command::Parse { tool_parser, reasoning_parser, plugins, tools, chunk, reasoning_started, cost } => {
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
            if cost {
                print_parser_costs_json(&set)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
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
