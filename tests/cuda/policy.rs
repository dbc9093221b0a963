//! The policy losses' coefficient pass on the GPU (kernels/policy.cu)
//! against the CPU loss library on the shared cases (every variant, clip
//! region, KL estimator, aggregation; a fully masked sequence): the kernel's
//! coefficients and per-sequence sums, and the backend's `policy_loss` op
//! that the GRPO trainer calls.

use super::common::policy_cases::{policy_cases, policy_mismatches, PolicyCase, Regions};
use super::util::gpu;
use engine::backend::cuda::{Cuda, Gpu, PolicyViews};
use engine::backend::{Backend, PolicyInputs, Span};

fn run(g: &Gpu, c: &PolicyCase) -> (Vec<f32>, Option<Vec<f32>>, Vec<f64>) {
    let st = &g.stream;
    let up = |v: &[f32]| st.clone_htod(v).unwrap();
    let (logp, old) = (up(&c.logp), up(&c.old_logp));
    let opt = |v: &Option<Vec<f32>>| v.as_ref().map(|v| up(v));
    let (refl, sampler, entropy) = (opt(&c.ref_logp), opt(&c.sampler_logp), opt(&c.entropy));
    let views = PolicyViews {
        logp: logp.slice(..),
        old_logp: old.slice(..),
        ref_logp: refl.as_ref().map(|v| v.slice(..)),
        sampler_logp: sampler.as_ref().map(|v| v.slice(..)),
        entropy: entropy.as_ref().map(|v| v.slice(..)),
    };
    let mask: Vec<u8> = c.mask.iter().map(|&m| m as u8).collect();
    let mask = st.clone_htod(&mask).unwrap();
    let cu = st.clone_htod(&c.cu_seqlens).unwrap();
    let seq_in: Vec<f32> = c.advantages.iter().chain(&c.rewards).copied().collect();
    let seq_in = st.clone_htod(&seq_in).unwrap();
    let n = c.logp.len();
    let mut coef = st.alloc_zeros::<f32>(n).unwrap();
    let mut ent = st.alloc_zeros::<f32>(n).unwrap();
    let mut rows = st.alloc_zeros::<f64>(c.advantages.len() * 12).unwrap();
    let with_ent = c.cfg.entropy_coef != 0.0;
    let k = c.cfg.kernel_settings(&c.counts, c.correct_tokens);
    let mut ev = ent.slice_mut(..);
    g.policy_coefs(&k, &views, &mask, &cu, &seq_in, &mut coef, with_ent.then_some(&mut ev), &mut rows).unwrap();
    g.sync().unwrap();
    let coef = st.clone_dtoh(&coef).unwrap();
    let ent = with_ent.then(|| st.clone_dtoh(&ent).unwrap());
    (coef, ent, st.clone_dtoh(&rows).unwrap())
}

#[test]
fn policy_coefficients_match_the_cpu_loss_library() {
    let Some(g) = gpu("policy_coefficients_match_the_cpu_loss_library") else { return };
    let mut bad = Vec::new();
    let mut regions = Regions::default();
    for c in policy_cases() {
        let (coef, ent, rows) = run(&g, &c);
        bad.extend(policy_mismatches(&c, &coef, ent.as_deref(), &rows));
        regions.add(&c, &rows);
        let st = c.expected().stats;
        println!(
            "{}: {} tokens, clipped {}/{}/{}",
            c.name, st.tokens, st.clipped_low, st.clipped_high, st.clipped_dual
        );
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    regions.assert_all_reached();
}

/// The backend op (its uploads, scratch and read-back): the same loss,
/// statistics and coefficients as the CPU backend's.
#[test]
fn backend_policy_loss_matches_the_cpu_backend() {
    if gpu("backend_policy_loss_matches_the_cpu_backend").is_none() {
        return;
    }
    let be = Cuda::new(0).unwrap();
    for c in policy_cases() {
        let n = c.logp.len();
        let dev = |v: &[f32]| {
            let mut b = be.alloc_f32(v.len());
            be.write(v, Cuda::view_mut(&mut b, Span::new(0, v.len())));
            b
        };
        let (logp, old) = (dev(&c.logp), dev(&c.old_logp));
        let opt = |v: &Option<Vec<f32>>| v.as_ref().map(|v| dev(v));
        let (refl, sampler, entropy) = (opt(&c.ref_logp), opt(&c.sampler_logp), opt(&c.entropy));
        let all = Span::new(0, n);
        let x = PolicyInputs::<Cuda> {
            logp: Cuda::view(&logp, all),
            old_logp: Cuda::view(&old, all),
            ref_logp: refl.as_ref().map(|b| Cuda::view(b, all)),
            sampler_logp: sampler.as_ref().map(|b| Cuda::view(b, all)),
            entropy: entropy.as_ref().map(|b| Cuda::view(b, all)),
            mask: &c.mask,
            cu_seqlens: &c.cu_seqlens,
            advantages: &c.advantages,
            rewards: &c.rewards,
        };
        let (mut coef, mut ent) = (be.alloc_f32(n), be.alloc_f32(n));
        let (loss, st) = be.policy_loss(
            &c.cfg,
            &x,
            &c.counts,
            c.correct_tokens,
            Cuda::view_mut(&mut coef, all),
            Some(Cuda::view_mut(&mut ent, all)),
        );
        let want = c.expected();
        assert!(
            (loss - want.loss).abs() <= 1e-9 * want.loss.abs().max(1e-12),
            "{}: loss {loss} vs {}",
            c.name,
            want.loss
        );
        assert_eq!(
            (st.tokens, st.clipped_low, st.clipped_high, st.clipped_dual),
            (want.stats.tokens, want.stats.clipped_low, want.stats.clipped_high, want.stats.clipped_dual),
            "{}",
            c.name
        );
        let got = be.read(Cuda::view(&coef, all));
        for (t, (a, b)) in got.iter().zip(&want.coefs.logp).enumerate() {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-20), "{}: coef[{t}] {a} vs {b}", c.name);
        }
    }
}

/// DPO's coefficient pass through the backend op the DPO trainer calls
/// (kernels/dpo.cu) against the CPU's `dpo_loss` on the shared cases.
#[test]
fn backend_dpo_loss_matches_the_cpu_loss_library() {
    use super::common::policy_cases::dpo_cases;
    if gpu("backend_dpo_loss_matches_the_cpu_loss_library").is_none() {
        return;
    }
    let be = Cuda::new(0).unwrap();
    for c in dpo_cases() {
        let n = c.logp.len();
        let all = Span::new(0, n);
        let dev = |v: &[f32]| {
            let mut b = be.alloc_f32(n);
            be.write(v, Cuda::view_mut(&mut b, all));
            b
        };
        let (logp, refl) = (dev(&c.logp), dev(&c.ref_logp));
        let mut coef = be.alloc_f32(n);
        let (loss, st) = be.dpo_loss(
            &c.cfg,
            Cuda::view(&logp, all),
            Cuda::view(&refl, all),
            &c.mask,
            &c.cu_seqlens,
            c.pairs_in_step,
            Cuda::view_mut(&mut coef, all),
        );
        let (want_loss, want, want_st) = c.expected();
        assert!((loss - want_loss).abs() <= 1e-9 * want_loss.abs(), "{}: loss {loss} vs {want_loss}", c.name);
        assert_eq!((st.pairs, st.correct), (want_st.pairs, want_st.correct), "{}", c.name);
        let got = be.read(Cuda::view(&coef, all));
        for (t, (a, b)) in got.iter().zip(&want.logp).enumerate() {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-20), "{}: coef[{t}] {a} vs {b}", c.name);
        }
    }
}
