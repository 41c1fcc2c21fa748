//! The live plugin set of a running server, reloadable while requests are in flight.
//!
//! Requests take an `Arc` snapshot of the set when they start and keep it to the end, so a
//! reload never changes the plugins under a response; the old instances are dropped when
//! the last request holding them finishes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use super::{PluginError, PluginRuntime, PluginSet};

#[derive(Debug)]
pub struct PluginHub {
    dir: PathBuf,
    runtime: PluginRuntime,
    current: RwLock<Arc<PluginSet>>,
}

/// What the directory looks like: names, sizes and modification times of `*.wasm`.
type Snapshot = Vec<(String, u64, Option<SystemTime>)>;

fn snapshot(dir: &Path) -> Snapshot {
    let mut files: Snapshot = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "wasm"))
                .filter_map(|e| {
                    let meta = e.metadata().ok()?;
                    Some((e.file_name().to_string_lossy().into_owned(), meta.len(), meta.modified().ok()))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

impl PluginHub {
    pub fn load(runtime: PluginRuntime, dir: &Path) -> Result<Arc<Self>, PluginError> {
        let set = PluginSet::load_dir(runtime.clone(), dir)?;
        Ok(Arc::new(Self { dir: dir.to_path_buf(), runtime, current: RwLock::new(Arc::new(set)) }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The set new requests should use.
    pub fn current(&self) -> Arc<PluginSet> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Loads the directory again and makes the result current. Requests already running keep
    /// the set they started with.
    pub fn reload(&self) -> Result<Arc<PluginSet>, PluginError> {
        let set = Arc::new(PluginSet::load_dir(self.runtime.clone(), &self.dir)?);
        match self.current.write() {
            Ok(mut guard) => *guard = Arc::clone(&set),
            Err(poisoned) => *poisoned.into_inner() = Arc::clone(&set),
        }
        Ok(set)
    }

    /// Polls the directory every `interval` and reloads after a change has settled (two
    /// equal snapshots in a row, so a file still being copied is not loaded half-written).
    /// The thread ends when the hub is dropped.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> std::io::Result<()> {
        let hub: Weak<Self> = Arc::downgrade(self);
        let dir = self.dir.clone();
        std::thread::Builder::new().name("plugin-watch".into()).spawn(move || {
            let mut loaded = snapshot(&dir);
            let mut seen = loaded.clone();
            loop {
                std::thread::sleep(interval);
                let Some(hub) = hub.upgrade() else { return };
                let now = snapshot(&dir);
                if now != loaded && now == seen {
                    match hub.reload() {
                        Ok(set) => tracing::info!(
                            "plugins reloaded from {}: {} loaded, {} failed",
                            dir.display(),
                            set.plugins.len(),
                            set.failures.len()
                        ),
                        Err(e) => tracing::warn!("plugin reload failed, keeping the previous set: {e}"),
                    }
                    loaded = now.clone();
                }
                seen = now;
            }
        })?;
        Ok(())
    }
}
