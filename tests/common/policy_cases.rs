//! Policy-loss cases shared by the GPU coefficient pass's tests
//! (tests/cuda/policy.rs) and its CPU emulation (tests/kernel_emu.rs): every
//! variant, KL estimator and aggregation, with TIS, the entropy bonus and
//! GPPO's NLL term, over sequences of odd lengths (one fully masked, one
//! longer than a block) with ratios in every clip region, GSPO sequence
//! log-ratios past its clamp at 10 and k3 log-ratios past its ±20 clamp; the
//! reference is the CPU loss library's `policy_loss`. [`Regions`] tallies
//! what the cases reach, so a test can insist every region stays covered.

use engine::loss::policy::{policy_loss, stats_from_rows, PolicyBatch, PolicyConfig, PolicyKind, PolicyOutput};
use engine::loss::{Aggregation, KlKind, KlPenalty, StepCounts};
use engine::rollout::Stream;

pub struct PolicyCase {
    pub name: &'static str,
    pub cfg: PolicyConfig,
    pub logp: Vec<f32>,
    pub old_logp: Vec<f32>,
    pub ref_logp: Option<Vec<f32>>,
    pub sampler_logp: Option<Vec<f32>>,
    pub entropy: Option<Vec<f32>>,
    pub mask: Vec<bool>,
    pub cu_seqlens: Vec<u32>,
    pub advantages: Vec<f32>,
    pub rewards: Vec<f32>,
    /// The step's counts: this micro-batch's plus other micro-batches'.
    pub counts: StepCounts,
    pub correct_tokens: usize,
    /// Threads per block for the emulator (the GPU runs 256).
    pub threads: u32,
}

impl PolicyCase {
    pub fn batch(&self) -> PolicyBatch<'_> {
        PolicyBatch {
            logp: &self.logp,
            old_logp: &self.old_logp,
            ref_logp: self.ref_logp.as_deref(),
            sampler_logp: self.sampler_logp.as_deref(),
            entropy: self.entropy.as_deref(),
            mask: &self.mask,
            cu_seqlens: &self.cu_seqlens,
            advantages: &self.advantages,
            rewards: &self.rewards,
        }
    }
    pub fn expected(&self) -> PolicyOutput {
        policy_loss(&self.cfg, &self.batch(), &self.counts, self.correct_tokens)
    }
}

const LENS: [usize; 6] = [9, 1, 23, 6, 40, 300];
const FULLY_MASKED: usize = 3;

struct Rand(Stream, u64);
impl Rand {
    fn u(&mut self) -> f64 {
        self.1 += 1;
        self.0.uniform(self.1)
    }
    /// Uniform in [-s, s).
    fn sym(&mut self, s: f64) -> f64 {
        s * (2.0 * self.u() - 1.0)
    }
}

#[allow(clippy::too_many_arguments)]
fn case(
    i: u64,
    name: &'static str,
    cfg: PolicyConfig,
    spread: f64,
    with_ref: bool,
    with_sampler: bool,
    with_entropy: bool,
    threads: u32,
) -> PolicyCase {
    let mut r = Rand(Stream::new(77, i, 0), 0);
    let n: usize = LENS.iter().sum();
    let mut cu = vec![0u32];
    let mut mask = Vec::with_capacity(n);
    for (s, &len) in LENS.iter().enumerate() {
        cu.push(cu[s] + len as u32);
        // A prompt of about a third of the sequence, then the response.
        let prompt = len / 3;
        mask.extend((0..len).map(|t| s != FULLY_MASKED && t >= prompt));
    }
    let logp: Vec<f32> = (0..n).map(|_| -(5.0 * r.u()) as f32).collect();
    // Every fifth token has ratio exactly 1 (ties between the clip branches).
    let old_logp: Vec<f32> =
        logp.iter().enumerate().map(|(t, &l)| if t % 5 == 0 { l } else { l + r.sym(spread) as f32 }).collect();
    let ref_logp = with_ref.then(|| logp.iter().map(|&l| l + r.sym(3.0) as f32).collect());
    let sampler_logp = with_sampler.then(|| old_logp.iter().map(|&l| l + r.sym(0.5) as f32).collect());
    let entropy = with_entropy.then(|| (0..n).map(|_| (3.0 * r.u()) as f32).collect());
    let seqs = LENS.len();
    let advantages: Vec<f32> = (0..seqs).map(|s| if s == 2 { 0.0 } else { r.sym(1.5) as f32 }).collect();
    let rewards: Vec<f32> = (0..seqs).map(|s| (s % 2) as f32).collect();
    let mut counts = StepCounts::default();
    counts.add(&mask, &cu);
    // Other micro-batches of the same step.
    counts.tokens += 37;
    counts.seqs += 2;
    let correct_tokens = cfg.correct_tokens([(mask.as_slice(), cu.as_slice(), rewards.as_slice())]) + 11;
    PolicyCase {
        name,
        cfg,
        logp,
        old_logp,
        ref_logp,
        sampler_logp,
        entropy,
        mask,
        cu_seqlens: cu,
        advantages,
        rewards,
        counts,
        correct_tokens,
        threads,
    }
}

