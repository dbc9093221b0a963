//! The train-step benchmark of the GPU check (issue 9, DESIGN.md §8): a
//! Qwen2.5-0.5B-shaped model (hidden 896, 24 layers, 14 / 2 heads of 64,
//! intermediate 4864, vocabulary 151,936, tied embeddings, q/k/v biases)
//! with random weights, 16 sequences × 1024 tokens, on the CUDA backend:
//!
//! - `train_sft_step`: forward, lm_head + masked mean cross-entropy,
//!   backward, gradient clipping at 1.0, AdamW (fp32 masters), zeroed grads;
//! - `train_grpo_update`: a forward for the old log-probs, then forward,
//!   PPO-clip token loss (random advantages, ε 0.2), backward, clip, AdamW.
//!
//! `tools/gpu_bench_train_torch.py` runs the same steps in transformers +
//! PyTorch under the same names, FLOP count and row format.
//!
//! Ignored: `cuda-tests --ignored bench_train_step --nocapture`. Environment:
//! `ENGINE_BENCH_OUT` (JSON lines file), `ENGINE_TRAIN_BENCH_STEPS` (timed
//! steps, default 2), `ENGINE_TRAIN_BENCH_CHUNK` (lm_head rows per chunk;
//! default what the trainers use on the GPU, `backend_chunk`: 7,067 rows,
//! so 3 chunks whose logits phase 2 recomputes).

use super::util::gpu;
use engine::backend::cuda::Cuda;
use engine::backend::{Backend, Span, IGNORE};
use engine::data::Batch;
use engine::loss::policy::{policy_loss, PolicyBatch, PolicyConfig, PolicyKind};
use engine::loss::{masked_mean_ce, StepCounts};
use engine::model::activations::backend_chunk;
use engine::model::{Activations, Model, ModelConfig, ParamLayout};
use engine::optim::{clip_grad_norm, AdamW, AdamWConfig};
use std::io::Write;
use std::time::Instant;

const CONFIG: &str = r#"{"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","vocab_size":151936,
  "hidden_size":896,"intermediate_size":4864,"num_hidden_layers":24,"num_attention_heads":14,
  "num_key_value_heads":2,"max_position_embeddings":32768,"rope_theta":1000000.0,"rms_norm_eps":1e-6,
  "tie_word_embeddings":true}"#;
