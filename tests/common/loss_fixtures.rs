//! The loss fixtures of tests/fixtures/losses (tools/make_loss_fixtures.py,
//! PyTorch autograd in float64): their settings and references, the token
//! layout they share, and a policy fixture's settings as a [`PolicyConfig`].
//! Read by the CPU's tests/losses.rs and the GPU's tests/cuda.

use super::{fixtures, Reference};
use engine::loss::policy::PolicyMeans;
use engine::loss::{
    Aggregation, DpoConfig, DpoLossType, DpoStats, KlKind, KlPenalty, PolicyConfig, PolicyKind, StepCounts,
};
use serde_json::Value;

/// A loss fixture: its settings (`<name>.json`) and reference values.
pub fn case(name: &str) -> (Value, Reference) {
    let dir = fixtures().join("losses");
    let json = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap_or_else(|e| panic!("{name}.json: {e}"));
    (serde_json::from_str(&json).unwrap(), Reference::open_path(&dir.join(format!("{name}.safetensors"))))
}

/// A number of a fixture's settings.
pub fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("`{key}` missing or not a number in {v}"))
}

pub fn opt_num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// A loss fixture's tokens: sequences, mask, and the micro-batches the
/// step is split in (sequence-index boundaries; one when absent).
pub struct Layout {
    pub n: usize,
    pub cu: Vec<u32>,
    pub mask: Vec<bool>,
    pub micro: Vec<usize>,
}

impl Layout {
    pub fn read(r: &Reference) -> Self {
        let cu = r.u32("cu_seqlens");
        let mask: Vec<bool> = r.f64("mask").iter().map(|&m| m != 0.0).collect();
        let micro = if r.has("micro_batches") {
            r.u32("micro_batches").iter().map(|&x| x as usize).collect()
        } else {
            vec![0, cu.len() - 1]
        };
        Layout { n: mask.len(), cu, mask, micro }
    }

    /// For each micro-batch: (token range, sequence range, local cu_seqlens).
    #[allow(clippy::type_complexity)]
    pub fn micro_batches(&self) -> Vec<(std::ops::Range<usize>, std::ops::Range<usize>, Vec<u32>)> {
        self.micro
            .windows(2)
            .map(|w| {
                let t0 = self.cu[w[0]];
                let local = self.cu[w[0]..=w[1]].iter().map(|&c| c - t0).collect();
                (t0 as usize..self.cu[w[1]] as usize, w[0]..w[1], local)
            })
            .collect()
    }

    pub fn counts(&self) -> StepCounts {
        let mbs = self.micro_batches();
        StepCounts::of(mbs.iter().map(|(t, _, cu)| (&self.mask[t.clone()], cu.as_slice())))
    }
}

/// A policy fixture's settings.
pub fn policy_config(j: &Value) -> PolicyConfig {
    let eps = |k| num(j, k);
    let dual = opt_num(j, "dual_clip");
    let kind = match j["policy_loss"].as_str().unwrap() {
        "ppo" => PolicyKind::Ppo { eps_low: eps("eps_low"), eps_high: eps("eps_high"), dual_clip: dual },
        "gppo" => PolicyKind::Gppo {
            eps_low: eps("eps_low"),
            eps_high: eps("eps_high"),
            dual_clip: dual,
            beta1: num(j, "beta1"),
            beta2: num(j, "beta2"),
        },
        "cispo" => PolicyKind::Cispo { floor: opt_num(j, "floor"), cap: num(j, "cap") },
        "gspo" => PolicyKind::Gspo { eps_low: eps("eps_low"), eps_high: eps("eps_high") },
        other => panic!("unknown policy loss {other}"),
    };
    let l_max = j.get("l_max").and_then(Value::as_u64).map(|x| x as usize);
    let mut cfg = PolicyConfig::new(kind);
    cfg.agg = Aggregation::parse(j["agg"].as_str().unwrap(), l_max).unwrap();
    cfg.kl = j
        .get("kl")
        .filter(|k| !k.is_null())
        .map(|k| KlPenalty { kind: KlKind::parse(k["kind"].as_str().unwrap()).unwrap(), coef: num(k, "coef") });
    cfg.entropy_coef = opt_num(j, "entropy_coef").unwrap_or(0.0);
    cfg.tis_cap = opt_num(j, "tis_cap");
    cfg.positive_nll_coef = opt_num(j, "positive_nll_coef").unwrap_or(0.0);
    cfg.correct_score = opt_num(j, "correct_score").unwrap_or(1.0);
    cfg
}

/// The statistics a trainer logs, by the names a policy fixture's `stats`
/// gives them.
pub fn stat_pairs(m: &PolicyMeans) -> [(&'static str, f64); 10] {
    [
        ("clip_frac_low", m.clip_frac_low),
        ("clip_frac_high", m.clip_frac_high),
        ("clip_frac_dual", m.clip_frac_dual),
        ("ratio_mean", m.ratio_mean),
        ("ratio_max", m.ratio_max),
        ("ppo_kl", m.ppo_kl),
        ("entropy_mean", m.entropy_mean),
        ("kl_mean", m.kl_mean),
        ("sampler_abs_diff_mean", m.sampler_abs_diff_mean),
        ("sampler_abs_diff_max", m.sampler_abs_diff_max),
    ]
}

/// A DPO fixture's settings.
pub fn dpo_config(j: &Value) -> DpoConfig {
    DpoConfig {
        loss_type: if j["loss_type"] == "ipo" { DpoLossType::Ipo } else { DpoLossType::Sigmoid },
        beta: num(j, "beta"),
        label_smoothing: opt_num(j, "label_smoothing").unwrap_or(0.0),
    }
}

/// The statistics the DPO trainer logs, by the names a DPO fixture's
/// `stats` gives them.
pub fn dpo_stat_pairs(stats: &DpoStats) -> [(&'static str, f64); 4] {
    let (chosen, rejected, acc, margin) = stats.finish();
    [
        ("reward_chosen_mean", chosen),
        ("reward_rejected_mean", rejected),
        ("reward_accuracy", acc),
        ("reward_margin_mean", margin),
    ]
}
