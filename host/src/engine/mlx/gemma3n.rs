//! Gemma 3n text (mlx-lm `gemma3n`): the language model of the multimodal wrapper, under
//! `model.language_model.` (sanitize drops the vision and audio towers).
//!
//! What sets it apart from Gemma 3:
//! - AltUp: the residual stream is `altup_num_inputs` parallel streams. The first is the
//!   scaled embedding, the others projections of it rescaled to its RMS. Each layer
//!   *predicts* every stream as a router-weighted mix of all of them, runs the block on the
//!   active one, then *corrects* every stream by the block's innovation. At the end the
//!   streams are projected back, rescaled to the first one's RMS and averaged.
//! - LAuReL: a low-rank residual beside attention, `x + norm(right(left(x)))`, averaged
//!   with the attention residual (`/ sqrt 2`).
//! - per-layer inputs as in Gemma 4, gated into the non-active streams after each layer;
//!   token ids past `vocab_size_per_layer_input` read row 0;
//! - KV sharing: the last `num_kv_shared_layers` layers attend over the cache entry of the
//!   last earlier layer of the same type;
//! - activation sparsity: on the layers `activation_sparsity_pattern` gives a nonzero
//!   sparsity, the MLP gate keeps only what exceeds `mean + std * sqrt 2 * erfinv(2s - 1)`;
//! - plain `w` RMSNorms, attention scale 1 with q/k norms and values RMS-normalised
//!   without a weight, a tied head and a final logit softcap.
//!
//! mlx-lm's forward without a cache gives the KV-shared layers their own keys and values
//! (they have `k_proj` / `v_proj` weights); generation always has a cache and shares, and
//! so does this implementation.

use candle_core::{D, DType, Device, Module, Tensor};
use serde::Deserialize;

use super::archs::parse;
use super::dense::RopeSpec;
use super::{Checkpoint, MlxLinear};
use crate::engine::arch::Loaded;
use crate::engine::layers::attention::{KvProjection, SharedKvAttention};
use crate::engine::layers::embedding::softcap;
use crate::engine::layers::{Ragged, SeqMixer};
use crate::engine::models::{CausalLm, SeqInput, forward_one, layer_progress, rms_norm};
use crate::engine::{EngineError, KvCache};

type CResult<T> = candle_core::Result<T>;

/// `text_config` of a `gemma3n` checkpoint: mlx-lm's `TextConfig`, whose fields have no
/// defaults (`intermediate_size` and `laurel_rank` are read from the weights).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub num_key_value_heads: usize,
    pub num_kv_shared_layers: usize,
    pub vocab_size_per_layer_input: usize,
    pub sliding_window: usize,
    pub max_position_embeddings: usize,
    pub rope_local_base_freq: f32,
    pub rope_theta: f32,
    pub final_logit_softcapping: Option<f64>,
    pub layer_types: Vec<String>,
    pub activation_sparsity_pattern: Option<Vec<f64>>,
    pub hidden_size_per_layer_input: usize,
    pub altup_num_inputs: usize,
    pub altup_coef_clip: Option<f64>,
    pub altup_correct_scale: bool,
    pub altup_active_idx: usize,
}

fn meta(message: impl Into<String>) -> EngineError {
    EngineError::Metadata(format!("gemma3n: {}", message.into()))
}

/// GeGLU MLP, optionally with mlx-lm's `gelu_topk` sparsity on the gate.
#[derive(Debug)]
struct Mlp {
    gate: candle_nn::Linear,
    up: candle_nn::Linear,
    down: candle_nn::Linear,
    /// `sqrt 2 * erfinv(2 * sparsity - 1)` (as f32) when the layer's sparsity is positive.
    std_multiplier: Option<f64>,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let gate = self.gate.forward(x)?;
        let activations = match self.std_multiplier {
            Some(multiplier) => {
                let mean = gate.mean_keepdim(D::Minus1)?;
                let centered = gate.broadcast_sub(&mean)?;
                let std = centered.sqr()?.mean_keepdim(D::Minus1)?.sqrt()?;
                let cutoff = (mean + (std * multiplier)?)?;
                gate.broadcast_sub(&cutoff)?.relu()?.gelu()?
            }
            None => gate.gelu()?,
        };
        self.down.forward(&(activations * self.up.forward(x)?)?)
    }
}

