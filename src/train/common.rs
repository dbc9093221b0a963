//! What every trainer shares: the common config keys, loading the model and
//! data, the optimizer step (clipping, schedule, AdamW), metrics lines,
//! checkpoints and resume. A trainer builds its examples and its plan of
//! steps, then calls [`Loop::update`] and [`Loop::end_step`] once per step.

use super::checkpoint::{host_params, load_checkpoint, save_checkpoint, set_params};
use super::config::{Config, KeySpec, Kind};
use super::data::{MicroBatch, Overlong};
use super::eval::{evaluate, EvalResult, EvalSpec, Problem};
use super::plot::{Chart, Series};
use crate::backend::{Backend, Span};
use crate::data::chat::ChatTemplate;
use crate::data::chat::Message;
use crate::data::jsonl::{read_objects, Line};
use crate::data::tokenizer::Tokenizer;
use crate::model::checkpoint::{write_atomic, SaveDtype};
use crate::model::{head, Activations, Model};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, LrSchedule, ScheduleKind};
use crate::rollout::Stream;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static CATCH: Once = Once::new();

/// From the first call on, Ctrl-C (SIGINT) asks the running trainer to save a
/// checkpoint at the end of its current step and stop; a second Ctrl-C exits
/// at once (every checkpoint file is written under a temporary name, so
/// nothing half-written is left behind).
fn catch_interrupt() {
    CATCH.call_once(|| {
        let handler = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\ninterrupted: saving a checkpoint at the end of this step (Ctrl-C again to quit now)");
        });
        if let Err(e) = handler {
            eprintln!("warning: cannot catch Ctrl-C ({e}); an interrupted run keeps only its last checkpoint");
        }
    });
}

/// Whether Ctrl-C has stopped a run in this process.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Keys every trainer has.
pub const COMMON_KEYS: &[KeySpec] = &[
    KeySpec { key: "model", kind: Kind::Str, default: None, help: "Hugging Face model folder to start from" },
    KeySpec { key: "data", kind: Kind::Str, default: None, help: "JSONL training data" },
    KeySpec { key: "output_dir", kind: Kind::Str, default: None, help: "run folder: metrics, checkpoints" },
    KeySpec { key: "chat", kind: Kind::Bool, default: Some("false"), help: "render prompts with the chat template" },
    KeySpec { key: "max_seq_len", kind: Kind::Int, default: Some("2048"), help: "longest example in tokens" },
    KeySpec {
        key: "overlong",
        kind: Kind::Str,
        default: Some("\"truncate\""),
        help: "truncate or skip longer examples",
    },
    KeySpec { key: "micro_batch_tokens", kind: Kind::Int, default: Some("4096"), help: "tokens per forward pass" },
    KeySpec {
        key: "logit_chunk_rows",
        kind: Kind::Int,
        default: Some("0"),
        help: "tokens whose logits the lm_head holds at once (0: the backend's choice; fewer saves memory)",
    },
    KeySpec { key: "epochs", kind: Kind::Int, default: Some("1"), help: "passes over the data" },
    KeySpec {
        key: "max_steps",
        kind: Kind::Int,
        default: Some("0"),
        help: "stop after this many steps (0: the epochs decide)",
    },
    KeySpec { key: "seed", kind: Kind::Int, default: Some("0"), help: "data order" },
    KeySpec {
        key: "save_every",
        kind: Kind::Int,
        default: Some("0"),
        help: "checkpoint every N steps (0: only at the end)",
    },
    KeySpec { key: "keep_last", kind: Kind::Int, default: Some("2"), help: "checkpoints kept (0: all)" },
    KeySpec {
        key: "save_dtype",
        kind: Kind::Str,
        default: Some("\"bf16\""),
        help: "bf16 or f32 weights in checkpoints",
    },
    KeySpec {
        key: "eval.data",
        kind: Kind::Str,
        default: Some("\"\""),
        help: "held-out {prompt, answer} JSONL scored every eval.every steps (\"\": none)",
    },
    KeySpec { key: "eval.every", kind: Kind::Int, default: Some("0"), help: "evaluate every N steps (0: off)" },
    KeySpec { key: "eval.limit", kind: Kind::Int, default: Some("0"), help: "first N held-out lines (0: all)" },
    KeySpec { key: "eval.max_new_tokens", kind: Kind::Int, default: Some("512"), help: "longest evaluated answer" },
    KeySpec {
        key: "eval.samples",
        kind: Kind::Int,
        default: Some("1"),
        help: "samples per prompt: 1 is greedy pass@1, k > 1 adds maj@k",
    },
    KeySpec { key: "eval.temperature", kind: Kind::Float, default: Some("1.0"), help: "temperature when k > 1" },
    KeySpec {
        key: "early_stop.patience",
        kind: Kind::Int,
        default: Some("0"),
        help: "stop after N evaluations without a new best pass@1, keeping the best weights (0: off)",
    },
    KeySpec { key: "optim.lr", kind: Kind::Float, default: Some("1e-5"), help: "peak learning rate" },
    KeySpec { key: "optim.warmup_steps", kind: Kind::Int, default: Some("0"), help: "linear warm-up steps" },
    KeySpec { key: "optim.schedule", kind: Kind::Str, default: Some("\"cosine\""), help: "cosine, linear or constant" },
    KeySpec { key: "optim.min_lr_ratio", kind: Kind::Float, default: Some("0.1"), help: "final lr / peak lr" },
    KeySpec { key: "optim.weight_decay", kind: Kind::Float, default: Some("0.0"), help: "AdamW decay on matrices" },
    KeySpec { key: "optim.beta1", kind: Kind::Float, default: Some("0.9"), help: "AdamW β1" },
    KeySpec { key: "optim.beta2", kind: Kind::Float, default: Some("0.999"), help: "AdamW β2" },
    KeySpec { key: "optim.eps", kind: Kind::Float, default: Some("1e-8"), help: "AdamW ε" },
    KeySpec {
        key: "optim.max_grad_norm",
        kind: Kind::Float,
        default: Some("1.0"),
        help: "clip the global gradient norm (0: off)",
    },
];

