//! `engine train grpo`: GRPO-family RL with verifiable rewards on
//! `{"prompt", "answer"}` lines. Per step: sample prompts, `G` rollouts each
//! with the rollout engine (same weights, same kernels), rewards (math
//! verifier, format, DAPO overlong shaping, a length penalty, a custom
//! command; weights configurable),
//! group advantages (DESIGN.md §4.5), optional dynamic sampling (groups with
//! equal rewards dropped), old log-probs from the trainer's own forward
//! (DESIGN.md §4), then μ epochs over mini-batches with the configured policy
//! loss, KL penalty and entropy bonus. Each step's rollouts are appended to
//! `rollouts.jsonl` in the run folder.

use super::common::{head_chunk, keys, plan_steps, positive, token_logps, zero, Loop, Setup};
use super::config::{Config, KeySpec, Kind};
use super::data::{Example, MicroBatch};
use crate::backend::IGNORE;
use crate::backend::{Backend, PolicyInputs, Span};
use crate::loss::advantages::{grpo_advantages, ScaleRewards};
use crate::loss::{Aggregation, KlKind, KlPenalty, PolicyConfig, PolicyKind, PolicyStats, StepCounts};
use crate::model::head::{self, Coefs, HeadBuffers};
use crate::model::{Activations, Model};
use crate::reward::command::CommandReward;
use crate::reward::shaping::length_penalty;
use crate::reward::{format_reward, math_reward, overlong_penalty};
use crate::rollout::{GenerateConfig, Generator, SamplingParams};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