/// mlx-lm's `std_multiplier` for a sparsity: computed in float32 there.
fn std_multiplier(sparsity: f64) -> f64 {
    let p = (2.0 * sparsity - 1.0) as f32;
    let erfinv = candle_core::cpu::erf::erf_inv(f64::from(p)) as f32;
    f64::from(std::f32::consts::SQRT_2 * erfinv)
}

/// Alternating updates over the stacked streams `[n, b, t, d]`.
#[derive(Debug)]
struct AltUp {
    correct_output_scale: Tensor,
    /// `[n, n]`, clipped to `altup_coef_clip`.
    correction_coefs: Tensor,
    /// `[n * n, n]`, clipped to `altup_coef_clip`.
    prediction_coefs: Tensor,
    modality_router: candle_nn::Linear,
    router_norm: Tensor,
    streams: usize,
    active: usize,
    hidden: usize,
}

impl AltUp {
    /// `tanh(router(norm(x) / d))`: `[b, t, n]`.
    fn modalities(&self, x: &Tensor, eps: f64) -> CResult<Tensor> {
        let routed = self.modality_router.forward(&(rms_norm(x, &self.router_norm, eps)? / self.hidden as f64)?)?;
        routed.tanh()
    }

    /// Stream i becomes `x_i + sum_j c[i * n + j] x_j`, `c = prediction_coefs(modalities)`.
    fn predict(&self, xs: &Tensor, eps: f64) -> CResult<Tensor> {
        let (n, b, t, d) = xs.dims4()?;
        let modalities = self.modalities(&xs.get(self.active)?, eps)?;
        // [b, t, n(i), n(j)] -> [b, t, j, i]
        let coefs = modalities.broadcast_matmul(&self.prediction_coefs.t()?)?.reshape((b, t, n, n))?;
        let coefs = coefs.transpose(2, 3)?.contiguous()?;
        // [b, t, d, j] @ [b, t, j, i] -> [b, t, d, i]
        let permuted = xs.permute((1, 2, 3, 0))?.contiguous()?;
        let predictions = permuted.matmul(&coefs)?.permute((3, 0, 1, 2))?;
        debug_assert_eq!(predictions.dims(), &[n, b, t, d]);
        predictions + xs
    }

    /// Every stream plus `(correction_coefs(modalities) + 1)_i` times the innovation
    /// `activated - predictions[active]`.
    fn correct(&self, predictions: &Tensor, activated: &Tensor, eps: f64) -> CResult<Tensor> {
        let modalities = self.modalities(activated, eps)?;
        let coefs = (modalities.broadcast_matmul(&self.correction_coefs.t()?)? + 1.0)?;
        let innovation = (activated - predictions.get(self.active)?)?;
        // [b, t, n] -> [n, b, t, 1]
        let coefs = coefs.permute((2, 0, 1))?.unsqueeze(3)?;
        innovation.unsqueeze(0)?.broadcast_mul(&coefs)?.broadcast_add(predictions)
    }
}

#[derive(Debug)]
struct Layer {
    altup: AltUp,
    input_norm: Tensor,
    attention: SharedKvAttention,
    post_attn_norm: Tensor,
    laurel_left: candle_nn::Linear,
    laurel_right: candle_nn::Linear,
    laurel_norm: Tensor,
    pre_ffn_norm: Tensor,
    mlp: Mlp,
    post_ffn_norm: Tensor,
    per_layer_gate: candle_nn::Linear,
    per_layer_projection: candle_nn::Linear,
    post_per_layer_norm: Tensor,
}

#[allow(missing_debug_implementations)]
pub struct Gemma3n {
    embeddings: Tensor,
    /// `[vocab_size_per_layer_input, layers * width]`.
    per_layer_embeddings: Tensor,
    per_layer_projection: candle_nn::Linear,
    per_layer_projection_norm: Tensor,
    altup_projections: Vec<candle_nn::Linear>,
    altup_unembed_projections: Vec<candle_nn::Linear>,
    layers: Vec<Layer>,
    norm: Tensor,
    hidden: usize,
    width: usize,
    vocab_per_layer: usize,
    correct_scale: bool,
    active: usize,
    eps: f64,
    softcap: Option<f64>,
    context_length: usize,
}

