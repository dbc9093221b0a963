//! The simple causal attention on the GPU (kernels/attention.cu): forward,
//! backward and decode against a KV cache, with the semantics of
//! [`cpu::attention`](crate::backend::cpu::attention). Not fast; it is the
//! reference the flash kernel is tested against, and the path for head
//! dimensions the flash kernel does not take (up to [`MAX_HEAD_DIM`]).
//! [`Gpu::attention_fwd`] and [`Gpu::attention_bwd`] dispatch: the flash
//! kernels (src/backend/cuda/flash_attention.rs) where they take the call,
//! else these ([`Gpu::attention_fwd_reference`], [`Gpu::attention_bwd_reference`]).
//! [`Gpu::attention_decode`] likewise: the GQA-grouped decode kernel
//! (kernels/decode_attention.cu, its keys split over several blocks where
//! needed) where it takes the call, else the simple one
//! ([`DecodeKernel::Simple`]).
//!
//! Every size is checked before a launch. `cu_seqlens` and the decode plan
//! are small index arrays checked on the host: from the host copy an index
//! buffer keeps of what was written to it, else by a (synchronising) copy
//! back, so a bad index is an error here rather than an out-of-bounds read
//! on the device.

use super::buf::IndexArg;
use super::params::{AttnBwdParams, AttnDecodeParams, AttnFwdParams, ENGINE_ATTN_MAX_HEAD_DIM, ENGINE_ATTN_THREADS};
use super::{check_len, Bf16, Gpu, Modules};
use crate::backend::{AttnShape, DecodeSeq};
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{CudaFunction, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

super::params::device_repr!(AttnFwdParams, AttnBwdParams, AttnDecodeParams);

/// The largest `head_dim` the simple kernels take.
pub const MAX_HEAD_DIM: usize = ENGINE_ATTN_MAX_HEAD_DIM as usize;

pub struct Fns {
    fwd: CudaFunction,
    bwd_dq: CudaFunction,
    bwd_dkdv: CudaFunction,
    decode: CudaFunction,
    decode_gqa: CudaFunction,
    decode_combine: CudaFunction,
}

pub(super) fn load(m: &Modules) -> Result<Fns> {
    Ok(Fns {
        fwd: m.get("attention", "attention_fwd")?,
        bwd_dq: m.get("attention", "attention_bwd_dq")?,
        bwd_dkdv: m.get("attention", "attention_bwd_dkdv")?,
        decode: m.get("attention", "attention_decode")?,
        decode_gqa: m.get("decode_attention", "attention_decode_gqa")?,
        decode_combine: m.get("decode_attention", "attention_decode_combine")?,
    })
}

/// The CPU's shape checks, plus what the kernels need: `head_dim` at most
/// [`MAX_HEAD_DIM`], head counts that fit 32 bits.
pub(super) fn check_shape(what: &str, s: &AttnShape) -> Result<()> {
    if s.n_heads == 0 || s.n_kv_heads == 0 || s.head_dim == 0 {
        bail!("{what}: n_heads, n_kv_heads and head_dim must be > 0, got {s:?}");
    }
    if !s.n_heads.is_multiple_of(s.n_kv_heads) {
        bail!("{what}: n_heads ({}) must be a multiple of n_kv_heads ({})", s.n_heads, s.n_kv_heads);
    }
    if s.head_dim > MAX_HEAD_DIM {
        bail!("{what}: head_dim {} is above the simple kernel's maximum {MAX_HEAD_DIM}", s.head_dim);
    }
    if s.n_heads > u32::MAX as usize {
        bail!("{what}: {} heads do not fit one launch", s.n_heads);
    }
    if !s.scale.is_finite() {
        bail!("{what}: scale must be finite, got {}", s.scale);
    }
    Ok(())
}

/// The most query heads per kv head the grouped decode kernel takes (it keeps
/// each head's q, running max, sum and accumulator in registers).
const DECODE_GQA_MAX_GROUP: usize = 8;

/// Whether kernels/decode_attention.cu takes a decode call of the checked
/// shape `s`: head_dim 64 or 128, at most [`DECODE_GQA_MAX_GROUP`] query heads
/// per kv head, and both caches aligned for its loads of head_dim/32 bf16
/// (head_dim/16 bytes: a view into a cache may start anywhere).
fn decode_gqa_takes(s: &AttnShape, k_cache: u64, v_cache: u64) -> bool {
    matches!(s.head_dim, 64 | 128)
        && s.n_heads / s.n_kv_heads <= DECODE_GQA_MAX_GROUP
        && [k_cache, v_cache].iter().all(|p| p % (s.head_dim as u64 / 16) == 0)
}

/// The shortest run of keys worth a block of its own in split decode
/// attention (8 rounds of the grouped kernel's 4 warps × 4 keys).
const DECODE_MIN_SPLIT: usize = 128;

/// How the grouped decode kernel splits each sequence's keys: `(n_splits,
/// split_keys)` for `units` (sequence, kv head) pairs whose longest sequence
/// has `longest` keys on a GPU of `sms` multiprocessors. Enough blocks for
/// about 4 per multiprocessor (its registers allow 3 resident), but no more
/// runs than `longest` holds `DECODE_MIN_SPLIT`s (rounded up), so runs
/// average about that length or more; each a multiple of 16 keys (one round
/// of the 4 warps). `(1, longest)` where the pairs alone fill the GPU.
pub fn decode_splits(units: usize, longest: usize, sms: usize) -> (usize, usize) {
    let want = (4 * sms.max(1)).div_ceil(units.max(1));
    let n = want.clamp(1, longest.div_ceil(DECODE_MIN_SPLIT).max(1));
    if n == 1 {
        return (1, longest);
    }
    let keys = longest.div_ceil(n).next_multiple_of(16);
    (longest.div_ceil(keys), keys)
}

/// `a · b · c`, or an error where it overflows.
pub(super) fn elems(what: &str, a: usize, b: usize, c: usize) -> Result<usize> {
    a.checked_mul(b).and_then(|x| x.checked_mul(c)).ok_or_else(|| anyhow!("{what}: {a}·{b}·{c} elements overflow"))
}

/// One block of [`ENGINE_ATTN_THREADS`] per row; `rows` also bounds the
/// kernels' 32-bit row indices (below 2^31).
fn grid(what: &str, rows: usize) -> Result<LaunchConfig> {
    if rows == 0 || rows > i32::MAX as usize {
        bail!("{what}: {rows} blocks (token·head rows) do not fit one launch");
    }
    Ok(LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (ENGINE_ATTN_THREADS, 1, 1), shared_mem_bytes: 0 })
}

