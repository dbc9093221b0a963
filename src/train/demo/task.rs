//! The demo's task, generated in code: two-step arithmetic with a worked
//! rationale. A problem `47+38-19=` is answered by the chain
//! `47+38=85 85-19=66`, whose last number is the answer, so the math
//! verifier of `engine eval` and `engine train grpo` scores it unchanged.
//! The character-level tokenizer and the model's `config.json` are written
//! here too, as ordinary Hugging Face files that `transformers` loads.

use crate::model::checkpoint::{save, write_atomic, SaveDtype};
use crate::model::config::ModelConfig;
use crate::model::params::ParamLayout;
use crate::rollout::Stream;
use anyhow::Result;
use serde_json::json;
use std::path::Path;

/// One problem: operands and operators, left to right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Problem {
    pub a: u32,
    pub b: u32,
    pub c: u32,
    pub plus1: bool,
    pub plus2: bool,
}

fn apply(x: i64, y: u32, plus: bool) -> i64 {
    if plus {
        x + y as i64
    } else {
        x - y as i64
    }
}

fn op(plus: bool) -> char {
    if plus {
        '+'
    } else {
        '-'
    }
}

impl Problem {
    /// The `i`-th problem of stream `seed`: operands below `max`, every
    /// intermediate result non-negative.
    pub fn draw(seed: u64, i: u64, max: u32) -> Problem {
        let s = Stream::new(seed, i, 0);
        let mut k = 0;
        loop {
            let mut u = |n: u32| {
                k += 1;
                (s.uniform(k) * n as f64) as u32
            };
            let p = Problem { a: u(max), b: u(max), c: u(max), plus1: u(2) == 0, plus2: u(2) == 0 };
            let mid = apply(p.a as i64, p.b, p.plus1);
            if mid >= 0 && apply(mid, p.c, p.plus2) >= 0 {
                return p;
            }
        }
    }

    fn mid(&self) -> i64 {
        apply(self.a as i64, self.b, self.plus1)
    }

    pub fn answer(&self) -> i64 {
        apply(self.mid(), self.c, self.plus2)
    }

    /// `47+38-19=`
    pub fn prompt(&self) -> String {
        format!("{}{}{}{}{}=", self.a, op(self.plus1), self.b, op(self.plus2), self.c)
    }

    /// `47+38=85 85-19=66`
    pub fn rationale(&self) -> String {
        let (m, o1, o2) = (self.mid(), op(self.plus1), op(self.plus2));
        format!("{}{o1}{}={m} {m}{o2}{}={}", self.a, self.b, self.c, self.answer())
    }
}

/// `n` distinct problems from `seed`, none of them in `exclude`.
pub fn problems(seed: u64, n: usize, max: u32, exclude: &[Problem]) -> Vec<Problem> {
    let mut seen: std::collections::HashSet<Problem> = exclude.iter().copied().collect();
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while out.len() < n {
        let p = Problem::draw(seed, i, max);
        i += 1;
        if seen.insert(p) {
            out.push(p);
        }
    }
    out
}

impl std::hash::Hash for Problem {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        (self.a, self.b, self.c, self.plus1, self.plus2).hash(h);
    }
}

/// The characters the task uses; id 0 is the end-of-sequence token.
pub const EOS: &str = "<eos>";
pub const CHARS: &str = "0123456789+-= ";

/// A character-level `tokenizer.json`: a word-level vocabulary over single
/// characters, split one character per token, decoded by concatenation.
pub fn tokenizer_json() -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    vocab.insert(EOS.into(), 0.into());
    for (i, c) in CHARS.chars().enumerate() {
        vocab.insert(c.to_string(), (i + 1).into());
    }
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{
            "id": 0, "content": EOS, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": true
        }],
        "normalizer": null,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated", "invert": false},
        "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": EOS}
    })
}

/// The model's shape, as `config.json` says it.
pub struct Shape {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub max_positions: usize,
}

pub fn config_json(s: &Shape) -> serde_json::Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": CHARS.chars().count() + 1,
        "hidden_size": s.hidden,
        "intermediate_size": s.intermediate,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.heads,
        "head_dim": s.hidden / s.heads,
        "hidden_act": "silu",
        "max_position_embeddings": s.max_positions,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": true,
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "torch_dtype": "float32"
    })
}

/// Writes a freshly initialised model folder: `config.json`,
/// `tokenizer.json` and `model.safetensors` with weights drawn from
/// N(0, 0.02²) (output projections scaled by 1/√(2·layers), as GPT-2 does),
/// norms at one.
pub fn write_initial_model(dir: &Path, s: &Shape, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let config = config_json(s);
    write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&config)?.as_bytes())?;
    write_atomic(&dir.join("tokenizer.json"), serde_json::to_string_pretty(&tokenizer_json())?.as_bytes())?;
    let cfg = ModelConfig::from_json_str(&config.to_string(), "config.json")?;
    let layout = ParamLayout::new(&cfg);
    let mut params = vec![0.0f32; layout.total];
    let out_scale = 1.0 / (2.0 * s.layers as f64).sqrt();
    for (t, e) in layout.entries.iter().enumerate() {
        let stream = Stream::new(seed, t as u64, u64::MAX);
        let std = if e.name.ends_with("o_proj.weight") || e.name.ends_with("down_proj.weight") {
            0.02 * out_scale
        } else {
            0.02
        };
        for (j, p) in params[e.span.off..e.span.end()].iter_mut().enumerate() {
            *p = if e.shape.len() == 1 {
                1.0
            } else {
                // Box–Muller on two uniforms of this tensor's stream.
                let (u1, u2) = (stream.uniform(2 * j as u64), stream.uniform(2 * j as u64 + 1));
                let n = (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                (n * std) as f32
            };
        }
    }
    save(dir, dir, &layout, &params, SaveDtype::F32, 1 << 30)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reward::math::math_reward;

    #[test]
    fn rationale_ends_in_the_answer_and_the_verifier_agrees() {
        let p = Problem { a: 47, b: 38, c: 19, plus1: true, plus2: false };
        assert_eq!((p.prompt().as_str(), p.rationale().as_str(), p.answer()), ("47+38-19=", "47+38=85 85-19=66", 66));
        assert_eq!(math_reward(&p.rationale(), "66"), 1.0);
        assert_eq!(math_reward("47+38=85 85-19=65", "66"), 0.0);
        assert_eq!(math_reward("47+38=85 85-19=", "66"), 0.0);
        for p in problems(3, 500, 100, &[]) {
            assert!(p.answer() >= 0 && p.mid() >= 0);
            assert_eq!(math_reward(&p.rationale(), &p.answer().to_string()), 1.0, "{p:?}");
        }
    }

    #[test]
    fn problem_sets_are_disjoint_and_seeded() {
        let a = problems(1, 300, 100, &[]);
        let b = problems(2, 300, 100, &a);
        assert!(b.iter().all(|p| !a.contains(p)));
        assert_eq!(a, problems(1, 300, 100, &[]));
    }
}
