//! `engine info`: what a model is and what fine-tuning it costs in memory.

use crate::model::activations::{arena_elements, cuda_chunk, default_chunk};
use crate::model::checkpoint::inspect;
use crate::model::config::RopeScaling;
use crate::model::{ModelConfig, ParamLayout};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Hugging Face model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Tokens per micro-batch for the activation estimate.
    #[arg(long, default_value_t = 4096)]
    pub batch_tokens: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Bytes a full fine-tune needs, by part.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub weights: u64,
    pub grads: u64,
    pub master: u64,
    pub adam: u64,
    pub activations: u64,
}

impl Memory {
    pub fn total(&self) -> u64 {
        self.weights + self.grads + self.master + self.adam + self.activations
    }
}

/// CUDA layout (DESIGN.md §3): bf16 weights, gradients and activations, fp32
/// master weights and AdamW moments — 16 bytes per parameter before activations.
pub fn cuda_memory(cfg: &ModelConfig, params: usize, tokens: usize) -> Memory {
    let (acts, _) = arena_elements(cfg, tokens, cuda_chunk(cfg, tokens), true);
    let p = params as u64;
    Memory { weights: 2 * p, grads: 2 * p, master: 4 * p, adam: 8 * p, activations: 2 * acts as u64 }
}

/// CPU reference layout: f32 everywhere, no separate master copy.
pub fn cpu_memory(cfg: &ModelConfig, params: usize, tokens: usize) -> Memory {
    let (acts, _) = arena_elements(cfg, tokens, default_chunk(cfg, tokens), true);
    let p = params as u64;
    Memory { weights: 4 * p, grads: 4 * p, master: 0, adam: 8 * p, activations: 4 * acts as u64 }
}

/// Bytes in the largest binary unit that keeps the number at least 1.
pub fn human(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < units.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{x:.2} {}", units[u])
    }
}

fn rope_text(c: &ModelConfig) -> String {
    match c.rope_scaling {
        RopeScaling::None => format!("theta {}", c.rope_theta),
        RopeScaling::Linear { factor } => format!("theta {}, linear scaling x{factor}", c.rope_theta),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => format!(
            "theta {}, llama3 scaling (factor {factor}, low {low_freq_factor}, high {high_freq_factor}, original context {original_max_position_embeddings})",
            c.rope_theta
        ),
    }
}

pub fn run(a: InfoArgs) -> Result<()> {
    if !a.model.is_dir() {
        bail!("{}: model folder not found", a.model.display());
    }
    if a.batch_tokens == 0 {
        bail!("--batch-tokens must be positive");
    }
    let cfg = ModelConfig::from_file(&a.model.join("config.json"))?;
    let layout = ParamLayout::new(&cfg);
    let (dtypes, on_disk) = inspect(&a.model)?;
    let params = layout.total;
    let (gpu, cpu) = (cuda_memory(&cfg, params, a.batch_tokens), cpu_memory(&cfg, params, a.batch_tokens));
    if a.json {
        let mem = |m: Memory| {
            serde_json::json!({"weights": m.weights, "grads": m.grads, "master": m.master, "adam": m.adam,
                "activations": m.activations, "total": m.total()})
        };
        let v = serde_json::json!({
            "architecture": cfg.arch.hf_name(), "layers": cfg.n_layers, "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size, "vocab_size": cfg.vocab_size,
            "heads": cfg.n_heads, "kv_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
            "tied_embeddings": cfg.tie_word_embeddings, "parameters": params,
            "elements_on_disk": on_disk, "dtypes_on_disk": dtypes, "batch_tokens": a.batch_tokens,
            "memory_bytes": {"cuda": mem(gpu), "cpu": mem(cpu)},
        });
        println!("{v}");
        return Ok(());
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    println!("model            {} ({})", a.model.display(), cfg.arch.hf_name());
    println!("layers           {}", cfg.n_layers);
    println!("hidden size      {} (MLP {})", cfg.hidden_size, cfg.intermediate_size);
    println!(
        "attention heads  {} query, {} key/value (GQA {}:1), head_dim {}",
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.n_heads / cfg.n_kv_heads,
        cfg.head_dim
    );
    println!("vocabulary       {}", cfg.vocab_size);
    println!("rope             {}", rope_text(&cfg));
    println!(
        "tied embeddings  {}   qkv bias {}   q/k norm {}",
        yes(cfg.tie_word_embeddings),
        yes(cfg.qkv_bias),
        yes(cfg.qk_norm)
    );
    println!("parameters       {params} ({:.1}M)", params as f64 / 1e6);
    println!("on disk          {on_disk} elements in {}", dtypes.join(", "));
    println!("full fine-tune memory at {} tokens per micro-batch:", a.batch_tokens);
    println!("                 {:>14} {:>14}", "cuda (bf16)", "cpu (f32)");
    for (name, g, c) in [
        ("weights", gpu.weights, cpu.weights),
        ("gradients", gpu.grads, cpu.grads),
        ("fp32 master", gpu.master, cpu.master),
        ("AdamW m, v", gpu.adam, cpu.adam),
        ("activations", gpu.activations, cpu.activations),
        ("total", gpu.total(), cpu.total()),
    ] {
        println!("  {name:<14} {:>14} {:>14}", human(g), human(c));
    }
    Ok(())
}
