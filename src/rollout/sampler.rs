//! Token sampling: temperature, top-k, top-p, min-p (applied in that order,
//! as transformers' logits warpers are), greedy at temperature 0, and a
//! counter-based random stream per sequence so a sequence's draws depend on
//! its seed and identity only, never on what else is in the batch.
//!
//! The stream's arithmetic is also `kernels/include/rng.h`, which the GPU
//! sampler (`kernels/sample.cu`, [`Backend::sample`](crate::backend::Backend::sample)) calls, so both draw the
//! same numbers; `tests/kernel_emu.rs` checks that the two agree bit for bit.
//!
//! Every sampled token comes with `log_softmax(z/T)[token]` of the
//! untruncated distribution — the quantity the trainer computes —
//! whatever the filters kept (at T = 0, `log_softmax(z)[token]`).

/// Sampling settings; a filter at its neutral value is off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off: drop tokens with p < min_p · p_max.
    pub min_p: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0 }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!("temperature must be ≥ 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min-p must be in [0, 1], got {}", self.min_p));
        }
        Ok(())
    }
}

/// The settings in the form the GPU sampler takes them (`SampleParams` of
/// `kernels/include/sample.h`): derived in f64 from the f32 settings exactly
/// as [`sample`] derives them, so both compute with the same numbers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KernelSettings {
    /// 1/T (0 when greedy).
    pub inv_temp: f64,
    /// 1 − top_p: the largest tail mass top-p drops.
    pub top_p_budget: f64,
    pub min_p: f64,
    pub top_k: u32,
    pub greedy: bool,
    /// Some filter is on ([`sample`]'s filtered path, not its one-exp path).
    pub filtered: bool,
    pub use_top_p: bool,
}

impl SamplingParams {
    pub fn kernel_settings(&self) -> KernelSettings {
        KernelSettings {
            inv_temp: if self.temperature > 0.0 { 1.0 / self.temperature as f64 } else { 0.0 },
            top_p_budget: 1.0 - self.top_p as f64,
            min_p: self.min_p as f64,
            top_k: self.top_k.min(u32::MAX as usize) as u32,
            greedy: self.temperature == 0.0,
            filtered: !(self.top_k == 0 && self.top_p >= 1.0 && self.min_p <= 0.0),
            use_top_p: self.top_p < 1.0,
        }
    }
}

/// SplitMix64's finaliser: a bijective mix of 64 bits.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The random stream of one sequence: draw `step` is a pure function of
/// (seed, prompt, sample, step).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stream {
    key: u64,
}

impl Stream {
    pub fn new(seed: u64, prompt: u64, sample: u64) -> Self {
        Stream { key: mix(mix(mix(seed) ^ prompt) ^ sample.wrapping_mul(0xD6E8_FEB8_6659_FD93)) }
    }

    /// A uniform number in [0, 1) with 53 random bits.
    pub fn uniform(&self, step: u64) -> f64 {
        (mix(self.key ^ mix(step)) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The stream's key (what a device sampler is given).
    pub fn key(&self) -> u64 {
        self.key
    }

    /// Draw `step` of this stream, to be made by whichever backend samples.
    pub fn draw(&self, step: u64) -> Draw {
        Draw { stream: *self, step }
    }
}

/// One uniform draw named by its stream and step, so the backend that
/// samples (the host or a GPU) computes the number itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Draw {
    pub stream: Stream,
    pub step: u64,
}

impl Draw {
    pub fn uniform(&self) -> f64 {
        self.stream.uniform(self.step)
    }
}

/// A sampled token and its log-probability under the untruncated `softmax(z/T)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprob: f32,
}

/// Log-sum-exp in f64.
fn lse(s: &[f64]) -> f64 {
    let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    max + s.iter().map(|&x| (x - max).exp()).sum::<f64>().ln()
}

