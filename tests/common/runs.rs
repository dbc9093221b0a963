//! Small training runs on the fixture models that the CPU tests
//! (tests/train.rs) and the GPU tests (tests/cuda/train.rs) both make: their
//! data files and `--set` keys, defined once.

use super::fixtures;
use std::path::{Path, PathBuf};

/// Prompt / completion pairs of small sums (SFT, distillation).
pub fn sft_data(dir: &Path) -> PathBuf {
    let path = dir.join("sft.jsonl");
    let mut text = String::new();
    for a in 0..6 {
        for b in 0..6 {
            text.push_str(&format!("{{\"prompt\": \"What is {a} plus {b}?\", \"completion\": \" {}.\"}}\n", a + b));
        }
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// SFT on the qwen3 fixture: 6 steps of 150 tokens, a checkpoint every 3
/// (f32 weights), `keep_last` of them kept.
pub fn sft_sets(data: &Path, out: &Path, keep: usize) -> Vec<String> {
    vec![
        format!("model={}", fixtures().join("qwen3").display()),
        format!("data={}", data.display()),
        format!("output_dir={}", out.display()),
        "tokens_per_step=150".into(),
        "epochs=2".into(),
        "max_steps=6".into(),
        "save_every=3".into(),
        format!("keep_last={keep}"),
        "save_dtype=f32".into(),
        "optim.lr=3e-3".into(),
        "optim.warmup_steps=2".into(),
    ]
}

/// Preference pairs: the right sum is chosen, a wrong one rejected.
pub fn dpo_data(dir: &Path) -> PathBuf {
    let path = dir.join("dpo.jsonl");
    let mut text = String::new();
    for a in 0..5 {
        for b in 0..4 {
            let (c, r) = (a + b, a + b + 3);
            text.push_str(&format!(
                "{{\"prompt\": \"{a} plus {b} is\", \"chosen\": \" {c}.\", \"rejected\": \" {r}.\"}}\n"
            ));
        }
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// DPO on the qwen2 fixture: 12 steps of 5 pairs, β 0.5.
pub fn dpo_sets(data: &Path, out: &Path) -> Vec<String> {
    vec![
        format!("model={}", fixtures().join("qwen2").display()),
        format!("data={}", data.display()),
        format!("output_dir={}", out.display()),
        "pairs_per_step=5".into(),
        "epochs=3".into(),
        "dpo.beta=0.5".into(),
        "optim.lr=2e-3".into(),
        "optim.schedule=constant".into(),
    ]
}

/// Four `{prompt, answer}` problems of doubling.
pub fn rl_data(dir: &Path) -> PathBuf {
    let path = dir.join("rl.jsonl");
    let lines: String =
        (0..4).map(|i| format!("{{\"prompt\": \"What is {i} + {i}?\", \"answer\": \"{}\"}}\n", 2 * i)).collect();
    std::fs::write(&path, lines).unwrap();
    path
}

/// GRPO on the qwen3 fixture: 2 steps of 2 prompts × 4 samples, 2 epochs
/// of 2 mini-batches, KL penalty and entropy bonus.
pub fn grpo_sets(data: &Path, out: &Path) -> Vec<String> {
    vec![
        format!("model={}", fixtures().join("qwen3").display()),
        format!("data={}", data.display()),
        format!("output_dir={}", out.display()),
        "max_steps=2".into(),
        "grpo.prompts_per_step=2".into(),
        "grpo.group_size=4".into(),
        "grpo.max_new_tokens=8".into(),
        "grpo.kl_coef=0.1".into(),
        "grpo.entropy_coef=0.01".into(),
        "grpo.epochs=2".into(),
        "grpo.mini_batches=2".into(),
        "micro_batch_tokens=40".into(),
        "optim.lr=1e-3".into(),
    ]
}

/// The `metrics.jsonl` lines of a run folder.
pub fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `engine train rft` on the qwen3 fixture, on backend `be`: 6 prompts whose
/// reference answers are taken from the round's own samples (drawn here with
/// the trainer's seed; the rollout engine is deterministic, so they are the
/// trainer's), so that some samples verify. Writes the data under `dir`;
/// returns the trainer's `--set` keys (output in `out`) and how many samples
/// verify.
pub fn rft_setup<B: engine::backend::Backend>(be: &B, dir: &Path, out: &Path) -> (Vec<String>, usize) {
    use engine::reward::math::{extract_answer, math_reward};
    let model_dir = fixtures().join("qwen3");
    let tok = engine::data::tokenizer::Tokenizer::load(&model_dir).unwrap();
    let (model, _) = engine::model::Model::load(be, &model_dir).unwrap();
    let texts: Vec<String> = (0..6).map(|i| format!("Compute {i} times 7, then add 12.")).collect();
    let prompts: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t, true).unwrap()).collect();
    let mut eos = tok.eos_ids.clone();
    eos.retain(|&e| (e as usize) < model.cfg.vocab_size);
    let r = engine::train::rft::RoundSampling { k: 6, max_new_tokens: 24, temperature: 1.0, eos_ids: eos, seed: 3 };
    let samples = engine::train::rft::round_samples(be, &model, &prompts, &r, 0).unwrap();
    let decode = |s: &engine::rollout::Sample| tok.decode(&s.tokens, true).unwrap_or_default();
    // Each prompt's reference: the first answer some sample gives, if any.
    let answers: Vec<String> = (0..prompts.len())
        .map(|p| {
            let mut mine = samples.iter().filter(|s| s.prompt_index == p);
            mine.find_map(|s| extract_answer(&decode(s))).unwrap_or_else(|| "no such answer".into())
        })
        .collect();
    let expected = samples.iter().filter(|s| math_reward(&decode(s), &answers[s.prompt_index]) > 0.0).count();
    assert!(expected >= 2, "the fixture should give some verifiable samples ({expected})");
    let data = dir.join("rft.jsonl");
    let lines: String = texts
        .iter()
        .zip(&answers)
        .map(|(t, a)| format!("{}\n", serde_json::json!({"prompt": t, "answer": a})))
        .collect();
    std::fs::write(&data, lines).unwrap();
    let sets = vec![
        format!("model={}", model_dir.display()),
        format!("data={}", data.display()),
        format!("output_dir={}", out.display()),
        "seed=3".into(),
        "rft.rounds=1".into(),
        "rft.samples=6".into(),
        "rft.max_new_tokens=24".into(),
        "rft.steps_per_round=6".into(),
        "tokens_per_step=60".into(),
        "optim.lr=3e-3".into(),
        "optim.schedule=constant".into(),
    ];
    (sets, expected)
}

/// What an [`rft_setup`] run must show: 6 steps, exactly the verified samples
/// kept, and the SFT loss on them falling.
pub fn check_rft_run(out: &Path, expected: usize) {
    let m = metrics(out);
    assert_eq!(m.len(), 6);
    assert_eq!(m[0]["kept"].as_u64().unwrap() as usize, expected);
    let losses: Vec<f64> = m.iter().filter_map(|x| x["loss"].as_f64()).collect();
    println!("rft: {expected} samples kept, losses {losses:.4?}");
    assert!(losses.len() >= 2 && losses[losses.len() - 1] < losses[0], "{losses:?}");
}