const SEQS: usize = 16;
const SEQ: usize = 1024;
const SHAPE: &str = "qwen2-0.5b 16x1024";
/// Dense bf16 peak of an H100 / H200 SXM, TFLOP/s.
const PEAK_TFLOPS: f64 = 989.4;

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// FLOPs per token of one forward and backward: 6·N_mm + 6·L·q·S (causal
/// attention at sequence length S), the count the PyTorch side uses.
fn flops_per_token(c: &ModelConfig) -> (f64, f64) {
    let (d, q, kv, i) = (c.hidden_size as f64, c.q_dim() as f64, c.kv_dim() as f64, c.intermediate_size as f64);
    let l = c.n_layers as f64;
    let n_mm = l * (d * q + 2.0 * d * kv + q * d + 3.0 * d * i) + c.vocab_size as f64 * d;
    (n_mm, l * q * SEQ as f64)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn used_bytes(be: &Cuda) -> usize {
    let (free, total) = be.mem_info().expect("memory info");
    total - free
}

/// Per phase, milliseconds, with the stream drained at each boundary.
#[derive(Default, Clone, Copy)]
struct Phases {
    old_logp: f64,
    forward: f64,
    backward: f64,
    optimizer: f64,
}

fn lap(be: &Cuda, t: &mut Instant) -> f64 {
    be.check().expect("device");
    let ms = t.elapsed().as_secs_f64() * 1e3;
    *t = Instant::now();
    ms
}

#[test]
#[ignore = "a benchmark; run by tools/gpu-check.sh"]
fn bench_train_step() {
    let Some(_) = gpu("bench_train_step") else { return };
    let be = Cuda::new(0).expect("GPU");
    let base = used_bytes(&be);
    let cfg = ModelConfig::from_json_str(CONFIG, "bench config").unwrap();
    let layout = ParamLayout::new(&cfg);
    let mut rng = Lcg(7);
    let mut host = vec![0.0f32; layout.total];
    for e in &layout.entries {
        let norm = e.shape.len() == 1 && !e.name.ends_with("bias");
        for v in &mut host[e.span.off..e.span.end()] {
            *v = if norm { 1.0 } else { 0.04 * (rng.next() - 0.5) };
        }
    }
    let mut model = Model::from_host(&be, cfg.clone(), host);
    let seqs: Vec<Vec<u32>> =
        (0..SEQS).map(|_| (0..SEQ).map(|_| (rng.next() * cfg.vocab_size as f32) as u32 % 151_936).collect()).collect();
    let batch = Batch::pack(&seqs);
    let n = batch.len();
    let chunk = env_usize("ENGINE_TRAIN_BENCH_CHUNK", backend_chunk(&be, &cfg, n)).clamp(1, n);
    let steps = env_usize("ENGINE_TRAIN_BENCH_STEPS", 2).max(1);
    let mut acts = Activations::new(&be, &cfg, n, chunk, true);
    let mut grads = model.zero_grads(&be);
    let mut opt = AdamW::new(&be, &model.layout, AdamWConfig::default());
    let all = Span::new(0, model.layout.total);
    let targets = batch.next_tokens.clone();
    let mask: Vec<bool> = targets.iter().map(|&t| t != IGNORE).collect();
    let advantages: Vec<f32> = (0..SEQS).map(|_| 2.0 * rng.next() - 1.0).collect();
    let policy = PolicyConfig::new(PolicyKind::ppo());
    let (n_mm, attn) = flops_per_token(&cfg);
    println!(
        "bench_train_step: {} on {}, {} parameters, {n} tokens, lm_head chunk {chunk}",
        SHAPE, be.gpu.name, layout.total
    );

    let mut out = std::env::var("ENGINE_BENCH_OUT")
        .ok()
        .map(|p| std::fs::OpenOptions::new().create(true).append(true).open(&p).unwrap_or_else(|e| panic!("{p}: {e}")));
    for kind in ["train_sft_step", "train_grpo_update"] {
        let grpo = kind == "train_grpo_update";
        let mut times = Vec::new();
        let mut phases = Vec::new();
        let mut peak = 0usize;
        let mut loss = 0.0;
        for step in 0..=steps {
            let t0 = Instant::now();
            let mut t = Instant::now();
            let mut p = Phases::default();
            let old = if grpo {
                model.forward(&be, &mut acts, &batch).unwrap();
                model.head_fwd(&be, &mut acts, &targets, 1.0, false);
                let old = acts.head.read_logp(&be, n);
                p.old_logp = lap(&be, &mut t);
                Some(old)
            } else {
                None
            };
            model.forward(&be, &mut acts, &batch).unwrap();
            model.head_fwd(&be, &mut acts, &targets, 1.0, false);
            let logp = acts.head.read_logp(&be, n);
            let coefs = match &old {
                None => {
                    let (l, c) = masked_mean_ce(&logp, &targets);
                    loss = l;
                    c.into()
                }
                Some(old) => {
                    let b = PolicyBatch {
                        logp: &logp,
                        old_logp: old,
                        ref_logp: None,
                        sampler_logp: None,
                        entropy: None,
                        mask: &mask,
                        cu_seqlens: &batch.cu_seqlens,
                        advantages: &advantages,
                        rewards: &advantages,
                    };
                    let counts = StepCounts::of([(mask.as_slice(), batch.cu_seqlens.as_slice())]);
                    let o = policy_loss(&policy, &b, &counts, 0);
                    loss = o.loss;
                    o.coefs
                }
            };
            p.forward = lap(&be, &mut t);
            model.backward(&be, &mut acts, &coefs, 1.0, &mut grads);
            p.backward = lap(&be, &mut t);
            clip_grad_norm(&be, &mut grads, 1.0);
            opt.step(&be, &model.layout, &mut model.params, &grads, 1e-5);
            be.fill(Cuda::view_mut(&mut grads, all), 0.0);
            p.optimizer = lap(&be, &mut t);
            peak = peak.max(used_bytes(&be));
            if step > 0 {
                times.push(t0.elapsed().as_secs_f64() * 1e3);
                phases.push(p);
            }
        }
        times.sort_by(f64::total_cmp);
        let ms = times[times.len() / 2];
        let per_token = if grpo { 8.0 * (n_mm + attn) } else { 6.0 * (n_mm + attn) };
        let flops = per_token * n as f64;
        let tflops = flops / (ms * 1e-3) / 1e12;
        let mean = |f: fn(&Phases) -> f64| phases.iter().map(f).sum::<f64>() / phases.len() as f64;
        let row = serde_json::json!({
            "kernel": kind, "shape": SHAPE, "ms": ms, "tokens": n, "tokens_per_s": n as f64 / (ms * 1e-3),
            "tflops": tflops, "mfu": tflops / PEAK_TFLOPS, "flops": flops,
            "peak_mem_gib": (peak - base) as f64 / (1u64 << 30) as f64,
            "loss": loss, "n": times.len(), "lm_head_chunk": chunk,
            "phases_ms": {"old_logp": mean(|p| p.old_logp), "forward_and_loss": mean(|p| p.forward),
                          "backward": mean(|p| p.backward), "clip_adamw_zero": mean(|p| p.optimizer)},
            "source": "engine",
            "impl": "engine cuda: bf16 weights, fp32 AdamW masters, cuBLASLt, simple attention kernel",
        });
        println!("{row}");
        if let Some(f) = out.as_mut() {
            writeln!(f, "{row}").unwrap();
        }
    }
}
