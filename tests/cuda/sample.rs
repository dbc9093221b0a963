//! The GPU sampler (kernels/sample.cu) and its random stream against the CPU
//! sampler: the same uniform numbers bit for bit, the same tokens and
//! log-probabilities on the shared cases (ties, every filter), token
//! frequencies against the softmax left by each filter (χ²; the same
//! expectations checked on the CPU sampler without a GPU), and the backend's
//! `sample` op.

use super::common::sampling::{cases, mismatches, Case};
use super::util::{gpu, up};
use engine::backend::cuda::{Cuda, Gpu};
use engine::backend::{Backend, Span};
use engine::rollout::{Sampled, SamplingParams, Stream};

fn draws_of(c: &Case) -> Vec<u64> {
    c.draws.iter().flat_map(|d| [d.stream.key(), d.step]).collect()
}

fn run(g: &Gpu, c: &Case) -> Vec<Sampled> {
    let z = up(g, &c.logits);
    let d = g.stream.clone_htod(&draws_of(c)).unwrap();
    let mut t = g.stream.alloc_zeros::<u32>(c.rows()).unwrap();
    let mut l = g.stream.alloc_zeros::<f32>(c.rows()).unwrap();
    g.sample(&z, c.vocab, &c.params, &d, &mut t, &mut l).unwrap();
    let t = g.stream.clone_dtoh(&t).unwrap();
    let l = g.stream.clone_dtoh(&l).unwrap();
    g.sync().unwrap();
    t.into_iter().zip(l).map(|(token, logprob)| Sampled { token, logprob }).collect()
}

#[test]
fn rng_draws_equal_the_cpu_streams_bit_for_bit() {
    let Some(g) = gpu("rng_draws_equal_the_cpu_streams_bit_for_bit") else { return };
    let s = Stream::new(5, 6, 7);
    let streams: Vec<Stream> =
        (0..1000u64).map(|i| Stream::new(i * 0x9E37, i % 17, (s.uniform(i) * 1e6) as u64)).collect();
    let steps: Vec<u64> = (0..1000u64).map(|i| if i % 10 == 0 { u64::MAX - i } else { i * 31 }).collect();
    let host: Vec<u64> = streams.iter().zip(&steps).flat_map(|(s, &k)| [s.key(), k]).collect();
    let d = g.stream.clone_htod(&host).unwrap();
    let mut out = g.stream.alloc_zeros::<f64>(streams.len()).unwrap();
    g.rng_uniform(&d, &mut out).unwrap();
    let got = g.stream.clone_dtoh(&out).unwrap();
    for (i, (s, &k)) in streams.iter().zip(&steps).enumerate() {
        assert_eq!(got[i].to_bits(), s.uniform(k).to_bits(), "draw {i}");
    }
}

