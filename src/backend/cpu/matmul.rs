//! Matrix products through the `gemm` crate (f32, rayon-parallel).
//!
//! `gemm` splits work over blocks of the output and walks the inner
//! dimension in a fixed order, so results do not depend on the thread count
//! (checked by `tests/determinism.rs`).

use crate::backend::MatShape;
use gemm::Parallelism;
use rayon::prelude::*;

fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// One operand of [`gemm_raw`]: a slice and its (row, column) strides.
#[derive(Clone, Copy)]
pub struct Operand<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

/// `dst[rows, cols] = (accumulate ? dst : 0) + lhs[rows, inner] · rhs[inner, cols]`,
/// each matrix given by strides; `dst` has row stride `dst_rs` and unit
/// column stride. `parallel` lets gemm use the rayon pool (callers already
/// inside a rayon task pass false).
#[allow(clippy::too_many_arguments)]
pub fn gemm_raw(
    rows: usize,
    cols: usize,
    inner: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: Operand,
    rhs: Operand,
    parallel: bool,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(dst.len() >= (rows - 1) * dst_rs + cols, "gemm: dst too short");
    if inner == 0 {
        if !accumulate {
            for r in 0..rows {
                dst[r * dst_rs..r * dst_rs + cols].fill(0.0);
            }
        }
        return;
    }
    // Bounds: the last element each operand's strides can reach.
    assert!(lhs.data.len() > (rows - 1) * lhs.rs + (inner - 1) * lhs.cs, "gemm: lhs too short");
    assert!(rhs.data.len() > (inner - 1) * rhs.rs + (cols - 1) * rhs.cs, "gemm: rhs too short");
    // SAFETY: the asserts above keep every access inside the slices; dst is
    // exclusively borrowed and so does not alias lhs or rhs.
    unsafe {
        gemm::gemm(
            rows,
            cols,
            inner,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            if parallel { parallelism() } else { Parallelism::None },
        );
    }
}

/// A contiguous `dst[rows, cols]` product on the whole rayon pool.
#[allow(clippy::too_many_arguments)]
fn gemm_strided(
    rows: usize,
    cols: usize,
    inner: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    assert_eq!(dst.len(), rows * cols, "gemm: dst has {} elements, want {rows}x{cols}", dst.len());
    let lhs = Operand { data: lhs, rs: lhs_rs, cs: lhs_cs };
    let rhs = Operand { data: rhs, rs: rhs_rs, cs: rhs_cs };
    gemm_raw(rows, cols, inner, dst, cols, accumulate, lhs, rhs, true);
}

/// Rows at or below which [`matmul`] uses dot products instead of gemm: a
/// decode step multiplies a few token rows by every weight matrix, and gemm
/// would repack the whole matrix at each call (measured: faster up to 16–32
/// rows on the generate benchmark, slower at 64).
const FEW_ROWS: usize = 32;

/// Weight rows per task of the few-rows path (64 × k floats stay in cache
/// while every input row passes over them).
const COLS_PER_TASK: usize = 64;

/// Dot product in 16 f32 lanes added in a fixed order (vectorises).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0.0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..L {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// [`dot`] of 2 input rows with 2 weight rows at once, each of the 4
/// products exactly as `dot` computes it (the same lanes, added in the same
/// order: the same bits). One pass over the 16-float chunks loads 4 vectors
/// for 4 multiply-adds, where 4 separate dots load 8.
#[inline(always)]
fn dots2x2(x0: &[f32], x1: &[f32], w0: &[f32], w1: &[f32]) -> [f32; 4] {
    const L: usize = 16;
    let (mut a, mut b, mut c, mut d) = ([0.0f32; L], [0.0f32; L], [0.0f32; L], [0.0f32; L]);
    let chunks = x0.chunks_exact(L).zip(x1.chunks_exact(L)).zip(w0.chunks_exact(L).zip(w1.chunks_exact(L)));
    for ((p, q), (u, v)) in chunks {
        for i in 0..L {
            a[i] += p[i] * u[i];
            b[i] += p[i] * v[i];
            c[i] += q[i] * u[i];
            d[i] += q[i] * v[i];
        }
    }
    let full = x0.len() - x0.len() % L;
    let tail = |x: &[f32], w: &[f32]| -> f32 { x[full..].iter().zip(&w[full..]).map(|(s, t)| s * t).sum() };
    [
        a.iter().sum::<f32>() + tail(x0, w0),
        b.iter().sum::<f32>() + tail(x0, w1),
        c.iter().sum::<f32>() + tail(x1, w0),
        d.iter().sum::<f32>() + tail(x1, w1),
    ]
}

/// [`dot`] of 1 input row with 4 weight rows at once, as [`dots2x2`] (the
/// same bits as 4 dots): the input row's chunk is loaded once for the 4.
#[inline(always)]
fn dots1x4(x: &[f32], w: [&[f32]; 4]) -> [f32; 4] {
    const L: usize = 16;
    let (mut a, mut b, mut c, mut d) = ([0.0f32; L], [0.0f32; L], [0.0f32; L], [0.0f32; L]);
    let ws = w[0].chunks_exact(L).zip(w[1].chunks_exact(L)).zip(w[2].chunks_exact(L).zip(w[3].chunks_exact(L)));
    for (p, ((u, v), (s, t))) in x.chunks_exact(L).zip(ws) {
        for i in 0..L {
            a[i] += p[i] * u[i];
            b[i] += p[i] * v[i];
            c[i] += p[i] * s[i];
            d[i] += p[i] * t[i];
        }
    }
    let full = x.len() - x.len() % L;
    let tail = |w: &[f32]| -> f32 { x[full..].iter().zip(&w[full..]).map(|(s, t)| s * t).sum() };
    [
        a.iter().sum::<f32>() + tail(w[0]),
        b.iter().sum::<f32>() + tail(w[1]),
        c.iter().sum::<f32>() + tail(w[2]),
        d.iter().sum::<f32>() + tail(w[3]),
    ]
}

