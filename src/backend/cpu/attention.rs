//! CPU reference for causal grouped-query attention over packed sequences (f32).
//!
//! Three entry points: [`attention_fwd`], [`attention_bwd`] and [`attention_decode`].
//! No [N×N] score matrix is ever materialised; scores are recomputed where needed.
//!
//! Determinism: every output element is produced by exactly one rayon task and
//! accumulated in a fixed sequential order (keys ascending, then queries ascending
//! and query heads ascending in the backward). Dot products use a fixed lane split
//! that does not depend on threads, so results are bitwise independent of the
//! thread count.

use crate::backend::{AttnShape, DecodeSeq};
use rayon::prelude::*;

impl AttnShape {
    /// Query heads per kv head.
    fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// Floats per token in q, out, dout, dq.
    fn q_row(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Floats per token (or cache position) in k, v, dk, dv.
    fn kv_row(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    fn validate(&self) {
        assert!(
            self.n_heads > 0 && self.n_kv_heads > 0 && self.head_dim > 0,
            "attention: n_heads, n_kv_heads and head_dim must be > 0, got {self:?}"
        );
        assert!(
            self.n_heads.is_multiple_of(self.n_kv_heads),
            "attention: n_heads ({}) must be a multiple of n_kv_heads ({})",
            self.n_heads,
            self.n_kv_heads
        );
        assert!(self.scale.is_finite(), "attention: scale must be finite, got {}", self.scale);
    }
}

/// Checks the shape, `cu_seqlens` and the q/k/v lengths; returns N (total tokens).
pub(super) fn validate_packed(s: &AttnShape, cu_seqlens: &[u32], q: &[f32], k: &[f32], v: &[f32]) -> usize {
    s.validate();
    assert!(!cu_seqlens.is_empty(), "attention: cu_seqlens must have S+1 >= 1 entries");
    assert!(cu_seqlens[0] == 0, "attention: cu_seqlens[0] must be 0, got {}", cu_seqlens[0]);
    assert!(
        cu_seqlens.windows(2).all(|w| w[0] <= w[1]),
        "attention: cu_seqlens must be non-decreasing, got {cu_seqlens:?}"
    );
    let n = *cu_seqlens.last().unwrap() as usize;
    assert!(
        q.len() == n * s.q_row(),
        "attention: q has {} floats, expected N*n_heads*head_dim = {}*{}*{} (N = last cu_seqlens)",
        q.len(),
        n,
        s.n_heads,
        s.head_dim
    );
    assert!(
        k.len() == n * s.kv_row() && v.len() == n * s.kv_row(),
        "attention: k/v have {}/{} floats, expected N*n_kv_heads*head_dim = {}*{}*{}",
        k.len(),
        v.len(),
        n,
        s.n_kv_heads,
        s.head_dim
    );
    n
}

/// First token of the sequence containing token `t`.
/// `partition_point` finds the first boundary > t, so empty sequences are skipped naturally.
fn seq_start(cu_seqlens: &[u32], t: usize) -> usize {
    let s = cu_seqlens.partition_point(|&c| c as usize <= t) - 1;
    cu_seqlens[s] as usize
}

/// Lanes of the dot product. A plain `sum += a*b` loop cannot be vectorised
/// (f32 addition is not associative), so we keep LANES independent partial sums.
/// The split is fixed, so the result is still deterministic.
const LANES: usize = 8;

/// Dot product with a fixed summation order (lanes, then lanes pairwise, then the tail).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; LANES];
    let (a_body, a_tail) = a.split_at(a.len() / LANES * LANES);
    let (b_body, b_tail) = b.split_at(a_body.len());
    for (x, y) in a_body.chunks_exact(LANES).zip(b_body.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    // Fixed-order horizontal sum: 8 -> 4 -> 2 -> 1.
    let mut w = LANES / 2;
    while w > 0 {
        for l in 0..w {
            acc[l] += acc[l + w];
        }
        w /= 2;
    }
    let mut sum = acc[0];
    for (x, y) in a_tail.iter().zip(b_tail) {
        sum += x * y;
    }
    sum
}

/// y += alpha * x (elementwise, vectorises).
#[inline]
fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    debug_assert_eq!(y.len(), x.len());
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// Softmax-weighted sum of value rows for one query row of one head.
///
/// Key/value row j (j in 0..n_keys) starts at `j * stride` in `k` / `v`; the caller
/// has already offset the slices to the right kv head. Writes `out` (len head_dim)
/// and returns the log-sum-exp of the scaled scores.
///
/// Online softmax in one pass: `m` is the running max, `l` the running sum of
/// exp(score - m), `out` the running unnormalised sum. When the max grows, the
/// partial sums are rescaled; this keeps every exp argument <= 0 (no overflow).
/// Forward and decode share this function, so a decode step reproduces the
/// forward's result for the same token bitwise.
/// Key `j` starts at element `row(j)` of `k` and `v`.
fn attend_row(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    row: impl Fn(usize) -> usize,
    n_keys: usize,
    scale: f32,
    out: &mut [f32],
) -> f32 {
    let d = q.len();
    debug_assert!(n_keys >= 1);
    out.fill(0.0);
    let mut m = f32::NEG_INFINITY;
    let mut l = 0.0f32;
    for j in 0..n_keys {
        let row = row(j);
        let score = dot(q, &k[row..row + d]) * scale;
        if score > m {
            // exp(-inf) = 0 on the first key, which zeroes nothing harmful (l and out are 0).
            let c = (m - score).exp();
            l *= c;
            out.iter_mut().for_each(|o| *o *= c);
            m = score;
        }
        let p = (score - m).exp();
        l += p;
        axpy(out, p, &v[row..row + d]);
    }
    let inv_l = 1.0 / l;
    out.iter_mut().for_each(|o| *o *= inv_l);
    m + l.ln()
}

/// Causal attention over packed sequences. Tokens are flattened: N = total tokens.
/// `cu_seqlens` has S+1 entries: sequence s covers tokens `cu_seqlens[s]..cu_seqlens[s+1]`; `cu_seqlens[0] = 0`, last = N.
/// A token attends to itself and earlier tokens of ITS OWN sequence only.
/// q: [N, n_heads, head_dim], k, v: [N, n_kv_heads, head_dim] (row-major), out: [N, n_heads, head_dim],
/// lse: [N, n_heads] = log-sum-exp of the scaled scores (natural log), saved for the backward. Overwrites out and lse.
///
/// Parallel over tokens (one task writes one token's out row and lse row, all heads);
/// rayon's work stealing absorbs the causal imbalance (later tokens see more keys).
pub fn attention_fwd(
    s: &AttnShape,
    cu_seqlens: &[u32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    lse: &mut [f32],
) {
    let n = validate_packed(s, cu_seqlens, q, k, v);
    assert!(out.len() == q.len(), "attention_fwd: out has {} floats, expected {} (same as q)", out.len(), q.len());
    assert!(
        lse.len() == n * s.n_heads,
        "attention_fwd: lse has {} floats, expected N*n_heads = {}",
        lse.len(),
        n * s.n_heads
    );
    let (d, group, q_row, kv_row) = (s.head_dim, s.group(), s.q_row(), s.kv_row());

    out.par_chunks_mut(q_row).zip(lse.par_chunks_mut(s.n_heads)).enumerate().for_each(|(t, (out_t, lse_t))| {
        let start = seq_start(cu_seqlens, t);
        let n_keys = t - start + 1;
        let q_t = &q[t * q_row..(t + 1) * q_row];
        for (h, (out_h, lse_h)) in out_t.chunks_mut(d).zip(lse_t.iter_mut()).enumerate() {
            let kv_base = start * kv_row + (h / group) * d;
            *lse_h = attend_row(
                &q_t[h * d..(h + 1) * d],
                &k[kv_base..],
                &v[kv_base..],
                |j| j * kv_row,
                n_keys,
                s.scale,
                out_h,
            );
        }
    });
}

/// The gradient rows one backward task owns: one sequence, one kv head.
/// `dq[i]` holds the query heads of this group for token `start + i` (group*head_dim floats);
/// `dk[i]`, `dv[i]` hold this kv head's row for token `start + i` (head_dim floats).
struct GroupGrads<'a> {
    start: usize,
    kv_head: usize,
    dq: Vec<&'a mut [f32]>,
    dk: Vec<&'a mut [f32]>,
    dv: Vec<&'a mut [f32]>,
}

/// Splits dq/dk/dv into disjoint per-(sequence, kv head) row sets without unsafe.
/// Heads of one group are contiguous within a token's dq row, so each (token, kv head)
/// owns one contiguous dq chunk of group*head_dim floats and one dk/dv row of head_dim.
/// Costs a few Vecs of slice references (3 * N * n_kv_heads pointers), not data.
fn split_grads<'a>(
    s: &AttnShape,
    cu_seqlens: &[u32],
    dq: &'a mut [f32],
    dk: &'a mut [f32],
    dv: &'a mut [f32],
) -> Vec<GroupGrads<'a>> {
    let n_seq = cu_seqlens.len() - 1;
    let mut tasks: Vec<GroupGrads<'a>> = (0..n_seq * s.n_kv_heads)
        .map(|idx| {
            let (seq, kv_head) = (idx / s.n_kv_heads, idx % s.n_kv_heads);
            let len = (cu_seqlens[seq + 1] - cu_seqlens[seq]) as usize;
            GroupGrads {
                start: cu_seqlens[seq] as usize,
                kv_head,
                dq: Vec::with_capacity(len),
                dk: Vec::with_capacity(len),
                dv: Vec::with_capacity(len),
            }
        })
        .collect();
    let token_rows = dq.chunks_mut(s.q_row()).zip(dk.chunks_mut(s.kv_row())).zip(dv.chunks_mut(s.kv_row()));
    let mut seq = 0;
    for (t, ((dq_t, dk_t), dv_t)) in token_rows.enumerate() {
        while t >= cu_seqlens[seq + 1] as usize {
            seq += 1; // skips empty sequences too
        }
        let head_rows =
            dq_t.chunks_mut(s.group() * s.head_dim).zip(dk_t.chunks_mut(s.head_dim)).zip(dv_t.chunks_mut(s.head_dim));
        for (g, ((dq_g, dk_g), dv_g)) in head_rows.enumerate() {
            let task = &mut tasks[seq * s.n_kv_heads + g];
            task.dq.push(dq_g);
            task.dk.push(dk_g);
            task.dv.push(dv_g);
        }
    }
    tasks
}

