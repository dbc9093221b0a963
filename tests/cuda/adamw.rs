//! kernels/adamw.cu against the CPU's AdamW (src/backend/cpu/optim.rs): fp32
//! master weights and moments to 1e-6 (the kernel performs the same fp32
//! operations in the same order, so it should agree bit for bit), the bf16
//! working copy equal to bf16 of the master, several steps in a row.

use super::util::{down, gpu, random_bf16, rel_err, up};
use engine::backend::cpu::optim::adamw;
use engine::backend::cuda::Bf16;
use engine::backend::AdamWStep;

fn mismatches(a: &[f32], b: &[f32]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x.to_bits() != y.to_bits()).count()
}

/// Runs `steps` AdamW steps on the GPU and the CPU from the same state;
/// returns the GPU's final (p32, m, v).
fn run(g: &engine::backend::cuda::Gpu, n: usize, wd: f32, scale: f32, steps: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let r = random_bf16(n, 2);
    let mut p: Vec<f32> = random_bf16(n, 1).iter().zip(&r).map(|(a, b)| a + 1e-3 * b).collect();
    let mut m: Vec<f32> = random_bf16(n, 3).iter().map(|x| 0.01 * x).collect();
    let mut v: Vec<f32> = random_bf16(n, 4).iter().map(|x| 1e-4 * x.abs()).collect();
    let mut pd = g.stream.clone_htod(&p).unwrap();
    let mut md = g.stream.clone_htod(&m).unwrap();
    let mut vd = g.stream.clone_htod(&v).unwrap();
    let mut p16 = g.stream.alloc_zeros::<Bf16>(n).unwrap();
    for step in 1..=steps {
        let grad = random_bf16(n, 100 + step);
        let h = AdamWStep { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: wd, step };
        let gd = up(g, &grad);
        g.adamw(&mut pd, &mut p16, &gd, &mut md, &mut vd, &h, scale).unwrap();
        let scaled: Vec<f32> = grad.iter().map(|x| x * scale).collect();
        adamw(&mut p, &scaled, &mut m, &mut v, &h);

        let gp = g.stream.clone_dtoh(&pd).unwrap();
        let gm = g.stream.clone_dtoh(&md).unwrap();
        let gv = g.stream.clone_dtoh(&vd).unwrap();
        let (ep, em, ev) = (rel_err(&gp, &p), rel_err(&gm, &m), rel_err(&gv, &v));
        println!(
            "adamw n={n} wd={wd} scale={scale} step {step}: p {ep:.2e} m {em:.2e} v {ev:.2e} \
             (bit mismatches p {} m {} v {})",
            mismatches(&gp, &p),
            mismatches(&gm, &m),
            mismatches(&gv, &v)
        );
        assert!(ep < 1e-6 && em < 1e-6 && ev < 1e-6, "adamw n={n} step {step}");
        let want16: Vec<f32> = gp.iter().map(|&x| Bf16::from_f32(x).to_f32()).collect();
        assert_eq!(down(g, &p16), want16, "p16 = bf16(p32)");
    }
    (g.stream.clone_dtoh(&pd).unwrap(), g.stream.clone_dtoh(&md).unwrap(), g.stream.clone_dtoh(&vd).unwrap())
}

#[test]
fn adamw_matches_the_cpu() {
    let Some(g) = gpu("adamw_matches_the_cpu") else { return };
    for n in [1000 + 7, 70_001] {
        run(&g, n, 0.1, 1.0, 3);
        run(&g, n, 0.0, 0.37, 3);
    }
}

#[test]
fn adamw_is_deterministic_and_checks_its_inputs() {
    let Some(g) = gpu("adamw_is_deterministic_and_checks_its_inputs") else { return };
    let a = run(&g, 4099, 0.1, 0.5, 2);
    let b = run(&g, 4099, 0.1, 0.5, 2);
    assert!(mismatches(&a.0, &b.0) == 0 && mismatches(&a.1, &b.1) == 0 && mismatches(&a.2, &b.2) == 0);

    let n = 100;
    let mut p = g.stream.alloc_zeros::<f32>(n).unwrap();
    let mut p16 = g.stream.alloc_zeros::<Bf16>(n).unwrap();
    let mut m = g.stream.alloc_zeros::<f32>(n).unwrap();
    let mut v = g.stream.alloc_zeros::<f32>(n + 1).unwrap();
    let gr = up(&g, &random_bf16(n, 1));
    let h = AdamWStep { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0, step: 1 };
    assert!(g.adamw(&mut p, &mut p16, &gr, &mut m, &mut v, &h, 1.0).is_err(), "v of the wrong length");
    let mut v = g.stream.alloc_zeros::<f32>(n).unwrap();
    let h0 = AdamWStep { step: 0, ..h };
    assert!(g.adamw(&mut p, &mut p16, &gr, &mut m, &mut v, &h0, 1.0).is_err(), "step 0");
}