/// The common keys followed by a trainer's own.
pub fn keys(own: &[KeySpec]) -> Vec<KeySpec> {
    COMMON_KEYS.iter().chain(own).copied().collect()
}

pub fn positive(c: &Config, key: &str) -> Result<usize> {
    let v = c.int(key);
    if v <= 0 {
        bail!("key `{key}` must be positive, got {v}");
    }
    Ok(v as usize)
}

/// Rows of logits per lm_head chunk for an arena of `cap` tokens: the key
/// `logit_chunk_rows`, or the backend's choice where it is 0 (at most `cap`).
pub fn head_chunk<B: Backend>(be: &B, cfg: &Config, model: &crate::model::ModelConfig, cap: usize) -> Result<usize> {
    match cfg.int("logit_chunk_rows") {
        0 => Ok(crate::model::activations::backend_chunk(be, model, cap)),
        v if v < 0 => bail!("key `logit_chunk_rows` must be 0 (the backend's choice) or positive, got {v}"),
        v => Ok((v as usize).min(cap)),
    }
}

/// The model, tokenizer, template and data lines of a run.
pub struct Setup<B: Backend> {
    pub model: Model<B>,
    pub model_dir: PathBuf,
    pub tok: Tokenizer,
    pub chat: Option<ChatTemplate>,
    pub lines: Vec<Line>,
    pub max_len: usize,
    pub overlong: Overlong,
}

impl<B: Backend> Setup<B> {
    pub fn load(be: &B, cfg: &Config) -> Result<Self> {
        let model_dir = PathBuf::from(cfg.str("model"));
        check_memory(be, &model_dir, positive(cfg, "micro_batch_tokens")?.max(positive(cfg, "max_seq_len")?))?;
        let (model, _) = Model::load(be, &model_dir)?;
        let tok = Tokenizer::load(&model_dir)?;
        let chat = if cfg.bool("chat") { Some(ChatTemplate::load(&model_dir)?) } else { None };
        let overlong = match cfg.str("overlong").as_str() {
            "truncate" => Overlong::Truncate,
            "skip" => Overlong::Skip,
            other => bail!("key `overlong`: `{other}` is not truncate or skip"),
        };
        let lines = read_objects(Path::new(&cfg.str("data")))?;
        Ok(Setup { model, model_dir, tok, chat, lines, max_len: positive(cfg, "max_seq_len")?, overlong })
    }

