//! The KV cache of the rollout engine: per layer, keys and values
//! `[slots, capacity, kv_heads, head_dim]`, one slot per sequence being
//! generated. A forward either writes the keys and values it computes into
//! slots (prefill, decode) and/or attends against them (decode); which rows
//! go where is staged here before the forward (`plan_*`).

use crate::backend::{Backend, Span};

pub struct KvCache<B: Backend> {
    pub slots: usize,
    /// Positions per slot (prompt + new tokens).
    pub capacity: usize,
    pub kv_dim: usize,
    pub k: Vec<B::Buf>,
    pub v: Vec<B::Buf>,
    /// Staged writes: token row `write_src[i]` of the forward goes to cache
    /// row `write_dst[i]` (= slot · capacity + position).
    pub(crate) write_src: B::Idx,
    pub(crate) write_dst: B::Idx,
    pub(crate) n_writes: usize,
    /// Staged decode: sequence b reads slot `dec_slots[b]` with `dec_lens[b]` positions.
    pub(crate) dec_slots: B::Idx,
    pub(crate) dec_lens: B::Idx,
    pub(crate) n_decode: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn new(be: &B, n_layers: usize, kv_dim: usize, slots: usize, capacity: usize) -> Self {
        let size = slots * capacity * kv_dim;
        KvCache {
            slots,
            capacity,
            kv_dim,
            k: (0..n_layers).map(|_| be.alloc(size)).collect(),
            v: (0..n_layers).map(|_| be.alloc(size)).collect(),
            write_src: be.alloc_idx(slots * capacity),
            write_dst: be.alloc_idx(slots * capacity),
            n_writes: 0,
            dec_slots: be.alloc_idx(slots),
            dec_lens: be.alloc_idx(slots),
            n_decode: 0,
        }
    }

    /// f32 elements of a cache (keys and values of every layer).
    pub fn elements(n_layers: usize, kv_dim: usize, slots: usize, capacity: usize) -> usize {
        2 * n_layers * slots * capacity * kv_dim
    }

    /// Stages the writes of a prefill: `(token row, slot, position)` each.
    /// A prompt shared by several samples is written to each of their slots.
    pub fn plan_writes(&mut self, be: &B, writes: &[(u32, u32, u32)]) {
        let (src, dst): (Vec<u32>, Vec<u32>) = writes
            .iter()
            .map(|&(t, slot, pos)| {
                assert!(
                    (slot as usize) < self.slots && (pos as usize) < self.capacity,
                    "kv cache: slot {slot} position {pos} out of range"
                );
                (t, slot * self.capacity as u32 + pos)
            })
            .unzip();
        be.write_idx(&src, &mut self.write_src);
        be.write_idx(&dst, &mut self.write_dst);
        self.n_writes = writes.len();
        self.n_decode = 0;
    }

    /// Stages a decode step: sequence b (token row b) is at position
    /// `lens[b] − 1` of slot `slots[b]`; its key and value are written there
    /// and it attends to positions `0..lens[b]`.
    pub fn plan_decode(&mut self, be: &B, slots: &[u32], lens: &[u32]) {
        let writes: Vec<(u32, u32, u32)> =
            slots.iter().zip(lens).enumerate().map(|(b, (&s, &l))| (b as u32, s, l - 1)).collect();
        self.plan_writes(be, &writes);
        be.write_idx(slots, &mut self.dec_slots);
        be.write_idx(lens, &mut self.dec_lens);
        self.n_decode = slots.len();
    }

    /// Writes layer `l`'s keys and values of this forward's tokens where
    /// the plan says.
    pub(crate) fn write_layer(&mut self, be: &B, l: usize, k: B::Ref<'_>, v: B::Ref<'_>) {
        let s = Span::new(0, self.n_writes);
        let (src, dst) = (B::idx_view(&self.write_src, s), B::idx_view(&self.write_dst, s));
        let all = Span::new(0, self.slots * self.capacity * self.kv_dim);
        be.copy_rows(k, B::view_mut(&mut self.k[l], all), self.kv_dim, src, dst);
        be.copy_rows(v, B::view_mut(&mut self.v[l], all), self.kv_dim, src, dst);
    }

    pub(crate) fn decode_plan(&self) -> (B::IdxRef<'_>, B::IdxRef<'_>) {
        let s = Span::new(0, self.n_decode);
        (B::idx_view(&self.dec_slots, s), B::idx_view(&self.dec_lens, s))
    }
}