/// Read-only inputs of the backward, bundled to keep signatures short.
struct BwdInputs<'a> {
    s: &'a AttnShape,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    out: &'a [f32],
    lse: &'a [f32],
    dout: &'a [f32],
}

/// Backward for one (sequence, kv head): fills the task's dq, dk, dv rows.
///
/// With p_ij = exp(scale*q_i·k_j - lse_i), D_i = dout_i·out_i:
///   dv_j += p_ij dout_i,  ds_ij = p_ij (dout_i·v_j - D_i),
///   dq_i += scale ds_ij k_j,  dk_j += scale ds_ij q_i.
/// Loop order (query i, head r in group, key j <= i) is fixed, so every dk/dv row is
/// summed over (i, r) in the same order on any thread count.
fn bwd_group(x: &BwdInputs, task: &mut GroupGrads) {
    let s = x.s;
    let (d, group, q_row, kv_row) = (s.head_dim, s.group(), s.q_row(), s.kv_row());
    task.dk.iter_mut().chain(task.dv.iter_mut()).for_each(|row| row.fill(0.0));
    let kv_off = task.kv_head * d;
    for i in 0..task.dq.len() {
        let t = task.start + i;
        for r in 0..group {
            let h = task.kv_head * group + r;
            let row = t * q_row + h * d..t * q_row + (h + 1) * d;
            let (q_i, do_i) = (&x.q[row.clone()], &x.dout[row.clone()]);
            let d_i = dot(do_i, &x.out[row]);
            let lse_i = x.lse[t * s.n_heads + h];
            let dq_i = &mut task.dq[i][r * d..(r + 1) * d];
            dq_i.fill(0.0);
            for j in 0..=i {
                let kv = (task.start + j) * kv_row + kv_off;
                let (k_j, v_j) = (&x.k[kv..kv + d], &x.v[kv..kv + d]);
                let p = (dot(q_i, k_j) * s.scale - lse_i).exp();
                // Chain rule through score = scale * q·k folded into ds.
                let ds = p * (dot(do_i, v_j) - d_i) * s.scale;
                axpy(task.dv[j], p, do_i);
                axpy(task.dk[j], ds, q_i);
                axpy(dq_i, ds, k_j);
            }
        }
    }
}

