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

/// Resolves `--device` to a backend that exists in this build.
pub fn resolve_device(d: Device) -> anyhow::Result<Device> {
    match d {
        Device::Cpu | Device::Auto => Ok(Device::Cpu),
        Device::Cuda if cfg!(feature = "cuda") => {
            anyhow::bail!("--device cuda: the CUDA backend is not implemented yet (issue 6); use --device cpu")
        }
        Device::Cuda => {
            anyhow::bail!("--device cuda: this binary was built without the `cuda` feature")
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Score(a) => score::run(a),
        Command::Info(a) => info::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Train(a) => train::run(a),
    }
}
