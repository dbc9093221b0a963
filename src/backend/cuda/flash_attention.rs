//! FlashAttention-2-style causal attention on bf16 tensor cores
//! (kernels/flash_attention.cu) for head_dim 64 and 128: forward and a
//! deterministic backward, with the semantics of the simple kernels
//! ([`Gpu::attention_fwd_reference`]). [`Gpu::attention_fwd`] and
//! [`Gpu::attention_bwd`] send the shapes it takes here ([`takes`]).
//!
//! Each call checks `cu_seqlens` on the host (its host copy) and uses the
//! table of 64-token tiles the grid walks (built once per batch). The
//! backward's scratch (`delta`, and with GQA the per-query-head dk/dv parts)
//! is kept between calls, grown to the largest ([`BwdScratch`]).
//! tools/flash_attention_emu runs the kernels on the CPU (one OS thread per
//! CUDA thread, mma.sync / ldmatrix / cp.async emulated) against float64.

use super::attention::{check_shape, elems};
use super::buf::IndexArg;
use super::params::{
    FlashBwdParams, FlashBwdWsParams, FlashFwdParams, FlashWsParams, ENGINE_FLASH_DELTA_ROWS,
    ENGINE_FLASH_DKDV_STEP_D128, ENGINE_FLASH_DKDV_STEP_D64, ENGINE_FLASH_DQ_KEYS_D64, ENGINE_FLASH_DQ_TILE_D64,
    ENGINE_FLASH_FWD_KEYS_D128, ENGINE_FLASH_FWD_KEYS_D64, ENGINE_FLASH_FWD_TILE, ENGINE_FLASH_PAD,
    ENGINE_FLASH_THREADS, ENGINE_FLASH_TILE, ENGINE_FLASH_WGMMA_DESC, ENGINE_FLASH_WS_BWD_STAGES, ENGINE_FLASH_WS_KEYS,
    ENGINE_FLASH_WS_STAGES, ENGINE_FLASH_WS_THREADS,
};
use super::scratch::Scratch;
use super::tma;
use super::{check_len, Bf16, Gpu, Modules};
use crate::backend::AttnShape;
use anyhow::{anyhow, bail, Result};
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaFunction, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

super::params::device_repr!(FlashFwdParams, FlashBwdParams, FlashWsParams, FlashBwdWsParams);

/// The one-line switch: `false` sends every call of [`Gpu::attention_fwd`] /
/// [`Gpu::attention_bwd`] to the simple kernels.
pub const FLASH_ENABLED: bool = true;

/// The two builds of every flash kernel (the same arithmetic in the same
/// order; they differ in how data reaches shared memory and registers). Both
/// are built and tested; [`FLASH_VARIANT`] is the one
/// [`Gpu::attention_fwd`] / [`Gpu::attention_bwd`] use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashVariant {
    /// Fragments loaded with `ldmatrix.x4` (`.trans` for transposed
    /// operands); the inner loop's tiles double-buffered, fetched with
    /// `cp.async` one step ahead.
    Fast,
    /// Fragments loaded with 32- and 16-bit shared loads straight from the
    /// fragment layout; tiles loaded synchronously into one buffer.
    Simple,
    /// The fast kernels, but the backward in one pass
    /// (`flash_attention_bwd_fused_d{64,128}`: dk, dv and dq together, dq
    /// added up in fp32 in key-tile order, so still deterministic). Not the
    /// dispatch's choice until a GPU has measured it correct and faster.
    Fused,
    /// `Fused`, with the Hopper kernels where the GPU is compute capability
    /// 9.0: the forward and the one-pass backward on `wgmma`, both head
    /// dims; elsewhere exactly `Fused`. Not the dispatch's choice until
    /// measured.
    Hopper,
    /// `Fused`, with the warp-specialised Hopper kernels where the GPU is
    /// compute capability 9.0 (TMA, a producer warpgroup: the persistent
    /// forward and the backward with its dq writer, both head dims);
    /// elsewhere exactly `Fused`. Not the dispatch's choice until measured.
    HopperWs,
}

impl FlashVariant {
    /// The build of the kernels the variant runs (all but the fused backward).
    fn builds(self) -> FlashVariant {
        match self {
            FlashVariant::Fused | FlashVariant::Hopper | FlashVariant::HopperWs => FlashVariant::Fast,
            v => v,
        }
    }
}

/// The variant the dispatch uses (the second one-line switch).
pub const FLASH_VARIANT: FlashVariant = FlashVariant::Fast;

const TILE: usize = ENGINE_FLASH_TILE as usize;

/// Query rows per block of the forward: the fast variant's warps own two
/// 16-row m-tiles each.
fn fwd_tile(variant: FlashVariant) -> usize {
    match variant.builds() {
        FlashVariant::Simple => TILE,
        _ => ENGINE_FLASH_FWD_TILE as usize,
    }
}

/// Query rows per block of the dq kernel: two m-tiles per warp in the fast
/// variant at head_dim 64, else one.
fn dq_tile(variant: FlashVariant, head_dim: usize) -> usize {
    match (variant.builds(), head_dim) {
        (FlashVariant::Fast, 64) => ENGINE_FLASH_DQ_TILE_D64 as usize,
        _ => TILE,
    }
}

/// The kernels of one head_dim.
struct PerDim {
    fwd: CudaFunction,
    dq: CudaFunction,
    dkdv: CudaFunction,
}

