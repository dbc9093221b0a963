//! kernels/logprob.cu against the CPU's log-probabilities (cpu::logprob) on
//! the same bf16 logits: logp, lse and entropy to fp32 precision, dz to bf16
//! precision; IGNORE targets, temperatures ≠ 1, the entropy on and off, odd
//! and Qwen-sized vocabularies; targets outside the vocabulary give NaN.
//! Then a policy loss with the entropy bonus, and GSPO, through the CUDA
//! backend's two-phase lm_head path against PyTorch's float64 references
//! (tests/fixtures/losses): logp, lse, entropy, the coefficients, dh, dW.

use super::common::to_f64;
use super::util::{down, gpu, random_bf16, rel_err, up, BF16_TOL};
use super::util::{loss_fixture, lse_f64, num, opt_num, put_f32, read_all};
use super::util::{Checks, FixtureTol, LossLayout, CPU_FIXTURE_TOL};
use engine::backend::cpu::Cpu;
use engine::backend::cuda::Cuda;
use engine::backend::{Backend, Span};
use engine::loss::TokenCoefs;
use engine::model::head::{self, HeadBuffers, HeadShape};

/// ‖a − b‖ / max(‖b‖, floor·√n): [`rel_err`] for a reference that may be
/// (near) zero, where only an absolute comparison at the `floor` scale means
/// anything. NaN never passes.
fn rel_err_floored(a: &[f32], b: &[f32], floor: f64) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    let e = (num / den.max(floor * floor * b.len() as f64)).sqrt();
    assert!(e.is_finite(), "NaN or infinity in the output");
    e
}
use engine::backend::cpu::logprob::{logprob_bwd, logprob_fwd};
use engine::backend::cuda::Gpu;
use engine::backend::IGNORE;

/// fp32 outputs (logp, lse, entropy) against the CPU's f64-summed ones.
const F32_TOL: f64 = 1e-5;

/// Logits in [-8, 8), bf16 values (times 8 is exact), so rows are peaked
/// enough that the entropy is well below log(vocab).
fn logits(rows: usize, vocab: usize, seed: u64) -> Vec<f32> {
    random_bf16(rows * vocab, seed).iter().map(|v| v * 8.0).collect()
}

/// Targets spread over the vocabulary, the first and last ids among them,
/// every fifth row IGNORE.
fn targets(rows: usize, vocab: usize) -> Vec<u32> {
    (0..rows)
        .map(|r| match r {
            _ if r % 5 == 4 => IGNORE,
            0 => 0,
            _ if r == rows - 1 => vocab as u32 - 1,
            _ => ((r * 7919 + 3) % vocab) as u32,
        })
        .collect()
}

/// Per-row coefficients in [-1, 1) with some zeros (every seventh row).
fn coefs(rows: usize, seed: u64) -> Vec<f32> {
    random_bf16(rows, seed).iter().enumerate().map(|(r, &v)| if r % 7 == 3 { 0.0 } else { v }).collect()
}

struct Fwd {
    logp: Vec<f32>,
    lse: Vec<f32>,
    entropy: Option<Vec<f32>>,
}

fn cpu_fwd(z: &[f32], y: &[u32], vocab: usize, inv_temp: f32, entropy: bool) -> Fwd {
    let rows = y.len();
    let (mut logp, mut lse, mut h) = (vec![0.0; rows], vec![0.0; rows], vec![0.0; rows]);
    logprob_fwd(z, y, vocab, inv_temp, &mut logp, &mut lse, entropy.then_some(&mut h[..]));
    Fwd { logp, lse, entropy: entropy.then_some(h) }
}

fn gpu_fwd(g: &Gpu, z: &[f32], y: &[u32], vocab: usize, inv_temp: f32, entropy: bool) -> Fwd {
    let rows = y.len();
    let zd = up(g, z);
    let yd = g.stream.clone_htod(y).unwrap();
    let mut logp = g.stream.alloc_zeros::<f32>(rows).unwrap();
    let mut lse = g.stream.alloc_zeros::<f32>(rows).unwrap();
    let mut h = g.stream.alloc_zeros::<f32>(rows).unwrap();
    let mut hv = entropy.then(|| h.as_view_mut());
    g.logprob_fwd(&zd, &yd, vocab, inv_temp, &mut logp, &mut lse, hv.as_mut()).unwrap();
    g.sync().unwrap();
    let get = |x: &cudarc::driver::CudaSlice<f32>| g.stream.clone_dtoh(x).unwrap();
    Fwd { logp: get(&logp), lse: get(&lse), entropy: entropy.then(|| get(&h)) }
}

