//! What the benchmarks share: the ~10M-parameter Llama shape that
//! tools/bench_vs_torch.py and tools/bench_generate.py build in PyTorch, with
//! deterministic random weights, and a small random stream.
#![allow(dead_code)]

use engine::backend::cpu::Cpu;
use engine::model::{Model, ModelConfig, ParamLayout};

pub const CONFIG: &str = r#"{
    "architectures": ["LlamaForCausalLM"], "vocab_size": 8000, "hidden_size": 256,
    "intermediate_size": 768, "num_hidden_layers": 8, "num_attention_heads": 8,
    "num_key_value_heads": 4, "head_dim": 32, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "tie_word_embeddings": false, "max_position_embeddings": 2048
}"#;

pub struct Lcg(pub u64);

impl Lcg {
    /// Uniform in [0, 1).
    pub fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| scale * (self.next() - 0.5)).collect()
    }
}

/// The benchmark model: norms at 1, matrices uniform in ±0.02.
pub fn model_10m() -> Model<Cpu> {
    model_from(CONFIG)
}

/// The same shape as a Qwen3 (q and k normalised per head before RoPE).
pub fn model_10m_qwen3() -> Model<Cpu> {
    model_from(&CONFIG.replace("LlamaForCausalLM", "Qwen3ForCausalLM"))
}

fn model_from(config: &str) -> Model<Cpu> {
    let cfg = ModelConfig::from_json_str(config, "bench config").unwrap();
    let layout = ParamLayout::new(&cfg);
    let mut rng = Lcg(0);
    let mut host = vec![0.0f32; layout.total];
    for e in &layout.entries {
        let is_norm = e.shape.len() == 1;
        for v in &mut host[e.span.off..e.span.end()] {
            *v = if is_norm { 1.0 } else { 0.04 * (rng.next() - 0.5) };
        }
    }
    Model::from_host(&Cpu, cfg, host)
}
