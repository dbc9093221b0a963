//! kernels/swiglu.cu against the CPU's SwiGLU.

use super::util::{down, gpu, random_bf16, rel_err, up, BF16_TOL};
use engine::backend::cpu::elementwise::{swiglu_bwd, swiglu_bwd_pair, swiglu_fwd, swiglu_fwd_pair};

/// Gates over [−8, 8) (both tails of the sigmoid), exact in bf16.
fn gates(n: usize, seed: u64) -> Vec<f32> {
    random_bf16(n, seed).iter().map(|v| v * 8.0).collect()
}

#[test]
fn swiglu_matches_the_cpu() {
    let Some(g) = gpu("swiglu_matches_the_cpu") else { return };
    for n in [1usize, 1000 + 7, 37 * 5 * 96, 37 * 4864 + 3] {
        let (gt, u, dout) = (gates(n, 1), random_bf16(n, 2), random_bf16(n, 3));
        let mut out = vec![0.0; n];
        swiglu_fwd(&gt, &u, &mut out);
        let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
        swiglu_bwd(&dout, &gt, &u, &mut dg, &mut du);

        let (gd, ud, dd) = (up(&g, &gt), up(&g, &u), up(&g, &dout));
        let mut od = g.stream.alloc_zeros(n).unwrap();
        g.swiglu_fwd(&gd, &ud, &mut od).unwrap();
        // dg and du are overwritten, whatever they held.
        let (mut dgd, mut dud) = (up(&g, &random_bf16(n, 4)), up(&g, &random_bf16(n, 5)));
        g.swiglu_bwd(&dd, &gd, &ud, &mut dgd, &mut dud).unwrap();
        let (o1, dg1, du1) = (down(&g, &od), down(&g, &dgd), down(&g, &dud));
        let (e_o, e_dg, e_du) = (rel_err(&o1, &out), rel_err(&dg1, &dg), rel_err(&du1, &du));
        println!("swiglu {n}: out {e_o:.2e} dg {e_dg:.2e} du {e_du:.2e}");
        assert!(e_o < BF16_TOL && e_dg < BF16_TOL && e_du < BF16_TOL, "swiglu {n}");

        // Determinism: a second run gives the same bits.
        g.swiglu_fwd(&gd, &ud, &mut od).unwrap();
        g.swiglu_bwd(&dd, &gd, &ud, &mut dgd, &mut dud).unwrap();
        assert_eq!(down(&g, &od), o1);
        assert_eq!(down(&g, &dgd), dg1);
        assert_eq!(down(&g, &dud), du1);
    }
}

/// Views at element offsets: all at the same offset mod 8 (scalar head,
/// then 16-byte vectors) and at different ones (all scalar).
#[test]
fn swiglu_on_views_at_offsets() {
    let Some(g) = gpu("swiglu_on_views_at_offsets") else { return };
    let n = 4096 + 11;
    for offs in [[1usize, 1, 1, 1, 1], [0, 1, 2, 3, 4], [3, 3, 3, 3, 0]] {
        let [og, ou, od, oa, ob] = offs;
        let (gt, u, dout) = (gates(n + og, 1), random_bf16(n + ou, 2), random_bf16(n + od, 3));
        let mut out = vec![0.0; n];
        swiglu_fwd(&gt[og..], &u[ou..], &mut out);
        let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
        swiglu_bwd(&dout[od..], &gt[og..], &u[ou..], &mut dg, &mut du);
        let (gd, ud, dd) = (up(&g, &gt), up(&g, &u), up(&g, &dout));
        let (gv, uv, dv) = (gd.slice(og..og + n), ud.slice(ou..ou + n), dd.slice(od..od + n));
        let mut o = g.stream.alloc_zeros(n + oa).unwrap();
        g.swiglu_fwd(&gv, &uv, &mut o.slice_mut(oa..oa + n)).unwrap();
        let (mut dgd, mut dud) = (g.stream.alloc_zeros(n + oa).unwrap(), g.stream.alloc_zeros(n + ob).unwrap());
        g.swiglu_bwd(&dv, &gv, &uv, &mut dgd.slice_mut(oa..oa + n), &mut dud.slice_mut(ob..ob + n)).unwrap();
        let (o1, dg1, du1) = (down(&g, &o), down(&g, &dgd), down(&g, &dud));
        let (e_o, e_dg, e_du) = (rel_err(&o1[oa..], &out), rel_err(&dg1[oa..], &dg), rel_err(&du1[ob..], &du));
        println!("swiglu {n} at {offs:?}: out {e_o:.2e} dg {e_dg:.2e} du {e_du:.2e}");
        assert!(e_o < BF16_TOL && e_dg < BF16_TOL && e_du < BF16_TOL, "swiglu at {offs:?}");
        assert!(o1[..oa].iter().chain(&dg1[..oa]).chain(&du1[..ob]).all(|&v| v == 0.0), "nothing before the views");
    }
}

