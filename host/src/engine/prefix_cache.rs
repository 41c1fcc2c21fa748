//! The prefix cache: states of finished (and cancelled) sequences kept in host memory and
//! found again by the longest token prefix a new prompt shares with them, so a request that
//! starts like an earlier one (the same system prompt, the earlier turns of a conversation)
//! prefills only the rest.
//!
//! Design:
//! - An entry is one donated sequence: its tokens (prompt and the generated tokens whose
//!   keys and values are cached), a compact copy of its attention layers' keys and values,
//!   and, for models with recurrent layers, the recurrent states at a few positions
//!   (snapshots: every [`PrefixCacheConfig::snapshot_interval`] prompt tokens, the
//!   request's message boundaries, the end of the prompt, the end of the sequence).
//! - Attention keys and values can be cut to any length, so an attention-only model reuses
//!   the longest common prefix. Sliding-window layers keep their whole history in the cache
//!   (the window is a mask), so a cut there is exact too. A recurrent state folds in every
//!   token and cannot be rewound: on such a model a hit lands exactly on a snapshot at or
//!   before the common prefix's end.
//! - A hit always leaves at least one prompt token to run, so the sequence gets logits.
//! - The index is a chain of block hashes (vLLM's scheme, without paging): the hash of the
//!   first `k * BLOCK` tokens names the entries that start with them. A lookup hashes the
//!   prompt's blocks (linear in the prompt), starts at the deepest block an entry shares,
//!   and compares tokens exactly with those few candidates (a hash collision can never give
//!   a wrong hit), going to shallower blocks only while they could still beat the best
//!   match. Prefixes shorter than one block are not worth a lookup.
//! - An entry that a newer donation extends is merged into it (its snapshots move over), and
//!   a donation that an entry already extends only adds its snapshots there, so a growing
//!   conversation keeps one entry.
//! - Bounded in bytes (least recently used entries go first) and, separately, in recurrent
//!   snapshots (the least recently used entry loses its earliest snapshots first).
//! - It lives on the scheduler thread, without locks; lookups and donations copy memory but
//!   never run the model.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::KvCache;
use super::kv_cache::{RecurrentStates, states_bytes};

/// Tokens per hashed block of the index.
pub const BLOCK: usize = 16;

/// How large the prefix cache may grow and where recurrent states are snapshotted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixCacheConfig {
    /// Bytes of saved keys, values and states (`serve --prefix-cache-mb`).
    pub max_bytes: usize,
    /// Recurrent-state snapshots kept over all entries (`serve --prefix-cache-snapshots`).
    pub max_snapshots: usize,
    /// A recurrent model's prompt is snapshotted every this many tokens (and prefill chunks
    /// are cut there), besides its message boundaries and its end.
    pub snapshot_interval: usize,
}

impl Default for PrefixCacheConfig {
    fn default() -> Self {
        Self { max_bytes: 256 << 20, max_snapshots: 64, snapshot_interval: 512 }
    }
}

impl PrefixCacheConfig {
    /// The default byte budget for a machine with `available` bytes of free memory: a
    /// quarter of it, at least 64 MiB and at most 8 GiB (llama.cpp's `--cache-ram`
    /// default).
    pub fn default_bytes(available: u64) -> usize {
        let quarter = available / 4;
        quarter.clamp(64 << 20, 8 << 30) as usize
    }
}

/// What a sequence leaves behind: its cached tokens, its cache (holding exactly those
/// positions of the attention layers) and, for a model with recurrent layers
/// (`recurrent`), the states snapshotted on the way, by position.
#[derive(Debug)]
pub struct Donation {
    pub tokens: Vec<u32>,
    pub cache: KvCache,
    pub snapshots: Vec<(usize, RecurrentStates)>,
    pub recurrent: bool,
}

/// A lookup's result: a cache holding the first `reused` tokens of the prompt.
#[derive(Debug)]
pub struct Hit {
    pub cache: KvCache,
    pub reused: usize,
}

/// Counters and sizes, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Prompt tokens that hits did not have to prefill.
    pub tokens_saved: u64,
    pub entries: usize,
    pub bytes: usize,
    pub snapshots: usize,
}

