//! Tiled causal attention on the CPU: the fast path the backend uses.
//!
//! Same contract as [`super::attention`] (the simple row-by-row version,
//! kept as the obviously-correct twin and checked against a float64 naive
//! reference); here each block of `QB` queries of one head computes its
//! scores with one GEMM, softmaxes them, and multiplies by V with another,
//! as FlashAttention does on a GPU, so the work runs in gemm's SIMD kernels
//! rather than in scalar dot products.
//!
//! Determinism: every task walks its blocks and heads in a fixed order and
//! calls gemm single-threaded, so results do not depend on the thread count.

use super::attention::validate_packed;
use super::fastmath::exp;
use super::matmul::{gemm_raw, Operand};
use crate::backend::AttnShape;
use rayon::prelude::*;

/// Queries per block.
const QB: usize = 64;

/// Sequence index ranges `(start, end)` from `cu_seqlens`.
fn sequences(cu: &[u32]) -> impl Iterator<Item = (usize, usize)> + '_ {
    cu.windows(2).map(|w| (w[0] as usize, w[1] as usize))
}

/// Scores of query rows `i0..i1` of head `h` against keys `l0..i1` of kv head
/// `kvh`, into `s` (`(i1−i0) × (i1−l0)`, row-major). Raw dot products, unscaled.
#[allow(clippy::too_many_arguments)]
fn scores(sh: &AttnShape, q: &[f32], k: &[f32], h: usize, kvh: usize, l0: usize, i0: usize, i1: usize, s: &mut [f32]) {
    let (d, qr, kr) = (sh.head_dim, sh.n_heads * sh.head_dim, sh.n_kv_heads * sh.head_dim);
    let nk = i1 - l0;
    let lhs = Operand { data: &q[i0 * qr + h * d..], rs: qr, cs: 1 };
    let rhs = Operand { data: &k[l0 * kr + kvh * d..], rs: 1, cs: kr };
    gemm_raw(i1 - i0, nk, d, &mut s[..(i1 - i0) * nk], nk, false, lhs, rhs, false);
}

/// Causal attention over packed sequences; writes `out [N, Hq, d]` and `lse [N, Hq]`.
pub fn attention_fwd(sh: &AttnShape, cu: &[u32], q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], lse: &mut [f32]) {
    let n = validate_packed(sh, cu, q, k, v);
    let (hq, d) = (sh.n_heads, sh.head_dim);
    let group = sh.n_heads / sh.n_kv_heads;
    let kr = sh.n_kv_heads * d;
    assert_eq!(out.len(), n * hq * d, "attention: out");
    assert_eq!(lse.len(), n * hq, "attention: lse");

    // One task per (sequence, block of queries); its out / lse rows are contiguous.
    let mut tasks = Vec::new();
    let (mut out_rest, mut lse_rest) = (out, lse);
    for (l0, l1) in sequences(cu) {
        for i0 in (l0..l1).step_by(QB) {
            let i1 = (i0 + QB).min(l1);
            let (o, or) = out_rest.split_at_mut((i1 - i0) * hq * d);
            let (l, lr) = lse_rest.split_at_mut((i1 - i0) * hq);
            tasks.push((l0, i0, i1, o, l));
            (out_rest, lse_rest) = (or, lr);
        }
    }
    tasks.into_par_iter().for_each(|(l0, i0, i1, o, l)| {
        let (m, nk) = (i1 - i0, i1 - l0);
        let mut s = vec![0.0f32; m * nk];
        for h in 0..hq {
            let kvh = h / group;
            scores(sh, q, k, h, kvh, l0, i0, i1, &mut s);
            for r in 0..m {
                // Query i0 + r sees keys l0 ..= i0 + r.
                let valid = i0 + r - l0 + 1;
                let row = &mut s[r * nk..(r + 1) * nk];
                let max = row[..valid].iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x * sh.scale));
                // Two loops: the exps vectorise, the ordered sum does not.
                row[..valid].iter_mut().for_each(|x| *x = exp(*x * sh.scale - max));
                let sum: f32 = row[..valid].iter().sum();
                let inv = 1.0 / sum;
                row[..valid].iter_mut().for_each(|x| *x *= inv);
                row[valid..].fill(0.0);
                l[r * hq + h] = max + sum.ln();
            }
            // out rows of head h = P · V.
            let lhs = Operand { data: &s, rs: nk, cs: 1 };
            let rhs = Operand { data: &v[l0 * kr + kvh * d..], rs: kr, cs: 1 };
            gemm_raw(m, d, nk, &mut o[h * d..], hq * d, false, lhs, rhs, false);
        }
    });
}

