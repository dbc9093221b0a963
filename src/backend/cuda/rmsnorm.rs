//! RMSNorm on the GPU (kernels/rmsnorm.cu): the forward with the fused
//! residual add, the backward with a deterministic weight gradient.

use super::params::{
    RmsNormBwdParams, RmsNormFwdParams, ENGINE_COLSUM_CHUNK, ENGINE_COLSUM_CHUNKS, ENGINE_RMSNORM_BWD_MAX_DIM,
    ENGINE_RMSNORM_BWD_ROWS, ROW_THREADS,
};
use super::{check_len, grid_1d, grid_rows, Bf16, Gpu, Modules};
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

super::params::device_repr!(RmsNormFwdParams, RmsNormBwdParams);

pub struct Fns {
    fwd: CudaFunction,
    bwd: CudaFunction,
    dw_reduce: CudaFunction,
    /// The fast forward and the fast backward's dx, by [`ROW_VARIANTS`].
    fwd_fast: Vec<CudaFunction>,
    dx_fast: Vec<CudaFunction>,
    dw_colsum: CudaFunction,
    dw_spans: CudaFunction,
    /// The fused backward (dx and the dw shares) by [`BWD_VARIANTS`], and
    /// the in-order sum of the shares into dw.
    bwd_fused: Vec<CudaFunction>,
    dw_blocks: CudaFunction,
}

/// The fast row kernels (kernels/rmsnorm.cu): `(W, K)`, a row held by `W`
/// warps with `K` groups of 8 elements per thread, so rows of up to
/// `256·W·K` elements; `W = 1` puts 8 rows in a block of 256, `W = 8` one.
const ROW_VARIANTS: [(u32, u32); 6] = [(1, 1), (1, 2), (1, 4), (1, 8), (8, 2), (8, 4)];

/// The fused backward (kernels/rmsnorm.cu `rmsnorm_bwd_k{K}`): rows of up to
/// `256·K` elements, one warp per row, 32 rows per block of 256.
const BWD_VARIANTS: [u32; 4] = [1, 2, 4, 8];

/// Rows per span of the weight gradient's fixed-order column sum.
const SPAN_ROWS: usize = (ENGINE_COLSUM_CHUNK * ENGINE_COLSUM_CHUNKS) as usize;

pub(super) fn load(m: &Modules) -> Result<Fns> {
    let by = |kind: &str| -> Result<Vec<CudaFunction>> {
        ROW_VARIANTS.iter().map(|(w, k)| m.get("rmsnorm", &format!("rmsnorm_{kind}_w{w}_k{k}"))).collect()
    };
    Ok(Fns {
        fwd: m.get("rmsnorm", "rmsnorm_fwd")?,
        bwd: m.get("rmsnorm", "rmsnorm_bwd")?,
        dw_reduce: m.get("rmsnorm", "rmsnorm_dw_reduce")?,
        fwd_fast: by("fwd")?,
        dx_fast: by("dx")?,
        dw_colsum: m.get("rmsnorm", "rmsnorm_dw_colsum")?,
        dw_spans: m.get("rmsnorm", "rmsnorm_dw_spans")?,
        bwd_fused: BWD_VARIANTS
            .iter()
            .map(|k| m.get("rmsnorm", &format!("rmsnorm_bwd_k{k}")))
            .collect::<Result<_>>()?,
        dw_blocks: m.get("rmsnorm", "rmsnorm_dw_blocks")?,
    })
}

/// The fast row kernel for rows of `dim` and its grid over `rows`, or
/// `None` when a row is too wide for them (the simple kernels then run).
fn row_variant(dim: usize, rows: usize) -> Option<(usize, LaunchConfig)> {
    let groups = dim.div_ceil(8);
    let i = ROW_VARIANTS.iter().position(|&(w, k)| groups <= (32 * w * k) as usize)?;
    let rows_per_block = 8 / ROW_VARIANTS[i].0 as usize;
    Some((i, grid_rows(rows.div_ceil(rows_per_block), ROW_THREADS)))
}

