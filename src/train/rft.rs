//! `engine train rft`: rejection-sampling fine-tuning (STaR). Each round
//! samples `k` answers per `{"prompt", "answer"}` line with the current
//! model, keeps the ones the verifier accepts (optionally only the shortest
//! per prompt), and runs `steps_per_round` SFT steps on them. A resume
//! continues from the checkpoint's step; the kept set of its round is drawn
//! again with the resumed weights, so a resume is exact only at round
//! boundaries.

use super::common::{head_chunk, keys, plan, positive, sft_accumulate, zero, Loop, Setup};
use super::config::{Config, KeySpec, Kind};
use super::data::{micro_batches, Example, MicroBatch};
use crate::backend::Backend;
use crate::model::{Activations, Model};
use crate::reward::math_reward;
use crate::rollout::{GenerateConfig, Generator, Sample, SamplingParams};
use anyhow::Result;
use std::path::{Path, PathBuf};

const OWN_KEYS: &[KeySpec] = &[
    KeySpec { key: "tokens_per_step", kind: Kind::Int, default: Some("16384"), help: "tokens per optimizer step" },
    KeySpec { key: "rft.rounds", kind: Kind::Int, default: Some("2"), help: "sample–filter–train rounds" },
    KeySpec { key: "rft.samples", kind: Kind::Int, default: Some("4"), help: "answers sampled per prompt (k)" },
    KeySpec {
        key: "rft.steps_per_round",
        kind: Kind::Int,
        default: Some("8"),
        help: "SFT steps on each round's kept answers",
    },
    KeySpec { key: "rft.max_new_tokens", kind: Kind::Int, default: Some("512"), help: "longest sampled answer" },
    KeySpec { key: "rft.temperature", kind: Kind::Float, default: Some("1.0"), help: "sampling temperature" },
    KeySpec {
        key: "rft.keep_shortest",
        kind: Kind::Bool,
        default: Some("false"),
        help: "keep only the shortest correct answer per prompt",
    },
];

pub fn config_keys() -> Vec<KeySpec> {
    keys(OWN_KEYS)
}

/// How a round samples.
#[derive(Clone, Debug)]
pub struct RoundSampling {
    /// Answers per prompt.
    pub k: usize,
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub eos_ids: Vec<u32>,
    pub seed: u64,
}

/// The samples of round `round`: `k` per prompt, seeded by (seed, round).
pub fn round_samples<B: Backend>(
    be: &B,
    model: &Model<B>,
    prompts: &[Vec<u32>],
    r: &RoundSampling,
    round: u64,
) -> Result<Vec<Sample>> {
    let cfg = GenerateConfig {
        n: r.k,
        max_new_tokens: r.max_new_tokens,
        sampling: SamplingParams { temperature: r.temperature, ..Default::default() },
        seed: r.seed.wrapping_mul(0x9E37_79B9).wrapping_add(round),
        eos_ids: r.eos_ids.clone(),
        ..Default::default()
    };
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(1);
    Generator::new(be, model, cfg, longest)?.generate(prompts, None, |_| {})
}

pub fn run<B: Backend>(be: &B, cfg: &Config, resume: Option<&Path>) -> Result<PathBuf> {
    let mut setup = Setup::load(be, cfg)?;
    let (prompts, answers): (Vec<Vec<u32>>, Vec<String>) = setup.problems(&setup.lines)?.into_iter().unzip();
    let (rounds, per_round) = (positive(cfg, "rft.rounds")? as u64, positive(cfg, "rft.steps_per_round")? as u64);
    let mut lp = Loop::start(be, "rft", cfg, &mut setup, rounds * per_round, resume)?;
    let eos_ids = setup.eos();
    let model = &mut setup.model;
    let seed = cfg.int("seed") as u64;
    let sampling = RoundSampling {
        k: positive(cfg, "rft.samples")?,
        max_new_tokens: positive(cfg, "rft.max_new_tokens")?,
        temperature: cfg.float("rft.temperature") as f32,
        eos_ids,
        seed,
    };
    let budget = positive(cfg, "micro_batch_tokens")?.max(setup.max_len);
    let mut acts = Activations::new(be, &model.cfg, budget, head_chunk(be, cfg, &model.cfg, budget)?, true);
    let mut grads = model.zero_grads(be);
    let mut step = lp.start;
    while step < lp.total {
        let round = step / per_round;
        let samples = round_samples(be, model, &prompts, &sampling, round)?;
        // Verified-correct answers, prompt + answer, answer-only loss.
        let mut kept: Vec<Example> = Vec::new();
        for p in 0..prompts.len() {
            let mut ok: Vec<&Sample> = samples
                .iter()
                .filter(|s| {
                    s.prompt_index == p
                        && math_reward(&setup.tok.decode(&s.tokens, true).unwrap_or_default(), &answers[p]) > 0.0
                })
                .collect();
            if cfg.bool("rft.keep_shortest") {
                ok.sort_by_key(|s| s.tokens.len());
                ok.truncate(1);
            }
            kept.extend(
                ok.into_iter().map(|s| Example {
                    tokens: [prompts[p].as_slice(), &s.tokens].concat(),
                    n_prompt: prompts[p].len(),
                }),
            );
        }
        let steps = if kept.is_empty() {
            vec![]
        } else {
            let mut s = plan(
                kept.len(),
                per_round as usize,
                positive(cfg, "tokens_per_step")?,
                seed.wrapping_add(round),
                |i| kept[i].tokens.len(),
            );
            s.truncate(per_round as usize);
            s
        };
        let round_end = (round + 1) * per_round;
        for (i, step_idx) in (step..round_end).enumerate() {
            let base = serde_json::json!({ "round": round + 1, "sampled": samples.len(), "kept": kept.len() });
            let Some(chosen) = steps.get(i) else {
                // Nothing (more) to learn from this round: record the step, no update.
                if lp.end_step(be, model, &setup.tok, step_idx, base)? {
                    return lp.finish();
                }
                continue;
            };
            let ex: Vec<&Example> = chosen.iter().map(|&j| &kept[j]).collect();
            let mbs: Vec<MicroBatch> = micro_batches(&ex, budget).iter().map(|mb| MicroBatch::pack(mb)).collect();
            zero(be, &mut grads);
            let loss = sft_accumulate(be, model, &mut acts, &mbs, &mut grads)?;
            let (lr, grad_norm) = lp.update(be, model, &mut grads, step_idx, loss)?;
            let mut line = base;
            line["loss"] = loss.into();
            line["lr"] = lr.into();
            line["grad_norm"] = grad_norm.into();
            if lp.end_step(be, model, &setup.tok, step_idx, line)? {
                return lp.finish();
            }
        }
        step = round_end;
    }
    lp.finish()
}
