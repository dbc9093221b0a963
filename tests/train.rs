//! Training building blocks end to end: AdamW on the fixture models drives
//! the SFT loss of a fixed batch down (the pieces `engine train` will loop
//! over: forward, phase 1, loss, phase 2 + backward, clipping, AdamW).

mod common;
use common::runs::*;
use common::*;
use engine::backend::cpu::Cpu;
use engine::loss::masked_mean_ce;
use engine::model::{Activations, Model};
use engine::optim::{clip_grad_norm, AdamW, AdamWConfig};

#[test]
fn sft_loss_falls_with_adamw() {
    for name in FAMILIES {
        let be = Cpu;
        let (mut model, _) = Model::load(&be, &fixtures().join(name)).unwrap();
        let r = Reference::open(name);
        let (batch, targets) = (r.batch(), r.loss_targets());
        let mut acts = Activations::new(&be, &model.cfg, batch.len(), 16, true);
        let mut opt = AdamW::new(&be, &model.layout, AdamWConfig::default());
        let mut losses = Vec::new();
        for _ in 0..25 {
            model.forward(&be, &mut acts, &batch).unwrap();
            model.head_fwd(&be, &mut acts, &targets, 1.0, false);
            let (loss, coef) = masked_mean_ce(&acts.head.read_logp(&be, batch.len()), &targets);
            let mut grads = model.zero_grads(&be);
            model.backward(&be, &mut acts, &coef.into(), 1.0, &mut grads);
            clip_grad_norm(&be, &mut grads, 1.0);
            let layout = model.layout.clone();
            opt.step(&be, &layout, &mut model.params, &grads, 3e-3);
            losses.push(loss);
        }
        let (first, last) = (losses[0], *losses.last().unwrap());
        println!("{name}: SFT loss {first:.4} → {last:.4}");
        assert!((first - r.f64("loss")[0]).abs() < 1e-4, "{name}: first loss is the reference's");
        assert!(last < 0.5 * first, "{name}: loss {first} → {last} did not fall by half");
    }
}