#[test]
fn gpu_sampler_draws_the_cpu_samplers_tokens() {
    let Some(g) = gpu("gpu_sampler_draws_the_cpu_samplers_tokens") else { return };
    let mut bad = Vec::new();
    let mut rows = 0;
    for c in cases() {
        bad.extend(mismatches(&c, &run(&g, &c)));
        rows += c.rows();
    }
    println!("{rows} rows sampled, {} differ from the CPU", bad.len());
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Logits exact in bf16, the draws and the number of rows of the
/// frequency tests.
const Z: [f32; 6] = [1.0, 0.25, -0.5, 2.0, 0.0, -1.5];
const ROWS: usize = 60_000;

fn frequency_draws() -> Vec<engine::rollout::Draw> {
    let stream = Stream::new(11, 0, 0);
    (0..ROWS as u64).map(|i| stream.draw(i)).collect()
}

/// `softmax(Z/t)` over the tokens in `keep`, 0 elsewhere.
fn softmax(keep: &[usize], t: f64) -> Vec<f64> {
    let e: Vec<f64> = (0..Z.len()).map(|i| if keep.contains(&i) { (Z[i] as f64 / t).exp() } else { 0.0 }).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

/// The tokens top-p keeps at temperature `t`, as the CPU sampler (and
/// transformers) truncate: sorted by probability, the low tail whose mass is
/// at most 1 − top_p dropped, at least one kept.
fn top_p_keep(top_p: f64, t: f64) -> Vec<usize> {
    let p = softmax(&(0..Z.len()).collect::<Vec<_>>(), t);
    let mut order: Vec<usize> = (0..Z.len()).collect();
    order.sort_by(|a, b| p[*b].total_cmp(&p[*a]));
    let mut tail = 0.0;
    let mut cut = order.len();
    for (rank, &i) in order.iter().enumerate().rev() {
        tail += p[i];
        if tail <= 1.0 - top_p && rank > 0 {
            cut = rank;
        } else {
            break;
        }
    }
    order.truncate(cut);
    order
}

/// (settings, expected distribution, critical χ² at 0.1% for the kept
/// tokens − 1 degrees of freedom).
fn frequency_checks() -> Vec<(SamplingParams, Vec<f64>, f64)> {
    let all: Vec<usize> = (0..6).collect();
    // p ∝ e^z is 0.559, 0.206, 0.097, 0.076, 0.046, 0.017 for tokens 3, 0,
    // 1, 4, 2, 5: top-p 0.9 drops the tail 5, 2 (0.063 ≤ 0.1; with 4 it would
    // be 0.138), so it keeps four tokens, another set than top-k 3's.
    let keep = top_p_keep(0.9, 1.0);
    assert_eq!(keep, [3, 0, 1, 4], "top-p 0.9's kept set");
    vec![
        (SamplingParams { temperature: 0.8, ..Default::default() }, softmax(&all, 0.8), 20.5),
        (SamplingParams { top_k: 3, ..Default::default() }, softmax(&[3, 0, 1], 1.0), 13.8),
        (SamplingParams { top_p: 0.9, ..Default::default() }, softmax(&keep, 1.0), 16.27),
        // p ∝ e^z: tokens 3 and 0 are ≥ 0.3 · e^2, token 1 (e^0.25) is not.
        (SamplingParams { min_p: 0.3, ..Default::default() }, softmax(&[3, 0], 1.0), 10.8),
    ]
}

/// χ² of token counts against `expected`; a token drawn where `expected`
/// is 0 fails at once.
fn chi2(params: &SamplingParams, tokens: impl Iterator<Item = u32>, expected: &[f64], critical: f64, who: &str) {
    let mut counts = [0usize; 6];
    for t in tokens {
        counts[t as usize] += 1;
    }
    let mut x2 = 0.0;
    for (i, (&k, &p)) in counts.iter().zip(expected).enumerate() {
        if p == 0.0 {
            assert_eq!(k, 0, "{who} {params:?}: filtered-out token {i} drawn");
        } else {
            x2 += (k as f64 - p * ROWS as f64).powi(2) / (p * ROWS as f64);
        }
    }
    println!("{who} {params:?}: counts {counts:?}, χ² {x2:.2}");
    assert!(x2 < critical, "{who} {params:?}: χ² = {x2} over the {critical} critical value");
}

/// Token frequencies over 60,000 rows (one draw each) against the
/// distribution the filters leave (temperature, top-k, top-p, min-p): χ²
/// under the 0.1% critical value.
#[test]
fn gpu_token_frequencies_follow_the_softmax() {
    let Some(g) = gpu("gpu_token_frequencies_follow_the_softmax") else { return };
    for (params, expected, critical) in frequency_checks() {
        let c = Case {
            name: "frequencies",
            params,
            vocab: Z.len(),
            logits: Z.repeat(ROWS),
            draws: frequency_draws(),
            threads: 512,
        };
        chi2(&params, run(&g, &c).into_iter().map(|s| s.token), &expected, critical, "GPU");
    }
}

/// The expected distributions of [`gpu_token_frequencies_follow_the_softmax`]
/// hold for the CPU sampler (the specification) on the same draws; no GPU
/// needed.
#[test]
fn cpu_token_frequencies_follow_the_same_expectations() {
    let draws = frequency_draws();
    for (params, expected, critical) in frequency_checks() {
        let tokens = draws.iter().map(|d| engine::rollout::sample(&Z, &params, d.uniform()).token);
        chi2(&params, tokens, &expected, critical, "CPU");
    }
}

/// The backend op the rollout engine calls (its scratch, copies and checks)
/// gives the kernel's results.
#[test]
fn backend_sample_op_matches_the_cpu() {
    if gpu("backend_sample_op_matches_the_cpu").is_none() {
        return;
    }
    let be = Cuda::new(0).unwrap();
    for c in cases() {
        let buf = be.upload(c.logits.clone());
        let got = be.sample(Cuda::view(&buf, Span::new(0, c.logits.len())), c.vocab, &c.params, &c.draws);
        let bad = mismatches(&c, &got);
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }
}
