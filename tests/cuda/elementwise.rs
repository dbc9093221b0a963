//! kernels/elementwise.cu against the CPU: fill, copy, add, scale bit for bit
//! (one fp32 operation, one rounding, on both sides) and the two-stage sum of
//! squares to 1e-6 (f64 sums of exact squares), deterministic.

use super::util::{down, gpu, random_bf16, up};
use engine::backend::cpu::optim::sum_squares;
use engine::backend::cuda::{Bf16, Gpu};

fn bf(v: f32) -> f32 {
    Bf16::from_f32(v).to_f32()
}

#[test]
fn fill_copy_add_scale_match_the_cpu() {
    let Some(g) = gpu("fill_copy_add_scale_match_the_cpu") else { return };
    for n in [1usize, 1000 + 7, 3 * 16384 + 5, (1 << 20) + 3] {
        let a = random_bf16(n, 11);
        let b = random_bf16(n, 12);
        let (ad, bd) = (up(&g, &a), up(&g, &b));

        let mut x = g.stream.alloc_zeros::<Bf16>(n).unwrap();
        g.fill(&mut x, 0.3).unwrap();
        assert!(down(&g, &x).iter().all(|&v| v == bf(0.3)), "fill {n}");

        g.copy(&ad, &mut x).unwrap();
        assert_eq!(down(&g, &x), a, "copy {n}");

        g.add_assign(&mut x, &bd).unwrap();
        let sum: Vec<f32> = a.iter().zip(&b).map(|(p, q)| bf(p + q)).collect();
        assert_eq!(down(&g, &x), sum, "add_assign {n}");

        g.scale(&mut x, 0.37).unwrap();
        let scaled: Vec<f32> = sum.iter().map(|v| bf(v * 0.37)).collect();
        assert_eq!(down(&g, &x), scaled, "scale {n}");
    }
    // Views at element offsets: dst and src at the same offset mod 8 (a
    // scalar head, then 16-byte vectors) and at different ones (all scalar).
    for (n, od, os) in [(1000 + 7, 1usize, 1usize), (1000 + 7, 1, 0), (4096 + 3, 5, 2), (13, 3, 3), (7, 1, 1)] {
        let a = random_bf16(n + os, 13);
        let b = random_bf16(n + od, 14);
        let ad = up(&g, &a);
        let mut xd = up(&g, &b);
        let (a, b) = (&a[os..], &b[od..]);
        let before = down(&g, &xd)[..od].to_vec();
        {
            let mut x = xd.slice_mut(od..od + n);
            g.add_assign(&mut x, &ad.slice(os..os + n)).unwrap();
        }
        let got = down(&g, &xd);
        assert_eq!(got[..od], before[..], "add_assign at {od}: the elements before the view are untouched");
        let sum: Vec<f32> = b.iter().zip(a).map(|(p, q)| bf(p + q)).collect();
        assert_eq!(got[od..], sum[..], "add_assign {n} at offsets {od}, {os}");
        {
            let mut x = xd.slice_mut(od..od + n);
            g.scale(&mut x, -1.5).unwrap();
        }
        let scaled: Vec<f32> = sum.iter().map(|v| bf(v * -1.5)).collect();
        assert_eq!(down(&g, &xd)[od..], scaled[..], "scale {n} at {od}");
        {
            let mut x = xd.slice_mut(od..od + n);
            g.copy(&ad.slice(os..os + n), &mut x).unwrap();
        }
        assert_eq!(down(&g, &xd)[od..], a[..], "copy {n} at offsets {od}, {os}");
        {
            let mut x = xd.slice_mut(od..od + n);
            g.fill(&mut x, -0.7).unwrap();
        }
        let got = down(&g, &xd);
        assert!(got[od..].iter().all(|&v| v == bf(-0.7)), "fill {n} at {od}");
        assert_eq!(got[..od], before[..], "fill at {od}: the elements before the view are untouched");
    }
    // Mismatched lengths are refused before any launch.
    let (a, mut b) = (up(&g, &random_bf16(10, 1)), g.stream.alloc_zeros::<Bf16>(11).unwrap());
    assert!(g.copy(&a, &mut b).is_err());
    assert!(g.add_assign(&mut b, &a).is_err());
}

#[test]
fn sum_squares_matches_the_cpu_and_is_deterministic() {
    let Some(g) = gpu("sum_squares_matches_the_cpu_and_is_deterministic") else { return };
    // One partial chunk, a ragged last chunk, many chunks (more than the
    // 256 threads of the final block). (No empty case: the driver refuses
    // zero-byte allocations.)
    for n in [1000 + 7, 16384, 3 * 16384 + 5, 300 * 16384 + 77] {
        let x = random_bf16(n, 21);
        let want = sum_squares(&x);
        let xd = up(&g, &x);
        let mut scratch = g.stream.alloc_zeros::<f64>(Gpu::sum_squares_scratch_len(n)).unwrap();
        let got = g.sum_squares(&xd, &mut scratch).unwrap();
        let again = g.sum_squares(&xd, &mut scratch).unwrap();
        let e = (got - want).abs() / want.abs().max(1e-30);
        println!("sum_squares {n}: gpu {got:.17e} cpu {want:.17e} rel {e:.2e}");
        assert!(got.is_finite() && e < 1e-6, "sum_squares {n}: {got} vs {want}");
        assert_eq!(got.to_bits(), again.to_bits(), "sum_squares {n}: two runs differ");
    }
    // A view at an odd offset takes scalar loads of the same elements in the
    // same order: the same bits as the aligned buffer.
    for n in [3 * 16384 + 5, 16384] {
        let x = random_bf16(n + 1, 22);
        let whole = up(&g, &x);
        let aligned = up(&g, &x[1..]);
        let mut scratch = g.stream.alloc_zeros::<f64>(Gpu::sum_squares_scratch_len(n)).unwrap();
        let a = g.sum_squares(&aligned, &mut scratch).unwrap();
        let b = g.sum_squares(&whole.slice(1..n + 1), &mut scratch).unwrap();
        assert_eq!(a.to_bits(), b.to_bits(), "sum_squares {n}: aligned {a} vs offset view {b}");
    }
    // Tiny and huge values: squares of bf16 neither underflow nor overflow.
    let x = vec![1e-30f32, -3e30, 2.5e-20, 1.0];
    let want: f64 = x.iter().map(|&v| bf(v) as f64 * bf(v) as f64).sum();
    let mut scratch = g.stream.alloc_zeros::<f64>(Gpu::sum_squares_scratch_len(x.len())).unwrap();
    let got = g.sum_squares(&up(&g, &x), &mut scratch).unwrap();
    assert!(got.is_finite() && (got - want).abs() / want < 1e-6, "{got} vs {want}");
    // A scratch too small is refused.
    let mut small = g.stream.alloc_zeros::<f64>(1).unwrap();
    assert!(g.sum_squares(&up(&g, &random_bf16(20000, 1)), &mut small).is_err());
}