/// dz from the GPU, on the CPU's lse and entropy (the backward's own error only).
#[allow(clippy::too_many_arguments)]
fn gpu_bwd(
    g: &Gpu,
    z: &[f32],
    y: &[u32],
    vocab: usize,
    inv_temp: f32,
    lse: &[f32],
    coef: &[f32],
    entropy: Option<(&[f32], &[f32])>,
) -> Vec<f32> {
    let mut zd = up(g, z);
    let yd = g.stream.clone_htod(y).unwrap();
    let (ld, cd) = (g.stream.clone_htod(lse).unwrap(), g.stream.clone_htod(coef).unwrap());
    match entropy {
        Some((e, h)) => {
            let (ed, hd) = (g.stream.clone_htod(e).unwrap(), g.stream.clone_htod(h).unwrap());
            g.logprob_bwd(&mut zd, &yd, vocab, inv_temp, &ld, &cd, Some((&ed.as_view(), &hd.as_view()))).unwrap();
        }
        None => g.logprob_bwd(&mut zd, &yd, vocab, inv_temp, &ld, &cd, None).unwrap(),
    }
    g.sync().unwrap();
    down(g, &zd)
}

#[test]
fn logprob_fwd_matches_the_cpu() {
    let Some(g) = gpu("logprob_fwd_matches_the_cpu") else { return };
    let cases =
        [(37usize, 1000 + 7, 1.0 / 0.7), (5, 151_936, 1.0), (3, 151_936, 1.0 / 0.6), (9, 100, 2.0), (2, 1, 1.0)];
    for (rows, vocab, inv_temp) in cases {
        let z = logits(rows, vocab, 1 + vocab as u64);
        let y = targets(rows, vocab);
        for entropy in [true, false] {
            let want = cpu_fwd(&z, &y, vocab, inv_temp, entropy);
            let got = gpu_fwd(&g, &z, &y, vocab, inv_temp, entropy);
            let (e_lp, e_lse) = (rel_err(&got.logp, &want.logp), rel_err(&got.lse, &want.lse));
            let e_h = got.entropy.as_ref().map_or(0.0, |h| rel_err(h, want.entropy.as_ref().unwrap()));
            println!("logprob_fwd {rows}×{vocab} 1/T {inv_temp:.3} entropy {entropy}: logp {e_lp:.2e} lse {e_lse:.2e} H {e_h:.2e}");
            assert!(e_lp < F32_TOL && e_lse < F32_TOL && e_h < F32_TOL, "logprob_fwd {rows}×{vocab} entropy {entropy}");
            for (r, &t) in y.iter().enumerate() {
                if t == IGNORE {
                    assert_eq!(got.logp[r], 0.0, "row {r}: an IGNORE target has logp 0");
                }
            }
            // Each value on its own, not only the norm: lse to 1e-5 of its
            // size (at least 1), entropy to 1e-5 of log(vocab).
            for r in 0..rows {
                assert!((got.lse[r] - want.lse[r]).abs() <= 1e-5 * want.lse[r].abs().max(1.0), "lse row {r}");
                if let (Some(a), Some(b)) = (&got.entropy, &want.entropy) {
                    assert!(
                        (a[r] - b[r]).abs() <= 1e-5 * (vocab as f32).ln().max(1.0),
                        "entropy row {r}: {} vs {}",
                        a[r],
                        b[r]
                    );
                }
            }
            // Determinism: the same bits again.
            let again = gpu_fwd(&g, &z, &y, vocab, inv_temp, entropy);
            assert_eq!(again.logp, got.logp);
            assert_eq!(again.lse, got.lse);
            assert_eq!(again.entropy, got.entropy);
        }
    }
}

