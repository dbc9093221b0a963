//! The command line: `engine score`, `info`, `generate`, `eval`, `train`.

pub mod eval;
pub mod generate;
pub mod info;
pub mod score;
pub mod train;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "engine",
    version,
    about = "Trains reasoning language models: SFT, distillation, GRPO-family RL, DPO."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Per-token log-probabilities of sequences under a model (JSONL in, JSONL out).
    Score(score::ScoreArgs),
    /// Architecture, sizes and the memory a full fine-tune would need.
    Info(info::InfoArgs),
    /// Sample completions for JSONL prompts (KV cache, continuous batching).
    Generate(generate::GenerateArgs),
    /// pass@1, pass@k and maj@k of sampled answers to math prompts.
    Eval(eval::EvalArgs),
    /// Train a model: sft, distill, dpo, grpo, rft; alone, the built-in demo.
    Train(train::TrainArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Device {
    Cpu,
    Cuda,
    Auto,
}

/// The backend `--device` picked.
pub enum Picked {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda(Box<crate::backend::cuda::Cuda>),
}

/// Starts the backend `--device` names. `auto` takes the GPU when the build
/// has CUDA and a GPU starts, and says so on stderr; else the CPU (quietly
/// where there is no CUDA driver at all).
pub fn pick_backend(d: Device) -> anyhow::Result<Picked> {
    match d {
        Device::Cpu => Ok(Picked::Cpu),
        #[cfg(feature = "cuda")]
        Device::Cuda => Ok(Picked::Cuda(Box::new(crate::backend::cuda::Cuda::new(0)?))),
        // No driver at all (a CPU machine): the CPU, quietly.
        #[cfg(feature = "cuda")]
        Device::Auto if !crate::backend::cuda::Cuda::driver_present() => Ok(Picked::Cpu),
        #[cfg(feature = "cuda")]
        Device::Auto => match crate::backend::cuda::Cuda::new(0) {
            Ok(c) => {
                eprintln!("device: {} (cuda; --device cpu for the CPU)", c.gpu.name);
                Ok(Picked::Cuda(Box::new(c)))
            }
            Err(e) => {
                eprintln!("device: cpu (a CUDA driver is present but the GPU did not start: {e:#})");
                Ok(Picked::Cpu)
            }
        },
        #[cfg(not(feature = "cuda"))]
        Device::Auto => Ok(Picked::Cpu),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda => anyhow::bail!("--device cuda: this binary was built without the `cuda` feature"),
    }
}

/// Evaluates `$body` with `$be` bound to the backend `--device` picks (a
/// `&Cpu` or a `&Cuda`), so a generic command body is written once.
macro_rules! with_backend {
    ($device:expr, |$be:ident| $body:expr) => {
        match $crate::cli::pick_backend($device)? {
            $crate::cli::Picked::Cpu => {
                let $be = &$crate::backend::cpu::Cpu;
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::cli::Picked::Cuda(b) => {
                let $be = &*b;
                $body
            }
        }
    };
}
pub(crate) use with_backend;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Score(a) => score::run(a),
        Command::Info(a) => info::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Train(a) => train::run(a),
    }
}