pub struct Fns {
    /// By head_dim 64, 128: the fast variant.
    d64: PerDim,
    d128: PerDim,
    /// The simple variant.
    d64_simple: PerDim,
    d128_simple: PerDim,
    delta: CudaFunction,
    dkdv_sum: CudaFunction,
    /// The fused backward (head_dim 64, 128) and its dq conversion.
    fused_d64: CudaFunction,
    fused_d128: CudaFunction,
    dq_from_accum: CudaFunction,
    /// The Hopper forward (sm_90a; an empty kernel on other GPUs).
    wgmma_d64: CudaFunction,
    wgmma_d128: CudaFunction,
    /// The Hopper one-pass backward (sm_90a).
    wgmma_bwd_d64: CudaFunction,
    wgmma_bwd_d128: CudaFunction,
    /// The warp-specialised Hopper forward (sm_90a: TMA, mbarriers, wgmma).
    ws_d64: CudaFunction,
    ws_d128: CudaFunction,
    /// The warp-specialised Hopper backward (sm_90a).
    ws_bwd_d64: CudaFunction,
    ws_bwd_d128: CudaFunction,
}

/// The Hopper forward's default descriptor reading (kernels/include/flash_attention.h).
pub const WGMMA_DESC: u32 = ENGINE_FLASH_WGMMA_DESC;

/// Extra shared memory for the other descriptor readings: the farthest a
/// wrong reading reaches past the last V tile (about 27 KB at head_dim 128).
const WGMMA_SLACK: usize = 32 << 10;

/// Dynamic shared memory of the Hopper backward (`wg_bwd_smem`): K, V and
/// two buffers of Q, dO tiles (64 rows, canonical), two of lse and delta,
/// dS (64 × 64, rows padded) and the ordered addition's flag and ticket.
fn wgmma_bwd_smem(head_dim: usize) -> usize {
    let tile = TILE * head_dim * 2;
    2 * tile + 4 * tile + 4 * TILE * 4 + TILE * (TILE + ENGINE_FLASH_PAD as usize) * 2 + 16
}

/// Dynamic shared memory of the Hopper forward, as the kernel computes it
/// (`wg_fwd_smem`): the query tile (rows padded) and two buffers of K and V
/// tiles of 64 keys in the canonical layout (unpadded).
fn wgmma_smem(head_dim: usize) -> usize {
    TILE * (head_dim + ENGINE_FLASH_PAD as usize) * 2 + 2 * 2 * TILE * head_dim * 2
}

/// Which forward kernel a launch runs: an `mma.sync` one, the Hopper one on
/// `wgmma` with its descriptor reading, or the warp-specialised Hopper one.
#[derive(Clone, Copy)]
enum FwdKernel {
    MmaSync,
    Wgmma(u32),
    /// The persistent kernel on this many blocks at most (0: one per SM).
    Ws(usize),
}

/// Dynamic shared memory of the warp-specialised Hopper forward, as the
/// kernel computes it (`ws_fwd_smem`): slack to a 1024-byte boundary, the
/// 128-row query tile, the rings of K and V tiles, the mbarriers and the
/// abort flag.
fn ws_smem(head_dim: usize) -> usize {
    let (keys, stages) = (ENGINE_FLASH_WS_KEYS as usize, ENGINE_FLASH_WS_STAGES as usize);
    1024 + ENGINE_FLASH_FWD_TILE as usize * head_dim * 2 + 2 * stages * keys * head_dim * 2 + 8 * (3 + 4 * stages)
}

/// Dynamic shared memory of the warp-specialised Hopper backward, as the
/// kernel computes it (`ws_bwd_smem`): slack to a 1024-byte boundary, the K
/// and V tiles (128 keys), the ring of Q, dO tiles (64 rows) with their lse
/// and delta (64 floats each), the two consumers' dS tiles (64 × 64 bf16,
/// rows padded) and dq parts (64 × head_dim fp32, rows padded by 8), the
/// mbarriers, and 32 bytes of flags and the block's tile.
fn ws_bwd_smem(head_dim: usize) -> usize {
    let (keys, stages, pad) =
        (ENGINE_FLASH_WS_KEYS as usize, ENGINE_FLASH_WS_BWD_STAGES as usize, ENGINE_FLASH_PAD as usize);
    1024 + 2 * keys * head_dim * 2
        + stages * (2 * TILE * head_dim * 2 + 2 * TILE * 4)
        + 2 * TILE * (TILE + pad) * 2
        + 2 * TILE * (head_dim + 8) * 4
        + 8 * (3 + 2 * stages)
        + 32
}

/// Which backward kernels a launch runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BwdKernel {
    /// dq, then dk/dv (`mma.sync`; the variant's build).
    TwoPass,
    /// The one-pass `mma.sync` kernel.
    Fused,
    /// The one-pass Hopper kernel on `wgmma`.
    Wgmma,
    /// The warp-specialised Hopper kernel (TMA, `wgmma`, a dq writer).
    Ws,
}

/// Dynamic shared memory (bytes) of the (fwd, dq, dk/dv) kernels, as
/// kernels/flash_attention.cu computes it (the kernels check they got at
/// least that much): the fast variant double-buffers its inner loop's tiles.
fn smem(variant: FlashVariant, head_dim: usize) -> (usize, usize, usize) {
    let row = (head_dim + ENGINE_FLASH_PAD as usize) * 2;
    let step = dkdv_step(head_dim);
    let variant = variant.builds();
    let nbuf = if variant == FlashVariant::Fast { 2 } else { 1 };
    let fwd_keys = match (variant, head_dim) {
        (FlashVariant::Simple, _) => TILE,
        (_, 64) => ENGINE_FLASH_FWD_KEYS_D64 as usize,
        _ => ENGINE_FLASH_FWD_KEYS_D128 as usize,
    };
    let dq_keys = match (variant, head_dim) {
        (FlashVariant::Fast, 64) => ENGINE_FLASH_DQ_KEYS_D64 as usize,
        _ => TILE,
    };
    (
        (fwd_tile(variant) + 2 * nbuf * fwd_keys) * row,
        (2 * dq_tile(variant, head_dim) + 2 * nbuf * dq_keys) * row,
        (2 * TILE + nbuf * 2 * step) * row + nbuf * 2 * step * 4,
    )
}

