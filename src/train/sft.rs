//! `engine train sft`: supervised fine-tuning on prompt / completion data,
//! the prompt masked from the loss, token-mean cross-entropy over each
//! optimizer step (DESIGN.md §4.8).

use super::common::{completion_examples, head_chunk, keys, plan_steps, positive, sft_accumulate, zero, Loop, Setup};
use super::config::{Config, KeySpec, Kind};
use super::data::{micro_batches, Example, MicroBatch};
use crate::backend::Backend;
use crate::model::Activations;
use anyhow::Result;
use std::path::{Path, PathBuf};

const OWN_KEYS: &[KeySpec] =
    &[KeySpec { key: "tokens_per_step", kind: Kind::Int, default: Some("16384"), help: "tokens per optimizer step" }];

pub fn config_keys() -> Vec<KeySpec> {
    keys(OWN_KEYS)
}

/// Runs SFT on backend `be`; returns the run folder.
pub fn run<B: Backend>(be: &B, cfg: &Config, resume: Option<&Path>) -> Result<PathBuf> {
    let mut setup = Setup::load(be, cfg)?;
    let (examples, stats) = completion_examples(cfg, &setup, false)?;
    let mb_tokens = positive(cfg, "micro_batch_tokens")?.max(setup.max_len);
    let steps = plan_steps(cfg, examples.len(), positive(cfg, "tokens_per_step")?, |i| examples[i].tokens.len())?;
    let mut lp = Loop::start(be, "sft", cfg, &mut setup, steps.len() as u64, resume)?;
    let model = &mut setup.model;
    eprintln!(
        "sft: {} examples ({} truncated, {} skipped), {} steps, {} parameters",
        stats.examples, stats.truncated, stats.skipped, lp.total, model.layout.total
    );
    let mut acts = Activations::new(be, &model.cfg, mb_tokens, head_chunk(be, cfg, &model.cfg, mb_tokens)?, true);
    let mut grads = model.zero_grads(be);
    let bar = indicatif::ProgressBar::new(lp.total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("sft {bar:40} step {pos}/{len} {msg} eta {eta}")
            .expect("static template"),
    );
    bar.set_position(lp.start);
    for step in lp.start..lp.total {
        let chosen: Vec<&Example> = steps[step as usize].iter().map(|&i| &examples[i]).collect();
        let mbs: Vec<MicroBatch> = micro_batches(&chosen, mb_tokens).iter().map(|mb| MicroBatch::pack(mb)).collect();
        let step_tokens: usize = mbs.iter().map(MicroBatch::loss_tokens).sum();
        zero(be, &mut grads);
        let loss = sft_accumulate(be, model, &mut acts, &mbs, &mut grads)?;
        let (lr, grad_norm) = lp.update(be, model, &mut grads, step, loss)?;
        let tokens: usize = mbs.iter().map(|m| m.batch.len()).sum();
        let line = serde_json::json!({
            "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": tokens, "loss_tokens": step_tokens,
        });
        if lp.end_step(be, model, &setup.tok, step, line)? {
            break;
        }
        bar.set_message(format!("loss {loss:.4}"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    lp.finish()
}
