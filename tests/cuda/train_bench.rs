//! The train-step benchmark of the GPU check (issue 9, DESIGN.md §8): a
//! Qwen2.5-0.5B-shaped model (hidden 896, 24 layers, 14 / 2 heads of 64,
//! intermediate 4864, vocabulary 151,936, tied embeddings, q/k/v biases)
//! with random weights, 16 sequences × 1024 tokens, on the CUDA backend:
//!
//! - `train_sft_step`: forward, lm_head + masked mean cross-entropy,
//!   backward, gradient clipping at 1.0, AdamW (fp32 masters), zeroed grads;
//!   as the SFT trainer runs it, the lm_head and the loss in one pass over
//!   the logit chunks (`head::one_pass`, counted in the backward's phase);
//! - `train_grpo_update`: a forward for the old log-probs, then forward,
//!   PPO-clip token loss (random advantages, ε 0.2) by the trainer's GPU
//!   coefficient pass (`Backend::policy_loss`) as src/train/grpo.rs runs
//!   it (with 3 logit chunks: inside the one pass over the chunks,
//!   `head::one_pass_with`), backward, clip, AdamW;
//! - `train_sft_step_fused_bwd`: `train_sft_step` with the one-pass flash
//!   backward (`FlashVariant::Fused`), `train_sft_step_hopper` with the
//!   Hopper kernels (`FlashVariant::Hopper`, compute capability 9.0 only)
//!   and `train_sft_step_hopper_ws` with the warp-specialised ones
//!   (`FlashVariant::HopperWs`),
//!   to decide the dispatch's variant on the whole step.
//!
//! `tools/gpu_bench_train_torch.py` runs the same steps in transformers +
//! PyTorch under the same names, FLOP count and row format.
//!
//! Ignored: `cuda-tests --ignored bench_train_step --nocapture`. Environment:
//! `ENGINE_BENCH_OUT` (JSON lines file), `ENGINE_TRAIN_BENCH_STEPS` (timed
//! steps, default 2), `ENGINE_TRAIN_BENCH_CHUNK` (lm_head rows per chunk;
//! default what the trainers use on the GPU, `backend_chunk`: 7,067 rows,
//! so 3 chunks whose logits phase 2 recomputes).

use super::util::{self, gpu, Lcg};
use engine::backend::cuda::{Cuda, FlashVariant};
use engine::backend::{Backend, MatShape, PolicyInputs, Span, IGNORE};
use engine::data::Batch;
use engine::loss::policy::{PolicyConfig, PolicyKind};
use engine::loss::sft::ce_coefs;
use engine::loss::{masked_mean_ce, StepCounts, TokenCoefs};
use engine::model::activations::backend_chunk;
use engine::model::head::{Coefs, HeadBuffers};
use engine::model::{head, Activations, Model, ModelConfig};
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

/// The 0.5B-shaped model with random weights (norms 1), and the generator
/// that made them, for the data.
fn random_model(be: &Cuda) -> (Model<Cuda>, Lcg) {
    util::random_model(be, CONFIG, 7, 0.04)
}

fn bench_out() -> Option<std::fs::File> {
    std::env::var("ENGINE_BENCH_OUT")
        .ok()
        .map(|p| std::fs::OpenOptions::new().create(true).append(true).open(&p).unwrap_or_else(|e| panic!("{p}: {e}")))
}