/// Samples one token from a row of logits with the uniform draw `u`.
pub fn sample(logits: &[f32], p: &SamplingParams, u: f64) -> Sampled {
    assert!(!logits.is_empty(), "sample: empty logits row");
    if p.temperature == 0.0 {
        // Greedy: the first maximum, as torch.argmax.
        let (mut best, mut best_v) = (0usize, f32::NEG_INFINITY);
        for (i, &v) in logits.iter().enumerate() {
            if v > best_v {
                (best, best_v) = (i, v);
            }
        }
        let z: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
        return Sampled { token: best as u32, logprob: (z[best] - lse(&z)) as f32 };
    }
    let inv_t = 1.0 / p.temperature as f64;
    let s: Vec<f64> = logits.iter().map(|&v| v as f64 * inv_t).collect();
    if p.top_k == 0 && p.top_p >= 1.0 && p.min_p <= 0.0 {
        // One exp per token: e_j = exp(s_j − max), then lse and an
        // inverse-CDF scan in token order over the same values.
        let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|&x| (x - max).exp()).collect();
        let total: f64 = e.iter().sum();
        let token = inverse_cdf(e.iter().cloned().enumerate(), u, total);
        return Sampled { token, logprob: (s[token as usize] - max - total.ln()) as f32 };
    }
    let full_lse = lse(&s);
    let token = draw(&s, p, u);
    Sampled { token, logprob: (s[token as usize] - full_lse) as f32 }
}

/// The filtered draw: the kept set is built as transformers does, and the
/// draw scans it in token order.
fn draw(s: &[f64], p: &SamplingParams, u: f64) -> u32 {
    let prob = |i: usize, l: f64| (s[i] - l).exp();
    // Candidates sorted by score, descending (ties by id, for determinism).
    let mut kept: Vec<usize> = (0..s.len()).collect();
    let by_score = |a: &usize, b: &usize| s[*b].total_cmp(&s[*a]).then(a.cmp(b));
    if p.top_k > 0 && p.top_k < kept.len() {
        kept.select_nth_unstable_by(p.top_k - 1, by_score);
        kept.truncate(p.top_k);
    }
    kept.sort_unstable_by(by_score);
    let renorm = |kept: &[usize]| lse(&kept.iter().map(|&i| s[i]).collect::<Vec<_>>());
    if p.top_p < 1.0 {
        // Drop the low tail whose cumulative probability (ascending) is ≤ 1 − top_p; keep ≥ 1.
        let l = renorm(&kept);
        let mut tail = 0.0;
        let mut cut = kept.len();
        for (rank, &i) in kept.iter().enumerate().rev() {
            tail += prob(i, l);
            if tail <= 1.0 - p.top_p as f64 && rank > 0 {
                cut = rank;
            } else {
                break;
            }
        }
        kept.truncate(cut);
    }
    if p.min_p > 0.0 {
        let l = renorm(&kept);
        let threshold = p.min_p as f64 * prob(kept[0], l);
        let keep = kept.iter().take_while(|&&i| prob(i, l) >= threshold).count().max(1);
        kept.truncate(keep);
    }
    let l = renorm(&kept);
    kept.sort_unstable();
    let probs: Vec<(usize, f64)> = kept.iter().map(|&i| (i, prob(i, l))).collect();
    let total = probs.iter().map(|(_, q)| q).sum();
    inverse_cdf(probs.into_iter(), u, total)
}