#[test]
fn logprob_bwd_matches_the_cpu() {
    let Some(g) = gpu("logprob_bwd_matches_the_cpu") else { return };
    let cases = [(37usize, 1000 + 7, 1.0 / 0.7), (5, 151_936, 1.0 / 0.6), (9, 100, 2.0), (2, 1, 1.0)];
    for (rows, vocab, inv_temp) in cases {
        let z = logits(rows, vocab, 2 + vocab as u64);
        let y = targets(rows, vocab);
        let fwd = cpu_fwd(&z, &y, vocab, inv_temp, true);
        let h = fwd.entropy.unwrap();
        let coef = coefs(rows, 3);
        // coef and ent_coef are 0 together every seventh row (the row is
        // zeroed), ent_coef alone every third; an IGNORE row keeps only the
        // entropy term (zeroed too where ent_coef is 0).
        let ent_coef: Vec<f32> =
            coefs(rows, 4).iter().enumerate().map(|(r, &v)| if r % 3 == 0 { 0.0 } else { v }).collect();
        for with_entropy in [false, true] {
            let ent = with_entropy.then_some((&ent_coef[..], &h[..]));
            let mut want = z.clone();
            logprob_bwd(&mut want, &y, vocab, inv_temp, &fwd.lse, &coef, ent);
            let got = gpu_bwd(&g, &z, &y, vocab, inv_temp, &fwd.lse, &coef, ent);
            let e = rel_err(&got, &want);
            println!("logprob_bwd {rows}×{vocab} 1/T {inv_temp:.3} entropy {with_entropy}: dz {e:.2e}");
            assert!(e < BF16_TOL, "logprob_bwd {rows}×{vocab} entropy {with_entropy}: {e:.2e}");
            // Row by row: the one-hot entry dominates the norm, so check the
            // softmax part of each row too (the row without its target entry).
            for r in 0..rows {
                let (a, b) = (&got[r * vocab..(r + 1) * vocab], &want[r * vocab..(r + 1) * vocab]);
                let er = rel_err(a, b);
                assert!(er < BF16_TOL, "logprob_bwd {rows}×{vocab} entropy {with_entropy} row {r}: {er:.2e}");
                let keep = |x: &[f32]| -> Vec<f32> {
                    x.iter().enumerate().filter(|&(i, _)| i as u32 != y[r]).map(|(_, &v)| v).collect()
                };
                if vocab > 1 {
                    let es = rel_err(&keep(a), &keep(b));
                    assert!(
                        es < BF16_TOL,
                        "logprob_bwd {rows}×{vocab} entropy {with_entropy} row {r}, softmax part: {es:.2e}"
                    );
                }
                let e_r = if with_entropy { ent_coef[r] } else { 0.0 };
                if (coef[r] == 0.0 || y[r] == IGNORE) && e_r == 0.0 {
                    assert!(a.iter().all(|&v| v == 0.0), "row {r}: no coefficient, dz = 0");
                }
            }
            // Determinism: the same bits again.
            assert_eq!(gpu_bwd(&g, &z, &y, vocab, inv_temp, &fwd.lse, &coef, ent), got);
        }
    }
}

/// The forward then the backward on the GPU's own lse and entropy (the
/// chain the trainer runs) against the CPU's chain.
#[test]
fn logprob_gpu_chain_matches_the_cpu() {
    let Some(g) = gpu("logprob_gpu_chain_matches_the_cpu") else { return };
    let (rows, vocab, inv_temp) = (19usize, 1000 + 7, 1.0 / 0.8);
    let z = logits(rows, vocab, 5);
    let y = targets(rows, vocab);
    let coef = coefs(rows, 6);
    let ent_coef = coefs(rows, 7);
    let want_fwd = cpu_fwd(&z, &y, vocab, inv_temp, true);
    let mut want = z.clone();
    let h_cpu = want_fwd.entropy.unwrap();
    logprob_bwd(&mut want, &y, vocab, inv_temp, &want_fwd.lse, &coef, Some((&ent_coef, &h_cpu)));

    let mut zd = up(&g, &z);
    let yd = g.stream.clone_htod(&y).unwrap();
    let mut logp = g.stream.alloc_zeros::<f32>(rows).unwrap();
    let mut lse = g.stream.alloc_zeros::<f32>(rows).unwrap();
    let mut h = g.stream.alloc_zeros::<f32>(rows).unwrap();
    g.logprob_fwd(&zd, &yd, vocab, inv_temp, &mut logp, &mut lse, Some(&mut h.as_view_mut())).unwrap();
    let (cd, ed) = (g.stream.clone_htod(&coef).unwrap(), g.stream.clone_htod(&ent_coef).unwrap());
    g.logprob_bwd(&mut zd, &yd, vocab, inv_temp, &lse, &cd, Some((&ed.as_view(), &h.as_view()))).unwrap();
    g.sync().unwrap();
    let e_lp = rel_err(&g.stream.clone_dtoh(&logp).unwrap(), &want_fwd.logp);
    let e = rel_err(&down(&g, &zd), &want);
    println!("logprob chain {rows}×{vocab}: logp {e_lp:.2e} dz {e:.2e}");
    assert!(e_lp < F32_TOL && e < BF16_TOL);
}

