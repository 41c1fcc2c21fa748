//! The engine's device tests without the server: the MLX parity, GGUF-on-device and weight
//! layout topic files of `tests/all`, compiled against the engine alone (no wasmtime, HTTP
//! or hub client), so a GPU build (`--no-default-features --features cuda`) has far less to
//! compile than the whole test binary. scripts/device/gpu-check runs it on the GPU machine:
//!
//!     cargo test --no-default-features --features cuda --example device_tests --no-run

// Built as a plain example (`cargo clippy --all-targets`) the tests are compiled out.
#![cfg_attr(not(test), allow(unused_imports, dead_code))]

#[path = "../tests/all/device_layout.rs"]
mod device_layout;
#[path = "../tests/all/gguf_device.rs"]
mod gguf_device;
#[path = "../tests/all/gguf_from_mlx.rs"]
mod gguf_from_mlx;
#[path = "../tests/all/mlx_parity.rs"]
mod mlx_parity;

/// The two helpers of `tests/all/support.rs` these files use.
mod support {
    use std::path::{Path, PathBuf};

    /// The checkout the tests read fixtures from: where they were built, unless
    /// `RAPID_HOST_REPO` names a copy (a test binary carried to a GPU machine).
    pub fn repo_root() -> PathBuf {
        match std::env::var_os("RAPID_HOST_REPO") {
            Some(dir) => PathBuf::from(dir),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
        }
    }

    /// `RAPID_HOST_TEST_DEVICE` (cpu, cuda, metal), cpu by default.
    pub fn test_device() -> candle_core::Device {
        let name = std::env::var("RAPID_HOST_TEST_DEVICE").unwrap_or_else(|_| "cpu".to_string());
        rapid_host::engine::device(&name).unwrap_or_else(|e| panic!("RAPID_HOST_TEST_DEVICE={name}: {e}"))
    }
}

#[cfg(not(test))]
fn main() {
    eprintln!("device_tests is a test harness: cargo test --example device_tests [-- FILTER]");
}
