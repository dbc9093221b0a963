//! The rollout engine on the fixture models: the KV-cache path against the
//! full forward (the sampler's log-probabilities equal `engine score`'s),
//! sharing a prompt's prefill across samples, independence from batch
//! composition, seeded reproducibility, and greedy decoding against
//! transformers' `generate` (tests/fixtures/rollout/greedy.json).

mod common;
use common::*;
use engine::backend::cpu::Cpu;
use engine::cli::score::score_sequences;
use engine::model::{Activations, CacheShape, Model};
use engine::rollout::{GenerateConfig, Generator, Sample, SamplingParams};

fn load(name: &str) -> Model<Cpu> {
    Model::load(&Cpu, &fixtures().join(name)).unwrap().0
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![5],
        vec![17, 300, 2, 99, 41],
        vec![250, 251, 252, 1, 2, 3, 4, 5, 6],
        (0..17).map(|i| (i * 37 % 400) as u32).collect(),
    ]
}

fn run(model: &Model<Cpu>, prompts: &[Vec<u32>], cfg: GenerateConfig) -> Vec<Sample> {
    let longest = prompts.iter().map(Vec::len).max().unwrap();
    let mut g = Generator::new(&Cpu, model, cfg, longest).unwrap();
    g.generate(prompts, None, |_| {}).unwrap()
}

/// Log-probabilities of the generated tokens by a full forward over
/// prompt + generated, at temperature `t`.
fn rescore(model: &Model<Cpu>, prompts: &[Vec<u32>], samples: &[Sample], t: f32) -> Vec<Vec<f32>> {
    let seqs: Vec<Vec<u32>> =
        samples.iter().map(|s| [prompts[s.prompt_index].clone(), s.tokens.clone()].concat()).collect();
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let cap: usize = seqs.iter().map(Vec::len).sum();
    let mut acts = Activations::new(&Cpu, &model.cfg, cap, 64, false);
    let scored = score_sequences(&Cpu, model, &mut acts, &refs, t).unwrap();
    samples.iter().zip(scored).map(|(s, lp)| lp[prompts[s.prompt_index].len() - 1..].to_vec()).collect()
}

#[test]
fn sampler_logprobs_match_score() {
    for name in FAMILIES {
        let model = load(name);
        for (t, top_p) in [(0.0f32, 1.0f32), (0.8, 0.9), (1.3, 1.0)] {
            let cfg = GenerateConfig {
                n: 2,
                max_new_tokens: 24,
                sampling: SamplingParams { temperature: t, top_p, ..Default::default() },
                seed: 11,
                ..Default::default()
            };
            let ps = prompts();
            let samples = run(&model, &ps, cfg);
            assert_eq!(samples.len(), 2 * ps.len());
            let want = rescore(&model, &ps, &samples, if t == 0.0 { 1.0 } else { t });
            for (s, w) in samples.iter().zip(&want) {
                assert_eq!(s.tokens.len(), 24);
                let err = max_abs(&to_f64(&s.logprobs), &to_f64(w));
                assert!(err <= 1e-5, "{name} T={t}: sampler vs score log-probs differ by {err:.2e}");
            }
            if t == 0.0 {
                // Greedy: both samples of a prompt are the same.
                for pair in samples.chunks(2) {
                    assert_eq!(pair[0].tokens, pair[1].tokens);
                }
            }
        }
    }
}

#[test]
fn shared_prefill_and_batching_do_not_change_samples() {
    let model = load("qwen3");
    let ps = prompts();
    let base = GenerateConfig {
        n: 3,
        max_new_tokens: 16,
        sampling: SamplingParams { temperature: 1.0, top_k: 50, ..Default::default() },
        seed: 5,
        ..Default::default()
    };
    let shared = run(&model, &ps, base.clone());
    // The tokens are the same; the log-probs only to rounding, because
    // matrix products over a different number of rows round differently.
    let same = |a: &[Sample], b: &[Sample], what: &str| {
        assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(b) {
            assert_eq!(
                (a.prompt_index, a.sample_index, &a.tokens),
                (b.prompt_index, b.sample_index, &b.tokens),
                "{what}"
            );
            assert!(max_abs(&to_f64(&a.logprobs), &to_f64(&b.logprobs)) < 1e-5, "{what}");
        }
    };
    let separate = run(&model, &ps, GenerateConfig { share_prefill: false, ..base.clone() });
    same(&shared, &separate, "one prefill per prompt vs one per sample");
    // Three slots: prompts wait for free slots and join mid-flight.
    let narrow = run(&model, &ps, GenerateConfig { max_batch: 3, prefill_tokens: 8, ..base.clone() });
    same(&shared, &narrow, "batch composition changed a sample");
    // One prompt slot: a prompt waits until every sample of the one before
    // has finished, and each reuses the slot the last one wrote.
    let one_prompt = run(&model, &ps, GenerateConfig { prompt_slots: 1, max_batch: 4, ..base.clone() });
    same(&shared, &one_prompt, "one prompt slot");
    // Reproducible with the seed, different without it.
    assert_eq!(shared, run(&model, &ps, base.clone()));
    assert_ne!(shared, run(&model, &ps, GenerateConfig { seed: 6, ..base }));
}