#[test]
fn logprob_targets_outside_the_vocabulary_give_nan() {
    let Some(g) = gpu("logprob_targets_outside_the_vocabulary_give_nan") else { return };
    let (rows, vocab, inv_temp) = (6usize, 1000 + 7, 1.0);
    let z = logits(rows, vocab, 8);
    let y: Vec<u32> = vec![5, vocab as u32, IGNORE, 12_345_678, vocab as u32 - 1, IGNORE - 1];
    let bad = [false, true, false, true, false, true];
    // The CPU panics on a bad target: its reference has those rows IGNOREd.
    let y_ok: Vec<u32> = y.iter().zip(bad).map(|(&t, b)| if b { IGNORE } else { t }).collect();
    let want = cpu_fwd(&z, &y_ok, vocab, inv_temp, true);
    let got = gpu_fwd(&g, &z, &y, vocab, inv_temp, true);
    for r in 0..rows {
        if bad[r] {
            assert!(got.logp[r].is_nan(), "row {r}: target {} outside the vocabulary, logp {}", y[r], got.logp[r]);
        } else {
            assert!((got.logp[r] - want.logp[r]).abs() <= 1e-5 * want.logp[r].abs().max(1.0), "row {r}");
        }
    }
    assert!(rel_err(&got.lse, &want.lse) < F32_TOL, "lse is written for every row");
    assert!(rel_err(got.entropy.as_ref().unwrap(), want.entropy.as_ref().unwrap()) < F32_TOL);

    let coef = vec![0.5f32; rows];
    let mut dz_want = z.clone();
    logprob_bwd(&mut dz_want, &y_ok, vocab, inv_temp, &want.lse, &coef, None);
    let dz = gpu_bwd(&g, &z, &y, vocab, inv_temp, &want.lse, &coef, None);
    for r in 0..rows {
        let (a, b) = (&dz[r * vocab..(r + 1) * vocab], &dz_want[r * vocab..(r + 1) * vocab]);
        if bad[r] {
            assert!(a.iter().all(|v| v.is_nan()), "row {r}: dz is NaN");
        } else {
            assert!(rel_err(a, b) < BF16_TOL, "row {r}");
        }
    }
}

#[test]
fn logprob_rejects_bad_shapes() {
    let Some(g) = gpu("logprob_rejects_bad_shapes") else { return };
    let (rows, vocab) = (4usize, 33usize);
    let zd = up(&g, &logits(rows, vocab, 9));
    let mut zm = up(&g, &logits(rows, vocab, 9));
    let yd = g.stream.clone_htod(&targets(rows, vocab)).unwrap();
    let mut lp = g.stream.alloc_zeros::<f32>(rows).unwrap();
    let mut ls = g.stream.alloc_zeros::<f32>(rows).unwrap();
    let mut short = g.stream.alloc_zeros::<f32>(rows - 1).unwrap();
    let c = g.stream.alloc_zeros::<f32>(rows).unwrap();
    assert!(g.logprob_fwd(&zd, &yd, vocab + 1, 1.0, &mut lp, &mut ls, None).is_err(), "logits are not rows × vocab");
    assert!(g.logprob_fwd(&zd, &yd, 0, 1.0, &mut lp, &mut ls, None).is_err(), "vocab 0");
    assert!(g.logprob_fwd(&zd, &yd, vocab, 1.0, &mut short, &mut ls, None).is_err(), "short logp");
    assert!(g.logprob_fwd(&zd, &yd, vocab, 1.0, &mut lp, &mut short, None).is_err(), "short lse");
    assert!(
        g.logprob_fwd(&zd, &yd, vocab, 1.0, &mut lp, &mut ls, Some(&mut short.as_view_mut())).is_err(),
        "short entropy"
    );
    assert!(g.logprob_bwd(&mut zm, &yd, vocab - 1, 1.0, &ls, &c, None).is_err(), "logits are not rows × vocab");
    assert!(g.logprob_bwd(&mut zm, &yd, vocab, 1.0, &short, &c, None).is_err(), "short lse");
    assert!(g.logprob_bwd(&mut zm, &yd, vocab, 1.0, &ls, &short, None).is_err(), "short coef");
    assert!(
        g.logprob_bwd(&mut zm, &yd, vocab, 1.0, &ls, &c, Some((&short.as_view(), &c.as_view()))).is_err(),
        "short ent_coef"
    );
    assert!(
        g.logprob_bwd(&mut zm, &yd, vocab, 1.0, &ls, &c, Some((&c.as_view(), &short.as_view()))).is_err(),
        "short entropy"
    );
    g.sync().unwrap();
}

