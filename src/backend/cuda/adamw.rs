//! AdamW on the GPU (kernels/adamw.cu): fp32 master weights and moments, a
//! bf16 gradient (times an optional clip factor), and the bf16 working copy
//! of the weights written in the same pass.

use super::params::AdamWParams;
use super::{check_len, grid_1d, Bf16, Gpu, Modules};
use crate::backend::AdamWStep;
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{CudaFunction, DevicePtr, DevicePtrMut, PushKernelArg};

super::params::device_repr!(AdamWParams);

pub struct Fns {
    step: CudaFunction,
}

pub(super) fn load(m: &Modules) -> Result<Fns> {
    Ok(Fns { step: m.get("adamw", "adamw_step")? })
}

impl Gpu {
    /// One AdamW step on one tensor, as the CPU reference
    /// (`cpu::optim::adamw`, PyTorch's `torch.optim.AdamW`) computes it, on
    /// the gradient `g · grad_scale` (`grad_scale` is the clipping factor, 1
    /// for none): updates `p32`, `m`, `v` and writes `p16 = bf16(p32)`.
    /// Weight decay is `h.weight_decay`; the caller passes 0 for tensors that
    /// take none (norms, biases).
    #[allow(clippy::too_many_arguments)]
    pub fn adamw(
        &self,
        p32: &mut impl DevicePtrMut<f32>,
        p16: &mut impl DevicePtrMut<Bf16>,
        g: &impl DevicePtr<Bf16>,
        m: &mut impl DevicePtrMut<f32>,
        v: &mut impl DevicePtrMut<f32>,
        h: &AdamWStep,
        grad_scale: f32,
    ) -> Result<()> {
        let n = p32.len();
        for (what, len) in [("p16", p16.len()), ("g", g.len()), ("m", m.len()), ("v", v.len())] {
            check_len(&format!("adamw: {what}"), len, n)?;
        }
        check_len("adamw: p32", n, n)?;
        if h.step < 1 {
            bail!("adamw: steps count from 1 (got {})", h.step);
        }
        if h.step > i32::MAX as u64 {
            bail!("adamw: step {} out of range", h.step);
        }
        // The same scalars, computed the same way, as cpu::optim::adamw.
        let bc1 = 1.0 - (h.beta1 as f64).powi(h.step as i32);
        let bc2 = 1.0 - (h.beta2 as f64).powi(h.step as i32);
        if n == 0 {
            return Ok(());
        }
        let (a, _g1) = p32.device_ptr_mut(&self.stream);
        let (b, _g2) = p16.device_ptr_mut(&self.stream);
        let (c, _g3) = g.device_ptr(&self.stream);
        let (d, _g4) = m.device_ptr_mut(&self.stream);
        let (e, _g5) = v.device_ptr_mut(&self.stream);
        let p = AdamWParams {
            p32: a,
            p16: b,
            g: c,
            m: d,
            v: e,
            n: n as u32,
            beta1: h.beta1,
            beta2: h.beta2,
            one_minus_beta1: 1.0 - h.beta1,
            one_minus_beta2: 1.0 - h.beta2,
            eps: h.eps,
            decay: 1.0 - h.lr * h.weight_decay,
            step_size: (h.lr as f64 / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            grad_scale,
        };
        // SAFETY: all five buffers hold n elements of the kernel's types
        // (checked above); the kernel checks every index against n.
        unsafe { self.stream.launch_builder(&self.k.adamw.step).arg(&p).launch(grid_1d(n)) }
            .map_err(|e| anyhow!("adamw_step: {e}"))?;
        Ok(())
    }
}
