//! `engine score`: per-token log-probabilities of JSONL sequences.
//!
//! Input lines are `{"tokens": [...]}` or `{"text": "..."}`; each output line
//! (same order) keeps the input's other fields and adds `tokens`,
//! `logprobs` (`logprobs[i] = log p(tokens[i+1] | tokens[..=i])`) and
//! `sum_logprob`. Lines are packed into batches of about `--batch-tokens`.

use super::{with_backend, Device};
use crate::backend::Backend;
use crate::data::jsonl::{read_objects, token_ids, LazyTokenizer, Line};
use crate::data::Batch;
use crate::model::activations::backend_chunk;
use crate::model::checkpoint::write_atomic;
use crate::model::{Activations, Model};
use anyhow::{bail, Result};
use clap::Args;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// Hugging Face model folder (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL input: one {"tokens": [...]} or {"text": "..."} per line.
    #[arg(long)]
    pub input: PathBuf,
    /// JSONL output, written whole once every line is scored.
    #[arg(long)]
    pub output: PathBuf,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: Device,
    /// Score under softmax(z / T).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Let the tokenizer add its special tokens (BOS…) to "text" inputs.
    #[arg(long)]
    pub add_special_tokens: bool,
    /// Tokens per forward pass (a longer line gets a pass of its own).
    #[arg(long, default_value_t = 8192)]
    pub batch_tokens: usize,
}

/// One parsed input line.
struct Item {
    fields: Map<String, Value>,
    tokens: Vec<u32>,
}

fn parse_lines(path: &Path, model_dir: &Path, vocab: usize, add_special: bool) -> Result<Vec<Item>> {
    let mut tokenizer = LazyTokenizer::new(model_dir);
    let mut items = Vec::new();
    for Line { at, mut fields } in read_objects(path)? {
        let tokens = match (fields.remove("tokens"), fields.get("text")) {
            (Some(ids), _) => token_ids(&ids, vocab, &at)?,
            (None, Some(Value::String(s))) => tokenizer.encode(s, add_special, vocab, &at)?,
            (None, Some(_)) => bail!("{at}: \"text\" should be a string"),
            (None, None) => bail!("{at}: expected a \"tokens\" or a \"text\" field"),
        };
        if tokens.is_empty() {
            bail!("{at}: no tokens to score");
        }
        items.push(Item { fields, tokens });
    }
    Ok(items)
}

/// Groups consecutive items into batches of at most `budget` tokens (an
/// item longer than the budget goes alone).
fn batches(items: &[Item], budget: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (i, it) in items.iter().enumerate() {
        if i > start && tokens + it.tokens.len() > budget {
            out.push(start..i);
            start = i;
            tokens = 0;
        }
        tokens += it.tokens.len();
    }
    out.push(start..items.len());
    out
}

/// Log-probabilities of every next token of every sequence, one Vec per sequence.
pub fn score_sequences<B: Backend>(
    be: &B,
    model: &Model<B>,
    acts: &mut Activations<B>,
    seqs: &[&[u32]],
    temperature: f32,
) -> Result<Vec<Vec<f32>>> {
    let batch = Batch::pack(seqs);
    model.forward(be, acts, &batch)?;
    model.head_fwd(be, acts, &batch.next_tokens, temperature, false);
    let logp = acts.head.read_logp(be, batch.len());
    Ok((0..batch.n_seqs())
        .map(|s| {
            let r = batch.seq(s);
            logp[r.start..r.end - 1].to_vec()
        })
        .collect())
}

/// An f32 as the JSON number with the fewest digits that reads back as the
/// same f32 (`-6.405092`, not the f64 expansion `-6.405092239379883`).
pub(crate) fn shortest(x: f32) -> Value {
    let v: f64 = format!("{x}").parse().expect("an f32 prints as a number");
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

pub fn run(a: ScoreArgs) -> Result<()> {
    if !(a.temperature > 0.0 && a.temperature.is_finite()) {
        bail!("--temperature must be a positive number, got {}", a.temperature);
    }
    if a.batch_tokens == 0 {
        bail!("--batch-tokens must be positive");
    }
    with_backend!(a.device, |be| score_file(be, &a))
}

fn score_file<B: Backend>(be: &B, a: &ScoreArgs) -> Result<()> {
    let (model, _) = Model::load(be, &a.model)?;
    let items = parse_lines(&a.input, &a.model, model.cfg.vocab_size, a.add_special_tokens)?;
    let longest = items.iter().map(|i| i.tokens.len()).max().unwrap_or(1);
    let cap = a.batch_tokens.max(longest);
    let mut acts = Activations::new(be, &model.cfg, cap, backend_chunk(be, &model.cfg, cap), false);

    let total: usize = items.iter().map(|i| i.tokens.len()).sum();
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("scoring {bar:40} {pos}/{len} tokens {per_sec} eta {eta}")
            .expect("static template"),
    );
    let mut out = String::new();
    for range in batches(&items, a.batch_tokens) {
        let group = &items[range];
        let seqs: Vec<&[u32]> = group.iter().map(|i| i.tokens.as_slice()).collect();
        let scored = score_sequences(be, &model, &mut acts, &seqs, a.temperature)?;
        for (item, logprobs) in group.iter().zip(scored) {
            let mut obj = item.fields.clone();
            let sum: f64 = logprobs.iter().map(|&l| l as f64).sum();
            obj.insert("tokens".into(), item.tokens.clone().into());
            obj.insert("logprobs".into(), logprobs.iter().map(|&l| shortest(l)).collect());
            obj.insert("sum_logprob".into(), sum.into());
            out.push_str(&Value::Object(obj).to_string());
            out.push('\n');
        }
        bar.inc(seqs.iter().map(|s| s.len() as u64).sum());
    }
    bar.finish_and_clear();
    write_atomic(&a.output, out.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batching_respects_the_budget() {
        let item = |n: usize| Item { fields: Map::new(), tokens: vec![0; n] };
        let items: Vec<Item> = [3, 4, 2, 9, 1].into_iter().map(item).collect();
        assert_eq!(batches(&items, 8), vec![0..2, 2..3, 3..4, 4..5]);
        assert_eq!(batches(&items, 100), vec![0..5]);
    }
}
