//! RoPE cos/sin tables, computed the way transformers computes them for a
//! f32 or bf16 model: inverse frequencies rounded to f32, the angle
//! `position · inv_freq` multiplied in f32, then cos/sin of that angle. The
//! float64 fixtures compute the angle in f64; the difference (~1e-7
//! relative in the log-probs at the fixtures' lengths) is inside tolerance.

use super::config::ModelConfig;

/// `(cos, sin)`, each `[max_pos, head_dim / 2]` row-major.
pub fn tables(cfg: &ModelConfig, max_pos: usize) -> (Vec<f32>, Vec<f32>) {
    let inv: Vec<f32> = cfg.rope_inv_freq().iter().map(|&f| f as f32).collect();
    tables_from(&inv, max_pos)
}

/// The tables of inverse frequencies `inv` (f32), `[max_pos, inv.len()]` each.
pub fn tables_from(inv: &[f32], max_pos: usize) -> (Vec<f32>, Vec<f32>) {
    let half = inv.len();
    let mut cos = Vec::with_capacity(max_pos * half);
    let mut sin = Vec::with_capacity(max_pos * half);
    for p in 0..max_pos {
        for &f in inv {
            let angle = (p as f32 * f) as f64;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}
