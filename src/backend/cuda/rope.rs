//! Rotary position embedding on the GPU (kernels/rope.cu): the in-place
//! rotation of q or k by each token's position, and its inverse (the
//! backward); and the fused q/k/v product's rows split into q, k, v with
//! the rotation on the way (joined back, rotated back, in the backward).

use super::params::{RopeParams, RopeTensor};
use super::{check_len, grid_1d, Bf16, Gpu, Modules};
use crate::backend::QkvShape;
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{CudaFunction, CudaSlice, CudaView, DevicePtr, DevicePtrMut, PushKernelArg};

super::params::device_repr!(RopeParams);

pub struct Fns {
    rope: CudaFunction,
    rope8: CudaFunction,
}

pub(super) fn load(m: &Modules) -> Result<Fns> {
    Ok(Fns { rope: m.get("rope", "rope")?, rope8: m.get("rope", "rope8")? })
}

impl Gpu {
    /// Rotates `x [tokens, heads, head_dim]` in place by the angle of each
    /// token's position `pos[t]` (HF rotate-half layout); `cos`/`sin` are
    /// fp32 tables `[max_pos, head_dim/2]`; `inverse` rotates by the opposite
    /// angle (the backward). Positions live on the device, so they are
    /// checked there: a position ≥ `max_pos` leaves its token unrotated and
    /// sets `bad` (one u32) to at least `1 + position`. The kernel never
    /// clears `bad`: zero it once, launch any number of kernels, then read
    /// it with [`Gpu::take_bad_index`].
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        x: &mut impl DevicePtrMut<Bf16>,
        pos: &impl DevicePtr<u32>,
        heads: usize,
        head_dim: usize,
        cos: &impl DevicePtr<f32>,
        sin: &impl DevicePtr<f32>,
        inverse: bool,
        bad: &mut impl DevicePtrMut<u32>,
    ) -> Result<()> {
        self.rope_with(true, x, heads, None::<(&mut CudaSlice<Bf16>, usize)>, pos, head_dim, cos, sin, inverse, bad)
    }

    /// [`Gpu::rope`] of `q [tokens, q_heads, head_dim]` and `k [tokens,
    /// k_heads, head_dim]` by one launch (the fast kernel): the same values
    /// as two calls.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_qk(
        &self,
        q: &mut impl DevicePtrMut<Bf16>,
        q_heads: usize,
        k: &mut impl DevicePtrMut<Bf16>,
        k_heads: usize,
        pos: &impl DevicePtr<u32>,
        head_dim: usize,
        cos: &impl DevicePtr<f32>,
        sin: &impl DevicePtr<f32>,
        inverse: bool,
        bad: &mut impl DevicePtrMut<u32>,
    ) -> Result<()> {
        self.rope_with(true, q, q_heads, Some((k, k_heads)), pos, head_dim, cos, sin, inverse, bad)
    }

    /// [`Gpu::rope`] by the simple kernel (one thread per rotated pair, scalar
    /// accesses): the obviously correct version, for tests.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_reference(
        &self,
        x: &mut impl DevicePtrMut<Bf16>,
        pos: &impl DevicePtr<u32>,
        heads: usize,
        head_dim: usize,
        cos: &impl DevicePtr<f32>,
        sin: &impl DevicePtr<f32>,
        inverse: bool,
        bad: &mut impl DevicePtrMut<u32>,
    ) -> Result<()> {
        self.rope_with(false, x, heads, None::<(&mut CudaSlice<Bf16>, usize)>, pos, head_dim, cos, sin, inverse, bad)
    }

    #[allow(clippy::too_many_arguments)]
    fn rope_with<X2: DevicePtrMut<Bf16>>(
        &self,
        fast: bool,
        x: &mut impl DevicePtrMut<Bf16>,
        heads: usize,
        x2: Option<(&mut X2, usize)>,
        pos: &impl DevicePtr<u32>,
        head_dim: usize,
        cos: &impl DevicePtr<f32>,
        sin: &impl DevicePtr<f32>,
        inverse: bool,
        bad: &mut impl DevicePtrMut<u32>,
    ) -> Result<()> {
        check_head_dim("rope", heads, head_dim)?;
        let tokens = pos.len();
        check_len("rope: x", x.len(), tokens * heads * head_dim)?;
        let (n, w) = (x.len(), heads * head_dim);
        let (xp, _g1) = x.device_ptr_mut(&self.stream);
        let mut t = [RopeTensor::default(); 3];
        t[0] = tensor("rope", "x", head_dim, heads, (xp, n, w, tokens), (xp, n, w, tokens), true)?;
        let _g2 = match x2 {
            Some((x2, h2)) => {
                check_len("rope: k", x2.len(), tokens * h2 * head_dim)?;
                let (w, n) = (h2 * head_dim, x2.len());
                let (p, g) = x2.device_ptr_mut(&self.stream);
                t[1] = tensor("rope", "k", head_dim, h2, (p, n, w, tokens), (p, n, w, tokens), true)?;
                Some(g)
            }
            None => None,
        };
        let (pp, _g3) = pos.device_ptr(&self.stream);
        let (cp, _g4) = cos.device_ptr(&self.stream);
        let (sp, _g5) = sin.device_ptr(&self.stream);
        let tables = Tables::new("rope", head_dim, (pp, tokens), (cp, cos.len()), (sp, sin.len()))?;
        self.rope_launch("rope", fast, tokens, head_dim, t, Some(tables), inverse, 0.0, bad)
    }

    /// [`crate::backend::Backend::qkv_split`]: the fused q/k/v product's rows
    /// `qkv [tokens, s.row()]` into `q`, `k`, `v`; with `how.norm`, q and k
    /// are normalised per head (Qwen3), with `how.rope` rotated; with
    /// `how.kv_rows` (u32 per token, distinct), `k` and `v` are tables of
    /// rows (a KV cache layer) and token t's go to row `kv_rows[t]` (a row
    /// outside them is skipped and flagged in `bad`); `fast` picks the
    /// kernel (`rope8`, or `rope` for tests).
    #[allow(clippy::too_many_arguments)]
    pub fn qkv_split(
        &self,
        fast: bool,
        qkv: &impl DevicePtr<Bf16>,
        s: QkvShape,
        q: &mut impl DevicePtrMut<Bf16>,
        k: &mut impl DevicePtrMut<Bf16>,
        v: &mut impl DevicePtrMut<Bf16>,
        how: SplitOn<'_>,
        bad: &mut impl DevicePtrMut<u32>,
    ) -> Result<()> {
        let SplitOn { rope, kv_rows, norm } = how;
        let lens = [q.len(), k.len(), v.len()];
        let (fused, _g0) = qkv.device_ptr(&self.stream);
        let (qp, _g1) = q.device_ptr_mut(&self.stream);
        let (kp, _g2) = k.device_ptr_mut(&self.stream);
        let (vp, _g3) = v.device_ptr_mut(&self.stream);
        let parts = [(qp, lens[0]), (kp, lens[1]), (vp, lens[2])];
        let rows = kv_rows.map(|r| (r.device_ptr(&self.stream), r.len()));
        let (rows, _g4) = match rows {
            Some(((p, g), n)) => (Some((p, n)), Some(g)),
            None => (None, None),
        };
        let norm = norm.map(|n| {
            let ((qw, g1), (kw, g2)) = (n.q_w.device_ptr(&self.stream), n.k_w.device_ptr(&self.stream));
            (([(qw, n.q_w.len()), (kw, n.k_w.len())], n.eps), (g1, g2))
        });
        let (norm, _g5) = match norm {
            Some((n, g)) => (Some(n), Some(g)),
            None => (None, None),
        };
        self.qkv_move("qkv_split", fast, s, (fused, qkv.len()), parts, true, rows, norm, rope, bad)
    }

    /// [`crate::backend::Backend::qkv_join`]: `dq`, `dk` (rotated back when
    /// `rope` is given) and `dv` into the rows `d_qkv [tokens, s.row()]`.
    #[allow(clippy::too_many_arguments)]
    pub fn qkv_join(
        &self,
        fast: bool,
        dq: &impl DevicePtr<Bf16>,
        dk: &impl DevicePtr<Bf16>,
        dv: &impl DevicePtr<Bf16>,
        s: QkvShape,
        d_qkv: &mut impl DevicePtrMut<Bf16>,
        rope: Option<RopeTables<'_>>,
        bad: &mut impl DevicePtrMut<u32>,
    ) -> Result<()> {
        let n = d_qkv.len();
        let (fused, _g0) = d_qkv.device_ptr_mut(&self.stream);
        let (qp, _g1) = dq.device_ptr(&self.stream);
        let (kp, _g2) = dk.device_ptr(&self.stream);
        let (vp, _g3) = dv.device_ptr(&self.stream);
        let parts = [(qp, dq.len()), (kp, dk.len()), (vp, dv.len())];
        self.qkv_move("qkv_join", fast, s, (fused, n), parts, false, None, None, rope, bad)
    }

    /// Moves the q, k, v heads between the fused rows and their own tensors
    /// (`split`: fused → parts, else parts → fused, rotated back). With
    /// `kv_rows` (a split only: device address, count), k and v are tables
    /// of rows, token t's going to row `kv_rows[t]`. `norm` (a split only:
    /// q's and k's norm weights, address and length, and eps) normalises q
    /// and k per head first.
    #[allow(clippy::too_many_arguments)]
    fn qkv_move(
        &self,
        what: &str,
        fast: bool,
        s: QkvShape,
        fused: (u64, usize),
        parts: [(u64, usize); 3],
        split: bool,
        kv_rows: Option<(u64, usize)>,
        norm: Option<([(u64, usize); 2], f32)>,
        rope: Option<RopeTables<'_>>,
        bad: &mut impl DevicePtrMut<u32>,
    ) -> Result<()> {
        check_head_dim(what, s.q.min(s.kv), s.head_dim)?;
        if (kv_rows.is_some() || norm.is_some()) && !split {
            // The kernel scatters rows, it does not gather them; a norm reads
            // its whole head, which a join would overwrite in place.
            bail!("{what}: rows of k and v, and q/k norms, are for a split");
        }
        if let Some((w, _)) = norm {
            exact(what, "q norm weight", w[0].1, s.head_dim)?;
            exact(what, "k norm weight", w[1].1, s.head_dim)?;
        }
        let (row, hd) = (s.row(), s.head_dim);
        let tokens = fused.1 / row;
        exact(what, "the fused rows", fused.1, tokens * row)?;
        exact(what, "q", parts[0].1, tokens * s.q * hd)?;
        let kw = s.kv * hd;
        // Rows of k and of v: one per token, or the tables' own.
        let kv_table = match kv_rows {
            None => {
                exact(what, "k", parts[1].1, tokens * kw)?;
                exact(what, "v", parts[2].1, tokens * kw)?;
                tokens
            }
            Some((_, n)) => {
                exact(what, "kv_rows", n, tokens)?;
                // Whole rows of kw, v as k; the tables may pass 2^32 elements
                // (offsets are 64-bit), their rows not.
                let rows = parts[1].1 / kw;
                if parts[1].1 != rows * kw || parts[2].1 != parts[1].1 || rows > u32::MAX as usize {
                    bail!(
                        "{what}: k, v tables of {} and {} elements are not the same whole rows of {kw}",
                        parts[1].1,
                        parts[2].1
                    );
                }
                rows
            }
        };
        if tokens == 0 {
            return Ok(());
        }
        let mut t = [RopeTensor::default(); 3];
        let mut col = 0;
        for (i, (heads, (ptr, len))) in [s.q, s.kv, s.kv].into_iter().zip(parts).enumerate() {
            // This part's columns of the fused rows (bf16: 2 bytes each);
            // col < row ≤ fused.1 since tokens ≥ 1.
            let rows = (fused.0 + 2 * col as u64, fused.1 - col, row, tokens);
            let own = (ptr, len, heads * hd, if i == 0 { tokens } else { kv_table });
            let (src, dst) = if split { (rows, own) } else { (own, rows) };
            t[i] = tensor(what, ["q", "k", "v"][i], hd, heads, src, dst, rope.is_some() && i < 2)?;
            if let (Some((p, _)), true) = (kv_rows, i > 0) {
                // Each row index is checked by the kernel against the table.
                (t[i].dst_rows, t[i].dst_limit) = (p, kv_table as u32);
            }
            if let (Some((w, _)), true) = (norm, i < 2) {
                t[i].norm_w = w[i].0;
            }
            col += heads * hd;
        }
        let (_guards, tables) = match &rope {
            Some(r) => {
                let (pp, g1) = r.pos.device_ptr(&self.stream);
                let (cp, g2) = r.cos.device_ptr(&self.stream);
                let (sp, g3) = r.sin.device_ptr(&self.stream);
                let tables = Tables::new(what, hd, (pp, r.pos.len()), (cp, r.cos.len()), (sp, r.sin.len()))?;
                if r.pos.len() != tokens {
                    bail!("{what}: {} positions for {tokens} tokens", r.pos.len());
                }
                (Some((g1, g2, g3)), Some(tables))
            }
            None => (None, None),
        };
        let eps = norm.map_or(0.0, |n| n.1);
        self.rope_launch(what, fast, tokens, hd, t, tables, !split, eps, bad)
    }

    /// Launches `rope8` (`fast`) or `rope` over the tensors `t` (checked by
    /// [`tensor`]) with the tables, if any tensor rotates.
    #[allow(clippy::too_many_arguments)]
    fn rope_launch(
        &self,
        what: &str,
        fast: bool,
        tokens: usize,
        head_dim: usize,
        t: [RopeTensor; 3],
        tables: Option<Tables>,
        inverse: bool,
        eps: f32,
        bad: &mut impl DevicePtrMut<u32>,
    ) -> Result<()> {
        if t.iter().any(|t| t.rotate != 0) && tables.is_none() {
            bail!("{what}: rotation without tables");
        }
        exact(what, "bad", bad.len(), 1)?;
        let half = head_dim / 2;
        let heads: usize = t.iter().map(|t| t.heads as usize).sum();
        // One thread per rotated pair (simple) or per 8 pairs of a head (fast).
        let threads = if fast { tokens * heads * half.div_ceil(8) } else { tokens * heads * half };
        if tokens * heads * half > 1 << 31 {
            bail!("{what}: {tokens} tokens × {heads} heads × {half} pairs do not fit one launch");
        }
        let tables = tables.unwrap_or_default();
        let (bp, _g) = bad.device_ptr_mut(&self.stream);
        let p = RopeParams {
            t,
            pos: tables.pos,
            cos: tables.cos,
            sin: tables.sin,
            bad: bp,
            tokens: tokens as u32,
            head_dim: head_dim as u32,
            max_pos: tables.max_pos,
            inverse: inverse as u32,
            eps,
            pad_: 0,
        };
        let f = if fast { &self.k.rope.rope8 } else { &self.k.rope.rope };
        // SAFETY: every tensor's rows lie in its buffers (`tensor` checked
        // that (rows − 1)·ld + heads·head_dim elements fit each side, rows
        // being the tokens or a table's rows; the kernel checks each
        // destination row index against dst_limit before its writes);
        // pos holds tokens values and cos, sin max_pos × half (`Tables::new`),
        // read only for rotated heads (and every rotating launch has tables),
        // after each position is checked against max_pos; bad is one element;
        // rope8 uses 16-byte accesses only where every pointer is 16-byte
        // aligned and every row stride a multiple of 8 elements.
        unsafe { self.stream.launch_builder(f).arg(&p).launch(grid_1d(threads)) }
            .map_err(|e| anyhow!("{what}: {e}"))?;
        Ok(())
    }
}

