//! Token-level policy-gradient losses (DESIGN.md §4.2), with the KL penalty
//! in the loss (§4.3), an entropy bonus, truncated importance sampling
//! against the sampler's log-probs, and the aggregation modes of §4.4.
//!
//! Notation per token t of response i: `r = exp(clamp(logp − old_logp, ±20))`,
//! `A` the sequence's advantage, `g = ∂L_t/∂logp`. Each variant returns the
//! token's value and `g`, exactly as autograd differentiates the reference
//! code (ties between the two branches of `max` share the gradient evenly,
//! as `torch.maximum` does).

use super::kl::{token_kl, KlKind, KlPenalty};
use super::{seq_ranges, unmasked, Aggregation, StepCounts, TokenCoefs};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PolicyKind {
    /// PPO / GRPO clip with `[1−ε_low, 1+ε_high]` (ε_high > ε_low is DAPO's
    /// clip-higher) and, for A < 0, the dual clip `c` [0.2, 0.2, 3].
    Ppo { eps_low: f64, eps_high: f64, dual_clip: Option<f64> },
    /// Klear-Reasoner's gradient-preserving clip: the clipped branches keep
    /// the gradient `β·bound·A` instead of 0 [0.2, 0.28, 10, 1, 1].
    Gppo { eps_low: f64, eps_high: f64, dual_clip: Option<f64>, beta1: f64, beta2: f64 },
    /// `−sg(clamp(r, floor, cap))·A·logp` [floor none, cap 5].
    Cispo { floor: Option<f64>, cap: f64 },
    /// Sequence-level ratio `s_i = exp(mean_t log r)`, PPO clip on `s_i`, no
    /// dual clip, aggregation forced to seq-mean-token-mean [3e-4, 4e-4].
    Gspo { eps_low: f64, eps_high: f64 },
}

impl PolicyKind {
    pub fn ppo() -> Self {
        PolicyKind::Ppo { eps_low: 0.2, eps_high: 0.2, dual_clip: Some(3.0) }
    }
    pub fn gppo() -> Self {
        PolicyKind::Gppo { eps_low: 0.2, eps_high: 0.28, dual_clip: Some(10.0), beta1: 1.0, beta2: 1.0 }
    }
    pub fn cispo() -> Self {
        PolicyKind::Cispo { floor: None, cap: 5.0 }
    }
    pub fn gspo() -> Self {
        PolicyKind::Gspo { eps_low: 3e-4, eps_high: 4e-4 }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PolicyConfig {
    pub kind: PolicyKind,
    pub agg: Aggregation,
    pub kl: Option<KlPenalty>,
    /// `L_t −= entropy_coef · H_t` (needs the entropy from phase 1).
    pub entropy_coef: f64,
    /// Truncated importance sampling: the policy term is weighted by
    /// `min(exp(old_logp − sampler_logp), cap)`. Off by default.
    pub tis_cap: Option<f64>,
    /// GPPO's NLL term on correct responses (their recipe: 0.1).
    pub positive_nll_coef: f64,
    /// The reward that marks a response correct for that term.
    pub correct_score: f64,
}

impl PolicyConfig {
    pub fn new(kind: PolicyKind) -> Self {
        PolicyConfig {
            kind,
            agg: Aggregation::TokenMean,
            kl: None,
            entropy_coef: 0.0,
            tis_cap: None,
            positive_nll_coef: 0.0,
            correct_score: 1.0,
        }
    }

    /// The aggregation actually used (GSPO forces its own).
    pub fn aggregation(&self) -> Aggregation {
        match self.kind {
            PolicyKind::Gspo { .. } => Aggregation::SeqMeanTokenMean,
            _ => self.agg,
        }
    }

    /// Whether a token's coefficient depends on no other token's
    /// log-probability (every loss but GSPO, whose ratio is its sequence's
    /// mean): the lm_head can then run both phases in one pass per chunk
    /// (`model::head::one_pass_with`).
    pub fn token_local(&self) -> bool {
        // Exhaustive, so that a new kind must say which it is.
        match self.kind {
            PolicyKind::Ppo { .. } | PolicyKind::Gppo { .. } | PolicyKind::Cispo { .. } => true,
            PolicyKind::Gspo { .. } => false,
        }
    }

    /// Token counts of the whole step, plus the unmasked tokens of correct
    /// responses (the NLL term's denominator).
    pub fn correct_tokens<'a>(
        &self,
        micro_batches: impl IntoIterator<Item = (&'a [bool], &'a [u32], &'a [f32])>,
    ) -> usize {
        micro_batches
            .into_iter()
            .map(|(mask, cu, rewards)| {
                seq_ranges(cu)
                    .zip(rewards)
                    .filter(|(_, &r)| r as f64 == self.correct_score)
                    .map(|(r, _)| unmasked(mask, r))
                    .sum::<usize>()
            })
            .sum()
    }
}

/// One micro-batch's inputs: per-token arrays over its tokens, per-sequence
/// arrays over its sequences (`cu_seqlens` is local to the micro-batch).
#[derive(Clone, Copy, Debug)]
pub struct PolicyBatch<'a> {
    pub logp: &'a [f32],
    pub old_logp: &'a [f32],
    pub ref_logp: Option<&'a [f32]>,
    pub sampler_logp: Option<&'a [f32]>,
    pub entropy: Option<&'a [f32]>,
    pub mask: &'a [bool],
    pub cu_seqlens: &'a [u32],
    pub advantages: &'a [f32],
    pub rewards: &'a [f32],
}

/// Where a token fell (for the clip statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Region {
    Inside,
    Low,
    High,
    Dual,
}