/// Gradients of one (sequence, kv head), in local contiguous buffers.
struct Local {
    l0: usize,
    kvh: usize,
    /// `[group][L, d]`
    dq: Vec<f32>,
    /// `[L, d]`
    dk: Vec<f32>,
    dv: Vec<f32>,
}

/// Backward of [`attention_fwd`]; overwrites `dq`, `dk`, `dv`.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd(
    sh: &AttnShape,
    cu: &[u32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let n = validate_packed(sh, cu, q, k, v);
    let (hq, hkv, d) = (sh.n_heads, sh.n_kv_heads, sh.head_dim);
    let group = hq / hkv;
    let (qr, kr) = (hq * d, hkv * d);
    assert!(out.len() == n * qr && dout.len() == n * qr && lse.len() == n * hq, "attention_bwd: out / dout / lse");
    assert!(dq.len() == n * qr && dk.len() == n * kr && dv.len() == n * kr, "attention_bwd: gradient buffers");

    let tasks: Vec<(usize, usize, usize)> =
        sequences(cu).filter(|(a, b)| b > a).flat_map(|(l0, l1)| (0..hkv).map(move |kvh| (l0, l1, kvh))).collect();
    let locals: Vec<Local> = tasks
        .into_par_iter()
        .map(|(l0, l1, kvh)| {
            let len = l1 - l0;
            let mut loc =
                Local { l0, kvh, dq: vec![0.0; group * len * d], dk: vec![0.0; len * d], dv: vec![0.0; len * d] };
            let mut p = vec![0.0f32; QB * len];
            let mut ds = vec![0.0f32; QB * len];
            for hh in 0..group {
                let h = kvh * group + hh;
                for i0 in (l0..l1).step_by(QB) {
                    let i1 = (i0 + QB).min(l1);
                    let (m, nk) = (i1 - i0, i1 - l0);
                    // P = exp(scale·QKᵀ − lse), causal.
                    scores(sh, q, k, h, kvh, l0, i0, i1, &mut p);
                    for r in 0..m {
                        let valid = i0 + r - l0 + 1;
                        let l = lse[(i0 + r) * hq + h];
                        let row = &mut p[r * nk..(r + 1) * nk];
                        row[..valid].iter_mut().for_each(|x| *x = exp(*x * sh.scale - l));
                        row[valid..].fill(0.0);
                    }
                    // dP = dO · Vᵀ.
                    let d_o = Operand { data: &dout[i0 * qr + h * d..], rs: qr, cs: 1 };
                    let vt = Operand { data: &v[l0 * kr + kvh * d..], rs: 1, cs: kr };
                    gemm_raw(m, nk, d, &mut ds[..m * nk], nk, false, d_o, vt, false);
                    // dS = P ∘ (dP − D) · scale, D_i = dO_i · O_i.
                    for r in 0..m {
                        let t = (i0 + r) * qr + h * d;
                        let di: f32 = dout[t..t + d].iter().zip(&out[t..t + d]).map(|(a, b)| a * b).sum();
                        let (pr, dr) = (&p[r * nk..(r + 1) * nk], &mut ds[r * nk..(r + 1) * nk]);
                        for (x, &pi) in dr.iter_mut().zip(pr) {
                            *x = pi * (*x - di) * sh.scale;
                        }
                    }
                    let ds_op = Operand { data: &ds, rs: nk, cs: 1 };
                    let ds_t = Operand { data: &ds, rs: 1, cs: nk };
                    let p_t = Operand { data: &p, rs: 1, cs: nk };
                    // dQ rows = dS · K.
                    let k_op = Operand { data: &k[l0 * kr + kvh * d..], rs: kr, cs: 1 };
                    let dq_h = &mut loc.dq[hh * len * d + (i0 - l0) * d..];
                    gemm_raw(m, d, nk, dq_h, d, false, ds_op, k_op, false);
                    // dK += dSᵀ · Q, dV += Pᵀ · dO (keys l0..i1).
                    let q_op = Operand { data: &q[i0 * qr + h * d..], rs: qr, cs: 1 };
                    gemm_raw(nk, d, m, &mut loc.dk, d, true, ds_t, q_op, false);
                    gemm_raw(nk, d, m, &mut loc.dv, d, true, p_t, d_o, false);
                }
            }
            loc
        })
        .collect();

    // Scatter into the interleaved [N, heads, d] layouts (disjoint writes).
    for loc in &locals {
        let len = loc.dk.len() / d;
        for t in 0..len {
            let (src, row) = (t * d, loc.l0 + t);
            dk[row * kr + loc.kvh * d..][..d].copy_from_slice(&loc.dk[src..src + d]);
            dv[row * kr + loc.kvh * d..][..d].copy_from_slice(&loc.dv[src..src + d]);
            for hh in 0..group {
                let h = loc.kvh * group + hh;
                dq[row * qr + h * d..][..d].copy_from_slice(&loc.dq[hh * len * d + src..][..d]);
            }
        }
    }
    // Empty sequences own no rows; nothing else is left unwritten.
}

