//! kernels/rmsnorm.cu against the CPU's RMSNorm.

use super::util::{down, gpu, random_bf16, rel_err, up, BF16_TOL};
use engine::backend::cpu::norm::{rmsnorm_bwd, rmsnorm_fwd};
use engine::backend::cuda::params::{
    ENGINE_RMSNORM_BWD_GROUP, ENGINE_RMSNORM_BWD_MAX_DIM, ENGINE_RMSNORM_BWD_ROWS, ENGINE_RMSNORM_BWD_WARP_ROWS,
};
use engine::backend::cuda::Bf16;

/// `dw + Σ_r dy·x̂` in the fixed order of the fused backward (rows of up to
/// ENGINE_RMSNORM_BWD_MAX_DIM; kernels/include/rmsnorm.h), in f32 on the
/// host with the kernel's operations (x̂ = x·rstd rounded, then one fma per
/// row), rounded to bf16 once: what rmsnorm_bwd must give bit for bit.
fn dw_order(dy: &[f32], x: &[f32], rstd: &[f32], dw: &[f32]) -> Vec<f32> {
    let (dim, rows) = (dw.len(), rstd.len());
    let (block, quad, group) =
        (ENGINE_RMSNORM_BWD_ROWS as usize, ENGINE_RMSNORM_BWD_WARP_ROWS as usize, ENGINE_RMSNORM_BWD_GROUP as usize);
    let blocks = rows.div_ceil(block);
    let share = |b: usize, j: usize| -> f32 {
        let mut s = 0.0f32;
        for w in 0..block / quad {
            let mut q = 0.0f32;
            for r in (b * block + w * quad..b * block + (w + 1) * quad).filter(|&r| r < rows) {
                q = dy[r * dim + j].mul_add(x[r * dim + j] * rstd[r], q);
            }
            s += q;
        }
        s
    };
    (0..dim)
        .map(|j| {
            let mut acc = dw[j];
            for g in 0..blocks.div_ceil(group) {
                let mut s = 0.0f32;
                for b in g * group..((g + 1) * group).min(blocks) {
                    s += share(b, j);
                }
                acc += s;
            }
            Bf16::from_f32(acc).to_f32()
        })
        .collect()
}