    /// The `{"prompt", "answer"}` problems of `lines` (GRPO, RFT, held-out
    /// evaluation): prompts tokenized (through the chat template when the
    /// run uses one), answers as text.
    pub fn problems(&self, lines: &[Line]) -> Result<Vec<Problem>> {
        let mut out = Vec::with_capacity(lines.len());
        for line in lines {
            let at = &line.at;
            let (Some(Value::String(p)), Some(answer)) = (line.fields.get("prompt"), line.fields.get("answer")) else {
                bail!("{at}: expected a string \"prompt\" and an \"answer\"");
            };
            let answer = match answer {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => bail!("{at}: \"answer\" should be a string or a number"),
            };
            let ids = match &self.chat {
                Some(chat) => self
                    .tok
                    .encode(&chat.render(&[Message { role: "user".into(), content: p.clone() }], true)?, false)?,
                None => self.tok.encode(p, true)?,
            };
            if ids.is_empty() || ids.len() >= self.max_len {
                bail!("{at}: the prompt has {} tokens (max_seq_len {})", ids.len(), self.max_len);
            }
            out.push((ids, answer));
        }
        self.check_vocab(out.iter().flat_map(|(p, _)| p))?;
        Ok(out)
    }

    /// The tokenizer's end-of-sequence ids that the model can produce.
    pub fn eos(&self) -> Vec<u32> {
        let mut eos = self.tok.eos_ids.clone();
        eos.retain(|&e| (e as usize) < self.model.cfg.vocab_size);
        eos
    }

    /// Fails if a token id is outside the model's vocabulary.
    pub fn check_vocab<'a>(&self, ids: impl IntoIterator<Item = &'a u32>) -> Result<()> {
        let v = self.model.cfg.vocab_size;
        match ids.into_iter().find(|&&t| t as usize >= v) {
            Some(t) => bail!("the tokenizer gave id {t}, outside the model's vocabulary ({v})"),
            None => Ok(()),
        }
    }
}

/// Bytes of memory available to a new allocation (Linux's `MemAvailable`);
/// `None` where that is not known.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Fails, before any weight is read, when a full fine-tune of the model in
/// `dir` (weights, gradients, AdamW state and one micro-batch of
/// activations, as `engine info` counts them for the backend) needs more
/// memory than is available: the machine's for the CPU backend, the
/// device's free memory for a GPU.
fn check_memory<B: Backend>(be: &B, dir: &Path, tokens: usize) -> Result<()> {
    let cfg = crate::model::ModelConfig::from_file(&dir.join("config.json"))?;
    let params = crate::model::ParamLayout::new(&cfg).total;
    let (need, have, place) = match be.available_memory() {
        Some(free) => (crate::cli::info::cuda_memory(&cfg, params, tokens), Some(free), "on the GPU"),
        None => (crate::cli::info::cpu_memory(&cfg, params, tokens), available_memory(), "on the CPU"),
    };
    match have {
        Some(have) if need.total() > have => {
            let h = crate::cli::info::human;
            let master = if need.master > 0 { format!(", master weights {}", h(need.master)) } else { String::new() };
            bail!(
                "{}: training this model ({params} parameters) needs {} {place} (weights {}, gradients {}{master}, AdamW {}, activations for {tokens} tokens {}) but {} is available",
                dir.display(),
                h(need.total()),
                h(need.weights),
                h(need.grads),
                h(need.adam),
                h(need.activations),
                h(have)
            )
        }
        _ => Ok(()),
    }
}

/// The plan of a run: [`plan`] with the config's epochs and seed, cut at
/// `max_steps` when that is set.
pub fn plan_steps(cfg: &Config, n: usize, per_step: usize, size: impl Fn(usize) -> usize) -> Result<Vec<Vec<usize>>> {
    let mut steps = plan(n, positive(cfg, "epochs")?, per_step, cfg.int("seed") as u64, size);
    if cfg.int("max_steps") > 0 {
        steps.truncate(cfg.int("max_steps") as usize);
    }
    Ok(steps)
}

