//! Rotary position embedding in HF's rotate-half layout: for a head vector
//! `x = [a, b]` (halves of `head_dim/2`), `x' = [a·cos − b·sin, b·cos + a·sin]`
//! with the angle of the token's position for each frequency.
//! The backward is the same rotation by the opposite angle.

use crate::backend::QkvShape;
use rayon::prelude::*;

/// Positions and the tables `[max_pos, head_dim/2]` of a rotation.
pub type Tables<'a> = (&'a [u32], &'a [f32], &'a [f32]);

/// The table rows (cos, sin) of position `p`.
fn at<'a>(cos: &'a [f32], sin: &'a [f32], half: usize, p: u32) -> (&'a [f32], &'a [f32]) {
    let (p, max_pos) = (p as usize, cos.len() / half);
    assert!(p < max_pos, "rope: position {p} beyond the table ({max_pos})");
    (&cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half])
}

/// Rotates each head vector of one token (`tok`: heads × head_dim) by the
/// angles `c`, `s` (negated with `inverse`).
fn rotate(tok: &mut [f32], head_dim: usize, c: &[f32], s: &[f32], inverse: bool) {
    let half = head_dim / 2;
    let sign = if inverse { -1.0f32 } else { 1.0 };
    for head in tok.chunks_exact_mut(head_dim) {
        let (a, b) = head.split_at_mut(half);
        for i in 0..half {
            let (ai, bi, si) = (a[i], b[i], sign * s[i]);
            a[i] = ai * c[i] - bi * si;
            b[i] = bi * c[i] + ai * si;
        }
    }
}

pub fn rope(x: &mut [f32], pos: &[u32], heads: usize, head_dim: usize, cos: &[f32], sin: &[f32], inverse: bool) {
    let half = head_dim / 2;
    assert_eq!(head_dim % 2, 0, "rope: odd head_dim");
    assert_eq!(x.len(), pos.len() * heads * head_dim, "rope: x");
    assert_eq!(cos.len(), sin.len(), "rope: tables");
    x.par_chunks_mut(heads * head_dim).zip(pos.par_iter()).for_each(|(tok, &p)| {
        let (c, s) = at(cos, sin, half, p);
        rotate(tok, head_dim, c, s, inverse);
    });
}

/// Checks the buffers of a split or join of `tokens` rows and returns
/// `tokens`.
fn check_qkv(s: QkvShape, fused: usize, q: usize, k: usize, v: usize, rope: Option<Tables>) -> usize {
    let hd = s.head_dim;
    assert!(hd > 0 && hd.is_multiple_of(2) && s.q > 0 && s.kv > 0, "qkv: {s:?}");
    let tokens = fused / s.row();
    assert_eq!(fused, tokens * s.row(), "qkv: fused rows");
    assert_eq!(
        (q, k, v),
        (tokens * s.q * hd, tokens * s.kv * hd, tokens * s.kv * hd),
        "qkv: q, k, v for {tokens} tokens"
    );
    if let Some((pos, cos, sin)) = rope {
        assert_eq!(pos.len(), tokens, "qkv: positions");
        assert_eq!(cos.len(), sin.len(), "qkv: tables");
    }
    tokens
}

/// [`crate::backend::Backend::qkv_split`] on the CPU.
pub fn qkv_split(qkv: &[f32], s: QkvShape, q: &mut [f32], k: &mut [f32], v: &mut [f32], rope: Option<Tables>) {
    check_qkv(s, qkv.len(), q.len(), k.len(), v.len(), rope);
    let (hd, qd, kd) = (s.head_dim, s.q * s.head_dim, s.kv * s.head_dim);
    let rows = q.par_chunks_mut(qd).zip(k.par_chunks_mut(kd)).zip(v.par_chunks_mut(kd));
    rows.zip(qkv.par_chunks(s.row())).enumerate().for_each(|(t, (((q, k), v), src))| {
        q.copy_from_slice(&src[..qd]);
        k.copy_from_slice(&src[qd..qd + kd]);
        v.copy_from_slice(&src[qd + kd..]);
        if let Some((pos, cos, sin)) = rope {
            let (c, sn) = at(cos, sin, hd / 2, pos[t]);
            rotate(q, hd, c, sn, false);
            rotate(k, hd, c, sn, false);
        }
    });
}

/// [`crate::backend::Backend::qkv_join`] on the CPU.
pub fn qkv_join(dq: &[f32], dk: &[f32], dv: &[f32], s: QkvShape, d_qkv: &mut [f32], rope: Option<Tables>) {
    check_qkv(s, d_qkv.len(), dq.len(), dk.len(), dv.len(), rope);
    let (hd, qd, kd) = (s.head_dim, s.q * s.head_dim, s.kv * s.head_dim);
    let rows = dq.par_chunks(qd).zip(dk.par_chunks(kd)).zip(dv.par_chunks(kd));
    rows.zip(d_qkv.par_chunks_mut(s.row())).enumerate().for_each(|(t, (((dq, dk), dv), dst))| {
        let (q, rest) = dst.split_at_mut(qd);
        let (k, v) = rest.split_at_mut(kd);
        q.copy_from_slice(dq);
        k.copy_from_slice(dk);
        v.copy_from_slice(dv);
        if let Some((pos, cos, sin)) = rope {
            let (c, sn) = at(cos, sin, hd / 2, pos[t]);
            rotate(q, hd, c, sn, true);
            rotate(k, hd, c, sn, true);
        }
    });
}