/// The first token whose cumulative weight exceeds `u · total`.
fn inverse_cdf(items: impl Iterator<Item = (usize, f64)>, u: f64, total: f64) -> u32 {
    let target = u * total;
    let mut acc = 0.0;
    let mut last = 0;
    for (i, q) in items {
        acc += q;
        last = i;
        if acc > target {
            return i as u32;
        }
    }
    last as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn softmax(z: &[f32], t: f32) -> Vec<f64> {
        let s: Vec<f64> = z.iter().map(|&v| v as f64 / t as f64).collect();
        let l = lse(&s);
        s.iter().map(|&x| (x - l).exp()).collect()
    }

    /// Token frequencies from 60,000 draws against the expected distribution:
    /// χ² below the 0.1% critical value. Deterministic (fixed seed).
    fn chi2(z: &[f32], p: &SamplingParams, expected: &[f64]) -> f64 {
        let stream = Stream::new(7, 1, 2);
        let n = 60_000;
        let mut counts = vec![0usize; z.len()];
        for step in 0..n {
            counts[sample(z, p, stream.uniform(step)).token as usize] += 1;
        }
        let mut x2 = 0.0;
        for (c, e) in counts.iter().zip(expected) {
            let e = e * n as f64;
            if e == 0.0 {
                assert_eq!(*c, 0, "a filtered-out token was drawn");
            } else {
                x2 += (*c as f64 - e).powi(2) / e;
            }
        }
        x2
    }

    const Z: [f32; 6] = [1.0, 0.2, -0.5, 2.0, 0.0, -1.5];

    #[test]
    fn frequencies_follow_the_softmax() {
        let p = SamplingParams { temperature: 0.8, ..Default::default() };
        let x2 = chi2(&Z, &p, &softmax(&Z, 0.8));
        assert!(x2 < 20.5, "χ² = {x2} with 5 degrees of freedom");
    }

    #[test]
    fn filters_keep_the_right_support_and_renormalise() {
        let t = 1.0;
        let full = softmax(&Z, t);
        let renorm = |keep: &[usize]| -> Vec<f64> {
            let total: f64 = keep.iter().map(|&i| full[i]).sum();
            (0..Z.len()).map(|i| if keep.contains(&i) { full[i] / total } else { 0.0 }).collect()
        };
        // top-k 3: tokens 3, 0, 1.
        let p = SamplingParams { top_k: 3, ..Default::default() };
        assert!(chi2(&Z, &p, &renorm(&[3, 0, 1])) < 13.8);
        // top-p 0.8: probabilities sorted 0.52, 0.19, 0.09, 0.08, 0.04, 0.02 → keep 3, 0, 1 (cum 0.80 > 1−0.8 tail).
        let mut order: Vec<usize> = (0..6).collect();
        order.sort_by(|a, b| full[*b].total_cmp(&full[*a]));
        let mut tail = 0.0;
        let mut keep = order.clone();
        for &i in order.iter().rev() {
            tail += full[i];
            if tail <= 0.2 {
                keep.retain(|&k| k != i);
            } else {
                break;
            }
        }
        let p = SamplingParams { top_p: 0.8, ..Default::default() };
        assert!(chi2(&Z, &p, &renorm(&keep)) < 20.5);
        // min-p 0.3: keep tokens with p ≥ 0.3·max.
        let max = full.iter().cloned().fold(0.0, f64::max);
        let keep: Vec<usize> = (0..6).filter(|&i| full[i] >= 0.3 * max).collect();
        let p = SamplingParams { min_p: 0.3, ..Default::default() };
        assert!(chi2(&Z, &p, &renorm(&keep)) < 20.5);
    }

    #[test]
    fn logprob_is_of_the_untruncated_distribution() {
        let p = SamplingParams { temperature: 0.7, top_k: 2, ..Default::default() };
        let full = softmax(&Z, 0.7);
        for step in 0..50 {
            let s = sample(&Z, &p, Stream::new(1, 0, 0).uniform(step));
            assert!((s.logprob as f64 - full[s.token as usize].ln()).abs() < 1e-6);
        }
        let g = sample(&Z, &SamplingParams { temperature: 0.0, ..Default::default() }, 0.5);
        assert_eq!(g.token, 3);
        assert!((g.logprob as f64 - softmax(&Z, 1.0)[3].ln()).abs() < 1e-6);
    }

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a = Stream::new(42, 3, 1);
        assert_eq!(a.uniform(9), Stream::new(42, 3, 1).uniform(9));
        assert_ne!(a.uniform(9), Stream::new(42, 3, 2).uniform(9));
        assert_ne!(a.uniform(9), Stream::new(43, 3, 1).uniform(9));
        assert!((0..1000).map(|i| a.uniform(i)).all(|u| (0.0..1.0).contains(&u)));
    }
}
