//! The loss library against PyTorch autograd references of DESIGN.md §4
//! (tests/fixtures/losses, written by tools/make_loss_fixtures.py): every
//! loss through phase 1 (per-token log-probs), the loss on per-token arrays,
//! and phase 2 (the logit gradient in place), with the step split in
//! micro-batches of unequal size. Losses and gradients ≤ 1e-5 relative.

mod common;
use common::loss_fixtures::*;
use common::*;
use engine::backend::cpu::Cpu;
use engine::backend::{Backend, Span};
use engine::loss::advantages::{grpo_advantages, ScaleRewards};
use engine::loss::kl::kl_in_reward;
use engine::loss::sft::masked_ce_with_count;
use engine::loss::*;
use engine::model::head::{self, HeadBuffers, HeadShape};

fn check_rel(what: &str, got: &[f64], want: &[f64], tol: f64) {
    let e = rel_err(got, want);
    println!("{what}: rel {e:.1e}");
    assert!(e <= tol, "{what}: relative error {e:.2e} > {tol:.0e}");
}

fn check_scalar(what: &str, got: f64, want: f64, tol: f64) {
    let e = (got - want).abs() / want.abs().max(1e-12);
    assert!(e <= tol || (got - want).abs() < 1e-12, "{what}: {got} vs {want} (rel {e:.2e})");
}

/// Phase 1 on stored logits: (logp, lse, entropy).
fn phase1(logits: &[f32], targets: &[u32], v: usize, t: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = targets.len();
    let (mut logp, mut lse, mut h) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    Cpu.logprob_fwd(logits, targets, v, 1.0 / t, &mut logp, &mut lse, Some(&mut h));
    (logp, lse, h)
}

/// Phase 2 on stored logits: dz.
fn phase2(logits: &[f32], targets: &[u32], v: usize, t: f32, lse: &[f32], h: &[f32], c: &TokenCoefs) -> Vec<f32> {
    let mut dz = logits.to_vec();
    let ent = c.entropy.as_deref().map(|e| (e, h));
    Cpu.logprob_bwd(&mut dz, targets, v, 1.0 / t, lse, &c.logp, ent);
    dz
}

/// The policy loss of a whole step, micro-batch by micro-batch, from
/// per-token arrays: (loss, coefficients, stats).
fn policy_step(
    cfg: &PolicyConfig,
    r: &Reference,
    lay: &Layout,
    logp: &[f32],
    entropy: &[f32],
) -> (f64, TokenCoefs, PolicyStats) {
    let (old, refl, sampler) = (r.f32("old_logp"), r.f32("ref_logp"), r.f32("sampler_logp"));
    let (adv, rewards) = (r.f32("advantages"), r.f32("rewards"));
    let counts = lay.counts();
    let mbs = lay.micro_batches();
    let correct =
        cfg.correct_tokens(mbs.iter().map(|(t, s, cu)| (&lay.mask[t.clone()], cu.as_slice(), &rewards[s.clone()])));
    let mut coefs = TokenCoefs { logp: vec![0.0; lay.n], entropy: (cfg.entropy_coef != 0.0).then(|| vec![0.0; lay.n]) };
    let (mut loss, mut stats) = (0.0, PolicyStats::default());
    for (t, s, cu) in &mbs {
        let b = PolicyBatch {
            logp: &logp[t.clone()],
            old_logp: &old[t.clone()],
            ref_logp: Some(&refl[t.clone()]),
            sampler_logp: Some(&sampler[t.clone()]),
            entropy: Some(&entropy[t.clone()]),
            mask: &lay.mask[t.clone()],
            cu_seqlens: cu,
            advantages: &adv[s.clone()],
            rewards: &rewards[s.clone()],
        };
        let out = policy_loss(cfg, &b, &counts, correct);
        loss += out.loss;
        stats.merge(&out.stats);
        coefs.logp[t.clone()].copy_from_slice(&out.coefs.logp);
        if let (Some(all), Some(part)) = (coefs.entropy.as_mut(), out.coefs.entropy.as_ref()) {
            all[t.clone()].copy_from_slice(part);
        }
    }
    (loss, coefs, stats)
}

const POLICY_CASES: [&str; 12] = [
    "ppo_token_mean",
    "ppo_dapo_seq_sum",
    "ppo_kl_k3_entropy",
    "ppo_kl_k1_tis",
    "ppo_kl_k2_norm",
    "ppo_kl_k3plus",
    "gppo_default",
    "gppo_beta",
    "cispo_cap",
    "cispo_verl",
    "gspo_default",
    "ppo_v1003",
];

