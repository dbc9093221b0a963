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
