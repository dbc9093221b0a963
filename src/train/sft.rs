//! `engine train sft`: supervised fine-tuning on prompt / completion data,
//! the prompt masked from the loss, token-mean cross-entropy over each
//! optimizer step (DESIGN.md §4.8), AdamW with warm-up and decay, gradient
//! clipping, checkpoints and exact resume, one JSON metrics line per step.

use super::checkpoint::{load_checkpoint, save_checkpoint};
use super::config::{Config, KeySpec, Kind};
use super::data::{micro_batches, sft_examples, Example, MicroBatch, Overlong};
use crate::backend::cpu::Cpu;
use crate::cli::resolve_device;
use crate::data::chat::ChatTemplate;
use crate::data::jsonl::read_objects;
use crate::data::tokenizer::Tokenizer;
use crate::loss::sft::masked_ce_with_count;
use crate::model::activations::default_chunk;
use crate::model::checkpoint::{write_atomic, SaveDtype};
use crate::model::{Activations, Model};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, LrSchedule, ScheduleKind};
use crate::rollout::Stream;
use anyhow::{anyhow, bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const KEYS: &[KeySpec] = &[
    KeySpec { key: "model", kind: Kind::Str, default: None, help: "Hugging Face model folder to start from" },
    KeySpec { key: "data", kind: Kind::Str, default: None, help: "JSONL of {prompt, completion} or {messages}" },
    KeySpec { key: "output_dir", kind: Kind::Str, default: None, help: "run folder: metrics, checkpoints" },
    KeySpec { key: "chat", kind: Kind::Bool, default: Some("false"), help: "render prompts with the chat template" },
    KeySpec { key: "max_seq_len", kind: Kind::Int, default: Some("2048"), help: "longest example in tokens" },
    KeySpec {
        key: "overlong",
        kind: Kind::Str,
        default: Some("\"truncate\""),
        help: "truncate or skip longer examples",
    },
    KeySpec { key: "micro_batch_tokens", kind: Kind::Int, default: Some("4096"), help: "tokens per forward pass" },
    KeySpec { key: "tokens_per_step", kind: Kind::Int, default: Some("16384"), help: "tokens per optimizer step" },
    KeySpec { key: "epochs", kind: Kind::Int, default: Some("1"), help: "passes over the data" },
    KeySpec {
        key: "max_steps",
        kind: Kind::Int,
        default: Some("0"),
        help: "stop after this many steps (0: the epochs decide)",
    },
    KeySpec { key: "seed", kind: Kind::Int, default: Some("0"), help: "data order" },
    KeySpec {
        key: "save_every",
        kind: Kind::Int,
        default: Some("0"),
        help: "checkpoint every N steps (0: only at the end)",
    },
    KeySpec { key: "keep_last", kind: Kind::Int, default: Some("2"), help: "checkpoints kept (0: all)" },
    KeySpec {
        key: "save_dtype",
        kind: Kind::Str,
        default: Some("\"bf16\""),
        help: "bf16 or f32 weights in checkpoints",
    },
    KeySpec { key: "optim.lr", kind: Kind::Float, default: Some("1e-5"), help: "peak learning rate" },
    KeySpec { key: "optim.warmup_steps", kind: Kind::Int, default: Some("0"), help: "linear warm-up steps" },
    KeySpec { key: "optim.schedule", kind: Kind::Str, default: Some("\"cosine\""), help: "cosine, linear or constant" },
    KeySpec { key: "optim.min_lr_ratio", kind: Kind::Float, default: Some("0.1"), help: "final lr / peak lr" },
    KeySpec { key: "optim.weight_decay", kind: Kind::Float, default: Some("0.0"), help: "AdamW decay on matrices" },
    KeySpec { key: "optim.beta1", kind: Kind::Float, default: Some("0.9"), help: "AdamW β1" },
    KeySpec { key: "optim.beta2", kind: Kind::Float, default: Some("0.999"), help: "AdamW β2" },
    KeySpec { key: "optim.eps", kind: Kind::Float, default: Some("1e-8"), help: "AdamW ε" },
    KeySpec {
        key: "optim.max_grad_norm",
        kind: Kind::Float,
        default: Some("1.0"),
        help: "clip the global gradient norm (0: off)",
    },
];

fn positive(c: &Config, key: &str) -> Result<usize> {
    let v = c.int(key);
    if v <= 0 {
        bail!("key `{key}` must be positive, got {v}");
    }
    Ok(v as usize)
}

/// The examples of every step, over all epochs: each epoch a seeded
/// permutation, cut into steps of at least `tokens_per_step` tokens.
fn plan(examples: &[Example], epochs: usize, tokens_per_step: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut steps = Vec::new();
    for epoch in 0..epochs {
        let stream = Stream::new(seed, u64::MAX, epoch as u64);
        let mut order: Vec<usize> = (0..examples.len()).collect();
        for i in (1..order.len()).rev() {
            let j = (stream.uniform(i as u64) * (i + 1) as f64) as usize;
            order.swap(i, j.min(i));
        }
        let mut cur: Vec<usize> = Vec::new();
        let mut tokens = 0;
        for i in order {
            cur.push(i);
            tokens += examples[i].tokens.len();
            if tokens >= tokens_per_step {
                steps.push(std::mem::take(&mut cur));
                tokens = 0;
            }
        }
        if !cur.is_empty() {
            steps.push(cur);
        }
    }
    steps
}

/// Runs SFT; returns the run folder.
pub fn run(cfg: &Config, resume: Option<&Path>) -> Result<PathBuf> {
    resolve_device(crate::cli::Device::Auto)?;
    let be = Cpu;
    let model_dir = PathBuf::from(cfg.str("model"));
    let run_dir = PathBuf::from(cfg.str("output_dir"));
    let (mut model, _) = Model::load(&be, &model_dir)?;
    let tok = Tokenizer::load(&model_dir)?;
    let chat = if cfg.bool("chat") { Some(ChatTemplate::load(&model_dir)?) } else { None };
    let overlong = match cfg.str("overlong").as_str() {
        "truncate" => Overlong::Truncate,
        "skip" => Overlong::Skip,
        other => bail!("key `overlong`: `{other}` is not truncate or skip"),
    };
    let save_dtype = match cfg.str("save_dtype").as_str() {
        "bf16" => SaveDtype::BF16,
        "f32" => SaveDtype::F32,
        other => bail!("key `save_dtype`: `{other}` is not bf16 or f32"),
    };
    let max_len = positive(cfg, "max_seq_len")?;
    let lines = read_objects(Path::new(&cfg.str("data")))?;
    let eos = tok.eos_ids.first().copied();
    let (examples, stats) = sft_examples(&lines, &tok, chat.as_ref(), eos, max_len, overlong)?;
    if examples.is_empty() {
        bail!(
            "{}: no usable example ({} skipped as longer than max_seq_len {max_len})",
            cfg.str("data"),
            stats.skipped
        );
    }
    if let Some(&t) = examples.iter().flat_map(|e| &e.tokens).find(|&&t| t as usize >= model.cfg.vocab_size) {
        bail!("the tokenizer gave id {t}, outside the model's vocabulary ({})", model.cfg.vocab_size);
    }
    let mb_tokens = positive(cfg, "micro_batch_tokens")?.max(max_len);
    let mut steps =
        plan(&examples, positive(cfg, "epochs")?, positive(cfg, "tokens_per_step")?, cfg.int("seed") as u64);
    if cfg.int("max_steps") > 0 {
        steps.truncate(cfg.int("max_steps") as usize);
    }
    let total = steps.len() as u64;
    let sched = LrSchedule {
        kind: ScheduleKind::parse(&cfg.str("optim.schedule")).map_err(|e| anyhow!("key `optim.schedule`: {e}"))?,
        peak: cfg.float("optim.lr"),
        warmup_steps: cfg.int("optim.warmup_steps").max(0) as u64,
        total_steps: total,
        min_ratio: cfg.float("optim.min_lr_ratio"),
    };
    let oc = AdamWConfig {
        beta1: cfg.float("optim.beta1") as f32,
        beta2: cfg.float("optim.beta2") as f32,
        eps: cfg.float("optim.eps") as f32,
        weight_decay: cfg.float("optim.weight_decay") as f32,
    };
    let mut opt = AdamW::new(&be, &model.layout, oc);
    let mut start = 0u64;
    if let Some(dir) = resume {
        let state = load_checkpoint(dir, &mut model, &mut opt)?;
        start = state["step"].as_u64().ok_or_else(|| anyhow!("{}: trainer state has no step", dir.display()))?;
    }
    std::fs::create_dir_all(&run_dir).with_context(|| format!("{}: cannot create", run_dir.display()))?;
    write_atomic(&run_dir.join("run_config.json"), serde_json::to_string_pretty(&cfg.to_json())?.as_bytes())?;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join("metrics.jsonl"))
        .with_context(|| format!("{}: cannot open metrics.jsonl", run_dir.display()))?;
    eprintln!(
        "sft: {} examples ({} truncated, {} skipped), {total} steps, {} parameters",
        stats.examples, stats.truncated, stats.skipped, model.layout.total
    );

    let mut acts = Activations::new(&be, &model.cfg, mb_tokens, default_chunk(&model.cfg, mb_tokens), true);
    let mut grads = model.zero_grads(&be);
    let save_every = cfg.int("save_every").max(0) as u64;
    let keep_last = cfg.int("keep_last").max(0) as usize;
    let clock = std::time::Instant::now();
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("sft {bar:40} step {pos}/{len} {msg} eta {eta}")
            .expect("static template"),
    );
    bar.set_position(start);
    for step in start..total {
        let t0 = std::time::Instant::now();
        let chosen: Vec<&Example> = steps[step as usize].iter().map(|&i| &examples[i]).collect();
        let mbs: Vec<MicroBatch> = micro_batches(&chosen, mb_tokens).iter().map(|mb| MicroBatch::pack(mb)).collect();
        let step_tokens: usize = mbs.iter().map(MicroBatch::loss_tokens).sum();
        grads.fill(0.0);
        let mut loss = 0.0;
        for mb in &mbs {
            model.forward(&be, &mut acts, &mb.batch)?;
            model.head_fwd(&be, &mut acts, &mb.targets, 1.0, false);
            let (l, coef) = masked_ce_with_count(&acts.head.read_logp(&be, mb.batch.len()), &mb.targets, step_tokens);
            loss += l;
            model.backward(&be, &mut acts, &coef.into(), 1.0, &mut grads);
        }
        let grad_norm = clip_grad_norm(&be, &mut grads, cfg.float("optim.max_grad_norm"));
        if !loss.is_finite() || !grad_norm.is_finite() {
            bail!("step {}: the loss or the gradient is not finite (loss {loss}, grad norm {grad_norm}); the last checkpoint is kept", step + 1);
        }
        let lr = sched.lr(step);
        let layout = model.layout.clone();
        opt.step(&be, &layout, &mut model.params, &grads, lr as f32);
        let secs = t0.elapsed().as_secs_f64();
        let tokens: usize = mbs.iter().map(|m| m.batch.len()).sum();
        let line = serde_json::json!({
            "step": step + 1, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": tokens,
            "loss_tokens": step_tokens, "tokens_per_s": tokens as f64 / secs, "elapsed_s": clock.elapsed().as_secs_f64(),
        });
        writeln!(metrics, "{line}").with_context(|| format!("{}: cannot write metrics", run_dir.display()))?;
        bar.set_message(format!("loss {loss:.4}"));
        bar.inc(1);
        let done = step + 1;
        if done == total || (save_every > 0 && done % save_every == 0) {
            let state = serde_json::json!({ "trainer": "sft", "total_steps": total });
            save_checkpoint(&run_dir, &model_dir, &model, &opt, &state, done, save_dtype, keep_last)?;
        }
    }
    bar.finish_and_clear();
    Ok(run_dir)
}