/// `Gpu::logprob_fwd` (`reference`: `logprob_fwd_reference`) on logits placed
/// `offset` elements into a larger buffer, so that the rows start at other
/// 16-byte phases than the allocation's.
fn gpu_fwd_at(g: &Gpu, z: &[f32], offset: usize, y: &[u32], vocab: usize, inv_temp: f32, reference: bool) -> Fwd {
    let rows = y.len();
    let mut padded = vec![0.5f32; offset];
    padded.extend_from_slice(z);
    padded.extend(std::iter::repeat_n(0.5f32, 9));
    let zd = up(g, &padded);
    let zv = zd.slice(offset..offset + z.len());
    let yd = g.stream.clone_htod(y).unwrap();
    let mut logp = g.stream.alloc_zeros::<f32>(rows).unwrap();
    let mut lse = g.stream.alloc_zeros::<f32>(rows).unwrap();
    let mut h = g.stream.alloc_zeros::<f32>(rows).unwrap();
    let mut hv = Some(h.as_view_mut());
    if reference {
        g.logprob_fwd_reference(&zv, &yd, vocab, inv_temp, &mut logp, &mut lse, hv.as_mut()).unwrap();
    } else {
        g.logprob_fwd(&zv, &yd, vocab, inv_temp, &mut logp, &mut lse, hv.as_mut()).unwrap();
    }
    g.sync().unwrap();
    let get = |x: &cudarc::driver::CudaSlice<f32>| g.stream.clone_dtoh(x).unwrap();
    Fwd { logp: get(&logp), lse: get(&lse), entropy: Some(get(&h)) }
}

/// `Gpu::logprob_bwd` (`reference`: `logprob_bwd_reference`) on logits placed
/// `offset` elements into a larger buffer; checks that the elements around
/// them are left as they were.
#[allow(clippy::too_many_arguments)]
fn gpu_bwd_at(
    g: &Gpu,
    z: &[f32],
    offset: usize,
    y: &[u32],
    vocab: usize,
    inv_temp: f32,
    lse: &[f32],
    coef: &[f32],
    entropy: Option<(&[f32], &[f32])>,
    reference: bool,
) -> Vec<f32> {
    let mut padded = vec![0.5f32; offset];
    padded.extend_from_slice(z);
    padded.extend(std::iter::repeat_n(0.5f32, 9));
    let mut zd = up(g, &padded);
    let yd = g.stream.clone_htod(y).unwrap();
    let (ld, cd) = (g.stream.clone_htod(lse).unwrap(), g.stream.clone_htod(coef).unwrap());
    let ent = entropy.map(|(e, h)| (g.stream.clone_htod(e).unwrap(), g.stream.clone_htod(h).unwrap()));
    let ent_views = ent.as_ref().map(|(e, h)| (e.as_view(), h.as_view()));
    let ent_refs = ent_views.as_ref().map(|(e, h)| (e, h));
    {
        let mut zv = zd.slice_mut(offset..offset + z.len());
        if reference {
            g.logprob_bwd_reference(&mut zv, &yd, vocab, inv_temp, &ld, &cd, ent_refs).unwrap();
        } else {
            g.logprob_bwd(&mut zv, &yd, vocab, inv_temp, &ld, &cd, ent_refs).unwrap();
        }
    }
    g.sync().unwrap();
    let all = down(g, &zd);
    let n = z.len();
    assert!(all[..offset].iter().chain(&all[offset + n..]).all(|&v| v == 0.5), "logprob_bwd wrote outside its rows");
    all[offset..offset + n].to_vec()
}

