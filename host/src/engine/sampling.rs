//! Choosing the next token: penalties, temperature, top-k, top-p, min-p, seeded sampling.

use std::collections::HashMap;

/// Sampling parameters of one request, OpenAI's plus the common extensions.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 means off.
    pub top_k: usize,
    pub min_p: f32,
    /// Multiplicative (HF style); 1 means off.
    pub repetition_penalty: f32,
    /// Additive (OpenAI style), -2..2.
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Self::default() }
    }

    /// Rejects values outside their range, naming the parameter.
    pub fn validate(&self) -> Result<(), String> {
        let check = |ok: bool, name: &str, range: &str, value: f32| {
            if ok { Ok(()) } else { Err(format!("`{name}` must be {range}, got {value}")) }
        };
        check(
            self.temperature.is_finite() && (0.0..=2.0).contains(&self.temperature),
            "temperature",
            "between 0 and 2",
            self.temperature,
        )?;
        check(self.top_p > 0.0 && self.top_p <= 1.0, "top_p", "in (0, 1]", self.top_p)?;
        check((0.0..=1.0).contains(&self.min_p), "min_p", "between 0 and 1", self.min_p)?;
        check(
            self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite(),
            "repetition_penalty",
            "positive",
            self.repetition_penalty,
        )?;
        check(
            (-2.0..=2.0).contains(&self.presence_penalty),
            "presence_penalty",
            "between -2 and 2",
            self.presence_penalty,
        )?;
        check(
            (-2.0..=2.0).contains(&self.frequency_penalty),
            "frequency_penalty",
            "between -2 and 2",
            self.frequency_penalty,
        )
    }
}

/// SplitMix64: small, fast and the same on every platform, so a seed always gives the
/// same text.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn from_entropy() -> Self {
        use std::hash::BuildHasher;
        Self(std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Samples tokens for one sequence; remembers what it generated for the penalties.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    counts: HashMap<u32, u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = params.seed.map_or_else(Rng::from_entropy, Rng::new);
        Self { params, rng, counts: HashMap::new() }
    }

    /// Counts a token toward the penalties (prompt tokens count for the repetition penalty).
    pub fn observe(&mut self, token: u32) {
        *self.counts.entry(token).or_insert(0) += 1;
    }

    /// Applies the penalties to `logits` in place.
    pub fn penalize(&self, logits: &mut [f32]) {
        let p = &self.params;
        for (&token, &count) in &self.counts {
            let Some(logit) = logits.get_mut(token as usize) else { continue };
            if p.repetition_penalty != 1.0 {
                *logit = if *logit > 0.0 { *logit / p.repetition_penalty } else { *logit * p.repetition_penalty };
            }
            *logit -= p.presence_penalty + p.frequency_penalty * count as f32;
        }
    }

    /// The next token from (already penalized) logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l / p.temperature))
            .filter(|(_, l)| l.is_finite())
            .collect();
        if candidates.is_empty() {
            return argmax(logits);
        }
        candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 {
            candidates.truncate(p.top_k);
        }
        let max = candidates[0].1;
        let mut probs: Vec<f32> = candidates.iter().map(|(_, l)| (l - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p;
            let keep = probs.iter().take_while(|&&x| x >= floor).count().max(1);
            probs.truncate(keep);
        }
        if p.top_p < 1.0 {
            let mut mass = 0.0;
            let keep = probs
                .iter()
                .position(|x| {
                    mass += x;
                    mass >= p.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut target = self.rng.next_f32() * total;
        for (i, prob) in probs.iter().enumerate() {
            target -= prob;
            if target <= 0.0 {
                return candidates[i].0;
            }
        }
        candidates[probs.len() - 1].0
    }
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Log-probabilities of `logits` (a log-softmax).
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|l| (l - max).exp()).sum();
    let log_sum = sum.ln() + max;
    logits.iter().map(|l| l - log_sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_maximum() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, 2.0]), 1);
    }

    #[test]
    fn same_seed_same_choices() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let params = SamplingParams { seed: Some(7), temperature: 1.0, ..SamplingParams::default() };
        let run = |params: &SamplingParams| {
            let mut s = Sampler::new(params.clone());
            (0..20).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(&params), run(&params));
        assert_ne!(run(&params), run(&SamplingParams { seed: Some(8), ..params.clone() }));
    }

    #[test]
    fn top_k_one_is_greedy_and_penalties_apply() {
        let mut s = Sampler::new(SamplingParams { top_k: 1, seed: Some(1), ..SamplingParams::default() });
        assert_eq!(s.sample(&[0.0, 5.0, 1.0]), 1);
        let mut s = Sampler::new(SamplingParams { presence_penalty: 2.0, ..SamplingParams::greedy() });
        s.observe(1);
        let mut logits = vec![0.0, 1.5, 1.0];
        s.penalize(&mut logits);
        assert_eq!(s.sample(&logits), 2);
    }

    #[test]
    fn validation_names_the_parameter() {
        assert!(
            SamplingParams { top_p: 0.0, ..SamplingParams::default() }
                .validate()
                .expect_err("bad top_p")
                .contains("top_p")
        );
        assert!(SamplingParams::default().validate().is_ok());
    }

    #[test]
    fn log_softmax_normalizes() {
        let lp = log_softmax(&[1.0, 2.0, 3.0]);
        let total: f32 = lp.iter().map(|x| x.exp()).sum();
        assert!((total - 1.0).abs() < 1e-5);
    }
}