/// Dynamic shared memory of the fused backward: the fast dk/dv kernel's,
/// plus the step's dS ([64 keys][step queries] bf16, rows padded) and the
/// ordered addition's flag.
fn fused_smem(head_dim: usize) -> usize {
    smem(FlashVariant::Fast, head_dim).2 + TILE * (dkdv_step(head_dim) + ENGINE_FLASH_PAD as usize) * 2 + 16
}

/// Queries per step of the dk/dv (and fused) kernels, as the kernel's
/// `dkdv_step<D>()`.
fn dkdv_step(head_dim: usize) -> usize {
    (if head_dim == 64 { ENGINE_FLASH_DKDV_STEP_D64 } else { ENGINE_FLASH_DKDV_STEP_D128 }) as usize
}

/// [`Gpu::fitting_build`] for a GPU with `smem_optin` bytes per block.
fn fitting_build(variant: FlashVariant, head_dim: usize, smem_optin: usize) -> FlashVariant {
    let build = variant.builds();
    let (fwd, dq, dkdv) = smem(build, head_dim);
    if build == FlashVariant::Fast && fwd.max(dq).max(dkdv) > smem_optin {
        FlashVariant::Simple
    } else {
        build
    }
}

/// A kernel allowed `bytes` of dynamic shared memory (above 48 KB needs the opt-in).
fn with_smem(m: &Modules, name: &str, bytes: usize) -> Result<CudaFunction> {
    let f = m.get("flash_attention", name)?;
    f.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes as i32)
        .map_err(|e| anyhow!("kernels/flash_attention.cu: {name}: {bytes} bytes of shared memory: {e}"))?;
    Ok(f)
}

/// The kernels, each allowed the shared memory it needs where the GPU has
/// that much per block (`smem_optin`); one that needs more is kept without
/// the attribute and never launched: the dispatch runs a build that fits
/// ([`Gpu::fitting_build`]; the Hopper kernels run on 9.0 only, 227 KB).
pub(super) fn load(m: &Modules, smem_optin: usize) -> Result<Fns> {
    let kernel = |name: &str, bytes: usize| -> Result<CudaFunction> {
        if bytes <= smem_optin {
            with_smem(m, name, bytes)
        } else {
            m.get("flash_attention", name)
        }
    };
    let wgmma_fn = |d: usize| kernel(&format!("flash_attention_fwd_wgmma_d{d}"), wgmma_smem(d) + WGMMA_SLACK);
    let dim = |d: usize, variant: FlashVariant| -> Result<PerDim> {
        let (fwd, dq, dkdv) = smem(variant, d);
        let suffix = if variant == FlashVariant::Fast { "" } else { "_simple" };
        Ok(PerDim {
            fwd: kernel(&format!("flash_attention_fwd_d{d}{suffix}"), fwd)?,
            dq: kernel(&format!("flash_attention_bwd_dq_d{d}{suffix}"), dq)?,
            dkdv: kernel(&format!("flash_attention_bwd_dkdv_d{d}{suffix}"), dkdv)?,
        })
    };
    Ok(Fns {
        d64: dim(64, FlashVariant::Fast)?,
        d128: dim(128, FlashVariant::Fast)?,
        d64_simple: dim(64, FlashVariant::Simple)?,
        d128_simple: dim(128, FlashVariant::Simple)?,
        delta: m.get("flash_attention", "flash_attention_delta")?,
        dkdv_sum: m.get("flash_attention", "flash_attention_dkdv_sum")?,
        fused_d64: kernel("flash_attention_bwd_fused_d64", fused_smem(64))?,
        fused_d128: kernel("flash_attention_bwd_fused_d128", fused_smem(128))?,
        dq_from_accum: m.get("flash_attention", "flash_attention_dq_from_accum")?,
        wgmma_d64: wgmma_fn(64)?,
        wgmma_d128: wgmma_fn(128)?,
        wgmma_bwd_d64: kernel("flash_attention_bwd_wgmma_d64", wgmma_bwd_smem(64))?,
        wgmma_bwd_d128: kernel("flash_attention_bwd_wgmma_d128", wgmma_bwd_smem(128))?,
        ws_d64: kernel("flash_attention_fwd_ws_d64", ws_smem(64))?,
        ws_d128: kernel("flash_attention_fwd_ws_d128", ws_smem(128))?,
        ws_bwd_d64: kernel("flash_attention_bwd_ws_d64", ws_bwd_smem(64))?,
        ws_bwd_d128: kernel("flash_attention_bwd_ws_d128", ws_bwd_smem(128))?,
    })
}

/// Whether the flash kernels take this call: head_dim 64 or 128, and every
/// bf16 buffer on a 16-byte boundary (the kernels load 16 bytes at a time).
pub fn takes(s: &AttnShape, bf16_ptrs: &[u64]) -> bool {
    FLASH_ENABLED && matches!(s.head_dim, 64 | 128) && aligned(bf16_ptrs)
}

/// The backward's scratch (kept between calls, [`Scratch`]): `delta` (fp32
/// per (token, query head)) and, with GQA, the per-query-head parts of dk
/// and dv (fp32 per (token, query head, d)): at 16k tokens of the 0.5B shape
/// (14 heads of 64) 2 × 59 MB, which each call allocated, zero-filled and
/// freed before, for every layer. Never cleared: each call's delta kernel
/// writes every delta it reads, and its dk/dv kernel every part the sum reads.
#[derive(Default)]
pub(crate) struct BwdScratch {
    delta: Scratch,
    dk_part: Scratch,
    dv_part: Scratch,
    /// The fused backward's fp32 dq sums and its per-(query tile, head) turns.
    dq_accum: Scratch,
    dq_sem: Scratch,
}

