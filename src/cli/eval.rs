//! `engine eval`: samples answers to math prompts and scores them with the
//! verifier — pass@1, pass@k (the unbiased estimator of Chen et al. 2021)
//! and maj@k (self-consistency: the most frequent extracted answer) —
//! overall and per line, as JSON and a short table.

use super::generate::{run_generation, Generation, SamplingArgs};
use crate::model::checkpoint::write_atomic;
use crate::reward::math::{answers_match, extract_answer, normalize_answer};
use anyhow::{bail, Result};
use clap::Args;
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Hugging Face model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL lines `{"prompt" (or "messages" / "tokens"), "answer"}`.
    #[arg(long)]
    pub data: PathBuf,
    /// The k of pass@k and maj@k (default: n, the samples per prompt).
    #[arg(long)]
    pub k: Option<usize>,
    /// Write the JSON report here instead of standard output.
    #[arg(long)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Unbiased pass@k from `n` samples of which `c` are correct:
/// `1 − C(n−c, k) / C(n, k)`, as a stable product.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    assert!(k >= 1 && k <= n && c <= n, "pass@k needs 1 ≤ k ≤ n and c ≤ n");
    if n - c < k {
        return 1.0;
    }
    1.0 - ((n - c + 1)..=n).map(|i| 1.0 - k as f64 / i as f64).product::<f64>()
}

/// The most frequent normalised answer among the first `k` (ties: the one
/// seen first); `None` when no sample had an answer.
pub fn majority(answers: &[Option<String>], k: usize) -> Option<String> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for a in answers.iter().take(k).flatten() {
        let norm = normalize_answer(a);
        match counts.iter_mut().find(|(x, _)| *x == norm) {
            Some((_, c)) => *c += 1,
            None => counts.push((norm, 1)),
        }
    }
    let best = counts.iter().map(|(_, c)| *c).max()?;
    counts.into_iter().find(|(_, c)| *c == best).map(|(a, _)| a)
}

pub fn run(a: EvalArgs) -> Result<()> {
    let n = a.sampling.n;
    let k = a.k.unwrap_or(n);
    if k == 0 || k > n {
        bail!("--k must be between 1 and --n ({n}), got {k}");
    }
    // Every line needs a reference answer before any sampling starts.
    let lines = crate::data::jsonl::read_objects(&a.data)?;
    let references: Vec<String> = lines
        .iter()
        .map(|l| match l.fields.get("answer") {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(x)) => Ok(x.to_string()),
            _ => bail!("{}: expected an \"answer\" (string or number)", l.at),
        })
        .collect::<Result<_>>()?;
    let Generation { samples, text } = run_generation(&a.model, &lines, &a.sampling)?;

    let mut per_line = Vec::new();
    let (mut p1, mut pk, mut mk) = (0.0, 0.0, 0.0);
    for (i, reference) in references.iter().enumerate() {
        let mine: Vec<_> = samples.iter().filter(|s| s.prompt_index == i).collect();
        let answers: Vec<Option<String>> = mine.iter().map(|s| extract_answer(&text.decode(&s.tokens))).collect();
        let correct = answers.iter().filter(|x| x.as_deref().is_some_and(|x| answers_match(x, reference))).count();
        let maj = majority(&answers, k);
        let maj_ok = maj.as_deref().is_some_and(|m| answers_match(m, reference));
        let (a1, ak) = (correct as f64 / n as f64, pass_at_k(n, correct, k));
        p1 += a1;
        pk += ak;
        mk += maj_ok as u8 as f64;
        per_line.push(json!({
            "index": i, "answer": reference, "correct": correct, "pass@1": a1,
            format!("pass@{k}"): ak, format!("maj@{k}"): maj_ok, "majority_answer": maj, "answers": answers,
        }));
    }
    let m = references.len() as f64;
    let report = json!({
        "prompts": references.len(), "n": n, "k": k,
        "pass@1": p1 / m, format!("pass@{k}"): pk / m, format!("maj@{k}"): mk / m,
        "per_line": per_line,
    });
    eprintln!("prompts {}   samples per prompt {n}", references.len());
    eprintln!("pass@1 {:.4}   pass@{k} {:.4}   maj@{k} {:.4}", p1 / m, pk / m, mk / m);
    match &a.output {
        Some(path) => write_atomic(path, serde_json::to_string_pretty(&report)?.as_bytes()),
        None => {
            println!("{report}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_at_k_closed_forms() {
        // c = 0 → 0; c = n → 1; k = 1 → c/n; n=5, c=2, k=2: 1 − C(3,2)/C(5,2) = 1 − 3/10.
        assert_eq!(pass_at_k(10, 0, 3), 0.0);
        assert_eq!(pass_at_k(4, 4, 2), 1.0);
        assert!((pass_at_k(8, 3, 1) - 3.0 / 8.0).abs() < 1e-12);
        assert!((pass_at_k(5, 2, 2) - 0.7).abs() < 1e-12);
    }

    #[test]
    fn majority_vote_normalises_and_breaks_ties_by_order() {
        let a = |v: &[Option<&str>]| v.iter().map(|x| x.map(str::to_string)).collect::<Vec<_>>();
        assert_eq!(majority(&a(&[Some("7"), Some("1,000"), None, Some("1000")]), 4), Some(normalize_answer("1000")));
        assert_eq!(majority(&a(&[Some("3"), Some("4")]), 2), Some(normalize_answer("3")));
        assert_eq!(majority(&a(&[None, None]), 2), None);
    }
}
