//! Sampling cases shared by the GPU sampler's tests (tests/cuda/sample.rs)
//! and its CPU emulation (tests/kernel_emu.rs): random logit rows (bf16
//! values, some with many ties), every filter alone and together, odd
//! vocabularies, each row with its own draw.

use engine::rollout::{sample, Draw, Sampled, SamplingParams, Stream};

pub struct Case {
    pub name: &'static str,
    pub params: SamplingParams,
    pub vocab: usize,
    /// `[rows, vocab]`, each value a bf16.
    pub logits: Vec<f32>,
    pub draws: Vec<Draw>,
    /// Threads per block for the emulator (the GPU always runs 256).
    pub threads: u32,
}

impl Case {
    pub fn rows(&self) -> usize {
        self.draws.len()
    }
    /// What the CPU sampler draws for each row.
    pub fn expected(&self) -> Vec<Sampled> {
        self.logits.chunks(self.vocab).zip(&self.draws).map(|(z, d)| sample(z, &self.params, d.uniform())).collect()
    }
}

/// Standard normal numbers from a counter-based stream (Box–Muller).
fn normals(n: usize, seed: u64) -> Vec<f64> {
    let s = Stream::new(seed, 0x5A, 0);
    (0..n as u64)
        .map(|i| {
            let (a, b) = (s.uniform(2 * i).max(1e-300), s.uniform(2 * i + 1));
            (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
        })
        .collect()
}

/// Logits rounded to bf16; `ties` rounds them to halves first, so many
/// tokens share a score (also at the top of a row).
fn logits(rows: usize, vocab: usize, scale: f64, ties: bool, seed: u64) -> Vec<f32> {
    normals(rows * vocab, seed)
        .into_iter()
        .map(|x| {
            let v = x * scale;
            let v = if ties { (v * 2.0).round() / 2.0 } else { v };
            half::bf16::from_f64(v).to_f32()
        })
        .collect()
}

fn params(temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> SamplingParams {
    SamplingParams { temperature, top_k, top_p, min_p }
}

pub fn cases() -> Vec<Case> {
    let table: Vec<(&'static str, usize, usize, SamplingParams, bool, u32)> = vec![
        ("vocab 1", 1, 3, params(1.0, 0, 1.0, 0.0), false, 32),
        ("greedy, ties at the top", 7, 16, params(0.0, 0, 1.0, 0.0), true, 64),
        ("greedy", 1007, 6, params(0.0, 0, 1.0, 0.0), false, 128),
        ("temperature", 1007, 8, params(0.7, 0, 1.0, 0.0), false, 128),
        ("top-k 1", 1007, 6, params(1.0, 1, 1.0, 0.0), false, 128),
        ("top-k 40, ties", 1007, 24, params(1.0, 40, 1.0, 0.0), true, 128),
        ("top-k = vocab", 1007, 6, params(0.9, 1007, 1.0, 0.0), false, 96),
        ("top-p 0.9", 1007, 8, params(1.0, 0, 0.9, 0.0), false, 128),
        ("top-p 0.5, ties", 1007, 24, params(1.0, 0, 0.5, 0.0), true, 128),
        ("top-p 0.01", 1007, 6, params(1.3, 0, 0.01, 0.0), false, 128),
        ("min-p 0.1", 1007, 8, params(1.0, 0, 1.0, 0.1), false, 128),
        ("top-k 50, top-p 0.9, min-p 0.05, ties", 1007, 24, params(0.8, 50, 0.9, 0.05), true, 128),
        ("top-k 20, top-p 0.95, 512 threads", 5003, 3, params(1.0, 20, 0.95, 0.0), false, 512),
        ("top-p 0.8, one warp", 333, 6, params(0.6, 0, 0.8, 0.0), false, 32),
    ];
    let mut out: Vec<Case> = table
        .into_iter()
        .enumerate()
        .map(|(i, (name, vocab, rows, params, ties, threads))| {
            let stream = Stream::new(2026, i as u64, 7);
            Case {
                name,
                params,
                vocab,
                logits: logits(rows, vocab, 2.5, ties, 100 + i as u64),
                draws: (0..rows as u64).map(|r| stream.draw(r)).collect(),
                threads,
            }
        })
        .collect();
    // Greedy on rows whose maximum is 0, once as −0 before +0: the CPU (and
    // torch.argmax) take the first, −0 and +0 being equal.
    let stream0 = Stream::new(2026, 98, 7);
    out.push(Case {
        name: "greedy, maximum −0 then +0",
        params: params(0.0, 0, 1.0, 0.0),
        vocab: 3,
        logits: vec![-1.0, -0.0, 0.0, 0.0, -0.0, -2.0],
        draws: (0..2).map(|r| stream0.draw(r)).collect(),
        threads: 32,
    });
    // A flat row: one tie group of the whole vocabulary (top-p's budget off
    // any multiple of p, so rounding cannot decide the count).
    let stream = Stream::new(2026, 99, 7);
    out.push(Case {
        name: "flat row, top-p 0.7",
        params: params(1.0, 0, 0.7, 0.0),
        vocab: 4096,
        logits: vec![0.5; 2 * 4096],
        draws: (0..2).map(|r| stream.draw(r)).collect(),
        threads: 128,
    });
    out
}

/// Where the device's tokens and log-probabilities differ from the CPU's
/// (tokens exactly, log-probabilities to 1e-6 relative), one line each.
pub fn mismatches(case: &Case, got: &[Sampled]) -> Vec<String> {
    let want = case.expected();
    assert_eq!(got.len(), want.len(), "{}: rows", case.name);
    let mut bad = Vec::new();
    for (r, (g, w)) in got.iter().zip(&want).enumerate() {
        let tol = 1e-6 * w.logprob.abs().max(1.0);
        if g.token != w.token || (g.logprob - w.logprob).abs() > tol || g.logprob.is_nan() {
            bad.push(format!("{} row {r}: got {:?}, the CPU draws {:?}", case.name, g, w));
        }
    }
    bad
}