/// Statistics a trainer logs; sums over tokens, so micro-batches merge by
/// [`PolicyStats::merge`] and [`PolicyStats::finish`] gives the means.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PolicyStats {
    pub tokens: usize,
    pub clipped_low: usize,
    pub clipped_high: usize,
    pub clipped_dual: usize,
    pub ratio_sum: f64,
    pub ratio_max: f64,
    /// Σ (old_logp − logp): verl's `ppo_kl`.
    pub ppo_kl_sum: f64,
    pub entropy_sum: f64,
    pub kl_sum: f64,
    pub sampler_diff_sum: f64,
    pub sampler_diff_max: f64,
}

/// Means of [`PolicyStats`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PolicyMeans {
    pub clip_frac_low: f64,
    pub clip_frac_high: f64,
    pub clip_frac_dual: f64,
    pub ratio_mean: f64,
    pub ratio_max: f64,
    pub ppo_kl: f64,
    pub entropy_mean: f64,
    pub kl_mean: f64,
    pub sampler_abs_diff_mean: f64,
    pub sampler_abs_diff_max: f64,
}

impl PolicyStats {
    pub fn merge(&mut self, o: &PolicyStats) {
        self.tokens += o.tokens;
        self.clipped_low += o.clipped_low;
        self.clipped_high += o.clipped_high;
        self.clipped_dual += o.clipped_dual;
        self.ratio_sum += o.ratio_sum;
        self.ratio_max = self.ratio_max.max(o.ratio_max);
        self.ppo_kl_sum += o.ppo_kl_sum;
        self.entropy_sum += o.entropy_sum;
        self.kl_sum += o.kl_sum;
        self.sampler_diff_sum += o.sampler_diff_sum;
        self.sampler_diff_max = self.sampler_diff_max.max(o.sampler_diff_max);
    }

    pub fn finish(&self) -> PolicyMeans {
        let n = self.tokens.max(1) as f64;
        PolicyMeans {
            clip_frac_low: self.clipped_low as f64 / n,
            clip_frac_high: self.clipped_high as f64 / n,
            clip_frac_dual: self.clipped_dual as f64 / n,
            ratio_mean: self.ratio_sum / n,
            ratio_max: self.ratio_max,
            ppo_kl: self.ppo_kl_sum / n,
            entropy_mean: self.entropy_sum / n,
            kl_mean: self.kl_sum / n,
            sampler_abs_diff_mean: self.sampler_diff_sum / n,
            sampler_abs_diff_max: self.sampler_diff_max,
        }
    }
}