#[test]
fn rmsnorm_matches_the_cpu() {
    let Some(g) = gpu("rmsnorm_matches_the_cpu") else { return };
    // Every fast variant (W, K): rows of 64, 200, 264, 896 (one warp, K = 1,
    // 1, 2, 4), 1031 (one warp, K = 8, scalar: not whole vectors), 2056 and
    // 5000 (a block of 8 warps), 9000 (the simple kernels). The backward for
    // rows ≤ 2048 is the fused one (4096 + 37 rows: 130 shares of 32 rows in
    // 9 groups, the last ones partial); wider rows sum dw by columns (4100
    // rows of 2056: two spans, through scratch).
    for (rows, dim) in [
        (37usize, 200usize),
        (1, 64),
        (45, 264),
        (70, 1031),
        (33, 896),
        (9, 2056),
        (5, 5000),
        (3, 9000),
        (4133, 64),
        (4100, 2056),
    ] {
        let x = random_bf16(rows * dim, 1);
        let r = random_bf16(rows * dim, 2);
        let w = random_bf16(dim, 3);
        let dy = random_bf16(rows * dim, 4);
        // CPU reference on h = bf16(x + r), as the kernel stores it.
        let h: Vec<f32> = x.iter().zip(&r).map(|(a, b)| Bf16::from_f32(a + b).to_f32()).collect();
        let (mut y, mut rstd) = (vec![0.0; rows * dim], vec![0.0; rows]);
        rmsnorm_fwd(&h, &w, dim, 1e-6, &mut y, &mut rstd);
        let (mut dx, mut dw) = (vec![0.0; rows * dim], vec![0.0; dim]);
        rmsnorm_bwd(&dy, &h, &w, &rstd, dim, &mut dx, &mut dw);

        let (xd, rd, wd, dyd) = (up(&g, &x), up(&g, &r), up(&g, &w), up(&g, &dy));
        let mut hd = g.stream.alloc_zeros::<Bf16>(rows * dim).unwrap();
        let mut yd = g.stream.alloc_zeros::<Bf16>(rows * dim).unwrap();
        let mut rsd = g.stream.alloc_zeros::<f32>(rows).unwrap();
        g.rmsnorm_fwd(&xd, Some((&rd, &mut hd)), &wd, 1e-6, &mut yd, &mut rsd).unwrap();
        assert_eq!(down(&g, &hd), h, "h = bf16(x + residual)");
        let e_y = rel_err(&down(&g, &yd), &y);
        let e_r = rel_err(&g.stream.clone_dtoh(&rsd).unwrap(), &rstd);
        let mut dxd = g.stream.alloc_zeros::<Bf16>(rows * dim).unwrap();
        let mut dwd = g.stream.alloc_zeros::<Bf16>(dim).unwrap();
        let mut scratch = g.stream.alloc_zeros::<f32>(rows.div_ceil(32) * dim).unwrap();
        g.rmsnorm_bwd(&dyd, &hd, &wd, &rsd, &mut dxd, false, &mut dwd, &mut scratch).unwrap();
        g.sync().unwrap();
        let (e_dx, e_dw) = (rel_err(&down(&g, &dxd), &dx), rel_err(&down(&g, &dwd), &dw));
        println!("rmsnorm {rows}×{dim}: y {e_y:.2e} rstd {e_r:.2e} dx {e_dx:.2e} dw {e_dw:.2e}");
        assert!(e_y < BF16_TOL && e_r < 1e-5 && e_dx < BF16_TOL && e_dw < BF16_TOL);
        // Accumulating: a second backward adds the same again.
        let dx1 = down(&g, &dxd);
        g.rmsnorm_bwd(&dyd, &hd, &wd, &rsd, &mut dxd, true, &mut dwd, &mut scratch).unwrap();
        let twice: Vec<f32> = dx1.iter().map(|v| 2.0 * v).collect();
        assert!(rel_err(&down(&g, &dxd), &twice) < BF16_TOL);

        // The fast and the simple kernels agree; the fast ones are deterministic.
        let mut y2 = g.stream.alloc_zeros::<Bf16>(rows * dim).unwrap();
        let mut h2 = g.stream.alloc_zeros::<Bf16>(rows * dim).unwrap();
        let mut rs2 = g.stream.alloc_zeros::<f32>(rows).unwrap();
        g.rmsnorm_fwd_reference(&xd, Some((&rd, &mut h2)), &wd, 1e-6, &mut y2, &mut rs2).unwrap();
        assert_eq!(down(&g, &h2), h);
        assert!(rel_err(&down(&g, &y2), &down(&g, &yd)) < BF16_TOL);
        let mut dx2 = g.stream.alloc_zeros::<Bf16>(rows * dim).unwrap();
        let mut dw2 = g.stream.alloc_zeros::<Bf16>(dim).unwrap();
        g.rmsnorm_bwd_reference(&dyd, &hd, &wd, &rsd, &mut dx2, false, &mut dw2, &mut scratch).unwrap();
        let mut dx3 = g.stream.alloc_zeros::<Bf16>(rows * dim).unwrap();
        let mut dw3 = g.stream.alloc_zeros::<Bf16>(dim).unwrap();
        g.rmsnorm_bwd(&dyd, &hd, &wd, &rsd, &mut dx3, false, &mut dw3, &mut scratch).unwrap();
        let (dx3, dw3) = (down(&g, &dx3), down(&g, &dw3));
        assert!(rel_err(&down(&g, &dx2), &dx3) < BF16_TOL && rel_err(&down(&g, &dw2), &dw3) < BF16_TOL);
        let mut dx4 = g.stream.alloc_zeros::<Bf16>(rows * dim).unwrap();
        let mut dw4 = g.stream.alloc_zeros::<Bf16>(dim).unwrap();
        g.rmsnorm_bwd(&dyd, &hd, &wd, &rsd, &mut dx4, false, &mut dw4, &mut scratch).unwrap();
        assert_eq!(down(&g, &dx4), dx3, "rmsnorm_bwd dx is deterministic");
        assert_eq!(down(&g, &dw4), dw3, "rmsnorm_bwd dw is deterministic");
        if dim <= ENGINE_RMSNORM_BWD_MAX_DIM as usize {
            // The fused path's order, bit for bit, from a non-zero dw.
            let rs = g.stream.clone_dtoh(&rsd).unwrap();
            let dw0 = random_bf16(dim, 5);
            let mut dw5 = up(&g, &dw0);
            g.rmsnorm_bwd(&dyd, &hd, &wd, &rsd, &mut dx4, false, &mut dw5, &mut scratch).unwrap();
            assert_eq!(down(&g, &dw5), dw_order(&dy, &h, &rs, &dw0), "rmsnorm_bwd {rows}×{dim}: the dw order");
            assert_eq!(dw3, dw_order(&dy, &h, &rs, &vec![0.0; dim]), "rmsnorm_bwd {rows}×{dim}: the dw order from 0");
        }
    }
}

