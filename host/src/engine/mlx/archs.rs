//! One `Config` per architecture, deserialized from the model's own `config.json` field
//! names, each turned into the [`DenseSpec`] of the shared decoder. Defaults follow
//! mlx-lm's `ModelArgs` for the same model type, so a checkpoint behaves as it does there.

use serde::Deserialize;
use serde_json::Value;

use super::dense::{Activation, DenseSpec, RopeSpec};
use crate::engine::EngineError;

pub(crate) fn parse<T: for<'de> Deserialize<'de>>(config: &Value, arch: &str) -> Result<T, EngineError> {
    T::deserialize(config).map_err(|e| EngineError::Metadata(format!("{arch} config.json: {e}")))
}

/// Fields every Llama-like `config.json` shares.
#[derive(Debug, Clone, Deserialize)]
pub struct Common {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f32,
    pub rope_scaling: Option<Value>,
    pub max_position_embeddings: Option<usize>,
    pub tie_word_embeddings: Option<bool>,
}

fn default_eps() -> f64 {
    1e-6
}

fn default_theta() -> f32 {
    10_000.0
}

impl Common {
    pub(crate) fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The spec of a plain Llama block; families adjust it.
    pub(crate) fn spec(&self, arch: &str, tied_default: bool, rope: Option<RopeSpec>) -> DenseSpec {
        let head_dim = self.head_dim();
        DenseSpec {
            arch: arch.to_string(),
            prefix: String::from("model"),
            head: String::from("lm_head"),
            layers: self.num_hidden_layers,
            hidden: self.hidden_size,
            heads: self.num_attention_heads,
            kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim,
            rms_eps: self.rms_norm_eps,
            context_length: self.max_position_embeddings.unwrap_or(4096),
            tied_embeddings: self.tie_word_embeddings.unwrap_or(tied_default),
            qk_norm: false,
            norm_offset: 0.0,
            sandwich_norms: false,
            activation: Activation::Silu,
            embed_scale: None,
            attn_scale: 1.0 / (head_dim as f64).sqrt(),
            rope: vec![rope; self.num_hidden_layers],
            window: vec![None; self.num_hidden_layers],
            fused_projections: false,
            query_scale: None,
        }
    }
}

fn num(v: &Value, key: &str, default: f64) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(default)
}

/// mlx-lm's `initialize_rope` for the rope types the dense families use.
pub fn rope_from_scaling(
    dims: usize,
    base: f32,
    scaling: Option<&Value>,
    max_pos: usize,
) -> Result<RopeSpec, EngineError> {
    let Some(cfg) = scaling.filter(|v| v.is_object()) else { return Ok(RopeSpec::standard(dims, base)) };
    let kind = cfg.get("type").or_else(|| cfg.get("rope_type")).and_then(Value::as_str).unwrap_or("default");
    let periods = |i: usize| f64::from(base).powf((2 * i) as f64 / dims as f64);
    match kind {
        "default" => Ok(RopeSpec::standard(dims, base)),
        "linear" => {
            let mut rope = RopeSpec::standard(dims, base);
            rope.position_scale = (1.0 / num(cfg, "factor", 1.0)) as f32;
            Ok(rope)
        }
        "llama3" => {
            let factor = num(cfg, "factor", 1.0);
            let low = num(cfg, "low_freq_factor", 1.0);
            let high = num(cfg, "high_freq_factor", 4.0);
            let old = num(cfg, "original_max_position_embeddings", 8192.0);
            let (low_wavelen, high_wavelen) = (old / low, old / high);
            let freqs: Vec<f32> = (0..dims / 2)
                .map(|i| {
                    let f = periods(i);
                    let wavelen = 2.0 * std::f64::consts::PI * f;
                    let scaled = if wavelen > low_wavelen { f * factor } else { f };
                    if wavelen > high_wavelen && wavelen < low_wavelen {
                        let smooth = (old / wavelen - low) / (high - low);
                        (scaled / ((1.0 - smooth) / factor + smooth)) as f32
                    } else {
                        scaled as f32
                    }
                })
                .collect();
            Ok(RopeSpec::from_periods(dims, &freqs, 1.0))
        }
        "yarn" => {
            let factor = num(cfg, "factor", 1.0);
            let original = num(cfg, "original_max_position_embeddings", 4096.0);
            let beta_fast = num(cfg, "beta_fast", 32.0);
            let beta_slow = num(cfg, "beta_slow", 1.0);
            let mscale = num(cfg, "mscale", 1.0);
            let mscale_all_dim = num(cfg, "mscale_all_dim", 0.0);
            let base = f64::from(base);
            let correction = |rotations: f64| {
                dims as f64 * (original / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
            };
            let low = correction(beta_fast).floor().max(0.0);
            let mut high = correction(beta_slow).ceil().min(dims as f64 - 1.0);
            if low == high {
                high += 0.001;
            }
            let get_mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
            let input_scale = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim);
            let freqs: Vec<f32> = (0..dims / 2)
                .map(|i| {
                    let extra = periods(i);
                    let inter = factor * extra;
                    let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                    let mask = 1.0 - ramp;
                    ((inter * extra) / (inter * mask + extra * (1.0 - mask))) as f32
                })
                .collect();
            Ok(RopeSpec::from_periods(dims, &freqs, input_scale as f32))
        }
        "longrope" | "su" => {
            let long: Vec<f64> = cfg
                .get("long_factor")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default();
            if long.len() != dims / 2 {
                return Err(EngineError::Metadata(format!(
                    "longrope long_factor has {} entries, expected {}",
                    long.len(),
                    dims / 2
                )));
            }
            let original = num(cfg, "original_max_position_embeddings", 4096.0);
            let factor = max_pos as f64 / original;
            // mlx-lm's SuScaledRoPE always uses the long factors.
            let input_scale = if factor <= 1.0 { 1.0 } else { (1.0 + factor.ln() / original.ln()).sqrt() };
            let freqs: Vec<f32> = (0..dims / 2).map(|i| (long[i] * periods(i)) as f32).collect();
            Ok(RopeSpec::from_periods(dims, &freqs, input_scale as f32))
        }
        other => Err(EngineError::Metadata(format!("rope type `{other}` is not supported yet"))),
    }
}