impl Gemma3n {
    pub fn load(ckpt: &Checkpoint, device: &Device, progress: bool) -> Result<Self, EngineError> {
        let text = ckpt.config.get("text_config").ok_or_else(|| meta("config.json has no `text_config`"))?;
        let cfg: Config = parse(text, "gemma3n")?;
        let prefix = "model.language_model";
        let layers_n = cfg.num_hidden_layers;
        if cfg.layer_types.len() != layers_n {
            return Err(meta(format!("{} layer_types for {layers_n} layers", cfg.layer_types.len())));
        }
        let sliding: Vec<bool> = cfg
            .layer_types
            .iter()
            .map(|kind| match kind.as_str() {
                "sliding_attention" => Ok(true),
                "full_attention" => Ok(false),
                other => Err(meta(format!("layer type `{other}` is not supported"))),
            })
            .collect::<Result<_, _>>()?;
        let streams = cfg.altup_num_inputs;
        if streams < 2 || cfg.altup_active_idx >= streams {
            return Err(meta(format!("altup_active_idx {} of {streams} inputs", cfg.altup_active_idx)));
        }
        if let Some(pattern) = &cfg.activation_sparsity_pattern
            && pattern.len() < layers_n
        {
            return Err(meta(format!("activation_sparsity_pattern has {} entries", pattern.len())));
        }
        let first_shared = layers_n.saturating_sub(cfg.num_kv_shared_layers);
        let eps = cfg.rms_norm_eps;
        let device = device.clone();
        let tensor = |name: &str| ckpt.tensor(name, &device);
        let linear = |name: &str| ckpt.linear(name, &device);
        // mlx-lm runs `prediction_coefs` / `correction_coefs` clipped, in float32.
        let coefs = |name: &str| -> Result<Tensor, EngineError> {
            let w = ckpt.weight(name, &device)?;
            Ok(match cfg.altup_coef_clip {
                Some(clip) => w.clamp(-clip, clip)?,
                None => w,
            })
        };

        let bar = layer_progress(progress, layers_n, "gemma3n");
        let mut layers = Vec::with_capacity(layers_n);
        for i in 0..layers_n {
            let l = format!("{prefix}.layers.{i}");
            let (kv, kv_source) = if i < first_shared {
                let kv = KvProjection {
                    k: MlxLinear::Dense(linear(&format!("{l}.self_attn.k_proj"))?),
                    v: Some(MlxLinear::Dense(linear(&format!("{l}.self_attn.v_proj"))?)),
                    k_norm: tensor(&format!("{l}.self_attn.k_norm.weight"))?,
                    kv_heads: cfg.num_key_value_heads,
                };
                (Some(kv), i)
            } else {
                // mlx-lm's `layer_idx_to_cache_idx`: the last non-shared layer of the type.
                let source = (0..first_shared)
                    .rev()
                    .find(|&j| sliding[j] == sliding[i])
                    .ok_or_else(|| meta(format!("KV-shared layer {i} has no earlier {} layer", cfg.layer_types[i])))?;
                (None, source)
            };
            let base = if sliding[i] { cfg.rope_local_base_freq } else { cfg.rope_theta };
            let attention = SharedKvAttention {
                layer: i,
                q: MlxLinear::Dense(linear(&format!("{l}.self_attn.q_proj"))?),
                q_norm: tensor(&format!("{l}.self_attn.q_norm.weight"))?,
                o: MlxLinear::Dense(linear(&format!("{l}.self_attn.o_proj"))?),
                kv,
                kv_source,
                heads: cfg.num_attention_heads,
                head_dim: cfg.head_dim,
                rope: RopeSpec::standard(cfg.head_dim, base),
                window: sliding[i].then_some(cfg.sliding_window),
                ones: Tensor::ones(cfg.head_dim, DType::F32, &device)?,
                eps,
            };
            let sparsity = cfg.activation_sparsity_pattern.as_ref().map_or(0.0, |p| p[i]);
            let altup = AltUp {
                correct_output_scale: tensor(&format!("{l}.altup.correct_output_scale"))?,
                correction_coefs: coefs(&format!("{l}.altup.correction_coefs"))?,
                prediction_coefs: coefs(&format!("{l}.altup.prediction_coefs"))?,
                modality_router: linear(&format!("{l}.altup.modality_router"))?,
                router_norm: tensor(&format!("{l}.altup.router_norm.weight"))?,
                streams,
                active: cfg.altup_active_idx,
                hidden: cfg.hidden_size,
            };
            if altup.prediction_coefs.dims() != [streams * streams, streams] {
                return Err(meta(format!("{l}.altup.prediction_coefs has shape {:?}", altup.prediction_coefs.dims())));
            }
            layers.push(Layer {
                altup,
                input_norm: tensor(&format!("{l}.input_layernorm.weight"))?,
                attention,
                post_attn_norm: tensor(&format!("{l}.post_attention_layernorm.weight"))?,
                laurel_left: linear(&format!("{l}.laurel.linear_left"))?,
                laurel_right: linear(&format!("{l}.laurel.linear_right"))?,
                laurel_norm: tensor(&format!("{l}.laurel.post_laurel_norm.weight"))?,
                pre_ffn_norm: tensor(&format!("{l}.pre_feedforward_layernorm.weight"))?,
                mlp: Mlp {
                    gate: linear(&format!("{l}.mlp.gate_proj"))?,
                    up: linear(&format!("{l}.mlp.up_proj"))?,
                    down: linear(&format!("{l}.mlp.down_proj"))?,
                    std_multiplier: (sparsity > 0.0).then(|| std_multiplier(sparsity)),
                },
                post_ffn_norm: tensor(&format!("{l}.post_feedforward_layernorm.weight"))?,
                per_layer_gate: linear(&format!("{l}.per_layer_input_gate"))?,
                per_layer_projection: linear(&format!("{l}.per_layer_projection"))?,
                post_per_layer_norm: tensor(&format!("{l}.post_per_layer_input_norm.weight"))?,
            });
            bar.inc(1);
        }
        bar.finish_and_clear();
        let projections = |name: &str| -> Result<Vec<candle_nn::Linear>, EngineError> {
            (0..streams - 1).map(|i| linear(&format!("{prefix}.{name}.{i}"))).collect()
        };
        Ok(Self {
            embeddings: ckpt.weight(&format!("{prefix}.embed_tokens"), &device)?,
            per_layer_embeddings: ckpt.weight(&format!("{prefix}.embed_tokens_per_layer"), &device)?,
            per_layer_projection: linear(&format!("{prefix}.per_layer_model_projection"))?,
            per_layer_projection_norm: tensor(&format!("{prefix}.per_layer_projection_norm.weight"))?,
            altup_projections: projections("altup_projections")?,
            altup_unembed_projections: projections("altup_unembed_projections")?,
            layers,
            norm: tensor(&format!("{prefix}.norm.weight"))?,
            hidden: cfg.hidden_size,
            width: cfg.hidden_size_per_layer_input,
            vocab_per_layer: cfg.vocab_size_per_layer_input,
            correct_scale: cfg.altup_correct_scale,
            active: cfg.altup_active_idx,
            eps,
            softcap: cfg.final_logit_softcapping,
            context_length: cfg.max_position_embeddings,
        })
    }

