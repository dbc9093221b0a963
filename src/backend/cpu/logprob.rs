//! Log-probabilities of target tokens under `softmax(z/T)`, and their
//! gradient written over the logits in place (DESIGN.md §4.1, §3's two
//! phases). Sums over the vocabulary accumulate in f64 lanes (a fixed
//! order, so bitwise reproducible): this is the oracle.

use super::fastmath::exp;
use crate::backend::IGNORE;
use rayon::prelude::*;

const LANES: usize = 8;

/// `Σ_j f(z_j)` in f64, over `LANES` independent accumulators added in a
/// fixed order at the end; the lanes let the loop vectorise.
#[inline(always)]
fn lane_sum(z: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let chunks = z.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for k in 0..LANES {
            acc[k] += f(c[k]);
        }
    }
    let mut total: f64 = tail.iter().map(|&v| f(v)).sum();
    for a in acc {
        total += a;
    }
    total
}

/// Log-sum-exp of `z · inv_temp`.
fn row_lse(z: &[f32], inv_temp: f32) -> f32 {
    let max = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * inv_temp));
    let sum = lane_sum(z, |v| exp(v * inv_temp - max) as f64);
    max + sum.ln() as f32
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
    logp.par_iter_mut().zip(lse.par_iter_mut()).zip(logits.par_chunks(vocab).zip(targets.par_iter())).for_each(
        |((lp, l), (z, &y))| {
            *l = row_lse(z, inv_temp);
            *lp = check_target(y, vocab).map_or(0.0, |y| z[y] * inv_temp - *l);
        },
    );
    if let Some(h) = entropy {
        assert_eq!(h.len(), rows, "logprob: entropy");
        h.par_iter_mut().zip(logits.par_chunks(vocab).zip(lse.par_iter())).for_each(|(h, (z, &l))| {
            let pz = lane_sum(z, |v| {
                let s = v * inv_temp;
                (exp(s - l) * s) as f64
            });
            *h = l - pz as f32;
        });
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