/// Backward of attention_fwd given dout = dL/dout. OVERWRITES dq, dk, dv (same shapes as q, k, v).
/// Uses the saved out and lse (recompute probabilities as exp(score - lse), D_i = sum(dout_i * out_i)).
///
/// Parallel over (sequence, kv head): each task owns the dk/dv rows of its kv head and the
/// dq rows of that head's query group for its sequence, so no two tasks write the same float.
/// Parallelism is S * n_kv_heads tasks; a single long sequence with few kv heads uses few cores.
#[allow(clippy::too_many_arguments)] // the signature is the backend's fixed API
pub fn attention_bwd(
    s: &AttnShape,
    cu_seqlens: &[u32],
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
    let n = validate_packed(s, cu_seqlens, q, k, v);
    assert!(
        out.len() == q.len() && dout.len() == q.len() && dq.len() == q.len(),
        "attention_bwd: out/dout/dq have {}/{}/{} floats, expected {} (same as q)",
        out.len(),
        dout.len(),
        dq.len(),
        q.len()
    );
    assert!(
        dk.len() == k.len() && dv.len() == v.len(),
        "attention_bwd: dk/dv have {}/{} floats, expected {} (same as k, v)",
        dk.len(),
        dv.len(),
        k.len()
    );
    assert!(
        lse.len() == n * s.n_heads,
        "attention_bwd: lse has {} floats, expected N*n_heads = {}",
        lse.len(),
        n * s.n_heads
    );

    let inputs = BwdInputs { s, q, k, v, out, lse, dout };
    split_grads(s, cu_seqlens, dq, dk, dv).into_par_iter().for_each(|mut task| bwd_group(&inputs, &mut task));
}

