//! The decoder skeleton the GGUF families share (llama / qwen2 / qwen3 and gemma3): a
//! family maps its metadata to a [`DecoderSpec`] and its blocks' optional parts (biases,
//! Q/K norms, post norms, sliding windows, per-layer RoPE bases), and this file owns the
//! forward pass, over a ragged batch of sequences at once.
//!
//! One forward takes every sequence's new tokens (a decoding sequence's one token, a chunk
//! of a prompt) as rows of one activation matrix: embeddings, norms, every linear layer
//! and the gated MLP run over all rows together (the weights pass through the cache once
//! per step, not once per sequence); RoPE takes each row's own position; attention runs
//! per sequence against its own cache. The arithmetic is llama.cpp's, and a sequence gets
//! the same numbers in a batch as alone: every kernel here computes a row on its own,
//! except the K-quant products, whose float order depends on how many rows a call has
//! (llama.cpp's), and which therefore take each sequence's rows as a segment of their own
//! ([`QLinear::forward_rows`]).

use candle_core::{DType, Device, Result, Tensor};

use super::{
    Glu, QLinear, SeqInput, TokenTable, cache_dtype, causal_attention, debug_dump, gated, layer_progress, rms_norm,
    rope, rope_tables_at,
};
use crate::engine::gguf::GgufFile;
use crate::engine::layers::Ragged;
use crate::engine::{EngineError, KvCache};

/// Where attention's `1 / sqrt(head_dim)` goes, as the family's llama.cpp graph puts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryScale {
    /// Into the scores (llama).
    InScores,
    /// Onto the roped queries before the products (gemma: a different rounding).
    OnQueries,
}

/// What differs between the families, beyond which tensors a block has.
#[derive(Debug, Clone)]
pub struct DecoderSpec {
    pub name: String,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rms_eps: f64,
    pub context_length: usize,
    /// Rotate halves of each head (NEOX) rather than adjacent pairs.
    pub neox_rope: bool,
    /// Layer `i`'s RoPE base.
    pub rope_base: Vec<f32>,
    /// Layer `i`'s sliding window (`None`: global attention).
    pub window: Vec<Option<usize>>,
    /// Embeddings multiplied by this (gemma: sqrt(hidden)).
    pub embed_scale: Option<f64>,
    pub glu: Glu,
    pub query_scale: QueryScale,
}

struct Block {
    attn_norm: Tensor,
    wq: QLinear,
    wk: QLinear,
    wv: QLinear,
    /// Qwen 2's projection biases for Q, K and V.
    biases: Option<[Tensor; 3]>,
    /// Per-head RMS norms of queries and keys (qwen3, gemma3).
    qk_norms: Option<[Tensor; 2]>,
    wo: QLinear,
    /// Gemma's norm of the attention output before the residual.
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    w_gate: QLinear,
    w_up: QLinear,
    w_down: QLinear,
    /// Gemma's norm of the MLP output before the residual.
    post_ffn_norm: Option<Tensor>,
    /// Index into the forward's RoPE tables (one per distinct base).
    rope: usize,
    window: Option<usize>,
}

#[allow(missing_debug_implementations)]
pub struct Decoder {
    spec: DecoderSpec,
    embeddings: TokenTable,
    blocks: Vec<Block>,
    norm: Tensor,
    output: QLinear,
    /// The distinct RoPE bases, in the order of the blocks' `rope` indices.
    rope_bases: Vec<f32>,
}

