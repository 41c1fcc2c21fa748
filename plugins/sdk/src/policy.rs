//! The standard resolution rules, for policies to build on.
//!
//! Order: local path (directory or `.gguf`) > exact alias > `org/repo` passthrough > error.
//! An error names the explicit aliases the user could have meant.

use crate::alias_policy::{AliasEntry, PathKind, Resolution, ResolveError, ResolveRequest, SourceKind};
use crate::naming::split_quant;
use crate::suggest::similar;

/// How many suggestions an error carries at most.
pub const MAX_SUGGESTIONS: usize = 5;

/// Resolves `request` by the standard rules.
pub fn resolve_standard(request: &ResolveRequest) -> Result<Resolution, ResolveError> {
    if let Some(local) = resolve_local(request)? {
        return Ok(local);
    }
    if let Some(entry) = find_alias(request, &request.name) {
        return Ok(from_alias(entry, Vec::new()));
    }
    if is_repo_id(&request.name) {
        return Ok(Resolution {
            alias: None,
            hf_path: request.name.clone(),
            file: None,
            source: SourceKind::HubRepo,
            notes: Vec::new(),
        });
    }
    Err(unknown_name(request))
}

/// A local path wins over everything else.
pub fn resolve_local(request: &ResolveRequest) -> Result<Option<Resolution>, ResolveError> {
    let source = match request.path {
        PathKind::Missing => return Ok(None),
        PathKind::Directory => SourceKind::LocalDir,
        PathKind::GgufFile => SourceKind::LocalFile,
        PathKind::OtherFile => {
            return Err(ResolveError {
                message: format!(
                    "'{}' is a file but not a .gguf model; pass a .gguf file or a model directory",
                    request.name
                ),
                suggestions: Vec::new(),
            });
        }
    };
    Ok(Some(Resolution { alias: None, hf_path: request.name.clone(), file: None, source, notes: Vec::new() }))
}

/// The alias called exactly `name`.
pub fn find_alias<'a>(request: &'a ResolveRequest, name: &str) -> Option<&'a AliasEntry> {
    request.aliases.iter().find(|a| a.name == name)
}

/// The resolution an alias entry stands for.
pub fn from_alias(entry: &AliasEntry, notes: Vec<String>) -> Resolution {
    Resolution {
        alias: Some(entry.name.clone()),
        hf_path: entry.hf_path.clone(),
        file: entry.file.clone(),
        source: entry.source,
        notes,
    }
}

/// `org/repo`: exactly one `/`, both sides non-empty, no whitespace, not a path.
pub fn is_repo_id(name: &str) -> bool {
    let mut parts = name.split('/');
    let (Some(org), Some(repo), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    ok(org) && ok(repo)
}

/// Aliases that share `stem` (the name without its quant suffix), in table order.
pub fn aliases_with_stem<'a>(request: &'a ResolveRequest, stem: &str) -> Vec<&'a AliasEntry> {
    request.aliases.iter().filter(|a| split_quant(&a.name).is_some_and(|(s, _)| s == stem)).collect()
}

/// The error for a name that is neither a path, an alias nor a repo id. Retired short
/// names point at their replacement first, then at the other quantizations of it.
pub fn unknown_name(request: &ResolveRequest) -> ResolveError {
    let name = request.name.as_str();
    let mut suggestions: Vec<String> = Vec::new();
    let push = |s: &str, list: &mut Vec<String>| {
        if !list.iter().any(|x| x == s) {
            list.push(s.to_string());
        }
    };
    let retired = request.retired.iter().find(|r| r.name == name);
    if let Some(r) = retired {
        push(&r.replacement, &mut suggestions);
        if let Some((stem, _)) = split_quant(&r.replacement) {
            for a in aliases_with_stem(request, stem) {
                push(&a.name, &mut suggestions);
            }
        }
    }
    let same_stem = aliases_with_stem(request, name);
    for a in &same_stem {
        push(&a.name, &mut suggestions);
    }
    if suggestions.is_empty() {
        for s in similar(name, request.aliases.iter().map(|a| a.name.as_str()), 3) {
            push(&s, &mut suggestions);
        }
    }
    suggestions.truncate(MAX_SUGGESTIONS);

    let message = if retired.is_some() {
        format!("'{name}' is a retired short name: aliases now carry an explicit quantization suffix")
    } else if !same_stem.is_empty() {
        format!("'{name}' is not a known alias: aliases carry an explicit quantization suffix")
    } else {
        format!("'{name}' is not a known alias, a local path or an org/repo id")
    };
    ResolveError { message, suggestions }
}
