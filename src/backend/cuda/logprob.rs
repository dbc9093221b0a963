//! Log-probabilities on the GPU (kernels/logprob.cu), the twins of
//! `cpu::logprob`: the forward (`logp`, `lse`, optional entropy) in one
//! online pass over each row of logits, and the backward that writes `dz`
//! over the logits in place (DESIGN.md §4.1, §3's two phases). Logits are
//! bf16 or fp32 ([`LogitElem`]); the math is fp32 either way.
//!
//! A target outside the vocabulary that is not [`IGNORE`](crate::backend::IGNORE)
//! is not an error flag here: the forward writes `logp = NaN` for its row and
//! the backward writes NaN over the row's `dz`, so the loss and the gradient
//! norm show it.
//!
//! [`Gpu::logprob_fwd`] and [`Gpu::logprob_bwd`] run the fast kernels (16-byte
//! vectors, ex2.approx exponentials); [`Gpu::logprob_fwd_reference`] and
//! [`Gpu::logprob_bwd_reference`] run the simple scalar ones, kept as the
//! twins the fast kernels are tested against. Same arguments, same results to
//! fp32 rounding (not the same bits).

use super::params::{LogprobBwdParams, LogprobFwdParams, ROW_THREADS};
use super::{check_len, grid_rows, Bf16, Gpu, Modules};
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{CudaFunction, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, PushKernelArg};

super::params::device_repr!(LogprobFwdParams, LogprobBwdParams);

/// An element type the log-probability kernels read logits in (and write
/// their gradient in): bf16 or fp32.
pub trait LogitElem: cudarc::driver::DeviceRepr {
    /// The kernels' `fp32` flag.
    const FP32: u32;
}
impl LogitElem for Bf16 {
    const FP32: u32 = 0;
}
impl LogitElem for f32 {
    const FP32: u32 = 1;
}

pub struct Fns {
    fwd: CudaFunction,
    bwd: CudaFunction,
    fwd_reference: CudaFunction,
    bwd_reference: CudaFunction,
}

pub(super) fn load(m: &Modules) -> Result<Fns> {
    Ok(Fns {
        fwd: m.get("logprob", "logprob_fwd")?,
        bwd: m.get("logprob", "logprob_bwd")?,
        fwd_reference: m.get("logprob", "logprob_fwd_reference")?,
        bwd_reference: m.get("logprob", "logprob_bwd_reference")?,
    })
}

/// `rows` (one block each) and `vocab` fit one launch.
fn check_shape(what: &str, rows: usize, vocab: usize) -> Result<()> {
    if vocab == 0 {
        bail!("{what}: vocab is 0");
    }
    if rows > i32::MAX as usize {
        bail!("{what}: {rows} rows do not fit one launch");
    }
    Ok(())
}

impl Gpu {
    /// Per row of `vocab` logits (bf16 or fp32; `rows = targets.len()`), with `s = z·inv_temp`:
    /// `lse = log Σ exp(s)`, `logp = s[y] − lse` (0 where the target is
    /// `IGNORE`, NaN where it is outside the vocabulary), and with `entropy`
    /// `H = lse − Σ softmax(s)·s`. `logp`, `lse`, `entropy`: fp32 `[rows]`.
    #[allow(clippy::too_many_arguments)]
    pub fn logprob_fwd<T: LogitElem>(
        &self,
        logits: &impl DevicePtr<T>,
        targets: &impl DevicePtr<u32>,
        vocab: usize,
        inv_temp: f32,
        logp: &mut impl DevicePtrMut<f32>,
        lse: &mut impl DevicePtrMut<f32>,
        entropy: Option<&mut CudaViewMut<'_, f32>>,
    ) -> Result<()> {
        self.launch_logprob_fwd(&self.k.logprob.fwd, logits, targets, vocab, inv_temp, logp, lse, entropy)
    }

