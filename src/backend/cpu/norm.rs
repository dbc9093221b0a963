//! RMSNorm, forward and backward (HF's LlamaRMSNorm: `w · x / sqrt(mean(x²) + eps)`).

use super::reduce::par_column_blocks;
use rayon::prelude::*;

pub fn rmsnorm_fwd(x: &[f32], w: &[f32], dim: usize, eps: f32, y: &mut [f32], rstd: &mut [f32]) {
    assert_eq!(w.len(), dim, "rmsnorm: weight");
    assert_eq!(x.len() % dim, 0, "rmsnorm: x");
    assert_eq!(y.len(), x.len(), "rmsnorm: y");
    assert_eq!(rstd.len(), x.len() / dim, "rmsnorm: rstd");
    y.par_chunks_mut(dim).zip(rstd.par_iter_mut()).zip(x.par_chunks(dim)).for_each(|((yr, r), xr)| {
        *r = rstd_of(xr, eps);
        for ((yo, xi), wi) in yr.iter_mut().zip(xr).zip(w) {
            *yo = xi * *r * wi;
        }
    });
}

/// A row's `1 / √(mean(x²) + eps)`.
pub fn rstd_of(x: &[f32], eps: f32) -> f32 {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    1.0 / (ms + eps).sqrt()
}

/// [`rmsnorm_fwd`] of one row in place (the same values).
pub fn rmsnorm_row(x: &mut [f32], w: &[f32], eps: f32) {
    let r = rstd_of(x, eps);
    for (xi, wi) in x.iter_mut().zip(w) {
        *xi = *xi * r * wi;
    }
}

/// `dx += r·w·dy − r³/dim · x · Σ(dy·w·x)`, `dw += Σ_rows dy·x·r`.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_bwd(dy: &[f32], x: &[f32], w: &[f32], rstd: &[f32], dim: usize, dx: &mut [f32], dw: &mut [f32]) {
    assert_eq!(w.len(), dim, "rmsnorm_bwd: weight");
    assert_eq!(dw.len(), dim, "rmsnorm_bwd: dw");
    assert_eq!(x.len() % dim, 0, "rmsnorm_bwd: x");
    assert_eq!(dy.len(), x.len(), "rmsnorm_bwd: dy");
    assert_eq!(dx.len(), x.len(), "rmsnorm_bwd: dx");
    assert_eq!(rstd.len(), x.len() / dim, "rmsnorm_bwd: rstd");
    dx.par_chunks_mut(dim).zip(dy.par_chunks(dim).zip(x.par_chunks(dim))).zip(rstd.par_iter()).for_each(
        |((dxr, (dyr, xr)), &r)| {
            let dot: f32 = dyr.iter().zip(w).zip(xr).map(|((d, wi), xi)| d * wi * xi).sum();
            let c = r * r * r * dot / dim as f32;
            for (((o, d), wi), xi) in dxr.iter_mut().zip(dyr).zip(w).zip(xr) {
                *o += r * wi * d - c * xi;
            }
        },
    );
    par_column_blocks(dw, |j0, block| {
        for ((dyr, xr), &r) in dy.chunks_exact(dim).zip(x.chunks_exact(dim)).zip(rstd) {
            for ((acc, d), xi) in block.iter_mut().zip(&dyr[j0..]).zip(&xr[j0..]) {
                *acc += d * xi * r;
            }
        }
    });
}