#[test]
fn policy_losses_match_pytorch() {
    for name in POLICY_CASES {
        let (j, r) = case(name);
        let lay = Layout::read(&r);
        let (logits, targets) = (r.f32("logits"), r.u32("targets"));
        let v = logits.len() / lay.n;
        let t = num(&j, "temperature") as f32;
        let (logp, lse, h) = phase1(&logits, &targets, v, t);
        check_rel(&format!("{name}: logp"), &to_f64(&logp), &r.f64("logp"), 1e-5);
        let cfg = policy_config(&j);
        let (loss, coefs, stats) = policy_step(&cfg, &r, &lay, &logp, &h);
        check_scalar(&format!("{name}: loss"), loss, num(&j, "loss"), 1e-5);
        check_rel(&format!("{name}: dL/dlogp"), &to_f64(&coefs.logp), &r.f64("dlogp"), 1e-5);
        match (&coefs.entropy, r.has("dentropy")) {
            (Some(e), true) => check_rel(&format!("{name}: dL/dH"), &to_f64(e), &r.f64("dentropy"), 1e-5),
            (None, false) => {}
            (e, has) => panic!("{name}: entropy coefficients {} but reference {}", e.is_some(), has),
        }
        let dz = phase2(&logits, &targets, v, t, &lse, &h, &coefs);
        check_rel(&format!("{name}: dlogits"), &to_f64(&dz), &r.f64("dlogits"), 1e-5);
        let m = stats.finish();
        let st = &j["stats"];
        for (key, got) in stat_pairs(&m) {
            let want = num(st, key);
            assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "{name}: stat {key} {got} vs {want}");
        }
        println!(
            "{name}: ok (loss {loss:.6}, clip low/high/dual {:.3}/{:.3}/{:.3})",
            m.clip_frac_low, m.clip_frac_high, m.clip_frac_dual
        );
    }
}

#[test]
fn distillation_matches_pytorch() {
    for name in ["distill_forward", "distill_reverse", "distill_jsd", "distill_jsd_beta0", "distill_jsd_beta1"] {
        let (j, r) = case(name);
        let lay = Layout::read(&r);
        let (mut zs, zt) = (r.f32("student_logits"), r.f32("teacher_logits"));
        let v = zs.len() / lay.n;
        let t = num(&j, "temperature") as f32;
        let mode = match j["mode"].as_str().unwrap() {
            "forward" => DistillMode::Forward,
            "reverse" => DistillMode::Reverse,
            _ => DistillMode::Jsd { beta: num(&j, "beta") },
        };
        let counts = lay.counts();
        let weight: Vec<f32> = lay.mask.iter().map(|&m| if m { 1.0 / counts.tokens as f32 } else { 0.0 }).collect();
        let mut per_token = vec![0.0f32; lay.n];
        Cpu.distill(&mut zs, &zt, v, mode, 1.0 / t, &weight, &mut per_token);
        let loss: f64 = per_token.iter().zip(&weight).map(|(&l, &w)| l as f64 * w as f64).sum();
        check_scalar(&format!("{name}: loss"), loss, num(&j, "loss"), 1e-5);
        check_rel(&format!("{name}: dlogits"), &to_f64(&zs), &r.f64("dlogits"), 1e-5);
    }
}

#[test]
fn dpo_matches_pytorch() {
    for name in ["dpo_sigmoid", "dpo_sigmoid_ls", "dpo_ipo"] {
        let (j, r) = case(name);
        let lay = Layout::read(&r);
        let (logits, targets) = (r.f32("logits"), r.u32("targets"));
        let v = logits.len() / lay.n;
        let (logp, lse, h) = phase1(&logits, &targets, v, 1.0);
        let cfg = dpo_config(&j);
        let pairs = (lay.cu.len() - 1) / 2;
        let (loss, coefs, stats) = dpo_loss(&cfg, &logp, &r.f32("ref_logp"), &lay.mask, &lay.cu, pairs);
        check_scalar(&format!("{name}: loss"), loss, num(&j, "loss"), 1e-5);
        let dz = phase2(&logits, &targets, v, 1.0, &lse, &h, &coefs);
        check_rel(&format!("{name}: dlogits"), &to_f64(&dz), &r.f64("dlogits"), 1e-5);
        let st = &j["stats"];
        for (key, got) in dpo_stat_pairs(&stats) {
            let want = num(st, key);
            assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "{name}: {key} {got} vs {want}");
        }
    }
}

