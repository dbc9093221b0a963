//! GRPO-family advantages (DESIGN.md §4.5).

/// How rewards are normalised within a group of responses to one prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleRewards {
    /// `(R − mean_group) / (std_group + 1e-6)`.
    Group,
    /// `(R − mean_group) / (std over the whole step + 1e-6)`.
    Batch,
    /// Dr.GRPO: `R − mean_group`.
    None,
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

/// Sample standard deviation (Bessel's correction); 0 for fewer than two values.
fn std(x: &[f64]) -> f64 {
    if x.len() < 2 {
        return 0.0;
    }
    let m = mean(x);
    (x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (x.len() - 1) as f64).sqrt()
}

/// Advantages for rewards grouped contiguously by prompt (`group_sizes`
/// sums to `rewards.len()`). A group of one carries no signal and gets 0.
pub fn grpo_advantages(rewards: &[f32], group_sizes: &[usize], scale: ScaleRewards) -> Vec<f64> {
    assert_eq!(group_sizes.iter().sum::<usize>(), rewards.len(), "advantages: group sizes must cover the rewards");
    let all: Vec<f64> = rewards.iter().map(|&r| r as f64).collect();
    let batch_std = std(&all);
    let mut out = Vec::with_capacity(all.len());
    let mut start = 0;
    for &g in group_sizes {
        let group = &all[start..start + g];
        start += g;
        if g < 2 {
            out.extend(std::iter::repeat_n(0.0, g));
            continue;
        }
        let m = mean(group);
        let denom = match scale {
            ScaleRewards::Group => std(group) + 1e-6,
            ScaleRewards::Batch => batch_std + 1e-6,
            ScaleRewards::None => 1.0,
        };
        out.extend(group.iter().map(|r| (r - m) / denom));
    }
    out
}

/// Groups whose rewards are all equal carry no signal (DAPO's dynamic
/// sampling drops them): true for such a group.
pub fn group_is_flat(rewards: &[f32]) -> bool {
    rewards.windows(2).all(|w| w[0] == w[1])
}