#[cfg(test)]
mod tests {
    use super::super::attention as simple;
    use super::*;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn rel(a: &[f32], b: &[f32]) -> f64 {
        assert!(a.iter().all(|x| x.is_finite()));
        let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        (num / den).sqrt()
    }

    type Grads = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

    /// (out, lse, dq, dk, dv) from one implementation.
    fn run(tiled: bool, sh: &AttnShape, lens: &[u32], scale_in: f32) -> Grads {
        let cu: Vec<u32> = std::iter::once(0)
            .chain(lens.iter().scan(0, |a, &l| {
                *a += l;
                Some(*a)
            }))
            .collect();
        let n = *cu.last().unwrap() as usize;
        let (qr, kr) = (sh.n_heads * sh.head_dim, sh.n_kv_heads * sh.head_dim);
        let scaled = |v: Vec<f32>| v.into_iter().map(|x| x * scale_in).collect::<Vec<_>>();
        let (q, k, v, dout) = (scaled(rand(n * qr, 1)), scaled(rand(n * kr, 2)), rand(n * kr, 3), rand(n * qr, 4));
        let (mut out, mut lse) = (vec![f32::NAN; n * qr], vec![f32::NAN; n * sh.n_heads]);
        let (mut dq, mut dk, mut dv) = (vec![f32::NAN; n * qr], vec![f32::NAN; n * kr], vec![f32::NAN; n * kr]);
        if tiled {
            attention_fwd(sh, &cu, &q, &k, &v, &mut out, &mut lse);
            attention_bwd(sh, &cu, &q, &k, &v, &out, &lse, &dout, &mut dq, &mut dk, &mut dv);
        } else {
            simple::attention_fwd(sh, &cu, &q, &k, &v, &mut out, &mut lse);
            simple::attention_bwd(sh, &cu, &q, &k, &v, &out, &lse, &dout, &mut dq, &mut dk, &mut dv);
        }
        (out, lse, dq, dk, dv)
    }

    const CASES: [(usize, usize, usize, &[u32]); 4] =
        [(6, 2, 16, &[1, 7, 13]), (10, 2, 32, &[150, 0, 1, 64, 65]), (4, 4, 12, &[200]), (5, 1, 16, &[3, 129])];

    #[test]
    fn matches_the_simple_version() {
        for (hq, hkv, d, lens) in CASES {
            let sh = AttnShape { n_heads: hq, n_kv_heads: hkv, head_dim: d, scale: 1.0 / (d as f32).sqrt() };
            for scale_in in [1.0, 4.0] {
                let a = run(true, &sh, lens, scale_in);
                let b = run(false, &sh, lens, scale_in);
                for (name, x, y, tol) in [
                    ("out", &a.0, &b.0, 1e-5),
                    ("lse", &a.1, &b.1, 1e-6),
                    ("dq", &a.2, &b.2, 1e-5),
                    ("dk", &a.3, &b.3, 1e-5),
                    ("dv", &a.4, &b.4, 1e-5),
                ] {
                    let e = rel(x, y);
                    assert!(
                        e <= tol,
                        "{name} rel {e:.2e} for heads {hq}/{hkv}, d {d}, lens {lens:?}, input scale {scale_in}"
                    );
                }
            }
        }
    }

    #[test]
    fn bitwise_independent_of_thread_count() {
        let sh = AttnShape { n_heads: 8, n_kv_heads: 4, head_dim: 32, scale: 0.17 };
        let lens = [100, 37, 1, 200, 63];
        let one =
            rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| run(true, &sh, &lens, 1.0));
        for t in [2, 3] {
            let other =
                rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap().install(|| run(true, &sh, &lens, 1.0));
            assert!(one == other, "results differ between 1 and {t} threads");
        }
    }
}