/// `y[m,n] (+)= x[m,k] · w[n,k]ᵀ` for few rows: each output element is one
/// dot product over a contiguous weight row. Tasks take blocks of weight
/// rows and pass every input row over them, 2 input rows by 2 weight rows at
/// a time ([`dots2x2`]); each fills its own block of columns, copied into `y`
/// after.
fn matmul_few_rows(s: MatShape, x: &[f32], w: &[f32], y: &mut [f32], accumulate: bool) {
    let MatShape { m, n, k } = s;
    let blocks: Vec<Vec<f32>> = w
        .par_chunks(COLS_PER_TASK * k)
        .map(|wb| {
            let cols = wb.len() / k;
            let mut out = vec![0.0f32; m * cols];
            let (xr, wr) = (|i: usize| &x[i * k..(i + 1) * k], |j: usize| &wb[j * k..(j + 1) * k]);
            let (m2, c2) = (m - m % 2, cols - cols % 2);
            for i in (0..m2).step_by(2) {
                for j in (0..c2).step_by(2) {
                    let [a, b, c, d] = dots2x2(xr(i), xr(i + 1), wr(j), wr(j + 1));
                    out[i * cols + j] = a;
                    out[i * cols + j + 1] = b;
                    out[(i + 1) * cols + j] = c;
                    out[(i + 1) * cols + j + 1] = d;
                }
            }
            // The edges: the last row of an odd count (1 by 4), the last
            // columns.
            let c4 = cols - cols % 4;
            for i in m2..m {
                for j in (0..c4).step_by(4) {
                    let d = dots1x4(xr(i), [wr(j), wr(j + 1), wr(j + 2), wr(j + 3)]);
                    out[i * cols + j..i * cols + j + 4].copy_from_slice(&d);
                }
            }
            for i in 0..m {
                let j0 = if i < m2 { c2 } else { c4 };
                for j in j0..cols {
                    out[i * cols + j] = dot(xr(i), wr(j));
                }
            }
            out
        })
        .collect();
    for (b, block) in blocks.iter().enumerate() {
        let (j0, cols) = (b * COLS_PER_TASK, block.len() / m);
        for (yr, br) in y.chunks_exact_mut(n).zip(block.chunks_exact(cols)) {
            for (o, v) in yr[j0..j0 + cols].iter_mut().zip(br) {
                *o = if accumulate { *o + v } else { *v };
            }
        }
    }
}

/// `y[m,n] (+)= x[m,k] · w[n,k]ᵀ (+ bias)`.
pub fn matmul(s: MatShape, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32], accumulate: bool) {
    let MatShape { m, n, k } = s;
    assert_eq!(x.len(), m * k, "matmul: x");
    assert_eq!(w.len(), n * k, "matmul: w");
    if m <= FEW_ROWS {
        assert_eq!(y.len(), m * n, "matmul: y");
        matmul_few_rows(s, x, w, y, accumulate);
    } else {
        gemm_strided(m, n, k, y, accumulate, x, (k, 1), w, (1, k));
    }
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "matmul: bias");
        for row in y.chunks_mut(n) {
            for (yi, bi) in row.iter_mut().zip(b) {
                *yi += bi;
            }
        }
    }
}

/// `dx[m,k] (+)= dy[m,n] · w[n,k]`.
pub fn matmul_dx(s: MatShape, dy: &[f32], w: &[f32], dx: &mut [f32], accumulate: bool) {
    let MatShape { m, n, k } = s;
    assert_eq!(dy.len(), m * n, "matmul_dx: dy");
    assert_eq!(w.len(), n * k, "matmul_dx: w");
    gemm_strided(m, k, n, dx, accumulate, dy, (n, 1), w, (k, 1));
}

/// `dw[n,k] += dy[m,n]ᵀ · x[m,k]`.
pub fn matmul_dw(s: MatShape, dy: &[f32], x: &[f32], dw: &mut [f32]) {
    let MatShape { m, n, k } = s;
    assert_eq!(dy.len(), m * n, "matmul_dw: dy");
    assert_eq!(x.len(), m * k, "matmul_dw: x");
    gemm_strided(n, k, m, dw, true, dy, (1, n), x, (k, 1));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The few-rows product with its 2 × 2 and 1 × 4 blocks gives every
    /// element the bits of one `dot` (so blocking changed no result), for
    /// row counts, weight-row counts and lengths around the block sizes,
    /// with and without accumulation.
    #[test]
    fn few_rows_blocks_give_the_bits_of_single_dots() {
        let mut seed = 1u64;
        let mut rnd = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
                })
                .collect()
        };
        for (m, n, k) in [(1, 7, 5), (3, 9, 33), (4, 4, 16), (5, 70, 100), (9, 131, 48), (16, 64, 256)] {
            let (x, w, y0) = (rnd(m * k), rnd(n * k), rnd(m * n));
            for accumulate in [false, true] {
                let mut y = y0.clone();
                matmul_few_rows(MatShape { m, n, k }, &x, &w, &mut y, accumulate);
                for i in 0..m {
                    for j in 0..n {
                        let d = dot(&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]);
                        let want = if accumulate { y0[i * n + j] + d } else { d };
                        assert_eq!(y[i * n + j].to_bits(), want.to_bits(), "m {m} n {n} k {k} ({i}, {j})");
                    }
                }
            }
        }
    }
}
