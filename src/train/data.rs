//! Training data: JSONL examples (TRL's field names) turned into token
//! sequences with the prompt masked from the loss, and packed into
//! micro-batches of a token budget.

use crate::backend::IGNORE;
use crate::data::chat::{ChatTemplate, Message};
use crate::data::jsonl::Line;
use crate::data::tokenizer::Tokenizer;
use crate::data::Batch;
use anyhow::{anyhow, bail, Result};
use serde_json::Value;

/// One training sequence: the loss covers `tokens[n_prompt..]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub tokens: Vec<u32>,
    pub n_prompt: usize,
}

/// What to do with an example longer than the maximum length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlong {
    Truncate,
    Skip,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataStats {
    pub examples: usize,
    pub truncated: usize,
    pub skipped: usize,
}

fn text_field<'a>(line: &'a Line, key: &str) -> Result<Option<&'a str>> {
    match line.fields.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => bail!("{}: \"{key}\" should be a string", line.at),
    }
}

/// SFT examples from `{"prompt", "completion"}` or `{"messages": [...]}`
/// lines (the last message, the assistant's, is the completion). With a chat
/// template the prompt is rendered with the generation prompt opened; the
/// completion ends with `eos`. With `prompt_only`, a line with a prompt and
/// no completion gives an example of the prompt alone (`n_prompt` equal to
/// its length), for a trainer that samples the completion itself.
pub fn sft_examples(
    lines: &[Line],
    tok: &Tokenizer,
    chat: Option<&ChatTemplate>,
    eos: Option<u32>,
    max_len: usize,
    overlong: Overlong,
    prompt_only: bool,
) -> Result<(Vec<Example>, DataStats)> {
    let mut out = Vec::new();
    let mut stats = DataStats::default();
    for line in lines {
        let at = &line.at;
        let (prompt_ids, completion) =
            match (line.fields.get("messages"), text_field(line, "prompt")?, text_field(line, "completion")?) {
                (Some(m), _, _) => {
                    let chat =
                        chat.ok_or_else(|| anyhow!("{at}: \"messages\" needs a chat template (set chat = true)"))?;
                    let mut messages: Vec<Message> = serde_json::from_value(m.clone())
                        .map_err(|e| anyhow!("{at}: \"messages\" should be a list of {{role, content}}: {e}"))?;
                    let last = messages
                        .pop()
                        .filter(|m| m.role == "assistant")
                        .ok_or_else(|| anyhow!("{at}: the last message should be the assistant's"))?;
                    let text = chat.render(&messages, true).map_err(|e| anyhow!("{at}: {e}"))?;
                    (tok.encode(&text, false)?, last.content)
                }
                (None, Some(p), c) if c.is_some() || prompt_only => {
                    let ids = match chat {
                        Some(chat) => {
                            let text = chat
                                .render(&[Message { role: "user".into(), content: p.into() }], true)
                                .map_err(|e| anyhow!("{at}: {e}"))?;
                            tok.encode(&text, false)?
                        }
                        None => tok.encode(p, true)?,
                    };
                    match c {
                        Some(c) => (ids, c.to_string()),
                        None if ids.is_empty() || ids.len() >= max_len => {
                            bail!("{at}: the prompt has {} tokens (max_seq_len {max_len})", ids.len())
                        }
                        None => {
                            stats.examples += 1;
                            out.push(Example { n_prompt: ids.len(), tokens: ids });
                            continue;
                        }
                    }
                }
                _ if prompt_only => bail!("{at}: expected \"prompt\" (and \"completion\"), or \"messages\""),
                _ => bail!("{at}: expected \"prompt\" and \"completion\", or \"messages\""),
            };
        let mut tokens = prompt_ids;
        let n_prompt = tokens.len();
        tokens.extend(tok.encode(&completion, false)?);
        tokens.extend(eos);
        if tokens.len() == n_prompt {
            bail!("{at}: empty completion");
        }
        if tokens.len() > max_len {
            match overlong {
                Overlong::Skip => {
                    stats.skipped += 1;
                    continue;
                }
                Overlong::Truncate if n_prompt + 1 < max_len => {
                    tokens.truncate(max_len);
                    stats.truncated += 1;
                }
                Overlong::Truncate => {
                    // Nothing of the completion would remain.
                    stats.skipped += 1;
                    continue;
                }
            }
        }
        stats.examples += 1;
        out.push(Example { tokens, n_prompt });
    }
    Ok((out, stats))
}

/// A packed micro-batch and its loss targets (the next token where it is
/// part of a completion, [`IGNORE`] elsewhere).
pub struct MicroBatch {
    pub batch: Batch,
    pub targets: Vec<u32>,
}

impl MicroBatch {
    pub fn pack(examples: &[&Example]) -> Self {
        let batch = Batch::pack(&examples.iter().map(|e| e.tokens.as_slice()).collect::<Vec<_>>());
        let mut targets = batch.next_tokens.clone();
        for (s, e) in examples.iter().enumerate() {
            let start = batch.seq(s).start;
            // Position t predicts token t+1: masked while t+1 is a prompt token.
            for t in targets[start..start + e.n_prompt.saturating_sub(1)].iter_mut() {
                *t = IGNORE;
            }
        }
        MicroBatch { batch, targets }
    }

    /// Tokens that carry loss.
    pub fn loss_tokens(&self) -> usize {
        self.targets.iter().filter(|&&t| t != IGNORE).count()
    }
}

/// Groups examples (in the given order) into micro-batches of at most
/// `budget` tokens (a longer example goes alone).
pub fn micro_batches<'a>(examples: &[&'a Example], budget: usize) -> Vec<Vec<&'a Example>> {
    let mut out: Vec<Vec<&Example>> = Vec::new();
    let mut tokens = 0;
    for &e in examples {
        if out.last().is_none_or(|mb| !mb.is_empty() && tokens + e.tokens.len() > budget) {
            out.push(Vec::new());
            tokens = 0;
        }
        out.last_mut().unwrap().push(e);
        tokens += e.tokens.len();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_tokens_are_masked() {
        let a = Example { tokens: vec![1, 2, 3, 4, 5], n_prompt: 3 };
        let b = Example { tokens: vec![7, 8], n_prompt: 1 };
        let mb = MicroBatch::pack(&[&a, &b]);
        // a: positions 0,1 predict prompt tokens 2,3 → masked; 2,3 predict 4,5; 4 is last.
        // b: position 0 predicts 8 (completion); 1 is last.
        assert_eq!(mb.targets, vec![IGNORE, IGNORE, 4, 5, IGNORE, 8, IGNORE]);
        assert_eq!(mb.loss_tokens(), 3);
    }

    #[test]
    fn packing_respects_the_budget() {
        let ex: Vec<Example> = [3, 4, 2, 9, 1].iter().map(|&n| Example { tokens: vec![1; n], n_prompt: 1 }).collect();
        let refs: Vec<&Example> = ex.iter().collect();
        let sizes: Vec<Vec<usize>> =
            micro_batches(&refs, 8).iter().map(|mb| mb.iter().map(|e| e.tokens.len()).collect()).collect();
        assert_eq!(sizes, vec![vec![3, 4], vec![2], vec![9], vec![1]]);
    }
}