/// The clipped surrogate `max(−A·r, −A·clip(r))` then, for A < 0, the dual
/// clip `min(·, −c·A)`: value and `∂/∂logp` (∂r/∂logp = r). `preserve` is
/// GPPO's `(β1, β2)`: the clipped branch is `β·bound/sg(r)·r`, whose
/// gradient is `β·bound` instead of PPO's 0.
fn clipped_surrogate(
    r: f64,
    a: f64,
    eps_low: f64,
    eps_high: f64,
    dual: Option<f64>,
    preserve: Option<(f64, f64)>,
) -> (f64, f64, Region) {
    let (lo, hi) = (1.0 - eps_low, 1.0 + eps_high);
    let (pg1, g1) = (-a * r, -a * r);
    let (clip_value, clip_grad, region) = if r < lo {
        match preserve {
            Some((b1, _)) => (b1 * lo, b1 * lo, Region::Low),
            None => (lo, 0.0, Region::Low),
        }
    } else if r > hi {
        match preserve {
            Some((_, b2)) => (b2 * hi, b2 * hi, Region::High),
            None => (hi, 0.0, Region::High),
        }
    } else {
        (r, r, Region::Inside)
    };
    let (pg2, g2) = (-a * clip_value, -a * clip_grad);
    let (mut value, mut grad) = if pg1 > pg2 {
        (pg1, g1)
    } else if pg2 > pg1 {
        (pg2, g2)
    } else {
        (pg1, 0.5 * (g1 + g2))
    };
    // The statistics name the branch that clips: A > 0 above the band,
    // A < 0 below it (elsewhere the unclipped branch wins the max).
    let mut region = match region {
        Region::High if a > 0.0 => Region::High,
        Region::Low if a < 0.0 => Region::Low,
        _ => Region::Inside,
    };
    if let Some(c) = dual {
        if a < 0.0 {
            let d = -c * a;
            if d < value {
                (value, grad, region) = (d, 0.0, Region::Dual);
            } else if d == value {
                grad *= 0.5;
            }
        }
    }
    (value, grad, region)
}

/// The settings of one micro-batch's coefficient pass in the form the GPU
/// kernel takes them (`PolicyParams` of `kernels/include/policy.h`): the
/// variant, KL and aggregation as codes, every number in f64 as
/// [`policy_loss`] uses it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PolicyKernelSettings {
    pub eps_low: f64,
    pub eps_high: f64,
    pub dual_clip: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub cispo_floor: f64,
    pub cispo_cap: f64,
    pub kl_coef: f64,
    pub entropy_coef: f64,
    pub tis_cap: f64,
    /// `positive_nll_coef / correct_tokens` (0: no NLL term).
    pub nll_k: f64,
    pub correct_score: f64,
    pub step_tokens: f64,
    pub step_seqs: f64,
    pub l_max: f64,
    /// 0 ppo, 1 gppo, 2 cispo, 3 gspo.
    pub kind: u32,
    /// 0 none, 1 k1, 2 k2, 3 k3, 4 k3+.
    pub kl_kind: u32,
    /// 0 token-mean, 1 seq-mean-token-mean, 2 seq-mean-token-sum, 3 seq-mean-token-sum-norm.
    pub agg: u32,
    pub has_dual: bool,
    pub has_floor: bool,
    pub has_tis: bool,
}