    /// `[b, t, layers, width]`: `(norm(proj(h0) / sqrt(d)) + embed_pl(ids) * sqrt(width)) / sqrt 2`,
    /// ids past the per-layer vocabulary reading row 0.
    fn per_layer_inputs(&self, tokens: &[u32], h0: &Tensor) -> CResult<Tensor> {
        let (b, t, hidden) = h0.dims3()?;
        let shape = (b, t, self.layers.len(), self.width);
        let ids: Vec<u32> =
            tokens.iter().map(|&id| if (id as usize) < self.vocab_per_layer { id } else { 0 }).collect();
        let ids = Tensor::new(ids.as_slice(), h0.device())?;
        let embedded = (self.per_layer_embeddings.index_select(&ids, 0)?.reshape(shape)? * (self.width as f64).sqrt())?;
        let projected = (self.per_layer_projection.forward(h0)? * (hidden as f64).powf(-0.5))?.reshape(shape)?;
        let projected = rms_norm(&projected, &self.per_layer_projection_norm, self.eps)?;
        (projected + embedded)? * 0.5f64.sqrt()
    }

    fn layer(
        &self,
        index: usize,
        xs: &Tensor,
        pli: &Tensor,
        batch: &mut [SeqInput<'_>],
        ragged: &Ragged,
    ) -> CResult<Tensor> {
        let layer = &self.layers[index];
        let eps = self.eps;
        let predictions = layer.altup.predict(xs, eps)?;
        let active = predictions.get(self.active)?;
        let normed = rms_norm(&active, &layer.input_norm, eps)?;
        let laurel = layer.laurel_right.forward(&layer.laurel_left.forward(&normed)?)?;
        let laurel = (&normed + rms_norm(&laurel, &layer.laurel_norm, eps)?)?;
        let attn = ragged.per_sequence(&normed, batch, |x, cache, masks| layer.attention.forward(x, cache, masks))?;
        let attn = (active + rms_norm(&attn, &layer.post_attn_norm, eps)?)?;
        let attn_laurel = ((attn + laurel)? * 0.5f64.sqrt())?;
        let ffw = layer.mlp.forward(&rms_norm(&attn_laurel, &layer.pre_ffn_norm, eps)?)?;
        let activated = (attn_laurel + rms_norm(&ffw, &layer.post_ffn_norm, eps)?)?;
        let corrected = layer.altup.correct(&predictions, &activated, eps)?;

        let mut first = corrected.get(self.active)?;
        if self.correct_scale {
            first = first.broadcast_mul(&layer.altup.correct_output_scale)?;
        }
        let first = (layer.per_layer_gate.forward(&first)?.gelu()? * pli)?;
        let first = rms_norm(&layer.per_layer_projection.forward(&first)?, &layer.post_per_layer_norm, eps)?;
        // mlx-lm adds it to streams 1.. (not "all but the active one").
        let n = layer.altup.streams;
        let rest = corrected.narrow(0, 1, n - 1)?.broadcast_add(&first.unsqueeze(0)?)?;
        Tensor::cat(&[&corrected.narrow(0, 0, 1)?, &rest], 0)
    }
}

/// `x * (target / rms(x))` per position: `target` and `x` `[.., d]`, `target` keepdim.
fn rescale(x: &Tensor, target: &Tensor) -> CResult<Tensor> {
    let magnitude = x.sqr()?.mean_keepdim(D::Minus1)?.sqrt()?;
    x.broadcast_mul(&(target / magnitude)?)
}

impl CausalLm for Gemma3n {
    fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> CResult<Tensor> {
        forward_one(self, tokens, cache)
    }