/// Rows in views at an odd element offset: the fast kernels take scalar
/// accesses (same structure) and still match the CPU.
#[test]
fn rmsnorm_on_views_at_offsets() {
    let Some(g) = gpu("rmsnorm_on_views_at_offsets") else { return };
    for (rows, dim, off) in [(37usize, 896usize, 1usize), (5, 2056, 3), (4133, 64, 1)] {
        let n = rows * dim;
        let x = random_bf16(n + off, 1);
        let w = random_bf16(dim + off, 3);
        let dy = random_bf16(n + off, 4);
        let (mut y, mut rstd) = (vec![0.0; n], vec![0.0; rows]);
        rmsnorm_fwd(&x[off..], &w[off..], dim, 1e-6, &mut y, &mut rstd);
        let (mut dx, mut dw) = (vec![0.0; n], vec![0.0; dim]);
        rmsnorm_bwd(&dy[off..], &x[off..], &w[off..], &rstd, dim, &mut dx, &mut dw);

        let (xd, wd, dyd) = (up(&g, &x), up(&g, &w), up(&g, &dy));
        let (xv, wv, dyv) = (xd.slice(off..off + n), wd.slice(off..off + dim), dyd.slice(off..off + n));
        let mut yd = g.stream.alloc_zeros::<Bf16>(n + off).unwrap();
        let mut rsd = g.stream.alloc_zeros::<f32>(rows).unwrap();
        g.rmsnorm_fwd(&xv, None, &wv, 1e-6, &mut yd.slice_mut(off..off + n), &mut rsd).unwrap();
        let mut dxd = g.stream.alloc_zeros::<Bf16>(n + off).unwrap();
        let mut dwd = g.stream.alloc_zeros::<Bf16>(dim + off).unwrap();
        let mut scratch = g.stream.alloc_zeros::<f32>(rows.div_ceil(32) * dim).unwrap();
        g.rmsnorm_bwd(
            &dyv,
            &xv,
            &wv,
            &rsd,
            &mut dxd.slice_mut(off..off + n),
            false,
            &mut dwd.slice_mut(off..off + dim),
            &mut scratch,
        )
        .unwrap();
        let (yg, dxg, dwg) = (down(&g, &yd), down(&g, &dxd), down(&g, &dwd));
        let e_y = rel_err(&yg[off..], &y);
        let e_r = rel_err(&g.stream.clone_dtoh(&rsd).unwrap(), &rstd);
        let (e_dx, e_dw) = (rel_err(&dxg[off..], &dx), rel_err(&dwg[off..], &dw));
        println!("rmsnorm {rows}×{dim} at {off}: y {e_y:.2e} rstd {e_r:.2e} dx {e_dx:.2e} dw {e_dw:.2e}");
        assert!(e_y < BF16_TOL && e_r < 1e-5 && e_dx < BF16_TOL && e_dw < BF16_TOL);
        assert!(yg[..off].iter().chain(&dxg[..off]).chain(&dwg[..off]).all(|&v| v == 0.0), "nothing before the views");
    }
}
