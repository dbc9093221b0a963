//! kernels/rmsnorm.cu against the CPU's RMSNorm.

use super::util::{down, gpu, random_bf16, rel_err, up, BF16_TOL};
use engine::backend::cpu::norm::{rmsnorm_bwd, rmsnorm_fwd};
use engine::backend::cuda::Bf16;

#[test]
fn rmsnorm_matches_the_cpu() {
    let Some(g) = gpu("rmsnorm_matches_the_cpu") else { return };
    for (rows, dim) in [(37usize, 200usize), (1, 64), (70, 1031)] {
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
    }
}