/// Prompt / completion examples of the run's data (SFT, distillation):
/// at least one, every id inside the vocabulary. `prompt_only`: lines
/// without a completion are allowed (see [`super::data::sft_examples`]).
pub fn completion_examples<B: Backend>(
    cfg: &Config,
    setup: &Setup<B>,
    prompt_only: bool,
) -> Result<(Vec<super::data::Example>, super::data::DataStats)> {
    let eos = setup.tok.eos_ids.first().copied();
    let (examples, stats) = super::data::sft_examples(
        &setup.lines,
        &setup.tok,
        setup.chat.as_ref(),
        eos,
        setup.max_len,
        setup.overlong,
        prompt_only,
    )?;
    if examples.is_empty() {
        bail!(
            "{}: no usable example ({} skipped as longer than max_seq_len {})",
            cfg.str("data"),
            stats.skipped,
            setup.max_len
        );
    }
    setup.check_vocab(examples.iter().flat_map(|e| &e.tokens))?;
    Ok((examples, stats))
}

/// Phase 1 on a micro-batch: the per-token log-probs of its targets at
/// temperature `t`, and the entropies when asked (zeros otherwise).
pub fn token_logps<B: Backend>(
    be: &B,
    model: &Model<B>,
    acts: &mut Activations<B>,
    mb: &MicroBatch,
    t: f32,
    entropy: bool,
) -> Result<(Vec<f32>, Vec<f32>)> {
    model.forward(be, acts, &mb.batch)?;
    model.head_fwd(be, acts, &mb.targets, t, entropy);
    let n = mb.batch.len();
    Ok((acts.head.read_logp(be, n), if entropy { acts.head.read_entropy(be, n) } else { vec![0.0; n] }))
}

/// Zeroes a gradient buffer.
pub fn zero<B: Backend>(be: &B, grads: &mut B::Buf) {
    let all = Span::new(0, B::len(grads));
    be.fill(B::view_mut(grads, all), 0.0);
}

/// SFT over one step's micro-batches: token-mean cross-entropy over the
/// step's loss tokens, gradients accumulated into `grads`; returns the loss.
pub fn sft_accumulate<B: Backend>(
    be: &B,
    model: &Model<B>,
    acts: &mut Activations<B>,
    mbs: &[MicroBatch],
    grads: &mut B::Buf,
) -> Result<f64> {
    let step_tokens: usize = mbs.iter().map(MicroBatch::loss_tokens).sum();
    let mut loss = 0.0;
    for mb in mbs {
        model.forward(be, acts, &mb.batch)?;
        // The coefficients (−1/n per target) do not depend on the
        // log-probabilities: the lm_head runs once per chunk (head::one_pass).
        let n = mb.batch.len();
        let coefs = crate::loss::sft::ce_coefs(&mb.targets, step_tokens).into();
        model.backward_with_head(be, acts, grads, |be, hb, s, h, w, dh, grads, dw| {
            head::one_pass(be, hb, s, h, w, &mb.targets, &coefs, 1.0, dh, grads, dw)
        });
        let logp = acts.head.read_logp(be, n);
        loss += crate::loss::sft::masked_ce_with_count(&logp, &mb.targets, step_tokens).0;
    }
    Ok(loss)
}

/// Items of every step, over all epochs: each epoch a seeded permutation,
/// cut into steps of at least `per_step` by `size`.
pub fn plan(n: usize, epochs: usize, per_step: usize, seed: u64, size: impl Fn(usize) -> usize) -> Vec<Vec<usize>> {
    let mut steps = Vec::new();
    for epoch in 0..epochs {
        let stream = Stream::new(seed, u64::MAX, epoch as u64);
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..order.len()).rev() {
            let j = (stream.uniform(i as u64) * (i + 1) as f64) as usize;
            order.swap(i, j.min(i));
        }
        let (mut cur, mut amount) = (Vec::new(), 0);
        for i in order {
            cur.push(i);
            amount += size(i);
            if amount >= per_step {
                steps.push(std::mem::take(&mut cur));
                amount = 0;
            }
        }
        if !cur.is_empty() {
            steps.push(cur);
        }
    }
    steps
}