pub fn policy_cases() -> Vec<PolicyCase> {
    let with = |kind: PolicyKind, f: &dyn Fn(&mut PolicyConfig)| {
        let mut c = PolicyConfig::new(kind);
        f(&mut c);
        c
    };
    let kl = |kind, coef| Some(KlPenalty { kind, coef });
    vec![
        case(0, "ppo, token-mean", PolicyConfig::new(PolicyKind::ppo()), 1.5, false, false, false, 256),
        case(
            1,
            "ppo clip-higher, dual clip, seq-mean-token-mean",
            with(PolicyKind::Ppo { eps_low: 0.2, eps_high: 0.28, dual_clip: Some(3.0) }, &|c| {
                c.agg = Aggregation::SeqMeanTokenMean
            }),
            1.5,
            false,
            false,
            false,
            128,
        ),
        case(
            2,
            "gppo, positive NLL, seq-mean-token-sum",
            with(PolicyKind::gppo(), &|c| {
                c.positive_nll_coef = 0.1;
                c.agg = Aggregation::SeqMeanTokenSum;
            }),
            1.5,
            false,
            false,
            false,
            64,
        ),
        case(
            3,
            "gppo β1 0.5 β2 2, k2",
            with(
                PolicyKind::Gppo { eps_low: 0.2, eps_high: 0.28, dual_clip: Some(10.0), beta1: 0.5, beta2: 2.0 },
                &|c| c.kl = kl(KlKind::K2, 0.1),
            ),
            2.5,
            true,
            false,
            false,
            96,
        ),
        case(
            4,
            "cispo, k3, entropy",
            with(PolicyKind::cispo(), &|c| {
                c.kl = kl(KlKind::K3, 0.05);
                c.entropy_coef = 0.01;
            }),
            2.0,
            true,
            false,
            true,
            256,
        ),
        case(
            5,
            "cispo floor 0.8 cap 1.2, k3+, TIS, Dr.GRPO norm",
            with(PolicyKind::Cispo { floor: Some(0.8), cap: 1.2 }, &|c| {
                c.kl = kl(KlKind::K3Plus, 0.02);
                c.tis_cap = Some(1.2);
                c.agg = Aggregation::SeqMeanTokenSumNorm { l_max: 64 };
            }),
            1.0,
            true,
            true,
            false,
            128,
        ),
        case(6, "gspo, near on-policy", PolicyConfig::new(PolicyKind::gspo()), 1e-3, false, false, false, 256),
        case(7, "gspo, off-policy", PolicyConfig::new(PolicyKind::gspo()), 0.5, false, false, false, 32),
        case(
            8,
            "ppo, k1, entropy, TIS, NLL",
            with(PolicyKind::ppo(), &|c| {
                c.kl = kl(KlKind::K1, 0.1);
                c.entropy_coef = 0.003;
                c.tis_cap = Some(2.0);
                c.positive_nll_coef = 0.2;
            }),
            1.5,
            true,
            true,
            true,
            64,
        ),
        gspo_past_the_clamp(case(
            9,
            "gspo, sequence log-ratios past the clamp at 10",
            PolicyConfig::new(PolicyKind::gspo()),
            0.5,
            false,
            false,
            false,
            64,
        )),
        k3_past_the_clamp(case(
            10,
            "ppo, k3 with |ref − logp| past 20",
            with(PolicyKind::ppo(), &|c| c.kl = kl(KlKind::K3, 0.1)),
            1.5,
            true,
            false,
            false,
            128,
        )),
        k3_past_the_clamp(case(
            11,
            "gppo, k3+ with |ref − logp| past 20",
            with(PolicyKind::gppo(), &|c| c.kl = kl(KlKind::K3Plus, 0.05)),
            1.5,
            true,
            false,
            false,
            256,
        )),
    ]
}

/// GSPO's sequence log-ratio `log s` (the mean of `logp − old_logp` over
/// the unmasked tokens) moved per sequence (LENS: 9, 1, 23, 6, 40, 300
/// tokens): past the clamp at 10 with A < 0 (where the clamp stops a
/// gradient that would otherwise be −A·s·w) and with A > 0 (clipped high
/// anyway), 9.5 (just under it: the gradient flows, s ≈ 1.3e4) and −12 (s
/// near 0). The case's spread of 0.5 keeps each mean within ±0.5 of the
/// shift, away from 10.
fn gspo_past_the_clamp(mut c: PolicyCase) -> PolicyCase {
    let shift = [12.0f32, -12.0, 0.0, 11.0, 9.5, 10.5];
    c.advantages = vec![-1.2, 0.7, 0.0, -0.5, -0.9, 1.1];
    for (s, w) in c.cu_seqlens.windows(2).enumerate() {
        for t in w[0] as usize..w[1] as usize {
            c.old_logp[t] -= shift[s];
        }
    }
    c
}

