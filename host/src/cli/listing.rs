//! `models`, `info` and `plugins`: tables and JSON.

use std::path::PathBuf;

use crate::*;
use rapid_host::plugins::PluginSet;
use rapid_host::registry::{AliasEntry, AliasRegistry};
use rapid_host::resolve::{ResolvedModel, SourceKind};
use serde_json::json;

pub(crate) fn yes_no(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    }
}

pub(crate) fn models_json(registry: &AliasRegistry) -> serde_json::Value {
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
                "note": e.misnamed.as_ref().map(|m| m.note(name)),
            })
        })
        .collect();
    json!({ "default": registry.default_alias(), "models": rows })
}

pub(crate) fn print_models(registry: &AliasRegistry, json: bool) -> anyhow::Result<()> {
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
    for (name, e) in registry.iter() {
        if let Some(m) = &e.misnamed {
            println!("note: {}", m.note(name));
        }
    }
    let loadable = registry.iter().filter(|(_, e)| e.loadable()).count();
    println!(
        "\n{} aliases, {loadable} loadable by this build: their architecture matches llama.cpp (GGUF) or mlx-lm (MLX)\n\
         in this build's parity tests (* = default). `rapid-host info ALIAS` shows one in full; `rapid-host pull ALIAS`\n\
         downloads a hub model ahead of time.",
        registry.len()
    );
    Ok(())
}

pub(crate) fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
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

pub(crate) fn source_label(source: SourceKind) -> &'static str {
    match source {
        SourceKind::LocalDir => "local directory",
        SourceKind::LocalFile => "local file",
        SourceKind::HubRepo => "hub repository",
        SourceKind::PipPackage => "pip package",
    }
}

pub(crate) fn print_info(
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
            if let Some(w) = facts.weights {
                use rapid_host::engine::weights::human_bytes;
                rows.push((
                    "weights",
                    format!(
                        "{} in the file; held: ~{} on cpu, ~{} on a GPU (estimated from the header)",
                        human_bytes(w.file_bytes),
                        human_bytes(w.cpu_bytes),
                        human_bytes(w.gpu_bytes)
                    ),
                ));
            }
        }
        None => rows.push(("local file", String::from("not downloaded"))),
    }
    for (key, value) in rows {
        println!("  {key:<18}{value}");
    }
    for note in &resolved.notes {
        println!("  note: {note}");
    }
    if let (Some(alias), Some(m)) = (&resolved.alias, resolved.profile.as_ref().and_then(|e| e.misnamed.as_ref())) {
        println!("  note: {}", m.note(alias));
    }
    Ok(())
}

pub(crate) fn profile_rows(e: &AliasEntry) -> Vec<(&'static str, String)> {
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

pub(crate) fn print_plugins(set: &PluginSet, json: bool) -> anyhow::Result<()> {
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
