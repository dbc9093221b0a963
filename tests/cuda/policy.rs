//! The policy losses' coefficient pass on the GPU (kernels/policy.cu)
//! against the CPU loss library on the shared cases (every variant, clip
//! region, KL estimator, aggregation; a fully masked sequence): the kernel's
//! coefficients and per-sequence sums, and the backend's `policy_loss` op
//! that the GRPO trainer calls. Then the losses against PyTorch's float64
//! references (tests/fixtures/losses, as tests/losses.rs reads them): GSPO,
//! GPPO, PPO with k3 and the entropy bonus, DPO, through phase 1, the
//! coefficient pass and phase 2.

use super::common::policy_cases::{policy_cases, policy_mismatches, PolicyCase, Regions};
use super::common::to_f64;
use super::util::{gpu, Checks, FixtureTol, LossLayout, BF16_TOL, CPU_FIXTURE_TOL};
use engine::backend::cpu::Cpu;
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

pub(super) use super::common::loss_fixtures::policy_config;

/// A policy fixture's whole step through `be`'s coefficient pass
/// ([`Backend::policy_loss`], kernels/policy.cu on the GPU), micro-batch by
/// micro-batch as the GRPO trainer calls it, on the per-token `logp` and
/// `entropy` given: (loss, coefficients, statistics).
pub(super) fn fixture_policy_step<B: Backend>(
    be: &B,
    cfg: &engine::loss::PolicyConfig,
    r: &super::common::Reference,
    lay: &super::util::LossLayout,
    logp: &[f32],
    entropy: &[f32],
) -> (f64, engine::loss::TokenCoefs, engine::loss::PolicyStats) {
    use super::util::{put_f32, read_all};
    let (old, refl, sampler) = (r.f32("old_logp"), r.f32("ref_logp"), r.f32("sampler_logp"));
    let (adv, rewards) = (r.f32("advantages"), r.f32("rewards"));
    let counts = lay.counts();
    let mbs = lay.micro_batches();
    let correct =
        cfg.correct_tokens(mbs.iter().map(|(t, s, cu)| (&lay.mask[t.clone()], cu.as_slice(), &rewards[s.clone()])));
    let n = lay.n;
    let mut coefs =
        engine::loss::TokenCoefs { logp: vec![0.0; n], entropy: (cfg.entropy_coef != 0.0).then(|| vec![0.0; n]) };
    let (mut loss, mut stats) = (0.0, engine::loss::PolicyStats::default());
    for (t, s, cu) in &mbs {
        let all = Span::new(0, t.len());
        let [lp, ol, rl, sl, en] = [logp, &old, &refl, &sampler, entropy].map(|a| put_f32(be, &a[t.clone()]));
        let x = PolicyInputs::<B> {
            logp: B::view(&lp, all),
            old_logp: B::view(&ol, all),
            ref_logp: Some(B::view(&rl, all)),
            sampler_logp: Some(B::view(&sl, all)),
            entropy: Some(B::view(&en, all)),
            mask: &lay.mask[t.clone()],
            cu_seqlens: cu,
            advantages: &adv[s.clone()],
            rewards: &rewards[s.clone()],
        };
        let (mut c, mut e) = (be.alloc_f32(t.len()), be.alloc_f32(t.len()));
        let (l, st) =
            be.policy_loss(cfg, &x, &counts, correct, B::view_mut(&mut c, all), Some(B::view_mut(&mut e, all)));
        loss += l;
        stats.merge(&st);
        coefs.logp[t.clone()].copy_from_slice(&read_all(be, &c));
        if let Some(all_e) = coefs.entropy.as_mut() {
            all_e[t.clone()].copy_from_slice(&read_all(be, &e));
        }
    }
    (loss, coefs, stats)
}

/// The statistics a trainer logs against the fixture's (PyTorch's), as
/// tests/losses.rs checks them: within `tol` of 1 + |value|.
pub(super) fn check_policy_stats(
    ch: &mut super::util::Checks,
    name: &str,
    stats: &engine::loss::PolicyStats,
    j: &serde_json::Value,
    tol: f64,
) {
    let m = stats.finish();
    let st = &j["stats"];
    for (key, got) in super::common::loss_fixtures::stat_pairs(&m) {
        let want = super::util::num(st, key);
        ch.scalar(&format!("{name}: stat {key}"), got, want, 1.0 + want.abs(), tol);
    }
}