    /// [`Gpu::logprob_fwd`] on the simple scalar kernel (the fast one's twin in tests).
    #[allow(clippy::too_many_arguments)]
    pub fn logprob_fwd_reference<T: LogitElem>(
        &self,
        logits: &impl DevicePtr<T>,
        targets: &impl DevicePtr<u32>,
        vocab: usize,
        inv_temp: f32,
        logp: &mut impl DevicePtrMut<f32>,
        lse: &mut impl DevicePtrMut<f32>,
        entropy: Option<&mut CudaViewMut<'_, f32>>,
    ) -> Result<()> {
        self.launch_logprob_fwd(&self.k.logprob.fwd_reference, logits, targets, vocab, inv_temp, logp, lse, entropy)
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_logprob_fwd<T: LogitElem>(
        &self,
        f: &CudaFunction,
        logits: &impl DevicePtr<T>,
        targets: &impl DevicePtr<u32>,
        vocab: usize,
        inv_temp: f32,
        logp: &mut impl DevicePtrMut<f32>,
        lse: &mut impl DevicePtrMut<f32>,
        entropy: Option<&mut CudaViewMut<'_, f32>>,
    ) -> Result<()> {
        let rows = targets.len();
        check_shape("logprob_fwd", rows, vocab)?;
        check_len("logprob_fwd: logits", logits.len(), rows * vocab)?;
        check_len("logprob_fwd: logp", logp.len(), rows)?;
        check_len("logprob_fwd: lse", lse.len(), rows)?;
        if let Some(h) = &entropy {
            check_len("logprob_fwd: entropy", h.len(), rows)?;
        }
        if rows == 0 {
            return Ok(());
        }
        let (zp, _g1) = logits.device_ptr(&self.stream);
        let (tp, _g2) = targets.device_ptr(&self.stream);
        let (lpp, _g3) = logp.device_ptr_mut(&self.stream);
        let (lsp, _g4) = lse.device_ptr_mut(&self.stream);
        let (hp, _g5) = match entropy {
            Some(h) => {
                let (a, g) = h.device_ptr_mut(&self.stream);
                (a, Some(g))
            }
            None => (0, None),
        };
        let p = LogprobFwdParams {
            logits: zp,
            targets: tp,
            logp: lpp,
            lse: lsp,
            entropy: hp,
            rows: rows as u32,
            vocab: vocab as u32,
            inv_temp,
            fp32: T::FP32,
        };
        // SAFETY: logits hold rows × vocab elements, targets, logp, lse and
        // entropy (when non-zero) rows (checked above); the kernel reads a
        // target's logit only when the target is below vocab.
        unsafe { self.stream.launch_builder(f).arg(&p).launch(grid_rows(rows, ROW_THREADS)) }
            .map_err(|e| anyhow!("logprob_fwd: {e}"))?;
        Ok(())
    }

    /// Overwrites the logits (bf16 or fp32) with `dz = coef·(onehot(y) − p)/T` per row
    /// (`rows = targets.len()`, `p = softmax(z·inv_temp)`, `lse` from
    /// [`Gpu::logprob_fwd`]; an `IGNORE` row has no one-hot term), plus with
    /// `entropy = Some((ent_coef, h))` the term `−ent_coef·p∘(z/T − lse + h)/T`.
    /// A row whose target is outside the vocabulary is written with NaN.
    #[allow(clippy::too_many_arguments)]
    pub fn logprob_bwd<T: LogitElem>(
        &self,
        logits: &mut impl DevicePtrMut<T>,
        targets: &impl DevicePtr<u32>,
        vocab: usize,
        inv_temp: f32,
        lse: &impl DevicePtr<f32>,
        coef: &impl DevicePtr<f32>,
        entropy: Option<(&CudaView<'_, f32>, &CudaView<'_, f32>)>,
    ) -> Result<()> {
        self.launch_logprob_bwd(&self.k.logprob.bwd, logits, targets, vocab, inv_temp, lse, coef, entropy)
    }

    /// [`Gpu::logprob_bwd`] on the simple scalar kernel (the fast one's twin in tests).
    #[allow(clippy::too_many_arguments)]
    pub fn logprob_bwd_reference<T: LogitElem>(
        &self,
        logits: &mut impl DevicePtrMut<T>,
        targets: &impl DevicePtr<u32>,
        vocab: usize,
        inv_temp: f32,
        lse: &impl DevicePtr<f32>,
        coef: &impl DevicePtr<f32>,
        entropy: Option<(&CudaView<'_, f32>, &CudaView<'_, f32>)>,
    ) -> Result<()> {
        self.launch_logprob_bwd(&self.k.logprob.bwd_reference, logits, targets, vocab, inv_temp, lse, coef, entropy)
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_logprob_bwd<T: LogitElem>(
        &self,
        f: &CudaFunction,
        logits: &mut impl DevicePtrMut<T>,
        targets: &impl DevicePtr<u32>,
        vocab: usize,
        inv_temp: f32,
        lse: &impl DevicePtr<f32>,
        coef: &impl DevicePtr<f32>,
        entropy: Option<(&CudaView<'_, f32>, &CudaView<'_, f32>)>,
    ) -> Result<()> {
        let rows = targets.len();
        check_shape("logprob_bwd", rows, vocab)?;
        check_len("logprob_bwd: logits", logits.len(), rows * vocab)?;
        check_len("logprob_bwd: lse", lse.len(), rows)?;
        check_len("logprob_bwd: coef", coef.len(), rows)?;
        if let Some((e, h)) = entropy {
            check_len("logprob_bwd: ent_coef", e.len(), rows)?;
            check_len("logprob_bwd: entropy", h.len(), rows)?;
        }
        if rows == 0 {
            return Ok(());
        }
        let (zp, _g1) = logits.device_ptr_mut(&self.stream);
        let (tp, _g2) = targets.device_ptr(&self.stream);
        let (lp, _g3) = lse.device_ptr(&self.stream);
        let (cp, _g4) = coef.device_ptr(&self.stream);
        let (ep, hp, _g5) = match entropy {
            Some((e, h)) => {
                let (a, ga) = e.device_ptr(&self.stream);
                let (b, gb) = h.device_ptr(&self.stream);
                (a, b, Some((ga, gb)))
            }
            None => (0, 0, None),
        };
        let p = LogprobBwdParams {
            logits: zp,
            targets: tp,
            lse: lp,
            coef: cp,
            ent_coef: ep,
            entropy: hp,
            rows: rows as u32,
            vocab: vocab as u32,
            inv_temp,
            fp32: T::FP32,
        };
        // SAFETY: logits hold rows × vocab elements (of T), targets, lse, coef and
        // (both or neither) ent_coef and entropy rows (checked above).
        unsafe { self.stream.launch_builder(f).arg(&p).launch(grid_rows(rows, ROW_THREADS)) }
            .map_err(|e| anyhow!("logprob_bwd: {e}"))?;
        Ok(())
    }
}