impl Decoder {
    /// The GGUF tensors of a decoder (`token_embd`, `blk.N.*`, `output_norm`, `output` or a
    /// head tied to the embeddings); optional parts are taken where the file has them.
    pub fn load(
        gguf: &mut GgufFile,
        spec: DecoderSpec,
        device: &Device,
        progress: bool,
    ) -> std::result::Result<Self, EngineError> {
        if spec.rope_base.len() != spec.layers || spec.window.len() != spec.layers {
            return Err(EngineError::Metadata(format!("{}: a RoPE base and window per layer", spec.name)));
        }
        let dense = |gguf: &mut GgufFile, name: &str| -> std::result::Result<Tensor, EngineError> {
            Ok(gguf.tensor(name, device)?.dequantize(device)?)
        };
        let embeddings = TokenTable::load(gguf, "token_embd.weight", device)?;
        let norm = dense(gguf, "output_norm.weight")?;
        // Tied embeddings: the output projection reuses the (quantized) embedding table.
        let output = if gguf.has_tensor("output.weight") {
            QLinear::load(gguf, "output.weight", device)?
        } else {
            embeddings.tied_head()?
        };
        let mut rope_bases: Vec<f32> = Vec::new();
        let bar = layer_progress(progress, spec.layers, &spec.name);
        let mut blocks = Vec::with_capacity(spec.layers);
        for i in 0..spec.layers {
            let mut q = |name: &str| -> std::result::Result<QLinear, EngineError> {
                QLinear::load(gguf, &format!("blk.{i}.{name}.weight"), device)
            };
            let (wq, wk, wv, wo) = (q("attn_q")?, q("attn_k")?, q("attn_v")?, q("attn_output")?);
            let (w_gate, w_up, w_down) = (q("ffn_gate")?, q("ffn_up")?, q("ffn_down")?);
            let has = |gguf: &GgufFile, name: &str| gguf.has_tensor(&format!("blk.{i}.{name}"));
            let n = |gguf: &mut GgufFile, name: &str| dense(gguf, &format!("blk.{i}.{name}"));
            let biases = if has(gguf, "attn_q.bias") {
                Some([n(gguf, "attn_q.bias")?, n(gguf, "attn_k.bias")?, n(gguf, "attn_v.bias")?])
            } else {
                None
            };
            let qk_norms = if has(gguf, "attn_q_norm.weight") {
                Some([n(gguf, "attn_q_norm.weight")?, n(gguf, "attn_k_norm.weight")?])
            } else {
                None
            };
            let optional = |gguf: &mut GgufFile, name: &str| -> std::result::Result<Option<Tensor>, EngineError> {
                if gguf.has_tensor(&format!("blk.{i}.{name}")) {
                    Ok(Some(dense(gguf, &format!("blk.{i}.{name}"))?))
                } else {
                    Ok(None)
                }
            };
            let post_attn_norm = optional(gguf, "post_attention_norm.weight")?;
            let post_ffn_norm = optional(gguf, "post_ffw_norm.weight")?;
            let base = spec.rope_base[i];
            let rope = match rope_bases.iter().position(|b| b.to_bits() == base.to_bits()) {
                Some(at) => at,
                None => {
                    rope_bases.push(base);
                    rope_bases.len() - 1
                }
            };
            blocks.push(Block {
                attn_norm: n(gguf, "attn_norm.weight")?,
                wq,
                wk,
                wv,
                biases,
                qk_norms,
                wo,
                post_attn_norm,
                ffn_norm: n(gguf, "ffn_norm.weight")?,
                w_gate,
                w_up,
                w_down,
                post_ffn_norm,
                rope,
                window: spec.window[i],
            });
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(Self { spec, embeddings, blocks, norm, output, rope_bases })
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.spec.layers, self.spec.context_length)
    }

    pub fn context_length(&self) -> usize {
        self.spec.context_length
    }

