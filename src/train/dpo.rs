//! `engine train dpo`: direct preference optimisation on
//! `{"prompt", "chosen", "rejected"}` lines (DESIGN.md §4.7). The reference
//! policy is the starting model: its log-probabilities are computed once,
//! before the first update (and from the starting weights on a resume).

use super::common::{head_chunk, keys, plan_steps, positive, token_logps, zero, Loop, Setup};
use super::config::{Config, KeySpec, Kind};
use super::data::{Example, MicroBatch};
use crate::backend::{Backend, Span};
use crate::data::chat::Message;
use crate::loss::{DpoConfig, DpoLossType, DpoStats};
use crate::model::head::Coefs;
use crate::model::Activations;
use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

const OWN_KEYS: &[KeySpec] = &[
    KeySpec { key: "pairs_per_step", kind: Kind::Int, default: Some("8"), help: "preference pairs per optimizer step" },
    KeySpec { key: "dpo.beta", kind: Kind::Float, default: Some("0.1"), help: "β of the DPO loss" },
    KeySpec { key: "dpo.loss_type", kind: Kind::Str, default: Some("\"sigmoid\""), help: "sigmoid or ipo" },
    KeySpec {
        key: "dpo.label_smoothing",
        kind: Kind::Float,
        default: Some("0.0"),
        help: "robust DPO's ε (sigmoid only)",
    },
];

pub fn config_keys() -> Vec<KeySpec> {
    keys(OWN_KEYS)
}

/// A preference pair: both sequences share the prompt.
struct Pair {
    chosen: Example,
    rejected: Example,
}

fn pairs<B: Backend>(setup: &Setup<B>) -> Result<(Vec<Pair>, usize)> {
    let eos = setup.tok.eos_ids.first().copied();
    let (mut out, mut skipped) = (Vec::new(), 0);
    for line in &setup.lines {
        let at = &line.at;
        let field = |k: &str| match line.fields.get(k) {
            Some(Value::String(s)) => Ok(s.as_str()),
            _ => Err(anyhow!("{at}: expected a string \"{k}\" (DPO lines are {{prompt, chosen, rejected}})")),
        };
        let (prompt, chosen, rejected) = (field("prompt")?, field("chosen")?, field("rejected")?);
        let prompt_ids = match &setup.chat {
            Some(chat) => {
                let text = chat
                    .render(&[Message { role: "user".into(), content: prompt.into() }], true)
                    .map_err(|e| anyhow!("{at}: {e}"))?;
                setup.tok.encode(&text, false)?
            }
            None => setup.tok.encode(prompt, true)?,
        };
        let seq = |completion: &str| -> Result<Example> {
            let mut tokens = prompt_ids.clone();
            tokens.extend(setup.tok.encode(completion, false)?);
            tokens.extend(eos);
            Ok(Example { tokens, n_prompt: prompt_ids.len() })
        };
        let (mut c, mut r) = (seq(chosen)?, seq(rejected)?);
        // Both responses must keep at least one token after truncation.
        if c.n_prompt + 1 >= setup.max_len {
            skipped += 1;
            continue;
        }
        if c.tokens.len() > setup.max_len || r.tokens.len() > setup.max_len {
            if setup.overlong == super::data::Overlong::Skip {
                skipped += 1;
                continue;
            }
            c.tokens.truncate(setup.max_len);
            r.tokens.truncate(setup.max_len);
        }
        out.push(Pair { chosen: c, rejected: r });
    }
    Ok((out, skipped))
}

/// Pairs `idx` packed in order (chosen, rejected, chosen, …).
fn pack(all: &[Pair], idx: &[usize]) -> MicroBatch {
    let seqs: Vec<&Example> = idx.iter().flat_map(|&i| [&all[i].chosen, &all[i].rejected]).collect();
    MicroBatch::pack(&seqs)
}

/// Groups pair indices into micro-batches of at most `budget` tokens.
fn groups(all: &[Pair], idx: &[usize], budget: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut tokens = 0;
    for &i in idx {
        let n = all[i].chosen.tokens.len() + all[i].rejected.tokens.len();
        if out.last().is_none_or(|g| !g.is_empty() && tokens + n > budget) {
            out.push(Vec::new());
            tokens = 0;
        }
        out.last_mut().unwrap().push(i);
        tokens += n;
    }
    out
}

