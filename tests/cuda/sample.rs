//! The GPU sampler (kernels/sample.cu) and its random stream against the CPU
//! sampler: the same uniform numbers bit for bit, the same tokens and
//! log-probabilities on the shared cases (ties, every filter), token
//! frequencies against the softmax (χ²), and the backend's `sample` op.

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

/// Token frequencies over 60,000 rows (one draw each) against the
/// distribution the filters leave: χ² under the 0.1% critical value.
#[test]
fn gpu_token_frequencies_follow_the_softmax() {
    let Some(g) = gpu("gpu_token_frequencies_follow_the_softmax") else { return };
    // Values exact in bf16.
    let z = [1.0f32, 0.25, -0.5, 2.0, 0.0, -1.5];
    let n = 60_000;
    let stream = Stream::new(11, 0, 0);
    let softmax = |keep: &[usize], t: f64| -> Vec<f64> {
        let e: Vec<f64> = (0..z.len()).map(|i| if keep.contains(&i) { (z[i] as f64 / t).exp() } else { 0.0 }).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|x| x / s).collect()
    };
    let all: Vec<usize> = (0..6).collect();
    // (settings, expected distribution, critical χ² at 0.1% for the kept tokens − 1 degrees of freedom)
    let checks = [
        (SamplingParams { temperature: 0.8, ..Default::default() }, softmax(&all, 0.8), 20.5),
        (SamplingParams { top_k: 3, ..Default::default() }, softmax(&[3, 0, 1], 1.0), 13.8),
        // p ∝ e^z: tokens 3 and 0 are ≥ 0.3 · e^2, token 1 (e^0.25) is not.
        (SamplingParams { min_p: 0.3, ..Default::default() }, softmax(&[3, 0], 1.0), 10.8),
    ];
    for (params, expected, critical) in checks {
        let c = Case {
            name: "frequencies",
            params,
            vocab: z.len(),
            logits: z.repeat(n),
            draws: (0..n as u64).map(|i| stream.draw(i)).collect(),
            threads: 512,
        };
        let mut counts = [0usize; 6];
        for s in run(&g, &c) {
            counts[s.token as usize] += 1;
        }
        let mut x2 = 0.0;
        for (i, (&k, &p)) in counts.iter().zip(&expected).enumerate() {
            if p == 0.0 {
                assert_eq!(k, 0, "{params:?}: filtered-out token {i} drawn");
            } else {
                x2 += (k as f64 - p * n as f64).powi(2) / (p * n as f64);
            }
        }
        println!("{params:?}: counts {counts:?}, χ² {x2:.2}");
        assert!(x2 < critical, "{params:?}: χ² = {x2} over the {critical} critical value");
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
