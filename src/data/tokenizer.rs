//! `tokenizer.json` through the `tokenizers` crate, and the end-of-sequence
//! ids a model declares (`generation_config.json` first — instruct models
//! list several there — then `config.json`).

use crate::model::config::token_ids;
use anyhow::{anyhow, Context, Result};
use std::path::Path;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub eos_ids: Vec<u32>,
}

impl Tokenizer {
    pub fn load(model_dir: &Path) -> Result<Self> {
        let path = model_dir.join("tokenizer.json");
        if !path.exists() {
            anyhow::bail!("{}: not found (needed to tokenize text)", path.display());
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
        Ok(Tokenizer { inner, eos_ids: eos_ids(model_dir)? })
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| anyhow!("tokenizer: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| anyhow!("tokenizer: {e}"))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Every token with its id, special tokens included, sorted by id.
    pub fn vocab(&self) -> Vec<(u32, String)> {
        let mut v: Vec<(u32, String)> = self.inner.get_vocab(true).into_iter().map(|(t, i)| (i, t)).collect();
        v.sort();
        v
    }
}

/// The union of `eos_token_id` in `generation_config.json` and `config.json`,
/// generation config first, without repeats.
pub fn eos_ids(model_dir: &Path) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for f in ["generation_config.json", "config.json"] {
        let path = model_dir.join(f);
        if !path.exists() {
            continue;
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| anyhow!("{}: invalid JSON: {e}", path.display()))?;
        for id in token_ids(v.get("eos_token_id"), &path.display().to_string(), "eos_token_id")? {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    Ok(ids)
}
