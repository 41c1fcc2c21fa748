//! Command-line arguments (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use rapid_host::host_facts::ByteSize;
use rapid_host::scaffold::{ScaffoldKind, ScaffoldLang};

#[derive(Debug, Parser)]
#[command(name = "rapid-host", version, about = "OpenAI-compatible local LLM server with WebAssembly plugins")]
pub(crate) struct Cli {
    /// Alias table to use instead of the built-in aliases.json.
    #[arg(long, global = true, env = "RAPID_HOST_ALIASES", value_name = "FILE")]
    pub(crate) aliases: Option<PathBuf>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
        /// Also print, on stderr, one JSON line per parser plugin: calls, input bytes and
        /// seconds inside it (what bench/parsers.py reads).
        #[arg(long)]
        cost: bool,
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
pub(crate) struct GenerateArgs {
    /// Alias, `org/repo` id, or local path (default: the registry's default alias).
    pub(crate) model: Option<String>,
    #[arg(long)]
    pub(crate) prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub(crate) chat: bool,
    /// System message (with --chat).
    #[arg(long)]
    pub(crate) system: Option<String>,
    #[arg(long, default_value_t = 128)]
    pub(crate) max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub(crate) top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub(crate) top_k: usize,
    #[arg(long, default_value_t = 0.0)]
    pub(crate) min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub(crate) repetition_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub(crate) presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub(crate) frequency_penalty: f32,
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Stop string (repeatable); never printed.
    #[arg(long)]
    pub(crate) stop: Vec<String>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// cpu, or metal / cuda when built with those features.
    #[arg(long, default_value = "cpu")]
    pub(crate) device: String,
    /// Keep generating past end-of-sequence tokens (for benchmarks).
    #[arg(long)]
    pub(crate) ignore_eos: bool,
    /// Print the prompt's token ids and pieces to stderr before generating.
    #[arg(long)]
    pub(crate) show_tokens: bool,
    /// Directory holding downloaded model files (pip-sourced aliases live here).
    #[arg(long, env = "RAPID_HOST_MODELS", default_value = "models", value_name = "DIR")]
    pub(crate) models_dir: PathBuf,
    /// Never download: hub models must already be in the Hugging Face cache.
    #[arg(long, env = "RAPID_HOST_OFFLINE")]
    pub(crate) offline: bool,
    #[command(flatten)]
    pub(crate) plugins: PluginArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum PluginAction {
    /// Scaffold a plugin project (Rust crate on the SDK, JavaScript or Python), with fixtures
    /// and a README that says how to build, test and ship it.
    New {
        /// Plugin name (lowercase, digits, `-`); a parser plugin's parser name is it with `_`.
        name: String,
        #[arg(long, value_enum, default_value = "parser")]
        kind: ScaffoldKind,
        /// Source language of the plugin (js and python: parsers only).
        #[arg(long, value_enum, default_value = "rust")]
        lang: ScaffoldLang,
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
pub(crate) struct PluginArgs {
    /// Directory holding plugin components (`*.wasm`).
    #[arg(long, env = "RAPID_HOST_PLUGINS", default_value = "plugins", value_name = "DIR")]
    pub(crate) plugins: PathBuf,
    /// Alias policy plugin that resolves model names.
    #[arg(long, default_value = "strict", value_name = "NAME")]
    pub(crate) alias_policy: String,
    /// Free memory to report to alias policies instead of measuring it (e.g. 16GiB).
    #[arg(long, value_name = "SIZE")]
    pub(crate) free_memory: Option<ByteSize>,
    /// Where precompiled plugins are cached (default: ~/.cache/rapid-host/plugins).
    #[arg(long, value_name = "DIR")]
    pub(crate) plugin_cache: Option<PathBuf>,
    /// Compile plugins on every start instead of caching them.
    #[arg(long)]
    pub(crate) no_plugin_cache: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Alias, `org/repo` id, or local path.
    pub(crate) model: Option<String>,
    #[command(flatten)]
    pub(crate) plugins: PluginArgs,
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: String,
    #[arg(long, default_value_t = 8000)]
    pub(crate) port: u16,
    /// Reload plugins when files in the plugin directory are added, removed or rebuilt.
    #[arg(long)]
    pub(crate) watch: bool,
    /// Tool-call parser instead of the alias's (`none` turns tool parsing off).
    #[arg(long, value_name = "NAME")]
    pub(crate) tool_call_parser: Option<String>,
    /// Reasoning parser instead of the alias's (`none` turns it off).
    #[arg(long, value_name = "NAME")]
    pub(crate) reasoning_parser: Option<String>,
    /// Largest request body accepted, in bytes (larger ones get 413).
    #[arg(long, default_value_t = 8 << 20)]
    pub(crate) max_request_bytes: usize,
    /// Requests generating or queued at once; more get 503 with Retry-After.
    #[arg(long, default_value_t = 16)]
    pub(crate) max_concurrent_requests: usize,
    /// Sequences generating together in one batch; more admitted requests wait their turn.
    #[arg(long, default_value_t = 8, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub(crate) max_running_requests: usize,
    /// Prompt tokens run per scheduler step (prompts longer than this are prefilled in
    /// chunks of it while the other sequences keep decoding).
    #[arg(long, default_value_t = 512, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub(crate) max_batch_tokens: usize,
    /// Host memory for the prefix cache, in MiB (default: a quarter of the free memory at
    /// start, 64 MiB to 8 GiB). Requests whose prompts start like an earlier one's prefill
    /// only the rest.
    #[arg(long, value_name = "MB")]
    pub(crate) prefix_cache_mb: Option<usize>,
    /// No prefix cache: every request prefills its whole prompt.
    #[arg(long, conflicts_with = "prefix_cache_mb")]
    pub(crate) no_prefix_cache: bool,
    /// Recurrent-state snapshots the prefix cache keeps (hybrid and Mamba models).
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub(crate) prefix_cache_snapshots: usize,
    /// A recurrent model's prompt is snapshotted every this many tokens (besides the end of
    /// the prompt and of the answer).
    #[arg(long, default_value_t = 512, value_name = "TOKENS", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub(crate) prefix_snapshot_interval: usize,
    /// `max_tokens` for requests that give none.
    #[arg(long, default_value_t = 1024)]
    pub(crate) max_tokens: usize,
    /// Seconds a client may take to send its request headers, and then its body
    /// (slower ones get their connection closed, or 408).
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub(crate) read_timeout: u64,
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// cpu, or metal / cuda when built with those features.
    #[arg(long, default_value = "cpu")]
    pub(crate) device: String,
    /// Directory holding downloaded model files.
    #[arg(long, env = "RAPID_HOST_MODELS", default_value = "models", value_name = "DIR")]
    pub(crate) models_dir: PathBuf,
    /// Never download: hub models must already be in the Hugging Face cache.
    #[arg(long, env = "RAPID_HOST_OFFLINE")]
    pub(crate) offline: bool,
    /// Require `Authorization: Bearer KEY` on /v1 routes (health and metrics stay open).
    #[arg(long, env = "RAPID_HOST_API_KEY", value_name = "KEY", hide_env_values = true)]
    pub(crate) api_key: Option<String>,
    /// On SIGTERM or Ctrl-C, wait up to this many seconds for the requests in flight (streams
    /// included) to finish; meanwhile /health/ready and new requests answer 503. A second
    /// signal stops at once.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub(crate) drain_timeout: u64,
}
