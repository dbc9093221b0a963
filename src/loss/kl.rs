//! KL penalty to a reference policy (DESIGN.md §4.3): in the loss, per token,
//! with `d = logp − ref_logp`; or in the reward, as `R − β·Σ k1`.

use super::seq_ranges;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KlKind {
    /// `d`; gradient 1 (zero in expectation: for logging).
    K1,
    /// `½d²`; gradient `d`.
    K2,
    /// Low-variance `exp(−d) + d − 1`, clamped as verl does.
    K3,
    /// The value of k3 with the gradient of k2 (straight-through).
    K3Plus,
}

impl KlKind {
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "k1" => Ok(KlKind::K1),
            "k2" => Ok(KlKind::K2),
            "k3" => Ok(KlKind::K3),
            "k3+" => Ok(KlKind::K3Plus),
            other => Err(format!("unknown KL estimator `{other}` (k1, k2, k3, k3+)")),
        }
    }
}

/// A KL term `coef · kl_t` added to each token's loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KlPenalty {
    pub kind: KlKind,
    pub coef: f64,
}

/// `k3`'s value and its gradient with respect to `logp`, clamps included:
/// `kl = clamp(ref − logp, ±20)`, value `clamp(e^kl − kl − 1, ±10)`; a clamp
/// that bites stops the gradient, as autograd does.
fn k3(logp: f64, ref_logp: f64) -> (f64, f64) {
    let raw = ref_logp - logp;
    let kl = raw.clamp(-20.0, 20.0);
    let v = kl.exp() - kl - 1.0;
    // d(e^kl − kl − 1)/dkl = e^kl − 1; dkl/dlogp = −1 while unclamped.
    let dkl = if raw.abs() > 20.0 { 0.0 } else { -1.0 };
    if v.abs() > 10.0 {
        (v.clamp(-10.0, 10.0), 0.0)
    } else {
        (v, (kl.exp() - 1.0) * dkl)
    }
}

/// Value and `∂/∂logp` of one token's KL estimate.
pub fn token_kl(kind: KlKind, logp: f64, ref_logp: f64) -> (f64, f64) {
    let d = logp - ref_logp;
    match kind {
        KlKind::K1 => (d, 1.0),
        KlKind::K2 => (0.5 * d * d, d),
        KlKind::K3 => k3(logp, ref_logp),
        KlKind::K3Plus => (k3(logp, ref_logp).0, d),
    }
}

/// PPO's way (`kl_in_reward`): each sequence's reward minus
/// `beta · Σ_t m_t (logp_t − ref_logp_t)` over its unmasked tokens, with the
/// rollout policy's log-probs.
pub fn kl_in_reward(
    rewards: &[f32],
    logp: &[f32],
    ref_logp: &[f32],
    mask: &[bool],
    cu_seqlens: &[u32],
    beta: f64,
) -> Vec<f64> {
    assert_eq!(rewards.len() + 1, cu_seqlens.len(), "kl_in_reward: one reward per sequence");
    seq_ranges(cu_seqlens)
        .zip(rewards)
        .map(|(r, &reward)| {
            let kl: f64 = r.filter(|&t| mask[t]).map(|t| logp[t] as f64 - ref_logp[t] as f64).sum();
            reward as f64 - beta * kl
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Central differences of each estimator's value against its gradient
    /// (k3+ is straight-through, so its gradient is k2's by definition).
    #[test]
    fn gradients_match_finite_differences() {
        for (logp, r) in [(-1.3, -0.9), (-2.0, -2.5), (-0.1, -3.0)] {
            for kind in [KlKind::K1, KlKind::K2, KlKind::K3] {
                let h = 1e-6;
                let fd = (token_kl(kind, logp + h, r).0 - token_kl(kind, logp - h, r).0) / (2.0 * h);
                let g = token_kl(kind, logp, r).1;
                assert!((fd - g).abs() < 1e-6, "{kind:?} at {logp},{r}: {fd} vs {g}");
            }
            assert_eq!(token_kl(KlKind::K3Plus, logp, r), (token_kl(KlKind::K3, logp, r).0, logp - r));
        }
        // k3 ≥ 0, and a clamped value carries no gradient.
        assert!(token_kl(KlKind::K3, -1.0, -3.0).0 >= 0.0);
        assert_eq!(token_kl(KlKind::K3, -30.0, -1.0), (10.0, 0.0));
    }
}
