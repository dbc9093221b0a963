//! Batched sampling throughput on the CPU: the ~10M-parameter Llama of the
//! train-step benchmark, prompts of 32 tokens, 256 new tokens, batch 1, 16
//! and 64, temperature 1. Compared with transformers' `generate` on the same
//! model shape and threads by tools/bench_generate.py; results in
//! docs/PERFORMANCE.md. Run: `cargo bench --bench generate`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use engine::backend::cpu::Cpu;
use engine::model::{Model, ModelConfig, ParamLayout};
use engine::rollout::{GenerateConfig, Generator, SamplingParams};

const CONFIG: &str = r#"{
    "architectures": ["LlamaForCausalLM"], "vocab_size": 8000, "hidden_size": 256,
    "intermediate_size": 768, "num_hidden_layers": 8, "num_attention_heads": 8,
    "num_key_value_heads": 4, "head_dim": 32, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "tie_word_embeddings": false, "max_position_embeddings": 2048
}"#;
const NEW_TOKENS: usize = 256;

fn model() -> Model<Cpu> {
    let cfg = ModelConfig::from_json_str(CONFIG, "bench config").unwrap();
    let layout = ParamLayout::new(&cfg);
    let mut s = 1u64;
    let host: Vec<f32> = layout
        .entries
        .iter()
        .flat_map(|e| {
            let norm = e.shape.len() == 1;
            (0..e.span.len)
                .map(|_| {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    if norm {
                        1.0
                    } else {
                        0.04 * ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect();
    Model::from_host(&Cpu, cfg, host)
}

fn bench(c: &mut Criterion) {
    let m = model();
    let mut g = c.benchmark_group("generate_10m_256_new_tokens");
    g.sample_size(10);
    for batch in [1usize, 16, 64] {
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
        g.bench_function(format!("batch_{batch}"), |b| {
            b.iter(|| {
                let mut gen = Generator::new(&Cpu, &m, cfg.clone(), 32).unwrap();
                gen.generate(&prompts, None, |_| {}).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
