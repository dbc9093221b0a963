//! Every trainer on the GPU. `engine train sft`: the same run on the CPU and
//! on the CUDA backend (Qwen3 fixture, 6 steps), the losses compared step by
//! step; then a resume on the GPU from step 3 reaches bitwise the weights,
//! masters and moments of the uninterrupted GPU run at step 6 (every CUDA
//! kernel in the step is deterministic, and the checkpoint carries the fp32
//! masters). DPO, GRPO, distillation, RFT, held-out evaluation and the demo
//! run end to end with their own checks.

use super::common::fixtures;
use super::common::runs::{
    check_rft_run, dpo_data, dpo_sets, grpo_sets, metrics, rft_setup, rl_data, sft_data, sft_sets,
};
use super::util::gpu;
use engine::backend::cpu::Cpu;
use engine::backend::cuda::Cuda;
use engine::backend::Backend;
use engine::train::config::Config;
use std::path::Path;

fn sft<B: Backend>(be: &B, data: &Path, out: &Path, resume: Option<&Path>) {
    let cfg = Config::load(None, &sft_sets(data, out, 0), &engine::train::sft::config_keys()).unwrap();
    engine::train::sft::run(be, &cfg, resume).unwrap();
}

fn losses(run: &Path) -> Vec<f64> {
    metrics(run).iter().map(|l| l["loss"].as_f64().unwrap()).collect()
}

#[test]
fn sft_on_the_gpu_follows_the_cpu_and_resumes_exactly() {
    let Some(_) = gpu("sft_on_the_gpu_follows_the_cpu_and_resumes_exactly") else { return };
    let be = Cuda::new(0).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = sft_data(tmp.path());
    let (cpu_dir, gpu_dir, resumed) = (tmp.path().join("cpu"), tmp.path().join("gpu"), tmp.path().join("resumed"));
    sft(&Cpu, &data, &cpu_dir, None);
    sft(&be, &data, &gpu_dir, None);
    let (c, g) = (losses(&cpu_dir), losses(&gpu_dir));
    println!("sft losses, cpu: {c:.4?}\nsft losses, gpu: {g:.4?}");
    assert_eq!(g.len(), 6);
    // Step 1 is the same weights in bf16: the bf16 forward's error only.
    assert!((g[0] - c[0]).abs() <= 1e-2 * c[0], "step 1 loss: gpu {} vs cpu {}", g[0], c[0]);
    // Later steps follow slightly different weights (bf16 gradients).
    for (i, (x, y)) in g.iter().zip(&c).enumerate() {
        assert!((x - y).abs() <= 0.1 * y, "step {} loss: gpu {x} vs cpu {y}", i + 1);
    }
    assert!(g[5] < 0.7 * g[0], "the GPU run's loss did not fall: {g:?}");
    // The GPU checkpoint is a model folder the CPU loads.
    let (model, _) = engine::model::Model::load(&Cpu, &gpu_dir.join("checkpoint-6")).unwrap();
    assert_eq!(model.layout.total, 210_496);

    sft(&be, &data, &resumed, Some(&gpu_dir.join("checkpoint-3")));
    let read = |d: &Path| std::fs::read(d.join("checkpoint-6/optimizer.safetensors")).unwrap();
    assert!(read(&gpu_dir) == read(&resumed), "the resumed GPU run differs from the uninterrupted one");
    assert_eq!(losses(&resumed)[2], g[5]);
}

fn config(keys: &[engine::train::config::KeySpec], sets: &[String]) -> Config {
    Config::load(None, sets, keys).unwrap()
}

/// DPO on the GPU: the first step's policy is the reference (loss ln 2 up to
/// bf16 rounding), and the preference is learnt as on the CPU.
#[test]
fn dpo_on_the_gpu_learns_the_preference() {
    let Some(_) = gpu("dpo_on_the_gpu_learns_the_preference") else { return };
    let be = Cuda::new(0).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = dpo_data(tmp.path());
    let out = tmp.path().join("run");
    let sets = dpo_sets(&data, &out);
    engine::train::dpo::run(&be, &config(&engine::train::dpo::config_keys(), &sets), None).unwrap();
    let m = metrics(&out);
    println!("dpo on the gpu: {:?}", m.iter().map(|x| x["loss"].as_f64().unwrap()).collect::<Vec<_>>());
    assert_eq!(m.len(), 12);
    let ln2 = std::f64::consts::LN_2;
    // Policy and reference are the same bf16 computation at step 1.
    assert!((m[0]["loss"].as_f64().unwrap() - ln2).abs() < 1e-6, "{}", m[0]);
    let last = &m[11];
    assert!(last["loss"].as_f64().unwrap() < 0.5 * ln2, "{last}");
    assert!(last["reward_accuracy"].as_f64().unwrap() >= 0.8, "{last}");
}

/// GRPO on the GPU end to end (rollouts through the KV cache and decode
/// attention, rewards, old and reference log-probs, KL and entropy terms):
/// metrics are finite and consistent, and before the first update the
/// trainer's bf16 log-probs agree with the sampler's to bf16 rounding.
#[test]
fn grpo_on_the_gpu_runs_end_to_end() {
    let Some(_) = gpu("grpo_on_the_gpu_runs_end_to_end") else { return };
    let be = Cuda::new(0).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = rl_data(tmp.path());
    let out = tmp.path().join("run");
    let sets = grpo_sets(&data, &out);
    engine::train::grpo::run(&be, &config(&engine::train::grpo::config_keys(), &sets), None).unwrap();
    let m = metrics(&out);
    assert_eq!(m.len(), 2);
    for line in &m {
        println!("grpo on the gpu: {line}");
        for k in ["loss", "kl", "entropy", "grad_norm"] {
            assert!(line[k].as_f64().is_some_and(f64::is_finite), "{k}: {line}");
        }
        assert!(line["kl"].as_f64().unwrap() >= 0.0 && line["entropy"].as_f64().unwrap() > 0.0, "{line}");
    }
    // The sampler (decode attention) and the trainer (packed attention) are
    // different bf16 computations of the same log-probs.
    assert!(m[0]["sampler_abs_diff_max"].as_f64().unwrap() < 0.1, "{}", m[0]);
    assert!(out.join("checkpoint-2").is_dir());
}

