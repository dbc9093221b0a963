//! `engine generate`: samples from a model for each prompt of a JSONL file.
//!
//! Input lines: `{"tokens": [...]}`, `{"prompt": "..."}`, or with `--chat`
//! `{"messages": [{"role", "content"}...]}` / `{"prompt": "..."}` (one user
//! message), rendered with the model's chat template. Output: one line per
//! sample with `prompt_index`, `sample_index`, `tokens` (generated only),
//! `logprobs`, `text`, `finish_reason`.

use super::score::shortest;
use super::{with_backend, Device};
use crate::backend::Backend;
use crate::data::chat::{ChatTemplate, Message};
use crate::data::jsonl::{read_objects, token_ids, LazyTokenizer, Line};
use crate::data::tokenizer::eos_ids;
use crate::model::checkpoint::write_atomic;
use crate::model::Model;
use crate::rollout::{GenerateConfig, Generator, Sample, SamplingParams};
use anyhow::{anyhow, bail, Result};
use clap::Args;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Samples per prompt.
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// 1 = off.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// 0 = off.
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when the generated text contains this (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 64)]
    pub max_batch: usize,
    /// Replay each decode step as a CUDA graph (captured once per padded
    /// batch size; no launch costs on the host). Not yet measured on a GPU:
    /// off by default.
    #[arg(long)]
    pub cuda_graphs: bool,
    /// Render prompts with the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Let the tokenizer add its special tokens to plain-text prompts.
    #[arg(long)]
    pub add_special_tokens: bool,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: Device,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Hugging Face model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL prompts.
    #[arg(long)]
    pub prompts: PathBuf,
    /// JSONL output, one line per sample, written whole at the end.
    #[arg(long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// The prompt of one input line, as token ids.
pub fn prompt_tokens(
    line: &Line,
    s: &SamplingArgs,
    chat: Option<&ChatTemplate>,
    tok: &mut LazyTokenizer,
    vocab: usize,
) -> Result<Vec<u32>> {
    let at = &line.at;
    let f = &line.fields;
    let ids = if let Some(ids) = f.get("tokens") {
        token_ids(ids, vocab, at)?
    } else if let Some(chat) = chat {
        let messages: Vec<Message> = match (f.get("messages"), f.get("prompt")) {
            (Some(m), _) => serde_json::from_value(m.clone())
                .map_err(|e| anyhow!("{at}: \"messages\" should be a list of {{role, content}}: {e}"))?,
            (None, Some(Value::String(p))) => vec![Message { role: "user".into(), content: p.clone() }],
            _ => bail!("{at}: expected \"tokens\", \"messages\" or a string \"prompt\""),
        };
        let text = chat.render(&messages, true).map_err(|e| anyhow!("{at}: {e}"))?;
        // The template writes the special tokens itself (as transformers does).
        tok.encode(&text, false, vocab, at)?
    } else {
        match f.get("prompt") {
            Some(Value::String(p)) => tok.encode(p, s.add_special_tokens, vocab, at)?,
            Some(_) => bail!("{at}: \"prompt\" should be a string"),
            None => bail!("{at}: expected a \"tokens\" or a \"prompt\" field"),
        }
    };
    if ids.is_empty() {
        bail!("{at}: empty prompt");
    }
    Ok(ids)
}

/// What [`run_generation`] returns.
pub struct Generation {
    pub samples: Vec<Sample>,
    pub text: TextDecoder,
}

/// Loads the model and generates for the prompt lines (shared by
/// `generate` and `eval`).
pub fn run_generation(model_dir: &Path, lines: &[Line], s: &SamplingArgs) -> Result<Generation> {
    with_backend!(s.device, |be| generate_on(be, model_dir, lines, s))
}

fn generate_on<B: Backend>(be: &B, model_dir: &Path, lines: &[Line], s: &SamplingArgs) -> Result<Generation> {
    let (model, _) = Model::load(be, model_dir)?;
    let chat = if s.chat { Some(ChatTemplate::load(model_dir)?) } else { None };
    let mut tok = LazyTokenizer::new(model_dir);
    let vocab = model.cfg.vocab_size;
    let prompts: Vec<Vec<u32>> =
        lines.iter().map(|l| prompt_tokens(l, s, chat.as_ref(), &mut tok, vocab)).collect::<Result<_>>()?;
    let mut eos = eos_ids(model_dir)?;
    eos.retain(|&e| (e as usize) < vocab);
    let cfg = GenerateConfig {
        n: s.n,
        max_new_tokens: s.max_new_tokens,
        sampling: SamplingParams { temperature: s.temperature, top_k: s.top_k, top_p: s.top_p, min_p: s.min_p },
        seed: s.seed,
        eos_ids: eos,
        stop_strings: s.stop.clone(),
        max_batch: s.max_batch,
        graphs: s.cuda_graphs,
        ..Default::default()
    };
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(1);
    let mut generator = Generator::new(be, &model, cfg, longest)?;
    // Stop strings and the output text need the tokenizer.
    let tokenizer = TextDecoder::load(model_dir, !s.stop.is_empty())?;
    let total = (prompts.len() * s.n * s.max_new_tokens) as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("generating {bar:40} {pos}/{len} tokens (at most) {per_sec} eta {eta}")
            .expect("static template"),
    );
    let detok = |ids: &[u32]| tokenizer.decode(ids);
    let samples =
        generator.generate(&prompts, tokenizer.is_loaded().then_some(&detok as &dyn Fn(&[u32]) -> String), |k| {
            bar.inc(k as u64)
        })?;
    bar.finish_and_clear();
    Ok(Generation { samples, text: tokenizer })
}

/// Text of generated tokens; a model folder without a tokenizer (token-only
/// use) gives empty text.
pub struct TextDecoder(Option<crate::data::tokenizer::Tokenizer>);

impl TextDecoder {
    /// Loads `tokenizer.json` if present; `required` makes its absence an error.
    fn load(dir: &Path, required: bool) -> Result<Self> {
        if dir.join("tokenizer.json").exists() || required {
            Ok(TextDecoder(Some(crate::data::tokenizer::Tokenizer::load(dir)?)))
        } else {
            Ok(TextDecoder(None))
        }
    }
    fn is_loaded(&self) -> bool {
        self.0.is_some()
    }
    /// Text of generated ids, special tokens skipped ("" without a tokenizer).
    pub fn decode(&self, ids: &[u32]) -> String {
        self.0.as_ref().and_then(|t| t.decode(ids, true).ok()).unwrap_or_default()
    }
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let lines = read_objects(&a.prompts)?;
    let Generation { samples, text } = run_generation(&a.model, &lines, &a.sampling)?;
    let mut out = String::new();
    for s in &samples {
        let line = json!({
            "prompt_index": s.prompt_index,
            "sample_index": s.sample_index,
            "tokens": s.tokens,
            "logprobs": s.logprobs.iter().map(|&l| shortest(l)).collect::<Vec<_>>(),
            "text": text.decode(&s.tokens),
            "finish_reason": s.finish_reason.as_str(),
        });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    write_atomic(&a.output, out.as_bytes())
}