impl Gpu {
    /// A small u32 index array on the host: its host copy where the caller
    /// has one, else copied back (which waits for the stream).
    fn host_u32(&self, what: &str, x: &impl IndexArg) -> Result<Vec<u32>> {
        if let Some(h) = x.host() {
            return Ok(h.to_vec());
        }
        if x.is_empty() {
            return Ok(Vec::new());
        }
        let h = self.stream.clone_dtoh(x).map_err(|e| anyhow!("{what}: copy to the host: {e}"))?;
        self.sync()?;
        Ok(h)
    }

    /// Checks `cu_seqlens` as the CPU does (starts at 0, non-decreasing);
    /// returns (number of sequences, tokens = its last entry).
    fn check_cu_seqlens(&self, what: &str, cu_seqlens: &impl IndexArg) -> Result<(usize, usize)> {
        let cu = self.cu_seqlens_host(what, cu_seqlens)?;
        Ok((cu.len() - 1, *cu.last().expect("checked non-empty") as usize))
    }

    /// `cu_seqlens` copied to the host and checked as the CPU checks it
    /// (n_seqs + 1 >= 1 entries, starts at 0, non-decreasing).
    pub(super) fn cu_seqlens_host(&self, what: &str, cu_seqlens: &impl IndexArg) -> Result<Vec<u32>> {
        let cu = self.host_u32(&format!("{what}: cu_seqlens"), cu_seqlens)?;
        if cu.is_empty() {
            bail!("{what}: cu_seqlens must have n_seqs + 1 >= 1 entries");
        }
        if cu[0] != 0 {
            bail!("{what}: cu_seqlens[0] must be 0, got {}", cu[0]);
        }
        if let Some(w) = cu.windows(2).find(|w| w[0] > w[1]) {
            bail!("{what}: cu_seqlens must be non-decreasing, got {} before {}", w[0], w[1]);
        }
        Ok(cu)
    }

