//! The whole model on the CUDA backend against PyTorch (DESIGN.md §6, the
//! bf16 rule): for the Llama, Qwen2 and Qwen3 fixtures, the per-token
//! log-probabilities, the SFT loss and every parameter's gradient, each
//! compared with the float64 reference; the engine's error may be at most
//! twice the error PyTorch makes running the same model in bf16
//! (`<name>.bf16.safetensors`, tools/make_bf16_fixtures.py), and at most
//! the outer bound 2e-2 — except where PyTorch's own error comes near that
//! bound, where the engine's may be at most 1.5× PyTorch's. (On these
//! 2-layer fixtures a few small gradients are noisy enough that PyTorch's
//! bf16 error is itself 1.7–2.6e-2: Qwen3's q/k-norm weights, Llama's
//! layer-1 k_proj; an H100 run measured the engine at 2.06–2.22e-2 on
//! Qwen3's layer-0 q/k-norm weights against PyTorch's 1.73–1.79e-2, and at
//! most 1.24× PyTorch's error on every tensor of the three models. PyTorch's
//! reference ran on the CPU, whose bf16 attention keeps P in fp32; the flash
//! kernel rounds P and dS to bf16, as FlashAttention does.) The loss is one
//! scalar, a mean of the log-probabilities: its error is held to twice
//! PyTorch's error on the loss or on the log-probabilities, whichever is
//! larger, since a single scalar's error is mostly luck of cancellation.
//! Every comparison is made and printed before the test fails, so one GPU
//! run shows them all. Then one AdamW step from those gradients against the
//! CPU's.

use super::common::{fixtures, max_abs, rel_err, to_f64, Reference, FAMILIES};
use super::util::gpu;
use engine::backend::cpu::Cpu;
use engine::backend::cuda::Cuda;
use engine::backend::{Backend, Span};
use engine::loss::masked_mean_ce;
use engine::model::{Activations, Model};
use engine::optim::{AdamW, AdamWConfig};

/// The outer bound of the bf16 rule.
const OUTER: f64 = 2e-2;

fn cuda(test: &str) -> Option<Cuda> {
    // `gpu` prints the skip line (or fails under ENGINE_REQUIRE_CUDA=1).
    gpu(test)?;
    Some(Cuda::new(0).expect("a GPU that started once starts again"))
}

struct Run {
    logp: Vec<f32>,
    loss: f64,
    grads: Vec<f32>,
}

/// Forward, the SFT loss on the reference's labels, backward; the lm_head
/// runs in chunks of `chunk` rows.
fn run(be: &Cuda, model: &Model<Cuda>, r: &Reference, chunk: usize) -> Run {
    let batch = r.batch();
    let n = batch.len();
    let mut acts = Activations::new(be, &model.cfg, n, chunk, true);
    model.forward(be, &mut acts, &batch).unwrap();
    model.head_fwd(be, &mut acts, &batch.next_tokens, 1.0, false);
    let logp = acts.head.read_logp(be, n);
    let targets = r.loss_targets();
    model.head_fwd(be, &mut acts, &targets, 1.0, false);
    let (loss, coef) = masked_mean_ce(&acts.head.read_logp(be, n), &targets);
    let mut grads = model.zero_grads(be);
    model.backward(be, &mut acts, &coef.into(), 1.0, &mut grads);
    let grads = be.read(Cuda::view(&grads, Span::new(0, model.layout.total)));
    Run { logp, loss, grads }
}

/// The bf16 rule for an engine error `e` and PyTorch's `t` (module docs):
/// at most twice PyTorch's error, and at most the outer bound — or, where
/// PyTorch's own error comes near that bound, at most 1.5× PyTorch's.
fn within_rule(e: f64, t: f64) -> bool {
    e <= 2.0 * t && e <= OUTER.max(1.5 * t)
}

