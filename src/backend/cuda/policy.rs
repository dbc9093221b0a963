//! The policy losses' per-token coefficient pass on the GPU
//! (kernels/policy.cu), the twin of [`crate::loss::policy_loss`]: every
//! variant of DESIGN.md §4.2 (GPPO's gradient-preserving clip among them),
//! the KL term, TIS, the entropy bonus, GPPO's NLL term and the aggregation
//! weights, one block per sequence, with each sequence's share of the loss
//! and of the statistics in one row of `seq_out` (summed on the host, in
//! order, by [`crate::loss::policy::stats_from_rows`]).

use super::params::{PolicyParams, ENGINE_POLICY_STATS, ENGINE_POLICY_THREADS};
use super::{check_len, grid_rows, Gpu, Modules};
use crate::loss::policy::PolicyKernelSettings;
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{CudaFunction, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, PushKernelArg};

super::params::device_repr!(PolicyParams);

pub struct Fns {
    coefs: CudaFunction,
}

pub(super) fn load(m: &Modules) -> Result<Fns> {
    Ok(Fns { coefs: m.get("policy", "policy_coefs")? })
}

/// The per-token inputs of one micro-batch, fp32 `[tokens]` each.
pub struct PolicyViews<'a> {
    pub logp: CudaView<'a, f32>,
    pub old_logp: CudaView<'a, f32>,
    pub ref_logp: Option<CudaView<'a, f32>>,
    pub sampler_logp: Option<CudaView<'a, f32>>,
    pub entropy: Option<CudaView<'a, f32>>,
}

fn addr(v: &Option<CudaView<'_, f32>>, s: &cudarc::driver::CudaStream) -> u64 {
    v.as_ref().map_or(0, |v| v.device_ptr(s).0)
}

impl Gpu {
    /// Coefficients `coef [tokens]` (and `ent_coef` where the loss has an
    /// entropy term) and per-sequence sums `seq_out [seqs, 12]` from the
    /// micro-batch's per-token arrays `x`, `mask` (u8 `[tokens]`),
    /// `cu_seqlens` (u32 `[seqs + 1]`, checked by the caller: increasing,
    /// ending at `tokens`) and `seq_in` (fp32 `[2, seqs]`: advantages, then
    /// rewards), under settings `k`.
    #[allow(clippy::too_many_arguments)]
    pub fn policy_coefs(
        &self,
        k: &PolicyKernelSettings,
        x: &PolicyViews<'_>,
        mask: &impl DevicePtr<u8>,
        cu_seqlens: &impl DevicePtr<u32>,
        seq_in: &impl DevicePtr<f32>,
        coef: &mut impl DevicePtrMut<f32>,
        ent_coef: Option<&mut CudaViewMut<'_, f32>>,
        seq_out: &mut impl DevicePtrMut<f64>,
    ) -> Result<()> {
        let n = x.logp.len();
        let seqs = cu_seqlens.len().checked_sub(1).ok_or_else(|| anyhow!("policy_coefs: empty cu_seqlens"))?;
        for (what, v) in [("old_logp", Some(&x.old_logp)), ("ref_logp", x.ref_logp.as_ref())]
            .into_iter()
            .chain([("sampler_logp", x.sampler_logp.as_ref()), ("entropy", x.entropy.as_ref())])
        {
            if let Some(v) = v {
                check_len(&format!("policy_coefs: {what}"), v.len(), n)?;
            }
        }
        check_len("policy_coefs: mask", mask.len(), n)?;
        check_len("policy_coefs: coef", coef.len(), n)?;
        check_len("policy_coefs: advantages and rewards", seq_in.len(), 2 * seqs)?;
        check_len("policy_coefs: per-sequence sums", seq_out.len(), seqs * ENGINE_POLICY_STATS as usize)?;
        if k.kl_kind != 0 && x.ref_logp.is_none() {
            bail!("policy_coefs: a KL penalty needs ref_logp");
        }
        if k.has_tis && x.sampler_logp.is_none() {
            bail!("policy_coefs: TIS needs sampler_logp");
        }
        if k.entropy_coef != 0.0 && (x.entropy.is_none() || ent_coef.is_none()) {
            bail!("policy_coefs: an entropy bonus needs the entropy and an ent_coef buffer");
        }
        if let Some(e) = &ent_coef {
            check_len("policy_coefs: ent_coef", e.len(), n)?;
        }
        if seqs == 0 {
            return Ok(());
        }
        let st = &self.stream;
        let (lp, _g1) = x.logp.device_ptr(st);
        let (op, _g2) = x.old_logp.device_ptr(st);
        let (mp, _g3) = mask.device_ptr(st);
        let (cp, _g4) = cu_seqlens.device_ptr(st);
        let (sp, _g5) = seq_in.device_ptr(st);
        let (kp, _g6) = coef.device_ptr_mut(st);
        let (ep, _g7) = match ent_coef {
            Some(e) => {
                let (a, g) = e.device_ptr_mut(st);
                (a, Some(g))
            }
            None => (0, None),
        };
        let (qp, _g8) = seq_out.device_ptr_mut(st);
        let p = PolicyParams {
            eps_low: k.eps_low,
            eps_high: k.eps_high,
            dual_clip: k.dual_clip,
            beta1: k.beta1,
            beta2: k.beta2,
            cispo_floor: k.cispo_floor,
            cispo_cap: k.cispo_cap,
            kl_coef: k.kl_coef,
            entropy_coef: k.entropy_coef,
            tis_cap: k.tis_cap,
            nll_k: k.nll_k,
            correct_score: k.correct_score,
            step_tokens: k.step_tokens,
            step_seqs: k.step_seqs,
            l_max: k.l_max,
            logp: lp,
            old_logp: op,
            ref_logp: addr(&x.ref_logp, st),
            sampler_logp: addr(&x.sampler_logp, st),
            entropy: addr(&x.entropy, st),
            mask: mp,
            cu_seqlens: cp,
            advantages: sp,
            rewards: sp + 4 * seqs as u64,
            coef: kp,
            ent_coef: ep,
            seq_out: qp,
            tokens: n as u32,
            seqs: seqs as u32,
            kind: k.kind,
            kl_kind: k.kl_kind,
            agg: k.agg,
            has_dual: k.has_dual as u32,
            has_floor: k.has_floor as u32,
            has_tis: k.has_tis as u32,
        };
        // SAFETY: every array has the length checked above, cu_seqlens is
        // increasing and ends at `tokens` (the caller's check), and the
        // optional arrays the settings read are present.
        unsafe { st.launch_builder(&self.k.policy.coefs).arg(&p).launch(grid_rows(seqs, ENGINE_POLICY_THREADS)) }
            .map_err(|e| anyhow!("policy_coefs: {e}"))?;
        Ok(())
    }
}
