//! The KV cache of the rollout engine: per layer, keys and values as rows
//! `[rows, kv_heads, head_dim]` in two pools of slots.
//!
//! - **Prompt slots** (`prompt_slots` × `prompt_cap` rows, first): a prompt's
//!   keys and values, written once at prefill and read by all its samples.
//! - **Generation slots** (`gen_slots` × `gen_cap` rows, after them): one per
//!   sequence being decoded, holding the keys and values of the tokens it
//!   generated.
//!
//! - **Padding rows** (`pad_rows`, last; none unless asked for): where
//!   the dummy sequences that fill a decode step up to a fixed batch size
//!   (a step replayed as a graph) write and read.
//!
//! So a prompt's G samples hold one copy of the prompt, not G: for a long
//! prompt most of the cache. Decode attention reads a sequence's positions
//! below the prompt length from its prompt slot and the rest from its own
//! slot ([`DecodeSeq`]). A forward writes the keys and values it computes
//! where the plan staged here says (`plan_*`) and/or attends against the
//! cache (decode).

use crate::backend::{Backend, DecodeSeq, Span};

pub struct KvCache<B: Backend> {
    pub prompt_slots: usize,
    /// Rows per prompt slot (the longest prompt).
    pub prompt_cap: usize,
    pub gen_slots: usize,
    /// Rows per generation slot (the most tokens a sequence writes after its prompt).
    pub gen_cap: usize,
    /// Rows for padding sequences, one each.
    pub pad_rows: usize,
    pub kv_dim: usize,
    pub k: Vec<B::Buf>,
    pub v: Vec<B::Buf>,
    /// Staged writes: token row `write_src[i]` of the forward goes to cache
    /// row `write_dst[i]`.
    pub(crate) write_src: B::Idx,
    pub(crate) write_dst: B::Idx,
    pub(crate) n_writes: usize,
    max_writes: usize,
    /// Staged decode: one [`DecodeSeq`] per sequence (4 words each).
    pub(crate) plan: B::Idx,
    pub(crate) n_decode: usize,
}

/// The sizes of a cache's two pools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheShape {
    pub prompt_slots: usize,
    pub prompt_cap: usize,
    pub gen_slots: usize,
    pub gen_cap: usize,
    pub pad_rows: usize,
}

impl CacheShape {
    pub fn rows(&self) -> usize {
        self.prompt_slots * self.prompt_cap + self.gen_slots * self.gen_cap + self.pad_rows
    }
}

impl<B: Backend> KvCache<B> {
    pub fn new(be: &B, n_layers: usize, kv_dim: usize, shape: CacheShape) -> Self {
        let rows = shape.rows();
        assert!(rows > 0 && rows <= u32::MAX as usize, "kv cache: {rows} rows (must be in 1..2^32)");
        // A prefill writes at most every prompt row, a decode step one row
        // per slot (and per padding row).
        let writes = (shape.prompt_slots * shape.prompt_cap).max(shape.gen_slots + shape.pad_rows);
        KvCache {
            prompt_slots: shape.prompt_slots,
            prompt_cap: shape.prompt_cap,
            gen_slots: shape.gen_slots,
            gen_cap: shape.gen_cap,
            pad_rows: shape.pad_rows,
            kv_dim,
            k: (0..n_layers).map(|_| be.alloc(rows * kv_dim)).collect(),
            v: (0..n_layers).map(|_| be.alloc(rows * kv_dim)).collect(),
            write_src: be.alloc_idx(writes),
            write_dst: be.alloc_idx(writes),
            n_writes: 0,
            max_writes: writes,
            plan: be.alloc_idx((shape.gen_slots + shape.pad_rows) * DecodeSeq::WORDS),
            n_decode: 0,
        }
    }

    pub fn shape(&self) -> CacheShape {
        CacheShape {
            prompt_slots: self.prompt_slots,
            prompt_cap: self.prompt_cap,
            gen_slots: self.gen_slots,
            gen_cap: self.gen_cap,
            pad_rows: self.pad_rows,
        }
    }

    /// Elements of a cache of this shape (keys and values of every layer;
    /// f32 on the CPU, bf16 on CUDA).
    pub fn elements(n_layers: usize, kv_dim: usize, shape: CacheShape) -> usize {
        2 * n_layers * shape.rows() * kv_dim
    }

    /// The first row of prompt slot `slot`.
    pub fn prompt_row(&self, slot: u32) -> u32 {
        assert!((slot as usize) < self.prompt_slots, "kv cache: prompt slot {slot} of {}", self.prompt_slots);
        slot * self.prompt_cap as u32
    }

    /// The first row of generation slot `slot`.
    pub fn gen_row(&self, slot: u32) -> u32 {
        assert!((slot as usize) < self.gen_slots, "kv cache: generation slot {slot} of {}", self.gen_slots);
        (self.prompt_slots * self.prompt_cap) as u32 + slot * self.gen_cap as u32
    }

