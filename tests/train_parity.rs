//! One training step against PyTorch (tests/fixtures/train, written by
//! tools/make_train_fixtures.py) on the qwen3 fixture: a GRPO step with the
//! GPPO loss on fixed rollouts and advantages, split into micro-batches of
//! unequal token counts, and an SFT step on the same sequences (step.*); a
//! DPO step on preference pairs against the starting model as reference
//! (dpo.*); a distillation step from a perturbed copy of the model, JSD(0.5)
//! at T = 0.8 and forward KL at T = 1 (distill.*). Every parameter's gradient
//! before the optimizer matches, and so do the weights after three plain-SGD
//! steps (an Adam step would hide the gradient's scale).

mod common;
use common::*;
use engine::backend::cpu::Cpu;
use engine::backend::{Backend, IGNORE};
use engine::data::Batch;
use engine::loss::sft::masked_ce_with_count;
use engine::loss::{
    dpo_loss, policy_loss, DistillMode, DpoConfig, DpoLossType, PolicyBatch, PolicyConfig, PolicyKind, StepCounts,
    TokenCoefs,
};
use engine::model::head::{self, Teacher};
use engine::model::params::ParamEntry;
use engine::model::{Activations, Model};
use engine::train::common::token_logps;
use engine::train::data::{micro_batches, Example, MicroBatch};
use serde_json::Value;
use std::path::Path;

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

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// `got` (parameter `e`) and the reference `{key}.<name>`. Where the fixture
/// stores only some rows of the embedding (`{key}_rows.<name>` at the rows
/// `embed_rows`, the ids in the data), every other row of `got` must equal
/// `outside`'s exactly, and only the stored rows are compared.
fn with_reference(r: &Reference, key: &str, e: &ParamEntry, got: &[f32], outside: &[f32], what: &str) -> [Vec<f64>; 2] {
    let rows_key = format!("{key}_rows.{}", e.name);
    if !r.has(&rows_key) {
        return [to_f64(got), r.f64(&format!("{key}.{}", e.name))];
    }
    let d = e.shape[1];
    let rows = r.u32("embed_rows");
    for i in (0..e.shape[0]).filter(|i| !rows.contains(&(*i as u32))) {
        let row = i * d..(i + 1) * d;
        assert_eq!(got[row.clone()], outside[row], "{what}: embedding row {i} is not in the data but changed");
    }
    let got = rows.iter().flat_map(|&i| to_f64(&got[i as usize * d..(i as usize + 1) * d])).collect();
    [got, r.f64(&rows_key)]
}

/// The step's loss and every parameter's gradient at the starting weights
/// against `{kind}_loss` / `{kind}_grad.*`, then three plain-SGD steps with
/// the loss before each against `sgd_losses` and, where `sgd3`, the weights
/// after them against `{kind}_sgd3.*`. `step` gives the loss and gradients at
/// the model's current weights.
#[allow(clippy::too_many_arguments)]
fn check_step(
    kind: &str,
    r: &Reference,
    model: &mut Model<Cpu>,
    want: f64,
    sgd_losses: &[f64],
    lr: f32,
    sgd3: bool,
    step: impl Fn(&Model<Cpu>) -> (f64, Vec<f32>),
) {
    // Worst relative errors seen (printed at the end): loss, gradient, SGD losses, weights.
    let mut worst = [0.0f64; 4];
    let (loss, grads) = step(model);
    worst[0] = (loss - want).abs() / want.abs().max(1e-3);
    assert!((loss - want).abs() <= 1e-5 * want.abs().max(1e-3), "{kind}: loss {loss} vs {want}");
    for e in &model.layout.entries {
        let zeros = vec![0.0; e.span.len];
        let [got, want] = with_reference(r, &format!("{kind}_grad"), e, &grads[e.span.off..e.span.end()], &zeros, kind);
        let rel = rel_err(&got, &want);
        assert!(rel <= 1e-4, "{kind}: gradient of {} rel {rel:.2e}", e.name);
        worst[1] = worst[1].max(rel);
    }
    let initial = model.params.clone();
    // Three plain SGD steps.
    for (i, want) in sgd_losses.iter().enumerate() {
        let (loss, g) = step(model);
        worst[2] = worst[2].max((loss - want).abs() / want.abs().max(1e-3));
        assert!((loss - want).abs() <= 1e-4 * want.abs().max(1e-3), "{kind}: SGD step {i} loss {loss} vs {want}");
        for (p, g) in model.params.iter_mut().zip(&g) {
            *p -= lr * g;
        }
    }
    for e in model.layout.entries.iter().filter(|_| sgd3) {
        let span = e.span.off..e.span.end();
        let [got, want] =
            with_reference(r, &format!("{kind}_sgd3"), e, &model.params[span.clone()], &initial[span], kind);
        let rel = rel_err(&got, &want);
        assert!(rel <= 1e-4, "{kind}: weights of {} after 3 SGD steps rel {rel:.2e}", e.name);
        worst[3] = worst[3].max(rel);
    }
    let [l, g, s, w] = worst;
    let w = if sgd3 { format!("{w:.2e}") } else { "not stored".into() };
    eprintln!(
        "{kind}: worst rel err: loss {l:.2e}, gradient {g:.2e}, SGD losses {s:.2e}, weights after 3 SGD steps {w}"
    );
}