fn aligned(ptrs: &[u64]) -> bool {
    ptrs.iter().all(|p| p % 16 == 0)
}

/// The tiles of `tile` tokens of every sequence as pairs (sequence, tile
/// index), tile index descending (the forward's and dq's longest blocks first).
fn tiles(cu: &[u32], tile: usize) -> Vec<u32> {
    let mut t: Vec<(u32, u32)> = cu
        .windows(2)
        .enumerate()
        .flat_map(|(s, w)| (0..((w[1] - w[0]) as usize).div_ceil(tile)).map(move |i| (s as u32, i as u32)))
        .collect();
    t.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    t.into_iter().flat_map(|(s, i)| [s, i]).collect()
}

impl Gpu {
    /// The checks every flash call shares: the shape, cu_seqlens on the host,
    /// grid limits. Returns (host cu_seqlens, tokens).
    fn flash_checks(&self, what: &str, s: &AttnShape, cu_seqlens: &impl IndexArg) -> Result<(Vec<u32>, usize)> {
        check_shape(what, s)?;
        if !matches!(s.head_dim, 64 | 128) {
            bail!("{what}: head_dim {} is not one the flash kernels take (64, 128)", s.head_dim);
        }
        if s.n_heads > u16::MAX as usize {
            bail!("{what}: {} heads exceed the grid's y limit", s.n_heads);
        }
        let cu = self.cu_seqlens_host(what, cu_seqlens)?;
        let tokens = *cu.last().expect("cu_seqlens_host checks it is not empty") as usize;
        Ok((cu, tokens))
    }

    /// The table of `tile`-token tiles on the device (its address), and its
    /// length in tiles. The last table of each tile size is kept with the
    /// `cu_seqlens` it was built from: every layer's forward (128-token
    /// tiles) and backward (64) of a batch share them, so only the first
    /// call of a batch builds and uploads each. (A table replaced while a
    /// kernel may still read it is freed in stream order, after that kernel.
    /// The address outlives the lock: two threads launching attention on one
    /// `Gpu` at once could free a table between another's lookup and launch;
    /// the backend's ops run from one thread.)
    fn flash_tiles(&self, what: &str, cu: &[u32], tile: usize) -> Result<(u64, u32)> {
        let mut caches = self.tile_cache.lock().unwrap_or_else(|e| e.into_inner());
        // One entry for the 64-token tiles, one for the other size in use
        // (128: the fast forward's and the d64 dq kernel's); the key holds
        // the size, so another size would rebuild, never be mistaken.
        let slot = usize::from(tile != TILE);
        let cache = &mut caches[slot];
        if let Some(((size, key), table, n)) = cache.as_ref() {
            if *size == tile && key.as_slice() == cu {
                return Ok((table.device_ptr(&self.stream).0, *n));
            }
        }
        let t = tiles(cu, tile);
        let n = t.len() / 2;
        if n == 0 || n > i32::MAX as usize {
            bail!("{what}: {n} tiles do not fit one launch");
        }
        let d = self.stream.clone_htod(&t).map_err(|e| anyhow!("{what}: tile table: {e}"))?;
        let ptr = d.device_ptr(&self.stream).0;
        *cache = Some(((tile, cu.to_vec()), d, n as u32));
        Ok((ptr, n as u32))
    }

    /// The build (`Fast` or `Simple`) of `variant`'s mma.sync kernels at
    /// this head dim that fits the GPU's shared memory: the fast one where
    /// its three kernels do (Hopper, A100), else the simple one (the fast
    /// dq kernel at head_dim 128 needs 102 KB; sm_86 / sm_89 allow 99).
    pub fn fitting_build(&self, variant: FlashVariant, head_dim: usize) -> FlashVariant {
        fitting_build(variant, head_dim, self.smem_optin)
    }

    fn flash_fns(&self, variant: FlashVariant, head_dim: usize) -> &PerDim {
        let f = &self.k.flash_attention;
        match (variant.builds() == FlashVariant::Fast, head_dim == 64) {
            (true, true) => &f.d64,
            (true, false) => &f.d128,
            (false, true) => &f.d64_simple,
            (false, false) => &f.d128_simple,
        }
    }

    /// [`attention_fwd`](Self::attention_fwd) on the flash kernel (the given
    /// variant); head_dim 64 or 128 and 16-byte aligned buffers,
    /// else an error.
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attention_fwd(
        &self,
        variant: FlashVariant,
        s: &AttnShape,
        cu_seqlens: &impl IndexArg,
        q: &impl DevicePtr<Bf16>,
        k: &impl DevicePtr<Bf16>,
        v: &impl DevicePtr<Bf16>,
        out: &mut impl DevicePtrMut<Bf16>,
        lse: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        if variant == FlashVariant::Hopper && self.cc == (9, 0) {
            return self.flash_attention_fwd_wgmma(WGMMA_DESC, s, cu_seqlens, q, k, v, out, lse);
        }
        if variant == FlashVariant::HopperWs && self.cc == (9, 0) {
            return self.flash_attention_fwd_ws(0, s, cu_seqlens, q, k, v, out, lse);
        }
        let variant = self.fitting_build(variant, s.head_dim);
        let (f, rows, bytes) =
            (&self.flash_fns(variant, s.head_dim).fwd, fwd_tile(variant), smem(variant, s.head_dim).0);
        self.flash_fwd_launch(
            "flash_attention_fwd",
            f,
            rows,
            bytes,
            FwdKernel::MmaSync,
            s,
            cu_seqlens,
            q,
            k,
            v,
            out,
            lse,
        )
    }

