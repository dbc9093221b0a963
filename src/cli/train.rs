//! `engine train <trainer> --config run.toml [--set key=value ...] [--resume DIR]`.
//! Trainers: `sft`, `distill`, `dpo`, `grpo`, `rft`. `engine train` alone
//! runs the built-in demo (`engine train demo --set key=value` tunes it).

use super::{with_backend, Device};
use crate::train::config::{template, Config};
use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Without a trainer: the built-in demo.
    #[command(subcommand)]
    pub trainer: Option<Trainer>,
    /// Where to train (the same loops run on either).
    #[arg(long, value_enum, default_value = "auto", global = true)]
    pub device: Device,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Override one demo key: `--set rationales=3000` (repeatable).
    #[arg(long = "set")]
    pub set: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// TOML config; every key can also be given with --set.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override one key: `--set optim.lr=2e-5` (repeatable).
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// Continue exactly from a checkpoint folder of an earlier run.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Print a complete, commented config with every key's default, and exit.
    #[arg(long)]
    pub print_config: bool,
}

#[derive(Subcommand, Debug)]
pub enum Trainer {
    /// Supervised fine-tuning on {prompt, completion} or {messages}.
    Sft(RunArgs),
    /// Direct preference optimisation on {prompt, chosen, rejected}.
    Dpo(RunArgs),
    /// GRPO-family RL with verifiable rewards on {prompt, answer}.
    Grpo(RunArgs),
    /// Distillation from a teacher's distribution on {prompt, completion}.
    Distill(RunArgs),
    /// Rejection-sampling fine-tuning (STaR) on {prompt, answer}.
    Rft(RunArgs),
    /// The built-in demo: SFT on scarce rationales, then GRPO, against an SFT control.
    Demo(DemoArgs),
}

pub fn run(a: TrainArgs) -> Result<()> {
    let trainer = a.trainer.unwrap_or(Trainer::Demo(DemoArgs { set: vec![] }));
    let dir = match trainer {
        Trainer::Demo(d) => {
            let cfg = Config::load(None, &d.set, &crate::train::demo::config_keys())?;
            let summary = with_backend!(a.device, |be| crate::train::demo::run(be, &cfg)?);
            println!("{summary}");
            return Ok(());
        }
        Trainer::Sft(r) => {
            if r.print_config {
                print!("{}", template(&crate::train::sft::config_keys()));
                return Ok(());
            }
            let cfg = Config::load(r.config.as_deref(), &r.set, &crate::train::sft::config_keys())?;
            with_backend!(a.device, |be| crate::train::sft::run(be, &cfg, r.resume.as_deref())?)
        }
        Trainer::Dpo(r) => {
            if r.print_config {
                print!("{}", template(&crate::train::dpo::config_keys()));
                return Ok(());
            }
            let cfg = Config::load(r.config.as_deref(), &r.set, &crate::train::dpo::config_keys())?;
            with_backend!(a.device, |be| crate::train::dpo::run(be, &cfg, r.resume.as_deref())?)
        }
        Trainer::Distill(r) => {
            if r.print_config {
                print!("{}", template(&crate::train::distill::config_keys()));
                return Ok(());
            }
            let cfg = Config::load(r.config.as_deref(), &r.set, &crate::train::distill::config_keys())?;
            with_backend!(a.device, |be| crate::train::distill::run(be, &cfg, r.resume.as_deref())?)
        }
        Trainer::Rft(r) => {
            if r.print_config {
                print!("{}", template(&crate::train::rft::config_keys()));
                return Ok(());
            }
            let cfg = Config::load(r.config.as_deref(), &r.set, &crate::train::rft::config_keys())?;
            with_backend!(a.device, |be| crate::train::rft::run(be, &cfg, r.resume.as_deref())?)
        }
        Trainer::Grpo(r) => {
            if r.print_config {
                print!("{}", template(&crate::train::grpo::config_keys()));
                return Ok(());
            }
            let cfg = Config::load(r.config.as_deref(), &r.set, &crate::train::grpo::config_keys())?;
            with_backend!(a.device, |be| crate::train::grpo::run(be, &cfg, r.resume.as_deref())?)
        }
    };
    println!("{}", serde_json::json!({ "run_dir": dir }));
    if crate::train::common::interrupted() {
        std::process::exit(130);
    }
    Ok(())
}