/// Distillation on the GPU: the qwen3 fixture towards a copy of itself
/// fine-tuned for 6 SFT steps on the CPU; the first step's divergence
/// matches the CPU's to bf16 rounding, and it falls.
#[test]
fn distill_on_the_gpu_follows_the_cpu() {
    let Some(_) = gpu("distill_on_the_gpu_follows_the_cpu") else { return };
    let be = Cuda::new(0).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = sft_data(tmp.path());
    let teacher = tmp.path().join("teacher");
    sft(&Cpu, &data, &teacher, None);
    let teacher = teacher.join("checkpoint-6");
    let sets = |out: &Path| -> Vec<String> {
        vec![
            format!("model={}", fixtures().join("qwen3").display()),
            format!("teacher={}", teacher.display()),
            format!("data={}", data.display()),
            format!("output_dir={}", out.display()),
            "tokens_per_step=150".into(),
            "max_steps=6".into(),
            "epochs=3".into(),
            "optim.lr=3e-3".into(),
            "optim.schedule=constant".into(),
        ]
    };
    let keys = engine::train::distill::config_keys();
    let (c, g) = (tmp.path().join("cpu"), tmp.path().join("gpu"));
    engine::train::distill::run(&Cpu, &config(&keys, &sets(&c)), None).unwrap();
    engine::train::distill::run(&be, &config(&keys, &sets(&g)), None).unwrap();
    let (lc, lg) = (losses(&c), losses(&g));
    println!("distill losses, cpu: {lc:.5?}\ndistill losses, gpu: {lg:.5?}");
    assert!((lg[0] - lc[0]).abs() <= 2e-2 * lc[0], "step 1: gpu {} vs cpu {}", lg[0], lc[0]);
    assert!(lg[5] < lg[0], "the GPU run's divergence did not fall: {lg:?}");
}

/// The built-in demo's quick form on the GPU: SFT, GRPO and the control
/// run end to end and report accuracies; twice, with the same numbers
/// (every CUDA kernel the demo uses is deterministic).
#[test]
fn demo_quick_runs_on_the_gpu_deterministically() {
    let Some(_) = gpu("demo_quick_runs_on_the_gpu_deterministically") else { return };
    let be = Cuda::new(0).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let keys = engine::train::demo::config_keys();
    let run = |name: &str| {
        let sets = vec!["quick=true".to_string(), format!("output_dir={}", tmp.path().join(name).display())];
        let t = std::time::Instant::now();
        let v = engine::train::demo::run(&be, &config(&keys, &sets)).unwrap();
        println!("demo (quick) on the gpu in {:.1} s: {v}", t.elapsed().as_secs_f64());
        v
    };
    let (a, b) = (run("a"), run("b"));
    for key in ["sft_accuracy", "control_accuracy", "rl_accuracy", "sft_steps", "rl_steps", "control_steps"] {
        assert!(a[key].is_number(), "{key} missing: {a}");
        assert_eq!(a[key], b[key], "{key}");
    }
}

/// `engine train rft` on the GPU: the round's samples come from the GPU's
/// rollout engine with the trainer's seed (deterministic, so sampling them
/// here first gives the trainer's); answers are set from them so that some
/// verify, and the trainer keeps exactly those and learns them.
#[test]
fn rft_on_the_gpu_keeps_the_verified_samples() {
    let Some(_) = gpu("rft_on_the_gpu_keeps_the_verified_samples") else { return };
    let be = Cuda::new(0).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (sets, expected) = rft_setup(&be, tmp.path(), &out);
    engine::train::rft::run(&be, &config(&engine::train::rft::config_keys(), &sets), None).unwrap();
    check_rft_run(&out, expected);
}

/// Held-out evaluation inside `engine train sft` on the GPU: pass@1 (greedy
/// generation on the GPU, verified answers) is logged at every step.
#[test]
fn sft_evaluates_on_the_gpu() {
    let Some(_) = gpu("sft_evaluates_on_the_gpu") else { return };
    let be = Cuda::new(0).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = sft_data(tmp.path());
    let heldout = tmp.path().join("heldout.jsonl");
    std::fs::write(&heldout, "{\"prompt\": \"What is 2 plus 2?\", \"answer\": \"4\"}\n").unwrap();
    let out = tmp.path().join("run");
    let mut sets = sft_sets(&data, &out, 0);
    sets.extend([
        "max_steps=2".into(),
        format!("eval.data={}", heldout.display()),
        "eval.every=1".into(),
        "eval.max_new_tokens=4".into(),
    ]);
    engine::train::sft::run(&be, &config(&engine::train::sft::config_keys(), &sets), None).unwrap();
    let m = metrics(&out);
    assert_eq!(m.len(), 2);
    for line in &m {
        let p = line["eval_pass@1"].as_f64().unwrap_or(f64::NAN);
        assert!((0.0..=1.0).contains(&p), "{line}");
    }
}
