//! kernels/logprob.cu on fp32 logits (issue 7: "fp32 math on bf16 or fp32
//! logits"): values bf16 cannot hold, at an odd element offset, through the
//! CUDA backend's ops on an fp32 buffer (the fast kernels) and through the
//! scalar reference kernels (forward and backward), against the CPU's log-probabilities: logp, lse
//! and the entropy within 1e-5, dz within 1e-5 of each value (plus 1e-6 of
//! its row's largest). The kernels' logic on fp32 rows also runs under
//! tools/kernel_emu in CI (tests/kernel_emu.rs).

use super::util::{gpu, put_f32, put_idx, Lcg};
use engine::backend::cpu::logprob::{logprob_bwd, logprob_fwd};
use engine::backend::cuda::Cuda;
use engine::backend::{Backend, Span, IGNORE};

/// Within 1e-5 of `want` (of 1 below 1).
fn close(got: &[f32], want: &[f32], what: &str) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{what}[{i}]: {g} vs {w}");
    }
}

/// dz rows: 2e-5 of each value (the GPU's own lse feeds its backward) plus
/// 1e-6 of the row's largest.
fn close_rows(got: &[f32], want: &[f32], vocab: usize, what: &str) {
    for (r, (g, w)) in got.chunks(vocab).zip(want.chunks(vocab)).enumerate() {
        let scale = w.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        for (i, (&a, &b)) in g.iter().zip(w).enumerate() {
            assert!((a - b).abs() <= 2e-5 * b.abs() + 1e-6 * scale, "{what} row {r} [{i}]: {a} vs {b} (max {scale})");
        }
    }
}

#[test]
fn logprob_on_fp32_logits_matches_the_cpu() {
    let Some(g) = gpu("logprob_on_fp32_logits_matches_the_cpu") else { return };
    let be = Cuda::new(0).unwrap();
    for (rows, vocab, inv_temp) in [(7usize, 1007usize, 1.0 / 0.7), (3, 151_936, 1.0f32), (2, 1, 1.0)] {
        let mut rng = Lcg(vocab as u64);
        // Uniform in [-8, 8): 24-bit values, not bf16's 8.
        let z: Vec<f32> = (0..rows * vocab).map(|_| 16.0 * rng.next() - 8.0).collect();
        let y: Vec<u32> =
            (0..rows).map(|r| if r % 3 == 1 { IGNORE } else { ((r * 7919 + 3) % vocab) as u32 }).collect();
        let coef: Vec<f32> = (0..rows).map(|_| rng.next() - 0.5).collect();
        let ent_coef: Vec<f32> = (0..rows).map(|_| 0.1 * (rng.next() - 0.5)).collect();
        for entropy in [true, false] {
            let what = format!("{rows}×{vocab} 1/T {inv_temp:.3} entropy {entropy}");
            let (mut logp, mut lse, mut h) = (vec![0.0; rows], vec![0.0; rows], vec![0.0; rows]);
            logprob_fwd(&z, &y, vocab, inv_temp, &mut logp, &mut lse, entropy.then_some(&mut h[..]));

            // The backend's ops on an fp32 buffer, one element in.
            let n = rows * vocab;
            let mut zd = put_f32(&be, &[&[0.0][..], &z].concat());
            let yd = put_idx(&be, &y);
            let (mut lpd, mut lsd, mut hd) = (be.alloc_f32(rows), be.alloc_f32(rows), be.alloc_f32(rows));
            let all = Span::new(0, rows);
            be.logprob_fwd(
                Cuda::view(&zd, Span::new(1, n)),
                Cuda::idx_view(&yd, all),
                vocab,
                inv_temp,
                Cuda::view_mut(&mut lpd, all),
                Cuda::view_mut(&mut lsd, all),
                entropy.then(|| Cuda::view_mut(&mut hd, all)),
            );
            let (g_lse, g_h) = (be.read(Cuda::view(&lsd, all)), be.read(Cuda::view(&hd, all)));
            close(&be.read(Cuda::view(&lpd, all)), &logp, &format!("{what}: logp"));
            close(&g_lse, &lse, &format!("{what}: lse"));
            if entropy {
                close(&g_h, &h, &format!("{what}: entropy"));
            }
            let mut dz = z.clone();
            let e = entropy.then_some((&ent_coef[..], &h[..]));
            logprob_bwd(&mut dz, &y, vocab, inv_temp, &lse, &coef, e);
            let (cd, ed) = (put_f32(&be, &coef), put_f32(&be, &ent_coef));
            be.logprob_bwd(
                Cuda::view_mut(&mut zd, Span::new(1, n)),
                Cuda::idx_view(&yd, all),
                vocab,
                inv_temp,
                Cuda::view(&lsd, all),
                Cuda::view(&cd, all),
                entropy.then(|| (Cuda::view(&ed, all), Cuda::view(&hd, all))),
            );
            close_rows(&be.read(Cuda::view(&zd, Span::new(1, n))), &dz, vocab, &format!("{what}: dz"));

            // The scalar reference kernels on an fp32 slice.
            let zs = g.stream.clone_htod(&z).unwrap();
            let ys = g.stream.clone_htod(&y).unwrap();
            let mut l1 = g.stream.alloc_zeros::<f32>(rows).unwrap();
            let mut l2 = g.stream.alloc_zeros::<f32>(rows).unwrap();
            let mut l3 = g.stream.alloc_zeros::<f32>(rows).unwrap();
            let mut hv = entropy.then(|| l3.as_view_mut());
            g.logprob_fwd_reference(&zs, &ys, vocab, inv_temp, &mut l1, &mut l2, hv.as_mut()).unwrap();
            let get = |x: &cudarc::driver::CudaSlice<f32>| g.stream.clone_dtoh(x).unwrap();
            close(&get(&l1), &logp, &format!("{what}: reference logp"));
            close(&get(&l2), &lse, &format!("{what}: reference lse"));
            if entropy {
                close(&get(&l3), &h, &format!("{what}: reference entropy"));
            }
            let mut zr = zs.clone();
            let (cs, es) = (g.stream.clone_htod(&coef).unwrap(), g.stream.clone_htod(&ent_coef).unwrap());
            let ent = entropy.then(|| (es.as_view(), l3.as_view()));
            let ent = ent.as_ref().map(|(e, h)| (e, h));
            g.logprob_bwd_reference(&mut zr, &ys, vocab, inv_temp, &l2, &cs, ent).unwrap();
            close_rows(&get(&zr), &dz, vocab, &format!("{what}: reference dz"));
        }
    }
}