/// One new query per sequence against a KV cache (rollouts). B sequences.
/// q, out: `[B, n_heads, head_dim]`; k_cache, v_cache: rows `[n_rows,
/// n_kv_heads, head_dim]`; `plan`: one [`DecodeSeq`] per sequence
/// ([`DecodeSeq::encode`]): sequence b attends to its positions `0..len`, at
/// the cache rows the plan gives (the new token's own key and value already
/// written at position `len − 1`).
///
/// Parallel over (sequence, head): one task per out row of head_dim floats. Uses the same
/// row kernel as the forward, so it matches the forward at that token bitwise.
pub fn attention_decode(s: &AttnShape, plan: &[u32], q: &[f32], k_cache: &[f32], v_cache: &[f32], out: &mut [f32]) {
    s.validate();
    let (d, group, kv_row) = (s.head_dim, s.group(), s.kv_row());
    assert!(
        k_cache.len() == v_cache.len() && k_cache.len().is_multiple_of(kv_row),
        "attention_decode: k_cache/v_cache have {}/{} floats, expected the same multiple of n_kv_heads*head_dim = {}*{}",
        k_cache.len(),
        v_cache.len(),
        s.n_kv_heads,
        d
    );
    let seqs = DecodeSeq::decode(plan, k_cache.len() / kv_row).unwrap_or_else(|e| panic!("attention_decode: {e}"));
    let b = seqs.len();
    assert!(
        q.len() == b * s.q_row() && out.len() == q.len(),
        "attention_decode: q/out have {}/{} floats, expected B*n_heads*head_dim = {}*{}*{}",
        q.len(),
        out.len(),
        b,
        s.n_heads,
        d
    );

    out.par_chunks_mut(d).enumerate().for_each(|(bh, out_bh)| {
        let (seq, h) = (&seqs[bh / s.n_heads], bh % s.n_heads);
        let head = (h / group) * d;
        let q_bh = &q[bh * d..(bh + 1) * d];
        let row = |j: usize| seq.row(j as u32) as usize * kv_row;
        attend_row(q_bh, &k_cache[head..], &v_cache[head..], row, seq.len as usize, s.scale, out_bh);
    });
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)] // the naive reference reads like the maths on purpose
mod tests {
    use super::*;

    // ---------- inputs ----------

    /// Small deterministic generator (64-bit LCG, top bits), so tests need no extra crates.
    struct Lcg(u64);

    impl Lcg {
        fn uniform(&mut self) -> f32 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            // 24 high bits -> [-1, 1)
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn vec(&mut self, n: usize, amp: f32) -> Vec<f32> {
            (0..n).map(|_| amp * self.uniform()).collect()
        }
    }

    /// One packed attention problem with random inputs.
    struct Case {
        s: AttnShape,
        cu: Vec<u32>,
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        dout: Vec<f32>,
    }

