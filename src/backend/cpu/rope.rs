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

/// Checks the fused rows and q of a split or join and returns `tokens`.
fn check_qkv(s: QkvShape, fused: usize, q: usize, rope: Option<Tables>) -> usize {
    let hd = s.head_dim;
    assert!(hd > 0 && hd.is_multiple_of(2) && s.q > 0 && s.kv > 0, "qkv: {s:?}");
    let tokens = fused / s.row();
    assert_eq!(fused, tokens * s.row(), "qkv: fused rows");
    assert_eq!(q, tokens * s.q * hd, "qkv: q for {tokens} tokens");
    if let Some((pos, cos, sin)) = rope {
        assert_eq!(pos.len(), tokens, "qkv: positions");
        assert_eq!(cos.len(), sin.len(), "qkv: tables");
    }
    tokens
}

/// What a split does besides moving the heads (the options of
/// [`Backend::qkv_split`](crate::backend::Backend::qkv_split) on the CPU): q's and k's norm weights and eps, the rotation, k's and v's
/// destination rows.
#[derive(Clone, Copy, Default)]
pub struct Split<'a> {
    pub norm: Option<(&'a [f32], &'a [f32], f32)>,
    pub rope: Option<Tables<'a>>,
    pub kv_rows: Option<&'a [u32]>,
}

/// [`crate::backend::Backend::qkv_split`] on the CPU.
pub fn qkv_split(qkv: &[f32], s: QkvShape, q: &mut [f32], k: &mut [f32], v: &mut [f32], how: Split) {
    let tokens = check_qkv(s, qkv.len(), q.len(), how.rope);
    let (hd, qd, kd) = (s.head_dim, s.q * s.head_dim, s.kv * s.head_dim);
    if let Some((qw, kw, _)) = how.norm {
        assert_eq!((qw.len(), kw.len()), (hd, hd), "qkv: norm weights");
    }
    // A head set of one token (q's or k's): normalised, then rotated.
    let finish = |x: &mut [f32], t: usize, norm_w: Option<&[f32]>| {
        if let (Some(w), Some((_, _, eps))) = (norm_w, how.norm) {
            x.chunks_exact_mut(hd).for_each(|h| super::norm::rmsnorm_row(h, w, eps));
        }
        if let Some((pos, cos, sin)) = how.rope {
            let (c, sn) = at(cos, sin, hd / 2, pos[t]);
            rotate(x, hd, c, sn, false);
        }
    };
    let move_kv = |src: &[f32], k: &mut [f32], v: &mut [f32], t: usize| {
        k.copy_from_slice(&src[qd..qd + kd]);
        v.copy_from_slice(&src[qd + kd..]);
        finish(k, t, how.norm.map(|n| n.1));
    };
    q.par_chunks_mut(qd).zip(qkv.par_chunks(s.row())).enumerate().for_each(|(t, (q, src))| {
        q.copy_from_slice(&src[..qd]);
        finish(q, t, how.norm.map(|n| n.0));
    });
    match how.kv_rows {
        None => {
            assert_eq!((k.len(), v.len()), (tokens * kd, tokens * kd), "qkv: k, v for {tokens} tokens");
            let kv = k.par_chunks_mut(kd).zip(v.par_chunks_mut(kd));
            kv.zip(qkv.par_chunks(s.row())).enumerate().for_each(|(t, ((k, v), src))| move_kv(src, k, v, t));
        }
        // A decode step's few tokens, each to its own row of the tables.
        Some(rows) => {
            assert_eq!(rows.len(), tokens, "qkv: kv_rows");
            assert!(k.len() == v.len() && k.len().is_multiple_of(kd), "qkv: k, v tables of rows of {kd}");
            for (t, (&r, src)) in rows.iter().zip(qkv.chunks(s.row())).enumerate() {
                let r = r as usize;
                assert!((r + 1) * kd <= k.len(), "qkv: row {r} outside the tables of {} rows", k.len() / kd);
                move_kv(src, &mut k[r * kd..(r + 1) * kd], &mut v[r * kd..(r + 1) * kd], t);
            }
        }
    }
}

/// [`crate::backend::Backend::qkv_join`] on the CPU.
pub fn qkv_join(dq: &[f32], dk: &[f32], dv: &[f32], s: QkvShape, d_qkv: &mut [f32], rope: Option<Tables>) {
    let tokens = check_qkv(s, d_qkv.len(), dq.len(), rope);
    assert_eq!((dk.len(), dv.len()), (tokens * s.kv * s.head_dim, tokens * s.kv * s.head_dim), "qkv: dk, dv");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The split into tables of rows puts each token's k and v in its row
    /// with the values of the split into contiguous k, v (other rows keep
    /// what they held); the join, rotating back, undoes the split (the
    /// rotation is orthogonal: equal to f32 rounding).
    #[test]
    fn split_into_rows_matches_the_contiguous_split_and_join_undoes_it() {
        let s = QkvShape { q: 3, kv: 2, head_dim: 8 };
        let (tokens, kw, qw) = (5, 2 * 8, 3 * 8);
        let fused: Vec<f32> = (0..tokens * s.row()).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        let inv: Vec<f32> = (0..4).map(|i| 1.0 / 10000f32.powf(i as f32 / 4.0)).collect();
        let (cos, sin) = crate::model::rope::tables_from(&inv, 16);
        let pos = [3u32, 0, 7, 15, 2];
        let tables = Some((&pos[..], &cos[..], &sin[..]));
        let (mut q, mut k, mut v) = (vec![0.0; tokens * qw], vec![0.0; tokens * kw], vec![0.0; tokens * kw]);
        qkv_split(&fused, s, &mut q, &mut k, &mut v, Split { rope: tables, ..Split::default() });
        let rows = [9u32, 1, 4, 0, 6];
        let (mut q2, mut kt, mut vt) = (vec![0.0; tokens * qw], vec![-7.0; 10 * kw], vec![-7.0; 10 * kw]);
        qkv_split(&fused, s, &mut q2, &mut kt, &mut vt, Split { rope: tables, kv_rows: Some(&rows), norm: None });
        assert_eq!(q2, q);
        for r in 0..10 {
            let (kr, vr) = (&kt[r * kw..(r + 1) * kw], &vt[r * kw..(r + 1) * kw]);
            match rows.iter().position(|&x| x as usize == r) {
                Some(t) => assert_eq!((kr, vr), (&k[t * kw..(t + 1) * kw], &v[t * kw..(t + 1) * kw]), "row {r}"),
                None => assert!(kr.iter().chain(vr).all(|&x| x == -7.0), "row {r} untouched"),
            }
        }
        // The split rotated q and k: they differ from the rows' own values.
        assert_ne!(&q[..qw], &fused[..qw]);
        let mut back = vec![0.0; fused.len()];
        qkv_join(&q, &k, &v, s, &mut back, tables);
        let err = back.iter().zip(&fused).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(err < 1e-5, "join after split: {err:e}");
    }
}
