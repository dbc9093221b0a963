//! cuBLASLt products against the CPU's, on odd shapes (not multiples of a tile).

use super::util::{down, gpu, random_bf16, rel_err, up, BF16_TOL};
use engine::backend::cpu::matmul::{matmul, matmul_dw, matmul_dx};
use engine::backend::cuda::Bf16;
use engine::backend::MatShape;

#[test]
fn gemm_matches_the_cpu() {
    let Some(g) = gpu("gemm_matches_the_cpu") else { return };
    for (m, n, k) in [(37usize, 129usize, 200usize), (1, 64, 96), (300, 17, 515)] {
        let s = MatShape { m, n, k };
        let (x, w, b, dy) = (random_bf16(m * k, 1), random_bf16(n * k, 2), random_bf16(n, 3), random_bf16(m * n, 4));
        let (xd, wd, bd, dyd) = (up(&g, &x), up(&g, &w), up(&g, &b), up(&g, &dy));
        // y = x·wᵀ + b, then y += x·wᵀ.
        let mut y = vec![0.0; m * n];
        matmul(s, &x, &w, Some(&b), &mut y, false);
        let mut yd = g.stream.alloc_zeros::<Bf16>(m * n).unwrap();
        g.matmul(s, &xd, &wd, Some(&bd), &mut yd, false).unwrap();
        let e_y = rel_err(&down(&g, &yd), &y);
        let mut y2 = y.clone();
        matmul(s, &x, &w, None, &mut y2, true);
        g.matmul(s, &xd, &wd, None, &mut yd, true).unwrap();
        let e_y2 = rel_err(&down(&g, &yd), &y2);
        // dx = dy·w; dw += dyᵀ·x (twice, to check the accumulation).
        let mut dx = vec![0.0; m * k];
        matmul_dx(s, &dy, &w, &mut dx, false);
        let mut dxd = g.stream.alloc_zeros::<Bf16>(m * k).unwrap();
        g.matmul_dx(s, &dyd, &wd, &mut dxd, false).unwrap();
        let e_dx = rel_err(&down(&g, &dxd), &dx);
        let mut dw = vec![0.0; n * k];
        matmul_dw(s, &dy, &x, &mut dw);
        matmul_dw(s, &dy, &x, &mut dw);
        let mut dwd = g.stream.alloc_zeros::<Bf16>(n * k).unwrap();
        g.matmul_dw(s, &dyd, &xd, &mut dwd).unwrap();
        g.matmul_dw(s, &dyd, &xd, &mut dwd).unwrap();
        let e_dw = rel_err(&down(&g, &dwd), &dw);
        println!("gemm {m}×{n}×{k}: y {e_y:.2e} y+= {e_y2:.2e} dx {e_dx:.2e} dw {e_dw:.2e}");
        assert!(e_y < BF16_TOL && e_y2 < BF16_TOL && e_dx < BF16_TOL && e_dw < BF16_TOL);
    }
}
