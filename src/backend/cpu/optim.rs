//! Optimizer kernels: AdamW and the sum of squares for gradient clipping.

use crate::backend::AdamWStep;
use rayon::prelude::*;

/// Elements per partial sum: the chunking is fixed, so the result does not
/// depend on the thread count.
const CHUNK: usize = 1 << 14;

/// `Σ x²` in f64: per fixed chunk in parallel, then the chunk sums in order.
pub fn sum_squares(x: &[f32]) -> f64 {
    let parts: Vec<f64> = x.par_chunks(CHUNK).map(|c| c.iter().map(|&v| v as f64 * v as f64).sum()).collect();
    parts.iter().sum()
}

/// One AdamW step, elementwise (see [`crate::backend::Backend::adamw`]).
pub fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: &AdamWStep) {
    assert!(p.len() == g.len() && p.len() == m.len() && p.len() == v.len(), "adamw: tensor lengths differ");
    assert!(h.step >= 1, "adamw: steps count from 1");
    let bc1 = 1.0 - (h.beta1 as f64).powi(h.step as i32);
    let bc2 = 1.0 - (h.beta2 as f64).powi(h.step as i32);
    // PyTorch's order: decay, moments, then the bias-corrected update.
    let step_size = (h.lr as f64 / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let decay = 1.0 - h.lr * h.weight_decay;
    p.par_iter_mut().zip(g.par_iter()).zip(m.par_iter_mut().zip(v.par_iter_mut())).for_each(|((p, &g), (m, v))| {
        *p *= decay;
        *m = h.beta1 * *m + (1.0 - h.beta1) * g;
        *v = h.beta2 * *v + (1.0 - h.beta2) * g * g;
        let denom = v.sqrt() / bc2_sqrt + h.eps;
        *p -= step_size * *m / denom;
    });
}
