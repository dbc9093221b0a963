//! `engine train` with no arguments: the built-in demo. It trains a small
//! model from scratch, with no download, on two-step arithmetic generated in
//! code ([`task`]), in the setting the STaR / GRPO papers study: a *limited*
//! set of worked rationales and a larger pool of problems with answers only.
//!
//! 1. SFT on the rationales until held-out (dev) pass@1 stops improving:
//!    evaluated every `demo.sft_eval_every` steps, stopped after
//!    `demo.sft_patience` evaluations without a new best, continuing from
//!    the best weights.
//! 2. From there, GRPO (`gppo` loss, the verifier's reward) on the
//!    answer-only pool.
//! 3. The control: SFT continued from the same point for the same compute
//!    as step 2 (counted in tokens, so the run is deterministic; both wall
//!    times are reported).
//! 4. Greedy pass@1 of the three models on `demo.test` unseen problems.
//!
//! Each phase is an ordinary `engine train sft|grpo` run on files written
//! into the run folder (the model, its tokenizer, the JSONL data), so the
//! demo exercises exactly what a user runs. The last line on stdout is one
//! JSON object with the three accuracies, the seconds and the run folder.

pub mod task;

use super::checkpoint::checkpoints;
use super::common::{read_metrics as metrics, series};
use super::config::{Config, KeySpec, Kind};
use super::eval::{evaluate, EvalSpec};
use super::plot::{write_png, Chart, Series};
use crate::backend::Backend;
use crate::data::tokenizer::Tokenizer;
use crate::model::checkpoint::write_atomic;
use crate::model::Model;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use task::{problems, write_initial_model, Problem, Shape};

macro_rules! key {
    ($k:expr, $kind:ident, $d:expr, $h:expr) => {
        KeySpec { key: $k, kind: Kind::$kind, default: Some($d), help: $h }
    };
}

const KEYS: &[KeySpec] = &[
    key!("output_dir", Str, "\"runs/demo\"", "run folder (replaced if it holds an earlier demo)"),
    key!("seed", Int, "0", "problems, initial weights, data order and sampling"),
    key!("quick", Bool, "false", "a seconds-long version of every phase (CI)"),
    key!("rationales", Int, "1000", "worked rationales for SFT"),
    key!("pool", Int, "20000", "answer-only problems for RL"),
    key!("dev", Int, "500", "held-out problems for the SFT plateau rule and the curves"),
    key!("test", Int, "1000", "held-out problems for the final numbers"),
    key!("max_operand", Int, "100", "operands are below this"),
    key!("model.hidden", Int, "128", "hidden size"),
    key!("model.layers", Int, "4", "transformer layers"),
    key!("model.heads", Int, "4", "attention heads"),
    key!("model.intermediate", Int, "352", "MLP width"),
    key!("sft.lr", Float, "1e-3", "SFT learning rate (constant after warm-up)"),
    key!("sft.tokens_per_step", Int, "2048", "SFT tokens per optimizer step"),
    key!("sft.eval_every", Int, "25", "SFT steps between dev evaluations"),
    key!("sft.patience", Int, "8", "dev evaluations without a new best before SFT stops"),
    key!("sft.max_steps", Int, "3000", "SFT steps at most"),
    key!("rl.lr", Float, "5e-5", "GRPO learning rate (constant)"),
    key!("rl.steps", Int, "400", "GRPO steps"),
    key!("rl.prompts_per_step", Int, "16", "GRPO prompts per step"),
    key!("rl.group_size", Int, "8", "GRPO samples per prompt"),
    key!("rl.mini_batches", Int, "4", "GRPO optimizer updates per step"),
    key!("rl.eval_every", Int, "25", "GRPO and control steps between dev evaluations"),
    key!("cost.generated_token", Float, "2.0", "cost of a sampled token, in SFT training tokens (control budget)"),
];

pub fn config_keys() -> Vec<KeySpec> {
    KEYS.to_vec()
}

/// The largest prompt + rationale, in characters (= tokens) with EOS.
const MAX_LEN: usize = 48;