/// What [`Gpu::qkv_split`] does besides moving the heads.
#[derive(Clone, Copy, Default)]
pub struct SplitOn<'a> {
    pub rope: Option<RopeTables<'a>>,
    /// Destination rows of k and v (u32 per token, distinct).
    pub kv_rows: Option<&'a CudaView<'a, u32>>,
    pub norm: Option<QkNormOn<'a>>,
}

/// Qwen3's q and k norms on the device: weights `[head_dim]` each, and eps.
#[derive(Clone, Copy)]
pub struct QkNormOn<'a> {
    pub q_w: &'a CudaView<'a, Bf16>,
    pub k_w: &'a CudaView<'a, Bf16>,
    pub eps: f32,
}

/// Positions and RoPE tables on the device, for [`Gpu::qkv_split`] and
/// [`Gpu::qkv_join`].
#[derive(Clone, Copy)]
pub struct RopeTables<'a> {
    pub pos: &'a CudaView<'a, u32>,
    pub cos: &'a CudaView<'a, f32>,
    pub sin: &'a CudaView<'a, f32>,
}

/// The tables' device addresses, checked: `max_pos` rows of head_dim/2.
#[derive(Clone, Copy, Default)]
struct Tables {
    pos: u64,
    cos: u64,
    sin: u64,
    max_pos: u32,
}