/// A logits-level policy fixture on `be`: phase 1 on its logits (logp, lse,
/// entropy at its temperature), the coefficient pass on PyTorch's float64
/// logp and entropy (rounded to f32: so the pass's own error is measured,
/// and a ratio near a clip bound cannot land on the other side because the
/// logits were rounded), then phase 2 with those coefficients on phase 1's
/// lse and entropy.
fn policy_fixture_checks<B: Backend>(be: &B, name: &str, tol: FixtureTol, ch: &mut Checks) {
    use super::logprob::{fixture_phase1, fixture_phase2};
    use super::util::{loss_fixture, lse_f64, num, put_idx, read_all};
    let (j, r) = loss_fixture(name);
    let lay = LossLayout::read(&r);
    let (logits, targets) = (r.f32("logits"), r.u32("targets"));
    let (n, v, t) = (lay.n, logits.len() / lay.n, num(&j, "temperature"));
    let mut z = be.upload(logits);
    let y = put_idx(be, &targets);
    let p1 = fixture_phase1(be, &z, &y, n, v, t as f32);
    let (logp, lse, h) = (read_all(be, &p1.logp), read_all(be, &p1.lse), read_all(be, &p1.entropy));
    ch.rel(&format!("{name}: logp"), &to_f64(&logp), &r.f64("logp"), tol.data);
    ch.rel(&format!("{name}: lse"), &to_f64(&lse), &lse_f64(&r.f64("logits"), v, t), tol.data);
    ch.rel(&format!("{name}: entropy"), &to_f64(&h), &r.f64("entropy"), tol.data);

    let cfg = policy_config(&j);
    let (loss, coefs, stats) = fixture_policy_step(be, &cfg, &r, &lay, &r.f32("logp"), &r.f32("entropy"));
    let want = num(&j, "loss");
    ch.scalar(&format!("{name}: loss"), loss, want, want.abs(), tol.fp32);
    ch.rel(&format!("{name}: dL/dlogp"), &to_f64(&coefs.logp), &r.f64("dlogp"), tol.fp32);
    match (&coefs.entropy, r.has("dentropy")) {
        (Some(e), true) => ch.rel(&format!("{name}: dL/dH"), &to_f64(e), &r.f64("dentropy"), tol.fp32),
        (None, false) => {}
        (e, has) => panic!("{name}: entropy coefficients {} but reference {has}", e.is_some()),
    }
    check_policy_stats(ch, name, &stats, &j, tol.fp32);

    let dz = fixture_phase2(be, &mut z, &y, n, v, t as f32, &p1, &coefs);
    ch.rel(&format!("{name}: dlogits"), &to_f64(&dz), &r.f64("dlogits"), tol.data);
}

/// A DPO fixture on `be`: phase 1 on its logits, [`Backend::dpo_loss`]
/// (kernels/dpo.cu on the GPU) on PyTorch's float64 logp rounded to f32,
/// phase 2 with its coefficients.
fn dpo_fixture_checks<B: Backend>(be: &B, name: &str, tol: FixtureTol, ch: &mut Checks) {
    use super::common::loss_fixtures::{dpo_config, dpo_stat_pairs};
    use super::logprob::{fixture_phase1, fixture_phase2};
    use super::util::{loss_fixture, lse_f64, num, put_f32, put_idx, read_all};
    use engine::loss::TokenCoefs;
    let (j, r) = loss_fixture(name);
    let lay = LossLayout::read(&r);
    let (logits, targets) = (r.f32("logits"), r.u32("targets"));
    let (n, v) = (lay.n, logits.len() / lay.n);
    let mut z = be.upload(logits);
    let y = put_idx(be, &targets);
    let p1 = fixture_phase1(be, &z, &y, n, v, 1.0);
    let (logp, lse) = (read_all(be, &p1.logp), read_all(be, &p1.lse));
    ch.rel(&format!("{name}: logp"), &to_f64(&logp), &r.f64("logp"), tol.data);
    ch.rel(&format!("{name}: lse"), &to_f64(&lse), &lse_f64(&r.f64("logits"), v, 1.0), tol.data);

    let cfg = dpo_config(&j);
    let all = Span::new(0, n);
    let (lp, rl) = (put_f32(be, &r.f32("logp")), put_f32(be, &r.f32("ref_logp")));
    let mut c = be.alloc_f32(n);
    let pairs = (lay.cu.len() - 1) / 2;
    let (loss, stats) =
        be.dpo_loss(&cfg, B::view(&lp, all), B::view(&rl, all), &lay.mask, &lay.cu, pairs, B::view_mut(&mut c, all));
    let coefs = TokenCoefs::from(read_all(be, &c));
    let want = num(&j, "loss");
    ch.scalar(&format!("{name}: loss"), loss, want, want.abs(), tol.fp32);
    ch.rel(&format!("{name}: dL/dlogp"), &to_f64(&coefs.logp), &r.f64("dlogp"), tol.fp32);
    let st = &j["stats"];
    for (key, got) in dpo_stat_pairs(&stats) {
        let want = num(st, key);
        ch.scalar(&format!("{name}: {key}"), got, want, 1.0 + want.abs(), tol.fp32);
    }

    let dz = fixture_phase2(be, &mut z, &y, n, v, 1.0, &p1, &coefs);
    ch.rel(&format!("{name}: dlogits"), &to_f64(&dz), &r.f64("dlogits"), tol.data);
}