fn engine(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_engine")).args(args).output().expect("engine runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn sft(sets: &[String], resume: Option<&std::path::Path>) -> (i32, String) {
    train("sft", sets, resume)
}

/// The keys every test run on the qwen3 fixture sets: model, data, run folder.
fn qwen3_sets(data: &std::path::Path, out: &std::path::Path) -> Vec<String> {
    vec![
        format!("model={}", fixtures().join("qwen3").display()),
        format!("data={}", data.display()),
        format!("output_dir={}", out.display()),
    ]
}

/// `engine train <trainer> --set … [--resume …]`: (exit code, stderr).
fn train(trainer: &str, sets: &[String], resume: Option<&std::path::Path>) -> (i32, String) {
    let mut args: Vec<String> = vec!["train".into(), trainer.into()];
    for s in sets {
        args.push("--set".into());
        args.push(s.clone());
    }
    if let Some(r) = resume {
        args.push("--resume".into());
        args.push(r.display().to_string());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = engine(&refs);
    (code, err)
}

/// `engine train sft` end to end: the loss falls, checkpoints load back as
/// models, `keep_last` prunes, and a resume from step 3 reaches bitwise the
/// weights of the uninterrupted run at step 6.
#[test]
fn sft_trains_checkpoints_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sft_data(tmp.path());
    let base = |out: &std::path::Path, keep: usize| sft_sets(&data, out, keep);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (code, err) = sft(&base(&a, 0), None);
    assert_eq!(code, 0, "{err}");
    let m = metrics(&a);
    assert_eq!(m.len(), 6);
    let (first, last) = (m[0]["loss"].as_f64().unwrap(), m[5]["loss"].as_f64().unwrap());
    assert!(last < 0.7 * first, "SFT loss {first} → {last}");
    assert!(a.join("checkpoint-3").is_dir() && a.join("checkpoint-6").is_dir());
    // A checkpoint is a model folder engine (and transformers) can load.
    let (model, _) = engine::model::Model::load(&Cpu, &a.join("checkpoint-6")).unwrap();
    assert_eq!(model.layout.total, 210_496);

    // Resume from step 3 into another run folder: steps 4–6 again.
    let (code, err) = sft(&base(&b, 1), Some(&a.join("checkpoint-3")));
    assert_eq!(code, 0, "{err}");
    let read = |d: &std::path::Path| std::fs::read(d.join("checkpoint-6/optimizer.safetensors")).unwrap();
    assert!(read(&a) == read(&b), "resumed weights and moments differ from the uninterrupted run");
    let mb = metrics(&b);
    assert_eq!(mb.iter().map(|x| x["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![4, 5, 6]);
    assert_eq!(mb[2]["loss"], m[5]["loss"]);
    // keep_last = 1: only the final checkpoint remains in b.
    assert!(b.join("checkpoint-6").is_dir() && !b.join("checkpoint-3").exists());
}

#[test]
fn sft_config_mistakes_are_named() {
    let (code, err) = sft(&["model=x".into(), "data=y".into(), "output_dir=z".into(), "optim.lrr=1".into()], None);
    assert_eq!(code, 2);
    assert!(err.contains("unknown key `optim.lrr`") && err.contains("did you mean `optim.lr`"), "{err}");
    let (code, err) = sft(&["data=y".into(), "output_dir=z".into()], None);
    assert_eq!(code, 2);
    assert!(err.contains("missing key `model`"), "{err}");
}

/// `engine train dpo`: the preference margin grows and the loss falls on
/// pairs whose chosen answer is the true sum.
#[test]
fn dpo_learns_the_preference() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dpo_data(tmp.path());
    let out = tmp.path().join("run");
    let sets = dpo_sets(&data, &out);
    let (code, err) = train("dpo", &sets, None);
    assert_eq!(code, 0, "{err}");
    let m = metrics(&out);
    assert_eq!(m.len(), 12);
    // The first step's policy is the reference: loss log 2, margin 0.
    assert!((m[0]["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6);
    assert!(m[0]["reward_margin"].as_f64().unwrap().abs() < 1e-6);
    let last = &m[11];
    assert!(last["loss"].as_f64().unwrap() < 0.5 * std::f64::consts::LN_2, "{last}");
    assert!(
        last["reward_margin"].as_f64().unwrap() > 0.5 && last["reward_accuracy"].as_f64().unwrap() >= 0.8,
        "{last}"
    );
}

/// `engine train grpo` end to end on a fixture model: rollouts, rewards,
/// advantages, old and reference log-probs, μ = 2 epochs of 2 mini-batches,
/// with a KL penalty and an entropy bonus. The logged reward is the mean of
/// the logged rollouts' rewards, and the sampler's log-probs agree with the
/// trainer's own forward (the same runtime) to rounding.
#[test]
fn grpo_runs_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let data = rl_data(tmp.path());
    let out = tmp.path().join("run");
    let sets = grpo_sets(&data, &out);
    let (code, err) = train("grpo", &sets, None);
    assert_eq!(code, 0, "{err}");
    let m = metrics(&out);
    assert_eq!(m.len(), 2);
    let rollouts: Vec<serde_json::Value> = std::fs::read_to_string(out.join("rollouts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rollouts.len(), 2 * 2 * 4);
    for (i, line) in m.iter().enumerate() {
        let step = (i + 1) as u64;
        let rs: Vec<f64> =
            rollouts.iter().filter(|r| r["step"] == step).map(|r| r["reward"].as_f64().unwrap()).collect();
        assert_eq!(rs.len(), 8);
        let mean = rs.iter().sum::<f64>() / 8.0;
        assert!((line["reward_mean"].as_f64().unwrap() - mean).abs() < 1e-12);
        assert!(line["updates"].as_u64().unwrap() >= 2, "{line}");
        assert!(line["kl"].as_f64().unwrap() >= 0.0 && line["entropy"].as_f64().unwrap() > 0.0, "{line}");
    }
    // Before its first update, the trainer's log-probs are the sampler's.
    assert!(m[0]["sampler_abs_diff_max"].as_f64().unwrap() < 1e-4, "{}", m[0]);
    assert!(out.join("checkpoint-2").is_dir());
}

/// GRPO with the logits in chunks of 5 rows (`logit_chunk_rows`): the
/// token-local PPO loss runs the lm_head once per chunk with its coefficient
/// pass after each (`head::one_pass_with`), where one chunk of every row
/// runs the two phases; the first step (same rollouts, same old log-probs)
/// logs the same loss, gradient norm and statistics, to the rounding of
/// GEMMs of other shapes.
#[test]
fn grpo_one_pass_head_matches_two_phases() {
    let tmp = tempfile::tempdir().unwrap();
    let data = rl_data(tmp.path());
    let mut first = Vec::new();
    for rows in ["0", "5"] {
        let out = tmp.path().join(format!("run{rows}"));
        let mut sets = grpo_sets(&data, &out);
        sets.extend(["max_steps=1".into(), format!("logit_chunk_rows={rows}")]);
        let (code, err) = train("grpo", &sets, None);
        assert_eq!(code, 0, "{err}");
        first.push(metrics(&out).remove(0));
    }
    let (a, b) = (&first[0], &first[1]);
    for key in ["loss", "grad_norm", "ratio_mean", "ppo_kl", "kl", "entropy", "clip_frac_low", "clip_frac_high"] {
        let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1e-3), "{key}: {x} with one chunk, {y} in chunks of 5");
    }
    assert_eq!(a["updates"], b["updates"]);
}

/// On-policy GRPO (one epoch, one mini-batch) reads the update's own
/// log-probs as the old ones instead of running a forward for them: the
/// first step logs what the run that recomputes them (`grpo.recompute_old_logp`)
/// logs to rounding, with the ratio exactly 1.
#[test]
fn grpo_on_policy_skips_the_old_log_prob_forward() {
    let tmp = tempfile::tempdir().unwrap();
    let data = rl_data(tmp.path());
    let mut first = Vec::new();
    // (recompute, logit chunk rows): on-policy with one chunk, on-policy in
    // chunks of 5 (the one-pass head reading the live log-probs as the old
    // ones), and the run that recomputes them.
    for (recompute, rows) in [(false, 0), (false, 5), (true, 0)] {
        let out = tmp.path().join(format!("run{recompute}{rows}"));
        let mut sets = grpo_sets(&data, &out);
        sets.extend([
            "max_steps=1".into(),
            "grpo.epochs=1".into(),
            "grpo.mini_batches=1".into(),
            format!("grpo.recompute_old_logp={recompute}"),
            format!("logit_chunk_rows={rows}"),
        ]);
        let (code, err) = train("grpo", &sets, None);
        assert_eq!(code, 0, "{err}");
        first.push(metrics(&out).remove(0));
    }
    let b = &first[2];
    for a in &first[..2] {
        assert_eq!((a["ratio_mean"].as_f64(), a["ppo_kl"].as_f64()), (Some(1.0), Some(0.0)), "{a}");
    }
    for (a, key) in first[..2].iter().flat_map(|a| {
        ["loss", "grad_norm", "ratio_mean", "ppo_kl", "kl", "entropy", "sampler_abs_diff_max"].map(|k| (a, k))
    }) {
        let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
        // The recomputed old log-probs differ by rounding (its forward skips
        // the entropy, whose pass rounds lse differently on the CPU).
        assert!((x - y).abs() <= 1e-5 * x.abs() + 1e-6, "{key}: {x} on-policy, {y} recomputed");
    }
}

/// `engine train distill`: a student (the qwen3 fixture) distilled towards
/// an SFT-trained copy of itself; the forward KL falls. A teacher with
/// another vocabulary or tokenizer is a clear error.
#[test]
fn distill_moves_the_student_towards_the_teacher() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sft_data(tmp.path());
    let teacher_run = tmp.path().join("teacher");
    let model = fixtures().join("qwen3");
    let common = |out: &std::path::Path| -> Vec<String> {
        vec![
            format!("model={}", model.display()),
            format!("data={}", data.display()),
            format!("output_dir={}", out.display()),
        ]
    };
    let mut sets = common(&teacher_run);
    sets.extend([
        "tokens_per_step=150".into(),
        "epochs=3".into(),
        "max_steps=8".into(),
        "optim.lr=3e-3".into(),
        "save_dtype=f32".into(),
    ]);
    let (code, err) = sft(&sets, None);
    assert_eq!(code, 0, "{err}");
    let teacher = teacher_run.join("checkpoint-8");

    let out = tmp.path().join("student");
    let sets: Vec<String> = common(&out)
        .into_iter()
        .chain([
            format!("teacher={}", teacher.display()),
            "tokens_per_step=150".into(),
            "max_steps=10".into(),
            "epochs=3".into(),
            "optim.lr=3e-3".into(),
            "optim.schedule=constant".into(),
        ])
        .collect();
    let (code, err) = train("distill", &sets, None);
    assert_eq!(code, 0, "{err}");
    let m = metrics(&out);
    assert!(m.len() >= 8, "{} steps", m.len());
    let (first, last) = (m[0]["loss"].as_f64().unwrap(), m[m.len() - 1]["loss"].as_f64().unwrap());
    println!("distillation KL {first} → {last}");
    assert!(first > 0.05 && last < 0.5 * first, "distillation KL {first} → {last}");

    // Another vocabulary size; then the same size with a changed tokenizer.
    let bad = |teacher: &std::path::Path, needle: &str| {
        let mut a = sets.clone();
        let i = a.iter().position(|x| x.starts_with("teacher=")).unwrap();
        a[i] = format!("teacher={}", teacher.display());
        let (code, err) = train("distill", &a, None);
        assert_eq!(code, 2);
        assert!(err.contains(needle), "{err}");
    };
    bad(&fixtures().join("llama"), "vocabulary of 1007 tokens");
    let changed = tmp.path().join("changed");
    std::fs::create_dir_all(&changed).unwrap();
    for e in std::fs::read_dir(&teacher).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), changed.join(e.file_name())).unwrap();
    }
    let t = std::fs::read_to_string(changed.join("tokenizer.json")).unwrap().replace("<|im_end|>", "<|im_stop|>");
    std::fs::write(changed.join("tokenizer.json"), t).unwrap();
    bad(&changed, "tokenizer differs");

    // On-policy (GKD): prompts only, every completion sampled by the student;
    // the divergence on the student's own samples falls as it learns.
    let prompts = tmp.path().join("prompts.jsonl");
    let text: String = (0..6).map(|a| format!("{{\"prompt\": \"What is {a} plus {}?\"}}\n", 5 - a)).collect();
    std::fs::write(&prompts, text).unwrap();
    let out = tmp.path().join("on_policy");
    let sets: Vec<String> = vec![
        format!("model={}", model.display()),
        format!("data={}", prompts.display()),
        format!("output_dir={}", out.display()),
        format!("teacher={}", teacher.display()),
        "tokens_per_step=60".into(),
        "max_steps=12".into(),
        "epochs=20".into(),
        "optim.lr=3e-3".into(),
        "optim.schedule=constant".into(),
        "distill.max_new_tokens=6".into(),
    ];
    let (code, err) = train("distill", &sets, None);
    assert_eq!(code, 0, "{err}");
    let m = metrics(&out);
    assert_eq!(m.len(), 12);
    let mean = |ls: &[serde_json::Value]| ls.iter().map(|l| l["loss"].as_f64().unwrap()).sum::<f64>() / ls.len() as f64;
    let (first, last) = (mean(&m[..3]), mean(&m[9..]));
    println!("on-policy distillation KL {first} → {last}");
    assert!(first > 0.05 && last < 0.5 * first, "on-policy distillation KL {first} → {last}");
    for l in &m {
        // Every example of a step was sampled: ~60 tokens of prompts + samples per step.
        assert!(l["on_policy"].as_u64().unwrap() >= 2 && l["loss_tokens"].as_u64().unwrap() > 0, "{l}");
    }
    // λ between 0 and 1 on data with completions mixes the two.
    let mut mixed = common(&tmp.path().join("mixed"));
    mixed.extend([
        format!("teacher={}", teacher.display()),
        "tokens_per_step=150".into(),
        "max_steps=4".into(),
        "distill.on_policy_fraction=0.5".into(),
        "distill.max_new_tokens=6".into(),
    ]);
    let (code, err) = train("distill", &mixed, None);
    assert_eq!(code, 0, "{err}");
    let sum = |k: &str| metrics(&tmp.path().join("mixed")).iter().map(|l| l[k].as_u64().unwrap()).sum::<u64>();
    let (own, all) = (sum("on_policy"), sum("examples"));
    assert!(own > 0 && own < all, "{own} of {all} examples sampled on-policy");
}

/// A non-finite loss stops training before the weights change, naming the
/// step, with exit code 2 and no checkpoint written for it.
#[test]
fn non_finite_loss_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sft_data(tmp.path());
    // A copy of qwen3 with a NaN in the final norm.
    let m = tmp.path().join("nan-model");
    std::fs::create_dir_all(&m).unwrap();
    for e in std::fs::read_dir(fixtures().join("qwen3")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), m.join(e.file_name())).unwrap();
    }
    let (mut model, _) = engine::model::Model::load(&Cpu, &m).unwrap();
    let norm = model.layout.final_norm;
    model.params[norm.off] = f32::NAN;
    engine::model::checkpoint::save(
        &m,
        &m,
        &model.layout,
        &model.params,
        engine::model::checkpoint::SaveDtype::F32,
        usize::MAX,
    )
    .unwrap();
    let out = tmp.path().join("run");
    let sets = vec![
        format!("model={}", m.display()),
        format!("data={}", data.display()),
        format!("output_dir={}", out.display()),
    ];
    let (code, err) = sft(&sets, None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("step 1") && err.contains("not finite"), "{err}");
    assert!(!out.join("checkpoint-1").exists());
}