/// The dense spec for `model_type`, from `config.json`: the registry row's
/// ([`crate::engine::arch`]) spec function.
pub fn dense_spec(model_type: &str, config: &Value) -> Result<DenseSpec, EngineError> {
    use crate::engine::arch::{self, Loader};
    match arch::find(crate::registry::ModelFormat::Mlx, model_type).map(|a| a.loader) {
        Some(Loader::Dense(spec)) => spec(model_type, config),
        _ => Err(EngineError::UnsupportedArch(model_type.to_string())),
    }
}

pub(crate) fn qwen2(model_type: &str, config: &Value) -> Result<DenseSpec, EngineError> {
    let c: Common = parse(config, model_type)?;
    let rope = rope_from_scaling(c.head_dim(), c.rope_theta, c.rope_scaling.as_ref(), 32768)?;
    Ok(c.spec(model_type, true, Some(rope)))
}

#[derive(Debug, Deserialize)]
struct Llama {
    #[serde(flatten)]
    common: Common,
    layer_types: Option<Vec<String>>,
    sliding_window: Option<usize>,
}

/// mlx-lm's llama: `sliding_window` applies to the layers `layer_types` marks
/// `sliding_attention`, and to no layer when there is no `layer_types` (Mistral configs
/// name a `sliding_window` that mlx-lm does not use).
pub(crate) fn llama(model_type: &str, config: &Value) -> Result<DenseSpec, EngineError> {
    let c: Llama = parse(config, model_type)?;
    let common = &c.common;
    let max_pos = common.max_position_embeddings.unwrap_or(4096);
    let rope = rope_from_scaling(common.head_dim(), common.rope_theta, common.rope_scaling.as_ref(), max_pos)?;
    let mut spec = common.spec(model_type, false, Some(rope));
    if let Some(types) = &c.layer_types {
        for (window, kind) in spec.window.iter_mut().zip(types) {
            if kind == "sliding_attention" {
                *window = c.sliding_window;
            }
        }
    }
    Ok(spec)
}

/// mlx-lm's qwen3: `rope_theta` is required, but transformers 5 configs nest it (and the
/// scaling) in `rope_parameters`, which mlx-lm reads when the top-level fields are absent.
pub(crate) fn qwen3(_: &str, config: &Value) -> Result<DenseSpec, EngineError> {
    let c: Common = parse(config, "qwen3")?;
    let params = config.get("rope_parameters").filter(|p| p.as_object().is_some_and(|p| !p.is_empty()));
    let theta = config
        .get("rope_theta")
        .filter(|t| !t.is_null())
        .or_else(|| params.and_then(|p| p.get("rope_theta")))
        .and_then(Value::as_f64)
        .ok_or_else(|| EngineError::Metadata(String::from("qwen3 config.json: rope_theta is missing")))?;
    let scaling = c.rope_scaling.as_ref().or(params);
    let rope = rope_from_scaling(c.head_dim(), theta as f32, scaling, 32768)?;
    let mut spec = c.spec("qwen3", true, Some(rope));
    spec.qk_norm = true;
    Ok(spec)
}

