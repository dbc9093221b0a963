//! The distillation kernel (DESIGN.md §4.6, semantics in
//! [`crate::loss::distill`]): per row, the divergence and its gradient
//! written over the student's logits, in one fused pass (it is token-local).

use super::fastmath::{exp, lane_sums2};
use super::logprob::row_stats;
use crate::loss::DistillMode;

/// `log(e^x + e^y)`, stable when one term is far smaller.
#[inline(always)]
fn log_add_exp(x: f32, y: f32) -> f32 {
    let m = x.max(y);
    m + (1.0 + exp(-(x - y).abs())).ln()
}

/// The divergence of one row, and its gradient times `weight` written over
/// the student's logits `zs` (`dz = weight · ∂D/∂z_s`). With `weight` 0 the
/// row is zeroed and the value still returned.
///
/// Per element, with log-probabilities `s` (student) and `t` (teacher), the
/// divergence's summand and `u_j = ∂D/∂p_s,j`; the gradient through the
/// softmax is `p_s,j·(u_j − Σ p_s·u) / T`. Elementwise math in f32, sums in f64.
pub fn distill_row(zs: &mut [f32], zt: &[f32], mode: DistillMode, inv_t: f32, weight: f32) -> f64 {
    assert_eq!(zs.len(), zt.len(), "distill: student and teacher rows differ in length");
    let (ls, lt) = (row_stats(zs, inv_t, false).0, row_stats(zt, inv_t, false).0);
    // Log-probabilities of element j: student s, teacher t.
    let logs = move |a: f32, b: f32| (a * inv_t - ls, b * inv_t - lt);
    let scale = weight * inv_t;
    // TRL's convention: JSD with β = 0 is the forward KL, with β = 1 the reverse.
    let mode = match mode {
        DistillMode::Jsd { beta: 0.0 } => DistillMode::Forward,
        DistillMode::Jsd { beta: 1.0 } => DistillMode::Reverse,
        m => m,
    };
    // Each mode as its own pair of loops (value, then gradient), so each
    // loop is straight-line arithmetic that vectorises.
    let value = match mode {
        DistillMode::Forward => {
            // Σ p_t (t − s); ∂/∂s_j = p_s,j − p_t,j.
            let value = lane_sums2(zs, zt, |a, b| {
                let (s, t) = logs(a, b);
                ((exp(t) * (t - s)) as f64, 0.0)
            })
            .0;
            for (a, &b) in zs.iter_mut().zip(zt) {
                let (s, t) = logs(*a, b);
                *a = scale * (exp(s) - exp(t));
            }
            value
        }
        DistillMode::Reverse => {
            // Σ p_s (s − t); ∂/∂s_j = p_s,j (s_j − t_j − D).
            let value = lane_sums2(zs, zt, |a, b| {
                let (s, t) = logs(a, b);
                ((exp(s) * (s - t)) as f64, 0.0)
            })
            .0;
            let d = value as f32;
            for (a, &b) in zs.iter_mut().zip(zt) {
                let (s, t) = logs(*a, b);
                *a = scale * exp(s) * (s - t - d);
            }
            value
        }
        DistillMode::Jsd { beta } => {
            let b = beta as f32;
            let (lb, l1b) = (b.ln(), (1.0 - b).ln());
            // u_j = ∂D/∂p_s,j = (1−β)(s_j − log m_j).
            let parts = move |s: f32, t: f32| {
                let lm = log_add_exp(t + lb, s + l1b);
                let (ps, pt) = (exp(s), exp(t));
                (b * pt * (t - lm) + (1.0 - b) * ps * (s - lm), (1.0 - b) * (s - lm), ps)
            };
            let (value, mean_u) = lane_sums2(zs, zt, |a, bb| {
                let (s, t) = logs(a, bb);
                let (v, u, ps) = parts(s, t);
                (v as f64, (ps * u) as f64)
            });
            let mean_u = mean_u as f32;
            for (a, &bb) in zs.iter_mut().zip(zt) {
                let (s, t) = logs(*a, bb);
                let (_, u, ps) = parts(s, t);
                *a = scale * ps * (u - mean_u);
            }
            value
        }
    };
    if weight == 0.0 {
        zs.fill(0.0);
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