/// `engine train rft`: the round's samples are those of the rollout engine
/// with the trainer's seed; answers are set so that some samples verify.
/// The trainer keeps exactly the verified ones and its SFT loss on them falls.
#[test]
fn rft_keeps_verified_samples_and_learns_them() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (sets, expected) = rft_setup(&Cpu, tmp.path(), &out);
    let (code, err) = train("rft", &sets, None);
    assert_eq!(code, 0, "{err}");
    check_rft_run(&out, expected);
}

/// Held-out evaluation and early stopping: pass@1 is logged every step, and
/// when it stops improving the run ends with the best step's weights saved
/// as its last checkpoint (bitwise the checkpoint written at that step).
#[test]
fn sft_early_stopping_keeps_the_best_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sft_data(tmp.path());
    let heldout = tmp.path().join("heldout.jsonl");
    std::fs::write(
        &heldout,
        "{\"prompt\": \"What is 2 plus 2?\", \"answer\": \"4\"}\n{\"prompt\": \"What is 1 plus 5?\", \"answer\": 6}\n",
    )
    .unwrap();
    let out = tmp.path().join("run");
    let mut sets = qwen3_sets(&data, &out);
    sets.extend([
        "tokens_per_step=64".into(),
        "max_steps=8".into(),
        "save_every=1".into(),
        "keep_last=0".into(),
        "save_dtype=\"f32\"".into(),
        "optim.lr=1e-2".into(),
        format!("eval.data={}", heldout.display()),
        "eval.every=1".into(),
        "eval.max_new_tokens=4".into(),
        "early_stop.patience=2".into(),
    ]);
    let (code, err) = sft(&sets, None);
    assert_eq!(code, 0, "{err}");
    let m = metrics(&out);
    assert!(m.iter().all(|l| l["eval_pass@1"].is_f64()), "{m:?}");
    // Throughput and memory on every line: tokens/s from the step's tokens, peak RSS above the model's size.
    assert!(m.iter().all(|l| l["tokens_per_s"].as_f64().unwrap() > 0.0 && l["model_tflops"].as_f64().unwrap() > 0.0));
    assert!(m.iter().all(|l| l["peak_rss_bytes"].as_u64().unwrap() > 210_496 * 4), "{}", m[0]);
    let last = m.last().unwrap();
    let stop = last["step"].as_u64().unwrap();
    let best = last["early_stop"]["best_step"].as_u64().expect("the run stopped early");
    assert!(stop < 8 && best + 2 == stop, "best {best}, stopped at {stop}");
    let weights = |s: u64| std::fs::read(out.join(format!("checkpoint-{s}/model.safetensors"))).unwrap();
    assert_eq!(weights(stop), weights(best));
    assert_ne!(weights(stop - 1), weights(best), "the steps after the best changed the weights");
    assert!(out.join("curves.png").is_file());
}