/// The Qwen3-VL wrapper: mlx-lm's qwen3 text model, configured by `text_config` (the
/// whole config when there is none), under `language_model.`. Its interleaved M-RoPE
/// (`rope_type: default`) is plain RoPE for text.
pub(crate) fn qwen3_vl(_: &str, config: &Value) -> Result<DenseSpec, EngineError> {
    let mut spec = qwen3("qwen3", config.get("text_config").unwrap_or(config))?;
    spec.arch = String::from("qwen3_vl");
    spec.prefix = String::from("language_model.model");
    spec.head = String::from("language_model.lm_head");
    Ok(spec)
}

#[derive(Debug, Deserialize)]
struct SmolLm3 {
    #[serde(flatten)]
    common: Common,
    #[serde(default = "four")]
    no_rope_layer_interval: usize,
    no_rope_layers: Option<Vec<u8>>,
}

fn four() -> usize {
    4
}

/// Llama with NoPE layers: `no_rope_layers[i] == 0` skips RoPE in layer i.
pub(crate) fn smollm3(_: &str, config: &Value) -> Result<DenseSpec, EngineError> {
    let c: SmolLm3 = parse(config, "smollm3")?;
    let rope = rope_from_scaling(c.common.head_dim(), c.common.rope_theta, c.common.rope_scaling.as_ref(), 4096)?;
    let mut spec = c.common.spec("smollm3", true, Some(rope));
    let interval = c.no_rope_layer_interval.max(1);
    let uses_rope: Vec<bool> = match &c.no_rope_layers {
        Some(flags) => flags.iter().map(|f| *f != 0).collect(),
        None => (0..spec.layers).map(|i| (i + 1) % interval != 0).collect(),
    };
    for (slot, uses) in spec.rope.iter_mut().zip(uses_rope) {
        if !uses {
            *slot = None;
        }
    }
    Ok(spec)
}

#[derive(Debug, Deserialize)]
struct Phi3 {
    #[serde(flatten)]
    common: Common,
    #[serde(default = "one")]
    partial_rotary_factor: f64,
    original_max_position_embeddings: Option<usize>,
}

fn one() -> f64 {
    1.0
}

/// Fused `qkv_proj` / `gate_up_proj`, partial rotary, LongRoPE.
pub(crate) fn phi3(_: &str, config: &Value) -> Result<DenseSpec, EngineError> {
    let c: Phi3 = parse(config, "phi3")?;
    let dims = (c.common.head_dim() as f64 * c.partial_rotary_factor) as usize;
    let mut scaling = c.common.rope_scaling.clone();
    if let (Some(Value::Object(s)), Some(orig)) = (&mut scaling, c.original_max_position_embeddings) {
        s.entry("original_max_position_embeddings").or_insert(Value::from(orig));
    }
    let max_pos = c.common.max_position_embeddings.unwrap_or(131072);
    let rope = rope_from_scaling(dims, c.common.rope_theta, scaling.as_ref(), max_pos)?;
    let mut spec = c.common.spec("phi3", false, Some(rope));
    spec.fused_projections = true;
    Ok(spec)
}

#[derive(Debug, Deserialize)]
struct Ministral3 {
    #[serde(flatten)]
    common: Common,
    rope_parameters: Option<Value>,
}

/// Llama layout with YaRN and Llama-4 query scaling.
pub(crate) fn ministral3(_: &str, config: &Value) -> Result<DenseSpec, EngineError> {
    let c: Ministral3 = parse(config, "ministral3")?;
    let params = c.rope_parameters.clone().unwrap_or(Value::Null);
    let theta = params.get("rope_theta").and_then(Value::as_f64).map_or(c.common.rope_theta, |t| t as f32);
    let max_pos = c.common.max_position_embeddings.unwrap_or(4096);
    let rope = rope_from_scaling(c.common.head_dim(), theta, Some(&params), max_pos)?;
    let mut spec = c.common.spec("ministral3", false, Some(rope));
    if let (Some(beta), Some(orig)) = (
        params.get("llama_4_scaling_beta").and_then(Value::as_f64),
        params.get("original_max_position_embeddings").and_then(Value::as_u64),
    ) {
        spec.query_scale = Some((beta as f32, orig as usize));
    }
    Ok(spec)
}

