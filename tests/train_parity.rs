//! One training step against PyTorch (tests/fixtures/train, written by
//! tools/make_train_fixtures.py) on the qwen3 fixture: a GRPO step with the
//! GPPO loss on fixed rollouts and advantages, split into micro-batches of
//! unequal token counts, and an SFT step on the same sequences. Every
//! parameter's gradient before the optimizer matches, and so do the weights
//! after three plain-SGD steps (an Adam step would hide the gradient's scale).

mod common;
use common::*;
use engine::backend::cpu::Cpu;
use engine::backend::IGNORE;
use engine::data::Batch;
use engine::loss::sft::masked_ce_with_count;
use engine::loss::{policy_loss, PolicyBatch, PolicyConfig, PolicyKind, StepCounts, TokenCoefs};
use engine::model::{Activations, Model};
use engine::train::data::{Example, MicroBatch};

struct Step {
    seqs: Vec<Vec<u32>>,
    n_prompt: Vec<usize>,
    micro: Vec<usize>,
    adv: Vec<f32>,
    /// Per sequence, per position.
    old: Vec<Vec<f32>>,
}

fn load_step(r: &Reference) -> Step {
    let ids = r.u32("input_ids");
    let cu: Vec<usize> = r.u32("cu_seqlens").iter().map(|&c| c as usize).collect();
    let old = r.f32("old_logp");
    Step {
        seqs: cu.windows(2).map(|w| ids[w[0]..w[1]].to_vec()).collect(),
        n_prompt: r.u32("n_prompt").iter().map(|&x| x as usize).collect(),
        micro: r.u32("micro_batches").iter().map(|&x| x as usize).collect(),
        adv: r.f32("advantages"),
        old: cu.windows(2).map(|w| old[w[0]..w[1]].to_vec()).collect(),
    }
}

/// A micro-batch of sequences `s0..s1` with its loss targets (the trainer's packing).
fn pack(st: &Step, s0: usize, s1: usize) -> (Batch, Vec<u32>) {
    let ex: Vec<Example> = (s0..s1).map(|s| Example { tokens: st.seqs[s].clone(), n_prompt: st.n_prompt[s] }).collect();
    let mb = MicroBatch::pack(&ex.iter().collect::<Vec<_>>());
    (mb.batch, mb.targets)
}

/// The step's loss and gradients, micro-batch by micro-batch.
fn step_grads(model: &Model<Cpu>, st: &Step, grpo: bool) -> (f64, Vec<f32>) {
    let be = Cpu;
    let t = if grpo { 0.8 } else { 1.0 };
    let parts: Vec<(Batch, Vec<u32>)> = st.micro.windows(2).map(|w| pack(st, w[0], w[1])).collect();
    let masks: Vec<Vec<bool>> = parts.iter().map(|(_, tg)| tg.iter().map(|&x| x != IGNORE).collect()).collect();
    let counts = StepCounts::of(parts.iter().zip(&masks).map(|((b, _), m)| (m.as_slice(), b.cu_seqlens.as_slice())));
    let cfg = PolicyConfig::new(PolicyKind::gppo());
    let mut grads = model.zero_grads(&be);
    let mut loss = 0.0;
    for (((batch, targets), mask), w) in parts.iter().zip(&masks).zip(st.micro.windows(2)) {
        let mut acts = Activations::new(&be, &model.cfg, batch.len(), 5, true);
        model.forward(&be, &mut acts, batch).unwrap();
        model.head_fwd(&be, &mut acts, targets, t, false);
        let logp = acts.head.read_logp(&be, batch.len());
        let coefs: TokenCoefs = if grpo {
            let old: Vec<f32> = st.old[w[0]..w[1]].concat();
            let rewards = vec![0.0f32; w[1] - w[0]];
            let b = PolicyBatch {
                logp: &logp,
                old_logp: &old,
                ref_logp: None,
                sampler_logp: None,
                entropy: None,
                mask,
                cu_seqlens: &batch.cu_seqlens,
                advantages: &st.adv[w[0]..w[1]],
                rewards: &rewards,
            };
            let out = policy_loss(&cfg, &b, &counts, 0);
            loss += out.loss;
            out.coefs
        } else {
            let (l, c) = masked_ce_with_count(&logp, targets, counts.tokens);
            loss += l;
            c.into()
        };
        model.backward(&be, &mut acts, &coefs, t, &mut grads);
    }
    (loss, grads)
}

fn check(kind: &str) {
    let dir = fixtures().join("train");
    let r = Reference::open_path(&dir.join("step.safetensors"));
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("step.json")).unwrap()).unwrap();
    let st = load_step(&r);
    let grpo = kind == "grpo";
    let (mut model, _) = Model::load(&Cpu, &fixtures().join("qwen3")).unwrap();
    let (loss, grads) = step_grads(&model, &st, grpo);
    let want = j[format!("{kind}_loss")].as_f64().unwrap();
    assert!((loss - want).abs() <= 1e-5 * want.abs().max(1e-3), "{kind}: loss {loss} vs {want}");
    for e in &model.layout.entries {
        let rel = rel_err(&to_f64(&grads[e.span.off..e.span.end()]), &r.f64(&format!("{kind}_grad.{}", e.name)));
        assert!(rel <= 1e-4, "{kind}: gradient of {} rel {rel:.2e}", e.name);
    }
    let initial = model.params.clone();
    // Three plain SGD steps.
    let sgd_losses: Vec<f64> =
        j[format!("{kind}_sgd_losses")].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    for (i, want) in sgd_losses.iter().enumerate() {
        let (loss, g) = step_grads(&model, &st, grpo);
        assert!((loss - want).abs() <= 1e-4 * want.abs().max(1e-3), "{kind}: SGD step {i} loss {loss} vs {want}");
        for (p, g) in model.params.iter_mut().zip(&g) {
            *p -= 0.5 * g;
        }
    }
    for e in &model.layout.entries {
        let got = &model.params[e.span.off..e.span.end()];
        let (got, want): (Vec<f64>, Vec<f64>) = if e.name == "model.embed_tokens.weight" {
            // The fixture stores only the rows that change (the ids in the data).
            let d = e.shape[1];
            let rows = r.u32("embed_rows");
            for i in (0..e.shape[0]).filter(|i| !rows.contains(&(*i as u32))) {
                let row = e.span.off + i * d..e.span.off + (i + 1) * d;
                assert_eq!(
                    model.params[row.clone()],
                    initial[row],
                    "{kind}: embedding row {i} is not in the data but changed"
                );
            }
            let got = rows.iter().flat_map(|&i| to_f64(&got[i as usize * d..(i as usize + 1) * d])).collect();
            (got, r.f64(&format!("{kind}_sgd3_rows.{}", e.name)))
        } else {
            (to_f64(got), r.f64(&format!("{kind}_sgd3.{}", e.name)))
        };
        let rel = rel_err(&got, &want);
        assert!(rel <= 1e-4, "{kind}: weights of {} after 3 SGD steps rel {rel:.2e}", e.name);
    }
}

#[test]
fn grpo_step_matches_pytorch() {
    check("grpo");
}

#[test]
fn sft_step_matches_pytorch() {
    check("sft");
}