/// Runs one family and returns every comparison that broke the rule.
/// `strict`: the full rule; otherwise only the outer bound (a configuration
/// whose rounding differs from PyTorch's by design, reported for the record).
fn check_family(be: &Cuda, name: &str, chunk: Option<usize>, strict: bool) -> Vec<String> {
    let (model, _) = Model::load(be, &fixtures().join(name)).unwrap();
    let r = Reference::open(name);
    let t = Reference::open_path(&fixtures().join(format!("{name}.bf16.safetensors")));
    let chunk = chunk.unwrap_or(r.batch().len());
    let out = run(be, &model, &r, chunk);
    let tag = format!("{name} (chunk {chunk})");
    let mut failed = Vec::new();
    let mut judge = |what: &str, e: f64, t: f64| {
        let ok = if strict { within_rule(e, t) } else { e <= OUTER || e <= 2.0 * t };
        if !ok {
            failed.push(format!("{tag}: {what}: engine {e:.2e} vs PyTorch bf16 {t:.2e}"));
        }
    };

    let want = r.f64("logprobs");
    let (e, p) = (rel_err(&to_f64(&out.logp), &want), rel_err(&t.f64("logprobs"), &want));
    let abs = max_abs(&to_f64(&out.logp), &want);
    println!("{tag}: logprobs rel {e:.2e} (PyTorch bf16 {p:.2e}), max-abs {abs:.2e}");
    judge("logprobs", e, p);
    let (want, torch) = (r.f64("loss")[0], t.f64("loss")[0]);
    let (el, pl) = ((out.loss - want).abs() / want.abs(), (torch - want).abs() / want.abs());
    println!("{tag}: loss {:.6} vs {want:.6} (rel {el:.2e}; PyTorch bf16 {pl:.2e})", out.loss);
    judge("loss", el, pl.max(p));

    let mut worst = (0.0f64, 0.0f64, String::new());
    for en in &model.layout.entries {
        let got = to_f64(&out.grads[en.span.off..en.span.end()]);
        let key = format!("grad.{}", en.name);
        let want = r.f64(&key);
        let (e, p) = (rel_err(&got, &want), rel_err(&t.f64(&key), &want));
        judge(&format!("gradient of {}", en.name), e, p);
        if e / p.max(1e-12) > worst.0 / worst.1.max(1e-12) {
            worst = (e, p, en.name.clone());
        }
    }
    println!("{tag}: worst gradient relative to PyTorch bf16: {:.2e} vs {:.2e} ({})", worst.0, worst.1, worst.2);
    failed
}

fn all_families(test: &str, chunk: Option<usize>, strict: bool) {
    let Some(be) = cuda(test) else { return };
    let failed: Vec<String> = FAMILIES.iter().flat_map(|name| check_family(&be, name, chunk, strict)).collect();
    assert!(failed.is_empty(), "{} comparisons broke the rule:\n{}", failed.len(), failed.join("\n"));
}

#[test]
fn model_matches_pytorch_under_the_bf16_rule() {
    all_families("model_matches_pytorch_under_the_bf16_rule", None, true);
}

/// The lm_head in chunks of 7 rows: its weight gradient is then summed in
/// bf16 over the chunks (7 roundings here), which PyTorch never does.
/// Reported, and held to the outer bound (or twice PyTorch's error) only.
#[test]
fn model_with_a_chunked_lm_head_stays_within_the_outer_bound() {
    all_families("model_with_a_chunked_lm_head_stays_within_the_outer_bound", Some(7), false);
}

/// One AdamW step on the GPU's gradients (fp32 master weights, bf16 copy)
/// against the CPU's AdamW on the same gradients and start weights.
#[test]
fn adamw_step_on_the_model_matches_the_cpu() {
    let Some(be) = cuda("adamw_step_on_the_model_matches_the_cpu") else { return };
    let (mut model, _) = Model::load(&be, &fixtures().join("qwen2")).unwrap();
    let r = Reference::open("qwen2");
    let out = run(&be, &model, &r, r.batch().len());
    let total = model.layout.total;
    let start = model.params_to_host(&be);
    let cfg = AdamWConfig::default();
    let mut grads = be.alloc(total);
    be.write(&out.grads, Cuda::view_mut(&mut grads, Span::new(0, total)));
    let mut opt = AdamW::new(&be, &model.layout, cfg);
    opt.step(&be, &model.layout, &mut model.params, &grads, 1e-3);
    let got = model.params_to_host(&be);
    let master = be.read(Cuda::view(opt.master.as_ref().expect("CUDA keeps master weights"), Span::new(0, total)));

    let mut want = start.clone();
    let mut cpu_opt = AdamW::new(&Cpu, &model.layout, cfg);
    cpu_opt.step(&Cpu, &model.layout, &mut want, &out.grads, 1e-3);
    let master_err = rel_err(&to_f64(&master), &to_f64(&want));
    let bf16_err = rel_err(&to_f64(&got), &to_f64(&want));
    println!("adamw on qwen2: master rel {master_err:.2e}, bf16 copy rel {bf16_err:.2e}");
    assert!(master_err < 1e-6, "master weights rel {master_err:.2e}");
    assert!(bf16_err < 4e-3, "bf16 weights rel {bf16_err:.2e}");
    // The step moved the weights (lr 1e-3 moves each by about 1e-3).
    let moved = rel_err(&to_f64(&master), &to_f64(&start));
    assert!(moved > 1e-4, "the step barely moved the weights: {moved:.2e}");
}