/// `engine train demo --set quick=true`: every phase of the built-in demo in
/// seconds. Its last stdout line is the summary; two runs give the same
/// numbers and bitwise the same final weights; the checkpoint is a model
/// folder `engine` loads, with the character tokenizer.
#[test]
fn demo_pipeline_runs_and_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str| -> serde_json::Value {
        let dir = tmp.path().join(name);
        let (code, out, err) =
            engine(&["train", "demo", "--set", "quick=true", "--set", &format!("output_dir={}", dir.display())]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(out.lines().last().expect("a summary line")).unwrap()
    };
    let (a, b) = (run("a"), run("b"));
    for key in ["sft_accuracy", "control_accuracy", "rl_accuracy", "sft_steps", "rl_steps", "control_steps"] {
        assert!(a[key].is_number(), "{key} missing: {a}");
        assert_eq!(a[key], b[key], "{key}");
    }
    assert!(a["seconds"].as_f64().unwrap() > 0.0 && a["test_problems"] == 60);
    let ckpt = std::path::PathBuf::from(a["checkpoint"].as_str().unwrap());
    let other = std::path::PathBuf::from(b["checkpoint"].as_str().unwrap());
    let bytes = |p: &std::path::Path| std::fs::read(p.join("model.safetensors")).unwrap();
    assert_eq!(bytes(&ckpt), bytes(&other));
    let root = std::path::PathBuf::from(a["run_dir"].as_str().unwrap());
    for f in ["curves.png", "summary.json", "data/test.jsonl", "sft/metrics.jsonl", "control/metrics.jsonl"] {
        assert!(root.join(f).is_file(), "{f}");
    }
    let (model, _) = Model::<Cpu>::load(&Cpu, &ckpt).unwrap();
    assert_eq!(model.cfg.vocab_size, 15);
    let tok = engine::data::tokenizer::Tokenizer::load(&ckpt).unwrap();
    let ids = tok.encode("47+38-19=", false).unwrap();
    assert_eq!(ids.len(), 9);
    assert_eq!(tok.decode(&ids, true).unwrap(), "47+38-19=");
    assert_eq!(tok.eos_ids, vec![0]);
    // A second run over the same folder replaces it; a foreign folder is refused.
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("precious.txt"), "keep").unwrap();
    let (code, _, err) =
        engine(&["train", "demo", "--set", "quick=true", "--set", &format!("output_dir={}", foreign.display())]);
    assert_eq!(code, 2);
    assert!(err.contains("not an earlier demo") && foreign.join("precious.txt").is_file(), "{err}");
}