/// Held-out evaluation every `every` steps, and early stopping on it.
struct HeldOut {
    problems: Vec<Problem>,
    spec: EvalSpec,
    every: u64,
    patience: u64,
    best: Option<(f64, u64, Vec<f32>)>,
    since_best: u64,
}

/// The optimizer, schedule, metrics file, held-out evaluation and
/// checkpointing of a run.
pub struct Loop<B: Backend> {
    pub trainer: &'static str,
    pub run_dir: PathBuf,
    model_dir: PathBuf,
    pub opt: AdamW<B>,
    sched: LrSchedule,
    max_grad_norm: f64,
    save_dtype: SaveDtype,
    save_every: u64,
    keep_last: usize,
    metrics: std::fs::File,
    eval: Option<HeldOut>,
    /// First step to run (after a resume).
    pub start: u64,
    pub total: u64,
    clock: std::time::Instant,
    /// When the previous step ended (or the run started).
    step_clock: std::time::Instant,
    params: usize,
}

impl<B: Backend> Loop<B> {
    /// Sets up the run folder and the optimizer; with `resume`, restores
    /// the model, the optimizer and the step from that checkpoint.
    pub fn start(
        be: &B,
        trainer: &'static str,
        cfg: &Config,
        setup: &mut Setup<B>,
        total: u64,
        resume: Option<&Path>,
    ) -> Result<Self> {
        let save_dtype = match cfg.str("save_dtype").as_str() {
            "bf16" => SaveDtype::BF16,
            "f32" => SaveDtype::F32,
            other => bail!("key `save_dtype`: `{other}` is not bf16 or f32"),
        };
        let sched = LrSchedule {
            kind: ScheduleKind::parse(&cfg.str("optim.schedule")).map_err(|e| anyhow!("key `optim.schedule`: {e}"))?,
            peak: cfg.float("optim.lr"),
            warmup_steps: cfg.int("optim.warmup_steps").max(0) as u64,
            total_steps: total,
            min_ratio: cfg.float("optim.min_lr_ratio"),
        };
        let oc = AdamWConfig {
            beta1: cfg.float("optim.beta1") as f32,
            beta2: cfg.float("optim.beta2") as f32,
            eps: cfg.float("optim.eps") as f32,
            weight_decay: cfg.float("optim.weight_decay") as f32,
        };
        let mut opt = AdamW::new(be, &setup.model.layout, oc);
        let mut start = 0;
        if let Some(dir) = resume {
            let state = load_checkpoint(be, dir, &mut setup.model, &mut opt)?;
            if state["trainer"] != trainer {
                bail!("{}: a checkpoint of the `{}` trainer, not `{trainer}`", dir.display(), state["trainer"]);
            }
            start = state["step"].as_u64().ok_or_else(|| anyhow!("{}: trainer state has no step", dir.display()))?;
        }
        let run_dir = PathBuf::from(cfg.str("output_dir"));
        std::fs::create_dir_all(&run_dir).with_context(|| format!("{}: cannot create", run_dir.display()))?;
        write_atomic(&run_dir.join("run_config.json"), serde_json::to_string_pretty(&cfg.to_json())?.as_bytes())?;
        let eval = HeldOut::load(cfg, setup)?;
        catch_interrupt();
        let metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(run_dir.join("metrics.jsonl"))
            .with_context(|| format!("{}: cannot open metrics.jsonl", run_dir.display()))?;
        Ok(Loop {
            trainer,
            run_dir,
            model_dir: setup.model_dir.clone(),
            opt,
            sched,
            max_grad_norm: cfg.float("optim.max_grad_norm"),
            save_dtype,
            save_every: cfg.int("save_every").max(0) as u64,
            keep_last: cfg.int("keep_last").max(0) as usize,
            metrics,
            eval,
            start,
            total,
            clock: std::time::Instant::now(),
            step_clock: std::time::Instant::now(),
            params: setup.model.layout.total,
        })
    }

