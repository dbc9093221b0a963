//! Distillation on the GPU (kernels/distill.cu), the twin of
//! `cpu::distill::distill_row` (DESIGN.md §4.6): per row of bf16 student and
//! teacher logits, the divergence into `loss` and its gradient times the
//! row's weight written over the student's logits, fp32 math, one block per
//! row, deterministic.

use super::params::{DistillParams, ROW_THREADS};
use super::{check_len, grid_rows, Bf16, Gpu, Modules};
use crate::loss::DistillMode;
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{CudaFunction, DevicePtr, DevicePtrMut, PushKernelArg};

super::params::device_repr!(DistillParams);

pub struct Fns {
    forward: CudaFunction,
    reverse: CudaFunction,
    jsd: CudaFunction,
}

pub(super) fn load(m: &Modules) -> Result<Fns> {
    Ok(Fns {
        forward: m.get("distill", "distill_forward")?,
        reverse: m.get("distill", "distill_reverse")?,
        jsd: m.get("distill", "distill_jsd")?,
    })
}

impl Gpu {
    /// Per row of `vocab` logits (`rows = weight.len()`), with the student's
    /// and the teacher's distributions `softmax(z·inv_temp)`: the divergence
    /// of `mode` into `loss[row]` and `weight[row]·∂D/∂z_s` written over
    /// `student` (a row of weight 0 is zeroed, its divergence still written),
    /// as `cpu::distill::distill_row` computes them. `student`, `teacher`:
    /// bf16 `[rows, vocab]`; `weight`, `loss`: fp32 `[rows]`.
    #[allow(clippy::too_many_arguments)]
    pub fn distill(
        &self,
        student: &mut impl DevicePtrMut<Bf16>,
        teacher: &impl DevicePtr<Bf16>,
        vocab: usize,
        mode: DistillMode,
        inv_temp: f32,
        weight: &impl DevicePtr<f32>,
        loss: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        let rows = weight.len();
        if vocab == 0 {
            bail!("distill: vocab is 0");
        }
        if rows > i32::MAX as usize {
            bail!("distill: {rows} rows do not fit one launch");
        }
        check_len("distill: student", student.len(), rows * vocab)?;
        check_len("distill: teacher", teacher.len(), rows * vocab)?;
        check_len("distill: loss", loss.len(), rows)?;
        // TRL's convention, as the CPU: JSD with β = 0 is the forward KL, with β = 1 the reverse.
        let (f, beta) = match mode {
            DistillMode::Forward | DistillMode::Jsd { beta: 0.0 } => (&self.k.distill.forward, 0.0f32),
            DistillMode::Reverse | DistillMode::Jsd { beta: 1.0 } => (&self.k.distill.reverse, 1.0),
            DistillMode::Jsd { beta } => (&self.k.distill.jsd, beta as f32),
        };
        if rows == 0 {
            return Ok(());
        }
        let (sp, _g1) = student.device_ptr_mut(&self.stream);
        let (tp, _g2) = teacher.device_ptr(&self.stream);
        let (wp, _g3) = weight.device_ptr(&self.stream);
        let (lp, _g4) = loss.device_ptr_mut(&self.stream);
        let p = DistillParams {
            student: sp,
            teacher: tp,
            weight: wp,
            loss: lp,
            rows: rows as u32,
            vocab: vocab as u32,
            inv_temp,
            beta,
            // In f32, as the CPU computes them.
            log_beta: beta.ln(),
            log_1m_beta: (1.0 - beta).ln(),
        };
        // SAFETY: student and teacher hold rows × vocab elements, weight and
        // loss rows (checked above); the kernel touches nothing else.
        unsafe { self.stream.launch_builder(f).arg(&p).launch(grid_rows(rows, ROW_THREADS)) }
            .map_err(|e| anyhow!("distill: {e}"))?;
        Ok(())
    }
}