/// k3's `raw = ref_logp − logp` past its clamp at ±20 on some tokens: +25
/// every seventh token, −25 every eleventh; the rest keep the case's ±3,
/// which reaches the value's clamp at 10 alone above raw ≈ 2.6. Wherever
/// the ±20 clamp bites the value's clamp bites too (e^20 − 21 and 19 are
/// past 10), so its effect cannot be seen on its own: these tokens check
/// the value 10 and k3's gradient 0 there (k3+'s is `logp − ref`), with no
/// overflow on the way (an emulated kernel without the ±20 clamp passes).
fn k3_past_the_clamp(mut c: PolicyCase) -> PolicyCase {
    let refl = c.ref_logp.as_mut().expect("a KL case has ref_logp");
    for (t, r) in refl.iter_mut().enumerate() {
        if t % 7 == 2 {
            *r = c.logp[t] + 25.0;
        } else if t % 11 == 5 {
            *r = c.logp[t] - 25.0;
        }
    }
    c
}

/// What a set of cases reaches: the clip counts from the coefficient pass's
/// per-sequence sums (`rows`, as [`stats_from_rows`] reads them), GPPO's
/// clipped tokens (where its gradient is preserved: GPPO's low and high
/// regions are exactly PPO's zero-gradient ones outside the dual clip), and,
/// from the inputs, GSPO sequences past the clamp at 10 with A < 0 and k3
/// tokens past the clamp at ±20.
#[derive(Clone, Copy, Debug, Default)]
pub struct Regions {
    pub clipped_low: usize,
    pub clipped_high: usize,
    pub clipped_dual: usize,
    pub gppo_kept_low: usize,
    pub gppo_kept_high: usize,
    pub gspo_clamped: usize,
    pub k3_clamped: usize,
}

impl Regions {
    /// Adds one case, with the per-sequence sums of its run.
    pub fn add(&mut self, c: &PolicyCase, rows: &[f64]) {
        let (_, st) = stats_from_rows(rows);
        self.clipped_low += st.clipped_low;
        self.clipped_high += st.clipped_high;
        self.clipped_dual += st.clipped_dual;
        if matches!(c.cfg.kind, PolicyKind::Gppo { .. }) {
            self.gppo_kept_low += st.clipped_low;
            self.gppo_kept_high += st.clipped_high;
        }
        let unmasked = |w: &[u32]| (w[0] as usize..w[1] as usize).filter(|&t| c.mask[t]);
        if matches!(c.cfg.kind, PolicyKind::Gspo { .. }) {
            for (s, w) in c.cu_seqlens.windows(2).enumerate() {
                let lr: Vec<f64> = unmasked(w).map(|t| c.logp[t] as f64 - c.old_logp[t] as f64).collect();
                if !lr.is_empty() && lr.iter().sum::<f64>() / lr.len() as f64 > 10.0 && c.advantages[s] < 0.0 {
                    self.gspo_clamped += 1;
                }
            }
        }
        if let (Some(KlPenalty { kind: KlKind::K3 | KlKind::K3Plus, .. }), Some(refl)) = (c.cfg.kl, &c.ref_logp) {
            self.k3_clamped += c
                .mask
                .iter()
                .enumerate()
                .filter(|&(t, &m)| m && (refl[t] as f64 - c.logp[t] as f64).abs() > 20.0)
                .count();
        }
    }

    /// Panics unless every region was reached at least once.
    pub fn assert_all_reached(&self) {
        println!("regions reached: {self:?}");
        let r = self;
        for (what, n) in [
            ("clipped low", r.clipped_low),
            ("clipped high", r.clipped_high),
            ("dual clip", r.clipped_dual),
            ("GPPO's preserved gradient below the band", r.gppo_kept_low),
            ("GPPO's preserved gradient above the band", r.gppo_kept_high),
            ("GSPO's clamp at log s = 10 with A < 0", r.gspo_clamped),
            ("k3's clamp at |ref − logp| = 20", r.k3_clamped),
        ] {
            assert!(n > 0, "no case reaches {what}: {r:?}");
        }
    }
}

