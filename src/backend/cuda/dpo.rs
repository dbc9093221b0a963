//! DPO's per-token coefficient pass on the GPU (kernels/dpo.cu), the twin
//! of [`crate::loss::dpo_loss`]: one block per (chosen, rejected) pair, the
//! sequence sums in a fixed order, the per-pair arithmetic shared with the
//! CPU emulation through `kernels/include/dpo.h`; each pair's loss share and
//! rewards in one row of `pair_out`, summed on the host in order by
//! [`crate::loss::dpo::dpo_stats_from_rows`].

use super::params::{DpoParams, ENGINE_DPO_STATS, ENGINE_DPO_THREADS};
use super::{check_len, grid_rows, Gpu, Modules};
use crate::loss::dpo::DpoKernelSettings;
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{CudaFunction, DevicePtr, DevicePtrMut, PushKernelArg};

super::params::device_repr!(DpoParams);

pub struct Fns {
    coefs: CudaFunction,
}

pub(super) fn load(m: &Modules) -> Result<Fns> {
    Ok(Fns { coefs: m.get("dpo", "dpo_coefs")? })
}

impl Gpu {
    /// Coefficients `coef [tokens]` and per-pair rows `pair_out [pairs, 4]`
    /// from `logp`, `ref_logp` (fp32 `[tokens]`), `mask` (u8 `[tokens]`) and
    /// `cu_seqlens` (u32 `[2·pairs + 1]`, checked by the caller: rising from 0
    /// to `tokens`), under settings `k`.
    #[allow(clippy::too_many_arguments)]
    pub fn dpo_coefs(
        &self,
        k: &DpoKernelSettings,
        logp: &impl DevicePtr<f32>,
        ref_logp: &impl DevicePtr<f32>,
        mask: &impl DevicePtr<u8>,
        cu_seqlens: &impl DevicePtr<u32>,
        coef: &mut impl DevicePtrMut<f32>,
        pair_out: &mut impl DevicePtrMut<f64>,
    ) -> Result<()> {
        let n = logp.len();
        let seqs = cu_seqlens.len().checked_sub(1).ok_or_else(|| anyhow!("dpo_coefs: empty cu_seqlens"))?;
        if !seqs.is_multiple_of(2) {
            bail!("dpo_coefs: {seqs} sequences do not make (chosen, rejected) pairs");
        }
        let pairs = seqs / 2;
        check_len("dpo_coefs: ref_logp", ref_logp.len(), n)?;
        check_len("dpo_coefs: mask", mask.len(), n)?;
        check_len("dpo_coefs: coef", coef.len(), n)?;
        check_len("dpo_coefs: pair rows", pair_out.len(), pairs * ENGINE_DPO_STATS as usize)?;
        if pairs == 0 {
            return Ok(());
        }
        let st = &self.stream;
        let (lp, _g1) = logp.device_ptr(st);
        let (rp, _g2) = ref_logp.device_ptr(st);
        let (mp, _g3) = mask.device_ptr(st);
        let (cp, _g4) = cu_seqlens.device_ptr(st);
        let (kp, _g5) = coef.device_ptr_mut(st);
        let (op, _g6) = pair_out.device_ptr_mut(st);
        let p = DpoParams {
            beta: k.beta,
            label_smoothing: k.label_smoothing,
            per_pair: k.per_pair,
            logp: lp,
            ref_logp: rp,
            mask: mp,
            cu_seqlens: cp,
            coef: kp,
            pair_out: op,
            tokens: n as u32,
            pairs: pairs as u32,
            loss_type: k.loss_type,
        };
        // SAFETY: the arrays have the lengths checked above and cu_seqlens
        // rises from 0 to `tokens` (the caller's check).
        unsafe { st.launch_builder(&self.k.dpo.coefs).arg(&p).launch(grid_rows(pairs, ENGINE_DPO_THREADS)) }
            .map_err(|e| anyhow!("dpo_coefs: {e}"))?;
        Ok(())
    }
}