fn write_jsonl(path: &Path, rows: impl Iterator<Item = Value>) -> Result<()> {
    let mut text = String::new();
    for r in rows {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}

/// The newest checkpoint of a trainer's run folder.
fn last_checkpoint(run: &Path) -> Result<PathBuf> {
    checkpoints(run)?.pop().map(|(_, p)| p).with_context(|| format!("{}: the run saved no checkpoint", run.display()))
}

/// A trainer's config from `key=value` settings.
fn trainer_config(keys: &[KeySpec], sets: Vec<String>) -> Result<Config> {
    Config::load(None, &sets, keys)
}

struct Phase {
    dir: PathBuf,
    seconds: f64,
}

fn phase(name: &str, f: impl FnOnce() -> Result<PathBuf>) -> Result<Phase> {
    eprintln!("demo: {name}");
    let t = Instant::now();
    let dir = f()?;
    if super::common::interrupted() {
        bail!("interrupted during {name}; the phase's last checkpoint is in {}", dir.display());
    }
    Ok(Phase { dir, seconds: t.elapsed().as_secs_f64() })
}

/// Greedy pass@1 of the checkpoint in `dir` on `problems`.
fn accuracy<B: Backend>(be: &B, dir: &Path, problems: &[Problem], seed: u64) -> Result<f64> {
    let (model, _) = Model::<B>::load(be, dir)?;
    let tok = Tokenizer::load(dir)?;
    let probs: Vec<(Vec<u32>, String)> = problems
        .iter()
        .map(|p| Ok((tok.encode(&p.prompt(), false)?, p.answer().to_string())))
        .collect::<Result<_>>()?;
    let spec = EvalSpec { max_new_tokens: MAX_LEN, k: 1, temperature: 0.0, seed, eos: tok.eos_ids.clone() };
    Ok(evaluate(be, &model, &tok, &probs, &spec)?.pass1)
}

/// Runs the demo on backend `be` (the numbers of docs/DEMO.md are the CPU's).
pub fn run<B: Backend>(be: &B, cfg: &Config) -> Result<Value> {
    let clock = Instant::now();
    let quick = cfg.bool("quick");
    let int = |k: &str| -> Result<usize> {
        let v = cfg.int(k);
        if v <= 0 {
            bail!("demo key `{k}` must be positive, got {v}");
        }
        Ok(v as usize)
    };
    // The quick form keeps every phase but shrinks it to seconds.
    let size = |k: &str, small: usize| -> Result<usize> { Ok(if quick { small } else { int(k)? }) };
    let seed = cfg.int("seed") as u64;
    let root = PathBuf::from(cfg.str("output_dir"));
    if root.exists() {
        if !root.join("demo.json").exists() && std::fs::read_dir(&root)?.next().is_some() {
            bail!("{}: exists and is not an earlier demo's run folder; choose another output_dir", root.display());
        }
        std::fs::remove_dir_all(&root).with_context(|| format!("{}: cannot replace", root.display()))?;
    }
    std::fs::create_dir_all(root.join("data"))?;
    write_atomic(&root.join("demo.json"), serde_json::to_string_pretty(&cfg.to_json())?.as_bytes())?;

    // Data: four disjoint problem sets.
    let max = int("max_operand")? as u32;
    let rationales = problems(seed.wrapping_add(1), size("rationales", 200)?, max, &[]);
    let dev = problems(seed.wrapping_add(2), size("dev", 40)?, max, &rationales);
    let test = problems(seed.wrapping_add(3), size("test", 60)?, max, &[rationales.clone(), dev.clone()].concat());
    let seen = [rationales.clone(), dev.clone(), test.clone()].concat();
    let pool = problems(seed.wrapping_add(4), size("pool", 200)?, max, &seen);
    let data = root.join("data");
    let (sft_data, pool_data, dev_data) =
        (data.join("rationales.jsonl"), data.join("pool.jsonl"), data.join("dev.jsonl"));
    write_jsonl(&sft_data, rationales.iter().map(|p| json!({"prompt": p.prompt(), "completion": p.rationale()})))?;
    let answers = |ps: &[Problem]| {
        ps.iter().map(|p| json!({"prompt": p.prompt(), "answer": p.answer().to_string()})).collect::<Vec<_>>()
    };
    write_jsonl(&pool_data, answers(&pool).into_iter())?;
    write_jsonl(&dev_data, answers(&dev).into_iter())?;
    write_jsonl(&data.join("test.jsonl"), answers(&test).into_iter())?;

    // The model, from scratch.
    let shape = Shape {
        hidden: size("model.hidden", 32)?,
        layers: size("model.layers", 1)?,
        heads: size("model.heads", 2)?,
        intermediate: size("model.intermediate", 64)?,
        max_positions: MAX_LEN * 2,
    };
    let init = root.join("init");
    write_initial_model(&init, &shape, seed)?;

    let p = |s: &Path| s.display().to_string();
    let common = |model: &Path, data: &Path, out: &Path, seed: u64| -> Vec<String> {
        vec![
            format!("model={}", p(model)),
            format!("data={}", p(data)),
            format!("output_dir={}", p(out)),
            format!("max_seq_len={MAX_LEN}"),
            format!("seed={seed}"),
            "save_dtype=\"f32\"".into(),
            "keep_last=1".into(),
            format!("eval.data={}", p(&dev_data)),
            format!("eval.max_new_tokens={MAX_LEN}"),
            "optim.schedule=\"constant\"".into(),
            "optim.max_grad_norm=1.0".into(),
        ]
    };
    let sft_sets = |model: &Path, out: &Path, seed: u64, steps: usize, eval_every: usize| -> Result<Vec<String>> {
        let mut s = common(model, &sft_data, out, seed);
        s.extend([
            "epochs=100000".to_string(),
            format!("max_steps={steps}"),
            format!("tokens_per_step={}", int("sft.tokens_per_step")?),
            format!("micro_batch_tokens={}", int("sft.tokens_per_step")?.max(MAX_LEN)),
            format!("optim.lr={}", cfg.float("sft.lr")),
            format!("eval.every={eval_every}"),
        ]);
        Ok(s)
    };

    // 1. SFT to its plateau.
    let sft = phase("SFT on the worked rationales until held-out accuracy stops improving", || {
        let mut sets =
            sft_sets(&init, &root.join("sft"), seed, size("sft.max_steps", 30)?, size("sft.eval_every", 5)?)?;
        sets.push(format!("early_stop.patience={}", size("sft.patience", 2)?));
        sets.push("optim.warmup_steps=20".into());
        super::sft::run(be, &trainer_config(&super::sft::config_keys(), sets)?, None)
    })?;
    let start = last_checkpoint(&sft.dir)?;

    // 2. GRPO from the plateau.
    let rl_steps = size("rl.steps", 3)?;
    let rl = phase("GRPO (gppo) with the verifier's reward on the answer-only pool", || {
        let mut sets = common(&start, &pool_data, &root.join("rl"), seed.wrapping_add(11));
        sets.extend([
            format!("max_steps={rl_steps}"),
            format!("optim.lr={}", cfg.float("rl.lr")),
            format!("eval.every={}", size("rl.eval_every", 3)?),
            // Micro-batches of a few dozen rollouts, so that mini-batches can split a step.
            format!("micro_batch_tokens={}", 1024),
            format!("grpo.mini_batches={}", int("rl.mini_batches")?),
            format!("grpo.prompts_per_step={}", size("rl.prompts_per_step", 4)?),
            format!("grpo.group_size={}", size("rl.group_size", 4)?),
            format!("grpo.max_new_tokens={MAX_LEN}"),
            "grpo.loss=\"gppo\"".into(),
        ]);
        super::grpo::run(be, &trainer_config(&super::grpo::config_keys(), sets)?, None)
    })?;

    // 3. The control: SFT from the same point for the same compute.
    let rl_lines = metrics(&rl.dir)?;
    let field = |l: &Value, k: &str| l[k].as_f64().unwrap_or(0.0);
    let rl_cost: f64 = rl_lines
        .iter()
        .map(|l| {
            // Old log-probs (one forward, a third of a training pass) plus the update.
            field(l, "tokens_generated") * cfg.float("cost.generated_token")
                + field(l, "tokens_trained") * (1.0 / 3.0 + 1.0)
        })
        .sum();
    let sft_step_tokens = int("sft.tokens_per_step")? as f64;
    let control_steps = ((rl_cost / sft_step_tokens).ceil() as usize).max(1);
    // As many dev evaluations as the RL phase had, so that they cost both the same.
    let control_eval_every = (control_steps * size("rl.eval_every", 3)?).div_ceil(rl_steps).max(1);
    let control = phase("control: SFT continued from the same point for the same compute", || {
        let sets = sft_sets(&start, &root.join("control"), seed.wrapping_add(12), control_steps, control_eval_every)?;
        super::sft::run(be, &trainer_config(&super::sft::config_keys(), sets)?, None)
    })?;

    // 4. The final numbers, on problems no phase has seen.
    eprintln!("demo: greedy pass@1 on {} held-out problems", test.len());
    let eval_seed = seed ^ 0x7E57;
    let sft_accuracy = accuracy(be, &start, &test, eval_seed)?;
    let rl_accuracy = accuracy(be, &last_checkpoint(&rl.dir)?, &test, eval_seed)?;
    let control_accuracy = accuracy(be, &last_checkpoint(&control.dir)?, &test, eval_seed)?;
    let sft_lines = metrics(&sft.dir)?;
    let summary = json!({
        "sft_accuracy": sft_accuracy,
        "control_accuracy": control_accuracy,
        "rl_accuracy": rl_accuracy,
        "rl_gain_points": 100.0 * (rl_accuracy - sft_accuracy),
        "seconds": clock.elapsed().as_secs_f64(),
        "run_dir": p(&root),
        "test_problems": test.len(),
        "rationales": rationales.len(),
        "pool": pool.len(),
        "sft_steps": sft_lines.len(),
        "rl_steps": rl_lines.len(),
        "control_steps": control_steps,
        "sft_seconds": sft.seconds,
        "rl_seconds": rl.seconds,
        "control_seconds": control.seconds,
        "checkpoint": p(&last_checkpoint(&rl.dir)?),
    });
    // Both curves on one clock: RL and the control start where SFT stopped.
    let control_lines = metrics(&control.dir)?;
    let sft_end = sft_lines.last().and_then(|l| l["elapsed_s"].as_f64()).unwrap_or(0.0);
    // Both start from the weights SFT stopped with (its best dev evaluation).
    let start_point = sft_lines.iter().rev().find_map(|l| l["early_stop"]["best_pass@1"].as_f64());
    let after_sft = |lines: &[Value], label: &str| {
        let mut s = series(lines, "elapsed_s", "eval_pass@1", label);
        s.points.iter_mut().for_each(|(x, _)| *x += sft_end);
        s.points.splice(0..0, start_point.map(|y| (sft_end, y)));
        s
    };
    let accuracy_curve = series(&rl_lines, "step", "accuracy", "accuracy of the sampled answers");
    let window = 20;
    let smoothed = Series {
        label: format!("mean of the last {window} steps"),
        points: (0..accuracy_curve.points.len())
            .map(|i| {
                let w = &accuracy_curve.points[i.saturating_sub(window - 1)..=i];
                (accuracy_curve.points[i].0, w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64)
            })
            .collect(),
    };
    let charts = [
        Chart {
            title: format!("held-out pass@1 ({} dev problems)", dev.len()),
            x_label: "seconds".into(),
            series: vec![
                series(&sft_lines, "elapsed_s", "eval_pass@1", "SFT on the rationales"),
                after_sft(&rl_lines, "GRPO (gppo) from the SFT plateau"),
                after_sft(&control_lines, "control: SFT continued"),
            ],
        },
        Chart {
            title: "GRPO: rollout accuracy".into(),
            x_label: "step".into(),
            series: vec![accuracy_curve, smoothed],
        },
    ];
    write_png(&root.join("curves.png"), &charts)?;
    let mut f = std::fs::File::create(root.join("summary.json"))?;
    writeln!(f, "{}", serde_json::to_string_pretty(&summary)?)?;
    Ok(summary)
}