    /// Every row through the embeddings, AltUp streams, LAuReL and MLPs at once; attention
    /// per sequence against its own cache.
    fn forward_batch(&self, batch: &mut [SeqInput<'_>]) -> CResult<Vec<Vec<f32>>> {
        let ragged = Ragged::new(batch, self.context_length)?;
        if ragged.is_empty() {
            return Ok(Vec::new());
        }
        let device = self.norm.device();
        let ids = Tensor::new(ragged.tokens.as_slice(), device)?;
        let h0 = (self.embeddings.index_select(&ids, 0)?.unsqueeze(0)? * (self.hidden as f64).sqrt())?;
        let pli = self.per_layer_inputs(&ragged.tokens, &h0)?;

        let target = h0.sqr()?.mean_keepdim(D::Minus1)?.sqrt()?;
        let mut streams = vec![h0.clone()];
        for projection in &self.altup_projections {
            streams.push(rescale(&projection.forward(&h0)?, &target)?);
        }
        // [streams, 1, rows, hidden]
        let mut xs = Tensor::stack(&streams, 0)?;
        for index in 0..self.layers.len() {
            let layer_input = pli.narrow(2, index, 1)?.squeeze(2)?;
            xs = self.layer(index, &xs, &layer_input, batch, &ragged)?;
        }
        ragged.advance(batch);

        // Everything from here on is per position: only each sequence's last one is needed.
        let last = ragged.last_rows_along(&xs, 2)?;
        let first = last.get(0)?;
        let target = first.sqr()?.mean_keepdim(D::Minus1)?.sqrt()?;
        let mut sum = first;
        for (i, projection) in self.altup_unembed_projections.iter().enumerate() {
            sum = (sum + rescale(&projection.forward(&last.get(i + 1)?)?, &target)?)?;
        }
        let h = (sum / self.altup_unembed_projections.len().saturating_add(1) as f64)?;
        let h = rms_norm(&h, &self.norm, self.eps)?.squeeze(0)?;
        softcap(h.matmul(&self.embeddings.t()?)?, self.softcap)?.to_dtype(DType::F32)?.to_vec2()
    }

    fn batches(&self) -> bool {
        true
    }

    fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len(), self.context_length)
    }

    fn context_length(&self) -> usize {
        self.context_length
    }
}

/// The architecture registry's entry point ([`crate::engine::arch`]).
pub fn model(ckpt: &Checkpoint, _: &str, device: &Device, progress: bool) -> Loaded {
    Ok(Box::new(Gemma3n::load(ckpt, device, progress)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// mlx-lm: `math.sqrt(2.0) * mx.erfinv(2 * 0.95 - 1)` = 1.6448536.
    #[test]
    fn sparsity_cutoff_is_mlx_lms() {
        assert!((std_multiplier(0.95) - 1.644_853_6).abs() < 1e-6, "{}", std_multiplier(0.95));
    }
}