    /// An error unless this GPU runs the sm_90a kernels (compute capability 9.0).
    fn hopper_only(&self, what: &str) -> Result<()> {
        if self.cc != (9, 0) {
            bail!("{what}: needs compute capability 9.0 (sm_90a), this GPU has {}.{}", self.cc.0, self.cc.1);
        }
        Ok(())
    }

    /// [`flash_attention_fwd`](Self::flash_attention_fwd) on the
    /// warp-specialised Hopper kernel (kernels/flash_fwd_ws.cuh: a producer
    /// warpgroup loading by TMA, two consumer warpgroups on `wgmma`), a
    /// persistent grid of at most `blocks` blocks (0: one per SM; a test
    /// takes few, so that each block walks many work items; the result does
    /// not depend on it): compute capability 9.0 only, else an error.
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attention_fwd_ws(
        &self,
        blocks: usize,
        s: &AttnShape,
        cu_seqlens: &impl IndexArg,
        q: &impl DevicePtr<Bf16>,
        k: &impl DevicePtr<Bf16>,
        v: &impl DevicePtr<Bf16>,
        out: &mut impl DevicePtrMut<Bf16>,
        lse: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        let what = "flash_attention_fwd_ws";
        self.hopper_only(what)?;
        let f = &self.k.flash_attention;
        let f = if s.head_dim == 64 { &f.ws_d64 } else { &f.ws_d128 };
        let (rows, bytes) = (ENGINE_FLASH_FWD_TILE as usize, ws_smem(s.head_dim));
        self.flash_fwd_launch(what, f, rows, bytes, FwdKernel::Ws(blocks), s, cu_seqlens, q, k, v, out, lse)
    }

    /// [`flash_attention_fwd`](Self::flash_attention_fwd) on the Hopper
    /// kernel (`wgmma`, kernels/flash_fwd_wgmma.cuh's `fwd_wgmma`): compute
    /// capability 9.0 only, else an error. `desc` picks how its shared-memory
    /// descriptors are read ([`WGMMA_DESC`] is the default; the tests try all
    /// four); for the other three the launch reserves extra shared memory, so
    /// that a wrong reading reads garbage rather than past the allocation.
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attention_fwd_wgmma(
        &self,
        desc: u32,
        s: &AttnShape,
        cu_seqlens: &impl IndexArg,
        q: &impl DevicePtr<Bf16>,
        k: &impl DevicePtr<Bf16>,
        v: &impl DevicePtr<Bf16>,
        out: &mut impl DevicePtrMut<Bf16>,
        lse: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        let what = "flash_attention_fwd_wgmma";
        self.hopper_only(what)?;
        if desc > 3 {
            bail!("{what}: descriptor reading {desc} (0..=3)");
        }
        let f = &self.k.flash_attention;
        let f = if s.head_dim == 64 { &f.wgmma_d64 } else { &f.wgmma_d128 };
        let bytes = wgmma_smem(s.head_dim) + if desc == WGMMA_DESC { 0 } else { WGMMA_SLACK };
        self.flash_fwd_launch(what, f, TILE, bytes, FwdKernel::Wgmma(desc), s, cu_seqlens, q, k, v, out, lse)
    }

    /// The forward's checks and launch: `f` takes tiles of `rows` queries and
    /// `bytes` of dynamic shared memory.
    #[allow(clippy::too_many_arguments)]
    fn flash_fwd_launch(
        &self,
        what: &str,
        f: &CudaFunction,
        rows: usize,
        bytes: usize,
        kind: FwdKernel,
        s: &AttnShape,
        cu_seqlens: &impl IndexArg,
        q: &impl DevicePtr<Bf16>,
        k: &impl DevicePtr<Bf16>,
        v: &impl DevicePtr<Bf16>,
        out: &mut impl DevicePtrMut<Bf16>,
        lse: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        let (cu_h, tokens) = self.flash_checks(what, s, cu_seqlens)?;
        let (q_len, kv_len) =
            (elems(what, tokens, s.n_heads, s.head_dim)?, elems(what, tokens, s.n_kv_heads, s.head_dim)?);
        check_len(&format!("{what}: q"), q.len(), q_len)?;
        check_len(&format!("{what}: k"), k.len(), kv_len)?;
        check_len(&format!("{what}: v"), v.len(), kv_len)?;
        check_len(&format!("{what}: out"), out.len(), q_len)?;
        check_len(&format!("{what}: lse"), lse.len(), elems(what, tokens, s.n_heads, 1)?)?;
        if tokens == 0 {
            return Ok(());
        }
        let (tp, n_blocks) = self.flash_tiles(what, &cu_h, rows)?;
        let (cu, _g0) = cu_seqlens.device_ptr(&self.stream);
        let (qp, _g1) = q.device_ptr(&self.stream);
        let (kp, _g2) = k.device_ptr(&self.stream);
        let (vp, _g3) = v.device_ptr(&self.stream);
        let (op, _g4) = out.device_ptr_mut(&self.stream);
        let (lp, _g5) = lse.device_ptr_mut(&self.stream);
        if !aligned(&[qp, kp, vp, op]) {
            bail!("{what}: bf16 buffers must start on 16-byte boundaries");
        }
        let p = FlashFwdParams {
            q: qp,
            k: kp,
            v: vp,
            out: op,
            lse: lp,
            cu_seqlens: cu,
            blocks: tp,
            n_blocks,
            n_heads: s.n_heads as u32,
            n_kv_heads: s.n_kv_heads as u32,
            scale: s.scale,
            wgmma_desc: if let FwdKernel::Wgmma(d) = kind { d } else { 0 },
        };
        let cfg = if let FwdKernel::Ws(cap) = kind {
            // Persistent: a block per SM (one fits, by registers), each
            // walking work items (tile, head).
            let items = n_blocks as usize * s.n_heads;
            // The kernel's item counter steps by the grid: keep it in u32.
            if items + self.sms > u32::MAX as usize {
                bail!("{what}: {items} work items do not fit one launch");
            }
            LaunchConfig {
                grid_dim: (items.min(if cap > 0 { cap } else { self.sms.max(1) }) as u32, 1, 1),
                block_dim: (ENGINE_FLASH_WS_THREADS, 1, 1),
                shared_mem_bytes: bytes as u32,
            }
        } else {
            LaunchConfig {
                grid_dim: (n_blocks, s.n_heads as u32, 1),
                block_dim: (ENGINE_FLASH_THREADS, 1, 1),
                shared_mem_bytes: bytes as u32,
            }
        };
        // SAFETY: every buffer has the length checked above and is 16-byte
        // aligned; cu_seqlens was checked on the host (0 .. tokens,
        // non-decreasing) and the tile table was built from it; the tensor
        // maps cover exactly q, k and v.
        unsafe {
            if let FwdKernel::Ws(_) = kind {
                // Q in boxes of 64 rows (a consumer's), K and V of a key step's rows.
                let keys = ENGINE_FLASH_WS_KEYS;
                let pw = FlashWsParams {
                    tq: tma::bf16_rows(&format!("{what}: q"), qp, tokens, s.n_heads, s.head_dim, 64)?,
                    tk: tma::bf16_rows(&format!("{what}: k"), kp, tokens, s.n_kv_heads, s.head_dim, keys)?,
                    tv: tma::bf16_rows(&format!("{what}: v"), vp, tokens, s.n_kv_heads, s.head_dim, keys)?,
                    f: p,
                };
                self.stream.launch_builder(f).arg(&pw).launch(cfg)
            } else {
                self.stream.launch_builder(f).arg(&p).launch(cfg)
            }
        }
        .map_err(|e| anyhow!("{what}: {e}"))?;
        Ok(())
    }

