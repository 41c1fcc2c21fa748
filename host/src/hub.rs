//! Model repositories: the Hugging Face cache layout on disk and downloads through the
//! `hf-hub` crate.
//!
//! The cache is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`:
//! `models--ORG--NAME/refs/main` names a snapshot, `snapshots/REV/` holds the files. A
//! download writes the same layout (so Python tools share it), resumes an interrupted
//! file from its `.sync.part`, and goes to `$HF_ENDPOINT` when set (tests point it at a
//! local server).

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("`{0}` is not a repository id (expected ORG/NAME)")]
    BadRepo(String),
    #[error("{repo} is not in the local cache ({cache}) and --offline forbids downloading it")]
    Offline { repo: String, cache: String },
    #[error("cannot reach the model hub for {repo}: {message}")]
    Api { repo: String, message: String },
    #[error("{repo} has no weights this build can read (no *.safetensors with a config.json)")]
    NoWeights { repo: String },
    #[error("downloading {file} of {repo}: {message}")]
    Download { repo: String, file: String, message: String },
}

/// The hub cache directory in effect.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    Cache::from_env().path().clone()
}

fn check_repo(repo: &str) -> Result<(), HubError> {
    let mut parts = repo.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(org), Some(name), None) if !org.is_empty() && !name.is_empty() && !repo.contains("..") => Ok(()),
        _ => Err(HubError::BadRepo(repo.to_string())),
    }
}

/// The snapshot directory of `repo` in `cache` if `refs/main` points at one holding a
/// `config.json`.
pub fn cached_snapshot_in(cache: &Path, repo: &str) -> Option<PathBuf> {
    check_repo(repo).ok()?;
    let folder = cache.join(format!("models--{}", repo.replace('/', "--")));
    let revision = std::fs::read_to_string(folder.join("refs").join("main")).ok()?;
    let snapshot = folder.join("snapshots").join(revision.trim());
    snapshot.join("config.json").is_file().then_some(snapshot)
}

pub fn cached_snapshot(repo: &str) -> Option<PathBuf> {
    cached_snapshot_in(&cache_dir(), repo)
}

/// Files of a repository that loading needs: configs, tokenizer, chat template, weights.
fn wanted(file: &str) -> bool {
    let name = file.rsplit('/').next().unwrap_or(file);
    !file.contains('/')
        && (name.ends_with(".safetensors")
            || name.ends_with(".json")
            || name.ends_with(".jinja")
            || name == "tokenizer.model"
            || name.ends_with(".tiktoken"))
}

/// Downloads what `repo` needs into the cache (skipping files already there, resuming
/// partial ones) and returns the snapshot directory.
pub fn pull(repo: &str, progress: bool) -> Result<PathBuf, HubError> {
    check_repo(repo)?;
    let api_error = |e: hf_hub::api::sync::ApiError| HubError::Api { repo: repo.to_string(), message: e.to_string() };
    let api = ApiBuilder::from_env()
        .with_cache_dir(cache_dir())
        .with_progress(progress)
        .with_retries(3)
        .build()
        .map_err(api_error)?;
    let handle = api.repo(Repo::new(repo.to_string(), RepoType::Model));
    let info = handle.info().map_err(api_error)?;
    let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).filter(|f| wanted(f)).collect();
    if !files.iter().any(|f| f == "config.json") || !files.iter().any(|f| f.ends_with(".safetensors")) {
        return Err(HubError::NoWeights { repo: repo.to_string() });
    }
    let mut snapshot = None;
    for file in &files {
        let path = handle.get(file).map_err(|e| HubError::Download {
            repo: repo.to_string(),
            file: file.clone(),
            message: e.to_string(),
        })?;
        if file == "config.json" {
            snapshot = path.parent().map(Path::to_path_buf);
        }
    }
    snapshot.ok_or_else(|| HubError::NoWeights { repo: repo.to_string() })
}

/// The local snapshot of `repo`, downloading it first unless `offline`.
pub fn snapshot(repo: &str, offline: bool, progress: bool) -> Result<PathBuf, HubError> {
    if let Some(dir) = cached_snapshot(repo) {
        return Ok(dir);
    }
    if offline {
        return Err(HubError::Offline { repo: repo.to_string(), cache: cache_dir().display().to_string() });
    }
    pull(repo, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_are_checked() {
        assert!(check_repo("mlx-community/Qwen3-4B-4bit").is_ok());
        for bad in ["qwen", "a/b/c", "/x", "x/", "../etc/passwd", "a/.."] {
            assert!(check_repo(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_loadable_files_are_fetched() {
        for file in ["config.json", "model-00001-of-00002.safetensors", "tokenizer.json", "chat_template.jinja"] {
            assert!(wanted(file), "{file}");
        }
        for file in ["README.md", ".gitattributes", "images/x.png", "pytorch_model.bin", "sub/config.json"] {
            assert!(!wanted(file), "{file}");
        }
    }

    #[test]
    fn the_cache_layout_is_read() {
        let cache = tempfile::tempdir().expect("tempdir");
        let repo = cache.path().join("models--org--tiny");
        let snap = repo.join("snapshots/abc123");
        std::fs::create_dir_all(&snap).expect("mkdir");
        assert_eq!(cached_snapshot_in(cache.path(), "org/tiny"), None, "no refs/main yet");
        std::fs::create_dir_all(repo.join("refs")).expect("mkdir");
        std::fs::write(repo.join("refs/main"), "abc123\n").expect("ref");
        assert_eq!(cached_snapshot_in(cache.path(), "org/tiny"), None, "no config.json yet");
        std::fs::write(snap.join("config.json"), "{}").expect("config");
        assert_eq!(cached_snapshot_in(cache.path(), "org/tiny"), Some(snap));
    }
}