    impl Case {
        fn new(
            lens: &[usize],
            n_heads: usize,
            n_kv_heads: usize,
            head_dim: usize,
            scale: f32,
            amp: f32,
            seed: u64,
        ) -> Case {
            let mut cu = vec![0u32];
            for &l in lens {
                cu.push(cu.last().unwrap() + l as u32);
            }
            let n = *cu.last().unwrap() as usize;
            let s = AttnShape { n_heads, n_kv_heads, head_dim, scale };
            let mut rng = Lcg(seed);
            Case {
                q: rng.vec(n * s.q_row(), amp),
                k: rng.vec(n * s.kv_row(), amp),
                v: rng.vec(n * s.kv_row(), 1.0),
                dout: rng.vec(n * s.q_row(), 1.0),
                s,
                cu,
            }
        }
        fn n(&self) -> usize {
            *self.cu.last().unwrap() as usize
        }
        fn fwd(&self) -> (Vec<f32>, Vec<f32>) {
            let mut out = vec![f32::NAN; self.q.len()];
            let mut lse = vec![f32::NAN; self.n() * self.s.n_heads];
            attention_fwd(&self.s, &self.cu, &self.q, &self.k, &self.v, &mut out, &mut lse);
            (out, lse)
        }
        /// Runs fwd then bwd; returns (out, lse, dq, dk, dv).
        fn fwd_bwd(&self) -> [Vec<f32>; 5] {
            let (out, lse) = self.fwd();
            // NaN-filled outputs check that the backward really overwrites everything.
            let mut dq = vec![f32::NAN; self.q.len()];
            let mut dk = vec![f32::NAN; self.k.len()];
            let mut dv = vec![f32::NAN; self.v.len()];
            attention_bwd(
                &self.s, &self.cu, &self.q, &self.k, &self.v, &out, &lse, &self.dout, &mut dq, &mut dk, &mut dv,
            );
            [out, lse, dq, dk, dv]
        }
        fn naive(&self) -> Naive<'_> {
            Naive { s: self.s, cu: &self.cu, q: to64(&self.q), k: to64(&self.k), v: to64(&self.v) }
        }
    }

    fn to64(x: &[f32]) -> Vec<f64> {
        x.iter().map(|&a| a as f64).collect()
    }

    /// ‖a − b‖ / ‖b‖ in f64; NaN anywhere gives NaN, which fails every `<=` check.
    fn rel_err(a: &[f32], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        let num: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y).powi(2)).sum();
        let den: f64 = b.iter().map(|y| y * y).sum();
        (num / den).sqrt()
    }

    // ---------- naive f64 reference: full masked [N×N] matrices per head ----------

    struct Naive<'a> {
        s: AttnShape,
        cu: &'a [u32],
        q: Vec<f64>,
        k: Vec<f64>,
        v: Vec<f64>,
    }

    impl Naive<'_> {
        fn n(&self) -> usize {
            *self.cu.last().unwrap() as usize
        }
        fn d(&self) -> usize {
            self.s.head_dim
        }
        /// 0: q, 1: k, 2: v (for the finite-difference test).
        fn tensor_mut(&mut self, which: usize) -> &mut Vec<f64> {
            match which {
                0 => &mut self.q,
                1 => &mut self.k,
                _ => &mut self.v,
            }
        }
        fn q_at(&self, t: usize, h: usize) -> &[f64] {
            let d = self.d();
            &self.q[(t * self.s.n_heads + h) * d..][..d]
        }
        fn kv_idx(&self, t: usize, h: usize) -> usize {
            let kvh = h / (self.s.n_heads / self.s.n_kv_heads);
            (t * self.s.n_kv_heads + kvh) * self.d()
        }
        /// mask[i][j]: i may attend to j (same sequence, j <= i).
        fn mask(&self) -> Vec<Vec<bool>> {
            let n = self.n();
            let mut seq_of = vec![0usize; n];
            for s in 0..self.cu.len() - 1 {
                for t in self.cu[s] as usize..self.cu[s + 1] as usize {
                    seq_of[t] = s;
                }
            }
            (0..n).map(|i| (0..n).map(|j| seq_of[i] == seq_of[j] && j <= i).collect()).collect()
        }
        /// Probability matrix P [N×N] and lse [N] for query head h.
        fn probs(&self, h: usize) -> (Vec<Vec<f64>>, Vec<f64>) {
            let (n, d, mask) = (self.n(), self.d(), self.mask());
            let mut p = vec![vec![0.0; n]; n];
            let mut lse = vec![0.0; n];
            for i in 0..n {
                let scores: Vec<f64> = (0..n)
                    .map(|j| {
                        if !mask[i][j] {
                            return f64::NEG_INFINITY;
                        }
                        let kj = &self.k[self.kv_idx(j, h)..][..d];
                        self.s.scale as f64 * self.q_at(i, h).iter().zip(kj).map(|(a, b)| a * b).sum::<f64>()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|&x| (x - m).exp()).sum();
                for j in 0..n {
                    p[i][j] = (scores[j] - m).exp() / z;
                }
                lse[i] = m + z.ln();
            }
            (p, lse)
        }
        /// Returns (out [N, H, D], lse [N, H]).
        fn fwd(&self) -> (Vec<f64>, Vec<f64>) {
            let (n, d, nh) = (self.n(), self.d(), self.s.n_heads);
            let mut out = vec![0.0; n * nh * d];
            let mut lse = vec![0.0; n * nh];
            for h in 0..nh {
                let (p, l) = self.probs(h);
                for i in 0..n {
                    lse[i * nh + h] = l[i];
                    for j in 0..n {
                        let vj = &self.v[self.kv_idx(j, h)..][..d];
                        for e in 0..d {
                            out[(i * nh + h) * d + e] += p[i][j] * vj[e];
                        }
                    }
                }
            }
            (out, lse)
        }
        /// Analytic gradient: dP = dout·vᵀ, dS = P∘(dP − rowsum(dP∘P)),
        /// dq = scale dS k, dk = scale dSᵀ q, dv = Pᵀ dout. Returns (dq, dk, dv).
        fn bwd(&self, dout: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
            let (n, d, nh) = (self.n(), self.d(), self.s.n_heads);
            let scale = self.s.scale as f64;
            let mut dq = vec![0.0; self.q.len()];
            let mut dk = vec![0.0; self.k.len()];
            let mut dv = vec![0.0; self.v.len()];
            for h in 0..nh {
                let (p, _) = self.probs(h);
                let do_at = |t: usize| &dout[(t * nh + h) * d..][..d];
                for i in 0..n {
                    let dp: Vec<f64> = (0..n)
                        .map(|j| do_at(i).iter().zip(&self.v[self.kv_idx(j, h)..][..d]).map(|(a, b)| a * b).sum())
                        .collect();
                    let row_dot: f64 = (0..n).map(|j| dp[j] * p[i][j]).sum();
                    for j in 0..n {
                        let ds = p[i][j] * (dp[j] - row_dot);
                        let (kj, qi) = (self.kv_idx(j, h), (i * nh + h) * d);
                        for e in 0..d {
                            dq[qi + e] += scale * ds * self.k[kj + e];
                            dk[kj + e] += scale * ds * self.q[qi + e];
                            dv[kj + e] += p[i][j] * dout[qi + e];
                        }
                    }
                }
            }
            (dq, dk, dv)
        }
    }

    // ---------- 1. forward vs naive ----------

    fn check_fwd(c: &Case) -> (f64, f64) {
        let (out, lse) = c.fwd();
        let (ref_out, ref_lse) = c.naive().fwd();
        let (e_out, e_lse) = (rel_err(&out, &ref_out), rel_err(&lse, &ref_lse));
        println!("fwd {:?} cu_seqlens {:?}: out rel err {e_out:.2e}, lse rel err {e_lse:.2e}", c.s, c.cu);
        assert!(e_out <= 1e-5, "out rel err {e_out:e}");
        assert!(e_lse <= 1e-5, "lse rel err {e_lse:e}");
        (e_out, e_lse)
    }

    /// The cases used by the forward and backward accuracy tests.
    fn accuracy_cases() -> Vec<Case> {
        vec![
            // 3 packed sequences 1, 7, 13; GQA 3:1; head_dim 16.
            Case::new(&[1, 7, 13], 6, 2, 16, 1.0 / 4.0, 1.0, 1),
            // GQA 5:1, head_dim 32, with an empty sequence in the packing.
            Case::new(&[31, 0, 1, 64, 5], 10, 2, 32, 1.0 / 32f32.sqrt(), 1.0, 2),
            // MHA, head_dim 12 (not a multiple of the dot lanes), sharp softmax (scores up to ~±100).
            Case::new(&[9, 20], 3, 3, 12, 1.0, 3.0, 3),
            // MQA (one kv head), head_dim 5.
            Case::new(&[17, 2], 4, 1, 5, 0.7, 1.5, 4),
        ]
    }

    #[test]
    fn fwd_matches_naive_f64() {
        for c in accuracy_cases() {
            check_fwd(&c);
        }
    }

    // ---------- 2. backward vs naive, and naive vs finite differences ----------

    #[test]
    fn bwd_matches_naive_f64() {
        for c in accuracy_cases() {
            let [_, _, dq, dk, dv] = c.fwd_bwd();
            let (rdq, rdk, rdv) = c.naive().bwd(&to64(&c.dout));
            let errs = [rel_err(&dq, &rdq), rel_err(&dk, &rdk), rel_err(&dv, &rdv)];
            println!(
                "bwd {:?} cu_seqlens {:?}: dq/dk/dv rel err {:.2e} {:.2e} {:.2e}",
                c.s, c.cu, errs[0], errs[1], errs[2]
            );
            for (name, e) in ["dq", "dk", "dv"].iter().zip(errs) {
                assert!(e <= 1e-4, "{name} rel err {e:e}");
            }
        }
    }

    /// Validates the naive analytic backward itself: central differences of
    /// L = Σ w∘out through the naive f64 forward, for every element of q, k, v.
    #[test]
    fn naive_bwd_matches_finite_differences() {
        let c = Case::new(&[2, 4, 3], 4, 2, 3, 0.8, 1.5, 5);
        let w = to64(&c.dout);
        let (gq, gk, gv) = c.naive().bwd(&w);
        let loss = |n: &Naive| n.fwd().0.iter().zip(&w).map(|(o, w)| o * w).sum::<f64>();
        let eps = 1e-5;
        let mut worst = 0.0f64;
        for (which, analytic) in [(0, &gq), (1, &gk), (2, &gv)] {
            let mut fd = vec![0.0; analytic.len()];
            for idx in 0..analytic.len() {
                let mut nv = c.naive();
                nv.tensor_mut(which)[idx] += eps;
                let lp = loss(&nv);
                nv.tensor_mut(which)[idx] -= 2.0 * eps;
                let lm = loss(&nv);
                fd[idx] = (lp - lm) / (2.0 * eps);
            }
            let num: f64 = fd.iter().zip(analytic.iter()).map(|(a, b)| (a - b).powi(2)).sum();
            let den: f64 = analytic.iter().map(|b| b * b).sum();
            let e = (num / den).sqrt();
            println!("finite differences vs naive bwd, tensor {which}: rel err {e:.2e}");
            worst = worst.max(e);
        }
        assert!(worst <= 1e-7, "naive backward disagrees with finite differences: {worst:e}");
    }

    // ---------- 3. no cross-sequence leakage ----------

    #[test]
    fn no_cross_sequence_leakage() {
        let a = Case::new(&[11, 9, 6], 4, 2, 8, 0.35, 1.0, 6);
        let mut b = Case::new(&[11, 9, 6], 4, 2, 8, 0.35, 1.0, 6);
        // Replace every input of sequence 1 (tokens 11..20), including dout.
        let mut rng = Lcg(99);
        let (qr, kvr) = (a.s.q_row(), a.s.kv_row());
        let (lo, hi) = (a.cu[1] as usize, a.cu[2] as usize);
        for x in &mut b.q[lo * qr..hi * qr] {
            *x = rng.uniform();
        }
        for x in b.k[lo * kvr..hi * kvr].iter_mut().chain(&mut b.v[lo * kvr..hi * kvr]) {
            *x = rng.uniform();
        }
        for x in &mut b.dout[lo * qr..hi * qr] {
            *x = rng.uniform();
        }
        let (ra, rb) = (a.fwd_bwd(), b.fwd_bwd());
        // Row width per tensor: out, lse, dq, dk, dv.
        let widths = [qr, a.s.n_heads, qr, kvr, kvr];
        for (tensor, w) in widths.iter().enumerate() {
            let (xa, xb) = (&ra[tensor], &rb[tensor]);
            for (range, should_change) in [(0..lo, false), (lo..hi, true), (hi..a.n(), false)] {
                let (sa, sb) = (&xa[range.start * w..range.end * w], &xb[range.start * w..range.end * w]);
                let same = sa.iter().zip(sb).all(|(x, y)| x.to_bits() == y.to_bits());
                assert_eq!(same, !should_change, "tensor {tensor}, tokens {range:?}: changed = {}", !same);
            }
        }
    }

    // ---------- 4. determinism across thread counts ----------

    #[test]
    fn bitwise_independent_of_thread_count() {
        let c = Case::new(&[100, 37, 1, 200, 63], 8, 4, 32, 1.0 / 32f32.sqrt(), 1.0, 7);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| c.fwd_bwd())
        };
        let one = run(1);
        for threads in [2, 3, 5] {
            let many = run(threads);
            for (tensor, (x, y)) in one.iter().zip(&many).enumerate() {
                assert!(
                    x.iter().zip(y).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "tensor {tensor} differs between 1 and {threads} threads"
                );
            }
        }
    }

    // ---------- 5. decode vs forward ----------

    #[test]
    fn decode_matches_forward_last_token() {
        let lens = [1usize, 5, 17, 40, 23];
        let capacity = 48;
        let c = Case::new(&lens, 6, 2, 16, 0.25, 1.0, 8);
        let (out, _) = c.fwd();
        let (qr, kvr, b) = (c.s.q_row(), c.s.kv_row(), lens.len());
        // Sequences live in scattered slots of a larger cache; unused slots and
        // positions are NaN, so reading past len or the wrong rows would poison
        // the output. Sequences 1 and 3 read their first positions from a
        // shared prefix in slot 5 (as a prompt's samples do) and the rest
        // from their own slot; the others lie in one run.
        let slots: Vec<u32> = vec![3, 0, 6, 1, 4];
        let prefix: [usize; 5] = [0, 2, 0, 9, 0];
        let mut k_cache = vec![f32::NAN; 7 * capacity * kvr];
        let mut v_cache = vec![f32::NAN; 7 * capacity * kvr];
        let mut q_last = vec![0.0; b * qr];
        let mut ref_out = vec![0.0f64; b * qr];
        let mut plan = Vec::new();
        for (seq, &len) in lens.iter().enumerate() {
            let start = c.cu[seq] as usize;
            let own = slots[seq] * capacity as u32;
            // Sequence 3's prefix sits after sequence 1's in slot 5.
            let prefix_row = 5 * capacity as u32 + if seq == 3 { 2 } else { 0 };
            let d = DecodeSeq { prefix_row, prefix_len: prefix[seq] as u32, own_row: own, len: len as u32 };
            for j in 0..len {
                let (src, dst) = ((start + j) * kvr, d.row(j as u32) as usize * kvr);
                k_cache[dst..dst + kvr].copy_from_slice(&c.k[src..src + kvr]);
                v_cache[dst..dst + kvr].copy_from_slice(&c.v[src..src + kvr]);
            }
            plan.push(d);
            let last = start + len - 1;
            q_last[seq * qr..(seq + 1) * qr].copy_from_slice(&c.q[last * qr..(last + 1) * qr]);
            for (r, &o) in ref_out[seq * qr..(seq + 1) * qr].iter_mut().zip(&out[last * qr..(last + 1) * qr]) {
                *r = o as f64;
            }
        }
        let mut dec = vec![f32::NAN; b * qr];
        attention_decode(&c.s, &DecodeSeq::encode(&plan), &q_last, &k_cache, &v_cache, &mut dec);
        let e = rel_err(&dec, &ref_out);
        println!("decode vs forward: rel err {e:.2e}");
        assert!(e <= 1e-6, "decode rel err {e:e}");
    }

    // ---------- input validation ----------

    #[test]
    #[should_panic(expected = "multiple of n_kv_heads")]
    fn rejects_ungrouped_heads() {
        let s = AttnShape { n_heads: 6, n_kv_heads: 4, head_dim: 2, scale: 1.0 };
        attention_fwd(&s, &[0, 1], &[0.0; 12], &[0.0; 8], &[0.0; 8], &mut [0.0; 12], &mut [0.0; 6]);
    }

    #[test]
    #[should_panic(expected = "non-decreasing")]
    fn rejects_decreasing_cu_seqlens() {
        let s = AttnShape { n_heads: 1, n_kv_heads: 1, head_dim: 1, scale: 1.0 };
        attention_fwd(&s, &[0, 2, 1, 3], &[0.0; 3], &[0.0; 3], &[0.0; 3], &mut [0.0; 3], &mut [0.0; 3]);
    }

    #[test]
    #[should_panic(expected = "q has")]
    fn rejects_cu_seqlens_not_ending_at_n() {
        let s = AttnShape { n_heads: 1, n_kv_heads: 1, head_dim: 1, scale: 1.0 };
        attention_fwd(&s, &[0, 2], &[0.0; 3], &[0.0; 3], &[0.0; 3], &mut [0.0; 3], &mut [0.0; 3]);
    }

    #[test]
    #[should_panic(expected = "rows past the cache")]
    fn rejects_positions_beyond_the_cache() {
        let s = AttnShape { n_heads: 1, n_kv_heads: 1, head_dim: 1, scale: 1.0 };
        attention_decode(&s, &[0, 0, 0, 3], &[0.0], &[0.0; 2], &[0.0; 2], &mut [0.0]);
    }
}
