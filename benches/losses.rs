//! The loss path on the CPU at a Qwen-like vocabulary (151,936) and 2k
//! tokens: the phase-1 and phase-2 kernels, the per-token policy loss, the
//! distillation kernel, and the whole two-phase lm_head path (hidden 896, as
//! Qwen2.5-0.5B). Run: `cargo bench --bench losses`; results in
//! docs/PERFORMANCE.md.

use criterion::{criterion_group, criterion_main, Criterion};
use engine::backend::cpu::Cpu;
use engine::backend::{Backend, Span};
use engine::loss::*;
use engine::model::head::{self, HeadBuffers, HeadShape};

mod common;
use common::Lcg;

const VOCAB: usize = 151_936;
const TOKENS: usize = 2048;
const HIDDEN: usize = 896;

fn kernels(c: &mut Criterion) {
    let mut rng = Lcg(1);
    let logits = rng.vec(TOKENS * VOCAB, 8.0);
    let targets: Vec<u32> = (0..TOKENS).map(|_| (rng.next() * VOCAB as f32) as u32 % VOCAB as u32).collect();
    let (mut logp, mut lse, mut ent) = (vec![0.0; TOKENS], vec![0.0; TOKENS], vec![0.0; TOKENS]);
    let mut g = c.benchmark_group("loss_kernels_2k_x_151936");
    g.sample_size(10);
    g.bench_function("logprob_fwd", |b| {
        b.iter(|| Cpu.logprob_fwd(&logits, &targets, VOCAB, 1.0, &mut logp, &mut lse, None))
    });
    g.bench_function("logprob_fwd_entropy", |b| {
        b.iter(|| Cpu.logprob_fwd(&logits, &targets, VOCAB, 1.0, &mut logp, &mut lse, Some(&mut ent)))
    });
    let coef = vec![-1.0 / TOKENS as f32; TOKENS];
    let mut dz = logits.clone();
    g.bench_function("logprob_bwd", |b| {
        b.iter(|| {
            dz.copy_from_slice(&logits);
            Cpu.logprob_bwd(&mut dz, &targets, VOCAB, 1.0, &lse, &coef, None)
        })
    });
    let teacher = rng.vec(TOKENS * VOCAB, 8.0);
    let weight = vec![1.0 / TOKENS as f32; TOKENS];
    let mut per_token = vec![0.0; TOKENS];
    g.bench_function("distill_forward_kl", |b| {
        b.iter(|| {
            dz.copy_from_slice(&logits);
            Cpu.distill(&mut dz, &teacher, VOCAB, DistillMode::Forward, 1.0, &weight, &mut per_token)
        })
    });
    g.finish();

    // The per-token policy loss (phase 1 → coefficients): tiny next to the kernels.
    let old: Vec<f32> = logp.iter().map(|l| l + 0.1 * (rng.next() - 0.5)).collect();
    let mask = vec![true; TOKENS];
    let cu: Vec<u32> = (0..=16).map(|s| (s * TOKENS / 16) as u32).collect();
    let adv = rng.vec(16, 2.0);
    let rewards = vec![1.0f32; 16];
    let counts = StepCounts::of([(mask.as_slice(), cu.as_slice())]);
    let mut g = c.benchmark_group("policy_loss_2k_tokens");
    for (name, kind) in [
        ("ppo", PolicyKind::ppo()),
        ("gppo", PolicyKind::gppo()),
        ("cispo", PolicyKind::cispo()),
        ("gspo", PolicyKind::gspo()),
    ] {
        let cfg = PolicyConfig::new(kind);
        let b = PolicyBatch {
            logp: &logp,
            old_logp: &old,
            ref_logp: None,
            sampler_logp: None,
            entropy: None,
            mask: &mask,
            cu_seqlens: &cu,
            advantages: &adv,
            rewards: &rewards,
        };
        g.bench_function(name, |bench| bench.iter(|| policy_loss(&cfg, &b, &counts, 0)));
    }
    g.finish();
}

fn lm_head_path(c: &mut Criterion) {
    let be = Cpu;
    let mut rng = Lcg(2);
    let h = rng.vec(TOKENS * HIDDEN, 2.0);
    let w = rng.vec(VOCAB * HIDDEN, 0.05);
    let targets: Vec<u32> = (0..TOKENS).map(|_| (rng.next() * VOCAB as f32) as u32 % VOCAB as u32).collect();
    let chunk = (1 << 24) / VOCAB;
    let mut hb = HeadBuffers::<Cpu>::new(&be, TOKENS, chunk, VOCAB);
    let s = HeadShape { n: TOKENS, d: HIDDEN, v: VOCAB };
    let (mut dh, mut grads) = (vec![0.0f32; TOKENS * HIDDEN], vec![0.0f32; VOCAB * HIDDEN]);
    let mut g = c.benchmark_group("lm_head_two_phase_2k_x_896_x_151936");
    g.sample_size(10);
    g.bench_function("sft_phase1_loss_phase2", |b| {
        b.iter(|| {
            head::phase1(&be, &mut hb, s, &h, &w, &targets, 1.0, false);
            let (_, coef) = masked_mean_ce(&hb.read_logp(&be, TOKENS), &targets);
            head::phase2(&be, &mut hb, s, &h, &w, &coef.into(), 1.0, &mut dh, &mut grads, Span::new(0, VOCAB * HIDDEN));
        })
    });
    g.finish();
}

criterion_group!(benches, kernels, lm_head_path);
criterion_main!(benches);
