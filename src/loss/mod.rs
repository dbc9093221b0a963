//! Losses on per-token log-probabilities (phase 1's output, DESIGN.md §3).
//! Each returns the loss and, per token, the coefficient `w · ∂L/∂logp` that
//! phase 2 turns into the logit gradient.

use crate::backend::IGNORE;

/// Masked mean cross-entropy (SFT, DESIGN.md §4.8): `L = −(1/n) Σ logp` over
/// the `n` tokens whose target is not [`IGNORE`]. Summed in f64, in order.
/// Returns `(loss, coef)`; with no target at all the loss is 0 and every
/// coefficient 0.
pub fn masked_mean_ce(logp: &[f32], targets: &[u32]) -> (f64, Vec<f32>) {
    assert_eq!(logp.len(), targets.len(), "masked_mean_ce: lengths");
    let n = targets.iter().filter(|&&t| t != IGNORE).count();
    if n == 0 {
        return (0.0, vec![0.0; logp.len()]);
    }
    let sum: f64 = logp.iter().zip(targets).filter(|(_, &t)| t != IGNORE).map(|(&l, _)| l as f64).sum();
    let c = -1.0 / n as f32;
    let coef = targets.iter().map(|&t| if t == IGNORE { 0.0 } else { c }).collect();
    (-sum / n as f64, coef)
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