#[test]
fn sft_matches_pytorch() {
    let (j, r) = case("sft");
    let lay = Layout::read(&r);
    let (logits, mut targets) = (r.f32("logits"), r.u32("targets"));
    let v = logits.len() / lay.n;
    for (t, m) in targets.iter_mut().zip(&lay.mask) {
        if !m {
            *t = engine::backend::IGNORE;
        }
    }
    let (logp, lse, h) = phase1(&logits, &targets, v, 1.0);
    let n = lay.counts().tokens;
    let mut coef = vec![0.0f32; lay.n];
    let mut loss = 0.0;
    for (t, _, _) in lay.micro_batches() {
        let (l, c) = masked_ce_with_count(&logp[t.clone()], &targets[t.clone()], n);
        loss += l;
        coef[t].copy_from_slice(&c);
    }
    check_scalar("sft: loss", loss, num(&j, "loss"), 1e-5);
    let dz = phase2(&logits, &targets, v, 1.0, &lse, &h, &coef.into());
    check_rel("sft: dlogits", &to_f64(&dz), &r.f64("dlogits"), 1e-5);
}

#[test]
fn advantages_and_kl_in_reward_match_pytorch() {
    let (j, r) = case("advantages");
    let rewards = r.f32("rewards");
    let groups: Vec<usize> = r.u32("group_sizes").iter().map(|&g| g as usize).collect();
    for (key, scale) in
        [("adv_group", ScaleRewards::Group), ("adv_batch", ScaleRewards::Batch), ("adv_none", ScaleRewards::None)]
    {
        let got = grpo_advantages(&rewards, &groups, scale);
        let want = r.f64(key);
        assert!(max_abs(&got, &want) < 1e-6, "{key}: {got:?} vs {want:?}");
    }
    let lay = Layout::read(&r);
    let got =
        kl_in_reward(&rewards, &r.f32("old_logp"), &r.f32("ref_logp"), &lay.mask, &lay.cu, num(&j, "kl_reward_beta"));
    assert!(max_abs(&got, &r.f64("rewards_with_kl")) < 1e-6);
}