    /// Stages the writes of a prefill: `(token row, cache row)` each.
    pub fn plan_writes(&mut self, be: &B, writes: &[(u32, u32)]) {
        let rows = self.shape().rows();
        assert!(writes.len() <= self.max_writes, "kv cache: {} writes staged at once", writes.len());
        if let Some(w) = writes.iter().find(|w| w.1 as usize >= rows) {
            panic!("kv cache: write to row {} of {rows}", w.1);
        }
        let (src, dst): (Vec<u32>, Vec<u32>) = writes.iter().copied().unzip();
        be.write_idx(&src, &mut self.write_src);
        be.write_idx(&dst, &mut self.write_dst);
        self.n_writes = writes.len();
        self.n_decode = 0;
    }

    /// Stages a decode step: sequence b (token row b) attends to the
    /// positions `seqs[b]` places; its new key and value (position `len − 1`)
    /// are written first, into its own run, which must lie within one
    /// generation slot (a write into a shared prompt slot or the next
    /// generation slot would corrupt another sequence's keys).
    pub fn plan_decode(&mut self, be: &B, seqs: &[DecodeSeq]) {
        self.plan_decode_padded(be, seqs, seqs.len());
    }

    /// [`plan_decode`](Self::plan_decode), then dummy sequences up to
    /// `batch` (at most `pad_rows` of them): each one token long, in its own
    /// padding row, so they disturb no real sequence's keys (their outputs
    /// are to be ignored).
    pub fn plan_decode_padded(&mut self, be: &B, seqs: &[DecodeSeq], batch: usize) {
        let rows = self.shape().rows();
        let gen0 = self.prompt_slots * self.prompt_cap;
        let pad0 = gen0 + self.gen_slots * self.gen_cap;
        assert!(seqs.len() <= self.gen_slots, "kv cache: {} sequences for {} slots", seqs.len(), self.gen_slots);
        assert!(
            batch >= seqs.len() && batch - seqs.len() <= self.pad_rows,
            "kv cache: {} sequences padded to {batch} with {} padding rows",
            seqs.len(),
            self.pad_rows
        );
        for (b, s) in seqs.iter().enumerate() {
            if let Err(e) = s.check(rows) {
                panic!("kv cache: sequence {b}: {e}");
            }
            let own = s.own_row as usize;
            assert!(
                s.prefix_len < s.len
                    && own >= gen0
                    && own < pad0
                    && (own - gen0) % self.gen_cap + (s.len - s.prefix_len) as usize <= self.gen_cap,
                "kv cache: sequence {b}: {s:?}: its own run must hold the new token and lie within one generation slot"
            );
        }
        let mut seqs = seqs.to_vec();
        seqs.extend((0..batch - seqs.len()).map(|i| DecodeSeq::contiguous((pad0 + i) as u32, 1)));
        let writes: Vec<(u32, u32)> = seqs.iter().enumerate().map(|(b, s)| (b as u32, s.row(s.len - 1))).collect();
        // Distinct: the split writes a step's rows in parallel.
        let mut rows: Vec<u32> = writes.iter().map(|w| w.1).collect();
        rows.sort_unstable();
        assert!(rows.windows(2).all(|w| w[0] < w[1]), "kv cache: two sequences write one row in a decode step");
        self.plan_writes(be, &writes);
        be.write_idx(&DecodeSeq::encode(&seqs), &mut self.plan);
        self.n_decode = seqs.len();
    }

    /// Positions a sequence may span: a prompt slot's and a generation slot's.
    pub fn max_len(&self) -> usize {
        self.prompt_cap + self.gen_cap
    }

    /// Writes layer `l`'s keys and values of this forward's tokens where
    /// the plan says.
    pub(crate) fn write_layer(&mut self, be: &B, l: usize, k: B::Ref<'_>, v: B::Ref<'_>) {
        let s = Span::new(0, self.n_writes);
        let (src, dst) = (B::idx_view(&self.write_src, s), B::idx_view(&self.write_dst, s));
        let all = Span::new(0, self.shape().rows() * self.kv_dim);
        let (kc, vc) = (B::view_mut(&mut self.k[l], all), B::view_mut(&mut self.v[l], all));
        be.copy_rows2(k, kc, v, vc, self.kv_dim, src, dst);
    }

    /// A decode step's destinations for layer `l`'s new keys and values:
    /// the layer's tables, and the row of each token (the step's token b is
    /// sequence b's, staged by [`plan_decode`](Self::plan_decode)), for
    /// [`Backend::qkv_split`] to write into directly.
    pub(crate) fn decode_rows(&mut self, l: usize) -> (B::Mut<'_>, B::Mut<'_>, B::IdxRef<'_>) {
        assert!(self.n_decode > 0 && self.n_writes == self.n_decode, "kv cache: no decode step staged");
        let all = Span::new(0, self.shape().rows() * self.kv_dim);
        let Self { k, v, write_dst, n_writes, .. } = self;
        (B::view_mut(&mut k[l], all), B::view_mut(&mut v[l], all), B::idx_view(write_dst, Span::new(0, *n_writes)))
    }

    pub(crate) fn decode_plan(&self) -> B::IdxRef<'_> {
        B::idx_view(&self.plan, Span::new(0, self.n_decode * DecodeSeq::WORDS))
    }
}
