//! JSONL inputs of the commands: one object per line, errors naming the
//! file and line; token-id lists checked against the vocabulary; text
//! tokenized with the model's tokenizer, loaded only if some line needs it.

use super::tokenizer::Tokenizer;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// One input line: `file:line` (for errors) and its fields.
pub struct Line {
    pub at: String,
    pub fields: Map<String, Value>,
}

/// The objects of a JSONL file; blank lines are skipped, an empty file is an error.
pub fn read_objects(path: &Path) -> Result<Vec<Line>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let v: Value = serde_json::from_str(line).map_err(|e| anyhow!("{at}: invalid JSON: {e}"))?;
        let Value::Object(fields) = v else { bail!("{at}: expected a JSON object") };
        out.push(Line { at, fields });
    }
    if out.is_empty() {
        bail!("{}: empty input (no JSONL lines)", path.display());
    }
    Ok(out)
}

/// A `"tokens"` list, each id below `vocab`.
pub fn token_ids(v: &Value, vocab: usize, at: &str) -> Result<Vec<u32>> {
    let Value::Array(ids) = v else { bail!("{at}: \"tokens\" should be a list of token ids") };
    ids.iter()
        .map(|x| match x.as_u64() {
            Some(t) if (t as usize) < vocab => Ok(t as u32),
            Some(t) => Err(anyhow!("{at}: token id {t} outside the vocabulary ({vocab})")),
            None => Err(anyhow!("{at}: \"tokens\" should hold non-negative integers, found {x}")),
        })
        .collect()
}

/// The model's tokenizer, loaded on first use.
pub struct LazyTokenizer<'a> {
    model_dir: &'a Path,
    tokenizer: Option<Tokenizer>,
}

impl<'a> LazyTokenizer<'a> {
    pub fn new(model_dir: &'a Path) -> Self {
        LazyTokenizer { model_dir, tokenizer: None }
    }

    pub fn get(&mut self) -> Result<&Tokenizer> {
        if self.tokenizer.is_none() {
            self.tokenizer = Some(Tokenizer::load(self.model_dir)?);
        }
        Ok(self.tokenizer.as_ref().expect("just loaded"))
    }

    /// Token ids of `text`, each checked against the model's vocabulary.
    pub fn encode(&mut self, text: &str, add_special_tokens: bool, vocab: usize, at: &str) -> Result<Vec<u32>> {
        let ids = self
            .get()
            .with_context(|| at.to_string())?
            .encode(text, add_special_tokens)
            .with_context(|| at.to_string())?;
        if let Some(&t) = ids.iter().find(|&&t| t as usize >= vocab) {
            bail!("{at}: the tokenizer gave id {t}, outside the model's vocabulary ({vocab})");
        }
        Ok(ids)
    }
}