/// The two-phase lm_head path from hidden states: dh and dW, with a chunk
/// that does not divide the tokens, and the same numbers from the one-pass
/// shortcut (one chunk holding every row); at each chunking, the one-pass
/// head (`head::one_pass`) gives the two phases' bits.
#[test]
fn lm_head_path_matches_pytorch() {
    for name in ["lm_head_sft", "lm_head_gspo", "lm_head_ppo_entropy"] {
        let (j, r) = case(name);
        let lay = Layout::read(&r);
        let (hidden, weight) = (r.f32("hidden"), r.f32("weight"));
        let d = hidden.len() / lay.n;
        let v = weight.len() / d;
        let t = opt_num(&j, "temperature").unwrap_or(1.0) as f32;
        let mut targets = r.u32("targets");
        let kind = j["loss_kind"].as_str().unwrap();
        if kind == "sft" {
            for (x, m) in targets.iter_mut().zip(&lay.mask) {
                if !m {
                    *x = engine::backend::IGNORE;
                }
            }
        }
        let s = HeadShape { n: lay.n, d, v };
        let mut results = Vec::new();
        for chunk in [7, lay.n] {
            let be = Cpu;
            let mut hb = HeadBuffers::<Cpu>::new(&be, lay.n, chunk, v);
            head::phase1(&be, &mut hb, s, &hidden, &weight, &targets, t, true);
            let (logp, ent) = (hb.read_logp(&be, lay.n), hb.read_entropy(&be, lay.n));
            let (loss, coefs) = if kind == "sft" {
                let (l, c) = masked_ce_with_count(&logp, &targets, lay.counts().tokens);
                (l, c.into())
            } else {
                let (l, c, _) = policy_step(&policy_config(&j), &r, &lay, &logp, &ent);
                (l, c)
            };
            let (mut dh, mut grads) = (vec![0.0f32; lay.n * d], vec![0.0f32; v * d]);
            head::phase2(&be, &mut hb, s, &hidden, &weight, &coefs, t, &mut dh, &mut grads, Span::new(0, v * d));
            // The logits come from an f32 GEMM here, and a policy loss is a
            // sum of terms of both signs (GSPO's nearly cancel): measure the
            // error against the sum of the terms' magnitudes.
            let scale = if r.has("token_loss") {
                r.f64("token_loss").iter().zip(r.f64("agg_weight")).map(|(l, w)| (l * w).abs()).sum::<f64>()
            } else {
                num(&j, "loss").abs()
            };
            let err = (loss - num(&j, "loss")).abs() / scale;
            assert!(err <= 1e-5, "{name}: loss {loss} vs {} (error {err:.2e} of the terms' scale)", num(&j, "loss"));
            check_rel(&format!("{name} chunk {chunk}: dhidden"), &to_f64(&dh), &r.f64("dhidden"), 1e-5);
            check_rel(&format!("{name} chunk {chunk}: dweight"), &to_f64(&grads), &r.f64("dweight"), 1e-5);
            // The one-pass head (logits computed once per chunk) with the
            // same coefficients gives the bits of the two phases run with
            // the same entropy setting (the CPU's entropy pass rounds lse
            // differently).
            let ent_on = coefs.entropy.is_some();
            let span = Span::new(0, v * d);
            let mut hb2 = HeadBuffers::<Cpu>::new(&be, lay.n, chunk, v);
            head::phase1(&be, &mut hb2, s, &hidden, &weight, &targets, t, ent_on);
            let (mut dh2, mut grads2) = (vec![0.0f32; lay.n * d], vec![0.0f32; v * d]);
            head::phase2(&be, &mut hb2, s, &hidden, &weight, &coefs, t, &mut dh2, &mut grads2, span);
            let mut hb1 = HeadBuffers::<Cpu>::new(&be, lay.n, chunk, v);
            let (mut dh1, mut grads1) = (vec![0.0f32; lay.n * d], vec![0.0f32; v * d]);
            head::one_pass(&be, &mut hb1, s, &hidden, &weight, &targets, &coefs, t, &mut dh1, &mut grads1, span);
            assert!(dh1 == dh2 && grads1 == grads2, "{name} chunk {chunk}: one pass differs from the two phases");
            assert_eq!(hb1.read_logp(&be, lay.n), hb2.read_logp(&be, lay.n), "{name} chunk {chunk}: log-probabilities");
            // A policy loss but GSPO's is token-local: its coefficient pass
            // after each chunk's log-probabilities (head::one_pass_with, as
            // the GRPO trainer runs it over several chunks) gives the two
            // phases' bits, and its last call the loss.
            let cfg = (kind != "sft").then(|| policy_config(&j)).filter(PolicyConfig::token_local);
            if let Some(cfg) = cfg {
                let mut hb3 = HeadBuffers::<Cpu>::new(&be, lay.n, chunk, v);
                let (mut dh3, mut grads3) = (vec![0.0f32; lay.n * d], vec![0.0f32; v * d]);
                let (mut calls, mut last) = (Vec::new(), None);
                let pass = |be: &Cpu, hb: &mut HeadBuffers<Cpu>, end: usize| {
                    let (logp, ent) = (hb.read_logp(be, lay.n), hb.read_entropy(be, lay.n));
                    let (l, c, _) = policy_step(&cfg, &r, &lay, &logp, &ent);
                    hb.coef[..lay.n].copy_from_slice(&c.logp);
                    if let Some(e) = &c.entropy {
                        hb.ent_coef[..lay.n].copy_from_slice(e);
                    }
                    calls.push(end);
                    last = Some(l);
                };
                head::one_pass_with(
                    &be,
                    &mut hb3,
                    s,
                    &hidden,
                    &weight,
                    &targets,
                    t,
                    ent_on,
                    pass,
                    &mut dh3,
                    &mut grads3,
                    span,
                );
                let ends: Vec<usize> = (1..=lay.n.div_ceil(chunk)).map(|c| (c * chunk).min(lay.n)).collect();
                assert_eq!(calls, ends, "{name} chunk {chunk}: one coefficient pass after each chunk");
                assert!(dh3 == dh2 && grads3 == grads2, "{name} chunk {chunk}: one pass with coefficients differs");
                assert_eq!(last, Some(loss), "{name} chunk {chunk}: the last pass's loss");
            }
            results.push((dh, grads));
        }
        // Same numbers up to rounding (the two chunkings run GEMMs of different shapes).
        check_rel(&format!("{name}: one-pass vs chunked dh"), &to_f64(&results[1].0), &to_f64(&results[0].0), 1e-5);
    }
}

