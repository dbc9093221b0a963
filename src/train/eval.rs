//! Held-out evaluation during training: sample answers to `{prompt, answer}`
//! problems with the rollout engine and score them with the math verifier.
//! One sample per prompt is greedy (pass@1); `k > 1` samples at a
//! temperature give pass@1 as their mean and maj@k by majority vote.

use crate::backend::Backend;
use crate::cli::eval::majority;
use crate::data::tokenizer::Tokenizer;
use crate::model::Model;
use crate::reward::math::{answers_match, extract_answer, math_reward};
use crate::rollout::{GenerateConfig, Generator, SamplingParams};
use anyhow::Result;

/// A prompt's token ids and its reference answer.
pub type Problem = (Vec<u32>, String);

#[derive(Clone, Debug, Default, PartialEq)]
pub struct EvalResult {
    pub pass1: f64,
    /// maj@k, when `k > 1`.
    pub maj: Option<f64>,
    pub k: usize,
    pub response_length: f64,
}

/// What and how to evaluate.
#[derive(Clone, Debug)]
pub struct EvalSpec {
    pub max_new_tokens: usize,
    /// Samples per prompt; 1 is greedy.
    pub k: usize,
    pub temperature: f32,
    pub seed: u64,
    pub eos: Vec<u32>,
}

pub fn evaluate<B: Backend>(
    be: &B,
    model: &Model<B>,
    tok: &Tokenizer,
    problems: &[Problem],
    spec: &EvalSpec,
) -> Result<EvalResult> {
    if problems.is_empty() {
        return Ok(EvalResult::default());
    }
    let k = spec.k.max(1);
    let temperature = if k == 1 { 0.0 } else { spec.temperature };
    let cfg = GenerateConfig {
        n: k,
        max_new_tokens: spec.max_new_tokens,
        sampling: SamplingParams { temperature, ..Default::default() },
        seed: spec.seed,
        eos_ids: spec.eos.clone(),
        max_batch: (problems.len() * k).clamp(k, 256),
        ..Default::default()
    };
    let prompts: Vec<Vec<u32>> = problems.iter().map(|(p, _)| p.clone()).collect();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(1);
    let samples = Generator::new(be, model, cfg, longest)?.generate(&prompts, None, |_| {})?;
    let mut answers: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(k); problems.len()];
    let mut correct = 0usize;
    let mut length = 0usize;
    // Samples come back in completion order; sort them into their prompts.
    let mut ordered: Vec<_> = samples.iter().collect();
    ordered.sort_by_key(|s| (s.prompt_index, s.sample_index));
    for s in ordered {
        let text = tok.decode(&s.tokens, true)?;
        correct += (math_reward(&text, &problems[s.prompt_index].1) > 0.0) as usize;
        let answer = extract_answer(&text);
        length += s.tokens.len();
        answers[s.prompt_index].push(answer);
    }
    let n = (problems.len() * k) as f64;
    let maj = (k > 1).then(|| {
        let hits = answers
            .iter()
            .zip(problems)
            .filter(|(a, (_, r))| majority(a, k).is_some_and(|m| answers_match(&m, r)))
            .count();
        hits as f64 / problems.len() as f64
    });
    Ok(EvalResult { pass1: correct as f64 / n, maj, k, response_length: length as f64 / n })
}