impl PolicyConfig {
    /// The kernel's settings for a step with `counts` and `correct_tokens`
    /// (as [`policy_loss`] takes them).
    pub fn kernel_settings(&self, counts: &StepCounts, correct_tokens: usize) -> PolicyKernelSettings {
        let mut k = PolicyKernelSettings {
            beta1: 1.0,
            beta2: 1.0,
            entropy_coef: self.entropy_coef,
            correct_score: self.correct_score,
            step_tokens: counts.tokens as f64,
            step_seqs: counts.seqs as f64,
            ..Default::default()
        };
        match self.kind {
            PolicyKind::Ppo { eps_low, eps_high, dual_clip } => {
                (k.kind, k.eps_low, k.eps_high) = (0, eps_low, eps_high);
                (k.has_dual, k.dual_clip) = (dual_clip.is_some(), dual_clip.unwrap_or(0.0));
            }
            PolicyKind::Gppo { eps_low, eps_high, dual_clip, beta1, beta2 } => {
                (k.kind, k.eps_low, k.eps_high, k.beta1, k.beta2) = (1, eps_low, eps_high, beta1, beta2);
                (k.has_dual, k.dual_clip) = (dual_clip.is_some(), dual_clip.unwrap_or(0.0));
            }
            PolicyKind::Cispo { floor, cap } => {
                (k.kind, k.cispo_cap) = (2, cap);
                (k.has_floor, k.cispo_floor) = (floor.is_some(), floor.unwrap_or(0.0));
            }
            PolicyKind::Gspo { eps_low, eps_high } => (k.kind, k.eps_low, k.eps_high) = (3, eps_low, eps_high),
        }
        if let Some(kl) = self.kl {
            k.kl_coef = kl.coef;
            k.kl_kind = match kl.kind {
                KlKind::K1 => 1,
                KlKind::K2 => 2,
                KlKind::K3 => 3,
                KlKind::K3Plus => 4,
            };
        }
        k.agg = match self.aggregation() {
            Aggregation::TokenMean => 0,
            Aggregation::SeqMeanTokenMean => 1,
            Aggregation::SeqMeanTokenSum => 2,
            Aggregation::SeqMeanTokenSumNorm { l_max } => {
                k.l_max = l_max as f64;
                3
            }
        };
        (k.has_tis, k.tis_cap) = (self.tis_cap.is_some(), self.tis_cap.unwrap_or(0.0));
        if self.positive_nll_coef != 0.0 && correct_tokens > 0 {
            k.nll_k = self.positive_nll_coef / correct_tokens as f64;
        }
        k
    }
}

/// Column `i` of a sequence's row of the kernel's per-sequence sums (the
/// `ENGINE_PS_*` order of `kernels/include/policy.h`) folded into the loss
/// and [`PolicyStats`], sequences in order.
pub fn stats_from_rows(rows: &[f64]) -> (f64, PolicyStats) {
    const COLS: usize = 12;
    assert_eq!(rows.len() % COLS, 0, "policy statistics: rows of {COLS}");
    let mut loss = 0.0;
    let mut st = PolicyStats::default();
    for r in rows.chunks(COLS) {
        loss += r[0];
        st.merge(&PolicyStats {
            tokens: r[1] as usize,
            clipped_low: r[2] as usize,
            clipped_high: r[3] as usize,
            clipped_dual: r[4] as usize,
            ratio_sum: r[5],
            ratio_max: r[6],
            ppo_kl_sum: r[7],
            entropy_sum: r[8],
            kl_sum: r[9],
            sampler_diff_sum: r[10],
            sampler_diff_max: r[11],
        });
    }
    (loss, st)
}

/// Output of [`policy_loss`] for one micro-batch.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyOutput {
    /// This micro-batch's share of the step's loss.
    pub loss: f64,
    pub coefs: TokenCoefs,
    pub stats: PolicyStats,
}