/// On gppo_default's inputs: wherever PPO's gradient is zero outside the
/// dual clip, GPPO's is not, and equals `w · (−bound · A)` (DESIGN.md §4.2);
/// everywhere else the two agree.
#[test]
fn gppo_keeps_gradients_ppo_drops() {
    let (j, r) = case("gppo_default");
    let lay = Layout::read(&r);
    let (logits, targets) = (r.f32("logits"), r.u32("targets"));
    let (logp, _, h) = phase1(&logits, &targets, logits.len() / lay.n, num(&j, "temperature") as f32);
    let mut gppo = policy_config(&j);
    gppo.positive_nll_coef = 0.0;
    let PolicyKind::Gppo { eps_low, eps_high, dual_clip, .. } = gppo.kind else { panic!("not gppo") };
    let mut ppo = gppo.clone();
    ppo.kind = PolicyKind::Ppo { eps_low, eps_high, dual_clip };
    let (_, g, _) = policy_step(&gppo, &r, &lay, &logp, &h);
    let (_, p, _) = policy_step(&ppo, &r, &lay, &logp, &h);
    let (old, adv, w) = (r.f64("old_logp"), r.f64("advantages"), r.f64("agg_weight"));
    let mut kept = 0;
    for (s, range) in seq_ranges(&lay.cu).enumerate() {
        for t in range.filter(|&t| lay.mask[t]) {
            let ratio = (logp[t] as f64 - old[t]).exp();
            let a = adv[s];
            let dual = a < 0.0 && ratio > dual_clip.unwrap();
            let (pg, gg) = (p.logp[t] as f64, g.logp[t] as f64);
            if dual {
                assert_eq!((pg, gg), (0.0, 0.0), "token {t}: dual clip");
            } else if pg == 0.0 && a != 0.0 {
                let bound = if ratio > 1.0 { 1.0 + eps_high } else { 1.0 - eps_low };
                let want = -w[t] * bound * a;
                assert!((gg - want).abs() <= 1e-6 * want.abs(), "token {t}: GPPO {gg} vs {want}");
                kept += 1;
            } else {
                assert!((pg - gg).abs() <= 1e-7 * pg.abs().max(1e-30), "token {t}: {pg} vs {gg}");
            }
        }
    }
    assert!(kept >= 4, "the case should clip tokens on both sides (kept {kept})");
}

/// Distillation through the lm_head in one pass (both models' logits per
/// chunk) gives what the logit-level kernel (checked against PyTorch above)
/// gives on materialised logits, for dh and dW.
#[test]
fn distill_lm_head_path_matches_logit_level() {
    use engine::model::head::Teacher;
    let (n, d, dt, v) = (23, 12, 9, 31);
    let rnd = |seed: u64, len: usize, scale: f32| -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                scale * ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            })
            .collect()
    };
    let (h, w, ht, wt) = (rnd(1, n * d, 2.0), rnd(2, v * d, 1.0), rnd(3, n * dt, 2.0), rnd(4, v * dt, 1.0));
    let weight: Vec<f32> = (0..n).map(|t| if t % 5 == 3 { 0.0 } else { 1.0 / n as f32 }).collect();
    let matmul = |x: &[f32], m: &[f32], k: usize| -> Vec<f32> {
        (0..n)
            .flat_map(|i| {
                (0..v).map(move |j| (0..k).map(|c| x[i * k + c] as f64 * m[j * k + c] as f64).sum::<f64>() as f32)
            })
            .collect()
    };
    let mode = DistillMode::Jsd { beta: 0.4 };
    let mut dz = matmul(&h, &w, d);
    let mut per_token = vec![0.0; n];
    Cpu.distill(&mut dz, &matmul(&ht, &wt, dt), v, mode, 1.0 / 0.8, &weight, &mut per_token);
    let want_loss: f64 = per_token.iter().zip(&weight).map(|(&l, &w)| l as f64 * w as f64).sum();
    let (dzr, wr, hr) = (&dz, &w, &h);
    let want_dh: Vec<f64> = (0..n)
        .flat_map(|i| (0..d).map(move |c| (0..v).map(|j| dzr[i * v + j] as f64 * wr[j * d + c] as f64).sum()))
        .collect();
    let want_dw: Vec<f64> = (0..v)
        .flat_map(|j| (0..d).map(move |c| (0..n).map(|i| dzr[i * v + j] as f64 * hr[i * d + c] as f64).sum()))
        .collect();

    let be = Cpu;
    let mut hb = HeadBuffers::<Cpu>::new(&be, n, 5, v);
    let mut teacher_logits = vec![0.0f32; 5 * v];
    let (mut dh, mut grads) = (vec![0.0f32; n * d], vec![0.0f32; v * d]);
    let teacher = Teacher::<Cpu> { h: &ht, w: &wt, d: dt };
    let s = HeadShape { n, d, v };
    let loss = head::distill(
        &be,
        &mut hb,
        s,
        &h,
        &w,
        &teacher,
        &mut teacher_logits,
        mode,
        0.8,
        &weight,
        &mut dh,
        &mut grads,
        Span::new(0, v * d),
    );
    check_scalar("distill head: loss", loss, want_loss, 1e-5);
    check_rel("distill head: dh", &to_f64(&dh), &want_dh, 1e-5);
    check_rel("distill head: dW", &to_f64(&grads), &want_dw, 1e-5);
}