fn check(kind: &str) {
    let dir = fixtures().join("train");
    let r = Reference::open_path(&dir.join("step.safetensors"));
    let j = json(&dir.join("step.json"));
    let st = load_step(&r);
    let grpo = kind == "grpo";
    let (mut model, _) = Model::load(&Cpu, &fixtures().join("qwen3")).unwrap();
    let want = j[format!("{kind}_loss")].as_f64().unwrap();
    let sgd_losses = floats(&j[format!("{kind}_sgd_losses")]);
    let lr = j["lr"].as_f64().unwrap() as f32;
    check_step(kind, &r, &mut model, want, &sgd_losses, lr, true, |m| step_grads(m, &st, grpo));
}

#[test]
fn grpo_step_matches_pytorch() {
    check("grpo");
}

#[test]
fn sft_step_matches_pytorch() {
    check("sft");
}

/// A fixture's sequences (`input_ids` cut at `cu_seqlens`, prompts of `n_prompt` tokens).
fn examples(r: &Reference) -> Vec<Example> {
    let ids = r.u32("input_ids");
    let cu: Vec<usize> = r.u32("cu_seqlens").iter().map(|&c| c as usize).collect();
    let n_prompt = r.u32("n_prompt");
    cu.windows(2)
        .zip(&n_prompt)
        .map(|(w, &p)| Example { tokens: ids[w[0]..w[1]].to_vec(), n_prompt: p as usize })
        .collect()
}

/// `engine train dpo`'s grouping of pairs into micro-batches of at most
/// `budget` tokens (src/train/dpo.rs `groups`, private, reproduced here), as
/// pair-index boundaries. Sequence `2k` is pair k's chosen, `2k + 1` its rejected.
fn dpo_groups(seqs: &[Example], budget: usize) -> Vec<usize> {
    let (mut bounds, mut tokens) = (vec![0], None);
    for k in 0..seqs.len() / 2 {
        let n = seqs[2 * k].tokens.len() + seqs[2 * k + 1].tokens.len();
        if tokens.is_some_and(|t| t + n > budget) {
            bounds.push(k);
            tokens = None;
        }
        tokens = Some(tokens.unwrap_or(0) + n);
    }
    bounds.push(seqs.len() / 2);
    bounds
}

/// The DPO step as src/train/dpo.rs runs it (its loop body is not a library
/// function, so the same library calls in the same order): per micro-batch,
/// the policy's log-probs at T = 1 (`token_logps`), `dpo_loss` against the
/// reference log-probs with the step's pair count, and the backward with
/// its coefficients.
fn dpo_step(model: &Model<Cpu>, mbs: &[MicroBatch], reference: &[Vec<f32>], cfg: &DpoConfig) -> (f64, Vec<f32>) {
    let be = Cpu;
    let pairs: usize = mbs.iter().map(|mb| (mb.batch.cu_seqlens.len() - 1) / 2).sum();
    let mut grads = model.zero_grads(&be);
    let mut loss = 0.0;
    for (mb, ref_logp) in mbs.iter().zip(reference) {
        let mut acts = Activations::new(&be, &model.cfg, mb.batch.len(), 5, true);
        let logp = token_logps(&Cpu, model, &mut acts, mb, 1.0, false).unwrap().0;
        let mask: Vec<bool> = mb.targets.iter().map(|&t| t != IGNORE).collect();
        let (l, coefs, _) = dpo_loss(cfg, &logp, ref_logp, &mask, &mb.batch.cu_seqlens, pairs);
        loss += l;
        model.backward(&be, &mut acts, &coefs, 1.0, &mut grads);
    }
    (loss, grads)
}