    /// [`attention_bwd`](Self::attention_bwd) on the flash kernels (the given
    /// variant); deterministic (no atomics; every sum in a fixed
    /// order).
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attention_bwd(
        &self,
        variant: FlashVariant,
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
        // The one-pass backward: on wgmma at both head dims (the Hopper
        // variants on 9.0), else on mma.sync.
        let hopper = self.cc == (9, 0);
        let kind = if variant == FlashVariant::Hopper && hopper {
            BwdKernel::Wgmma
        } else if variant == FlashVariant::HopperWs && hopper {
            BwdKernel::Ws
        } else if matches!(variant, FlashVariant::Fused | FlashVariant::Hopper | FlashVariant::HopperWs)
            && fused_smem(s.head_dim) <= self.smem_optin
        {
            BwdKernel::Fused
        } else {
            BwdKernel::TwoPass
        };
        let what = "flash_attention_bwd";
        self.flash_bwd_launch(what, variant, kind, s, cu_seqlens, q, k, v, out, lse, dout, dq, dk, dv)
    }

    /// [`flash_attention_bwd`](Self::flash_attention_bwd) on the
    /// warp-specialised Hopper kernel (kernels/flash_bwd_ws.cuh: a producer
    /// warpgroup loading by TMA and adding dq up in key-tile order by bulk
    /// reduce-adds, two consumer warpgroups on `wgmma`): compute capability
    /// 9.0 only, else an error. Deterministic, as the other backwards.
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attention_bwd_ws(
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
        let what = "flash_attention_bwd_ws";
        self.hopper_only(what)?;
        let variant = FlashVariant::Hopper;
        self.flash_bwd_launch(what, variant, BwdKernel::Ws, s, cu_seqlens, q, k, v, out, lse, dout, dq, dk, dv)
    }