/// Ctrl-C (SIGINT) during `engine train sft`: the step in progress ends, its
/// checkpoint is saved, the exit code is 130, and `--resume` continues.
#[test]
fn ctrl_c_saves_a_checkpoint_and_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sft_data(tmp.path());
    let out = tmp.path().join("run");
    let mut sets = qwen3_sets(&data, &out);
    sets.extend(["tokens_per_step=64".into(), "epochs=100000".into(), "save_dtype=\"f32\"".into()]);
    let mut args = vec!["train".to_string(), "sft".into()];
    for s in &sets {
        args.extend(["--set".to_string(), s.clone()]);
    }
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_to_string(out.join("metrics.jsonl")).map_or(0, |t| t.lines().count()) < 2 {
        assert!(std::time::Instant::now() < deadline, "no training steps within 60 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let killed = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let done = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(130), "{err}");
    let m = metrics(&out);
    let last = m.last().unwrap();
    assert_eq!(last["interrupted"], true, "{last}");
    let step = last["step"].as_u64().unwrap();
    let ckpt = out.join(format!("checkpoint-{step}"));
    assert!(ckpt.join("model.safetensors").is_file() && err.contains("--resume"), "{err}");
    sets.push(format!("max_steps={}", step + 1));
    let (code, err) = sft(&sets, Some(&ckpt));
    assert_eq!(code, 0, "{err}");
    assert!(out.join(format!("checkpoint-{}", step + 1)).is_dir());
}

/// A model too large for the machine is refused before any weight is read,
/// with the memory it needs.
#[test]
fn a_model_too_large_is_refused_with_its_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("huge");
    std::fs::create_dir_all(&model).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("qwen3/config.json")).unwrap()).unwrap();
    // About 8e11 parameters: 12 TiB of f32 weights, gradients and moments.
    config["hidden_size"] = 16384.into();
    config["intermediate_size"] = 65536.into();
    config["num_hidden_layers"] = 200.into();
    config["num_attention_heads"] = 128.into();
    config["num_key_value_heads"] = 8.into();
    config["head_dim"] = 128.into();
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    let data = sft_data(tmp.path());
    let out = tmp.path().join("run");
    let (code, err) = sft(
        &[
            format!("model={}", model.display()),
            format!("data={}", data.display()),
            format!("output_dir={}", out.display()),
        ],
        None,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("needs") && err.contains("TiB") && err.contains("is available"), "{err}");
    assert!(!out.exists(), "nothing is written for a run that cannot start");
}

