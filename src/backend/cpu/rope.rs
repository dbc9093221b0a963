//! Rotary position embedding in HF's rotate-half layout: for a head vector
//! `x = [a, b]` (halves of `head_dim/2`), `x' = [a·cos − b·sin, b·cos + a·sin]`
//! with the angle of the token's position for each frequency.
//! The backward is the same rotation by the opposite angle.

use rayon::prelude::*;

pub fn rope(x: &mut [f32], pos: &[u32], heads: usize, head_dim: usize, cos: &[f32], sin: &[f32], inverse: bool) {
    let half = head_dim / 2;
    assert_eq!(head_dim % 2, 0, "rope: odd head_dim");
    assert_eq!(x.len(), pos.len() * heads * head_dim, "rope: x");
    assert_eq!(cos.len(), sin.len(), "rope: tables");
    let max_pos = cos.len() / half;
    let sign = if inverse { -1.0f32 } else { 1.0 };
    x.par_chunks_mut(heads * head_dim).zip(pos.par_iter()).for_each(|(tok, &p)| {
        let p = p as usize;
        assert!(p < max_pos, "rope: position {p} beyond the table ({max_pos})");
        let c = &cos[p * half..(p + 1) * half];
        let s = &sin[p * half..(p + 1) * half];
        for head in tok.chunks_exact_mut(head_dim) {
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (ai, bi, si) = (a[i], b[i], sign * s[i]);
                a[i] = ai * c[i] - bi * si;
                b[i] = bi * c[i] + ai * si;
            }
        }
    });
}
