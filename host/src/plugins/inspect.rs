//! What a plugin file is, checked before it costs anything: its size and magic bytes before
//! it is read whole, its imports and exports (parsed from the binary) before it is compiled.
//! A 512 MiB file of garbage is refused after reading 8 bytes; a 20 MB component that
//! exports the wrong thing or imports the filesystem is refused without seconds of Cranelift.

use std::io::Read;
use std::path::Path;

use wasmparser::{Parser, Payload};

/// The largest plugin file the loader reads. Interpreter guests (CPython or QuickJS inside
/// the component) are the big ones, tens of MB; compiled guests are well under 1 MB.
pub const MAX_PLUGIN_FILE_BYTES: u64 = 128 << 20;

/// `\0asm`, then the component encoding's version and layer.
const WASM_MAGIC: [u8; 4] = *b"\0asm";
const COMPONENT_VERSION_AND_LAYER: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];
const CORE_MODULE_VERSION: [u8; 4] = [0x01, 0x00, 0x00, 0x00];

/// Imports a plugin may declare. Language runtimes declare WASI stdio and environment even
/// when the plugin never uses them; they are linked to stubs that trap. Anything else
/// (filesystem, sockets, clocks, randomness, HTTP) is refused at load time, so a plugin
/// that needs it fails loudly and early instead of at its first call.
pub const ALLOWED_IMPORT_PREFIXES: &[&str] = &["rapid:plugin/types@", "wasi:io/", "wasi:cli/"];

/// What to do about a refused WASI import: interpreter guests declare WASI unless told not to.
const STUB_WASI_HINT: &str = ". Interpreter guests: build with `--stub-wasi` (componentize-py: \
    `componentize-py ... componentize --stub-wasi app`; componentize-qjs: `--sync --stub-wasi`). \
    Rust: avoid the std APIs that need the host (files, clocks, randomness: use BTreeMap, not HashMap)";

/// Reads `path` if it is a WebAssembly component of an acceptable size: the size comes from
/// the file's metadata and the magic bytes from its first 8 bytes, before the rest is read.
/// Errors never quote the file's bytes.
pub fn read_component(path: &Path) -> Result<Vec<u8>, String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let size = file.metadata().map_err(|e| format!("cannot read: {e}"))?.len();
    if size > MAX_PLUGIN_FILE_BYTES {
        return Err(format!(
            "is {} MiB; a plugin may be at most {} MiB",
            size.div_ceil(1 << 20),
            MAX_PLUGIN_FILE_BYTES >> 20
        ));
    }
    let mut header = [0u8; 8];
    file.read_exact(&mut header).map_err(|_| String::from("is not a WebAssembly component (shorter than a header)"))?;
    if header[..4] != WASM_MAGIC {
        return Err(String::from("is not a WebAssembly component (it does not start with the `\\0asm` magic bytes)"));
    }
    if header[4..] == CORE_MODULE_VERSION {
        return Err(String::from(
            "is a core WebAssembly module, not a component: build for wasm32-wasip2, or wrap it with \
             `wasm-tools component new`",
        ));
    }
    if header[4..] != COMPONENT_VERSION_AND_LAYER {
        return Err(String::from("is not a WebAssembly component (unknown binary version or layer)"));
    }
    // The file may have grown since the metadata was read: never read past the limit.
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    bytes.extend_from_slice(&header);
    file.take(MAX_PLUGIN_FILE_BYTES + 1 - header.len() as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_PLUGIN_FILE_BYTES {
        return Err(format!("grew past {} MiB while being read", MAX_PLUGIN_FILE_BYTES >> 20));
    }
    Ok(bytes)
}

/// The names a component imports and exports at its top level, in binary order.
#[derive(Debug, Default)]
pub struct Interface {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// Parses the component's top-level import and export sections (nested modules and
/// components are skipped, not compiled or validated: wasmtime validates when compiling).
pub fn interface(bytes: &[u8]) -> Result<Interface, String> {
    let mut found = Interface::default();
    // Nesting depth: 1 inside the outer component, more inside nested modules / components.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| format!("not a valid WebAssembly component: {e}"))?;
        match payload {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    let import = import.map_err(|e| format!("not a valid WebAssembly component: {e}"))?;
                    found.imports.push(import.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    let export = export.map_err(|e| format!("not a valid WebAssembly component: {e}"))?;
                    found.exports.push(export.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    Ok(found)
}

/// Refuses a component that imports anything off the allow-list, naming every such import.
pub fn check_imports(imports: &[String]) -> Result<(), String> {
    let refused: Vec<&str> = imports
        .iter()
        .map(String::as_str)
        .filter(|name| !ALLOWED_IMPORT_PREFIXES.iter().any(|p| name.starts_with(p)))
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    let mut shown: Vec<String> =
        refused.iter().take(20).map(|n| format!("`{}`", n.chars().take(100).collect::<String>())).collect();
    if refused.len() > 20 {
        shown.push(format!("and {} more", refused.len() - 20));
    }
    let mut message = format!(
        "imports {}, which rapid-host does not offer to plugins (allowed: {})",
        shown.join(", "),
        ALLOWED_IMPORT_PREFIXES.join(", ")
    );
    if refused.iter().any(|name| name.starts_with("wasi:")) {
        message.push_str(STUB_WASI_HINT);
    }
    Err(message)
}
