//! Distillation on the GPU (kernels/distill.cu), the twin of
//! `cpu::distill::distill_row` (DESIGN.md §4.6): per row of bf16 student and
//! teacher logits, the divergence into `loss` and its gradient times the
//! row's weight written over the student's logits, fp32 math, deterministic.
//!
//! Two kernels per mode: the split kernels, where several blocks share a row
//! and hold it in registers (each logit read once), and the row kernels, one
//! block per row (each logit read twice), for rows whose student and teacher
//! sit at different 16-byte phases and as the simple version the tests hold
//! the split kernels to ([`DistillKernel`]).

use super::params::{
    DistillParams, ENGINE_DISTILL_SPLIT_THREADS as SPLIT_THREADS, ENGINE_DISTILL_SPLIT_VECS as SPLIT_VECS, ROW_THREADS,
};
use super::{check_len, grid_rows, Bf16, Gpu, Modules};
use crate::loss::DistillMode;
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{CudaFunction, DevicePtr, DevicePtrMut, PushKernelArg};

super::params::device_repr!(DistillParams);

/// A mode's kernels: the row kernel and the split kernel.
struct Pair {
    row: CudaFunction,
    split: CudaFunction,
}

pub struct Fns {
    forward: Pair,
    reverse: Pair,
    jsd: Pair,
}

pub(super) fn load(m: &Modules) -> Result<Fns> {
    let pair = |mode: &str| -> Result<Pair> {
        Ok(Pair {
            row: m.get("distill", &format!("distill_{mode}"))?,
            split: m.get("distill", &format!("distill_split_{mode}"))?,
        })
    };
    Ok(Fns { forward: pair("forward")?, reverse: pair("reverse")?, jsd: pair("jsd")? })
}

/// Which distillation kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DistillKernel {
    /// The split kernel where it can run (student and teacher rows at the
    /// same 16-byte phase, a row's blocks few enough to be resident at once),
    /// else the row kernel.
    Auto,
    /// One block per row.
    Row,
    /// Several blocks per row (an error where it cannot run).
    Split,
}

/// Blocks per row of the split kernels: enough for `vocab / 8` vectors at
/// SPLIT_VECS per thread (tools/kernel_emu/distill.cpp sizes them the same).
pub fn split_chunks(vocab: usize) -> usize {
    (vocab / 8).div_ceil((SPLIT_THREADS * SPLIT_VECS) as usize).max(1)
}

/// The split kernels' scratch in 4-byte words: a ticket counter, an error
/// word and a counter per row (zeroed at each launch), then, 8-byte aligned,
/// per block 24 bytes of statistics and 16 of sums (kernels/include/distill.h).
fn split_scratch_words(rows: usize, chunks: usize) -> (usize, usize) {
    let counters = 2 + rows;
    (counters, counters.next_multiple_of(2) + rows * chunks * 10)
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
        self.distill_with(DistillKernel::Auto, student, teacher, vocab, mode, inv_temp, weight, loss)
    }

    /// [`distill`](Self::distill) on the given kernel (for tests and
    /// benchmarks; the checks and launches of every distillation).
    #[allow(clippy::too_many_arguments)]
    pub fn distill_with(
        &self,
        how: DistillKernel,
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
        let (pair, beta) = match mode {
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
        // Every row of the student and of the teacher starts at the same
        // offset mod 16 (rows advance both by 2·vocab bytes) iff the first does.
        let chunks = split_chunks(vocab);
        let same_phase = (sp ^ tp) & 15 == 0;
        // A row's blocks wait for each other: the split kernel needs them
        // resident at once, which one block per SM guarantees.
        let fits = chunks <= self.sms && rows * chunks <= i32::MAX as usize;
        let split = match how {
            DistillKernel::Auto => same_phase && fits,
            DistillKernel::Row => false,
            DistillKernel::Split if !same_phase => {
                bail!("distill: the split kernel needs the student's and the teacher's rows at the same 16-byte phase")
            }
            DistillKernel::Split if !fits => {
                bail!("distill: {chunks} blocks per row of {vocab} do not fit the GPU at once ({} SMs)", self.sms)
            }
            DistillKernel::Split => true,
        };
        let scratch = if split {
            let (zeroed, words) = split_scratch_words(rows, chunks);
            self.distill_scratch.get_zeroed_prefix(self, "distill: scratch", words, zeroed)?
        } else {
            0
        };
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
            scratch,
            chunks: chunks as u32,
        };
        let (f, cfg) = if split {
            (&pair.split, grid_rows(rows * chunks, SPLIT_THREADS))
        } else {
            (&pair.row, grid_rows(rows, ROW_THREADS))
        };
        // SAFETY: student and teacher hold rows × vocab elements, weight and
        // loss rows (checked above), the split kernel's scratch the words
        // split_scratch_words gives, its first part zeroed; the kernels touch
        // nothing else.
        unsafe { self.stream.launch_builder(f).arg(&p).launch(cfg) }.map_err(|e| anyhow!("distill: {e}"))?;
        Ok(())
    }
}
