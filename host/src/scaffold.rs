//! `rapid-host plugin new`: a ready-to-build plugin project with fixtures and a README: a
//! Rust crate using the SDK, or a JavaScript (componentize-qjs) or Python (componentize-py)
//! parser carrying its own copy of the WIT contract.

use std::path::{Path, PathBuf};

/// What kind of plugin to scaffold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScaffoldKind {
    Parser,
    AliasPolicy,
}

/// The language to write the plugin in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScaffoldLang {
    Rust,
    #[value(alias = "javascript")]
    Js,
    #[value(alias = "py")]
    Python,
}

/// The WIT package version new plugins are built against, and its text.
pub const WIT_VERSION: &str = "0.2.0";
const WIT_TEXT: &str = include_str!("../../wit/since_v0.2.0/plugin.wit");

#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("{0}-language plugins are scaffolded as parsers only; write alias policies in Rust (--lang rust)")]
    KindNotForLang(&'static str),
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

/// Writes the project `dir/name` and returns its path. `sdk` is needed for Rust only.
pub fn scaffold(
    name: &str,
    kind: ScaffoldKind,
    lang: ScaffoldLang,
    dir: &Path,
    sdk: &Path,
) -> Result<PathBuf, ScaffoldError> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !valid {
        return Err(ScaffoldError::BadName(name.to_string()));
    }
    match (lang, kind) {
        (ScaffoldLang::Js, ScaffoldKind::AliasPolicy) => return Err(ScaffoldError::KindNotForLang("JavaScript")),
        (ScaffoldLang::Python, ScaffoldKind::AliasPolicy) => return Err(ScaffoldError::KindNotForLang("Python")),
        _ => {}
    }
    let sdk = if lang == ScaffoldLang::Rust {
        let sdk = sdk.canonicalize().map_err(|_| ScaffoldError::NoSdk(sdk.to_path_buf()))?;
        if !sdk.join("Cargo.toml").is_file() {
            return Err(ScaffoldError::NoSdk(sdk));
        }
        sdk
    } else {
        PathBuf::new()
    };
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
            .replace("{{wit_version}}", WIT_VERSION)
    };
    let fixtures = ("fixtures/basic.json", include_str!("../templates/parser/basic.json"));
    let wit = ("wit/plugin.wit", WIT_TEXT);
    let files: Vec<(&str, &str)> = match (lang, kind) {
        (ScaffoldLang::Rust, ScaffoldKind::Parser) => vec![
            ("Cargo.toml", include_str!("../templates/parser/Cargo.toml")),
            (".cargo/config.toml", include_str!("../templates/parser/config.toml")),
            ("src/lib.rs", include_str!("../templates/parser/lib.rs")),
            fixtures,
            ("README.md", include_str!("../templates/parser/README.md")),
        ],
        (ScaffoldLang::Rust, ScaffoldKind::AliasPolicy) => vec![
            ("Cargo.toml", include_str!("../templates/alias-policy/Cargo.toml")),
            (".cargo/config.toml", include_str!("../templates/alias-policy/config.toml")),
            ("src/lib.rs", include_str!("../templates/alias-policy/lib.rs")),
            ("fixtures/basic.json", include_str!("../templates/alias-policy/basic.json")),
            ("README.md", include_str!("../templates/alias-policy/README.md")),
        ],
        (ScaffoldLang::Js, _) => vec![
            ("package.json", include_str!("../templates/parser-js/package.json")),
            ("parser.js", include_str!("../templates/parser-js/parser.js")),
            (".gitignore", include_str!("../templates/parser-js/gitignore")),
            ("README.md", include_str!("../templates/parser-js/README.md")),
            wit,
            fixtures,
        ],
        (ScaffoldLang::Python, _) => vec![
            ("app.py", include_str!("../templates/parser-python/app.py")),
            ("output_parser.py", include_str!("../templates/parser-python/output_parser.py")),
            ("calls.py", include_str!("../templates/parser-python/calls.py")),
            ("requirements.txt", include_str!("../templates/parser-python/requirements.txt")),
            ("build.sh", include_str!("../templates/parser-python/build.sh")),
            (".gitignore", include_str!("../templates/parser-python/gitignore")),
            ("README.md", include_str!("../templates/parser-python/README.md")),
            wit,
            fixtures,
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
        #[cfg(unix)]
        if relative.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(|source| ScaffoldError::Write { path: path.clone(), source })?;
        }
    }
    Ok(root)
}