/// A disk that fills up while a checkpoint is written (here: a file-size
/// limit, `ulimit -f`, which fails writes the same way): a clear error
/// naming the checkpoint and the file, exit code 2, the partial folder
/// removed, and the earlier checkpoint intact and loadable.
#[test]
fn a_failed_save_keeps_the_earlier_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sft_data(tmp.path());
    let out = tmp.path().join("run");
    let mut sets = qwen3_sets(&data, &out);
    sets.extend(["tokens_per_step=64".into(), "keep_last=1".into(), "save_every=1".into(), "max_steps=1".into()]);
    let (code, err) = sft(&sets, None);
    assert_eq!(code, 0, "{err}");
    let first = out.join("checkpoint-1");
    let before = std::fs::read(first.join("model.safetensors")).unwrap();
    *sets.last_mut().unwrap() = "max_steps=3".into();
    // Files above 2 MiB cannot be written: the weights (bf16) fit, the
    // optimizer state (three f32 copies) does not. SIGXFSZ is ignored so the
    // write fails with an error instead of killing the process.
    let mut cmd = format!("ulimit -f 2048; trap '' XFSZ; exec {} train sft", env!("CARGO_BIN_EXE_engine"));
    for s in &sets {
        cmd.push_str(&format!(" --set '{s}'"));
    }
    cmd.push_str(&format!(" --resume '{}'", first.display()));
    let done = std::process::Command::new("bash").args(["-c", &cmd]).output().unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(2), "{err}");
    assert!(err.contains("saving checkpoint-2 failed") && err.contains("optimizer.safetensors"), "{err}");
    assert!(!out.join("checkpoint-2").exists() && !out.join(".checkpoint-2.tmp").exists());
    assert_eq!(std::fs::read(first.join("model.safetensors")).unwrap(), before);
    Model::<Cpu>::load(&Cpu, &first).unwrap();
}