/// The loss of one micro-batch and its per-token coefficients. `counts`
/// are the whole step's ([`StepCounts::of`]); `correct_tokens` is
/// [`PolicyConfig::correct_tokens`] over the step (only read when
/// `positive_nll_coef > 0`).
pub fn policy_loss(cfg: &PolicyConfig, b: &PolicyBatch, counts: &StepCounts, correct_tokens: usize) -> PolicyOutput {
    let n = b.logp.len();
    for (name, len) in [("old_logp", b.old_logp.len()), ("mask", b.mask.len())]
        .into_iter()
        .chain(b.ref_logp.map(|x| ("ref_logp", x.len())))
        .chain(b.sampler_logp.map(|x| ("sampler_logp", x.len())))
        .chain(b.entropy.map(|x| ("entropy", x.len())))
    {
        assert_eq!(len, n, "policy_loss: {name} has {len} entries for {n} tokens");
    }
    let n_seqs = b.cu_seqlens.len() - 1;
    assert!(
        b.advantages.len() == n_seqs && b.rewards.len() == n_seqs,
        "policy_loss: one advantage and reward per sequence"
    );
    assert!(cfg.kl.is_none() || b.ref_logp.is_some(), "policy_loss: a KL penalty needs ref_logp");
    assert!(cfg.tis_cap.is_none() || b.sampler_logp.is_some(), "policy_loss: TIS needs sampler_logp");
    assert!(cfg.entropy_coef == 0.0 || b.entropy.is_some(), "policy_loss: an entropy bonus needs the entropy");

    let agg = cfg.aggregation();
    let mut coef = vec![0.0f32; n];
    let mut ent_coef = (cfg.entropy_coef != 0.0).then(|| vec![0.0f32; n]);
    let mut stats = PolicyStats::default();
    let mut loss = 0.0f64;
    let nll = cfg.positive_nll_coef != 0.0 && correct_tokens > 0;

    for (s, range) in seq_ranges(b.cu_seqlens).enumerate() {
        let len = unmasked(b.mask, range.clone());
        if len == 0 {
            continue;
        }
        let w = agg.weight(counts, len);
        let a = b.advantages[s] as f64;
        let correct = nll && b.rewards[s] as f64 == cfg.correct_score;
        // GSPO: one ratio per sequence, from the mean log-ratio.
        let seq_log_ratio = match cfg.kind {
            PolicyKind::Gspo { .. } => {
                let sum: f64 =
                    range.clone().filter(|&t| b.mask[t]).map(|t| b.logp[t] as f64 - b.old_logp[t] as f64).sum();
                Some(sum / len as f64)
            }
            _ => None,
        };
        for t in range.filter(|&t| b.mask[t]) {
            let logp = b.logp[t] as f64;
            let log_ratio = logp - b.old_logp[t] as f64;
            let r = log_ratio.clamp(-20.0, 20.0).exp();
            let (mut value, mut g, region, ratio) = match cfg.kind {
                PolicyKind::Ppo { eps_low, eps_high, dual_clip } => {
                    let (v, g, reg) = clipped_surrogate(r, a, eps_low, eps_high, dual_clip, None);
                    (v, g, reg, r)
                }
                PolicyKind::Gppo { eps_low, eps_high, dual_clip, beta1, beta2 } => {
                    let (v, g, reg) = clipped_surrogate(r, a, eps_low, eps_high, dual_clip, Some((beta1, beta2)));
                    (v, g, reg, r)
                }
                PolicyKind::Cispo { floor, cap } => {
                    let clipped = r.min(cap).max(floor.unwrap_or(f64::NEG_INFINITY));
                    let region = if r > cap {
                        Region::High
                    } else if floor.is_some_and(|f| r < f) {
                        Region::Low
                    } else {
                        Region::Inside
                    };
                    (-clipped * a * logp, -clipped * a, region, r)
                }
                PolicyKind::Gspo { eps_low, eps_high } => {
                    let log_s = seq_log_ratio.expect("set for GSPO");
                    // The clamp at 10 applies to the whole log-ratio, so it
                    // stops the gradient when it bites.
                    let s = log_s.min(10.0).exp();
                    let ds = if log_s > 10.0 { 0.0 } else { s };
                    let (v, g, reg) = clipped_surrogate(s, a, eps_low, eps_high, None, None);
                    // clipped_surrogate differentiates through s with ∂s = s; rescale to ds.
                    let g = if s != 0.0 { g / s * ds } else { 0.0 };
                    (v, g, reg, s)
                }
            };
            if let Some(cap) = cfg.tis_cap {
                let sampler = b.sampler_logp.expect("checked")[t] as f64;
                let wt = (b.old_logp[t] as f64 - sampler).exp().min(cap);
                value *= wt;
                g *= wt;
            }
            let mut kl_value = 0.0;
            if let Some(kl) = cfg.kl {
                let (kv, kg) = token_kl(kl.kind, logp, b.ref_logp.expect("checked")[t] as f64);
                kl_value = kv;
                value += kl.coef * kv;
                g += kl.coef * kg;
            }
            let entropy = b.entropy.map_or(0.0, |h| h[t] as f64);
            value -= cfg.entropy_coef * entropy;
            if let Some(ec) = ent_coef.as_mut() {
                ec[t] = (-cfg.entropy_coef * w) as f32;
            }
            loss += w * value;
            let mut c = w * g;
            if correct {
                let k = cfg.positive_nll_coef / correct_tokens as f64;
                loss -= k * logp;
                c -= k;
            }
            coef[t] = c as f32;

            stats.tokens += 1;
            match region {
                Region::Low => stats.clipped_low += 1,
                Region::High => stats.clipped_high += 1,
                Region::Dual => stats.clipped_dual += 1,
                Region::Inside => {}
            }
            stats.ratio_sum += ratio;
            stats.ratio_max = stats.ratio_max.max(ratio);
            stats.ppo_kl_sum -= log_ratio;
            stats.entropy_sum += entropy;
            stats.kl_sum += kl_value;
            if let Some(sp) = b.sampler_logp {
                let d = (sp[t] as f64 - b.old_logp[t] as f64).abs();
                stats.sampler_diff_sum += d;
                stats.sampler_diff_max = stats.sampler_diff_max.max(d);
            }
        }
    }
    PolicyOutput { loss, coefs: TokenCoefs { logp: coef, entropy: ent_coef }, stats }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GPPO keeps a gradient exactly where PPO's is zero outside the dual
    /// clip, with DESIGN.md §4.2's magnitudes: −(1+ε_h)·A above the band for
    /// A > 0, −(1−ε_l)·A below it for A < 0; both are 0 in the dual clip.
    #[test]
    fn gppo_preserves_the_gradient_where_ppo_drops_it() {
        let (el, eh, c) = (0.2, 0.28, 10.0);
        for &a in &[1.5, -0.7] {
            for &r in &[0.3, 0.79, 0.81, 1.0, 1.27, 1.29, 2.0, 9.0, 11.0] {
                let (pv, pg, preg) = clipped_surrogate(r, a, el, eh, Some(c), None);
                let (gv, gg, greg) = clipped_surrogate(r, a, el, eh, Some(c), Some((1.0, 1.0)));
                assert_eq!(preg, greg);
                assert!((pv - gv).abs() < 1e-12, "same forward value at r={r}, A={a}");
                match preg {
                    Region::High => {
                        assert_eq!(pg, 0.0);
                        assert!((gg - (-(1.0 + eh) * a)).abs() < 1e-12);
                    }
                    Region::Low => {
                        assert_eq!(pg, 0.0);
                        assert!((gg - (-(1.0 - el) * a)).abs() < 1e-12);
                    }
                    Region::Dual => assert_eq!((pg, gg), (0.0, 0.0)),
                    Region::Inside => {
                        assert!((pg - (-a * r)).abs() < 1e-12 && (gg - pg).abs() < 1e-12);
                    }
                }
            }
        }
        // Each region is reached.
        assert_eq!(clipped_surrogate(2.0, 1.0, el, eh, Some(c), None).2, Region::High);
        assert_eq!(clipped_surrogate(0.5, -1.0, el, eh, Some(c), None).2, Region::Low);
        assert_eq!(clipped_surrogate(11.0, -1.0, el, eh, Some(c), None).2, Region::Dual);
        assert_eq!(clipped_surrogate(0.5, 1.0, el, eh, Some(c), None).2, Region::Inside);
    }
}