#[test]
fn dpo_step_matches_pytorch() {
    let dir = fixtures().join("train");
    let r = Reference::open_path(&dir.join("dpo.safetensors"));
    let j = json(&dir.join("dpo.json"));
    let seqs = examples(&r);
    let micro: Vec<usize> = r.u32("micro_batches").iter().map(|&x| x as usize).collect();
    let budget = j["micro_batch_tokens"].as_u64().unwrap() as usize;
    assert_eq!(dpo_groups(&seqs, budget), micro, "the trainer's grouping of the pairs");
    // Packed in order (chosen, rejected, chosen, …), as src/train/dpo.rs `pack`.
    let mbs: Vec<MicroBatch> =
        micro.windows(2).map(|w| MicroBatch::pack(&seqs[2 * w[0]..2 * w[1]].iter().collect::<Vec<_>>())).collect();
    let tokens: Vec<usize> = mbs.iter().map(|mb| mb.batch.len()).collect();
    assert!(tokens.windows(2).all(|w| w[0] != w[1]), "micro-batches of unequal token counts: {tokens:?}");
    assert_eq!(j["loss_type"], "sigmoid");
    let cfg = DpoConfig {
        loss_type: DpoLossType::Sigmoid,
        beta: j["beta"].as_f64().unwrap(),
        label_smoothing: j["label_smoothing"].as_f64().unwrap(),
    };
    let (mut model, _) = Model::load(&Cpu, &fixtures().join("qwen3")).unwrap();
    // The reference: the starting model's log-probs, once, before any update.
    let reference: Vec<Vec<f32>> = mbs
        .iter()
        .map(|mb| {
            let mut acts = Activations::new(&Cpu, &model.cfg, mb.batch.len(), 5, true);
            token_logps(&Cpu, &model, &mut acts, mb, 1.0, false).unwrap().0
        })
        .collect();
    // Its summed response log-probs against PyTorch's (a forward check).
    let sums: Vec<f64> = mbs
        .iter()
        .zip(&reference)
        .flat_map(|(mb, lp)| {
            (0..mb.batch.cu_seqlens.len() - 1)
                .map(|s| mb.batch.seq(s).filter(|&t| mb.targets[t] != IGNORE).map(|t| lp[t] as f64).sum::<f64>())
                .collect::<Vec<_>>()
        })
        .collect();
    let rel = rel_err(&sums, &r.f64("ref_seq_logp"));
    assert!(rel <= 1e-5, "dpo: reference log-probs rel {rel:.2e}");
    let want = j["dpo_loss"].as_f64().unwrap();
    let sgd_losses = floats(&j["dpo_sgd_losses"]);
    let lr = j["lr"].as_f64().unwrap() as f32;
    check_step("dpo", &r, &mut model, want, &sgd_losses, lr, true, |m| dpo_step(m, &mbs, &reference, &cfg));
}

/// The fixture's teacher: the fixture model's layout with the stored
/// weights (`teacher.<p>`; of the embedding only the rows of the data's
/// ids, `teacher_rows.<p>`, are stored, and no other row is read).
fn load_teacher(r: &Reference) -> Model<Cpu> {
    let (mut teacher, _) = Model::load(&Cpu, &fixtures().join("qwen3")).unwrap();
    for e in &teacher.layout.entries {
        let span = e.span.off..e.span.end();
        if r.has(&format!("teacher.{}", e.name)) {
            teacher.params[span].copy_from_slice(&r.f32(&format!("teacher.{}", e.name)));
        } else {
            let (d, rows, w) = (e.shape[1], r.u32("embed_rows"), r.f32(&format!("teacher_rows.{}", e.name)));
            for (k, &i) in rows.iter().enumerate() {
                let off = e.span.off + i as usize * d;
                teacher.params[off..off + d].copy_from_slice(&w[k * d..(k + 1) * d]);
            }
        }
    }
    teacher
}