/// GRPO with a custom reward program: its numbers reach the rewards with
/// their weight; a program that fails or prints garbage stops the run with
/// an error that names it, exit code 2.
#[test]
fn grpo_custom_reward_command() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("rl.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"What is 1 + 1?\", \"answer\": \"2\"}\n{\"prompt\": \"What is 2 + 2?\", \"answer\": 4}\n",
    )
    .unwrap();
    let run = |name: &str, command: &str| -> (i32, String, std::path::PathBuf) {
        let out = tmp.path().join(name);
        let sets: Vec<String> = vec![
            format!("model={}", fixtures().join("qwen3").display()),
            format!("data={}", data.display()),
            format!("output_dir={}", out.display()),
            "max_steps=1".into(),
            "grpo.prompts_per_step=2".into(),
            "grpo.group_size=2".into(),
            "grpo.max_new_tokens=4".into(),
            "reward.math=0.0".into(),
            "reward.command_weight=0.5".into(),
            format!("reward.command={command}"),
        ];
        let (code, err) = train("grpo", &sets, None);
        (code, err, out)
    };
    // The program checks each line is JSON with the three fields, then scores 0.25.
    let script = "while read -r l; do case $l in *'\"prompt\":'*'\"response\":'*'\"answer\":'*) echo 0.25;; *) echo bad;; esac; done";
    let (code, err, out) = run("ok", &format!("\"{}\"", script.replace('"', "\\\"")));
    assert_eq!(code, 0, "{err}");
    let rewards: Vec<f64> = std::fs::read_to_string(out.join("rollouts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["reward"].as_f64().unwrap())
        .collect();
    assert_eq!(rewards, vec![0.125; 4]);
    let (code, err, _) = run("garbage", "\"while read -r l; do echo banana; done\"");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("reward.command") && err.contains("banana"), "{err}");
    let (code, err, _) = run("fails", "\"echo broken >&2; exit 3\"");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("reward.command") && err.contains("broken"), "{err}");
}

/// `--print-config` prints a complete config every trainer reads back: for
/// SFT, the printed file with the three required keys set trains a step.
#[test]
fn printed_configs_are_complete_and_valid() {
    for trainer in ["sft", "dpo", "grpo", "distill", "rft"] {
        let (code, out, err) = engine(&["train", trainer, "--print-config"]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("model = \"...\"") && out.contains("[optim]\nlr = 1e-5"), "{trainer}: {out}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, printed, _) = engine(&["train", "sft", "--print-config"]);
    let config = tmp.path().join("run.toml");
    std::fs::write(&config, printed).unwrap();
    let (data, out) = (sft_data(tmp.path()), tmp.path().join("run"));
    let mut args: Vec<String> = vec!["train".into(), "sft".into(), "--config".into(), config.display().to_string()];
    for s in qwen3_sets(&data, &out).into_iter().chain(["max_steps=1".to_string()]) {
        args.extend(["--set".to_string(), s]);
    }
    let (code, _, err) = engine(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    assert_eq!(metrics(&out).len(), 1);
}
