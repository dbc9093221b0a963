//! The loss library (DESIGN.md §4): every loss a reasoning trainer needs,
//! computed on per-token arrays — the output of phase 1 of the lm_head
//! (`logp`, `lse`, entropy; DESIGN.md §3) — so sequence-level losses (GSPO,
//! DPO) work as well as token-level ones.
//!
//! Each loss returns its value and [`TokenCoefs`]: per token, the
//! coefficient `w·∂L/∂logp` (and `∂L/∂H` for an entropy bonus) that phase 2
//! turns into the logit gradient `dz = coef·(onehot(y) − p)/T + …` without
//! ever holding more than one chunk of logits. Everything here works on plain
//! slices and sums in f64 in a fixed order.
//!
//! Counts (tokens, sequences) are over the whole optimizer step: build a
//! [`StepCounts`] from every micro-batch's masks first, then compute each
//! micro-batch's loss with it; the micro-batch losses add up to the step's.

pub mod advantages;
pub mod distill;
pub mod dpo;
pub mod kl;
pub mod policy;
pub mod sft;

pub use advantages::{grpo_advantages, ScaleRewards};
pub use distill::{DistillMode, Distillation};
pub use dpo::{dpo_loss, DpoConfig, DpoLossType, DpoStats};
pub use kl::{KlKind, KlPenalty};
pub use policy::{policy_loss, PolicyBatch, PolicyConfig, PolicyKind, PolicyOutput, PolicyStats};
pub use sft::masked_mean_ce;

/// Per-token coefficients a loss hands to phase 2.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenCoefs {
    /// `w_t · ∂L/∂logp_t` (0 for masked tokens).
    pub logp: Vec<f32>,
    /// `∂L/∂H_t` where the loss has an entropy term, else `None`.
    pub entropy: Option<Vec<f32>>,
}

impl From<Vec<f32>> for TokenCoefs {
    /// Coefficients of a loss without an entropy term.
    fn from(logp: Vec<f32>) -> Self {
        TokenCoefs { logp, entropy: None }
    }
}

/// How per-token losses are combined (DESIGN.md §4.4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Aggregation {
    /// `1 / (response tokens in the step)`.
    TokenMean,
    /// `1 / (#seqs · |y_i|)`.
    SeqMeanTokenMean,
    /// `1 / #seqs`.
    SeqMeanTokenSum,
    /// Dr.GRPO: `1 / (#seqs · l_max)`.
    SeqMeanTokenSumNorm { l_max: usize },
}

impl Aggregation {
    /// Parses the names used in configs: `token-mean`, `seq-mean-token-mean`,
    /// `seq-mean-token-sum`, `seq-mean-token-sum-norm` (which needs `l_max`).
    pub fn parse(name: &str, l_max: Option<usize>) -> Result<Self, String> {
        match name {
            "token-mean" => Ok(Aggregation::TokenMean),
            "seq-mean-token-mean" => Ok(Aggregation::SeqMeanTokenMean),
            "seq-mean-token-sum" => Ok(Aggregation::SeqMeanTokenSum),
            "seq-mean-token-sum-norm" => match l_max {
                Some(l_max) if l_max > 0 => Ok(Aggregation::SeqMeanTokenSumNorm { l_max }),
                _ => Err("seq-mean-token-sum-norm needs a positive maximum response length".into()),
            },
            other => Err(format!("unknown aggregation `{other}`")),
        }
    }

    /// The weight of one unmasked token of a sequence with `len` unmasked tokens.
    pub fn weight(&self, counts: &StepCounts, len: usize) -> f64 {
        let (tokens, seqs) = (counts.tokens as f64, counts.seqs as f64);
        match *self {
            Aggregation::TokenMean => 1.0 / tokens,
            Aggregation::SeqMeanTokenMean => 1.0 / (seqs * len as f64),
            Aggregation::SeqMeanTokenSum => 1.0 / seqs,
            Aggregation::SeqMeanTokenSumNorm { l_max } => 1.0 / (seqs * l_max as f64),
        }
    }
}

/// Token and sequence counts over a whole optimizer step. A sequence with
/// no unmasked token is left out of every count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepCounts {
    /// Unmasked tokens.
    pub tokens: usize,
    /// Sequences with at least one unmasked token.
    pub seqs: usize,
}

impl StepCounts {
    /// Adds one micro-batch: its mask and its `cu_seqlens`.
    pub fn add(&mut self, mask: &[bool], cu_seqlens: &[u32]) {
        for r in seq_ranges(cu_seqlens) {
            let n = mask[r].iter().filter(|&&m| m).count();
            self.tokens += n;
            self.seqs += (n > 0) as usize;
        }
    }

    /// Counts over several micro-batches.
    pub fn of<'a>(micro_batches: impl IntoIterator<Item = (&'a [bool], &'a [u32])>) -> Self {
        let mut c = StepCounts::default();
        for (mask, cu) in micro_batches {
            c.add(mask, cu);
        }
        c
    }
}

/// Token ranges of the sequences described by `cu_seqlens`.
pub fn seq_ranges(cu_seqlens: &[u32]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    cu_seqlens.windows(2).map(|w| w[0] as usize..w[1] as usize)
}

/// Unmasked tokens of a range.
pub(crate) fn unmasked(mask: &[bool], r: std::ops::Range<usize>) -> usize {
    mask[r].iter().filter(|&&m| m).count()
}