/// The fast kernels against the scalar reference kernels and the CPU, with
/// rows starting at every 16-byte phase: vocabularies below one vector, odd
/// ones (each row at another phase) and multiples of 8, the buffer offset by
/// 0..8 elements.
#[test]
fn logprob_fast_matches_the_reference_at_every_alignment() {
    let Some(g) = gpu("logprob_fast_matches_the_reference_at_every_alignment") else { return };
    let inv_temp = 1.0 / 0.7;
    for vocab in [1usize, 2, 3, 7, 8, 9, 15, 16, 17, 100, 1000 + 7, 4099, 8192] {
        let rows = 11usize;
        let z = logits(rows, vocab, 40 + vocab as u64);
        let y = targets(rows, vocab);
        let want = cpu_fwd(&z, &y, vocab, inv_temp, true);
        let coef = coefs(rows, 41);
        let ent_coef: Vec<f32> =
            coefs(rows, 42).iter().enumerate().map(|(r, &v)| if r % 3 == 0 { 0.0 } else { v }).collect();
        let h = want.entropy.clone().unwrap();
        for offset in 0..9 {
            let fast = gpu_fwd_at(&g, &z, offset, &y, vocab, inv_temp, false);
            let slow = gpu_fwd_at(&g, &z, offset, &y, vocab, inv_temp, true);
            let (fh, sh, wh) = (fast.entropy.as_ref().unwrap(), slow.entropy.as_ref().unwrap(), &h);
            for (what, other) in [("cpu", &want), ("reference kernel", &slow)] {
                let e = [
                    rel_err(&fast.logp, &other.logp),
                    rel_err(&fast.lse, &other.lse),
                    rel_err(fh, other.entropy.as_ref().unwrap()),
                ];
                assert!(
                    e.iter().all(|&e| e < F32_TOL),
                    "logprob_fwd vocab {vocab} offset {offset} vs {what}: logp, lse, H {e:?}"
                );
            }
            for r in 0..rows {
                assert!((fast.lse[r] - want.lse[r]).abs() <= 1e-5 * want.lse[r].abs().max(1.0), "lse row {r}");
                let tol = 1e-5 * (vocab as f32).ln().max(1.0);
                assert!(
                    (fh[r] - wh[r]).abs() <= tol,
                    "vocab {vocab} offset {offset} H row {r}: {} vs {}",
                    fh[r],
                    wh[r]
                );
                assert!(
                    (fh[r] - sh[r]).abs() <= tol,
                    "vocab {vocab} offset {offset} H row {r} vs the reference kernel"
                );
                if y[r] == IGNORE {
                    assert_eq!(fast.logp[r], 0.0);
                }
            }
            let again = gpu_fwd_at(&g, &z, offset, &y, vocab, inv_temp, false);
            assert_eq!((&again.logp, &again.lse, &again.entropy), (&fast.logp, &fast.lse, &fast.entropy));

            for with_entropy in [false, true] {
                let ent = with_entropy.then_some((&ent_coef[..], &h[..]));
                let mut want_dz = z.clone();
                logprob_bwd(&mut want_dz, &y, vocab, inv_temp, &want.lse, &coef, ent);
                let fast_dz = gpu_bwd_at(&g, &z, offset, &y, vocab, inv_temp, &want.lse, &coef, ent, false);
                let slow_dz = gpu_bwd_at(&g, &z, offset, &y, vocab, inv_temp, &want.lse, &coef, ent, true);
                let what = format!("logprob_bwd vocab {vocab} offset {offset} entropy {with_entropy}");
                // Relative, with a norm floor: at vocab 1 with the entropy
                // term every dz is exactly 0 on the CPU, and the GPU's fp32
                // sums leave residues of order 1e-8 (an H100 run saw them).
                let floor = 1e-5 * inv_temp as f64;
                let (e_cpu, e_ref) =
                    (rel_err_floored(&fast_dz, &want_dz, floor), rel_err_floored(&fast_dz, &slow_dz, floor));
                assert!(
                    e_cpu < BF16_TOL && e_ref < BF16_TOL,
                    "{what}: {e_cpu:.2e} vs cpu, {e_ref:.2e} vs the reference kernel"
                );
                // Row by row, element by element: within bf16 precision of the
                // row's largest entry, plus an absolute floor for the entries
                // where the sum cancels (the target's 1 − p when p ≈ 1, or
                // c + e·(s − mean_s) ≈ 0): fp32 rounding of the row's scale,
                // inv·(|c| + |e|·|s − mean_s|) with |s − mean_s| < 25 here.
                for r in 0..rows {
                    let s = r * vocab..(r + 1) * vocab;
                    let e_r = if with_entropy { ent_coef[r] } else { 0.0 };
                    let c_r = if y[r] == IGNORE { 0.0 } else { coef[r] };
                    let floor = 1e-5 * inv_temp * (c_r.abs() + 25.0 * e_r.abs());
                    for (other, name) in [(&want_dz, "cpu"), (&slow_dz, "the reference kernel")] {
                        let big = other[s.clone()].iter().fold(0.0f32, |m, v| m.max(v.abs()));
                        for i in s.clone() {
                            let d = (fast_dz[i] - other[i]).abs();
                            assert!(
                                d <= BF16_TOL as f32 * big + floor,
                                "{what} row {r} element {}: {} vs {} from {name}",
                                i - r * vocab,
                                fast_dz[i],
                                other[i]
                            );
                        }
                    }
                }
                let again = gpu_bwd_at(&g, &z, offset, &y, vocab, inv_temp, &want.lse, &coef, ent, false);
                assert_eq!(again, fast_dz);
            }
        }
    }
}

/// Rows whose target is outside the vocabulary and rows with no coefficient,
/// at several phases: the fast backward's stores-only paths (NaN, zeros).
#[test]
fn logprob_bwd_fills_rows_at_every_alignment() {
    let Some(g) = gpu("logprob_bwd_fills_rows_at_every_alignment") else { return };
    for vocab in [3usize, 8, 13, 1000 + 7] {
        let rows = 4usize;
        let z = logits(rows, vocab, 50 + vocab as u64);
        let y: Vec<u32> = vec![vocab as u32, 1, IGNORE, 0];
        let coef = vec![0.5f32, 0.0, 0.5, 0.25];
        let lse = cpu_fwd(&z, &[IGNORE, 1, IGNORE, 0], vocab, 1.0, false).lse;
        for offset in 0..9 {
            let dz = gpu_bwd_at(&g, &z, offset, &y, vocab, 1.0, &lse, &coef, None, false);
            assert!(dz[..vocab].iter().all(|v| v.is_nan()), "vocab {vocab} offset {offset}: row 0 is NaN");
            assert!(dz[vocab..3 * vocab].iter().all(|&v| v == 0.0), "vocab {vocab} offset {offset}: rows 1, 2 are 0");
            assert!(dz[3 * vocab..].iter().any(|&v| v != 0.0), "vocab {vocab} offset {offset}: row 3 is a gradient");
        }
    }
}