#[derive(Debug)]
struct Entry {
    tokens: Vec<u32>,
    blocks: Vec<u64>,
    /// Attention keys and values of `tokens`, compact, without recurrent states.
    kv: KvCache,
    /// Recurrent states by position (empty for attention-only models).
    snapshots: BTreeMap<usize, RecurrentStates>,
    recurrent: bool,
    /// Bytes of `kv` (the snapshots are counted separately).
    kv_bytes: usize,
    last_used: u64,
}

impl Entry {
    fn bytes(&self) -> usize {
        self.kv_bytes + self.snapshots.values().map(states_bytes).sum::<usize>()
    }

    /// How many of `shared` tokens (the common prefix with a prompt) this entry can give.
    fn usable(&self, shared: usize) -> usize {
        if self.recurrent { self.snapshots.range(1..=shared).next_back().map_or(0, |(&at, _)| at) } else { shared }
    }
}

/// The index and its entries (see the module documentation).
#[derive(Debug)]
pub struct PrefixCache {
    config: PrefixCacheConfig,
    entries: HashMap<u64, Entry>,
    /// Block-chain hash -> entries whose tokens start with those blocks.
    index: HashMap<u64, Vec<u64>>,
    next_id: u64,
    clock: u64,
    bytes: usize,
    snapshots: usize,
    hits: u64,
    misses: u64,
    tokens_saved: u64,
}