/// The multimodal wrapper: only the language model, under `language_model.`.
pub(crate) fn mistral3(_: &str, config: &Value) -> Result<DenseSpec, EngineError> {
    let text = config
        .get("text_config")
        .ok_or_else(|| EngineError::Metadata(String::from("mistral3 config.json has no `text_config`")))?;
    let text_type = text.get("model_type").and_then(Value::as_str).unwrap_or("mistral");
    let mut spec = match text_type {
        "ministral3" => ministral3("ministral3", text)?,
        "mistral" | "llama" => dense_spec("llama", text)?,
        other => return Err(EngineError::UnsupportedArch(format!("mistral3 with a `{other}` language model"))),
    };
    spec.arch = String::from("mistral3");
    spec.prefix = String::from("language_model.model");
    spec.head = String::from("language_model.lm_head");
    Ok(spec)
}

/// mlx-lm's gemma3_text `ModelArgs`, with its defaults (which are not those of [`Common`]).
/// `tie_word_embeddings` is not among them: mlx-lm ties the head when the checkpoint has
/// no `lm_head`.
#[derive(Debug, Deserialize)]
struct Gemma3Text {
    #[serde(default = "gemma_hidden")]
    hidden_size: usize,
    #[serde(default = "gemma_layers")]
    num_hidden_layers: usize,
    #[serde(default = "gemma_heads")]
    num_attention_heads: usize,
    #[serde(default = "gemma_head_dim")]
    head_dim: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "gemma_kv_heads")]
    num_key_value_heads: usize,
    #[serde(default = "gemma_theta")]
    rope_theta: f32,
    #[serde(default = "gemma_local_base")]
    rope_local_base_freq: f32,
    #[serde(default = "gemma_pre_attn")]
    query_pre_attn_scalar: f64,
    #[serde(default = "gemma_window")]
    sliding_window: usize,
    #[serde(default = "gemma_pattern")]
    sliding_window_pattern: usize,
    #[serde(default = "gemma_max_pos")]
    max_position_embeddings: usize,
    rope_scaling: Option<Value>,
}

fn gemma_hidden() -> usize {
    1152
}

fn gemma_layers() -> usize {
    26
}

fn gemma_heads() -> usize {
    4
}

fn gemma_head_dim() -> usize {
    256
}

fn gemma_kv_heads() -> usize {
    1
}

fn gemma_theta() -> f32 {
    1_000_000.0
}

fn gemma_pre_attn() -> f64 {
    256.0
}

fn gemma_local_base() -> f32 {
    10_000.0
}

fn gemma_window() -> usize {
    512
}

fn gemma_pattern() -> usize {
    6
}

fn gemma_max_pos() -> usize {
    32768
}

/// `x` rounded to the nearest bfloat16 (ties to even), as `mx.array(x, mx.bfloat16)` does.
pub(crate) fn round_bf16(x: f32) -> f32 {
    let bits = x.to_bits();
    f32::from_bits(bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000)
}

/// (1+w) norms, sandwich norms, GeGLU, scaled embeddings, sliding-window local layers with
/// their own RoPE base; global layers use `rope_theta` and `rope_scaling`.
pub(crate) fn gemma3_text(_: &str, config: &Value) -> Result<DenseSpec, EngineError> {
    let c: Gemma3Text = parse(config, "gemma3_text")?;
    let common = Common {
        hidden_size: c.hidden_size,
        num_hidden_layers: c.num_hidden_layers,
        num_attention_heads: c.num_attention_heads,
        num_key_value_heads: Some(c.num_key_value_heads),
        head_dim: Some(c.head_dim),
        rms_norm_eps: c.rms_norm_eps,
        rope_theta: c.rope_theta,
        rope_scaling: c.rope_scaling,
        max_position_embeddings: Some(c.max_position_embeddings),
        tie_word_embeddings: None,
    };
    let dims = c.head_dim;
    let global = rope_from_scaling(dims, c.rope_theta, common.rope_scaling.as_ref(), c.max_position_embeddings)?;
    let local = RopeSpec::standard(dims, c.rope_local_base_freq);
    let mut spec = common.spec("gemma3_text", false, None);
    spec.norm_offset = 1.0;
    spec.sandwich_norms = true;
    spec.qk_norm = true;
    spec.activation = Activation::GeluTanh;
    // `h *= mx.array(hidden_size**0.5, mx.bfloat16)`.
    spec.embed_scale = Some(round_bf16((c.hidden_size as f32).sqrt()));
    spec.attn_scale = 1.0 / c.query_pre_attn_scalar.sqrt();
    let pattern = c.sliding_window_pattern.max(1);
    for i in 0..spec.layers {
        let sliding = (i + 1) % pattern != 0;
        spec.rope[i] = Some(if sliding { local.clone() } else { global.clone() });
        spec.window[i] = sliding.then_some(c.sliding_window);
    }
    Ok(spec)
}