    /// One forward over every sequence's new tokens; each sequence's last-position logits.
    pub fn forward_batch(&self, batch: &mut [SeqInput<'_>]) -> Result<Vec<Vec<f32>>> {
        let spec = &self.spec;
        let device = self.norm.device();
        // The layer library's ragged batch: the context check, each sequence's rows and
        // positions, its masks, the last rows and the cache advance.
        let ragged = Ragged::new(batch, spec.context_length)?;
        if ragged.is_empty() {
            return Ok(Vec::new());
        }
        let lens = &ragged.lens;
        let mut x = self.embeddings.lookup(&ragged.tokens, device)?.unsqueeze(0)?;
        if let Some(scale) = spec.embed_scale {
            x = (x * scale)?;
            debug_dump(|| "inp_scaled".to_string(), &x);
        }
        let tables = self
            .rope_bases
            .iter()
            .map(|&base| rope_tables_at(spec.head_dim, base, &ragged.positions, device))
            .collect::<Result<Vec<_>>>()?;
        let step = Step { ragged: &ragged, lens };
        let eps = spec.rms_eps;
        for (index, block) in self.blocks.iter().enumerate() {
            let h = rms_norm(&x, &block.attn_norm, eps)?;
            debug_dump(|| format!("attn_norm-{index}"), &h);
            let mut h = self.attention(block, index, &h, batch, &step, &tables[block.rope])?;
            debug_dump(|| format!("attn_out-{index}"), &h);
            if let Some(norm) = &block.post_attn_norm {
                h = rms_norm(&h, norm, eps)?;
                debug_dump(|| format!("attn_post_norm-{index}"), &h);
            }
            x = (x + h)?;
            // llama.cpp's name for the residual sum: `sa_out` in gemma's graph.
            let sum_name = if block.post_attn_norm.is_some() { "sa_out" } else { "ffn_inp" };
            debug_dump(|| format!("{sum_name}-{index}"), &x);
            let h = rms_norm(&x, &block.ffn_norm, eps)?;
            debug_dump(|| format!("ffn_norm-{index}"), &h);
            let gate = block.w_gate.forward_rows(&h, lens)?;
            let up = block.w_up.forward_rows(&h, lens)?;
            debug_dump(|| format!("ffn_gate-{index}"), &gate);
            debug_dump(|| format!("ffn_up-{index}"), &up);
            let h = gated(&gate, &up, spec.glu)?;
            let glu_name = if spec.glu == Glu::Swiglu { "ffn_swiglu" } else { "ffn_geglu" };
            debug_dump(|| format!("{glu_name}-{index}"), &h);
            let mut h = block.w_down.forward_rows(&h, lens)?;
            debug_dump(|| format!("ffn_out-{index}"), &h);
            if let Some(norm) = &block.post_ffn_norm {
                h = rms_norm(&h, norm, eps)?;
            }
            x = (x + h)?;
            debug_dump(|| format!("l_out-{index}"), &x);
        }
        ragged.advance(batch);
        // Only each sequence's last position needs logits.
        let last = ragged.last_rows(&x)?;
        let last = rms_norm(&last, &self.norm, eps)?;
        let ones = vec![1; ragged.segments.len()];
        self.output.forward_rows(&last, &ones)?.squeeze(0)?.to_dtype(DType::F32)?.to_vec2()
    }

    fn attention(
        &self,
        block: &Block,
        index: usize,
        x: &Tensor,
        batch: &mut [SeqInput<'_>],
        step: &Step<'_>,
        (cos, sin): &(Tensor, Tensor),
    ) -> Result<Tensor> {
        let spec = &self.spec;
        let (b, rows, _) = x.dims3()?;
        let d = spec.head_dim;
        let project = |h: Tensor, bias: Option<&Tensor>, norm: Option<&Tensor>, heads: usize| -> Result<Tensor> {
            let h = match bias {
                Some(bias) => h.broadcast_add(bias)?,
                None => h,
            };
            let mut h = h.reshape((b, rows, heads, d))?;
            if let Some(norm) = norm {
                h = rms_norm(&h, norm, spec.rms_eps)?;
            }
            h.transpose(1, 2)?.contiguous()
        };
        let bias = |i: usize| block.biases.as_ref().map(|b| &b[i]);
        let norm = |i: usize| block.qk_norms.as_ref().map(|n| &n[i]);
        let q = block.wq.forward_rows(x, step.lens)?;
        debug_dump(|| format!("Qcur-{index}"), &q);
        let q = project(q, bias(0), norm(0), spec.heads)?;
        let k = project(block.wk.forward_rows(x, step.lens)?, bias(1), norm(1), spec.kv_heads)?;
        let v = project(block.wv.forward_rows(x, step.lens)?, bias(2), None, spec.kv_heads)?;
        let q = rope(&q, cos, sin, spec.neox_rope)?;
        let k = rope(&k, cos, sin, spec.neox_rope)?;
        let inv_sqrt = 1.0 / (d as f64).sqrt();
        let (q, scale) = match spec.query_scale {
            QueryScale::InScores => (q, inv_sqrt),
            // The product is exact; the f16 rounding of q/16 and of q differ for tiny values.
            QueryScale::OnQueries => ((q * inv_sqrt)?, 1.0),
        };
        let dtype = cache_dtype(x.device());
        let (k, v) = (k.to_dtype(dtype)?, v.to_dtype(dtype)?);
        let ragged = step.ragged;
        let device = x.device();
        let mut outs = Vec::with_capacity(batch.len());
        for (i, seq) in batch.iter_mut().enumerate() {
            let (ck, cv) = seq.cache.append(index, &ragged.rows_of(&k, i, 2)?, &ragged.rows_of(&v, i, 2)?)?;
            // The CPU kernel needs no mask; the Candle formulation elsewhere does.
            let mask = if device.is_cpu() { None } else { ragged.masks(i, device).causal(block.window)? };
            outs.push(causal_attention(&ragged.rows_of(&q, i, 2)?, &ck, &cv, block.window, scale, mask.as_ref())?);
        }
        let out = ragged.join(outs, 1)?;
        debug_dump(|| format!("kqv_out-{index}"), &out);
        block.wo.forward_rows(&out, step.lens)
    }
}

/// What every layer of one forward shares.
struct Step<'a> {
    ragged: &'a Ragged,
    /// Rows per sequence, for the K-quant products.
    lens: &'a [usize],
}