    /// The backward's checks and launches: delta, then `kind`'s kernels,
    /// then (with GQA) the sum of dk, dv's per-head parts.
    #[allow(clippy::too_many_arguments)]
    fn flash_bwd_launch(
        &self,
        what: &str,
        variant: FlashVariant,
        kind: BwdKernel,
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
        let one_pass = kind != BwdKernel::TwoPass;
        let variant = self.fitting_build(variant, s.head_dim);
        let (cu_h, tokens) = self.flash_checks(what, s, cu_seqlens)?;
        let (q_len, kv_len) =
            (elems(what, tokens, s.n_heads, s.head_dim)?, elems(what, tokens, s.n_kv_heads, s.head_dim)?);
        for (name, len) in [("q", q.len()), ("out", out.len()), ("dout", dout.len()), ("dq", dq.len())] {
            check_len(&format!("{what}: {name}"), len, q_len)?;
        }
        for (name, len) in [("k", k.len()), ("v", v.len()), ("dk", dk.len()), ("dv", dv.len())] {
            check_len(&format!("{what}: {name}"), len, kv_len)?;
        }
        let rows = elems(what, tokens, s.n_heads, 1)?;
        check_len(&format!("{what}: lse"), lse.len(), rows)?;
        if tokens == 0 {
            return Ok(());
        }
        let (tp, n_blocks) = self.flash_tiles(what, &cu_h, TILE)?;
        // With GQA, each query head's part of dk, dv in fp32 (summed by
        // flash_attention_dkdv_sum); none needed without.
        let gqa = s.n_heads != s.n_kv_heads;
        let scratch = &self.flash_scratch;
        let parts = if gqa { q_len } else { 1 };
        let dlp = scratch.delta.get(self, "flash_attention_bwd: delta", rows)?;
        let dkpp = scratch.dk_part.get(self, "flash_attention_bwd: dk parts", parts)?;
        let dvpp = scratch.dv_part.get(self, "flash_attention_bwd: dv parts", parts)?;
        // The one-pass backwards' dq sums (every element written by its first key
        // tile) and turns (cleared: each counts the key tiles that have added).
        let (dqap, semp) = if one_pass {
            let accum = scratch.dq_accum.get(self, "flash_attention_bwd: dq sums", q_len)?;
            // One counter per (token, head) (those of query-step starts used:
            // every 64 tokens, every 32 in the fused d128 kernel), then
            // the launch's ticket counter and its error word.
            (accum, scratch.dq_sem.get_zeroed(self, "flash_attention_bwd: dq turns", rows + 2)?)
        } else {
            (0, 0)
        };
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
        if !aligned(&[qp, kp, vp, op, dop, dqp, dkp, dvp]) {
            bail!("{what}: bf16 buffers must start on 16-byte boundaries");
        }
        let p = FlashBwdParams {
            q: qp,
            k: kp,
            v: vp,
            out: op,
            lse: lp,
            dout: dop,
            delta: dlp,
            dq: dqp,
            dk: dkp,
            dv: dvp,
            dk_part: dkpp,
            dv_part: dvpp,
            dq_accum: dqap,
            dq_sem: semp,
            cu_seqlens: cu,
            blocks: tp,
            tokens: tokens as u32,
            n_blocks,
            n_heads: s.n_heads as u32,
            n_kv_heads: s.n_kv_heads as u32,
            head_dim: s.head_dim as u32,
            scale: s.scale,
            wgmma_desc: WGMMA_DESC,
        };
        let (_, dq_smem, dkdv_smem) = smem(variant, s.head_dim);
        let block = (ENGINE_FLASH_THREADS, 1, 1);
        let delta_rows = ENGINE_FLASH_DELTA_ROWS as usize;
        let cfg_delta = LaunchConfig {
            grid_dim: (rows.div_ceil(delta_rows) as u32, 1, 1),
            block_dim: (32 * ENGINE_FLASH_DELTA_ROWS, 1, 1),
            shared_mem_bytes: 0,
        };
        let cfg_dkdv = LaunchConfig {
            grid_dim: (n_blocks, s.n_heads as u32, 1),
            block_dim: block,
            shared_mem_bytes: dkdv_smem as u32,
        };
        let f = self.flash_fns(variant, s.head_dim);
        // SAFETY: every buffer has the length checked above and is 16-byte
        // aligned; delta holds tokens·n_heads floats; cu_seqlens was checked
        // on the host and the tile table built from it. The three launches
        // run in order on one stream (delta before its readers).
        unsafe { self.stream.launch_builder(&self.k.flash_attention.delta).arg(&p).launch(cfg_delta) }
            .map_err(|e| anyhow!("{what}: delta: {e}"))?;
        if one_pass {
            let fk = &self.k.flash_attention;
            if kind == BwdKernel::Ws {
                // Tiles of 128 keys; K, V by the forward's tensor maps, Q and dO in boxes of 64 rows.
                let (ws_tp, ws_blocks) = self.flash_tiles(what, &cu_h, ENGINE_FLASH_WS_KEYS as usize)?;
                let keys = ENGINE_FLASH_WS_KEYS;
                let (n, kv_n) = (s.n_heads, s.n_kv_heads);
                let pw = FlashBwdWsParams {
                    tq: tma::bf16_rows(&format!("{what}: q"), qp, tokens, n, s.head_dim, 64)?,
                    tk: tma::bf16_rows(&format!("{what}: k"), kp, tokens, kv_n, s.head_dim, keys)?,
                    tv: tma::bf16_rows(&format!("{what}: v"), vp, tokens, kv_n, s.head_dim, keys)?,
                    tdo: tma::bf16_rows(&format!("{what}: dout"), dop, tokens, n, s.head_dim, 64)?,
                    b: FlashBwdParams { blocks: ws_tp, n_blocks: ws_blocks, ..p },
                };
                let kernel = if s.head_dim == 64 { &fk.ws_bwd_d64 } else { &fk.ws_bwd_d128 };
                let cfg_ws = LaunchConfig {
                    grid_dim: (ws_blocks, s.n_heads as u32, 1),
                    block_dim: (ENGINE_FLASH_WS_THREADS, 1, 1),
                    shared_mem_bytes: ws_bwd_smem(s.head_dim) as u32,
                };
                // SAFETY: as the other one-pass kernels (below); the tensor
                // maps cover exactly q, k, v and dout.
                unsafe { self.stream.launch_builder(kernel).arg(&pw).launch(cfg_ws) }
                    .map_err(|e| anyhow!("{what}: warp-specialised: {e}"))?;
            } else {
                let (kernel, bytes) = match (kind, s.head_dim) {
                    (BwdKernel::Wgmma, 64) => (&fk.wgmma_bwd_d64, wgmma_bwd_smem(64)),
                    (BwdKernel::Wgmma, _) => (&fk.wgmma_bwd_d128, wgmma_bwd_smem(128)),
                    (_, 64) => (&fk.fused_d64, fused_smem(64)),
                    _ => (&fk.fused_d128, fused_smem(128)),
                };
                let cfg_fused = LaunchConfig { shared_mem_bytes: bytes as u32, ..cfg_dkdv };
                // SAFETY: as above; dq_accum holds tokens·n_heads·head_dim
                // floats and dq_sem tokens·n_heads + 2 zeroed words. A block
                // takes its tile by ticket (the order blocks start in) and waits
                // only for the key tile before it in the same sequence and head,
                // which took a lower ticket and so has started (a wait gives up
                // after 2²⁵ polls, seconds, and makes dq NaN rather than hang).
                // The Hopper kernel (sm_90a, launched on 9.0 only) works the same way.
                unsafe { self.stream.launch_builder(kernel).arg(&p).launch(cfg_fused) }
                    .map_err(|e| anyhow!("{what}: fused: {e}"))?;
            }
            let n = q_len.div_ceil(256) as u32;
            let cfg_dq = LaunchConfig { grid_dim: (n, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: as above; every dq_accum element was written by the one-pass kernel.
            unsafe { self.stream.launch_builder(&fk.dq_from_accum).arg(&p).launch(cfg_dq) }
                .map_err(|e| anyhow!("{what}: dq from its sums: {e}"))?;
        } else {
            // dq walks its own tiles (128 queries in the fast d64 kernel).
            let (dq_tp, dq_blocks) = self.flash_tiles(what, &cu_h, dq_tile(variant, s.head_dim))?;
            let p_dq = FlashBwdParams { blocks: dq_tp, n_blocks: dq_blocks, ..p };
            let cfg_dq = LaunchConfig {
                grid_dim: (dq_blocks, s.n_heads as u32, 1),
                block_dim: block,
                shared_mem_bytes: dq_smem as u32,
            };
            // SAFETY: as above.
            unsafe { self.stream.launch_builder(&f.dq).arg(&p_dq).launch(cfg_dq) }
                .map_err(|e| anyhow!("{what}: dq: {e}"))?;
            // SAFETY: as above.
            unsafe { self.stream.launch_builder(&f.dkdv).arg(&p).launch(cfg_dkdv) }
                .map_err(|e| anyhow!("{what}: dk/dv: {e}"))?;
        }
        if gqa {
            let n = kv_len.div_ceil(256) as u32;
            let cfg_sum = LaunchConfig { grid_dim: (n, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: as above; dk_part and dv_part hold tokens·n_heads·head_dim
            // floats, every one written by the dk/dv kernel before this launch.
            unsafe { self.stream.launch_builder(&self.k.flash_attention.dkdv_sum).arg(&p).launch(cfg_sum) }
                .map_err(|e| anyhow!("{what}: dk/dv sum: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{
        fitting_build, fused_smem, smem, tiles, wgmma_bwd_smem, wgmma_smem, ws_bwd_smem, ws_smem, FlashVariant,
        WGMMA_SLACK,
    };

    #[test]
    fn every_build_fits_the_gpus_it_is_chosen_for() {
        // Shared memory per block (opt-in): H100 / H200, A100, sm_86 / sm_89.
        let (hopper, a100, ada) = (232_448, 166_912, 101_376);
        for v in [
            FlashVariant::Fast,
            FlashVariant::Fused,
            FlashVariant::Hopper,
            FlashVariant::HopperWs,
            FlashVariant::Simple,
        ] {
            for d in [64, 128] {
                for limit in [hopper, a100, ada] {
                    let b = fitting_build(v, d, limit);
                    let (f, q, k) = smem(b, d);
                    assert!(f.max(q).max(k) <= limit, "{v:?} d{d} at {limit}: {b:?} needs {}", f.max(q).max(k));
                    // Only the fast d128 build is too big, and only for sm_86 / sm_89.
                    let simple = v == FlashVariant::Simple || (limit == ada && d == 128);
                    assert_eq!(b, if simple { FlashVariant::Simple } else { FlashVariant::Fast }, "{v:?} d{d} {limit}");
                }
            }
        }
        // The one-pass and Hopper kernels fit where they run (fused: checked
        // against the limit at dispatch; Hopper: 9.0 only).
        assert!(fused_smem(64) <= ada);
        assert!(fused_smem(128) <= ada, "fused d128: {} bytes", fused_smem(128));
        for d in [64, 128] {
            assert!(wgmma_smem(d) + WGMMA_SLACK <= hopper && wgmma_bwd_smem(d) <= hopper && ws_smem(d) <= hopper);
            assert!(ws_bwd_smem(d) <= hopper, "ws bwd d{d}: {} bytes", ws_bwd_smem(d));
        }
    }

    #[test]
    fn tiles_cover_every_sequence_longest_first() {
        // Lengths 1, 0, 130, 64: tiles 1, 0, 3, 1.
        let t = tiles(&[0, 1, 1, 131, 195], 64);
        assert_eq!(t, vec![2, 2, 2, 1, 0, 0, 2, 0, 3, 0]);
        // 128-token tiles: 1, 0, 2, 1.
        let t = tiles(&[0, 1, 1, 131, 195], 128);
        assert_eq!(t, vec![2, 1, 0, 0, 2, 0, 3, 0]);
    }

    /// Walked backwards (as the dk/dv and fused kernels do), the table puts
    /// every sequence's tile j − 1 before its tile j: the fused backward's
    /// key tile j waits for j − 1, which must have started first.
    #[test]
    fn tiles_walked_backwards_are_in_ascending_order_per_sequence() {
        let cu = [0u32, 700, 701, 766, 896, 896, 1409];
        let t = tiles(&cu, 64);
        let pairs: Vec<(u32, u32)> = t.chunks(2).rev().map(|p| (p[0], p[1])).collect();
        for (i, &(s, j)) in pairs.iter().enumerate() {
            if j > 0 {
                let before = pairs.iter().position(|&x| x == (s, j - 1)).expect("every tile below j is there");
                assert!(before < i, "sequence {s}: tile {} at {before}, tile {j} at {i}", j - 1);
            }
        }
    }
}
