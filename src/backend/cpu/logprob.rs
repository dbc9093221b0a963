//! Log-probabilities of target tokens under `softmax(z/T)`, and their
//! gradient written over the logits in place (DESIGN.md §4.1, §3's two
//! phases). Sums over the vocabulary accumulate in f64 lanes (a fixed
//! order, so bitwise reproducible): this is the oracle.

use super::fastmath::{exp, lane_sum, lane_sums};
use crate::backend::IGNORE;
use rayon::prelude::*;

/// Per row of `s = z·inv_temp`: `lse`, and with `entropy` also `H = lse − Σ p·s`,
/// from one pass for the maximum and one for both sums.
pub(super) fn row_stats(z: &[f32], inv_temp: f32, entropy: bool) -> (f32, f32) {
    let max = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * inv_temp));
    if !entropy {
        let sum = lane_sum(z, |v| exp(v * inv_temp - max) as f64);
        return (max + sum.ln() as f32, 0.0);
    }
    // Σ e^(s−max) and Σ e^(s−max)·(s−max): Σ p·s = max + second / first.
    let (sum, weighted) = lane_sums(z, |v| {
        let x = v * inv_temp - max;
        let e = exp(x);
        (e as f64, (e * x) as f64)
    });
    let lse = max as f64 + sum.ln();
    let mean_s = max as f64 + weighted / sum;
    (lse as f32, (lse - mean_s) as f32)
}

fn check_target(y: u32, vocab: usize) -> Option<usize> {
    if y == IGNORE {
        return None;
    }
    assert!((y as usize) < vocab, "logprob: target {y} outside the vocabulary ({vocab})");
    Some(y as usize)
}

#[allow(clippy::too_many_arguments)]
pub fn logprob_fwd(
    logits: &[f32],
    targets: &[u32],
    vocab: usize,
    inv_temp: f32,
    logp: &mut [f32],
    lse: &mut [f32],
    entropy: Option<&mut [f32]>,
) {
    let rows = targets.len();
    assert_eq!(logits.len(), rows * vocab, "logprob: logits");
    assert!(logp.len() == rows && lse.len() == rows, "logprob: outputs");
    let with_entropy = entropy.is_some();
    let body = |((lp, l), (z, &y)): ((&mut f32, &mut f32), (&[f32], &u32))| -> f32 {
        let (lse, ent) = row_stats(z, inv_temp, with_entropy);
        *l = lse;
        *lp = check_target(y, vocab).map_or(0.0, |y| z[y] * inv_temp - lse);
        ent
    };
    let rows_iter = logp.par_iter_mut().zip(lse.par_iter_mut()).zip(logits.par_chunks(vocab).zip(targets.par_iter()));
    match entropy {
        Some(h) => {
            assert_eq!(h.len(), rows, "logprob: entropy");
            rows_iter.zip(h.par_iter_mut()).for_each(|(row, h)| *h = body(row));
        }
        None => rows_iter.for_each(|row| {
            body(row);
        }),
    }
}

/// `dz = coef · (onehot(y) − p) / T` (plus the entropy term, see
/// [`crate::backend::Backend::logprob_bwd`]), written over `logits`.
#[allow(clippy::too_many_arguments)]
pub fn logprob_bwd(
    logits: &mut [f32],
    targets: &[u32],
    vocab: usize,
    inv_temp: f32,
    lse: &[f32],
    coef: &[f32],
    entropy: Option<(&[f32], &[f32])>,
) {
    let rows = targets.len();
    assert_eq!(logits.len(), rows * vocab, "logprob_bwd: logits");
    assert!(lse.len() == rows && coef.len() == rows, "logprob_bwd: lse / coef");
    if let Some((e, h)) = entropy {
        assert!(e.len() == rows && h.len() == rows, "logprob_bwd: entropy coefficients");
    }
    logits.par_chunks_mut(vocab).enumerate().for_each(|(row, z)| {
        let (l, target) = (lse[row], check_target(targets[row], vocab));
        let c = if target.is_some() { coef[row] } else { 0.0 };
        let (e, h) = entropy.map_or((0.0, 0.0), |(e, h)| (e[row], h[row]));
        if c == 0.0 && e == 0.0 {
            z.fill(0.0);
            return;
        }
        if e == 0.0 {
            let scale = c * inv_temp;
            for v in z.iter_mut() {
                *v = -scale * exp(*v * inv_temp - l);
            }
        } else {
            // ∂H/∂s_j = −p_j (s_j − Σ p s), and Σ p s = lse − H.
            let mean_s = l - h;
            for v in z.iter_mut() {
                let s = *v * inv_temp;
                let p = exp(s - l);
                *v = -inv_temp * p * (c + e * (s - mean_s));
            }
        }
        if let Some(y) = target {
            z[y] += c * inv_temp;
        }
    });
}