/// The multimodal wrapper (mlx-lm `gemma3`): gemma3_text under `language_model.`, its
/// `text_config` completed the way the wrapper's `ModelArgs.__post_init__` does (8 query
/// and 4 key/value heads unless given; `vocab_size` comes from the top level and is read
/// here from the tensors).
pub(crate) fn gemma3(_: &str, config: &Value) -> Result<DenseSpec, EngineError> {
    let mut text = config
        .get("text_config")
        .filter(|v| v.is_object())
        .cloned()
        .ok_or_else(|| EngineError::Metadata(String::from("gemma3 config.json has no `text_config`")))?;
    if let Some(fields) = text.as_object_mut() {
        fields.entry("num_attention_heads").or_insert(Value::from(8));
        fields.entry("num_key_value_heads").or_insert(Value::from(4));
    }
    let mut spec = gemma3_text("gemma3_text", &text)?;
    spec.arch = String::from("gemma3");
    spec.prefix = String::from("language_model.model");
    spec.head = String::from("language_model.lm_head");
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_matches_mlx() {
        assert_eq!(round_bf16(8.0), 8.0);
        assert_eq!(round_bf16(128f32.sqrt()), 11.3125);
        assert_eq!(round_bf16(3840f32.sqrt()), 62.0);
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0, "a tie rounds to even");
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0, "a tie rounds to even");
    }

    #[test]
    fn llama_slides_only_where_layer_types_say_so() {
        let mut config = serde_json::json!({
            "model_type": "mistral", "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "head_dim": 32, "sliding_window": 4096,
        });
        let spec = dense_spec("mistral", &config).expect("spec");
        assert_eq!(spec.window, vec![None, None]);
        assert_eq!((spec.head_dim, spec.kv_heads), (32, 4));
        config["layer_types"] = serde_json::json!(["sliding_attention", "full_attention"]);
        let spec = dense_spec("llama", &config).expect("spec");
        assert_eq!(spec.window, vec![Some(4096), None]);
    }

    /// transformers 5 writes `rope_parameters` instead of `rope_theta` / `rope_scaling`.
    #[test]
    fn qwen3_reads_rope_parameters_when_rope_theta_is_absent() {
        let config = serde_json::json!({
            "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "head_dim": 16,
            "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 100.0},
        });
        let spec = dense_spec("qwen3", &config).expect("spec");
        let rope = spec.rope[0].as_ref().expect("rope");
        assert_eq!(rope.position_scale, 0.5);
        assert!((rope.inv_freq[1] - 100f32.powf(-2.0 / 16.0)).abs() < 1e-7);
        let missing = serde_json::json!({"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4});
        assert!(dense_spec("qwen3", &missing).is_err(), "mlx-lm requires rope_theta");
    }

    /// Real Gemma 3 configs leave most of `text_config` to the defaults.
    #[test]
    fn gemma3_text_config_defaults_follow_mlx_lm() {
        let config = serde_json::json!({
            "model_type": "gemma3",
            "text_config": {"hidden_size": 3840, "num_hidden_layers": 48, "sliding_window": 1024,
                            "rope_scaling": {"factor": 8.0, "rope_type": "linear"}},
        });
        let spec = dense_spec("gemma3", &config).expect("spec");
        assert_eq!((spec.heads, spec.kv_heads, spec.head_dim), (8, 4, 256));
        assert_eq!(spec.prefix, "language_model.model");
        assert_eq!(spec.embed_scale, Some(62.0));
        assert_eq!(spec.attn_scale, 1.0 / 16.0);
        assert_eq!(spec.window[0], Some(1024));
        assert_eq!(spec.window[5], None);
        assert!(!spec.tied_embeddings, "the head is tied only when the checkpoint has none");
        let global = spec.rope[5].as_ref().expect("rope");
        assert_eq!(global.position_scale, 1.0 / 8.0);
        let text_only = dense_spec("gemma3_text", &config["text_config"]).expect("spec");
        assert_eq!((text_only.heads, text_only.kv_heads), (4, 1));
    }
}