/// Samples that end at different steps (a token they often draw is made an
/// EOS): with one or two prompt slots and batches of 3 to 6 sequences (3
/// samples a prompt), a prompt slot stays alive while a sibling still
/// decodes, freed generation slots are taken by the next prompt while
/// another prompt's samples still decode, and a shorter prompt reuses a slot
/// a longer one wrote (prompts longest first). Freeing a prompt slot before
/// its last sample ends fails it. The samples are those of one
/// prompt slot per sample (`share_prefill: false`).
#[test]
fn prompt_slots_outlive_finished_siblings_and_are_reused() {
    let model = load("qwen2");
    let mut ps = prompts();
    ps.reverse();
    let base = GenerateConfig {
        n: 3,
        max_new_tokens: 20,
        sampling: SamplingParams { temperature: 1.0, ..Default::default() },
        seed: 9,
        ..Default::default()
    };
    // The token drawn most often, as the EOS.
    let free = run(&model, &ps, base.clone());
    let mut counts = std::collections::HashMap::new();
    free.iter().flat_map(|s| &s.tokens).for_each(|&t| *counts.entry(t).or_insert(0) += 1);
    let (&eos, _) = counts.iter().max_by_key(|&(t, c)| (*c, std::cmp::Reverse(*t))).unwrap();
    let cfg = GenerateConfig { eos_ids: vec![eos], ..base };
    let want = run(&model, &ps, GenerateConfig { share_prefill: false, ..cfg.clone() });
    let lens: Vec<usize> = want.iter().map(|s| s.tokens.len()).collect();
    assert!(
        lens.iter().any(|&l| l < 20) && lens.iter().any(|&l| l > 1),
        "samples should end at different steps: {lens:?}"
    );
    // With `graphs`, each step is padded with dummy sequences to a batch of
    // 1, 2, 4, 8… (at most max_batch): on the CPU the padded steps run as
    // they are, and must change no sample.
    for (prompt_slots, max_batch, graphs) in
        [(1, 3, false), (1, 5, false), (2, 4, false), (2, 6, false), (2, 6, true), (1, 7, true), (3, 11, true)]
    {
        let got = run(&model, &ps, GenerateConfig { prompt_slots, max_batch, graphs, ..cfg.clone() });
        assert_eq!(got.len(), want.len());
        for (a, b) in got.iter().zip(&want) {
            assert_eq!((a.prompt_index, a.sample_index, &a.tokens), (b.prompt_index, b.sample_index, &b.tokens));
            assert!(max_abs(&to_f64(&a.logprobs), &to_f64(&b.logprobs)) < 1e-5);
        }
    }
}

/// The cache holds each prompt once for its samples: with 8 samples per
/// prompt and 64 sequences in flight, 16 prompt slots (twice the 8 prompts
/// that fill the batch) and 64 generation slots, half the rows of a slot of
/// prompt + new tokens per sequence at these lengths; 64 prompt slots
/// without sharing.
#[test]
fn the_cache_holds_a_prompt_once_for_its_samples() {
    let model = load("qwen2");
    let cfg = GenerateConfig { n: 8, max_batch: 64, max_new_tokens: 50, ..Default::default() };
    let shape = Generator::new(&Cpu, &model, cfg.clone(), 100).unwrap().cache_shape();
    assert_eq!(shape, CacheShape { prompt_slots: 16, prompt_cap: 100, gen_slots: 64, gen_cap: 50, pad_rows: 0 });
    assert_eq!(shape.rows(), 64 * 150 / 2);
    let separate = Generator::new(&Cpu, &model, GenerateConfig { share_prefill: false, ..cfg }, 100).unwrap();
    assert_eq!(separate.cache_shape().prompt_slots, 64);
}

#[test]
fn eos_and_length_end_samples() {
    let model = load("qwen2");
    let ps = prompts();
    let greedy = GenerateConfig {
        max_new_tokens: 12,
        sampling: SamplingParams { temperature: 0.0, ..Default::default() },
        ..Default::default()
    };
    let free = run(&model, &ps, greedy.clone());
    // Make the 4th greedy token of prompt 1 an EOS id: that sample stops there.
    let eos = free[1].tokens[3];
    let stopped = run(&model, &ps, GenerateConfig { eos_ids: vec![eos], ..greedy });
    let first = free[1].tokens.iter().position(|&t| t == eos).unwrap();
    assert_eq!(stopped[1].tokens, free[1].tokens[..=first]);
    assert_eq!(stopped[1].finish_reason.as_str(), "stop");
    assert!(free.iter().all(|s| s.finish_reason.as_str() == "length" && s.tokens.len() == 12));
}

/// Greedy decoding against transformers (`generate(do_sample=False)` and a
/// float64 argmax loop) for 64 new tokens; the comparison stops, without
/// blame, at a step whose top-2 logit gap in the reference is under 1e-3
/// (DESIGN.md §6).
#[test]
fn greedy_matches_transformers() {
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("rollout/greedy.json")).unwrap()).unwrap();
    assert!(cases.len() >= 12);
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
    };
    let mut compared = 0;
    for c in &cases {
        let name = c["model"].as_str().unwrap();
        let model = load(name);
        let prompt = ids(&c["prompt"]);
        let want = ids(&c["tokens_f64"]);
        let gaps: Vec<f64> = c["gap"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let ref_lp: Vec<f64> = c["logprob"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let cfg = GenerateConfig {
            max_new_tokens: 64,
            sampling: SamplingParams { temperature: 0.0, ..Default::default() },
            ..Default::default()
        };
        let got = &run(&model, std::slice::from_ref(&prompt), cfg)[0];
        let stop = gaps.iter().position(|&g| g < 1e-3).unwrap_or(64);
        assert_eq!(
            got.tokens[..stop],
            want[..stop],
            "{name} prompt {prompt:?}: greedy tokens differ before any near-tie (compared {stop})"
        );
        let err = max_abs(&to_f64(&got.logprobs[..stop]), &ref_lp[..stop]);
        assert!(err <= 1e-4, "{name}: greedy log-probs off by {err:.2e}");
        compared += stop;
    }
    assert!(compared > 12 * 32, "too few tokens compared ({compared}): the fixtures are mostly near-ties");
}