/// `engine score`'s path (`score_sequences`) on the GPU against the float64
/// log-probabilities of `<name>.score.json`: bf16 weights and activations
/// keep them within the outer bound of the bf16 rule.
#[test]
fn scoring_on_the_gpu_matches_the_reference() {
    let Some(be) = cuda("scoring_on_the_gpu_matches_the_reference") else { return };
    for name in FAMILIES {
        let (model, _) = Model::load(&be, &fixtures().join(name)).unwrap();
        let text = std::fs::read_to_string(fixtures().join(format!("{name}.score.json"))).unwrap();
        let lines: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        let seqs: Vec<Vec<u32>> = lines
            .iter()
            .map(|l| l["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect())
            .collect();
        let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
        let cap: usize = seqs.iter().map(|s| s.len()).sum();
        let mut acts = Activations::new(&be, &model.cfg, cap, 16, false);
        let got = engine::cli::score::score_sequences(&be, &model, &mut acts, &refs, 1.0).unwrap();
        let got: Vec<f64> = got.iter().flatten().map(|&x| x as f64).collect();
        let want: Vec<f64> =
            lines.iter().flat_map(|l| l["logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap())).collect();
        let e = rel_err(&got, &want);
        println!("{name}: score logprobs rel {e:.2e} over {} tokens", want.len());
        assert!(e <= OUTER, "{name}: score logprobs rel {e:.2e}");
    }
}

/// Greedy decoding on the GPU (prefill, KV cache, decode attention) against
/// transformers' float64 greedy tokens (tests/fixtures/rollout/greedy.json).
/// bf16 logits carry errors of order 1e-2, so the comparison stops, without
/// blame, at the first step whose reference top-2 logit gap is under 0.1
/// (the CPU test uses 1e-3); log-probabilities within 0.1. Each prompt has
/// three samples, which share its prompt slot in the KV cache and must come
/// out bitwise the same.
#[test]
fn greedy_generation_on_the_gpu_follows_transformers() {
    use engine::rollout::{GenerateConfig, Generator, SamplingParams};
    let Some(be) = cuda("greedy_generation_on_the_gpu_follows_transformers") else { return };
    let text = std::fs::read_to_string(fixtures().join("rollout/greedy.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
    };
    let (mut compared, mut failed) = (0, Vec::new());
    for c in &cases {
        let name = c["model"].as_str().unwrap();
        let (model, _) = Model::load(&be, &fixtures().join(name)).unwrap();
        let prompt = ids(&c["prompt"]);
        let want = ids(&c["tokens_f64"]);
        let gaps: Vec<f64> = c["gap"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let ref_lp: Vec<f64> = c["logprob"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        // Three samples reading one prompt slot: greedy, so each is the
        // same sequence, with the same bits (rows of one batch).
        let cfg = GenerateConfig {
            n: 3,
            max_new_tokens: 64,
            sampling: SamplingParams { temperature: 0.0, ..Default::default() },
            ..Default::default()
        };
        let mut g = Generator::new(&be, &model, cfg, prompt.len()).unwrap();
        let all = g.generate(std::slice::from_ref(&prompt), None, |_| {}).unwrap();
        let got = &all[0];
        for other in &all[1..] {
            let same = other.tokens == got.tokens
                && other.logprobs.iter().zip(&got.logprobs).all(|(a, b)| a.to_bits() == b.to_bits());
            if !same {
                failed.push(format!("{name} prompt {prompt:?}: sample {} differs from sample 0", other.sample_index));
            }
        }
        let stop = gaps.iter().position(|&g| g < 0.1).unwrap_or(64).min(got.tokens.len());
        let lp_err = max_abs(&to_f64(&got.logprobs[..stop]), &ref_lp[..stop]);
        println!("{name} prompt of {}: {stop} tokens compared, log-prob max-abs {lp_err:.2e}", prompt.len());
        if got.tokens[..stop] != want[..stop] || lp_err > 0.1 {
            failed.push(format!("{name} prompt {prompt:?}: tokens or log-probs differ within {stop} steps"));
        }
        compared += stop;
    }
    println!("greedy on the GPU: {compared} tokens compared over {} prompts", cases.len());
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // An H100 run compared 86 (the reference's top-2 gaps are small on these
    // random models): at least one full 64-token sequence must be compared.
    assert!(compared >= 64, "too few tokens compared ({compared})");
}

/// The near-tie margin of the CUDA-vs-CPU greedy comparison, on the CPU's
/// top-2 logit gap. DESIGN.md §6 stops fp32-vs-fp32 comparisons at 1e-3;
/// the GPU runs the model in bf16, whose logits move by the bf16 rule's
/// scale: PyTorch's own bf16 run of these fixture models is off by at most
/// 0.024–0.032 in any log-probability of their reference batch
/// (`<name>.bf16.safetensors` against float64), the rule lets the engine be
/// twice that (≤ 0.064), and a gap is the difference of two such logits
/// (√2 · 0.064 ≈ 0.09 for independent errors): 0.1. The transformers
/// comparison above uses the same margin, and an H100 run of it matched
/// every token it compared.
const GREEDY_NEAR_TIE: f64 = 0.1;

/// New tokens per prompt in the CUDA-vs-CPU greedy comparison.
const GREEDY_NEW: usize = 64;

/// Prompts for the CUDA-vs-CPU greedy comparison: the four of
/// rollout/greedy.json (lengths 1, 5, 9, 17), then 60 more of lengths 1 to
/// 31 with ids below 400 from a fixed LCG. More prompts than the
/// transformers comparison (no reference file needed): the fixtures' random
/// weights give small top-2 gaps, so each sequence meets a near-tie early,
/// and many sequences make up a meaningful count of compared tokens.
fn greedy_prompts() -> Vec<Vec<u32>> {
    let text = std::fs::read_to_string(fixtures().join("rollout/greedy.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let mut prompts: Vec<Vec<u32>> = Vec::new();
    for c in cases.iter().filter(|c| c["model"] == "llama") {
        prompts.push(c["prompt"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect());
    }
    let mut rng = super::util::Lcg(0x5eed);
    for i in 0..60 {
        let len = 1 + (i * 7) % 31;
        prompts.push((0..len).map(|_| (rng.next() * 400.0) as u32 % 400).collect());
    }
    prompts
}

/// Greedy samples (one per prompt, `GREEDY_NEW` tokens, no EOS) on `be`.
fn greedy_samples<B: Backend>(be: &B, model: &Model<B>, prompts: &[Vec<u32>]) -> Vec<engine::rollout::Sample> {
    use engine::rollout::{GenerateConfig, Generator, SamplingParams};
    let cfg = GenerateConfig {
        max_new_tokens: GREEDY_NEW,
        sampling: SamplingParams { temperature: 0.0, ..Default::default() },
        ..Default::default()
    };
    let longest = prompts.iter().map(Vec::len).max().unwrap();
    let mut g = Generator::new(be, model, cfg, longest).unwrap();
    let mut out = g.generate(prompts, None, |_| {}).unwrap();
    out.sort_by_key(|s| (s.prompt_index, s.sample_index));
    out
}

/// The CPU's top-2 logit gap before each of `tokens` (greedy ones after
/// `prompt`), from one full forward over prompt + tokens: row
/// `prompt.len() − 1 + i` of the logits predicts token `i`. Checks that the
/// row's argmax is the token wherever the gap is clear of fp32 noise (1e-4:
/// the cached decode path and the full forward sum in other orders), so a
/// misaligned row cannot go unnoticed.
fn cpu_top2_gaps(model: &Model<Cpu>, prompt: &[u32], tokens: &[u32]) -> Vec<f64> {
    let seq: Vec<u32> = prompt.iter().chain(tokens).copied().collect();
    let batch = engine::data::Batch::pack(&[&seq]);
    let (n, v) = (batch.len(), model.cfg.vocab_size);
    let mut acts = Activations::new(&Cpu, &model.cfg, n, n, false);
    model.forward(&Cpu, &mut acts, &batch).unwrap();
    model.head_fwd(&Cpu, &mut acts, &batch.next_tokens, 1.0, false);
    assert!(acts.head.logits_hold_all, "one chunk holds every row's logits");
    let logits = Cpu.read(Cpu::view(&acts.head.logits, Span::new(0, n * v)));
    tokens
        .iter()
        .enumerate()
        .map(|(i, &tok)| {
            let row = &logits[(prompt.len() - 1 + i) * v..][..v];
            let (mut best, mut first, mut second) = (0, f32::NEG_INFINITY, f32::NEG_INFINITY);
            for (j, &z) in row.iter().enumerate() {
                if z > first {
                    (best, first, second) = (j, z, first);
                } else if z > second {
                    second = z;
                }
            }
            let gap = (first - second) as f64;
            assert!(gap < 1e-4 || best == tok as usize, "position {i}: argmax {best}, greedy token {tok}");
            gap
        })
        .collect()
}

/// How far `got`'s greedy tokens agree with the CPU's (`want`, with the
/// CPU's gaps): the tokens compared up to the first near-tie (`margin`,
/// where the comparison stops without blame), and a failure where a token
/// or a log-probability (within `lp_tol`) differs before it.
fn greedy_agreement(
    what: &str,
    want: &engine::rollout::Sample,
    gaps: &[f64],
    got: &engine::rollout::Sample,
    margin: f64,
    lp_tol: f64,
) -> (usize, Option<String>) {
    let stop = gaps.iter().position(|&g| g < margin).unwrap_or(gaps.len());
    assert!(got.tokens.len() >= stop, "{what}: {} tokens generated, {stop} to compare", got.tokens.len());
    if let Some(i) = (0..stop).find(|&i| got.tokens[i] != want.tokens[i]) {
        let msg = format!(
            "{what}: token {i} is {} on this backend, {} on the CPU (CPU top-2 gap {:.3}, first near-tie at {stop})",
            got.tokens[i], want.tokens[i], gaps[i]
        );
        return (i, Some(msg));
    }
    let lp = max_abs(&to_f64(&got.logprobs[..stop]), &to_f64(&want.logprobs[..stop]));
    let fail = (lp > lp_tol).then(|| format!("{what}: log-probabilities off by {lp:.2e} (> {lp_tol}) within {stop}"));
    (stop, fail)
}

/// Greedy generation on `be` against the CPU backend's on the three
/// fixture models, over [`greedy_prompts`]: (tokens compared, of them from
/// decode steps, failures).
fn greedy_against_the_cpu<B: Backend>(be: &B) -> (usize, usize, Vec<String>) {
    let prompts = greedy_prompts();
    let (mut compared, mut decoded, mut failed) = (0, 0, Vec::new());
    for name in FAMILIES {
        let (cpu_model, _) = Model::load(&Cpu, &fixtures().join(name)).unwrap();
        let (model, _) = Model::load(be, &fixtures().join(name)).unwrap();
        let want = greedy_samples(&Cpu, &cpu_model, &prompts);
        let got = greedy_samples(be, &model, &prompts);
        let mut here = 0;
        for (p, (w, g)) in prompts.iter().zip(want.iter().zip(&got)) {
            let gaps = cpu_top2_gaps(&cpu_model, p, &w.tokens);
            let what = format!("{name} prompt {p:?}");
            let (k, fail) = greedy_agreement(&what, w, &gaps, g, GREEDY_NEAR_TIE, 0.1);
            here += k;
            decoded += k.saturating_sub(1);
            failed.extend(fail);
        }
        println!("{name}: {here} greedy tokens compared with the CPU over {} prompts", prompts.len());
        compared += here;
    }
    println!("greedy on {} against the CPU: {compared} tokens compared, {decoded} from decode steps", be.name());
    (compared, decoded, failed)
}

/// The least [`greedy_against_the_cpu`] must compare: (tokens, of them from
/// decode steps). Where the backends agree, the CPU's gaps alone fix the
/// count: 622 over the 192 sequences when this was written, 495 from decode
/// steps (the rest are the prefill's first tokens); the random fixture
/// models' gaps are small, so most sequences meet a near-tie within a few
/// tokens.
const GREEDY_MIN_COMPARED: (usize, usize) = (450, 350);

/// Greedy generation on CUDA (prefill, KV cache, decode attention, the
/// sampler's argmax) gives the CPU backend's tokens on the three fixture
/// models (issue 7), position by position until the CPU's top-2 logit gap
/// falls under [`GREEDY_NEAR_TIE`] (the near-tie rule with a bf16 margin);
/// log-probabilities within 0.1 (twice PyTorch's bf16 error of ≤ 0.032,
/// with room); at least [`GREEDY_MIN_COMPARED`] tokens compared, so the
/// test cannot pass by stopping at once.
#[test]
fn greedy_generation_on_the_gpu_equals_the_cpu() {
    let Some(be) = cuda("greedy_generation_on_the_gpu_equals_the_cpu") else { return };
    let (compared, decoded, failed) = greedy_against_the_cpu(&be);
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    let (min, min_decoded) = GREEDY_MIN_COMPARED;
    assert!(
        compared >= min && decoded >= min_decoded,
        "too few tokens compared ({compared}, {decoded} from decode steps): the near-tie rule stopped almost at once"
    );
}

/// The comparison's own machinery without a GPU: the CPU against itself
/// (the gaps' rows aligned with the tokens, every token compared up to the
/// near-ties), and the prompts still reach [`GREEDY_MIN_COMPARED`].
#[test]
fn greedy_comparison_with_the_cpu_compares_enough_tokens() {
    let (compared, decoded, failed) = greedy_against_the_cpu(&Cpu);
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    let (min, min_decoded) = GREEDY_MIN_COMPARED;
    assert!(compared >= min && decoded >= min_decoded, "{compared} tokens compared, {decoded} from decode steps");
}

/// A small Qwen2 with head_dim 64 (4 heads, 2 KV heads, 2 layers), random
/// weights: decode attention on the grouped kernel with its key splits.
fn random_d64_model(be: &Cuda) -> Model<Cuda> {
    let config = r#"{"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","vocab_size":512,
      "hidden_size":256,"intermediate_size":512,"num_hidden_layers":2,"num_attention_heads":4,
      "num_key_value_heads":2,"max_position_embeddings":4096,"rope_theta":10000.0,"rms_norm_eps":1e-6,
      "tie_word_embeddings":true}"#;
    super::util::random_model(be, config, 12345, 0.2).0
}

/// Decode steps replayed as CUDA graphs (`GenerateConfig::graphs`) give
/// the same bits as the same padded steps issued eagerly (capture off): the
/// same kernels on the same buffers, only recorded once and replayed. 3
/// prompts × 3 samples at temperature 1, an EOS that ends some samples
/// early (so the padded batch size changes), a max_batch of 6 (padding to
/// 4 and 6); on the qwen2 fixture (head_dim 16: the simple decode kernel)
/// and on a random model with head_dim 64 and 300 new tokens (the grouped
/// kernel, its keys split in runs planned for the cache's length). The same
/// generator runs twice, the sampler's scratch grown in between: the second
/// run must recapture (the graphs hold the old buffers) and give the same
/// samples. Then the same run without padding or graphs, which must agree
/// to sampling's noise: the two differ in decode attention's key splits and
/// the lm_head product's row count, so the bf16 logits may round apart and
/// a sequence may branch at a near-tie: two thirds of the samples must
/// agree on their first 8 tokens.
#[test]
fn decode_graphs_replay_the_eager_steps_bit_for_bit() {
    use engine::rollout::{GenerateConfig, Generator, SamplingParams, Stream};
    use std::sync::atomic::Ordering;
    let Some(be) = cuda("decode_graphs_replay_the_eager_steps_bit_for_bit") else { return };
    if !be.gpu.graphs_on.load(Ordering::Relaxed) {
        println!("skip decode graphs: ENGINE_CUDA_LEGACY_STREAM is set (no capture on the legacy stream)");
        return;
    }
    let prompts: Vec<Vec<u32>> = vec![vec![5, 17, 99, 3], vec![42; 9], vec![7, 8]];
    let fixture = Model::load(&be, &fixtures().join("qwen2")).unwrap().0;
    let d64 = random_d64_model(&be);
    for (name, model, new) in [("qwen2 fixture", &fixture, 64), ("random head_dim 64", &d64, 300)] {
        let base = GenerateConfig {
            n: 3,
            max_new_tokens: new,
            max_batch: 6,
            sampling: SamplingParams { temperature: 1.0, ..Default::default() },
            seed: 11,
            ..Default::default()
        };
        let run = |cfg: GenerateConfig| {
            let mut g = Generator::new(&be, model, cfg, 9).unwrap();
            g.generate(&prompts, None, |_| {}).unwrap()
        };
        // The token drawn most often in a free run, as an EOS.
        let free = run(base.clone());
        let mut counts = std::collections::HashMap::new();
        free.iter().flat_map(|s| &s.tokens).for_each(|&t| *counts.entry(t).or_insert(0) += 1);
        let (&eos, _) = counts.iter().max_by_key(|&(t, c)| (*c, std::cmp::Reverse(*t))).unwrap();
        let cfg = GenerateConfig { eos_ids: vec![eos], graphs: true, ..base };
        be.gpu.graphs_on.store(false, Ordering::Relaxed);
        let eager = run(cfg.clone());
        be.gpu.graphs_on.store(true, Ordering::Relaxed);
        let mut g = Generator::new(&be, model, cfg.clone(), 9).unwrap();
        let first = g.generate(&prompts, None, |_| {}).unwrap();
        // A larger sampler scratch: the captured graphs are stale now.
        be.sample_stage(&vec![Stream::new(0, 0, 0).draw(0); 64]);
        let second = g.generate(&prompts, None, |_| {}).unwrap();
        let lens: Vec<usize> = eager.iter().map(|s| s.tokens.len()).collect();
        println!("decode graphs, {name}: sample lengths {lens:?}");
        assert!(lens.iter().any(|&l| l < new), "{name}: no sample ended early: {lens:?}");
        let bits = |s: &engine::rollout::Sample| s.logprobs.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for replayed in [&first, &second] {
            for (a, b) in replayed.iter().zip(&eager) {
                let which = format!("{name}: prompt {} sample {}", a.prompt_index, a.sample_index);
                assert_eq!(a.tokens, b.tokens, "{which}");
                assert_eq!(bits(a), bits(b), "{which}: log-probs");
            }
        }
        // A broken decode path would branch at once; sampling noise rarely
        // does within 8 tokens.
        let plain = run(GenerateConfig { graphs: false, ..cfg });
        let agree = first
            .iter()
            .zip(&plain)
            .filter(|(a, b)| {
                let k = 8.min(a.tokens.len()).min(b.tokens.len());
                a.tokens[..k] == b.tokens[..k]
            })
            .count();
        println!("decode graphs, {name}: {agree} of {} samples agree with the unpadded run on 8 tokens", plain.len());
        assert!(agree * 3 >= plain.len() * 2, "{name}: {agree} of {} samples agree with the unpadded run", plain.len());
    }
}

/// What one GRPO update gives on a backend.
struct GrpoRun {
    loss: f64,
    stats: engine::loss::PolicyStats,
    grads: Vec<f32>,
}

/// One GRPO update's backward on `be`: forward, phase 1 with the entropy,
/// the policy loss through the backend's coefficient pass (the kernel on
/// the GPU, `policy_loss` on the CPU), phase 2 from the coefficients left in
/// the head buffers, and every parameter's gradient.
fn grpo_step<B: Backend>(be: &B, model: &Model<B>, r: &Reference, old: &[f32], refl: &[f32]) -> GrpoRun {
    use engine::backend::PolicyInputs;
    use engine::loss::{KlKind, KlPenalty, PolicyConfig, PolicyKind, StepCounts};
    let batch = r.batch();
    let n = batch.len();
    let targets = r.loss_targets();
    let mask: Vec<bool> = targets.iter().map(|&t| t != engine::backend::IGNORE).collect();
    let seqs = batch.cu_seqlens.len() - 1;
    let advantages: Vec<f32> = (0..seqs).map(|s| if s % 2 == 0 { 1.3 } else { -0.8 }).collect();
    let rewards: Vec<f32> = (0..seqs).map(|s| (s % 2 == 0) as u32 as f32).collect();
    let mut cfg = PolicyConfig::new(PolicyKind::gppo());
    cfg.kl = Some(KlPenalty { kind: KlKind::K3, coef: 0.05 });
    cfg.entropy_coef = 0.01;
    cfg.positive_nll_coef = 0.1;
    let mut counts = StepCounts::default();
    counts.add(&mask, &batch.cu_seqlens);
    let correct = cfg.correct_tokens([(mask.as_slice(), batch.cu_seqlens.as_slice(), rewards.as_slice())]);

    let mut acts = Activations::new(be, &model.cfg, n, n, true);
    model.forward(be, &mut acts, &batch).unwrap();
    model.head_fwd(be, &mut acts, &targets, 1.0, true);
    let all = Span::new(0, n);
    let dev = |v: &[f32]| {
        let mut b = be.alloc_f32(n);
        be.write(v, B::view_mut(&mut b, all));
        b
    };
    let (old_d, ref_d) = (dev(old), dev(refl));
    let x = PolicyInputs::<B> {
        logp: B::view(&acts.head.logp, all),
        old_logp: B::view(&old_d, all),
        ref_logp: Some(B::view(&ref_d, all)),
        sampler_logp: None,
        entropy: Some(B::view(&acts.head.entropy, all)),
        mask: &mask,
        cu_seqlens: &batch.cu_seqlens,
        advantages: &advantages,
        rewards: &rewards,
    };
    let (loss, stats) = be.policy_loss(
        &cfg,
        &x,
        &counts,
        correct,
        B::view_mut(&mut acts.head.coef, all),
        Some(B::view_mut(&mut acts.head.ent_coef, all)),
    );
    let mut grads = model.zero_grads(be);
    model.backward_from(be, &mut acts, engine::model::head::Coefs::InBuffers { entropy: true }, 1.0, &mut grads);
    GrpoRun { loss, stats, grads: be.read(B::view(&grads, Span::new(0, model.layout.total))) }
}

/// One GRPO update's gradients on the GPU (GPPO with k3 KL, an entropy
/// bonus and the NLL term, the coefficients from kernels/policy.cu) against
/// the CPU's on the same fixture model and inputs: within the outer bound of
/// the bf16 rule over all gradients together (and the loss), with the clip
/// counts within a few tokens (a ratio near a clip bound may land on either
/// side in bf16).
#[test]
fn grpo_step_gradients_on_the_gpu_follow_the_cpu() {
    let Some(be) = cuda("grpo_step_gradients_on_the_gpu_follow_the_cpu") else { return };
    for name in FAMILIES {
        let r = Reference::open(name);
        let (cpu_model, _) = Model::load(&Cpu, &fixtures().join(name)).unwrap();
        let (gpu_model, _) = Model::load(&be, &fixtures().join(name)).unwrap();
        // Old and reference log-probs: the CPU's own, moved so the ratios
        // fall inside and outside the clip band on both sides.
        let batch = r.batch();
        let n = batch.len();
        let mut acts = Activations::new(&Cpu, &cpu_model.cfg, n, n, false);
        cpu_model.forward(&Cpu, &mut acts, &batch).unwrap();
        cpu_model.head_fwd(&Cpu, &mut acts, &r.loss_targets(), 1.0, false);
        let logp = acts.head.read_logp(&Cpu, n);
        let old: Vec<f32> = logp.iter().enumerate().map(|(t, &l)| l + 0.6 * ((t as f32 * 0.77).sin())).collect();
        let refl: Vec<f32> = logp.iter().enumerate().map(|(t, &l)| l + 0.4 * ((t as f32 * 1.3).cos())).collect();

        let want = grpo_step(&Cpu, &cpu_model, &r, &old, &refl);
        let got = grpo_step(&be, &gpu_model, &r, &old, &refl);
        let e = rel_err(&to_f64(&got.grads), &to_f64(&want.grads));
        let el = (got.loss - want.loss).abs() / want.loss.abs().max(1e-12);
        let (g, w) = (&got.stats, &want.stats);
        println!(
            "{name}: GRPO loss {:.6} vs CPU {:.6} (rel {el:.2e}), gradients rel {e:.2e}, clipped low/high/dual \
             {}/{}/{} vs {}/{}/{} of {} tokens",
            got.loss,
            want.loss,
            g.clipped_low,
            g.clipped_high,
            g.clipped_dual,
            w.clipped_low,
            w.clipped_high,
            w.clipped_dual,
            w.tokens
        );
        assert!(w.clipped_low + w.clipped_high > 0, "{name}: the inputs should reach the clip regions");
        assert_eq!(g.tokens, w.tokens, "{name}: tokens");
        let near = |a: usize, b: usize| a.abs_diff(b) <= 2 + b / 20;
        assert!(
            near(g.clipped_low, w.clipped_low) && near(g.clipped_high, w.clipped_high),
            "{name}: clip counts differ"
        );
        assert!(el <= OUTER, "{name}: loss rel {el:.2e}");
        assert!(e <= OUTER, "{name}: gradients rel {e:.2e}");
    }
}
