//! A full forward + backward of a ~10M-parameter Llama-shaped model at
//! 4 × 256 tokens on the CPU backend: the CPU reference's speed, compared
//! with PyTorch by tools/bench_vs_torch.py (same shape, same threads).
//! Run: `cargo bench --bench train_step`. Results: docs/PERFORMANCE.md.

use criterion::{criterion_group, criterion_main, Criterion};
use engine::backend::cpu::Cpu;
use engine::backend::{Backend, Span};
use engine::data::Batch;
use engine::loss::masked_mean_ce;
use engine::model::Activations;

mod common;
use common::{model_10m, Lcg};

fn bench(c: &mut Criterion) {
    let be = Cpu;
    let m = model_10m();
    let mut rng = Lcg(1);
    let seqs: Vec<Vec<u32>> =
        (0..4).map(|_| (0..256).map(|_| (rng.next() * m.cfg.vocab_size as f32) as u32).collect()).collect();
    let batch = Batch::pack(&seqs);
    let n = batch.len();
    let mut acts = Activations::new(&be, &m.cfg, n, n, true);
    let mut grads = m.zero_grads(&be);
    println!("train_step: {} parameters, {} tokens, {} threads", m.layout.total, n, rayon::current_num_threads());

    let mut g = c.benchmark_group("train_step");
    g.sample_size(10);
    g.bench_function("forward_10m_4x256", |b| {
        b.iter(|| {
            m.forward(&be, &mut acts, &batch).unwrap();
            m.head_fwd(&be, &mut acts, &batch.next_tokens, 1.0, false);
        })
    });
    g.bench_function("forward_backward_10m_4x256", |b| {
        b.iter(|| {
            be.fill(Cpu::view_mut(&mut grads, Span::new(0, m.layout.total)), 0.0);
            m.forward(&be, &mut acts, &batch).unwrap();
            m.head_fwd(&be, &mut acts, &batch.next_tokens, 1.0, false);
            let (_, coef) = masked_mean_ce(&acts.head.read_logp(&be, n), &batch.next_tokens);
            m.backward(&be, &mut acts, &coef.into(), 1.0, &mut grads);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
