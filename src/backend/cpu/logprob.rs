//! Log-probabilities of target tokens under `softmax(z/T)`, and their
//! gradient written over the logits in place (DESIGN.md §4.1, §3's two
//! phases). Sums over the vocabulary accumulate in f64: this is the oracle.

use crate::backend::IGNORE;
use rayon::prelude::*;

/// Log-sum-exp of `z · inv_temp`.
fn row_lse(z: &[f32], inv_temp: f32) -> f32 {
    let max = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * inv_temp));
    let sum: f64 = z.iter().map(|&v| ((v * inv_temp - max) as f64).exp()).sum();
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
    logp.par_iter_mut()
        .zip(lse.par_iter_mut())
        .zip(logits.par_chunks(vocab).zip(targets.par_iter()))
        .for_each(|((lp, l), (z, &y))| {
            *l = row_lse(z, inv_temp);
            *lp = check_target(y, vocab).map_or(0.0, |y| z[y] * inv_temp - *l);
        });
    if let Some(h) = entropy {
        assert_eq!(h.len(), rows, "logprob: entropy");
        h.par_iter_mut().zip(logits.par_chunks(vocab).zip(lse.par_iter())).for_each(|(h, (z, &l))| {
            let pz: f64 = z
                .iter()
                .map(|&v| {
                    let s = v * inv_temp;
                    ((s - l) as f64).exp() * s as f64
                })
                .sum();
            *h = l - pz as f32;
        });
    }
}

/// `dz = coef · (onehot(y) − softmax(z/T)) / T`, written over `logits`.
pub fn logprob_bwd(logits: &mut [f32], targets: &[u32], vocab: usize, inv_temp: f32, lse: &[f32], coef: &[f32]) {
    let rows = targets.len();
    assert_eq!(logits.len(), rows * vocab, "logprob_bwd: logits");
    assert!(lse.len() == rows && coef.len() == rows, "logprob_bwd: lse / coef");
    logits
        .par_chunks_mut(vocab)
        .zip(targets.par_iter().zip(lse.par_iter().zip(coef.par_iter())))
        .for_each(|(z, (&y, (&l, &c)))| match check_target(y, vocab) {
            Some(y) if c != 0.0 => {
                let scale = c * inv_temp;
                for v in z.iter_mut() {
                    *v = -scale * (*v * inv_temp - l).exp();
                }
                z[y] += scale;
            }
            _ => z.fill(0.0),
        });
}
