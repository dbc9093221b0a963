//! Embedding gather / scatter, SwiGLU, and the small elementwise ops.

use rayon::prelude::*;

pub fn embedding_fwd(table: &[f32], ids: &[u32], dim: usize, out: &mut [f32]) {
    assert_eq!(out.len(), ids.len() * dim, "embedding: out");
    let rows = table.len() / dim;
    out.par_chunks_mut(dim).zip(ids.par_iter()).for_each(|(o, &id)| {
        let id = id as usize;
        assert!(id < rows, "embedding: id {id} outside the table ({rows} rows)");
        o.copy_from_slice(&table[id * dim..(id + 1) * dim]);
    });
}

/// `dtable[ids[t]] += dout[t]`. Tokens are grouped by id (a stable sort, so
/// each group keeps token order); each table row is then written by one task
/// summing its tokens in order: deterministic, whatever the thread count.
pub fn embedding_bwd(dout: &[f32], ids: &[u32], dim: usize, dtable: &mut [f32]) {
    assert_eq!(dout.len(), ids.len() * dim, "embedding_bwd: dout");
    let rows = dtable.len() / dim;
    assert!(ids.iter().all(|&i| (i as usize) < rows), "embedding_bwd: id outside the table");
    let mut order: Vec<u32> = (0..ids.len() as u32).collect();
    order.sort_by_key(|&t| ids[t as usize]);
    dtable.par_chunks_mut(dim).enumerate().for_each(|(row, dst)| {
        let first = order.partition_point(|&t| (ids[t as usize] as usize) < row);
        for &t in order[first..].iter().take_while(|&&t| ids[t as usize] as usize == row) {
            let t = t as usize;
            for (d, g) in dst.iter_mut().zip(&dout[t * dim..(t + 1) * dim]) {
                *d += g;
            }
        }
    });
}

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + super::fastmath::exp(-x))
}

/// `out = silu(g) · u`.
pub fn swiglu_fwd(g: &[f32], u: &[f32], out: &mut [f32]) {
    assert!(g.len() == u.len() && u.len() == out.len(), "swiglu: lengths");
    out.par_iter_mut().zip(g.par_iter().zip(u.par_iter())).for_each(|(o, (&gi, &ui))| {
        *o = gi * sigmoid(gi) * ui;
    });
}

/// (dg, du) of one element: `dg = d · u · silu'(g)`, `du = d · silu(g)`,
/// silu'(g) = σ(g)(1 + g(1 − σ(g))).
fn swiglu_grad(d: f32, g: f32, u: f32) -> (f32, f32) {
    let s = sigmoid(g);
    (d * u * s * (1.0 + g * (1.0 - s)), d * g * s)
}

/// `dg = dout · u · silu'(g)`, `du = dout · silu(g)`.
pub fn swiglu_bwd(dout: &[f32], g: &[f32], u: &[f32], dg: &mut [f32], du: &mut [f32]) {
    assert!(dout.len() == g.len() && g.len() == u.len(), "swiglu_bwd: lengths");
    assert!(dg.len() == g.len() && du.len() == g.len(), "swiglu_bwd: outputs");
    dg.par_iter_mut()
        .zip(du.par_iter_mut())
        .zip(dout.par_iter().zip(g.par_iter().zip(u.par_iter())))
        .for_each(|((dgi, dui), (&d, (&gi, &ui)))| (*dgi, *dui) = swiglu_grad(d, gi, ui));
}

/// `out[r, c] = silu(gu[r, c]) · gu[r, cols + c]`: `gu [rows, 2·cols]` is one
/// product's output, the gate in the first `cols` columns of each row and up
/// in the last; `out [rows, cols]`. The same bits as [`swiglu_fwd`] on the
/// two halves.
pub fn swiglu_fwd_pair(gu: &[f32], cols: usize, out: &mut [f32]) {
    assert!(cols > 0 && out.len().is_multiple_of(cols) && gu.len() == 2 * out.len(), "swiglu_fwd_pair: lengths");
    out.par_chunks_mut(cols).zip(gu.par_chunks(2 * cols)).for_each(|(o, row)| {
        let (g, u) = row.split_at(cols);
        for ((o, &gi), &ui) in o.iter_mut().zip(g).zip(u) {
            *o = gi * sigmoid(gi) * ui;
        }
    });
}

/// The backward of [`swiglu_fwd_pair`]: overwrites `dgu [rows, 2·cols]`
/// (dg, then du, in each row) from `dout [rows, cols]`.
pub fn swiglu_bwd_pair(dout: &[f32], gu: &[f32], cols: usize, dgu: &mut [f32]) {
    assert!(cols > 0 && dout.len().is_multiple_of(cols) && gu.len() == 2 * dout.len(), "swiglu_bwd_pair: lengths");
    assert_eq!(dgu.len(), gu.len(), "swiglu_bwd_pair: output");
    dgu.par_chunks_mut(2 * cols).zip(gu.par_chunks(2 * cols)).zip(dout.par_chunks(cols)).for_each(
        |((drow, row), d)| {
            let (g, u) = row.split_at(cols);
            let (dg, du) = drow.split_at_mut(cols);
            for c in 0..cols {
                (dg[c], du[c]) = swiglu_grad(d[c], g[c], u[c]);
            }
        },
    );
}

pub fn add_assign(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "add_assign: lengths");
    dst.par_iter_mut().zip(src.par_iter()).for_each(|(d, s)| *d += s);
}

/// `dst[dst_rows[i]] = src[src_rows[i]]`, rows of `width`. Sequential: the
/// rows are few (a KV-cache write per token) and may not be distinct.
pub fn copy_rows(src: &[f32], dst: &mut [f32], width: usize, src_rows: &[u32], dst_rows: &[u32]) {
    assert_eq!(src_rows.len(), dst_rows.len(), "copy_rows: one destination per source row");
    for (&s, &d) in src_rows.iter().zip(dst_rows) {
        let (s, d) = (s as usize * width, d as usize * width);
        assert!(s + width <= src.len() && d + width <= dst.len(), "copy_rows: row outside the buffer");
        dst[d..d + width].copy_from_slice(&src[s..s + width]);
    }
}
