//! Each CUDA kernel against the CPU reference, on random inputs of odd
//! sizes (DESIGN.md §6): inputs are rounded to bf16 first, so the only error
//! left is the kernel's own (bf16 outputs, fp32 arithmetic). Without a GPU
//! every test prints one line saying it skipped; with ENGINE_REQUIRE_CUDA=1
//! a missing GPU is a failure.

#![cfg(feature = "cuda")]

use engine::backend::cpu::norm::{rmsnorm_bwd, rmsnorm_fwd};
use engine::backend::cuda::{Bf16, Gpu};

/// The GPU, or `None` after printing why the test skips.
fn gpu(test: &str) -> Option<Gpu> {
    match Gpu::new(0) {
        Ok(g) => Some(g),
        Err(e) if std::env::var("ENGINE_REQUIRE_CUDA").is_ok_and(|v| v == "1") => {
            panic!("{test}: ENGINE_REQUIRE_CUDA=1 but {e}")
        }
        Err(e) => {
            println!("skip {test}: {e}");
            None
        }
    }
}

/// Deterministic values in [-1, 1), already representable in bf16.
fn random_bf16(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            Bf16::from_f32(2.0 * u - 1.0).to_f32()
        })
        .collect()
}

fn up(g: &Gpu, x: &[f32]) -> cudarc::driver::CudaSlice<Bf16> {
    let h: Vec<Bf16> = x.iter().map(|&v| Bf16::from_f32(v)).collect();
    g.stream.clone_htod(&h).unwrap()
}

fn down(g: &Gpu, x: &cudarc::driver::CudaSlice<Bf16>) -> Vec<f32> {
    g.stream.clone_dtoh(x).unwrap().iter().map(|v| v.to_f32()).collect()
}

/// ‖a − b‖ / ‖b‖, with NaN never passing.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    let e = (num / den.max(1e-30)).sqrt();
    assert!(e.is_finite(), "NaN or infinity in the output");
    e
}

/// bf16 keeps 8 bits of mantissa: one rounding is at most 2^-9 relative.
const BF16_TOL: f64 = 1e-2;

#[test]
fn casts_round_trip() {
    let Some(g) = gpu("casts_round_trip") else { return };
    let x: Vec<f32> = (0..1000 + 7).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
    let xd = g.stream.clone_htod(&x).unwrap();
    let mut b = g.stream.alloc_zeros::<Bf16>(x.len()).unwrap();
    let mut back = g.stream.alloc_zeros::<f32>(x.len()).unwrap();
    g.cast_to_bf16(&xd, &mut b).unwrap();
    g.cast_to_f32(&b, &mut back).unwrap();
    let got = g.stream.clone_dtoh(&back).unwrap();
    let want: Vec<f32> = x.iter().map(|&v| Bf16::from_f32(v).to_f32()).collect();
    assert_eq!(got, want, "the kernel rounds to nearest even, as half::bf16 does");
}

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
