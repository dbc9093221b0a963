//! DPO (DESIGN.md §4.7) on summed response log-probabilities, as in TRL:
//! the sigmoid loss with label smoothing, and IPO on length-averaged
//! log-probabilities. Sequences come in pairs: `2k` chosen, `2k+1` rejected.

use super::{seq_ranges, unmasked, TokenCoefs};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DpoLossType {
    Sigmoid,
    Ipo,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpoConfig {
    pub loss_type: DpoLossType,
    pub beta: f64,
    pub label_smoothing: f64,
}

/// Sums over pairs; [`DpoStats::finish`] gives TRL's logged means.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DpoStats {
    pub pairs: usize,
    pub reward_chosen_sum: f64,
    pub reward_rejected_sum: f64,
    pub correct: usize,
}

impl DpoStats {
    /// (mean chosen reward, mean rejected reward, accuracy, mean margin).
    pub fn finish(&self) -> (f64, f64, f64, f64) {
        let n = self.pairs.max(1) as f64;
        let (c, r) = (self.reward_chosen_sum / n, self.reward_rejected_sum / n);
        (c, r, self.correct as f64 / n, c - r)
    }
}

impl DpoStats {
    /// Adds another micro-batch's sums.
    pub fn merge(&mut self, o: &DpoStats) {
        self.pairs += o.pairs;
        self.reward_chosen_sum += o.reward_chosen_sum;
        self.reward_rejected_sum += o.reward_rejected_sum;
        self.correct += o.correct;
    }
}

/// The settings in the form the GPU kernel takes them (`DpoParams` of
/// `kernels/include/dpo.h`), for a step of `pairs_in_step` pairs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpoKernelSettings {
    pub beta: f64,
    pub label_smoothing: f64,
    pub per_pair: f64,
    /// 0 sigmoid, 1 ipo.
    pub loss_type: u32,
}

impl DpoConfig {
    pub fn kernel_settings(&self, pairs_in_step: usize) -> DpoKernelSettings {
        DpoKernelSettings {
            beta: self.beta,
            label_smoothing: self.label_smoothing,
            per_pair: 1.0 / pairs_in_step as f64,
            loss_type: match self.loss_type {
                DpoLossType::Sigmoid => 0,
                DpoLossType::Ipo => 1,
            },
        }
    }
}

/// The kernel's per-pair rows (loss share, chosen reward, rejected reward,
/// correct) folded into the loss and [`DpoStats`], pairs in order.
pub fn dpo_stats_from_rows(rows: &[f64]) -> (f64, DpoStats) {
    assert_eq!(rows.len() % 4, 0, "dpo statistics: rows of 4");
    let mut loss = 0.0;
    let mut st = DpoStats::default();
    for r in rows.chunks(4) {
        loss += r[0];
        st.pairs += 1;
        st.reward_chosen_sum += r[1];
        st.reward_rejected_sum += r[2];
        st.correct += (r[3] != 0.0) as usize;
    }
    (loss, st)
}

fn log_sigmoid(x: f64) -> f64 {
    // log σ(x) = −log(1 + e^−x), stable for both signs.
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Loss of the pairs of one micro-batch (as a share of the mean over the
/// step's `pairs_in_step` pairs) and the per-token coefficients.
pub fn dpo_loss(
    cfg: &DpoConfig,
    logp: &[f32],
    ref_logp: &[f32],
    mask: &[bool],
    cu_seqlens: &[u32],
    pairs_in_step: usize,
) -> (f64, TokenCoefs, DpoStats) {
    let n_seqs = cu_seqlens.len() - 1;
    assert!(n_seqs.is_multiple_of(2), "dpo: sequences must come in (chosen, rejected) pairs");
    assert!(logp.len() == ref_logp.len() && logp.len() == mask.len(), "dpo: per-token lengths");
    let ranges: Vec<_> = seq_ranges(cu_seqlens).collect();
    // Summed (or, for IPO, length-averaged) log-probs of one sequence.
    let seq = |r: &std::ops::Range<usize>, x: &[f32]| -> (f64, usize) {
        let n = unmasked(mask, r.clone());
        let sum: f64 = r.clone().filter(|&t| mask[t]).map(|t| x[t] as f64).sum();
        (sum, n)
    };
    let mut coef = vec![0.0f32; logp.len()];
    let mut stats = DpoStats::default();
    let mut loss = 0.0;
    let per_pair = 1.0 / pairs_in_step as f64;
    for k in 0..n_seqs / 2 {
        let (rc, rr) = (&ranges[2 * k], &ranges[2 * k + 1]);
        let ((pc, nc), (pr, nr)) = (seq(rc, logp), seq(rr, logp));
        let ((qc, _), (qr, _)) = (seq(rc, ref_logp), seq(rr, ref_logp));
        // IPO works on length-averaged log-probs, its logged rewards too (as TRL).
        let (lc, lr) = match cfg.loss_type {
            DpoLossType::Sigmoid => (1.0, 1.0),
            DpoLossType::Ipo => (nc.max(1) as f64, nr.max(1) as f64),
        };
        let (chosen, rejected) = (cfg.beta * (pc - qc) / lc, cfg.beta * (pr - qr) / lr);
        stats.pairs += 1;
        stats.reward_chosen_sum += chosen;
        stats.reward_rejected_sum += rejected;
        stats.correct += (chosen > rejected) as usize;
        // dL/dπ for each token of the chosen and the rejected response.
        let (l, gc, gr) = match cfg.loss_type {
            DpoLossType::Sigmoid => {
                let h = cfg.beta * ((pc - qc) - (pr - qr));
                let ls = cfg.label_smoothing;
                let l = -(1.0 - ls) * log_sigmoid(h) - ls * log_sigmoid(-h);
                let dh = (1.0 - ls) * (sigmoid(h) - 1.0) + ls * sigmoid(h);
                (l, dh * cfg.beta, -dh * cfg.beta)
            }
            DpoLossType::Ipo => {
                let x = (pc - qc) / lc - (pr - qr) / lr - 1.0 / (2.0 * cfg.beta);
                (x * x, 2.0 * x / lc, -2.0 * x / lr)
            }
        };
        loss += per_pair * l;
        for (r, g) in [(rc, gc), (rr, gr)] {
            for t in r.clone().filter(|&t| mask[t]) {
                coef[t] = (per_pair * g) as f32;
            }
        }
    }
    (loss, TokenCoefs { logp: coef, entropy: None }, stats)
}