impl Tables {
    fn new(what: &str, head_dim: usize, pos: (u64, usize), cos: (u64, usize), sin: (u64, usize)) -> Result<Tables> {
        let half = head_dim / 2;
        exact(what, "sin", sin.1, cos.1)?;
        if !cos.1.is_multiple_of(half) {
            bail!("{what}: cos/sin tables of {} values are not rows of head_dim/2 = {half}", cos.1);
        }
        exact(what, "positions", pos.1, pos.1)?; // fits 32-bit counts
        Ok(Tables { pos: pos.0, cos: cos.0, sin: sin.0, max_pos: (cos.1 / half) as u32 })
    }
}

/// `heads` ≥ 1 heads of an even `head_dim` ≥ 2.
fn check_head_dim(what: &str, heads: usize, head_dim: usize) -> Result<()> {
    if heads == 0 || head_dim == 0 || !head_dim.is_multiple_of(2) {
        bail!("{what}: {heads} heads of dimension {head_dim} (needs heads ≥ 1 and an even head_dim ≥ 2)");
    }
    Ok(())
}

/// Fails unless `len` is `want` and fits 32-bit counts (labels are only
/// formatted on failure: these checks run on every decode step).
fn exact(what: &str, part: &str, len: usize, want: usize) -> Result<()> {
    if len != want || want > u32::MAX as usize {
        bail!("{what}: {part}: {len} elements, expected {want} (within 32-bit counts)");
    }
    Ok(())
}

/// One tensor of a launch, checked: rows of `heads` head vectors, each side
/// `(address, elements from it, row stride in elements, rows)`.
#[allow(clippy::too_many_arguments)]
fn tensor(
    what: &str,
    part: &str,
    head_dim: usize,
    heads: usize,
    src: (u64, usize, usize, usize),
    dst: (u64, usize, usize, usize),
    rotate: bool,
) -> Result<RopeTensor> {
    let width = heads * head_dim;
    for (side, (_, len, ld, rows)) in [("source", src), ("destination", dst)] {
        let need = if rows == 0 { 0 } else { (rows - 1) * ld + width };
        if ld < width || ld > u32::MAX as usize || len < need {
            bail!(
                "{what}: {part}: a {side} of {len} elements (rows {ld} apart) for {rows} rows of {heads} heads of {head_dim}"
            );
        }
    }
    Ok(RopeTensor {
        src: src.0,
        dst: dst.0,
        heads: heads as u32,
        src_ld: src.2 as u32,
        dst_ld: dst.2 as u32,
        rotate: rotate as u32,
        ..Default::default()
    })
}
