//! Matrix products through cuBLASLt (DESIGN.md §2): bf16 operands and
//! results, fp32 accumulation, the bias fused as an epilogue.
//!
//! cuBLASLt is column-major; our tensors are row-major, and a row-major
//! `[r, c]` matrix is the column-major `[c, r]` one. So each product is
//! computed transposed: `y = x·wᵀ` as `yᵀ = w·xᵀ`, and so on below.

use super::{Bf16, Gpu};
use crate::backend::MatShape;
use anyhow::{anyhow, bail, Result};
use cudarc::cublaslt::{Matmul, MatmulConfig};
use cudarc::driver::{DevicePtr, DevicePtrMut};

fn check(what: &str, len: usize, want: usize) -> Result<()> {
    if len != want {
        bail!("{what}: {len} elements, expected {want}");
    }
    Ok(())
}

/// A column-major product `C[m,n] = α·op(A)·op(B) + β·C` on row-major data.
#[allow(clippy::too_many_arguments)]
fn config(
    transa: bool,
    transb: bool,
    m: usize,
    n: usize,
    k: usize,
    lda: usize,
    ldb: usize,
    ldc: usize,
    beta: f32,
) -> MatmulConfig {
    MatmulConfig {
        transa,
        transb,
        transc: false,
        m: m as u64,
        n: n as u64,
        k: k as u64,
        alpha: 1.0,
        lda: lda as i64,
        ldb: ldb as i64,
        beta,
        ldc: ldc as i64,
        stride_a: None,
        stride_b: None,
        stride_c: None,
        stride_bias: None,
        batch_size: None,
    }
}

impl Gpu {
    /// `y[m,n] = x[m,k] · w[n,k]ᵀ (+ bias[n])`; with `accumulate`, `y +=`.
    /// Column-major: `yᵀ[n,m] = w (as op(A) = (wᵀ)ᵀ, lda = k) · xᵀ (ldb = k)`.
    pub fn matmul<I: DevicePtr<Bf16>, O: DevicePtrMut<Bf16>>(
        &self,
        s: MatShape,
        x: &I,
        w: &I,
        bias: Option<&I>,
        y: &mut O,
        accumulate: bool,
    ) -> Result<()> {
        check("matmul: x", x.len(), s.m * s.k)?;
        check("matmul: w", w.len(), s.n * s.k)?;
        check("matmul: y", y.len(), s.m * s.n)?;
        if let Some(b) = bias {
            check("matmul: bias", b.len(), s.n)?;
        }
        let cfg = config(true, false, s.n, s.m, s.k, s.k, s.k, s.n, if accumulate { 1.0 } else { 0.0 });
        // SAFETY: every operand's length matches its shape (checked above).
        unsafe { self.blas.matmul(cfg, w, x, y, bias, None) }.map_err(|e| anyhow!("matmul {s:?}: cuBLASLt: {e:?}"))
    }

    /// `dx[m,k] = dy[m,n] · w[n,k]` (or `+=`). Column-major:
    /// `dxᵀ[k,m] = wᵀ (lda = k) · dyᵀ (ldb = n)`.
    pub fn matmul_dx<I: DevicePtr<Bf16>, O: DevicePtrMut<Bf16>>(
        &self,
        s: MatShape,
        dy: &I,
        w: &I,
        dx: &mut O,
        accumulate: bool,
    ) -> Result<()> {
        check("matmul_dx: dy", dy.len(), s.m * s.n)?;
        check("matmul_dx: w", w.len(), s.n * s.k)?;
        check("matmul_dx: dx", dx.len(), s.m * s.k)?;
        let cfg = config(false, false, s.k, s.m, s.n, s.k, s.n, s.k, if accumulate { 1.0 } else { 0.0 });
        // SAFETY: lengths checked above.
        unsafe { self.blas.matmul(cfg, w, dy, dx, None, None) }.map_err(|e| anyhow!("matmul_dx {s:?}: cuBLASLt: {e:?}"))
    }

    /// `dw[n,k] += dy[m,n]ᵀ · x[m,k]`. Column-major:
    /// `dwᵀ[k,n] += xᵀ (lda = k) · dy (op(B) = (dyᵀ)ᵀ, ldb = n)`.
    pub fn matmul_dw<I: DevicePtr<Bf16>, O: DevicePtrMut<Bf16>>(
        &self,
        s: MatShape,
        dy: &I,
        x: &I,
        dw: &mut O,
    ) -> Result<()> {
        check("matmul_dw: dy", dy.len(), s.m * s.n)?;
        check("matmul_dw: x", x.len(), s.m * s.k)?;
        check("matmul_dw: dw", dw.len(), s.n * s.k)?;
        let cfg = config(false, true, s.k, s.n, s.m, s.k, s.n, s.k, 1.0);
        // SAFETY: lengths checked above.
        unsafe { self.blas.matmul(cfg, x, dy, dw, None, None) }.map_err(|e| anyhow!("matmul_dw {s:?}: cuBLASLt: {e:?}"))
    }
}
