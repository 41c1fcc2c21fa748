//! Precompiled components on disk, keyed by the component's hash and the engine.
//!
//! A `.cwasm` is valid only for the wasmtime version, engine configuration and CPU that
//! produced it; the engine's compatibility hash covers all three, so the file name changes
//! whenever any of them does and a stale artifact is simply never looked up.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

#[derive(Debug)]
pub struct ArtifactCache {
    dir: PathBuf,
    engine_key: String,
}

impl ArtifactCache {
    pub fn new(dir: PathBuf, engine: &Engine) -> Self {
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Self { dir, engine_key: format!("{:016x}", hasher.finish()) }
    }

    /// Where the artifact for `bytes` lives.
    pub fn path_for(&self, bytes: &[u8]) -> PathBuf {
        let digest = Sha256::digest(bytes);
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{hex}-{}.cwasm", self.engine_key))
    }

    pub fn load_or_compile(&self, engine: &Engine, bytes: &[u8]) -> Result<(Component, bool), String> {
        let path = self.path_for(bytes);
        if path.is_file() {
            match deserialize(engine, &path) {
                Ok(component) => return Ok((component, true)),
                Err(e) => tracing::warn!("ignoring unusable plugin artifact {}: {e:#}", path.display()),
            }
        }
        let component = Component::new(engine, bytes).map_err(|e| format!("{e:#}"))?;
        match component.serialize() {
            Ok(serialized) => {
                if let Err(e) = write_atomically(&path, &serialized) {
                    tracing::warn!("cannot cache plugin artifact at {}: {e}", path.display());
                }
            }
            Err(e) => tracing::warn!("cannot serialize plugin artifact: {e:#}"),
        }
        Ok((component, false))
    }
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // Read into memory rather than `deserialize_file`: a mapped file that someone truncates
    // while the server runs would kill the process with SIGBUS. The copy costs a few ms even
    // for interpreter-sized guests, against seconds of compilation saved.
    let bytes = std::fs::read(path)?;
    // SAFETY: wasmtime requires bytes it produced itself. Files in the cache are written
    // only by `write_atomically` with output of `Component::serialize`, under a name that
    // includes the engine's compatibility hash; wasmtime also checks the header and rejects
    // artifacts from another version or configuration.
    unsafe { Component::deserialize(engine, &bytes) }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
