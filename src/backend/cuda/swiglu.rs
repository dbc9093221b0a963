//! SwiGLU on the GPU (kernels/swiglu.cu): `silu(g) · u` and its backward.

use super::elementwise::grid_8;
use super::params::{SwiGluBwdParams, SwiGluFwdParams};
use super::{check_len, Bf16, Gpu, Modules};
use anyhow::{anyhow, Result};
use cudarc::driver::{CudaFunction, DevicePtr, DevicePtrMut, PushKernelArg};

super::params::device_repr!(SwiGluFwdParams, SwiGluBwdParams);

pub struct Fns {
    fwd: CudaFunction,
    bwd: CudaFunction,
}

pub(super) fn load(m: &Modules) -> Result<Fns> {
    Ok(Fns { fwd: m.get("swiglu", "swiglu_fwd")?, bwd: m.get("swiglu", "swiglu_bwd")? })
}

impl Gpu {
    /// `out = silu(g) · u`, elementwise.
    pub fn swiglu_fwd(
        &self,
        g: &impl DevicePtr<Bf16>,
        u: &impl DevicePtr<Bf16>,
        out: &mut impl DevicePtrMut<Bf16>,
    ) -> Result<()> {
        let n = g.len();
        check_len("swiglu_fwd: g", n, n)?; // n fits a 32-bit count
        check_len("swiglu_fwd: u", u.len(), n)?;
        check_len("swiglu_fwd: out", out.len(), n)?;
        let (gp, _g1) = g.device_ptr(&self.stream);
        let (up, _g2) = u.device_ptr(&self.stream);
        let (op, _g3) = out.device_ptr_mut(&self.stream);
        let p = SwiGluFwdParams { g: gp, u: up, out: op, n: n as u32 };
        // SAFETY: g, u and out hold n elements each (checked above).
        unsafe { self.stream.launch_builder(&self.k.swiglu.fwd).arg(&p).launch(grid_8(n)) }
            .map_err(|e| anyhow!("swiglu_fwd: {e}"))?;
        Ok(())
    }

    /// Overwrites `dg = dout · u · silu'(g)` and `du = dout · silu(g)`.
    pub fn swiglu_bwd(
        &self,
        dout: &impl DevicePtr<Bf16>,
        g: &impl DevicePtr<Bf16>,
        u: &impl DevicePtr<Bf16>,
        dg: &mut impl DevicePtrMut<Bf16>,
        du: &mut impl DevicePtrMut<Bf16>,
    ) -> Result<()> {
        let n = dout.len();
        check_len("swiglu_bwd: dout", n, n)?; // n fits a 32-bit count
        for (what, len) in [("g", g.len()), ("u", u.len()), ("dg", dg.len()), ("du", du.len())] {
            check_len(&format!("swiglu_bwd: {what}"), len, n)?;
        }
        let (a, _g1) = dout.device_ptr(&self.stream);
        let (b, _g2) = g.device_ptr(&self.stream);
        let (c, _g3) = u.device_ptr(&self.stream);
        let (d, _g4) = dg.device_ptr_mut(&self.stream);
        let (e, _g5) = du.device_ptr_mut(&self.stream);
        let p = SwiGluBwdParams { dout: a, g: b, u: c, dg: d, du: e, n: n as u32 };
        // SAFETY: the five buffers hold n elements each (checked above).
        unsafe { self.stream.launch_builder(&self.k.swiglu.bwd).arg(&p).launch(grid_8(n)) }
            .map_err(|e| anyhow!("swiglu_bwd: {e}"))?;
        Ok(())
    }
}
