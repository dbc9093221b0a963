//! Batched sampling throughput on the CPU: the ~10M-parameter Llama of the
//! train-step benchmark, prompts of 32 tokens, 256 new tokens, batch 1, 16
//! and 64, temperature 1 (and the same shape as a Qwen3 at batch 1 and 16:
//! `batch_1_qwen3`, `batch_16_qwen3`). Compared with transformers' `generate` on the same
//! model shape and threads by tools/bench_generate.py; results in
//! docs/PERFORMANCE.md. Run: `cargo bench --bench generate`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use engine::backend::cpu::Cpu;

mod common;
use common::{model_10m, model_10m_qwen3};
use engine::rollout::{GenerateConfig, Generator, SamplingParams};

const NEW_TOKENS: usize = 256;

fn bench(c: &mut Criterion) {
    let (llama, qwen3) = (model_10m(), model_10m_qwen3());
    let mut g = c.benchmark_group("generate_10m_256_new_tokens");
    g.sample_size(10);
    // The Qwen3 rows: the same shape with q/k norms (batch 1 and 16).
    let runs =
        [(1usize, "", &llama), (16, "", &llama), (64, "", &llama), (1, "_qwen3", &qwen3), (16, "_qwen3", &qwen3)];
    for (batch, family, m) in runs {
        let prompts: Vec<Vec<u32>> =
            (0..batch).map(|b| (0..32).map(|i| ((b * 131 + i * 17) % 8000) as u32).collect()).collect();
        let cfg = GenerateConfig {
            n: 1,
            max_new_tokens: NEW_TOKENS,
            sampling: SamplingParams { temperature: 1.0, ..Default::default() },
            max_batch: batch,
            ..Default::default()
        };
        g.throughput(Throughput::Elements((batch * NEW_TOKENS) as u64));
        g.bench_function(format!("batch_{batch}{family}"), |b| {
            b.iter(|| {
                let mut gen = Generator::new(&Cpu, m, cfg.clone(), 32).unwrap();
                gen.generate(&prompts, None, |_| {}).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