/// The model's layout: gate and up as the two halves of each row of one
/// product's output `[rows, 2·cols]`, dgate and dup written the same way;
/// widths whose rows take 16-byte vectors (multiples of 8), odd ones, and
/// a view at an odd offset (all scalar), against the CPU and bitwise on a
/// second run; every element of dgu overwritten.
#[test]
fn swiglu_pair_matches_the_cpu() {
    let Some(g) = gpu("swiglu_pair_matches_the_cpu") else { return };
    for (rows, cols, off) in [(16usize, 4864usize, 0usize), (7, 896, 0), (5, 13, 0), (1, 40, 0), (9, 64, 3)] {
        let n = rows * cols;
        let (gu, dout) = (gates(2 * n, 6), random_bf16(n, 7));
        let mut out = vec![0.0; n];
        swiglu_fwd_pair(&gu, cols, &mut out);
        let mut dgu = vec![0.0; 2 * n];
        swiglu_bwd_pair(&dout, &gu, cols, &mut dgu);
        let mut gu_host = vec![0.0; off];
        gu_host.extend_from_slice(&gu);
        let (gud, dd) = (up(&g, &gu_host), up(&g, &dout));
        let guv = gud.slice(off..off + 2 * n);
        let mut od = g.stream.alloc_zeros(n).unwrap();
        g.swiglu_fwd_pair(&guv, cols, &mut od).unwrap();
        let mut dgud = up(&g, &random_bf16(2 * n, 8));
        g.swiglu_bwd_pair(&dd, &guv, cols, &mut dgud).unwrap();
        let (o1, dgu1) = (down(&g, &od), down(&g, &dgud));
        let (e_o, e_d) = (rel_err(&o1, &out), rel_err(&dgu1, &dgu));
        println!("swiglu pair {rows}x{cols} at {off}: out {e_o:.2e} dgu {e_d:.2e}");
        assert!(e_o < BF16_TOL && e_d < BF16_TOL, "swiglu pair {rows}x{cols} at {off}");
        g.swiglu_fwd_pair(&guv, cols, &mut od).unwrap();
        g.swiglu_bwd_pair(&dd, &guv, cols, &mut dgud).unwrap();
        assert_eq!(down(&g, &od), o1);
        assert_eq!(down(&g, &dgud), dgu1);
    }
    // Rows that do not divide the buffers are refused.
    let (a, b) = (up(&g, &random_bf16(20, 1)), up(&g, &random_bf16(10, 2)));
    let mut o = g.stream.alloc_zeros(10).unwrap();
    assert!(g.swiglu_fwd_pair(&a, 3, &mut o).is_err());
    let mut d = g.stream.alloc_zeros(20).unwrap();
    assert!(g.swiglu_bwd_pair(&b, &a, 4, &mut d).is_err());
    g.sync().unwrap();
}

#[test]
fn swiglu_extreme_gates_stay_finite() {
    let Some(g) = gpu("swiglu_extreme_gates_stay_finite") else { return };
    let gt = [-200.0f32, -90.0, -88.0, -30.0, 0.0, 30.0, 88.0, 90.0, 200.0];
    let n = gt.len();
    let (u, dout) = (vec![1.0f32; n], vec![1.0f32; n]);
    let mut out = vec![0.0; n];
    swiglu_fwd(&gt, &u, &mut out);
    let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
    swiglu_bwd(&dout, &gt, &u, &mut dg, &mut du);
    let (gd, ud, dd) = (up(&g, &gt), up(&g, &u), up(&g, &dout));
    let mut od = g.stream.alloc_zeros(n).unwrap();
    let (mut dgd, mut dud) = (g.stream.alloc_zeros(n).unwrap(), g.stream.alloc_zeros(n).unwrap());
    g.swiglu_fwd(&gd, &ud, &mut od).unwrap();
    g.swiglu_bwd(&dd, &gd, &ud, &mut dgd, &mut dud).unwrap();
    for (what, got, want) in [("out", down(&g, &od), out), ("dg", down(&g, &dgd), dg), ("du", down(&g, &dud), du)] {
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(a.is_finite(), "{what}[{i}] (g = {}) is {a}", gt[i]);
            assert!((a - b).abs() <= 1e-2 * b.abs().max(1.0), "{what}[{i}] (g = {}): {a} vs {b}", gt[i]);
        }
    }
}

#[test]
fn swiglu_rejects_mismatched_lengths() {
    let Some(g) = gpu("swiglu_rejects_mismatched_lengths") else { return };
    let (a, b) = (up(&g, &random_bf16(10, 1)), up(&g, &random_bf16(11, 2)));
    let mut o = g.stream.alloc_zeros(10).unwrap();
    assert!(g.swiglu_fwd(&a, &b, &mut o).is_err());
    let mut o2 = g.stream.alloc_zeros(10).unwrap();
    assert!(g.swiglu_bwd(&a, &a, &b, &mut o, &mut o2).is_err());
    g.sync().unwrap();
}