    /// The checked shape of a packed batch: `(n_seqs, tokens, q elements,
    /// k/v elements)`.
    fn packed(&self, what: &str, s: &AttnShape, cu_seqlens: &impl IndexArg) -> Result<(usize, usize, usize, usize)> {
        check_shape(what, s)?;
        let (n_seqs, tokens) = self.check_cu_seqlens(what, cu_seqlens)?;
        Ok((
            n_seqs,
            tokens,
            elems(what, tokens, s.n_heads, s.head_dim)?,
            elems(what, tokens, s.n_kv_heads, s.head_dim)?,
        ))
    }

    /// Causal attention over packed sequences: `out` (bf16 `[tokens, n_heads,
    /// head_dim]`) and `lse` (fp32 `[tokens, n_heads]`, the natural-log
    /// logsumexp of the scaled scores). q: `[tokens, n_heads, head_dim]`;
    /// k, v: `[tokens, n_kv_heads, head_dim]`; `cu_seqlens`: n_seqs + 1
    /// entries from 0 to tokens. The flash kernel where it
    /// takes the call (head_dim 64 or 128, 16-byte aligned buffers),
    /// else the simple one ([`attention_fwd_reference`](Self::attention_fwd_reference)).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_fwd(
        &self,
        s: &AttnShape,
        cu_seqlens: &impl IndexArg,
        q: &impl DevicePtr<Bf16>,
        k: &impl DevicePtr<Bf16>,
        v: &impl DevicePtr<Bf16>,
        out: &mut impl DevicePtrMut<Bf16>,
        lse: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        let ptrs = [
            q.device_ptr(&self.stream).0,
            k.device_ptr(&self.stream).0,
            v.device_ptr(&self.stream).0,
            out.device_ptr_mut(&self.stream).0,
        ];
        if super::flash_attention::takes(s, &ptrs) {
            self.flash_attention_fwd(self.flash_variant(), s, cu_seqlens, q, k, v, out, lse)
        } else {
            self.attention_fwd_reference(s, cu_seqlens, q, k, v, out, lse)
        }
    }

    /// [`attention_fwd`](Self::attention_fwd) on the simple kernel, any
    /// head_dim up to `MAX_HEAD_DIM` (256).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_fwd_reference(
        &self,
        s: &AttnShape,
        cu_seqlens: &impl IndexArg,
        q: &impl DevicePtr<Bf16>,
        k: &impl DevicePtr<Bf16>,
        v: &impl DevicePtr<Bf16>,
        out: &mut impl DevicePtrMut<Bf16>,
        lse: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        let what = "attention_fwd";
        let (n_seqs, tokens, q_len, kv_len) = self.packed(what, s, cu_seqlens)?;
        check_len("attention_fwd: q", q.len(), q_len)?;
        check_len("attention_fwd: k", k.len(), kv_len)?;
        check_len("attention_fwd: v", v.len(), kv_len)?;
        check_len("attention_fwd: out", out.len(), q_len)?;
        check_len("attention_fwd: lse", lse.len(), elems(what, tokens, s.n_heads, 1)?)?;
        if tokens == 0 {
            return Ok(());
        }
        let cfg = grid(what, tokens * s.n_heads)?;
        let (cu, _g0) = cu_seqlens.device_ptr(&self.stream);
        let (qp, _g1) = q.device_ptr(&self.stream);
        let (kp, _g2) = k.device_ptr(&self.stream);
        let (vp, _g3) = v.device_ptr(&self.stream);
        let (op, _g4) = out.device_ptr_mut(&self.stream);
        let (lp, _g5) = lse.device_ptr_mut(&self.stream);
        let p = AttnFwdParams {
            q: qp,
            k: kp,
            v: vp,
            out: op,
            lse: lp,
            cu_seqlens: cu,
            tokens: tokens as u32,
            n_seqs: n_seqs as u32,
            n_heads: s.n_heads as u32,
            n_kv_heads: s.n_kv_heads as u32,
            head_dim: s.head_dim as u32,
            scale: s.scale,
        };
        // SAFETY: every buffer has the length checked above; cu_seqlens was
        // checked on the host (0 .. tokens, non-decreasing); head_dim <= MAX.
        unsafe { self.stream.launch_builder(&self.k.attention.fwd).arg(&p).launch(cfg) }
            .map_err(|e| anyhow!("attention_fwd: {e}"))?;
        Ok(())
    }

    /// Backward of [`attention_fwd`](Self::attention_fwd) from `dout` and the
    /// forward's `out` and `lse`: overwrites `dq` (shape of q), `dk`, `dv`
    /// (shape of k, v). Deterministic: each output row has one owner and sums
    /// in a fixed order. The flash kernels where they take the call, else the
    /// simple ones ([`attention_bwd_reference`](Self::attention_bwd_reference)).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_bwd(
        &self,
        s: &AttnShape,
        cu_seqlens: &impl IndexArg,
        q: &impl DevicePtr<Bf16>,
        k: &impl DevicePtr<Bf16>,
        v: &impl DevicePtr<Bf16>,
        out: &impl DevicePtr<Bf16>,
        lse: &impl DevicePtr<f32>,
        dout: &impl DevicePtr<Bf16>,
        dq: &mut impl DevicePtrMut<Bf16>,
        dk: &mut impl DevicePtrMut<Bf16>,
        dv: &mut impl DevicePtrMut<Bf16>,
    ) -> Result<()> {
        let ptrs = [
            q.device_ptr(&self.stream).0,
            k.device_ptr(&self.stream).0,
            v.device_ptr(&self.stream).0,
            out.device_ptr(&self.stream).0,
            dout.device_ptr(&self.stream).0,
            dq.device_ptr_mut(&self.stream).0,
            dk.device_ptr_mut(&self.stream).0,
            dv.device_ptr_mut(&self.stream).0,
        ];
        if super::flash_attention::takes(s, &ptrs) {
            self.flash_attention_bwd(self.flash_variant(), s, cu_seqlens, q, k, v, out, lse, dout, dq, dk, dv)
        } else {
            self.attention_bwd_reference(s, cu_seqlens, q, k, v, out, lse, dout, dq, dk, dv)
        }
    }

    /// [`attention_bwd`](Self::attention_bwd) on the simple kernels, any
    /// head_dim up to `MAX_HEAD_DIM` (256).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_bwd_reference(
        &self,
        s: &AttnShape,
        cu_seqlens: &impl IndexArg,
        q: &impl DevicePtr<Bf16>,
        k: &impl DevicePtr<Bf16>,
        v: &impl DevicePtr<Bf16>,
        out: &impl DevicePtr<Bf16>,
        lse: &impl DevicePtr<f32>,
        dout: &impl DevicePtr<Bf16>,
        dq: &mut impl DevicePtrMut<Bf16>,
        dk: &mut impl DevicePtrMut<Bf16>,
        dv: &mut impl DevicePtrMut<Bf16>,
    ) -> Result<()> {
        let what = "attention_bwd";
        let (n_seqs, tokens, q_len, kv_len) = self.packed(what, s, cu_seqlens)?;
        for (name, len) in [("q", q.len()), ("out", out.len()), ("dout", dout.len()), ("dq", dq.len())] {
            check_len(&format!("attention_bwd: {name}"), len, q_len)?;
        }
        for (name, len) in [("k", k.len()), ("v", v.len()), ("dk", dk.len()), ("dv", dv.len())] {
            check_len(&format!("attention_bwd: {name}"), len, kv_len)?;
        }
        check_len("attention_bwd: lse", lse.len(), elems(what, tokens, s.n_heads, 1)?)?;
        if tokens == 0 {
            return Ok(());
        }
        // The dk/dv kernel counts (query, head) pairs up to tokens·n_heads in
        // 32 bits: the dq grid's check bounds that too.
        let cfg_dq = grid("attention_bwd_dq", tokens * s.n_heads)?;
        let cfg_dkdv = grid("attention_bwd_dkdv", tokens * s.n_kv_heads)?;
        let (cu, _g0) = cu_seqlens.device_ptr(&self.stream);
        let (qp, _g1) = q.device_ptr(&self.stream);
        let (kp, _g2) = k.device_ptr(&self.stream);
        let (vp, _g3) = v.device_ptr(&self.stream);
        let (op, _g4) = out.device_ptr(&self.stream);
        let (lp, _g5) = lse.device_ptr(&self.stream);
        let (dop, _g6) = dout.device_ptr(&self.stream);
        let (dqp, _g7) = dq.device_ptr_mut(&self.stream);
        let (dkp, _g8) = dk.device_ptr_mut(&self.stream);
        let (dvp, _g9) = dv.device_ptr_mut(&self.stream);
        let p = AttnBwdParams {
            q: qp,
            k: kp,
            v: vp,
            out: op,
            lse: lp,
            dout: dop,
            dq: dqp,
            dk: dkp,
            dv: dvp,
            cu_seqlens: cu,
            tokens: tokens as u32,
            n_seqs: n_seqs as u32,
            n_heads: s.n_heads as u32,
            n_kv_heads: s.n_kv_heads as u32,
            head_dim: s.head_dim as u32,
            scale: s.scale,
        };
        // SAFETY: as in attention_fwd; dq, dk, dv have the lengths of q, k, v.
        unsafe { self.stream.launch_builder(&self.k.attention.bwd_dq).arg(&p).launch(cfg_dq) }
            .map_err(|e| anyhow!("attention_bwd_dq: {e}"))?;
        // SAFETY: as above.
        unsafe { self.stream.launch_builder(&self.k.attention.bwd_dkdv).arg(&p).launch(cfg_dkdv) }
            .map_err(|e| anyhow!("attention_bwd_dkdv: {e}"))?;
        Ok(())
    }

    /// One query per sequence against a KV cache (rollouts): q, out: bf16
    /// `[batch, n_heads, head_dim]`; k_cache, v_cache: bf16 rows `[n_rows,
    /// n_kv_heads, head_dim]`; `plan`: one [`DecodeSeq`] per sequence
    /// ([`DecodeSeq::encode`]), which says at which rows its positions lie (a
    /// prompt's shared prefix, then its own run). The GQA-grouped kernel
    /// (kernels/decode_attention.cu: one block per (sequence, kv head) for
    /// all the query heads of the group, each sequence's keys split across
    /// blocks where the pairs alone would leave the GPU idle,
    /// [`decode_splits`]) where it takes the call (head_dim 64 or 128, at
    /// most 8 query heads per kv head, caches aligned for its loads), else
    /// the simple one ([`DecodeKernel::Simple`]).
    pub fn attention_decode(
        &self,
        s: &AttnShape,
        plan: &impl IndexArg,
        q: &impl DevicePtr<Bf16>,
        k_cache: &impl DevicePtr<Bf16>,
        v_cache: &impl DevicePtr<Bf16>,
        out: &mut impl DevicePtrMut<Bf16>,
    ) -> Result<()> {
        self.attention_decode_with(DecodeKernel::Grouped, s, plan, q, k_cache, v_cache, out)
    }

    /// [`attention_decode`](Self::attention_decode) on the given kernel
    /// (for tests and benchmarks; the checks and launches of every decode).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_decode_with(
        &self,
        how: DecodeKernel,
        s: &AttnShape,
        plan: &impl IndexArg,
        q: &impl DevicePtr<Bf16>,
        k_cache: &impl DevicePtr<Bf16>,
        v_cache: &impl DevicePtr<Bf16>,
        out: &mut impl DevicePtrMut<Bf16>,
    ) -> Result<()> {
        let what = "attention_decode";
        check_shape(what, s)?;
        // The caches may hold more than 2^32 elements: the kernels index them in 64 bits.
        let kv_row = elems(what, 1, s.n_kv_heads, s.head_dim)?;
        if k_cache.len() != v_cache.len() || !k_cache.len().is_multiple_of(kv_row) {
            bail!(
                "{what}: k_cache/v_cache have {}/{} elements, expected the same multiple of \
                 n_kv_heads·head_dim = {}·{}",
                k_cache.len(),
                v_cache.len(),
                s.n_kv_heads,
                s.head_dim
            );
        }
        let n_rows = k_cache.len() / kv_row;
        if n_rows > u32::MAX as usize {
            bail!("{what}: a cache of {n_rows} rows does not fit 32-bit row indices");
        }
        let words = self.host_u32("attention_decode: plan", plan)?;
        let seqs = DecodeSeq::decode(&words, n_rows).map_err(|e| anyhow!("{what}: {e}"))?;
        let batch = seqs.len();
        let q_len = elems(what, batch, s.n_heads, s.head_dim)?;
        check_len("attention_decode: q", q.len(), q_len)?;
        check_len("attention_decode: out", out.len(), q_len)?;
        if batch == 0 {
            return Ok(());
        }
        let (qp, _g0) = q.device_ptr(&self.stream);
        let (kp, _g1) = k_cache.device_ptr(&self.stream);
        let (vp, _g2) = v_cache.device_ptr(&self.stream);
        let (pp, _g3) = plan.device_ptr(&self.stream);
        let (op, _g4) = out.device_ptr_mut(&self.stream);
        let mut p = AttnDecodeParams {
            q: qp,
            k_cache: kp,
            v_cache: vp,
            plan: pp,
            out: op,
            batch: batch as u32,
            n_rows: n_rows as u32,
            n_heads: s.n_heads as u32,
            n_kv_heads: s.n_kv_heads as u32,
            head_dim: s.head_dim as u32,
            scale: s.scale,
            partial: 0,
            split_keys: 0,
            n_splits: 1,
        };
        let split = match how {
            DecodeKernel::Grouped if decode_gqa_takes(s, kp, vp) => None,
            DecodeKernel::GroupedSplit(keys) if decode_gqa_takes(s, kp, vp) => Some(keys),
            _ => {
                // One block per (sequence, query head).
                let cfg = grid(what, batch * s.n_heads)?;
                // SAFETY: q and out hold batch rows; every plan entry's rows
                // lie below n_rows (checked on the host), so every cache read
                // lies inside the caches; head_dim <= MAX.
                unsafe { self.stream.launch_builder(&self.k.attention.decode).arg(&p).launch(cfg) }
                    .map_err(|e| anyhow!("{what}: {e}"))?;
                return Ok(());
            }
        };
        // One block per (sequence, kv head) and split of its keys.
        let units = batch * s.n_kv_heads;
        // At least the floor a graph-replayed step sets: one launch shape for all its steps.
        let floor = self.decode_keys_floor.load(std::sync::atomic::Ordering::Relaxed);
        let longest = seqs.iter().map(|x| x.len as usize).max().expect("batch > 0").max(floor);
        let (n_splits, split_keys) = match split {
            None => decode_splits(units, longest, self.sms),
            Some(keys) => (longest.div_ceil(keys.max(1)), keys.clamp(1, longest)),
        };
        if n_splits > 1 {
            let floats = elems(what, units * n_splits, s.n_heads / s.n_kv_heads, s.head_dim + 2)?;
            p.partial = self.decode_scratch.get(self, "attention_decode: partial states", floats)?;
            p.split_keys = split_keys as u32;
            p.n_splits = n_splits as u32;
        }
        // SAFETY: as for the simple kernel, and the grouped kernel only runs
        // on the shapes and cache alignment decode_gqa_takes checked; with
        // splits, n_splits · split_keys >= every len and partial holds
        // units · n_splits · group · (head_dim + 2) floats, each written by
        // the first launch before the combine reads it.
        unsafe {
            self.stream.launch_builder(&self.k.attention.decode_gqa).arg(&p).launch(grid(what, units * n_splits)?)
        }
        .map_err(|e| anyhow!("{what}: {e}"))?;
        if n_splits > 1 {
            // SAFETY: as above.
            unsafe { self.stream.launch_builder(&self.k.attention.decode_combine).arg(&p).launch(grid(what, units)?) }
                .map_err(|e| anyhow!("{what}: combine: {e}"))?;
        }
        Ok(())
    }
}