#[test]
#[ignore = "a benchmark; run by tools/gpu-check.sh"]
fn bench_train_step() {
    let Some(_) = gpu("bench_train_step") else { return };
    let be = Cuda::new(0).expect("GPU");
    let base = used_bytes(&be);
    let (mut model, mut rng) = random_model(&be);
    let (cfg, layout) = (model.cfg.clone(), model.layout.clone());
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
    // The old log-probs on the device, as the trainer holds them.
    let mut old_d = be.alloc_f32(n);
    let (n_mm, attn) = flops_per_token(&cfg);
    println!(
        "bench_train_step: {} on {}, {} parameters, {n} tokens, lm_head chunk {chunk}",
        SHAPE, be.gpu.name, layout.total
    );

    let mut out = bench_out();
    let dispatched = be.gpu.flash_variant();
    // The Hopper kernels' step on 9.0, unless skipped ("hopper" in
    // ENGINE_BENCH_SKIP, as in the kernel bench).
    let skip = std::env::var("ENGINE_BENCH_SKIP").unwrap_or_default().to_lowercase();
    let hopper = be.gpu.cc == (9, 0) && !skip.split(',').any(|s| s.trim() == "hopper");
    let kinds = [
        "train_sft_step",
        "train_grpo_update",
        "train_sft_step_fused_bwd",
        "train_sft_step_hopper",
        "train_sft_step_hopper_ws",
    ];
    for kind in kinds.into_iter().filter(|k| hopper || !k.contains("_hopper")) {
        let grpo = kind == "train_grpo_update";
        let variant = match kind {
            _ if kind.ends_with("_fused_bwd") => FlashVariant::Fused,
            _ if kind.ends_with("_hopper") => FlashVariant::Hopper,
            _ if kind.ends_with("_hopper_ws") => FlashVariant::HopperWs,
            _ => dispatched,
        };
        be.gpu.set_flash_variant(variant);
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
            match &old {
                None => {
                    // SFT as the trainer runs it: the coefficients (−1/n per
                    // target) are known up front, so the lm_head, the loss
                    // and its gradient run in one pass over the logit chunks
                    // (head::one_pass), inside the backward's time.
                    let coefs: TokenCoefs = ce_coefs(&targets, mask.iter().filter(|&&m| m).count()).into();
                    p.forward = lap(&be, &mut t);
                    model.backward_with_head(&be, &mut acts, &mut grads, |be, hb, s, h, w, dh, g, dw| {
                        head::one_pass(be, hb, s, h, w, &targets, &coefs, 1.0, dh, g, dw)
                    });
                    loss = masked_mean_ce(&acts.head.read_logp(&be, n), &targets).0;
                }
                Some(old) => {
                    // As the GRPO trainer runs it (src/train/grpo.rs): the old
                    // log-probs written to a device buffer, the coefficient
                    // pass on the device (`Backend::policy_loss`, which reads
                    // back only its per-sequence sums) into the head
                    // buffers; with several logit chunks and a token-local
                    // loss (PPO here), after each chunk's log-probs inside
                    // the one pass over the chunks (`head::one_pass_with`,
                    // in the backward's time, as SFT's), else after phase 1
                    // and before the backward from those coefficients.
                    let span = Span::new(0, n);
                    be.write(old, Cuda::view_mut(&mut old_d, span));
                    let counts = StepCounts::of([(mask.as_slice(), batch.cu_seqlens.as_slice())]);
                    let old_d = &old_d;
                    let coefs = |be: &Cuda, hb: &mut HeadBuffers<Cuda>| {
                        let HeadBuffers { logp, coef, .. } = hb;
                        let x = PolicyInputs::<Cuda> {
                            logp: Cuda::view(logp, span),
                            old_logp: Cuda::view(old_d, span),
                            ref_logp: None,
                            sampler_logp: None,
                            entropy: None,
                            mask: &mask,
                            cu_seqlens: &batch.cu_seqlens,
                            advantages: &advantages,
                            rewards: &advantages,
                        };
                        be.policy_loss(&policy, &x, &counts, 0, Cuda::view_mut(coef, span), None).0
                    };
                    if policy.token_local() && n > acts.head.chunk {
                        p.forward = lap(&be, &mut t);
                        let mut last = None;
                        model.backward_with_head(&be, &mut acts, &mut grads, |be, hb, s, h, w, dh, g, dw| {
                            let per_chunk =
                                |be: &Cuda, hb: &mut HeadBuffers<Cuda>, _end: usize| last = Some(coefs(be, hb));
                            head::one_pass_with(be, hb, s, h, w, &targets, 1.0, false, per_chunk, dh, g, dw)
                        });
                        loss = last.expect("a chunk");
                    } else {
                        model.head_fwd(&be, &mut acts, &targets, 1.0, false);
                        loss = coefs(&be, &mut acts.head);
                        p.forward = lap(&be, &mut t);
                        model.backward_from(&be, &mut acts, Coefs::InBuffers { entropy: false }, 1.0, &mut grads);
                    }
                }
            }
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
            "impl": format!("engine cuda: bf16 weights, fp32 AdamW masters, cuBLASLt, flash attention ({variant:?})"),
        });
        println!("{row}");
        if let Some(f) = out.as_mut() {
            writeln!(f, "{row}").unwrap();
        }
    }
}