    /// Clips the gradients and takes the AdamW step of (0-based) `step`;
    /// returns `(lr, grad norm before clipping)`. A non-finite loss or
    /// gradient stops the run before the weights change.
    pub fn update(
        &mut self,
        be: &B,
        model: &mut Model<B>,
        grads: &mut B::Buf,
        step: u64,
        loss: f64,
    ) -> Result<(f64, f64)> {
        let norm = clip_grad_norm(be, grads, self.max_grad_norm);
        if !loss.is_finite() || !norm.is_finite() {
            bail!("step {}: the loss or the gradient is not finite (loss {loss}, grad norm {norm}); the last checkpoint is kept", step + 1);
        }
        let lr = self.sched.lr(step);
        self.opt.step(be, &model.layout, &mut model.params, grads, lr as f32);
        Ok((lr, norm))
    }

    /// Ends the run: plots the main curves of `metrics.jsonl` into
    /// `curves.png` beside it; returns the run folder.
    pub fn finish(self) -> Result<PathBuf> {
        let lines = read_metrics(&self.run_dir)?;
        super::plot::write_png(&self.run_dir.join("curves.png"), &curves(&lines, self.trainer))?;
        Ok(self.run_dir)
    }

    /// Evaluates on the held-out set now (whatever `eval.every` says);
    /// `None` when the run has no held-out set.
    pub fn evaluate(
        &self,
        be: &B,
        model: &Model<B>,
        tok: &crate::data::tokenizer::Tokenizer,
    ) -> Result<Option<EvalResult>> {
        self.eval.as_ref().map(|h| evaluate(be, model, tok, &h.problems, &h.spec)).transpose()
    }

    /// Writes the step's metrics line (with `step` 1-based, the elapsed
    /// time and any held-out evaluation added) and saves a checkpoint when
    /// one is due. Returns true when the run must end: early stopping (the
    /// best weights are then back in `model` and saved as the last
    /// checkpoint) or Ctrl-C (this step's weights are saved).
    pub fn end_step(
        &mut self,
        be: &B,
        model: &mut Model<B>,
        tok: &crate::data::tokenizer::Tokenizer,
        step: u64,
        mut line: Value,
    ) -> Result<bool> {
        let done = step + 1;
        let mut stop = false;
        if let Some(h) =
            self.eval.as_mut().filter(|h| h.every > 0 && (done.is_multiple_of(h.every) || done == self.total))
        {
            let r = evaluate(be, model, tok, &h.problems, &h.spec)?;
            line["eval_pass@1"] = r.pass1.into();
            if let Some(m) = r.maj {
                line[format!("eval_maj@{}", r.k)] = m.into();
            }
            line["eval_response_length"] = r.response_length.into();
            if h.best.as_ref().is_none_or(|(b, _, _)| r.pass1 > *b) {
                let keep = if h.patience > 0 { host_params(be, model, &self.opt) } else { Vec::new() };
                h.best = Some((r.pass1, done, keep));
                h.since_best = 0;
            } else {
                h.since_best += 1;
                stop = h.patience > 0 && h.since_best >= h.patience;
            }
            if stop {
                let (best, at, params) = h.best.take().expect("a best evaluation exists");
                set_params(be, model, &mut self.opt, &params);
                line["early_stop"] = serde_json::json!({ "best_step": at, "best_pass@1": best });
                eprintln!("{}: held-out pass@1 has not improved on {best:.4} (step {at}) for {} evaluations; stopping with those weights", self.trainer, h.patience);
            }
        }
        if interrupted() {
            stop = true;
            line["interrupted"] = true.into();
        }
        line["step"] = done.into();
        line["elapsed_s"] = self.clock.elapsed().as_secs_f64().into();
        let step_s = self.step_clock.elapsed().as_secs_f64();
        line["step_s"] = step_s.into();
        // Throughput of the tokens that went through forward and backward:
        // model FLOPs as 6 · parameters · tokens (attention not counted), and
        // MFU where the device's dense bf16 peak is known.
        if let Some(tokens) = line.get("tokens").and_then(Value::as_f64) {
            let tflops = 6.0 * self.params as f64 * tokens / step_s / 1e12;
            line["tokens_per_s"] = (tokens / step_s).into();
            line["model_tflops"] = tflops.into();
            if let Some(peak) = be.peak_tflops() {
                line["mfu"] = (tflops / peak).into();
            }
        }
        if let Some(peak) = peak_rss() {
            line["peak_rss_bytes"] = peak.into();
        }
        writeln!(self.metrics, "{line}")
            .with_context(|| format!("{}: cannot write metrics", self.run_dir.display()))?;
        if stop || done == self.total || (self.save_every > 0 && done.is_multiple_of(self.save_every)) {
            let state = serde_json::json!({ "trainer": self.trainer, "total_steps": self.total, "early_stop": stop });
            save_checkpoint(
                be,
                &self.run_dir,
                &self.model_dir,
                model,
                &self.opt,
                &state,
                done,
                self.save_dtype,
                self.keep_last,
            )
            .with_context(|| format!("step {done}: saving checkpoint-{done} failed (earlier checkpoints are kept)"))?;
            if interrupted() {
                eprintln!(
                    "{}: stopped at step {done}; continue with --resume {}",
                    self.trainer,
                    self.run_dir.join(format!("checkpoint-{done}")).display()
                );
            }
        }
        self.step_clock = std::time::Instant::now();
        Ok(stop)
    }
}