impl Gpu {
    /// `y = rmsnorm(x) · w` per row of `w.len()`, with the row's `rstd`.
    /// With `residual = Some((r, h))`: `h = x + r` first, and `h` is normalised.
    pub fn rmsnorm_fwd(
        &self,
        x: &impl DevicePtr<Bf16>,
        residual: Option<(&CudaSlice<Bf16>, &mut CudaSlice<Bf16>)>,
        w: &impl DevicePtr<Bf16>,
        eps: f32,
        y: &mut impl DevicePtrMut<Bf16>,
        rstd: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        self.rmsnorm_fwd_with(true, x, residual, w, eps, y, rstd)
    }

    /// [`Gpu::rmsnorm_fwd`] by the simple kernel (one block per row, scalar
    /// accesses): the obviously correct version, for tests.
    pub fn rmsnorm_fwd_reference(
        &self,
        x: &impl DevicePtr<Bf16>,
        residual: Option<(&CudaSlice<Bf16>, &mut CudaSlice<Bf16>)>,
        w: &impl DevicePtr<Bf16>,
        eps: f32,
        y: &mut impl DevicePtrMut<Bf16>,
        rstd: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        self.rmsnorm_fwd_with(false, x, residual, w, eps, y, rstd)
    }

    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_fwd_with(
        &self,
        fast: bool,
        x: &impl DevicePtr<Bf16>,
        residual: Option<(&CudaSlice<Bf16>, &mut CudaSlice<Bf16>)>,
        w: &impl DevicePtr<Bf16>,
        eps: f32,
        y: &mut impl DevicePtrMut<Bf16>,
        rstd: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        let dim = w.len();
        let rows = rstd.len();
        check_len("rmsnorm_fwd: x", x.len(), rows * dim)?;
        check_len("rmsnorm_fwd: y", y.len(), rows * dim)?;
        let (xp, _g1) = x.device_ptr(&self.stream);
        let (wp, _g2) = w.device_ptr(&self.stream);
        let (yp, _g3) = y.device_ptr_mut(&self.stream);
        let (rp, _g4) = rstd.device_ptr_mut(&self.stream);
        let mut p = RmsNormFwdParams {
            x: xp,
            residual: 0,
            h: 0,
            w: wp,
            y: yp,
            rstd: rp,
            rows: rows as u32,
            dim: dim as u32,
            eps,
        };
        let guards = match residual {
            Some((r, h)) => {
                check_len("rmsnorm_fwd: residual", r.len(), rows * dim)?;
                check_len("rmsnorm_fwd: h", h.len(), rows * dim)?;
                let (a, ga) = r.device_ptr(&self.stream);
                let (b, gb) = h.device_ptr_mut(&self.stream);
                (p.residual, p.h) = (a, b);
                Some((ga, gb))
            }
            None => None,
        };
        let (f, cfg) = match row_variant(dim, rows) {
            Some((i, cfg)) if fast => (&self.k.rmsnorm.fwd_fast[i], cfg),
            _ => (&self.k.rmsnorm.fwd, grid_rows(rows, ROW_THREADS)),
        };
        // SAFETY: every pointer covers rows × dim elements (checked above);
        // the fast kernels hold rows of up to 256·W·K elements (row_variant)
        // and use 16-byte accesses only where every row starts 16-byte aligned.
        unsafe { self.stream.launch_builder(f).arg(&p).launch(cfg) }.map_err(|e| anyhow!("rmsnorm_fwd: {e}"))?;
        drop(guards);
        Ok(())
    }