/// The chained hashes of `tokens`' whole blocks: element `k` stands for the first
/// `(k + 1) * BLOCK` tokens.
fn block_hashes(tokens: &[u32]) -> Vec<u64> {
    let mut hash = 0x243f_6a88_85a3_08d3_u64;
    tokens
        .chunks_exact(BLOCK)
        .map(|block| {
            for &t in block {
                hash = (hash.rotate_left(5) ^ u64::from(t)).wrapping_mul(0x517c_c1b7_2722_0a95);
            }
            hash = hash.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15;
            hash
        })
        .collect()
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    pub fn new(config: PrefixCacheConfig) -> Self {
        Self {
            config,
            entries: HashMap::new(),
            index: HashMap::new(),
            next_id: 0,
            clock: 0,
            bytes: 0,
            snapshots: 0,
            hits: 0,
            misses: 0,
            tokens_saved: 0,
        }
    }

    pub fn config(&self) -> &PrefixCacheConfig {
        &self.config
    }

    pub fn stats(&self) -> PrefixCacheStats {
        PrefixCacheStats {
            hits: self.hits,
            misses: self.misses,
            tokens_saved: self.tokens_saved,
            entries: self.entries.len(),
            bytes: self.bytes,
            snapshots: self.snapshots,
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The longest cached prefix of `prompt` that leaves at least two tokens to run, as a
    /// new cache with room for `room` positions; `None` (a miss) when nothing is shared.
    /// (Two, not one: a single query row attends in the decode step's summation order, so
    /// the prompt's last row would round differently from a prefill without the cache.)
    pub fn lookup(&mut self, prompt: &[u32], room: usize) -> Option<Hit> {
        let found = self.find(prompt);
        let Some((id, reused)) = found else {
            self.misses += 1;
            return None;
        };
        let now = self.tick();
        let entry = self.entries.get_mut(&id)?;
        entry.last_used = now;
        let states = if entry.recurrent { entry.snapshots.get(&reused) } else { None };
        match entry.kv.restore(reused, room, states) {
            Ok(cache) => {
                self.hits += 1;
                self.tokens_saved += reused as u64;
                Some(Hit { cache, reused })
            }
            Err(e) => {
                tracing::warn!("prefix cache: cannot restore {reused} positions: {e}");
                self.misses += 1;
                None
            }
        }
    }

    /// The entry and length of the best match for `prompt` (ties go to the entry used last).
    fn find(&self, prompt: &[u32]) -> Option<(u64, usize)> {
        let limit = prompt.len().saturating_sub(2);
        let prompt = &prompt[..limit];
        let blocks = block_hashes(prompt);
        let mut best: Option<(usize, u64, u64)> = None;
        let mut seen = HashSet::new();
        for (level, hash) in blocks.iter().enumerate().rev() {
            // Entries first met here share fewer than `(level + 2) * BLOCK` tokens.
            if best.is_some_and(|(len, _, _)| len >= (level + 2) * BLOCK) {
                break;
            }
            let Some(ids) = self.index.get(hash) else { continue };
            for &id in ids {
                if !seen.insert(id) {
                    continue;
                }
                let Some(entry) = self.entries.get(&id) else { continue };
                let usable = entry.usable(common_prefix(&entry.tokens, prompt));
                let better = match best {
                    None => usable > 0,
                    Some((len, _, used)) => usable > len || (usable == len && entry.last_used > used),
                };
                if better {
                    best = Some((usable, id, entry.last_used));
                }
            }
        }
        best.map(|(len, id, _)| (id, len))
    }

    /// Keeps what a finished or cancelled sequence leaves (see [`Donation`]), then evicts
    /// down to the bounds.
    pub fn insert(&mut self, donation: Donation) {
        let Donation { tokens, cache, snapshots, recurrent } = donation;
        if tokens.len() < BLOCK || tokens.len() != cache.len() {
            return;
        }
        let mut snaps: BTreeMap<usize, RecurrentStates> =
            snapshots.into_iter().filter(|(at, _)| recurrent && (1..=tokens.len()).contains(at)).collect();
        let blocks = block_hashes(&tokens);
        let related: HashSet<u64> = blocks.iter().filter_map(|b| self.index.get(b)).flatten().copied().collect();
        let now = self.tick();
        for id in related {
            let Some(entry) = self.entries.get(&id) else { continue };
            if entry.tokens.len() >= tokens.len() && entry.tokens.starts_with(&tokens) {
                // An entry already holds all of it: keep that one, with these snapshots.
                let Some(entry) = self.entries.get_mut(&id) else { continue };
                let before = (entry.bytes(), entry.snapshots.len());
                for (at, states) in snaps {
                    entry.snapshots.entry(at).or_insert(states);
                }
                entry.last_used = now;
                let after = (entry.bytes(), entry.snapshots.len());
                self.bytes = self.bytes + after.0 - before.0;
                self.snapshots = self.snapshots + after.1 - before.1;
                self.evict(Some(id));
                return;
            }
            if tokens.starts_with(&entry.tokens)
                && let Some(old) = self.remove(id)
            {
                // The donation extends this entry: its snapshots move over.
                for (at, states) in old.snapshots {
                    snaps.entry(at).or_insert(states);
                }
            }
        }
        let kv = match cache.snapshot(tokens.len()) {
            Ok(kv) => kv,
            Err(e) => {
                tracing::warn!("prefix cache: cannot copy a donated cache: {e}");
                return;
            }
        };
        drop(cache);
        let entry = Entry { kv_bytes: kv.bytes(), tokens, blocks, kv, snapshots: snaps, recurrent, last_used: now };
        let bytes = entry.bytes();
        if bytes > self.config.max_bytes || (recurrent && entry.snapshots.is_empty()) {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        for hash in &entry.blocks {
            self.index.entry(*hash).or_default().push(id);
        }
        self.bytes += bytes;
        self.snapshots += entry.snapshots.len();
        self.entries.insert(id, entry);
        self.evict(Some(id));
    }

    /// Drops an entry and its index rows; what it was.
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        for hash in &entry.blocks {
            if let Some(ids) = self.index.get_mut(hash) {
                ids.retain(|&other| other != id);
                if ids.is_empty() {
                    self.index.remove(hash);
                }
            }
        }
        self.bytes -= entry.bytes();
        self.snapshots -= entry.snapshots.len();
        Some(entry)
    }

    /// Evicts least recently used entries (never `keep` while others remain) until both
    /// bounds hold.
    fn evict(&mut self, keep: Option<u64>) {
        while self.snapshots > self.config.max_snapshots {
            let Some(id) = self.least_recent(keep, true) else { break };
            let Some(entry) = self.entries.get_mut(&id) else { break };
            if entry.snapshots.len() > 1 {
                // The earliest snapshot goes first: the latest ones are where the next turn starts.
                let before = entry.bytes();
                entry.snapshots.pop_first();
                self.bytes -= before - entry.bytes();
                self.snapshots -= 1;
            } else {
                self.remove(id);
            }
        }
        while self.bytes > self.config.max_bytes {
            let Some(id) = self.least_recent(keep, false) else { break };
            self.remove(id);
        }
    }

    /// The least recently used entry other than `keep` (or `keep` itself when it is the
    /// only one), among those with snapshots when `with_snapshots`.
    fn least_recent(&self, keep: Option<u64>, with_snapshots: bool) -> Option<u64> {
        let candidates = self.entries.iter().filter(|(_, e)| !with_snapshots || !e.snapshots.is_empty());
        let others = candidates.clone().filter(|(id, _)| Some(**id) != keep).min_by_key(|(_, e)| e.last_used);
        others.or_else(|| candidates.min_by_key(|(_, e)| e.last_used)).map(|(id, _)| *id)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;

    /// A one-layer cache holding `tokens.len()` positions whose keys are the token ids.
    fn cache_of(tokens: &[u32]) -> KvCache {
        let mut cache = KvCache::new(1, 4096);
        let values: Vec<f32> = tokens.iter().map(|&t| t as f32).collect();
        let k = Tensor::from_vec(values, (1, 1, tokens.len(), 1), &Device::Cpu).expect("tensor");
        cache.append(0, &k, &k).expect("append");
        cache.advance(tokens.len());
        cache
    }

    fn keys(cache: &KvCache) -> Vec<u32> {
        let (k, _) = cache.get(0).expect("layer 0");
        k.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("keys").into_iter().map(|v| v as u32).collect()
    }

    fn donate(cache: &mut PrefixCache, tokens: &[u32]) {
        cache.insert(Donation {
            tokens: tokens.to_vec(),
            cache: cache_of(tokens),
            snapshots: Vec::new(),
            recurrent: false,
        });
    }

    #[test]
    fn the_longest_prefix_is_found_and_leaves_a_token_to_run() {
        let mut cache = PrefixCache::new(PrefixCacheConfig::default());
        let a: Vec<u32> = (0..100).collect();
        let b: Vec<u32> = (0..40).chain(500..560).collect();
        donate(&mut cache, &a);
        donate(&mut cache, &b);
        // Shares 70 tokens with `a`, 40 with `b`.
        let prompt: Vec<u32> = (0..70).chain(900..910).collect();
        let hit = cache.lookup(&prompt, 128).expect("hit");
        assert_eq!(hit.reused, 70);
        assert_eq!(hit.cache.len(), 70);
        assert_eq!(keys(&hit.cache), (0..70).collect::<Vec<_>>());
        // The same prompt as `a`: all but its last two tokens.
        let hit = cache.lookup(&a, 128).expect("hit");
        assert_eq!(hit.reused, 98);
        assert_eq!(keys(&hit.cache), (0..98).collect::<Vec<_>>());
        // Less than a block shared: a miss.
        assert!(cache.lookup(&(0..10).chain(700..800).collect::<Vec<_>>(), 128).is_none());
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.tokens_saved), (2, 1, 168));
    }

    #[test]
    fn a_restored_cache_is_a_copy() {
        let mut cache = PrefixCache::new(PrefixCacheConfig::default());
        let a: Vec<u32> = (0..64).collect();
        donate(&mut cache, &a);
        let mut hit = cache.lookup(&a, 128).expect("hit");
        let k = Tensor::full(7f32, (1, 1, 1, 1), &Device::Cpu).expect("tensor");
        hit.cache.append(0, &k, &k).expect("append");
        let again = cache.lookup(&a, 128).expect("hit");
        assert_eq!(keys(&again.cache), (0..62).collect::<Vec<_>>());
    }

    #[test]
    fn a_growing_conversation_keeps_one_entry() {
        let mut cache = PrefixCache::new(PrefixCacheConfig::default());
        let turn1: Vec<u32> = (0..50).collect();
        let turn2: Vec<u32> = (0..90).collect();
        donate(&mut cache, &turn1);
        donate(&mut cache, &turn2);
        assert_eq!(cache.stats().entries, 1);
        donate(&mut cache, &turn1);
        assert_eq!(cache.stats().entries, 1, "a prefix of an entry adds nothing");
        assert_eq!(cache.lookup(&(0..95).collect::<Vec<_>>(), 128).map(|h| h.reused), Some(90));
    }

    #[test]
    fn the_byte_bound_holds_and_evicts_least_recently_used() {
        let one = cache_of(&(0..64).collect::<Vec<_>>()).snapshot(64).expect("snapshot").bytes();
        let mut cache = PrefixCache::new(PrefixCacheConfig { max_bytes: 3 * one, ..Default::default() });
        let prompts: Vec<Vec<u32>> = (0..6u32).map(|p| (0..64).map(|t| p * 1000 + t).collect()).collect();
        for (i, p) in prompts.iter().enumerate() {
            donate(&mut cache, p);
            if i == 1 {
                // Using the first keeps it over the second.
                assert!(cache.lookup(&prompts[0], 128).is_some());
            }
            let stats = cache.stats();
            assert!(stats.bytes <= 3 * one, "{} bytes over the bound of {}", stats.bytes, 3 * one);
        }
        assert_eq!(cache.stats().entries, 3);
        assert!(cache.lookup(&prompts[1], 128).is_none(), "least recently used went first");
        assert!(cache.lookup(&prompts[5], 128).is_some());
    }

    /// A cache with a recurrent layer: hits land exactly on snapshots, and the snapshot
    /// bound holds.
    #[test]
    fn recurrent_hits_land_on_snapshots() {
        let mut cache = PrefixCache::new(PrefixCacheConfig { max_snapshots: 3, ..Default::default() });
        let tokens: Vec<u32> = (0..100).collect();
        let state = |at: usize| vec![None, Some(vec![Tensor::full(at as f32, 4, &Device::Cpu).expect("state")])];
        let mut kv = KvCache::new(2, 4096);
        let k = Tensor::zeros((1, 1, 100, 1), DType::F32, &Device::Cpu).expect("tensor");
        kv.append(0, &k, &k).expect("append");
        kv.set_state(1, vec![Tensor::full(100f32, 4, &Device::Cpu).expect("state")]);
        kv.advance(100);
        let snapshots = vec![(32, state(32)), (64, state(64)), (100, state(100))];
        cache.insert(Donation { tokens: tokens.clone(), cache: kv, snapshots, recurrent: true });
        let prompt: Vec<u32> = (0..80).chain(900..920).collect();
        let hit = cache.lookup(&prompt, 128).expect("hit");
        assert_eq!(hit.reused, 64);
        let restored = hit.cache.state(1).expect("state restored")[0].to_vec1::<f32>().expect("values");
        assert_eq!(restored, vec![64.0; 4]);
        // The whole sequence and more: the end snapshot.
        let longer: Vec<u32> = (0..120).collect();
        assert_eq!(cache.lookup(&longer, 128).map(|h| h.reused), Some(100));
        // Too short for any snapshot.
        assert!(cache.lookup(&(0..20).chain(900..950).collect::<Vec<_>>(), 128).is_none());
        assert_eq!(cache.stats().snapshots, 3);
        // A second entry over the bound: the least recently used loses its earliest snapshot.
        let mut kv = KvCache::new(2, 4096);
        let k = Tensor::zeros((1, 1, 40, 1), DType::F32, &Device::Cpu).expect("tensor");
        kv.append(0, &k, &k).expect("append");
        kv.set_state(1, vec![Tensor::full(40f32, 4, &Device::Cpu).expect("state")]);
        kv.advance(40);
        let snapshots = vec![(40, state(40))];
        cache.insert(Donation { tokens: (5000..5040).collect(), cache: kv, snapshots, recurrent: true });
        assert_eq!(cache.stats().snapshots, 3);
        assert_eq!(cache.lookup(&prompt, 128).map(|h| h.reused), Some(64), "the 32 snapshot went");
    }
}
