//! Logits of a GGUF model along a fixed token path, for holding the engine to another
//! implementation number by number (scripts/logit_diff.py compares them with llama.cpp's).
//!
//! ```sh
//! cargo run --release --example teacher_forced_logits -- MODEL.gguf OUT.f32 PROMPT_IDS CONTINUATION_IDS
//! ```
//! Ids are comma-separated. OUT gets one row of vocabulary-size little-endian f32 per step:
//! the prompt's last position, then after each continuation token but the last.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use rapid_host::engine::Engine;

fn ids(arg: &str) -> anyhow::Result<Vec<u32>> {
    arg.split(',').filter(|s| !s.is_empty()).map(|s| s.trim().parse().context("token id")).collect()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, out, prompt, continuation] = args.as_slice() else {
        anyhow::bail!("usage: teacher_forced_logits MODEL.gguf OUT.f32 PROMPT_IDS CONTINUATION_IDS");
    };
    let engine = Engine::load(Path::new(model), candle_core::Device::Cpu, false)?;
    let (prompt, continuation) = (ids(prompt)?, ids(continuation)?);
    let mut cache = engine.model.new_cache();
    let mut file = std::io::BufWriter::new(std::fs::File::create(out)?);
    let mut logits: Vec<f32> = engine.model.forward(&prompt, &mut cache)?.to_vec1()?;
    for (step, &token) in continuation.iter().enumerate() {
        file.write_all(&logits.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
        if step + 1 < continuation.len() {
            logits = engine.model.forward(&[token], &mut cache)?.to_vec1()?;
        }
    }
    Ok(())
}