const OWN_KEYS: &[KeySpec] = &[
    KeySpec { key: "grpo.prompts_per_step", kind: Kind::Int, default: Some("16"), help: "prompts sampled per step" },
    KeySpec { key: "grpo.group_size", kind: Kind::Int, default: Some("8"), help: "rollouts per prompt (G)" },
    KeySpec { key: "grpo.max_new_tokens", kind: Kind::Int, default: Some("512"), help: "longest response" },
    KeySpec {
        key: "grpo.temperature",
        kind: Kind::Float,
        default: Some("1.0"),
        help: "sampling and training temperature",
    },
    KeySpec { key: "grpo.top_p", kind: Kind::Float, default: Some("1.0"), help: "nucleus sampling" },
    KeySpec {
        key: "grpo.cuda_graphs",
        kind: Kind::Bool,
        default: Some("false"),
        help: "replay rollout decode steps as CUDA graphs (not yet measured on a GPU)",
    },
    KeySpec { key: "grpo.loss", kind: Kind::Str, default: Some("\"gppo\""), help: "ppo, gppo, cispo or gspo" },
    KeySpec { key: "grpo.eps_low", kind: Kind::Float, default: Some("0.2"), help: "lower clip ε" },
    KeySpec {
        key: "grpo.eps_high", kind: Kind::Float, default: Some("0.28"), help: "upper clip ε (DAPO clip-higher)"
    },
    KeySpec { key: "grpo.dual_clip", kind: Kind::Float, default: Some("10.0"), help: "dual clip c (0: off)" },
    KeySpec { key: "grpo.gppo_beta1", kind: Kind::Float, default: Some("1.0"), help: "GPPO β1" },
    KeySpec { key: "grpo.gppo_beta2", kind: Kind::Float, default: Some("1.0"), help: "GPPO β2" },
    KeySpec { key: "grpo.cispo_cap", kind: Kind::Float, default: Some("5.0"), help: "CISPO cap on the ratio" },
    KeySpec {
        key: "grpo.agg",
        kind: Kind::Str,
        default: Some("\"token-mean\""),
        help: "loss aggregation (DESIGN.md §4.4)",
    },
    KeySpec { key: "grpo.scale_rewards", kind: Kind::Str, default: Some("\"group\""), help: "group, batch or none" },
    KeySpec {
        key: "grpo.kl_coef",
        kind: Kind::Float,
        default: Some("0.0"),
        help: "KL penalty to the starting model (0: off)",
    },
    KeySpec { key: "grpo.kl_kind", kind: Kind::Str, default: Some("\"k3\""), help: "k1, k2, k3 or k3+" },
    KeySpec { key: "grpo.entropy_coef", kind: Kind::Float, default: Some("0.0"), help: "entropy bonus" },
    KeySpec {
        key: "grpo.positive_nll_coef",
        kind: Kind::Float,
        default: Some("0.0"),
        help: "GPPO's NLL term on correct responses",
    },
    KeySpec { key: "grpo.epochs", kind: Kind::Int, default: Some("1"), help: "passes (μ) over each step's rollouts" },
    KeySpec { key: "grpo.mini_batches", kind: Kind::Int, default: Some("1"), help: "optimizer updates per pass" },
    KeySpec {
        key: "grpo.recompute_old_logp",
        kind: Kind::Bool,
        default: Some("false"),
        help: "a forward for the old log-probs even on-policy (one epoch, one mini-batch), where the update's own are theirs",
    },
    KeySpec {
        key: "grpo.dynamic_sampling",
        kind: Kind::Bool,
        default: Some("false"),
        help: "drop groups whose rewards are all equal",
    },
    KeySpec { key: "reward.math", kind: Kind::Float, default: Some("1.0"), help: "weight of the answer verifier" },
    KeySpec {
        key: "reward.format",
        kind: Kind::Float,
        default: Some("0.0"),
        help: "weight of the <think>…</think> format reward",
    },
    KeySpec {
        key: "reward.overlong_buffer",
        kind: Kind::Int,
        default: Some("0"),
        help: "DAPO overlong shaping buffer (0: off)",
    },
    KeySpec {
        key: "reward.overlong_penalty",
        kind: Kind::Float,
        default: Some("1.0"),
        help: "DAPO overlong penalty factor",
    },
    KeySpec {
        key: "reward.length_target",
        kind: Kind::Int,
        default: Some("0"),
        help: "length penalty past this many tokens (0: off)",
    },
    KeySpec {
        key: "reward.length_coef",
        kind: Kind::Float,
        default: Some("0.0"),
        help: "length penalty per target length",
    },
    KeySpec {
        key: "reward.command",
        kind: Kind::Str,
        default: Some("\"\""),
        help: "custom reward program (run by sh -c): JSON lines in, one number per line out (\"\": none)",
    },
    KeySpec { key: "reward.command_weight", kind: Kind::Float, default: Some("1.0"), help: "weight of its reward" },
    KeySpec {
        key: "reward.command_timeout_s",
        kind: Kind::Float,
        default: Some("600"),
        help: "time limit of one call, for a step's rollouts",
    },
];

pub fn config_keys() -> Vec<KeySpec> {
    keys(OWN_KEYS)
}

fn policy_config(cfg: &Config) -> Result<PolicyConfig> {
    let (el, eh) = (cfg.float("grpo.eps_low"), cfg.float("grpo.eps_high"));
    let dual = Some(cfg.float("grpo.dual_clip")).filter(|&c| c > 0.0);
    let kind = match cfg.str("grpo.loss").as_str() {
        "ppo" => PolicyKind::Ppo { eps_low: el, eps_high: eh, dual_clip: dual },
        "gppo" => PolicyKind::Gppo {
            eps_low: el,
            eps_high: eh,
            dual_clip: dual,
            beta1: cfg.float("grpo.gppo_beta1"),
            beta2: cfg.float("grpo.gppo_beta2"),
        },
        "cispo" => PolicyKind::Cispo { floor: None, cap: cfg.float("grpo.cispo_cap") },
        "gspo" => PolicyKind::Gspo { eps_low: el, eps_high: eh },
        other => bail!("key `grpo.loss`: `{other}` is not ppo, gppo, cispo or gspo"),
    };
    let mut p = PolicyConfig::new(kind);
    p.agg = Aggregation::parse(&cfg.str("grpo.agg"), Some(cfg.int("grpo.max_new_tokens").max(1) as usize))
        .map_err(|e| anyhow!("key `grpo.agg`: {e}"))?;
    let kl = cfg.float("grpo.kl_coef");
    if kl != 0.0 {
        p.kl = Some(KlPenalty {
            kind: KlKind::parse(&cfg.str("grpo.kl_kind")).map_err(|e| anyhow!("key `grpo.kl_kind`: {e}"))?,
            coef: kl,
        });
    }
    p.entropy_coef = cfg.float("grpo.entropy_coef");
    p.positive_nll_coef = cfg.float("grpo.positive_nll_coef");
    Ok(p)
}

