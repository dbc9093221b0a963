//! RMSNorm on the GPU (kernels/rmsnorm.cu): the forward with the fused
//! residual add, the backward with a deterministic weight gradient.

use super::params::{RmsNormBwdParams, RmsNormFwdParams, ROW_THREADS};
use super::{check_len, grid_1d, grid_rows, Bf16, Gpu, Modules};
use anyhow::{anyhow, Result};
use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, DevicePtrMut, PushKernelArg};

super::params::device_repr!(RmsNormFwdParams, RmsNormBwdParams);

pub struct Fns {
    fwd: CudaFunction,
    bwd: CudaFunction,
    dw_reduce: CudaFunction,
}

pub(super) fn load(m: &Modules) -> Result<Fns> {
    Ok(Fns {
        fwd: m.get("rmsnorm", "rmsnorm_fwd")?,
        bwd: m.get("rmsnorm", "rmsnorm_bwd")?,
        dw_reduce: m.get("rmsnorm", "rmsnorm_dw_reduce")?,
    })
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
        // SAFETY: every pointer covers rows × dim elements (checked above).
        unsafe { self.stream.launch_builder(&self.k.rmsnorm.fwd).arg(&p).launch(grid_rows(rows, ROW_THREADS)) }
            .map_err(|e| anyhow!("rmsnorm_fwd: {e}"))?;
        drop(guards);
        Ok(())
    }

    /// `dx (+)= ∂L/∂x`, `dw += ∂L/∂w`; `scratch` holds the per-block
    /// weight-gradient shares (fp32, at least `ceil(rows/rows_per_block)·dim`).
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
        let cfg = grid_rows(blocks, ROW_THREADS);
        // SAFETY: sizes checked above; dw_partial covers blocks × dim.
        unsafe { self.stream.launch_builder(&self.k.rmsnorm.bwd).arg(&p).launch(cfg) }
            .map_err(|e| anyhow!("rmsnorm_bwd: {e}"))?;
        // SAFETY: as above; one thread per column of dw.
        unsafe { self.stream.launch_builder(&self.k.rmsnorm.dw_reduce).arg(&p).launch(grid_1d(dim)) }
            .map_err(|e| anyhow!("rmsnorm_dw_reduce: {e}"))?;
        Ok(())
    }
}