const GEN_BATCH: usize = 64;
const GEN_PROMPT: usize = 128;
const GEN_NEW: usize = 256;

/// Rollouts (issue 7, DESIGN.md §8): `generate` of 64 prompts × 128 random
/// tokens, 256 new tokens each (no EOS, so every sequence runs to the end),
/// temperature 1, on the same model; `tools/gpu_bench_train_torch.py` runs
/// transformers' `generate` on the same shapes. The decode step's time is
/// (time of 256 new tokens − time of 1) / 255, set against the bytes a step
/// must move — the bf16 weights, the KV cache read at the mean length, the
/// logits written and read by the sampler — over the copy bandwidth
/// measured here. Then the same 64 sequences as GRPO makes them, 8 prompts ×
/// 8 samples (`generate_g8`): the prompt's keys and values held once for its
/// 8 samples, a smaller cache (its peak memory) and the same decode work.
#[test]
#[ignore = "a benchmark; run by tools/gpu-check.sh"]
fn bench_generate() {
    use engine::rollout::{GenerateConfig, Generator, SamplingParams};
    let Some(_) = gpu("bench_generate") else { return };
    let be = Cuda::new(0).expect("GPU");
    let base = used_bytes(&be);
    let (model, mut rng) = random_model(&be);
    let cfg = model.cfg.clone();
    let prompts: Vec<Vec<u32>> = (0..GEN_BATCH)
        .map(|_| (0..GEN_PROMPT).map(|_| (rng.next() * cfg.vocab_size as f32) as u32 % 151_936).collect())
        .collect();
    let gen_cfg = |new: usize, n: usize, graphs: bool| GenerateConfig {
        n,
        max_new_tokens: new,
        max_batch: GEN_BATCH,
        sampling: SamplingParams { temperature: 1.0, ..Default::default() },
        seed: 1,
        graphs,
        ..Default::default()
    };
    // (seconds, memory in use after, the cache's shape) for `new` tokens of
    // each of `prompts` × n samples.
    let time = |new: usize,
                prompts: &[Vec<u32>],
                n: usize,
                graphs: bool|
     -> (f64, usize, engine::model::CacheShape, engine::rollout::DecodeStats) {
        let mut g = Generator::new(&be, &model, gen_cfg(new, n, graphs), GEN_PROMPT).unwrap();
        be.check().unwrap();
        let t = Instant::now();
        let out = g.generate(prompts, None, |_| {}).unwrap();
        be.check().unwrap();
        let s = t.elapsed().as_secs_f64();
        let tokens: usize = out.iter().map(|s| s.tokens.len()).sum();
        assert_eq!(tokens, GEN_BATCH * new, "every sequence runs to max_new_tokens");
        (s, used_bytes(&be), g.cache_shape(), g.decode_stats())
    };
    time(8, &prompts, 1, false); // warm-up: cuBLASLt plans, scratch, module loads

    // The copy bandwidth here (read + write bytes per second), as bench_kernels counts it.
    let n = 1usize << 28; // 512 MiB of bf16 each way
    let src = be.gpu.stream.alloc_zeros::<engine::backend::cuda::Bf16>(n).unwrap();
    let mut dst = be.gpu.stream.alloc_zeros::<engine::backend::cuda::Bf16>(n).unwrap();
    be.gpu.stream.memcpy_dtod(&src, &mut dst).unwrap();
    be.check().unwrap();
    let t = Instant::now();
    for _ in 0..5 {
        be.gpu.stream.memcpy_dtod(&src, &mut dst).unwrap();
    }
    be.check().unwrap();
    let copy_gb_s = 5.0 * 2.0 * 2.0 * n as f64 / t.elapsed().as_secs_f64() / 1e9;
    drop((src, dst));

    let weights = 2.0 * model.layout.total as f64;
    let mean_len = GEN_PROMPT as f64 + GEN_NEW as f64 / 2.0;
    let kv = GEN_BATCH as f64 * 2.0 * cfg.n_layers as f64 * cfg.kv_dim() as f64 * mean_len * 2.0;
    let logits = GEN_BATCH as f64 * cfg.vocab_size as f64 * 2.0 * 2.0;
    let bound_ms = (weights + kv + logits) / (copy_gb_s * 1e9) * 1e3;
    let tokens = GEN_BATCH * GEN_NEW;
    let groups = GEN_BATCH / 8;
    // `_graphs`: each decode step replayed as a CUDA graph (captured per
    // padded batch size; not the default until measured).
    for (name, prompts, n, graphs) in [
        ("generate_b64", &prompts[..], 1, false),
        ("generate_b64_graphs", &prompts[..], 1, true),
        ("generate_g8", &prompts[..groups], 8, false),
    ] {
        let (t1, _, _, _) = time(1, prompts, n, graphs);
        let (t_all, used, cache, stats) = time(GEN_NEW, prompts, n, graphs);
        let kv_bytes = 2 * engine::model::KvCache::<Cuda>::elements(cfg.n_layers, cfg.kv_dim(), cache);
        let step_ms = (t_all - t1) / (GEN_NEW - 1) as f64 * 1e3;
        let row = serde_json::json!({
            "kernel": name, "shape": format!("qwen2-0.5b {}x{n}x({GEN_PROMPT}+{GEN_NEW})", prompts.len()),
            "ms": t_all * 1e3, "tokens": tokens, "tokens_per_s": tokens as f64 / t_all,
            "peak_mem_gib": (used - base) as f64 / (1u64 << 30) as f64,
            "kv_cache_gib": kv_bytes as f64 / (1u64 << 30) as f64,
            "decode_step_ms": step_ms, "decode_bound_ms": bound_ms, "decode_over_bound": step_ms / bound_ms,
            "prefill_and_first_ms": t1 * 1e3, "copy_gb_s": copy_gb_s,
            // The host's time to issue a step's forward (its launches) against
            // the whole step: close to it, the step is bound by launches.
            "decode_forward_issue_ms": stats.forward_issue_s / stats.steps.max(1) as f64 * 1e3,
            "decode_step_in_loop_ms": stats.step_s / stats.steps.max(1) as f64 * 1e3,
            "bytes_per_step": {"weights": weights, "kv_cache": kv, "logits": logits},
            "source": "engine",
            "impl": if graphs {
                "engine cuda, decode steps replayed as CUDA graphs"
            } else {
                "engine cuda: continuous batching, KV cache (a prompt once for its samples), decode attention kernel, sampling on the device"
            },
        });
        println!("{row}");
        if let Some(f) = bench_out().as_mut() {
            writeln!(f, "{row}").unwrap();
        }
    }
}

