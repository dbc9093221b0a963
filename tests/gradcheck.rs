//! Finite-difference check of the backward, independent of PyTorch: along a
//! direction `v` in one parameter tensor, the central difference
//! `(L(θ+εv) − L(θ−εv)) / 2ε` of the f32 forward must match `∇L · v`.

mod common;
use common::*;
use engine::backend::cpu::Cpu;
use engine::data::Batch;
use engine::loss::masked_mean_ce;
use engine::model::{Activations, Model};

fn loss_and_grads(model: &Model<Cpu>, batch: &Batch, targets: &[u32], with_grads: bool) -> (f64, Vec<f32>) {
    let be = Cpu;
    let mut acts = Activations::new(&be, &model.cfg, batch.len(), 16, with_grads);
    model.forward(&be, &mut acts, batch).unwrap();
    model.head_fwd(&be, &mut acts, targets, 1.0, false);
    let (loss, coef) = masked_mean_ce(&acts.head.read_logp(&be, batch.len()), targets);
    let mut grads = model.zero_grads(&be);
    if with_grads {
        model.backward(&be, &mut acts, &coef.into(), 1.0, &mut grads);
    }
    (loss, grads)
}

/// A small deterministic pseudo-random stream in [0.5, 1).
fn uniform(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            0.5 + 0.5 * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

fn check(name: &str, tensors: &[&str]) {
    let be = Cpu;
    let (model, _) = Model::load(&be, &fixtures().join(name)).unwrap();
    let r = Reference::open(name);
    let (batch, targets) = (r.batch(), r.loss_targets());
    let (_, grads) = loss_and_grads(&model, &batch, &targets, true);
    for (k, tensor) in tensors.iter().enumerate() {
        let e = model.layout.get(tensor).unwrap_or_else(|| panic!("{name}: no parameter {tensor}"));
        let g = &grads[e.span.off..e.span.end()];
        // Direction: the gradient's signs with random magnitudes, so ∇L·v is
        // large against f32 noise; a wrong sign or scale anywhere shows.
        let v: Vec<f32> = uniform(k as u64, g.len()).iter().zip(g).map(|(u, gi)| u * gi.signum()).collect();
        let analytic: f64 = g.iter().zip(&v).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
        // A step that moves the loss by about 3e-3 at first order: large
        // against f32 rounding of L (~1e-6), small for the curvature.
        let eps = (3e-3 / analytic.abs()) as f32;
        let host = model.params_to_host(&be);
        let shifted = |sign: f32| {
            let mut p = host.clone();
            for (x, vi) in p[e.span.off..e.span.end()].iter_mut().zip(&v) {
                *x += sign * eps * vi;
            }
            loss_and_grads(&Model::from_host(&be, model.cfg.clone(), p), &batch, &targets, false).0
        };
        let numeric = (shifted(1.0) - shifted(-1.0)) / (2.0 * eps as f64);
        let rel = (numeric - analytic).abs() / analytic.abs();
        println!("{name} {tensor}: analytic {analytic:.6e} numeric {numeric:.6e} rel {rel:.1e}");
        assert!(rel < 1e-3, "{name} {tensor}: analytic {analytic:.6e} vs finite difference {numeric:.6e}");
    }
}

#[test]
fn llama_finite_differences() {
    check("llama", &["model.embed_tokens.weight", "model.layers.0.self_attn.k_proj.weight", "lm_head.weight"]);
}

#[test]
fn qwen2_finite_differences() {
    check(
        "qwen2",
        &["model.layers.1.self_attn.q_proj.bias", "model.layers.0.mlp.gate_proj.weight", "model.norm.weight"],
    );
}

#[test]
fn qwen3_finite_differences() {
    check(
        "qwen3",
        &[
            "model.layers.0.self_attn.q_norm.weight",
            "model.layers.1.self_attn.k_norm.weight",
            "model.layers.1.input_layernorm.weight",
        ],
    );
}