/// Which kernel [`Gpu::attention_decode_with`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeKernel {
    /// The simple kernel (kernels/attention.cu): one block per (sequence,
    /// query head), any head_dim up to `MAX_HEAD_DIM` and any grouping.
    Simple,
    /// The grouped kernel where it takes the call (else the simple one),
    /// each sequence's keys split as [`decode_splits`] says: what
    /// [`Gpu::attention_decode`] runs.
    Grouped,
    /// The grouped kernel where it takes the call, keys in runs of this
    /// many (`usize::MAX`: one run, no split).
    GroupedSplit(usize),
}

#[cfg(test)]
mod tests {
    use super::decode_splits;

    #[test]
    fn decode_splits_fill_the_gpu_without_short_runs() {
        // 64 sequences × 2 kv heads on 132 SMs: 5 runs of 832 keys at 4k.
        assert_eq!(decode_splits(128, 4096, 132), (5, 832));
        // Enough pairs to fill the GPU, or too few keys to split: one run.
        assert_eq!(decode_splits(1024, 4096, 132), (1, 4096));
        assert_eq!(decode_splits(128, 100, 132), (1, 100));
        // Few pairs: as many runs of at least 128 keys as the longest allows.
        assert_eq!(decode_splits(10, 257, 132), (3, 96));
        for units in [1, 7, 64, 128, 300] {
            for longest in [1, 15, 128, 129, 1000, 4096, 32768] {
                let (n, keys) = decode_splits(units, longest, 132);
                assert!(n >= 1 && n * keys >= longest, "{units} {longest}: {n} × {keys}");
                assert!(n == 1 || (n - 1) * keys < longest, "{units} {longest}: an empty last run");
            }
        }
    }
}
