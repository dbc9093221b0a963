//! Rotary position embedding on the GPU (kernels/rope.cu): the in-place
//! rotation of q or k by each token's position, and its inverse (the
//! backward).

use super::params::RopeParams;
use super::{check_len, grid_1d, Bf16, Gpu, Modules};
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, DevicePtrMut, PushKernelArg};

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
        if heads == 0 || head_dim == 0 || !head_dim.is_multiple_of(2) {
            bail!("rope: {heads} heads of dimension {head_dim} (needs heads ≥ 1 and an even head_dim ≥ 2)");
        }
        let half = head_dim / 2;
        let tokens = pos.len();
        check_len("rope: x", x.len(), tokens * heads * head_dim)?;
        let heads2 = x2.as_ref().map_or(0, |(_, h)| *h);
        if let Some((x2, h2)) = &x2 {
            check_len("rope: k", x2.len(), tokens * h2 * head_dim)?;
            check_len("rope: q and k", x.len() + x2.len(), tokens * (heads + h2) * head_dim)?;
            // fits 32-bit counts
        }
        check_len("rope: sin", sin.len(), cos.len())?;
        if !cos.len().is_multiple_of(half) {
            bail!("rope: cos/sin tables of {} values are not rows of head_dim/2 = {half}", cos.len());
        }
        let max_pos = cos.len() / half;
        check_len("rope: cos", cos.len(), max_pos * half)?; // fits 32-bit counts
        check_len("rope: bad", bad.len(), 1)?;
        let (xp, _g1) = x.device_ptr_mut(&self.stream);
        let (pp, _g2) = pos.device_ptr(&self.stream);
        let (cp, _g3) = cos.device_ptr(&self.stream);
        let (sp, _g4) = sin.device_ptr(&self.stream);
        let (bp, _g5) = bad.device_ptr_mut(&self.stream);
        let (x2p, _g6) = match x2 {
            Some((x2, _)) => {
                let (p, g) = x2.device_ptr_mut(&self.stream);
                (p, Some(g))
            }
            None => (0, None),
        };
        let p = RopeParams {
            x: xp,
            pos: pp,
            cos: cp,
            sin: sp,
            bad: bp,
            tokens: tokens as u32,
            heads: heads as u32,
            head_dim: head_dim as u32,
            max_pos: max_pos as u32,
            inverse: inverse as u32,
            x2: x2p,
            heads2: heads2 as u32,
        };
        // One thread per rotated pair (simple) or per 8 pairs of a head (fast):
        // tokens · heads · half ≤ 2^31 (x was checked to fit u32).
        let all = heads + heads2;
        let (f, cfg) = if fast {
            (&self.k.rope.rope8, grid_1d(tokens * all * half.div_ceil(8)))
        } else {
            (&self.k.rope.rope, grid_1d(tokens * all * half))
        };
        // SAFETY: x holds tokens × heads × head_dim (x2 tokens × heads2 ×
        // head_dim, or heads2 = 0 and x2 is never read), pos tokens, cos and sin
        // max_pos × half, bad one element (all checked above); the kernels
        // check every position against max_pos before reading the tables,
        // and rope8 uses 16-byte accesses only when half % 8 = 0 and x, x2,
        // cos, sin are 16-byte aligned.
        unsafe { self.stream.launch_builder(f).arg(&p).launch(cfg) }.map_err(|e| anyhow!("rope: {e}"))?;
        Ok(())
    }
}