    /// `dx (+)= ∂L/∂x`, `dw += ∂L/∂w`; `scratch` holds the weight-gradient
    /// shares (fp32, at least `ceil(rows/32)·dim`, all of it used for rows of
    /// up to 2048; wider rows use `ceil(rows/4096)·dim`, none for rows ≤
    /// 4096). `dw` is summed in a fixed order (kernels/include/rmsnorm.h:
    /// per 32-row shares for rows of up to 2048, else the ENGINE_COLSUM
    /// order of kernels/include/rows.h): the same bits on every run and GPU.
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_bwd(
        &self,
        dy: &impl DevicePtr<Bf16>,
        x: &impl DevicePtr<Bf16>,
        w: &impl DevicePtr<Bf16>,
        rstd: &impl DevicePtr<f32>,
        dx: &mut impl DevicePtrMut<Bf16>,
        accumulate_dx: bool,
        dw: &mut impl DevicePtrMut<Bf16>,
        scratch: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        self.rmsnorm_bwd_with(true, dy, x, w, rstd, dx, accumulate_dx, dw, scratch)
    }

    /// [`Gpu::rmsnorm_bwd`] by the simple kernels (a block per 32 rows,
    /// scalar accesses, `dw` summed per block then across blocks in order):
    /// the obviously correct version, for tests. Its `dw` sums in another
    /// order than the fast path's, so the two agree to rounding, not bits.
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_bwd_reference(
        &self,
        dy: &impl DevicePtr<Bf16>,
        x: &impl DevicePtr<Bf16>,
        w: &impl DevicePtr<Bf16>,
        rstd: &impl DevicePtr<f32>,
        dx: &mut impl DevicePtrMut<Bf16>,
        accumulate_dx: bool,
        dw: &mut impl DevicePtrMut<Bf16>,
        scratch: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        self.rmsnorm_bwd_with(false, dy, x, w, rstd, dx, accumulate_dx, dw, scratch)
    }

    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_bwd_with(
        &self,
        fast: bool,
        dy: &impl DevicePtr<Bf16>,
        x: &impl DevicePtr<Bf16>,
        w: &impl DevicePtr<Bf16>,
        rstd: &impl DevicePtr<f32>,
        dx: &mut impl DevicePtrMut<Bf16>,
        accumulate_dx: bool,
        dw: &mut impl DevicePtrMut<Bf16>,
        scratch: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        let (dim, rows) = (w.len(), rstd.len());
        for (what, len) in [("dy", dy.len()), ("x", x.len()), ("dx", dx.len())] {
            check_len(&format!("rmsnorm_bwd: {what}"), len, rows * dim)?;
        }
        check_len("rmsnorm_bwd: dw", dw.len(), dim)?;
        // A fixed split of rows into blocks: the result does not depend on the GPU.
        let rows_per_block = 32usize;
        let blocks = rows.div_ceil(rows_per_block).max(1);
        if scratch.len() < blocks * dim {
            anyhow::bail!("rmsnorm_bwd: scratch of {} floats, needs {}", scratch.len(), blocks * dim);
        }
        let (a, _g1) = dy.device_ptr(&self.stream);
        let (b, _g2) = x.device_ptr(&self.stream);
        let (c, _g3) = w.device_ptr(&self.stream);
        let (d, _g4) = rstd.device_ptr(&self.stream);
        let (e, _g5) = dx.device_ptr_mut(&self.stream);
        let (f, _g6) = scratch.device_ptr_mut(&self.stream);
        let (g, _g7) = dw.device_ptr_mut(&self.stream);
        let p = RmsNormBwdParams {
            dy: a,
            x: b,
            w: c,
            rstd: d,
            dx: e,
            dw_partial: f,
            dw: g,
            rows: rows as u32,
            dim: dim as u32,
            rows_per_block: rows_per_block as u32,
            accumulate_dx: accumulate_dx as u32,
        };
        if fast && dim <= ENGINE_RMSNORM_BWD_MAX_DIM as usize {
            // The fused pass: a block per 32 rows writes dx and its dw share
            // (scratch[b], b < blocks), then a block per 32 columns adds the
            // shares into dw in order.
            debug_assert_eq!(rows_per_block, ENGINE_RMSNORM_BWD_ROWS as usize);
            let i = BWD_VARIANTS.iter().position(|&k| dim <= 256 * k as usize).expect("dim ≤ 2048");
            let cfg = grid_rows(blocks, ROW_THREADS);
            // SAFETY: dy, x, dx hold rows × dim, rstd rows, w dim (checked
            // above); dw_partial holds blocks × dim (checked above); a lane
            // touches columns < dim only (K groups of 8 cover dim ≤ 256·K),
            // rows < rows only, and 16-byte accesses happen only where every
            // row starts 16-byte aligned.
            unsafe { self.stream.launch_builder(&self.k.rmsnorm.bwd_fused[i]).arg(&p).launch(cfg) }
                .map_err(|e| anyhow!("rmsnorm_bwd: {e}"))?;
            let cfg = grid_rows(dim.div_ceil(32), ROW_THREADS);
            // SAFETY: as above; reads the blocks × dim shares, writes dw (dim).
            unsafe { self.stream.launch_builder(&self.k.rmsnorm.dw_blocks).arg(&p).launch(cfg) }
                .map_err(|e| anyhow!("rmsnorm_dw_blocks: {e}"))?;
            return Ok(());
        }
        let variant = if fast { row_variant(dim, rows) } else { None };
        let Some((i, cfg)) = variant else {
            let cfg = grid_rows(blocks, ROW_THREADS);
            // SAFETY: sizes checked above; dw_partial covers blocks × dim.
            unsafe { self.stream.launch_builder(&self.k.rmsnorm.bwd).arg(&p).launch(cfg) }
                .map_err(|e| anyhow!("rmsnorm_bwd: {e}"))?;
            // SAFETY: as above; one thread per column of dw.
            unsafe { self.stream.launch_builder(&self.k.rmsnorm.dw_reduce).arg(&p).launch(grid_1d(dim)) }
                .map_err(|e| anyhow!("rmsnorm_dw_reduce: {e}"))?;
            return Ok(());
        };
        // SAFETY: sizes checked above; the kernel holds rows of up to
        // 256·W·K elements (row_variant) and uses 16-byte accesses only where
        // every row starts 16-byte aligned.
        unsafe { self.stream.launch_builder(&self.k.rmsnorm.dx_fast[i]).arg(&p).launch(cfg) }
            .map_err(|e| anyhow!("rmsnorm_bwd (dx): {e}"))?;
        // dw: a block of 256 per 8 columns; one span of rows per block in y
        // when there are several (their sums go to scratch, then in order
        // into dw), else one launch that walks the rows.
        let spans = rows.div_ceil(SPAN_ROWS);
        let col_blocks = dim.div_ceil(8).max(1);
        if spans > 65535 {
            bail!("rmsnorm_bwd: {rows} rows do not fit one launch's grid");
        }
        let split = spans > 1;
        let cfg = LaunchConfig {
            grid_dim: (col_blocks as u32, if split { spans as u32 } else { 1 }, 1),
            block_dim: (ENGINE_COLSUM_CHUNKS, 1, 1),
            shared_mem_bytes: 0,
        };
        debug_assert!(spans * dim <= blocks * dim, "the span sums fit the scratch");
        // SAFETY: dy, x hold rows × dim, rstd rows, dw dim; with `split`,
        // dw_partial is written at spans × dim ≤ ceil(rows/32) × dim (checked
        // above); every index is checked against rows and dim.
        unsafe { self.stream.launch_builder(&self.k.rmsnorm.dw_colsum).arg(&p).launch(cfg) }
            .map_err(|e| anyhow!("rmsnorm_dw_colsum: {e}"))?;
        if split {
            // SAFETY: as above; one thread per column reads the spans × dim sums.
            unsafe { self.stream.launch_builder(&self.k.rmsnorm.dw_spans).arg(&p).launch(grid_1d(dim)) }
                .map_err(|e| anyhow!("rmsnorm_dw_spans: {e}"))?;
        }
        Ok(())
    }
}
