//! `engine train distill`: the student learns the teacher's distribution on
//! the completion tokens of the data (DESIGN.md §4.6): forward KL, reverse
//! KL or JSD(β) at temperature T, token-mean over each step. The teacher
//! (same tokenizer, same vocabulary) runs a forward on each micro-batch, and
//! the fused one-pass head computes the divergence and the student's logit
//! gradient chunk by chunk, with the teacher's logits beside the student's.
//! On-policy (GKD, Agarwal et al. 2024): with probability
//! `distill.on_policy_fraction` (λ) an example's completion is replaced by
//! the student's own sample from its prompt, drawn with the rollout engine
//! at the start of the step; `{"prompt"}` lines without a completion are
//! always sampled.

use super::common::{completion_examples, head_chunk, keys, plan_steps, positive, zero, Loop, Setup};
use super::config::{Config, KeySpec, Kind};
use super::data::{micro_batches, Example, MicroBatch};
use crate::backend::{Backend, IGNORE};
use crate::data::tokenizer::Tokenizer;
use crate::loss::DistillMode;
use crate::model::head::{self, Teacher};
use crate::model::{Activations, Model};
use crate::rollout::{GenerateConfig, Generator, SamplingParams, Stream};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

const OWN_KEYS: &[KeySpec] = &[
    KeySpec { key: "teacher", kind: Kind::Str, default: None, help: "teacher model folder (same tokenizer)" },
    KeySpec { key: "tokens_per_step", kind: Kind::Int, default: Some("16384"), help: "tokens per optimizer step" },
    KeySpec { key: "distill.mode", kind: Kind::Str, default: Some("\"forward\""), help: "forward, reverse or jsd" },
    KeySpec {
        key: "distill.beta",
        kind: Kind::Float,
        default: Some("0.5"),
        help: "JSD mixing β (0: forward KL, 1: reverse)",
    },
    KeySpec {
        key: "distill.on_policy_fraction",
        kind: Kind::Float,
        default: Some("0.0"),
        help: "share of examples whose completion the student samples (GKD's λ)",
    },
    KeySpec { key: "distill.max_new_tokens", kind: Kind::Int, default: Some("512"), help: "longest on-policy sample" },
    KeySpec {
        key: "distill.sample_temperature",
        kind: Kind::Float,
        default: Some("1.0"),
        help: "temperature of the student's samples",
    },
    KeySpec {
        key: "distill.temperature",
        kind: Kind::Float,
        default: Some("1.0"),
        help: "softmax temperature of both models",
    },
];

pub fn config_keys() -> Vec<KeySpec> {
    keys(OWN_KEYS)
}

/// The teacher must share the student's tokenizer and vocabulary.
fn check_teacher<B: Backend>(student: &Setup<B>, teacher: &Model<B>, dir: &Path) -> Result<()> {
    let (vs, vt) = (student.model.cfg.vocab_size, teacher.cfg.vocab_size);
    if vs != vt {
        bail!("teacher {}: vocabulary of {vt} tokens, the student's has {vs}", dir.display());
    }
    let tt = Tokenizer::load(dir)?;
    let (a, b) = (student.tok.vocab(), tt.vocab());
    if a != b {
        let first = a
            .iter()
            .zip(&b)
            .find(|(x, y)| x != y)
            .map(|(x, y)| format!(": id {} is `{}` for the student, `{}` for the teacher", x.0, x.1, y.1));
        bail!(
            "teacher {}: its tokenizer differs from the student's ({} vs {} tokens{})",
            dir.display(),
            b.len(),
            a.len(),
            first.unwrap_or_default()
        );
    }
    Ok(())
}

/// The student's own completions of the prompts of `examples[idx[k]]` for
/// each `k` in `own`, as examples (prompt, sample); a sample with no token
/// left under `max_len` is dropped from the loss by being empty.
#[allow(clippy::too_many_arguments)]
fn student_samples<B: Backend>(
    be: &B,
    model: &Model<B>,
    examples: &[Example],
    idx: &[usize],
    own: &[usize],
    max_new: usize,
    max_len: usize,
    sampling: SamplingParams,
    eos: &[u32],
    seed: u64,
    step: u64,
) -> Result<Vec<Example>> {
    if own.is_empty() {
        return Ok(vec![]);
    }
    let prompts: Vec<Vec<u32>> =
        own.iter().map(|&k| examples[idx[k]].tokens[..examples[idx[k]].n_prompt].to_vec()).collect();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(1);
    let cfg = GenerateConfig {
        n: 1,
        max_new_tokens: max_new.min(max_len.saturating_sub(longest)).max(1),
        sampling,
        seed: seed.wrapping_mul(0x9E37_79B9).wrapping_add(step),
        eos_ids: eos.to_vec(),
        ..Default::default()
    };
    let mut samples = Generator::new(be, model, cfg, longest)?.generate(&prompts, None, |_| {})?;
    samples.sort_by_key(|s| s.prompt_index);
    Ok(samples
        .into_iter()
        .map(|s| {
            let p = &prompts[s.prompt_index];
            Example { tokens: [p.as_slice(), &s.tokens].concat(), n_prompt: p.len() }
        })
        .collect())
}