/// Phase 1's per-token arrays on a backend.
pub(super) struct Phase1<B: Backend> {
    pub logp: B::Buf,
    pub lse: B::Buf,
    pub entropy: B::Buf,
}

/// Phase 1 on `be` (`Backend::logprob_fwd`, with the entropy) of `n` rows
/// of `v` logits already there, at temperature `t`.
pub(super) fn fixture_phase1<B: Backend>(be: &B, z: &B::Buf, y: &B::Idx, n: usize, v: usize, t: f32) -> Phase1<B> {
    let all = Span::new(0, n);
    let mut p = Phase1 { logp: be.alloc_f32(n), lse: be.alloc_f32(n), entropy: be.alloc_f32(n) };
    be.logprob_fwd(
        B::view(z, Span::new(0, n * v)),
        B::idx_view(y, all),
        v,
        1.0 / t,
        B::view_mut(&mut p.logp, all),
        B::view_mut(&mut p.lse, all),
        Some(B::view_mut(&mut p.entropy, all)),
    );
    p
}

/// Phase 2 on `be` (`Backend::logprob_bwd`): dz written over the logits `z`
/// from `coefs` (with their entropy term when they carry one) and phase 1's
/// lse and entropy; dz on the host.
#[allow(clippy::too_many_arguments)]
pub(super) fn fixture_phase2<B: Backend>(
    be: &B,
    z: &mut B::Buf,
    y: &B::Idx,
    n: usize,
    v: usize,
    t: f32,
    p: &Phase1<B>,
    coefs: &TokenCoefs,
) -> Vec<f32> {
    let all = Span::new(0, n);
    let c = put_f32(be, &coefs.logp);
    let e = coefs.entropy.as_ref().map(|e| put_f32(be, e));
    let ent = e.as_ref().map(|e| (B::view(e, all), B::view(&p.entropy, all)));
    be.logprob_bwd(
        B::view_mut(z, Span::new(0, n * v)),
        B::idx_view(y, all),
        v,
        1.0 / t,
        B::view(&p.lse, all),
        B::view(&c, all),
        ent,
    );
    read_all(be, z)
}

