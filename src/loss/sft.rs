//! SFT: masked mean cross-entropy over response tokens (DESIGN.md §4.8).

use crate::backend::IGNORE;

/// `L = −(1/n) Σ logp` over the `n` tokens whose target is not [`IGNORE`].
/// Summed in f64, in order. Returns `(loss, coef)` with `coef = −1/n` on
/// those tokens and 0 elsewhere; with no target at all, the loss is 0.
/// For a step split in micro-batches, pass `n` of the whole step to
/// [`masked_ce_with_count`] instead.
pub fn masked_mean_ce(logp: &[f32], targets: &[u32]) -> (f64, Vec<f32>) {
    let n = targets.iter().filter(|&&t| t != IGNORE).count();
    masked_ce_with_count(logp, targets, n)
}

/// Masked cross-entropy of one micro-batch, divided by the step's token count `n`.
pub fn masked_ce_with_count(logp: &[f32], targets: &[u32], n: usize) -> (f64, Vec<f32>) {
    assert_eq!(logp.len(), targets.len(), "masked_ce: lengths");
    if n == 0 {
        return (0.0, vec![0.0; logp.len()]);
    }
    let sum: f64 = logp.iter().zip(targets).filter(|(_, &t)| t != IGNORE).map(|(&l, _)| l as f64).sum();
    (-sum / n as f64, ce_coefs(targets, n))
}

/// The coefficients of [`masked_ce_with_count`]: `−1/n` on the tokens with a
/// target, 0 elsewhere. They do not depend on the log-probabilities, so the
/// lm_head may compute the loss and its gradient in one pass.
pub fn ce_coefs(targets: &[u32], n: usize) -> Vec<f32> {
    if n == 0 {
        return vec![0.0; targets.len()];
    }
    let c = -1.0 / n as f32;
    targets.iter().map(|&t| if t == IGNORE { 0.0 } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_over_unmasked() {
        let (l, c) = masked_mean_ce(&[-1.0, -2.0, -9.0, -3.0], &[1, 2, IGNORE, 3]);
        assert!((l - 2.0).abs() < 1e-12);
        assert_eq!(c, vec![-1.0 / 3.0, -1.0 / 3.0, 0.0, -1.0 / 3.0]);
    }
}
