//! SwiGLU on the GPU (kernels/swiglu.cu): `silu(g) · u` and its backward,
//! on flat buffers or on the rows of one product's output that holds the
//! gate in its first half and up in its second (`*_pair`).

use super::elementwise::grid_8;
use super::params::{SwiGluBwdParams, SwiGluFwdParams};
use super::{check_len, Bf16, Gpu, Modules};
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{CudaFunction, DevicePtr, DevicePtrMut, PushKernelArg};

super::params::device_repr!(SwiGluFwdParams, SwiGluBwdParams);

pub struct Fns {
    fwd: CudaFunction,
    bwd: CudaFunction,
}

pub(super) fn load(m: &Modules) -> Result<Fns> {
    Ok(Fns { fwd: m.get("swiglu", "swiglu_fwd")?, bwd: m.get("swiglu", "swiglu_bwd")? })
}

/// The pair layout's checks: `n` elements (out, dout) in whole rows of
/// `cols`, n and the row stride 2·cols within the kernel's 32-bit counts,
/// and each `[rows, 2·cols]` buffer of 2·n elements (it may exceed 32 bits:
/// the kernel indexes it in 64).
fn pair_checks(what: &str, n: usize, cols: usize, pairs: &[(&str, usize)]) -> Result<()> {
    check_len(what, n, n)?;
    if cols == 0 || !n.is_multiple_of(cols) {
        bail!("{what}: {n} elements are not whole rows of {cols}");
    }
    if 2 * cols > u32::MAX as usize {
        bail!("{what}: rows of {cols} do not fit one kernel launch");
    }
    for &(name, len) in pairs {
        if len != 2 * n {
            bail!("{name}: {len} elements, expected {}", 2 * n);
        }
    }
    Ok(())
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
        self.swiglu_fwd_launch(gp, up, n, n, out)
    }

    /// `out[r, c] = silu(gu[r, c]) · gu[r, cols + c]`: `gu` is `[rows, 2·cols]`
    /// (one product's output, gate then up in each row), `out` `[rows, cols]`.
    pub fn swiglu_fwd_pair(
        &self,
        gu: &impl DevicePtr<Bf16>,
        cols: usize,
        out: &mut impl DevicePtrMut<Bf16>,
    ) -> Result<()> {
        let n = out.len();
        pair_checks("swiglu_fwd_pair: out", n, cols, &[("swiglu_fwd_pair: gu", gu.len())])?;
        let (gp, _g1) = gu.device_ptr(&self.stream);
        self.swiglu_fwd_launch(gp, gp + 2 * cols as u64, cols, 2 * cols, out)
    }

    /// The forward's launch: out (n elements) in rows of `cols`, g and u rows `ld` apart.
    fn swiglu_fwd_launch(
        &self,
        gp: u64,
        up: u64,
        cols: usize,
        ld: usize,
        out: &mut impl DevicePtrMut<Bf16>,
    ) -> Result<()> {
        let n = out.len();
        let (op, _g3) = out.device_ptr_mut(&self.stream);
        let p = SwiGluFwdParams { g: gp, u: up, out: op, n: n as u32, cols: cols as u32, ld: ld as u32 };
        // SAFETY: out holds n elements; g and u hold n / cols rows ld apart
        // (checked by the callers: u = g + cols within each row of ld), n
        // and ld fit 32 bits.
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
        let (b, _g2) = g.device_ptr(&self.stream);
        let (c, _g3) = u.device_ptr(&self.stream);
        let (d, _g4) = dg.device_ptr_mut(&self.stream);
        let (e, _g5) = du.device_ptr_mut(&self.stream);
        self.swiglu_bwd_launch(dout, [b, c, d, e], n, n)
    }

    /// The pair layout's backward: overwrites `dgu` (`[rows, 2·cols]`, dg then
    /// du in each row) from `dout` (`[rows, cols]`) and `gu` (as the forward's).
    pub fn swiglu_bwd_pair(
        &self,
        dout: &impl DevicePtr<Bf16>,
        gu: &impl DevicePtr<Bf16>,
        cols: usize,
        dgu: &mut impl DevicePtrMut<Bf16>,
    ) -> Result<()> {
        let n = dout.len();
        let pairs = [("swiglu_bwd_pair: gu", gu.len()), ("swiglu_bwd_pair: dgu", dgu.len())];
        pair_checks("swiglu_bwd_pair: dout", n, cols, &pairs)?;
        let (b, _g2) = gu.device_ptr(&self.stream);
        let (d, _g4) = dgu.device_ptr_mut(&self.stream);
        let up_bytes = 2 * cols as u64; // where each row's second half (up, du) starts
        self.swiglu_bwd_launch(dout, [b, b + up_bytes, d, d + up_bytes], cols, 2 * cols)
    }

    /// The backward's launch: dout (n elements) in rows of `cols`; g, u, dg,
    /// du (`gudd`) rows `ld` apart.
    fn swiglu_bwd_launch(&self, dout: &impl DevicePtr<Bf16>, gudd: [u64; 4], cols: usize, ld: usize) -> Result<()> {
        let n = dout.len();
        let (a, _g1) = dout.device_ptr(&self.stream);
        let [g, u, dg, du] = gudd;
        let p = SwiGluBwdParams { dout: a, g, u, dg, du, n: n as u32, cols: cols as u32, ld: ld as u32 };
        // SAFETY: dout holds n elements; the other four n / cols rows ld
        // apart (checked by the callers: u, du = g, dg + cols within each
        // row of ld), n and ld fit 32 bits.
        unsafe { self.stream.launch_builder(&self.k.swiglu.bwd).arg(&p).launch(grid_8(n)) }
            .map_err(|e| anyhow!("swiglu_bwd: {e}"))?;
        Ok(())
    }
}
