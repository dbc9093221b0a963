//! Peak memory of the two-phase lm_head + loss path against materialising
//! the fp32 logits and their gradient for the whole batch (the way a plain
//! PyTorch `lm_head(h)` + `cross_entropy` does), measured as the process's
//! peak resident set.
//!
//! Run each mode in its own process:
//! `cargo run --release --example lm_head_memory -- chunked 4096 1536`
//! `cargo run --release --example lm_head_memory -- materialized 4096 1536`

use engine::backend::cpu::Cpu;
use engine::backend::Span;
use engine::loss::masked_mean_ce;
use engine::model::head::{self, HeadBuffers, HeadShape};

const VOCAB: usize = 151_936;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("chunked");
    let n: usize = args.get(2).and_then(|x| x.parse().ok()).unwrap_or(4096);
    let d: usize = args.get(3).and_then(|x| x.parse().ok()).unwrap_or(1536);
    let be = Cpu;
    // Inputs and outputs both variants need: h, W, dh, dW.
    let h: Vec<f32> = (0..n * d).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let w: Vec<f32> = (0..VOCAB * d).map(|i| ((i * 104729) % 1000) as f32 / 20000.0 - 0.025).collect();
    let targets: Vec<u32> = (0..n).map(|i| ((i * 31) % VOCAB) as u32).collect();
    // Written once so their pages count in the baseline (zeroed allocations
    // are only mapped when first touched).
    let (mut dh, mut grads) = (vec![1.0f32; n * d], vec![1.0f32; VOCAB * d]);
    dh.fill(0.0);
    grads.fill(0.0);
    let base = peak_rss_mib();
    let s = HeadShape { n, d, v: VOCAB };
    let chunk = match mode {
        "chunked" => (1 << 24) / VOCAB,
        "materialized" => n,
        other => panic!("mode is chunked or materialized, not {other}"),
    };
    let mut hb = HeadBuffers::<Cpu>::new(&be, n, chunk, VOCAB);
    head::phase1(&be, &mut hb, s, &h, &w, &targets, 1.0, false);
    let (loss, coef) = masked_mean_ce(&hb.read_logp(&be, n), &targets);
    head::phase2(&be, &mut hb, s, &h, &w, &coef.into(), 1.0, &mut dh, &mut grads, Span::new(0, VOCAB * d));
    let peak = peak_rss_mib();
    println!(
        "{mode}: tokens {n}, hidden {d}, vocab {VOCAB}, chunk {chunk} rows: loss {loss:.4}, peak RSS {peak:.0} MiB, \
         of which the loss path {:.0} MiB (inputs h, W, dh, dW: {base:.0} MiB)",
        peak - base
    );
}