/// The process's peak resident memory (Linux's `VmHWM`), in bytes.
fn peak_rss() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// The metrics lines of a run folder.
pub fn read_metrics(run_dir: &Path) -> Result<Vec<Value>> {
    let path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{}:{}: not JSON", path.display(), i + 1)))
        .collect()
}

/// `key` against `x_key` over the lines that have both.
pub fn series(lines: &[Value], x_key: &str, key: &str, label: &str) -> Series {
    let points = lines.iter().filter_map(|l| Some((l[x_key].as_f64()?, l[key].as_f64()?))).collect();
    Series { label: label.to_string(), points }
}

/// One panel per group of metrics that the run logged, against the step.
fn curves(lines: &[Value], trainer: &str) -> Vec<Chart> {
    let groups: &[(&str, &[&str])] = &[
        ("training loss", &["loss"]),
        ("reward and accuracy of the rollouts", &["reward_mean", "accuracy"]),
        ("held-out evaluation", &["eval_pass@1", "eval_maj@2", "eval_maj@4", "eval_maj@8", "eval_maj@16"]),
        ("gradient norm (before clipping)", &["grad_norm"]),
    ];
    groups
        .iter()
        .map(|(title, keys)| Chart {
            title: format!("{trainer}: {title}"),
            x_label: "step".into(),
            series: keys.iter().map(|k| series(lines, "step", k, k)).filter(|s| !s.points.is_empty()).collect(),
        })
        .filter(|c| !c.series.is_empty())
        .collect()
}

impl HeldOut {
    fn load<B: Backend>(cfg: &Config, setup: &Setup<B>) -> Result<Option<Self>> {
        let path = cfg.str("eval.data");
        let every = cfg.int("eval.every").max(0) as u64;
        let patience = cfg.int("early_stop.patience").max(0) as u64;
        if path.is_empty() {
            if every > 0 || patience > 0 {
                bail!(
                    "keys `eval.every` and `early_stop.patience` need `eval.data`, a held-out {{prompt, answer}} file"
                );
            }
            return Ok(None);
        }
        if patience > 0 && every == 0 {
            bail!("key `early_stop.patience` needs `eval.every` > 0");
        }
        let mut lines = read_objects(Path::new(&path))?;
        if cfg.int("eval.limit") > 0 {
            lines.truncate(cfg.int("eval.limit") as usize);
        }
        let spec = EvalSpec {
            max_new_tokens: positive(cfg, "eval.max_new_tokens")?,
            k: positive(cfg, "eval.samples")?,
            temperature: cfg.float("eval.temperature") as f32,
            seed: cfg.int("seed") as u64 ^ 0xE7A1,
            eos: setup.eos(),
        };
        Ok(Some(HeldOut { problems: setup.problems(&lines)?, spec, every, patience, best: None, since_best: 0 }))
    }
}
