//! `rapid-host plugin new`: a ready-to-build plugin crate using the SDK.

use std::path::{Path, PathBuf};

/// What kind of plugin to scaffold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScaffoldKind {
    Parser,
    AliasPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("plugin name `{0}` must be lowercase letters, digits and `-`, starting with a letter")]
    BadName(String),
    #[error("{0} already exists; choose another name or directory")]
    Exists(PathBuf),
    #[error("the SDK was not found at {0}; pass --sdk PATH/TO/plugins/sdk")]
    NoSdk(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Where the SDK lives in the rapid-host checkout this binary was built from.
pub fn default_sdk_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk")
}

/// Writes the crate `dir/name` and returns its path.
pub fn scaffold(name: &str, kind: ScaffoldKind, dir: &Path, sdk: &Path) -> Result<PathBuf, ScaffoldError> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !valid {
        return Err(ScaffoldError::BadName(name.to_string()));
    }
    let sdk = sdk.canonicalize().map_err(|_| ScaffoldError::NoSdk(sdk.to_path_buf()))?;
    if !sdk.join("Cargo.toml").is_file() {
        return Err(ScaffoldError::NoSdk(sdk));
    }
    let root = dir.join(name);
    if root.exists() {
        return Err(ScaffoldError::Exists(root));
    }
    let parser = name.replace('-', "_");
    let crate_file = parser.clone();
    let fill = |template: &str| {
        template
            .replace("{{crate_file}}", &crate_file)
            .replace("{{crate}}", name)
            .replace("{{name}}", name)
            .replace("{{parser}}", &parser)
            .replace("{{sdk}}", &sdk.to_string_lossy())
    };
    let files: Vec<(&str, &str)> = match kind {
        ScaffoldKind::Parser => vec![
            ("Cargo.toml", include_str!("../templates/parser/Cargo.toml")),
            (".cargo/config.toml", include_str!("../templates/parser/config.toml")),
            ("src/lib.rs", include_str!("../templates/parser/lib.rs")),
            ("fixtures/basic.json", include_str!("../templates/parser/basic.json")),
            ("README.md", include_str!("../templates/parser/README.md")),
        ],
        ScaffoldKind::AliasPolicy => vec![
            ("Cargo.toml", include_str!("../templates/alias-policy/Cargo.toml")),
            (".cargo/config.toml", include_str!("../templates/alias-policy/config.toml")),
            ("src/lib.rs", include_str!("../templates/alias-policy/lib.rs")),
            ("fixtures/basic.json", include_str!("../templates/alias-policy/basic.json")),
            ("README.md", include_str!("../templates/alias-policy/README.md")),
        ],
    };
    for (relative, template) in files {
        let path = root.join(relative);
        let write = |path: &Path| -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, fill(template))
        };
        write(&path).map_err(|source| ScaffoldError::Write { path: path.clone(), source })?;
    }
    Ok(root)
}