pub fn run<B: Backend>(be: &B, cfg: &Config, resume: Option<&Path>) -> Result<PathBuf> {
    let mut setup = Setup::load(be, cfg)?;
    let teacher_dir = PathBuf::from(cfg.str("teacher"));
    let (teacher, _) = Model::load(be, &teacher_dir)?;
    check_teacher(&setup, &teacher, &teacher_dir)?;
    let mode = match cfg.str("distill.mode").as_str() {
        "forward" => DistillMode::Forward,
        "reverse" => DistillMode::Reverse,
        "jsd" => DistillMode::Jsd { beta: cfg.float("distill.beta") },
        other => bail!("key `distill.mode`: `{other}` is not forward, reverse or jsd"),
    };
    let t = cfg.float("distill.temperature") as f32;
    let (examples, stats) = completion_examples(cfg, &setup, true)?;
    let budget = positive(cfg, "micro_batch_tokens")?.max(setup.max_len);
    let steps = plan_steps(cfg, examples.len(), positive(cfg, "tokens_per_step")?, |i| examples[i].tokens.len())?;
    let mut lp = Loop::start(be, "distill", cfg, &mut setup, steps.len() as u64, resume)?;
    let eos = setup.eos();
    let model = &mut setup.model;
    eprintln!("distill: {} examples, {} steps, teacher {}", stats.examples, lp.total, teacher_dir.display());
    let chunk = head_chunk(be, cfg, &model.cfg, budget)?;
    let mut acts = Activations::new(be, &model.cfg, budget, chunk, true);
    // The teacher's logits go to teacher_logits (head::distill), never to its
    // arena's lm_head buffers: a one-row chunk, not another chunk × vocab.
    let mut tacts = Activations::new(be, &teacher.cfg, budget, 1, false);
    let mut teacher_logits = be.alloc(chunk * model.cfg.vocab_size);
    let mut grads = model.zero_grads(be);
    let lambda = cfg.float("distill.on_policy_fraction");
    if !(0.0..=1.0).contains(&lambda) {
        bail!("key `distill.on_policy_fraction` must be in [0, 1], got {lambda}");
    }
    let sampling = SamplingParams { temperature: cfg.float("distill.sample_temperature") as f32, ..Default::default() };
    let max_new = positive(cfg, "distill.max_new_tokens")?;
    let seed = cfg.int("seed") as u64;
    for step in lp.start..lp.total {
        // Which examples the student completes itself this step.
        let idx = &steps[step as usize];
        let own: Vec<usize> = (0..idx.len())
            .filter(|&k| {
                let e = &examples[idx[k]];
                e.n_prompt == e.tokens.len() || Stream::new(seed ^ 0x6B0, step, k as u64).uniform(0) < lambda
            })
            .collect();
        let sampled =
            student_samples(be, model, &examples, idx, &own, max_new, setup.max_len, sampling, &eos, seed, step)?;
        let mut sampled = sampled.iter();
        let chosen: Vec<&Example> = (0..idx.len())
            .map(|k| if own.contains(&k) { sampled.next().expect("one sample each") } else { &examples[idx[k]] })
            .collect();
        let mbs: Vec<MicroBatch> = micro_batches(&chosen, budget).iter().map(|mb| MicroBatch::pack(mb)).collect();
        let step_tokens: usize = mbs.iter().map(MicroBatch::loss_tokens).sum();
        zero(be, &mut grads);
        let mut loss = 0.0;
        for mb in &mbs {
            teacher.forward(be, &mut tacts, &mb.batch)?;
            model.forward(be, &mut acts, &mb.batch)?;
            let weight: Vec<f32> =
                mb.targets.iter().map(|&x| if x == IGNORE { 0.0 } else { 1.0 / step_tokens as f32 }).collect();
            let tw = B::view(&teacher.params, teacher.layout.lm_head);
            let th = Teacher::<B> { h: &tacts.h, w: tw, d: teacher.cfg.hidden_size };
            model.backward_with_head(be, &mut acts, &mut grads, |be, hb, s, h, w, dh, grads, dw| {
                loss += head::distill(be, hb, s, h, w, &th, &mut teacher_logits, mode, t, &weight, dh, grads, dw);
            });
        }
        let (lr, grad_norm) = lp.update(be, model, &mut grads, step, loss)?;
        let line = serde_json::json!({
            "loss": loss, "lr": lr, "grad_norm": grad_norm, "loss_tokens": step_tokens, "examples": idx.len(), "on_policy": own.len(),
            "tokens": mbs.iter().map(|m| m.batch.len()).sum::<usize>(),
        });
        if lp.end_step(be, model, &setup.tok, step, line)? {
            break;
        }
    }
    lp.finish()
}