/// A policy loss through the lm_head path on `be` against a PyTorch
/// fixture (hidden states and lm_head weight in, the float64 loss and
/// gradients out): phase 1 (`head::phase1`: the logits GEMM, then logp, lse
/// and the entropy at the fixture's temperature) in chunks of 7 rows and in
/// one chunk; the coefficient pass ([`super::policy::fixture_policy_step`],
/// micro-batch by micro-batch) on PyTorch's float64 logp and entropy rounded
/// to f32 (the pass's own error, and no ratio pushed across a clip bound by
/// rounded logits); phase 2 (`head::phase2`: dz on phase 1's lse and
/// entropy, dh = dz·W, dW = dzᵀ·h) with those coefficients. dW only at one
/// chunk: in chunks the GPU sums it in bf16 chunk by chunk, which PyTorch
/// never does (the model test holds that to the outer bound).
fn lm_head_fixture_checks<B: Backend>(be: &B, name: &str, tol: FixtureTol, ch: &mut Checks) {
    use super::policy::{check_policy_stats, fixture_policy_step, policy_config};
    let (j, r) = loss_fixture(name);
    assert_eq!(j["loss_kind"], "policy", "{name}: a policy loss");
    let lay = LossLayout::read(&r);
    let n = lay.n;
    let (hidden, weight) = (r.f32("hidden"), r.f32("weight"));
    let d = hidden.len() / n;
    let v = weight.len() / d;
    let t = opt_num(&j, "temperature").unwrap_or(1.0);
    let targets = r.u32("targets");
    let s = HeadShape { n, d, v };
    let (h, w) = (be.upload(hidden.clone()), be.upload(weight.clone()));
    let wv = B::view(&w, Span::new(0, v * d));
    // lse's reference: the logits h·Wᵀ in f64 from the fixture's values.
    let z64: Vec<f64> = (0..n)
        .flat_map(|i| {
            let (hidden, weight) = (&hidden, &weight);
            (0..v).map(move |k| (0..d).map(|c| hidden[i * d + c] as f64 * weight[k * d + c] as f64).sum())
        })
        .collect();
    let lse_ref = lse_f64(&z64, v, t);

    let cfg = policy_config(&j);
    let (loss, coefs, stats) = fixture_policy_step(be, &cfg, &r, &lay, &r.f32("logp"), &r.f32("entropy"));
    // A policy loss is a sum of terms of both signs (GSPO's nearly cancel):
    // its error is measured against the sum of the terms' magnitudes, as
    // tests/losses.rs does.
    let scale: f64 = r.f64("token_loss").iter().zip(r.f64("agg_weight")).map(|(l, w)| (l * w).abs()).sum();
    ch.scalar(&format!("{name}: loss"), loss, num(&j, "loss"), scale, tol.fp32);
    ch.rel(&format!("{name}: dL/dlogp"), &to_f64(&coefs.logp), &r.f64("dlogp"), tol.fp32);
    match (&coefs.entropy, r.has("dentropy")) {
        (Some(e), true) => ch.rel(&format!("{name}: dL/dH"), &to_f64(e), &r.f64("dentropy"), tol.fp32),
        (None, false) => {}
        (e, has) => panic!("{name}: entropy coefficients {} but reference {has}", e.is_some()),
    }
    check_policy_stats(ch, name, &stats, &j, tol.fp32);

    for chunk in [7, n] {
        let what = format!("{name} chunk {chunk}");
        let mut hb = HeadBuffers::<B>::new(be, n, chunk, v);
        head::phase1(be, &mut hb, s, &h, wv, &targets, t as f32, true);
        let lse = be.read(B::view(&hb.lse, Span::new(0, n)));
        ch.rel(&format!("{what}: logp"), &to_f64(&hb.read_logp(be, n)), &r.f64("logp"), tol.data);
        ch.rel(&format!("{what}: lse"), &to_f64(&lse), &lse_ref, tol.data);
        ch.rel(&format!("{what}: entropy"), &to_f64(&hb.read_entropy(be, n)), &r.f64("entropy"), tol.data);
        let (mut dh, mut grads) = (be.alloc(n * d), be.alloc(v * d));
        head::phase2(be, &mut hb, s, &h, wv, &coefs, t as f32, &mut dh, &mut grads, Span::new(0, v * d));
        ch.rel(&format!("{what}: dhidden"), &to_f64(&read_all(be, &dh)), &r.f64("dhidden"), tol.data);
        if chunk == n {
            ch.rel(&format!("{what}: dweight"), &to_f64(&read_all(be, &grads)), &r.f64("dweight"), tol.data);
        }
    }
}

/// The lm_head fixtures: PPO with k3 and the entropy bonus (the entropy
/// through phase 1, the coefficients and phase 2's entropy term), and GSPO.
const LM_HEAD_FIXTURES: [&str; 2] = ["lm_head_ppo_entropy", "lm_head_gspo"];

/// The GPU's tolerances on the lm_head path. `data`: BF16_TOL. The hidden
/// states and the weight are rounded to bf16 on the way up, the logits come
/// out of the GEMM in bf16, dz is stored in bf16 and dh, dW come back in
/// bf16: each a rounding of ≤ 2^-9 relative. Those roundings alone, with
/// exact arithmetic otherwise (an emulation in numpy), put these fixtures'
/// logp within 1.1e-3, lse 7.0e-4, entropy 3.1e-3, dh 4.2e-3 and dW 4.8e-3
/// of the float64 references: half the tolerance at most. `fp32`: DESIGN.md
/// §6's 1e-5 for the coefficient pass on fp32 inputs.
const GPU_LM_HEAD_TOL: FixtureTol = FixtureTol { data: BF16_TOL, fp32: 1e-5 };

/// A policy loss with the entropy bonus, and GSPO, through the CUDA
/// backend's lm_head path against PyTorch's float64 references.
#[test]
fn lm_head_policy_losses_on_the_gpu_match_pytorch() {
    if gpu("lm_head_policy_losses_on_the_gpu_match_pytorch").is_none() {
        return;
    }
    let be = Cuda::new(0).unwrap();
    let mut ch = Checks::default();
    for name in LM_HEAD_FIXTURES {
        lm_head_fixture_checks(&be, name, GPU_LM_HEAD_TOL, &mut ch);
    }
    ch.finish("the lm_head path on the GPU");
}

/// The same checks on the CPU backend at its f32 tolerances (the checks'
/// machinery without a GPU).
#[test]
fn lm_head_fixture_checks_pass_on_the_cpu_backend() {
    let mut ch = Checks::default();
    for name in LM_HEAD_FIXTURES {
        lm_head_fixture_checks(&Cpu, name, CPU_FIXTURE_TOL, &mut ch);
    }
    ch.finish("the lm_head checks on the CPU backend");
}
