//! Matrix products through the `gemm` crate (f32, rayon-parallel).
//!
//! `gemm` splits work over blocks of the output and walks the inner
//! dimension in a fixed order, so results do not depend on the thread count
//! (checked by `tests/determinism.rs`).

use crate::backend::MatShape;
use gemm::Parallelism;

fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// `dst[rows, cols] = (accumulate ? dst : 0) + lhs · rhs`, with each operand
/// described by its row and column strides.
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
    if rows == 0 || cols == 0 {
        return;
    }
    if inner == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    // Bounds: the last element each operand's strides can reach.
    assert!(lhs.len() > (rows - 1) * lhs_rs + (inner - 1) * lhs_cs, "gemm: lhs too short");
    assert!(rhs.len() > (inner - 1) * rhs_rs + (cols - 1) * rhs_cs, "gemm: rhs too short");
    // SAFETY: the asserts above keep every access inside the slices; dst is
    // exclusively borrowed and does not alias lhs or rhs.
    unsafe {
        gemm::gemm(
            rows,
            cols,
            inner,
            dst.as_mut_ptr(),
            1,
            cols as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(),
        );
    }
}

/// `y[m,n] (+)= x[m,k] · w[n,k]ᵀ (+ bias)`.
pub fn matmul(s: MatShape, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32], accumulate: bool) {
    let MatShape { m, n, k } = s;
    assert_eq!(x.len(), m * k, "matmul: x");
    assert_eq!(w.len(), n * k, "matmul: w");
    gemm_strided(m, n, k, y, accumulate, x, (k, 1), w, (1, k));
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
