//! Parity with PyTorch: the CPU reference against float64 transformers
//! outputs (tests/fixtures, written by tools/make_fixtures.py) for a Llama,
//! a Qwen2 and a Qwen3 checkpoint. Forward ≤ 1e-5 and every parameter's
//! gradient ≤ 1e-4, relative (DESIGN.md §6).

mod common;
use common::*;
use engine::backend::cpu::Cpu;
use engine::backend::IGNORE;
use engine::loss::masked_mean_ce;
use engine::model::{Activations, Model};

struct Run {
    logp: Vec<f32>,
    loss: f64,
    grads: Vec<f32>,
}

/// Forward at temperature 1 for all next tokens, then the SFT loss on the
/// reference's labels and its backward. `chunk` sets the lm_head chunk rows.
fn run(name: &str, chunk: usize) -> (Model<Cpu>, Reference, Run) {
    let be = Cpu;
    let (model, _) = Model::load(&be, &fixtures().join(name)).unwrap();
    let r = Reference::open(name);
    let batch = r.batch();
    let mut acts = Activations::new(&be, &model.cfg, batch.len(), chunk, true);
    model.forward(&be, &mut acts, &batch).unwrap();
    model.head_fwd(&be, &mut acts, &batch.next_tokens, 1.0, false);
    let logp = acts.head.read_logp(&be, batch.len());

    let targets = r.loss_targets();
    model.head_fwd(&be, &mut acts, &targets, 1.0, false);
    let (loss, coef) = masked_mean_ce(&acts.head.read_logp(&be, batch.len()), &targets);
    let mut grads = model.zero_grads(&be);
    model.backward(&be, &mut acts, &coef.into(), 1.0, &mut grads);
    (model, r, Run { logp, loss, grads })
}

fn check_family(name: &str) {
    let (model, r, out) = run(name, 7);
    let batch = r.batch();
    // Log-probabilities of every next token (0 at each sequence's last token on both sides).
    let want = r.f64("logprobs");
    let got = to_f64(&out.logp);
    let (rel, abs) = (rel_err(&got, &want), max_abs(&got, &want));
    println!("{name}: logprobs rel {rel:.2e} max-abs {abs:.2e}");
    assert!(rel <= 1e-5 && abs <= 1e-4, "{name}: logprobs rel {rel:.2e} max-abs {abs:.2e}");
    assert_eq!(batch.next_tokens.iter().filter(|&&t| t != IGNORE).count(), want.iter().filter(|&&x| x != 0.0).count());

    let want_loss = r.f64("loss")[0];
    let rel = (out.loss - want_loss).abs() / want_loss.abs();
    println!("{name}: loss {:.8} vs {want_loss:.8} (rel {rel:.2e})", out.loss);
    assert!(rel <= 1e-5, "{name}: loss rel {rel:.2e}");

    // Every parameter's gradient, and no parameter without a reference.
    let grad_names: Vec<String> = r.names().into_iter().filter(|n| n.starts_with("grad.")).collect();
    assert_eq!(grad_names.len(), model.layout.entries.len(), "{name}: one reference gradient per parameter");
    let mut worst = (0.0f64, String::new());
    for e in &model.layout.entries {
        let want = r.f64(&format!("grad.{}", e.name));
        let got = to_f64(&out.grads[e.span.off..e.span.end()]);
        let rel = rel_err(&got, &want);
        assert!(rel <= 1e-4, "{name}: gradient of {} rel {rel:.2e}", e.name);
        if rel > worst.0 {
            worst = (rel, e.name.clone());
        }
    }
    println!("{name}: worst gradient rel {:.2e} ({})", worst.0, worst.1);
}

#[test]
fn llama_legacy_config_sharded_llama3_rope() {
    check_family("llama");
}

#[test]
fn qwen2_bf16_tied_biases() {
    check_family("qwen2");
}

#[test]
fn qwen3_qk_norm_new_config() {
    check_family("qwen3");
}

#[test]
fn temperature_scales_the_softmax() {
    for name in FAMILIES {
        let be = Cpu;
        let (model, _) = Model::load(&be, &fixtures().join(name)).unwrap();
        let r = Reference::open(name);
        let batch = r.batch();
        let mut acts = Activations::new(&be, &model.cfg, batch.len(), 64, false);
        model.forward(&be, &mut acts, &batch).unwrap();
        model.head_fwd(&be, &mut acts, &batch.next_tokens, 0.7, false);
        let got = to_f64(&acts.head.read_logp(&be, batch.len()));
        let rel = rel_err(&got, &r.f64("logprobs_t07"));
        assert!(rel <= 1e-5, "{name}: T=0.7 logprobs rel {rel:.2e}");
    }
}

/// The lm_head chunking changes only the GEMM shapes (the gemm crate picks
/// its kernel by shape, so the last bits may differ), and the inference
/// arena (one reused set of layer buffers) gives the training arena's
/// log-probabilities bitwise.
#[test]
fn chunking_and_inference_arena_agree() {
    let (_, _, a) = run("qwen3", 1);
    let (_, _, b) = run("qwen3", 1000);
    assert!(rel_err(&to_f64(&a.logp), &to_f64(&b.logp)) < 1e-6);
    assert!(rel_err(&to_f64(&a.grads), &to_f64(&b.grads)) < 1e-5);
    let (_, _, c) = run("qwen3", 3);

    let be = Cpu;
    let (model, _) = Model::load(&be, &fixtures().join("qwen3")).unwrap();
    let batch = Reference::open("qwen3").batch();
    let mut acts = Activations::new(&be, &model.cfg, batch.len() + 5, 3, false);
    model.forward(&be, &mut acts, &batch).unwrap();
    model.head_fwd(&be, &mut acts, &batch.next_tokens, 1.0, false);
    assert_eq!(acts.head.read_logp(&be, batch.len()), c.logp);
}