/// The distillation step as src/train/distill.rs runs it (its loop body is
/// not a library function, so the same library calls in the same order):
/// per micro-batch, the teacher's and the student's forward, then the
/// backward with the fused one-pass head `head::distill`, each completion
/// token weighted 1 / (the step's completion tokens).
fn distill_step(
    model: &Model<Cpu>,
    teacher: &Model<Cpu>,
    mbs: &[MicroBatch],
    mode: DistillMode,
    t: f32,
) -> (f64, Vec<f32>) {
    let be = Cpu;
    let step_tokens: usize = mbs.iter().map(MicroBatch::loss_tokens).sum();
    let chunk = 5;
    let mut teacher_logits = be.alloc(chunk * model.cfg.vocab_size);
    let mut grads = model.zero_grads(&be);
    let mut loss = 0.0;
    for mb in mbs {
        let mut acts = Activations::new(&be, &model.cfg, mb.batch.len(), chunk, true);
        let mut tacts = Activations::new(&be, &teacher.cfg, mb.batch.len(), chunk, false);
        teacher.forward(&be, &mut tacts, &mb.batch).unwrap();
        model.forward(&be, &mut acts, &mb.batch).unwrap();
        let weight: Vec<f32> =
            mb.targets.iter().map(|&x| if x == IGNORE { 0.0 } else { 1.0 / step_tokens as f32 }).collect();
        let tw = Cpu::view(&teacher.params, teacher.layout.lm_head);
        let th = Teacher::<Cpu> { h: &tacts.h, w: tw, d: teacher.cfg.hidden_size };
        model.backward_with_head(&be, &mut acts, &mut grads, |be, hb, s, h, w, dh, grads, dw| {
            loss += head::distill(be, hb, s, h, w, &th, &mut teacher_logits, mode, t, &weight, dh, grads, dw);
        });
    }
    (loss, grads)
}

#[test]
fn distill_step_matches_pytorch() {
    let dir = fixtures().join("train");
    let r = Reference::open_path(&dir.join("distill.safetensors"));
    let j = json(&dir.join("distill.json"));
    let seqs = examples(&r);
    let budget = j["micro_batch_tokens"].as_u64().unwrap() as usize;
    // The trainer's micro-batches: `micro_batches` by token budget, then `MicroBatch::pack`.
    let groups = micro_batches(&seqs.iter().collect::<Vec<_>>(), budget);
    let mut bounds = vec![0];
    for g in &groups {
        bounds.push(bounds.last().unwrap() + g.len());
    }
    let micro: Vec<usize> = r.u32("micro_batches").iter().map(|&x| x as usize).collect();
    assert_eq!(bounds, micro, "the trainer's micro-batches");
    let mbs: Vec<MicroBatch> = groups.iter().map(|g| MicroBatch::pack(g)).collect();
    let tokens: Vec<usize> = mbs.iter().map(|mb| mb.batch.len()).collect();
    assert!(tokens.windows(2).all(|w| w[0] != w[1]), "micro-batches of unequal token counts: {tokens:?}");
    let teacher = load_teacher(&r);
    let lr = j["lr"].as_f64().unwrap() as f32;
    let cases = j["cases"].as_object().unwrap();
    assert!(cases.contains_key("jsd") && cases.contains_key("forward"));
    for (kind, c) in cases {
        let mode = match c["mode"].as_str().unwrap() {
            "jsd" => DistillMode::Jsd { beta: c["beta"].as_f64().unwrap() },
            "forward" => DistillMode::Forward,
            other => panic!("unexpected mode {other}"),
        };
        let t = c["temperature"].as_f64().unwrap() as f32;
        let (mut model, _) = Model::load(&Cpu, &fixtures().join("qwen3")).unwrap();
        let (want, sgd_losses) = (c["loss"].as_f64().unwrap(), floats(&c["sgd_losses"]));
        let sgd3 = c["sgd3_weights_stored"].as_bool().unwrap();
        check_step(kind, &r, &mut model, want, &sgd_losses, lr, sgd3, |m| distill_step(m, &teacher, &mbs, mode, t));
    }
}