/// The lm_head + loss path at the 0.5B shape (16,384 tokens, hidden 896,
/// vocabulary 151,936; issue 7, DESIGN.md §8): the two phases (logits per
/// chunk, logp; then the logits again, dz in place, dh, dW), the one pass
/// the SFT trainer runs (logits once per chunk), and the plain cuBLASLt
/// products of the same shapes over the whole `[tokens, vocab]` logits
/// (forward, dh, dW) as the yardstick: useful TFLOP/s = 6·n·v·d / time
/// (target ≥ 85% of the plain products' rate), and the device memory each
/// path takes: measured (`peak_mem_gib`: in use after its calls, above what
/// was in use before it) and its logits' share computed (`logits_gib`).
#[test]
#[ignore = "a benchmark; run by tools/gpu-check.sh"]
fn bench_lm_head() {
    use engine::model::head::{HeadBuffers, HeadShape};
    let Some(_) = gpu("bench_lm_head") else { return };
    let be = Cuda::new(0).expect("GPU");
    let (n, d, v) = (16_384usize, 896usize, 151_936usize);
    let chunk = engine::model::activations::CUDA_LOGIT_CHUNK_ELEMENTS / v;
    let mut rng = Lcg(3);
    let rand =
        |len: usize, scale: f32, rng: &mut Lcg| -> Vec<f32> { (0..len).map(|_| scale * (rng.next() - 0.5)).collect() };
    let h = be.upload(rand(n * d, 2.0, &mut rng));
    let w = be.upload(rand(v * d, 0.08, &mut rng));
    let targets: Vec<u32> = (0..n).map(|_| (rng.next() * v as f32) as u32 % v as u32).collect();
    let coefs: TokenCoefs = ce_coefs(&targets, n).into();
    let s = HeadShape { n, d, v };
    let (mut dh, mut dw) = (be.alloc(n * d), be.alloc(v * d));
    let wv = Span::new(0, v * d);
    let useful = 6.0 * n as f64 * v as f64 * d as f64;
    let steps = env_usize("ENGINE_TRAIN_BENCH_STEPS", 2).max(1) + 1;
    // (median ms, the most device memory in use after a call): sampled with
    // the stream drained, so a buffer allocated and freed inside one call is
    // not seen, but every buffer the path keeps (its logits, the backend's
    // scratch and cuBLASLt's workspace) is.
    let time = |f: &mut dyn FnMut()| -> (f64, usize) {
        let mut ms = Vec::new();
        let mut peak = 0;
        for i in 0..=steps {
            be.check().unwrap();
            let t = Instant::now();
            f();
            be.check().unwrap();
            if i > 0 {
                ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
            peak = peak.max(used_bytes(&be));
        }
        ms.sort_by(f64::total_cmp);
        (ms[ms.len() / 2], peak)
    };
    let gib = |bytes: usize| bytes as f64 / (1u64 << 30) as f64;
    // (kernel, ms, measured GiB, computed logits GiB, what): measured is the
    // device memory in use after the calls above what was in use before the
    // block (h, W, dh and dW were there already).
    let mut rows = Vec::new();
    let shape = format!("{n}x{d} -> {v}");
    {
        be.check().unwrap();
        let base = used_bytes(&be);
        let mut hb = HeadBuffers::new(&be, n, chunk, v);
        let held = gib(chunk * v * 2);
        let (ms, peak) = time(&mut || {
            head::phase1(&be, &mut hb, s, &h, Cuda::view(&w, wv), &targets, 1.0, false);
            head::phase2(&be, &mut hb, s, &h, Cuda::view(&w, wv), &coefs, 1.0, &mut dh, &mut dw, wv);
        });
        rows.push((
            "lm_head_two_phase",
            ms,
            gib(peak.saturating_sub(base)),
            held,
            "phase 1 then phase 2 (logits computed twice), chunks of 7,067 rows",
        ));
        let (ms, peak) = time(&mut || {
            head::one_pass(&be, &mut hb, s, &h, Cuda::view(&w, wv), &targets, &coefs, 1.0, &mut dh, &mut dw, wv);
        });
        rows.push((
            "lm_head_one_pass",
            ms,
            gib(peak.saturating_sub(base)),
            held,
            "one pass (logits once), chunks of 7,067 rows",
        ));
    }
    {
        // The head buffers are gone; the stream drained returns their memory.
        be.check().unwrap();
        let base = used_bytes(&be);
        let mut z = be.alloc(n * v);
        let zs = Span::new(0, n * v);
        let ms_shape = MatShape { m: n, n: v, k: d };
        let (ms, peak) = time(&mut || {
            be.matmul(
                ms_shape,
                Cuda::view(&h, Span::new(0, n * d)),
                Cuda::view(&w, wv),
                None,
                Cuda::view_mut(&mut z, zs),
                false,
            );
            be.matmul_dx(
                ms_shape,
                Cuda::view(&z, zs),
                Cuda::view(&w, wv),
                Cuda::view_mut(&mut dh, Span::new(0, n * d)),
                false,
            );
            be.matmul_dw(
                ms_shape,
                Cuda::view(&z, zs),
                Cuda::view(&h, Span::new(0, n * d)),
                Cuda::view_mut(&mut dw, wv),
            );
        });
        let held = gib(n * v * 2);
        rows.push((
            "lm_head_plain_gemms",
            ms,
            gib(peak.saturating_sub(base)),
            held,
            "the three products over the whole logits, no loss",
        ));
    }
    let plain_ms = rows.last().unwrap().1;
    let mut out = bench_out();
    for (kernel, ms, peak, held, what) in rows {
        let tflops = useful / (ms * 1e-3) / 1e12;
        let row = serde_json::json!({
            "kernel": kernel, "shape": shape, "ms": ms, "tokens": n, "tflops": tflops, "flops": useful,
            "gemm_fraction": plain_ms / ms, "peak_mem_gib": peak, "logits_gib": held, "source": "engine",
            "impl": format!("engine cuda: {what}"),
        });
        println!("{row}");
        if let Some(f) = out.as_mut() {
            writeln!(f, "{row}").unwrap();
        }
    }
}