/// The policy fixtures checked on the GPU: GSPO (sequence-level ratio and
/// aggregation), GPPO, PPO with the k3 KL and the entropy bonus, and a
/// vocabulary of 1003.
const POLICY_FIXTURES: [&str; 4] = ["gspo_default", "gppo_default", "ppo_kl_k3_entropy", "ppo_v1003"];
const DPO_FIXTURES: [&str; 3] = ["dpo_sigmoid", "dpo_sigmoid_ls", "dpo_ipo"];

/// The GPU's tolerances on the logits-level fixtures. `data`: BF16_TOL
/// (one bf16 rounding is ≤ 2^-9 relative): the logits are rounded to bf16
/// on the way up and dz is stored in bf16. Those two roundings alone, with
/// exact arithmetic otherwise (an emulation in numpy), put these fixtures'
/// logp within 7.8e-4, lse 6.8e-4, entropy 2.9e-3 and dz 4.5e-3 of the
/// float64 references: half the tolerance at most. `fp32`: DESIGN.md §6's
/// 1e-5 for fp32 loss kernels on fp32 inputs (the coefficient passes).
const GPU_LOGITS_TOL: FixtureTol = FixtureTol { data: BF16_TOL, fp32: 1e-5 };

/// Policy losses on the GPU against PyTorch's float64 references
/// (tests/fixtures/losses): phase 1, the coefficient pass with its
/// statistics, phase 2.
#[test]
fn policy_losses_on_the_gpu_match_pytorch() {
    if gpu("policy_losses_on_the_gpu_match_pytorch").is_none() {
        return;
    }
    let be = Cuda::new(0).unwrap();
    let mut ch = Checks::default();
    for name in POLICY_FIXTURES {
        policy_fixture_checks(&be, name, GPU_LOGITS_TOL, &mut ch);
    }
    ch.finish("policy losses on the GPU");
}

/// DPO on the GPU against PyTorch's float64 references.
#[test]
fn dpo_on_the_gpu_matches_pytorch() {
    if gpu("dpo_on_the_gpu_matches_pytorch").is_none() {
        return;
    }
    let be = Cuda::new(0).unwrap();
    let mut ch = Checks::default();
    for name in DPO_FIXTURES {
        dpo_fixture_checks(&be, name, GPU_LOGITS_TOL, &mut ch);
    }
    ch.finish("DPO on the GPU");
}

/// The same checks on the CPU backend at its f32 tolerances: the checks'
/// own machinery (layouts, micro-batches, references) runs without a GPU.
#[test]
fn policy_and_dpo_fixture_checks_pass_on_the_cpu_backend() {
    let mut ch = Checks::default();
    for name in POLICY_FIXTURES {
        policy_fixture_checks(&Cpu, name, CPU_FIXTURE_TOL, &mut ch);
    }
    for name in DPO_FIXTURES {
        dpo_fixture_checks(&Cpu, name, CPU_FIXTURE_TOL, &mut ch);
    }
    ch.finish("the fixture checks on the CPU backend");
}