/// Where the kernel's coefficients and per-sequence sums differ from
/// `policy_loss`: coefficients to 1e-6 relative, the loss and the sums to
/// 1e-9 relative, counts exactly.
pub fn policy_mismatches(c: &PolicyCase, coef: &[f32], ent_coef: Option<&[f32]>, rows: &[f64]) -> Vec<String> {
    let want = c.expected();
    let mut bad = Vec::new();
    let close32 = |a: f32, b: f32| (a - b).abs() <= 1e-6 * b.abs().max(1e-20) && !a.is_nan();
    for (t, (&g, &w)) in coef.iter().zip(&want.coefs.logp).enumerate() {
        if !close32(g, w) {
            bad.push(format!("{}: coef[{t}] {g:e}, CPU {w:e}", c.name));
        }
    }
    match (ent_coef, &want.coefs.entropy) {
        (Some(g), Some(w)) => {
            for (t, (&g, &w)) in g.iter().zip(w).enumerate() {
                if !close32(g, w) {
                    bad.push(format!("{}: ent_coef[{t}] {g:e}, CPU {w:e}", c.name));
                }
            }
        }
        (None, None) => {}
        _ => bad.push(format!("{}: entropy coefficients present on one side only", c.name)),
    }
    let (loss, st) = stats_from_rows(rows);
    let w = &want.stats;
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1e-12);
    let pairs = [
        ("loss", loss, want.loss),
        ("ratio_sum", st.ratio_sum, w.ratio_sum),
        ("ratio_max", st.ratio_max, w.ratio_max),
        ("ppo_kl_sum", st.ppo_kl_sum, w.ppo_kl_sum),
        ("entropy_sum", st.entropy_sum, w.entropy_sum),
        ("kl_sum", st.kl_sum, w.kl_sum),
        ("sampler_diff_sum", st.sampler_diff_sum, w.sampler_diff_sum),
        ("sampler_diff_max", st.sampler_diff_max, w.sampler_diff_max),
    ];
    for (what, a, b) in pairs {
        if !close(a, b) {
            bad.push(format!("{}: {what} {a:e}, CPU {b:e}", c.name));
        }
    }
    let counts = [
        ("tokens", st.tokens, w.tokens),
        ("clipped_low", st.clipped_low, w.clipped_low),
        ("clipped_high", st.clipped_high, w.clipped_high),
        ("clipped_dual", st.clipped_dual, w.clipped_dual),
    ];
    for (what, a, b) in counts {
        if a != b {
            bad.push(format!("{}: {what} {a}, CPU {b}", c.name));
        }
    }
    bad
}

/// A micro-batch of DPO pairs: per-token log-probs and reference log-probs,
/// a prompt prefix masked in each sequence, one rejected response fully
/// masked, one response longer than a block.
pub struct DpoCase {
    pub name: &'static str,
    pub cfg: engine::loss::DpoConfig,
    pub logp: Vec<f32>,
    pub ref_logp: Vec<f32>,
    pub mask: Vec<bool>,
    pub cu_seqlens: Vec<u32>,
    pub pairs_in_step: usize,
    pub threads: u32,
}

impl DpoCase {
    pub fn expected(&self) -> (f64, engine::loss::TokenCoefs, engine::loss::DpoStats) {
        engine::loss::dpo_loss(&self.cfg, &self.logp, &self.ref_logp, &self.mask, &self.cu_seqlens, self.pairs_in_step)
    }
}

pub fn dpo_cases() -> Vec<DpoCase> {
    use engine::loss::{DpoConfig, DpoLossType};
    let lens = [7usize, 12, 1, 5, 30, 300, 9, 4];
    let configs = [
        ("sigmoid", DpoConfig { loss_type: DpoLossType::Sigmoid, beta: 0.1, label_smoothing: 0.0 }, 128),
        (
            "sigmoid, label smoothing 0.2",
            DpoConfig { loss_type: DpoLossType::Sigmoid, beta: 0.5, label_smoothing: 0.2 },
            64,
        ),
        ("ipo", DpoConfig { loss_type: DpoLossType::Ipo, beta: 0.3, label_smoothing: 0.0 }, 256),
    ];
    configs
        .into_iter()
        .enumerate()
        .map(|(i, (name, cfg, threads))| {
            let mut r = Rand(Stream::new(91, i as u64, 0), 0);
            let mut cu = vec![0u32];
            let mut mask = Vec::new();
            for (s, &len) in lens.iter().enumerate() {
                cu.push(cu[s] + len as u32);
                // Sequence 3 (a rejected response) has no unmasked token.
                mask.extend((0..len).map(|t| s != 3 && t >= len / 4));
            }
            let n = mask.len();
            let logp: Vec<f32> = (0..n).map(|_| -(4.0 * r.u()) as f32).collect();
            let ref_logp: Vec<f32> = logp.iter().map(|&l| l + r.sym(0.8) as f32).collect();
            DpoCase { name, cfg, logp, ref_logp, mask, cu_seqlens: cu, pairs_in_step: lens.len() / 2 + 3, threads }
        })
        .collect()
}