pub fn run<B: Backend>(be: &B, cfg: &Config, resume: Option<&Path>) -> Result<PathBuf> {
    let mut setup = Setup::load(be, cfg)?;
    let dpo = DpoConfig {
        loss_type: match cfg.str("dpo.loss_type").as_str() {
            "sigmoid" => DpoLossType::Sigmoid,
            "ipo" => DpoLossType::Ipo,
            other => bail!("key `dpo.loss_type`: `{other}` is not sigmoid or ipo"),
        },
        beta: cfg.float("dpo.beta"),
        label_smoothing: cfg.float("dpo.label_smoothing"),
    };
    let (all, skipped) = pairs(&setup)?;
    if all.is_empty() {
        bail!("{}: no usable pair ({skipped} skipped)", cfg.str("data"));
    }
    setup.check_vocab(all.iter().flat_map(|p| p.chosen.tokens.iter().chain(&p.rejected.tokens)))?;
    let budget = positive(cfg, "micro_batch_tokens")?.max(2 * setup.max_len);
    let mut acts = Activations::new(be, &setup.model.cfg, budget, head_chunk(be, cfg, &setup.model.cfg, budget)?, true);
    // A micro-batch's reference log-probs, on the backend beside its log-probs.
    let mut ref_dev = be.alloc_f32(budget);

    // The reference: the starting model's log-probs, once, per pair.
    let mut reference: Vec<Vec<f32>> = Vec::with_capacity(all.len());
    let every: Vec<usize> = (0..all.len()).collect();
    for g in groups(&all, &every, budget) {
        let mb = pack(&all, &g);
        let lp = token_logps(be, &setup.model, &mut acts, &mb, 1.0, false)?.0;
        for s in 0..g.len() {
            let (c, r) = (mb.batch.seq(2 * s), mb.batch.seq(2 * s + 1));
            reference.push([&lp[c], &lp[r]].concat());
        }
    }

    let steps = plan_steps(cfg, all.len(), positive(cfg, "pairs_per_step")?, |_| 1)?;
    let mut lp = Loop::start(be, "dpo", cfg, &mut setup, steps.len() as u64, resume)?;
    let model = &mut setup.model;
    eprintln!("dpo: {} pairs ({skipped} skipped), {} steps", all.len(), lp.total);
    let mut grads = model.zero_grads(be);
    for step in lp.start..lp.total {
        let idx = &steps[step as usize];
        zero(be, &mut grads);
        let (mut loss, mut stats, mut tokens) = (0.0, DpoStats::default(), 0usize);
        for g in groups(&all, idx, budget) {
            let mb = pack(&all, &g);
            tokens += mb.batch.len();
            model.forward(be, &mut acts, &mb.batch)?;
            model.head_fwd(be, &mut acts, &mb.targets, 1.0, false);
            let n = mb.batch.len();
            let ref_logp: Vec<f32> = g.iter().flat_map(|&i| reference[i].iter().copied()).collect();
            let span = Span::new(0, n);
            be.write(&ref_logp, B::view_mut(&mut ref_dev, span));
            let mask: Vec<bool> = mb.targets.iter().map(|&t| t != crate::backend::IGNORE).collect();
            // The coefficients land in the head buffers (on the device on a GPU).
            let (l, st) = be.dpo_loss(
                &dpo,
                B::view(&acts.head.logp, span),
                B::view(&ref_dev, span),
                &mask,
                &mb.batch.cu_seqlens,
                idx.len(),
                B::view_mut(&mut acts.head.coef, span),
            );
            loss += l;
            stats.merge(&st);
            model.backward_from(be, &mut acts, Coefs::InBuffers { entropy: false }, 1.0, &mut grads);
        }
        let (lr, grad_norm) = lp.update(be, model, &mut grads, step, loss)?;
        let (chosen, rejected, accuracy, margin) = stats.finish();
        let line = serde_json::json!({
            "loss": loss, "lr": lr, "grad_norm": grad_norm, "reward_chosen": chosen, "reward_rejected": rejected,
            "reward_accuracy": accuracy, "reward_margin": margin, "tokens": tokens,
        });
        if lp.end_step(be, model, &setup.tok, step, line)? {
            break;
        }
    }
    lp.finish()
}