/// One rollout ready for training.
struct Rollout {
    seq: Example,
    sampler_logp: Vec<f32>,
    reward: f32,
    correct: bool,
    advantage: f32,
}

pub fn run<B: Backend>(be: &B, cfg: &Config, resume: Option<&Path>) -> Result<PathBuf> {
    let mut setup = Setup::load(be, cfg)?;
    let pcfg = policy_config(cfg)?;
    let scale = match cfg.str("grpo.scale_rewards").as_str() {
        "group" => ScaleRewards::Group,
        "batch" => ScaleRewards::Batch,
        "none" => ScaleRewards::None,
        other => bail!("key `grpo.scale_rewards`: `{other}` is not group, batch or none"),
    };
    let prompts = setup.problems(&setup.lines)?;
    let g = positive(cfg, "grpo.group_size")?;
    let max_new = positive(cfg, "grpo.max_new_tokens")?;
    let t = cfg.float("grpo.temperature") as f32;
    if t <= 0.0 {
        bail!("key `grpo.temperature` must be positive for RL, got {t}");
    }
    let steps = plan_steps(cfg, prompts.len(), positive(cfg, "grpo.prompts_per_step")?, |_| 1)?;
    // The KL reference is the starting model, kept only when it is used.
    let reference = pcfg.kl.map(|_| {
        let all = Span::new(0, setup.model.layout.total);
        Model::<B>::from_host(be, setup.model.cfg.clone(), be.read(B::view(&setup.model.params, all)))
    });
    let mut lp = Loop::start(be, "grpo", cfg, &mut setup, steps.len() as u64, resume)?;
    let eos = setup.eos();
    let model = &mut setup.model;
    let tok = &setup.tok;
    let longest = prompts.iter().map(|(p, _)| p.len()).max().unwrap_or(1) + max_new;
    let budget = positive(cfg, "micro_batch_tokens")?.max(longest);
    let mut acts = Activations::new(be, &model.cfg, budget, head_chunk(be, cfg, &model.cfg, budget)?, true);
    // The old, reference and sampler log-probs of a micro-batch, on the
    // backend beside phase 1's log-probs for the coefficient pass.
    let mut dev_logps: [B::Buf; 3] = std::array::from_fn(|_| be.alloc_f32(budget));
    let mut grads = model.zero_grads(be);
    let mut rollout_log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(lp.run_dir.join("rollouts.jsonl"))
        .with_context(|| format!("{}: cannot open rollouts.jsonl", lp.run_dir.display()))?;
    let (w_math, w_format) = (cfg.float("reward.math"), cfg.float("reward.format"));
    let (ol_buffer, ol_penalty) =
        (cfg.int("reward.overlong_buffer").max(0) as usize, cfg.float("reward.overlong_penalty"));
    let (len_target, len_coef) = (cfg.int("reward.length_target").max(0) as usize, cfg.float("reward.length_coef"));
    let command = Some(cfg.str("reward.command")).filter(|c| !c.trim().is_empty()).map(|c| CommandReward {
        program: "sh".into(),
        args: vec!["-c".into(), c],
        timeout: std::time::Duration::from_secs_f64(cfg.float("reward.command_timeout_s").max(0.0)),
    });
    let w_command = cfg.float("reward.command_weight");
    let (epochs, n_mini) = (positive(cfg, "grpo.epochs")?, positive(cfg, "grpo.mini_batches")?);
    let recompute_old = cfg.bool("grpo.recompute_old_logp");
    eprintln!("grpo: {} prompts, {} steps, G = {g}", prompts.len(), lp.total);

    for step in lp.start..lp.total {
        let t0 = std::time::Instant::now();
        let chosen: Vec<usize> = steps[step as usize].clone();
        let step_prompts: Vec<Vec<u32>> = chosen.iter().map(|&i| prompts[i].0.clone()).collect();
        let gen_cfg = GenerateConfig {
            n: g,
            max_new_tokens: max_new,
            sampling: SamplingParams { temperature: t, top_p: cfg.float("grpo.top_p") as f32, ..Default::default() },
            seed: (cfg.int("seed") as u64).wrapping_mul(1_000_003).wrapping_add(step),
            eos_ids: eos.clone(),
            graphs: cfg.bool("grpo.cuda_graphs"),
            ..Default::default()
        };
        let longest_prompt = step_prompts.iter().map(Vec::len).max().unwrap_or(1);
        let samples = Generator::new(be, model, gen_cfg, longest_prompt)?.generate(&step_prompts, None, |_| {})?;
        let rollout_s = t0.elapsed().as_secs_f64();

        // Rewards, then advantages per group.
        let mut rollouts: Vec<Rollout> = Vec::with_capacity(samples.len());
        let mut n_correct = 0usize;
        let texts: Vec<String> = samples.iter().map(|s| tok.decode(&s.tokens, true).unwrap_or_default()).collect();
        let custom = match &command {
            Some(c) => {
                let items: Vec<Value> = samples
                    .iter()
                    .zip(&texts)
                    .map(|(s, text)| {
                        let (prompt, answer) = &prompts[chosen[s.prompt_index]];
                        json!({"prompt": tok.decode(prompt, false).unwrap_or_default(), "response": text, "answer": answer})
                    })
                    .collect();
                c.score(&items).with_context(|| format!("step {}: reward.command", step + 1))?
            }
            None => vec![0.0; samples.len()],
        };
        for ((s, text), custom) in samples.iter().zip(texts).zip(custom) {
            let (prompt, answer) = &prompts[chosen[s.prompt_index]];
            let correct = math_reward(&text, answer) > 0.0;
            n_correct += correct as usize;
            let mut reward = w_math * correct as u8 as f64 + w_format * format_reward(&text);
            if ol_buffer > 0 {
                reward += overlong_penalty(s.tokens.len(), max_new, ol_buffer, ol_penalty);
            }
            reward += length_penalty(s.tokens.len(), len_target, len_coef) + w_command * custom;
            writeln!(rollout_log, "{}", json!({"step": step + 1, "prompt_index": chosen[s.prompt_index], "text": text, "reward": reward, "correct": correct}))
                .with_context(|| format!("{}: cannot write rollouts.jsonl", lp.run_dir.display()))?;
            let seq = Example { tokens: [prompt.as_slice(), &s.tokens].concat(), n_prompt: prompt.len() };
            rollouts.push(Rollout {
                seq,
                sampler_logp: s.logprobs.clone(),
                reward: reward as f32,
                correct,
                advantage: 0.0,
            });
        }
        let rewards: Vec<f32> = rollouts.iter().map(|r| r.reward).collect();
        let adv = grpo_advantages(&rewards, &vec![g; chosen.len()], scale);
        for (r, a) in rollouts.iter_mut().zip(adv) {
            r.advantage = a as f32;
        }
        let flat_groups = rewards.chunks(g).filter(|grp| grp.windows(2).all(|w| w[0] == w[1])).count();
        if cfg.bool("grpo.dynamic_sampling") {
            let keep: Vec<bool> = rewards
                .chunks(g)
                .flat_map(|grp| std::iter::repeat_n(!grp.windows(2).all(|w| w[0] == w[1]), g))
                .collect();
            let mut k = keep.iter();
            rollouts.retain(|_| *k.next().unwrap());
        }

        // Old log-probs (and the reference's) from the trainer's forward, before any update.
        let order: Vec<usize> = (0..rollouts.len()).collect();
        let seqs: Vec<&Example> = order.iter().map(|&i| &rollouts[i].seq).collect();
        let groups = super::data::micro_batches(&seqs, budget);
        let per_mini = groups.len().div_ceil(n_mini).max(1);
        // On-policy (one epoch, one mini-batch: every micro-batch's forward
        // runs on the weights before the step's only update): the old
        // log-probs are the update's own — the same deterministic forward on
        // the same micro-batch gives their bits — so it reads them as the
        // old ones (ratio 1) and skips a forward per micro-batch, as TRL and
        // verl do at μ = 1.
        let on_policy = epochs == 1 && per_mini >= groups.len() && !recompute_old;
        let mut old: Vec<Vec<f32>> = Vec::new();
        let mut refl: Vec<Vec<f32>> = Vec::new();
        if !on_policy || reference.is_some() {
            for grp in &groups {
                let mb = MicroBatch::pack(grp);
                if !on_policy {
                    old.push(token_logps(be, model, &mut acts, &mb, t, false)?.0);
                }
                if let Some(r) = &reference {
                    refl.push(token_logps(be, r, &mut acts, &mb, t, false)?.0);
                }
            }
        }

        // μ epochs × mini-batches (here: the micro-batch groups split evenly).
        let mut stats = PolicyStats::default();
        let (mut loss_sum, mut last_lr, mut last_norm) = (0.0, 0.0, 0.0);
        // Index of each micro-batch's first rollout (rollouts are in order).
        let starts: Vec<usize> =
            groups.iter().scan(0, |first, grp| Some(std::mem::replace(first, *first + grp.len()))).collect();
        let mut update = 0u64;
        for _ in 0..epochs {
            for mini in (0..groups.len()).collect::<Vec<_>>().chunks(per_mini) {
                let mbs: Vec<(usize, MicroBatch)> =
                    mini.iter().map(|&gi| (gi, MicroBatch::pack(&groups[gi]))).collect();
                let mut counts = StepCounts::default();
                let masks: Vec<Vec<bool>> =
                    mbs.iter().map(|(_, mb)| mb.targets.iter().map(|&x| x != IGNORE).collect()).collect();
                for ((_, mb), mask) in mbs.iter().zip(&masks) {
                    counts.add(mask, &mb.batch.cu_seqlens);
                }
                if counts.tokens == 0 {
                    continue;
                }
                let correct_tokens: usize = mbs
                    .iter()
                    .zip(&masks)
                    .map(|((gi, mb), mask)| {
                        (0..groups[*gi].len())
                            .filter(|&k| rollouts[starts[*gi] + k].correct)
                            .map(|k| mb.batch.seq(k).filter(|&t| mask[t]).count())
                            .sum::<usize>()
                    })
                    .sum();
                zero(be, &mut grads);
                let mut loss = 0.0;
                for ((gi, mb), mask) in mbs.iter().zip(&masks) {
                    let entropy = pcfg.entropy_coef != 0.0;
                    model.forward(be, &mut acts, &mb.batch)?;
                    let n = mb.batch.len();
                    let rs = &rollouts[starts[*gi]..starts[*gi] + groups[*gi].len()];
                    // The sampler's log-probs, placed at the positions that predict each response token.
                    let mut sampler = vec![0.0f32; n];
                    for (k, r) in rs.iter().enumerate() {
                        let s0 = mb.batch.seq(k).start + r.seq.n_prompt - 1;
                        sampler[s0..s0 + r.sampler_logp.len()].copy_from_slice(&r.sampler_logp);
                    }
                    let [old_d, ref_d, sampler_d] = &mut dev_logps;
                    let span = Span::new(0, n);
                    if !on_policy {
                        be.write(&old[*gi], B::view_mut(old_d, span));
                    }
                    be.write(&sampler, B::view_mut(sampler_d, span));
                    if let Some(r) = refl.get(*gi) {
                        be.write(r, B::view_mut(ref_d, span));
                    }
                    let adv: Vec<f32> = rs.iter().map(|r| r.advantage).collect();
                    let rew: Vec<f32> = rs.iter().map(|r| if r.correct { 1.0 } else { 0.0 }).collect();
                    // The coefficient pass over the micro-batch from the head
                    // buffers' log-probs (and entropies); the coefficients
                    // land in the head buffers, on the device on a GPU.
                    let (old_d, ref_d, sampler_d) = (&*old_d, &*ref_d, &*sampler_d);
                    let coefs = |be: &B, hb: &mut HeadBuffers<B>| {
                        let HeadBuffers { logp, entropy: ent, coef, ent_coef, .. } = hb;
                        let x = PolicyInputs::<B> {
                            logp: B::view(logp, span),
                            old_logp: B::view(if on_policy { &*logp } else { old_d }, span),
                            ref_logp: refl.get(*gi).map(|_| B::view(ref_d, span)),
                            sampler_logp: Some(B::view(sampler_d, span)),
                            entropy: entropy.then(|| B::view(ent, span)),
                            mask,
                            cu_seqlens: &mb.batch.cu_seqlens,
                            advantages: &adv,
                            rewards: &rew,
                        };
                        let ec = entropy.then(|| B::view_mut(ent_coef, span));
                        be.policy_loss(&pcfg, &x, &counts, correct_tokens, B::view_mut(coef, span), ec)
                    };
                    let (l, st) = if pcfg.token_local() && n > acts.head.chunk {
                        // Several logit chunks and token-local coefficients:
                        // each chunk's logits once (the coefficient pass after
                        // every chunk; its last call sees every token).
                        let mut last = None;
                        model.backward_with_head(be, &mut acts, &mut grads, |be, hb, s, h, w, dh, g, dw| {
                            let per_chunk = |be: &B, hb: &mut HeadBuffers<B>, _end: usize| last = Some(coefs(be, hb));
                            head::one_pass_with(be, hb, s, h, w, &mb.targets, t, entropy, per_chunk, dh, g, dw)
                        });
                        last.expect("a micro-batch has a chunk")
                    } else {
                        model.head_fwd(be, &mut acts, &mb.targets, t, entropy);
                        let out = coefs(be, &mut acts.head);
                        model.backward_from(be, &mut acts, Coefs::InBuffers { entropy }, t, &mut grads);
                        out
                    };
                    loss += l;
                    stats.merge(&st);
                }
                let (lr, norm) = lp.update(be, model, &mut grads, step, loss)?;
                (loss_sum, last_lr, last_norm) = (loss_sum + loss, lr, norm);
                update += 1;
            }
        }
        let n = rewards.len() as f64;
        let mean = rewards.iter().map(|&r| r as f64).sum::<f64>() / n;
        let std = (rewards.iter().map(|&r| (r as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        let m = stats.finish();
        let line = json!({
            "loss": loss_sum / update.max(1) as f64, "lr": last_lr, "grad_norm": last_norm,
            "reward_mean": mean, "reward_std": std,
            "accuracy": n_correct as f64 / n,
            "response_length": samples.iter().map(|s| s.tokens.len()).sum::<usize>() as f64 / n,
            "clip_frac_low": m.clip_frac_low, "clip_frac_high": m.clip_frac_high, "clip_frac_dual": m.clip_frac_dual,
            "ratio_mean": m.ratio_mean, "ppo_kl": m.ppo_kl, "kl": m.kl_mean, "entropy": m.entropy_mean,
            "sampler_abs_diff_mean": m.sampler_abs_diff_mean, "sampler_abs_diff_max": m.sampler_abs_diff_max,
            "groups_flat_frac": flat_groups as f64 / chosen.len() as f64, "updates": update,
            "tokens_generated": samples.iter().map(|s| s.tokens.len()).sum::<usize>(),
            "tokens_trained": rollouts.iter().map(|r| r.seq.tokens.len()).sum::<usize>(),
            "tokens": epochs * rollouts.iter().map(|r| r.seq.tokens.len()).sum::<usize>(),
            "rollout_s": rollout_s, "seconds": t0.elapsed().as_secs_f64(),
        });
        if lp.end_step(be, model, tok, step, line)? {
            break;
        }
    }
    lp.finish()
}
