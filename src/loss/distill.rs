//! Distillation from a teacher's distribution (DESIGN.md §4.6): forward KL,
//! reverse KL and TRL's generalised JSD, per token, at temperature T, with
//! the gradient into the student's logits only. One fused pass per row
//! (it is token-local), so the lm_head path never keeps more than a chunk
//! of student and teacher logits.

use crate::backend::cpu::fastmath::exp;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DistillMode {
    /// KL(p_teacher ‖ p_student).
    Forward,
    /// KL(p_student ‖ p_teacher).
    Reverse,
    /// `β·KL(p_t‖m) + (1−β)·KL(p_s‖m)`, `m = β·p_t + (1−β)·p_s`; as in TRL,
    /// β = 0 is the forward KL and β = 1 the reverse KL.
    Jsd { beta: f64 },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Distillation {
    pub mode: DistillMode,
    pub temperature: f64,
}

/// Log-sum-exp of `z·inv_t`, summed in f64.
fn lse(z: &[f32], inv_t: f32) -> f32 {
    let max = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * inv_t));
    let sum: f64 = z.iter().map(|&v| exp(v * inv_t - max) as f64).sum();
    max + sum.ln() as f32
}

/// The divergence of one row, and its gradient times `weight` written over
/// the student's logits `zs` (`dz = weight · ∂D/∂z_s`). With `weight` 0 the
/// row is zeroed and the value still returned.
pub fn distill_row(zs: &mut [f32], zt: &[f32], mode: DistillMode, inv_t: f32, weight: f32) -> f64 {
    assert_eq!(zs.len(), zt.len(), "distill: student and teacher rows differ in length");
    let (ls0, lt0) = (lse(zs, inv_t), lse(zt, inv_t));
    // Log-probabilities of element j.
    let lp = |z: f32, l: f32| (z * inv_t - l) as f64;
    // Per element: the divergence's summand and u_j = ∂D/∂p_s,j; the
    // gradient through the softmax is p_s,j·(u_j − Σ p_s·u), over T.
    let beta = match mode {
        DistillMode::Forward => 0.0,
        DistillMode::Reverse => 1.0,
        DistillMode::Jsd { beta } => beta,
    };
    let (lb, l1b) = (beta.ln(), (1.0 - beta).ln());
    let term = |s: f64, t: f64| -> (f64, f64) {
        let (ps, pt) = (s.exp(), t.exp());
        if beta == 0.0 {
            (pt * (t - s), -pt / ps.max(f64::MIN_POSITIVE))
        } else if beta == 1.0 {
            (ps * (s - t), s - t + 1.0)
        } else {
            // log m by log-add-exp, stable for very unequal terms.
            let (x, y) = (t + lb, s + l1b);
            let lm = x.max(y) + (-(x - y).abs()).exp().ln_1p();
            (beta * pt * (t - lm) + (1.0 - beta) * ps * (s - lm), (1.0 - beta) * (s - lm))
        }
    };
    let (mut value, mut mean_u) = (0.0f64, 0.0f64);
    for (&a, &b) in zs.iter().zip(zt) {
        let (s, t) = (lp(a, ls0), lp(b, lt0));
        let (v, u) = term(s, t);
        value += v;
        mean_u += s.exp() * u;
    }
    if weight == 0.0 {
        zs.fill(0.0);
        return value;
    }
    let scale = weight as f64 * inv_t as f64;
    for (a, &b) in zs.iter_mut().zip(zt) {
        let (s, t) = (lp(*a, ls0), lp(b, lt0));
        let ps = s.exp();
        // Forward KL in closed form (u·p_s = −p_t) avoids 0/0 where p_s underflows.
        let g = if beta == 0.0 { ps - t.exp() } else { ps * (term(s, t).1 - mean_u) };
        *a = (scale * g) as f32;
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seed: u32, n: usize) -> Vec<f32> {
        (0..n).map(|i| (((i as u32 * 2654435761u32) ^ seed.wrapping_mul(40503)) % 1000) as f32 / 250.0 - 2.0).collect()
    }

    /// Every mode's gradient against central differences of its value, in f64 terms.
    #[test]
    fn gradients_match_finite_differences() {
        let (zs, zt) = (row(1, 23), row(7, 23));
        for mode in [DistillMode::Forward, DistillMode::Reverse, DistillMode::Jsd { beta: 0.3 }] {
            let inv_t = 1.0 / 0.8;
            let mut g = zs.clone();
            distill_row(&mut g, &zt, mode, inv_t, 1.0);
            for j in [0, 5, 22] {
                let h = 1e-2f32;
                let (mut a, mut b) = (zs.clone(), zs.clone());
                a[j] += h;
                b[j] -= h;
                let fd = (distill_row(&mut a, &zt, mode, inv_t, 0.0) - distill_row(&mut b, &zt, mode, inv_t, 0.0))
                    / (2.0 * h as f64);
                assert!((fd - g[j] as f64).abs() < 2e-4 * (1.0 + fd.abs()), "{mode:?} j={j}: {fd} vs {}", g[j]);
            }
        }
    }

    #[test]
    fn jsd_limits_are_the_kls_and_zero_on_equal_rows() {
        let (zs, zt) = (row(3, 17), row(5, 17));
        let v = |m| distill_row(&mut zs.clone(), &zt, m, 1.0, 0.0);
        assert_eq!(v(DistillMode::Jsd { beta: 0.0 }), v(DistillMode::Forward));
        assert_eq!(v(DistillMode::Jsd { beta: 1.0 }), v(DistillMode::Reverse));
        assert!(v(DistillMode::Forward) > 0.0 && v(DistillMode::Jsd { beta: 0.5 }) > 0.0);
        assert!(distill_row(&mut zs.clone(), &zs, DistillMode::Jsd { beta: 0.5 }, 1.0, 0.0).abs() < 1e-7);
    }
}
