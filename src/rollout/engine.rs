//! The generation engine: continuous batching over a preallocated KV cache.
//!
//! Each prompt is prefilled once, its keys and values written once, into a
//! prompt slot of the cache that all its `n` samples read (`KvCache`); each
//! sample then decodes one token per step, in a generation slot of its own,
//! alongside every other active sequence. A finished sequence frees its
//! generation slot (the prompt slot goes when the prompt's last sample
//! finishes), and waiting prompts join at the next step.

use super::sampler::{Draw, SamplingParams, Stream};
use crate::backend::{Backend, DecodeSeq};
use crate::data::Batch;
use crate::model::activations::backend_chunk;
use crate::model::{Activations, Attend, CacheShape, KvCache, Model};
use anyhow::{bail, Result};
use std::collections::VecDeque;

#[derive(Clone, Debug)]
pub struct GenerateConfig {
    /// Samples per prompt.
    pub n: usize,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    /// Any of these ends a sequence (kept as its last token).
    pub eos_ids: Vec<u32>,
    /// Any of these appearing in the decoded text ends a sequence.
    pub stop_strings: Vec<String>,
    /// Sequences decoded together (KV-cache generation slots); at least `n`.
    pub max_batch: usize,
    /// Prompts whose samples may be in flight at once (KV-cache prompt
    /// slots); 0 picks `min(max_batch, 2·⌈max_batch / n⌉)` (slack for a
    /// prompt whose samples finish at different times), or `max_batch`
    /// without `share_prefill`. Fewer slots hold less memory; too few leave
    /// generation slots idle.
    pub prompt_slots: usize,
    /// Prompt tokens prefilled in one forward (a longer prompt goes alone).
    pub prefill_tokens: usize,
    /// Prefill each prompt once for its `n` samples (true) or once per
    /// sample (false, for testing the sharing).
    pub share_prefill: bool,
    /// Replay each decode step's device work as a graph captured once per
    /// batch size (CUDA graphs: no launch costs on the host). A step's batch
    /// is padded with dummy sequences up to 1, 2, 4 or a multiple of 8
    /// (at most `max_batch`), so a few graphs serve every step. Backends
    /// without graphs run the padded steps as they are (the tests' check
    /// that padding changes no sample).
    pub graphs: bool,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            n: 1,
            max_new_tokens: 256,
            sampling: SamplingParams::default(),
            seed: 0,
            eos_ids: vec![],
            stop_strings: vec![],
            max_batch: 64,
            prompt_slots: 0,
            prefill_tokens: 4096,
            share_prefill: true,
            graphs: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An EOS id or a stop string.
    Stop,
    /// `max_new_tokens` reached.
    Length,
}

impl FinishReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// One finished sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub prompt_index: usize,
    pub sample_index: usize,
    /// Generated ids only (an EOS that ended the sample included).
    pub tokens: Vec<u32>,
    /// `log_softmax(z/T)[token]` for each generated token.
    pub logprobs: Vec<f32>,
    pub finish_reason: FinishReason,
}

/// A sequence being decoded.
struct Active {
    prompt: usize,
    sample: usize,
    /// The prompt's keys and values (shared with its other samples).
    prompt_slot: u32,
    /// This sequence's generated keys and values.
    gen_slot: u32,
    prompt_len: usize,
    /// Tokens in the cache (prompt + generated, but the last generated).
    len: usize,
    stream: Stream,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
}

/// Decodes the generated text for stop strings (the tokenizer's job).
pub type Detokenize<'a> = &'a dyn Fn(&[u32]) -> String;

pub struct Generator<'m, B: Backend> {
    be: &'m B,
    model: &'m Model<B>,
    cfg: GenerateConfig,
    cache: KvCache<B>,
    acts: Activations<B>,
    stats: DecodeStats,
    /// Per padded batch size, with `cfg.graphs`.
    graphs: Vec<(usize, StepGraph<B>)>,
}

/// Where a padded batch size stands: run eagerly once in an epoch (every
/// buffer it needs at its size), then captured, then replayed while the
/// backend's buffer epoch stays.
enum StepGraph<B: Backend> {
    WarmedUp(u64),
    Captured(B::Graph, u64),
}

/// The batch a decode step of `b` sequences is padded to: 1, 2, 4, then
/// multiples of 8, at most `max_batch`.
pub fn padded_batch(b: usize, max_batch: usize) -> usize {
    let p = if b <= 4 { b.next_power_of_two() } else { b.next_multiple_of(8) };
    p.min(max_batch).max(b)
}

/// Where decode steps spent their time, for benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DecodeStats {
    /// Decode steps run.
    pub steps: usize,
    /// Seconds the host spent issuing the steps' forwards: on a GPU the
    /// kernels run asynchronously, so this is the host's share (every
    /// launch's cost), not the step's; a step that takes little longer than
    /// its issue is bound by the host (launches), not by the GPU.
    pub forward_issue_s: f64,
    /// Seconds of the whole steps: issue, sampling, and the wait for the
    /// sampled tokens.
    pub step_s: f64,
}

/// Which cache slots are free, and how many live samples read each prompt slot.
struct Slots {
    free_gen: Vec<u32>,
    free_prompt: Vec<u32>,
    readers: Vec<usize>,
}

impl Slots {
    fn new(shape: CacheShape) -> Self {
        Slots {
            free_gen: (0..shape.gen_slots as u32).rev().collect(),
            free_prompt: (0..shape.prompt_slots as u32).rev().collect(),
            readers: vec![0; shape.prompt_slots],
        }
    }

    /// A prompt slot for `samples` readers and a generation slot for each,
    /// if there are enough free.
    fn take(&mut self, samples: usize) -> Option<(u32, Vec<u32>)> {
        if self.free_gen.len() < samples || self.free_prompt.is_empty() {
            return None;
        }
        let p = self.free_prompt.pop().expect("checked");
        self.readers[p as usize] = samples;
        Some((p, self.free_gen.split_off(self.free_gen.len() - samples)))
    }

    fn release(&mut self, a: &Active) {
        self.free_gen.push(a.gen_slot);
        let r = &mut self.readers[a.prompt_slot as usize];
        *r -= 1;
        if *r == 0 {
            self.free_prompt.push(a.prompt_slot);
        }
    }
}

impl<'m, B: Backend> Generator<'m, B> {
    /// Allocates the cache (prompt slots of `longest_prompt` positions,
    /// `max_batch` generation slots of `max_new_tokens`) and the arena.
    pub fn new(be: &'m B, model: &'m Model<B>, mut cfg: GenerateConfig, longest_prompt: usize) -> Result<Self> {
        if cfg.n == 0 || cfg.max_new_tokens == 0 {
            bail!("generate: need at least one sample and one new token");
        }
        cfg.sampling.validate().map_err(|e| anyhow::anyhow!("generate: {e}"))?;
        cfg.max_batch = cfg.max_batch.max(cfg.n);
        let c = &model.cfg;
        if longest_prompt == 0 {
            bail!("generate: the longest prompt has no tokens");
        }
        let capacity = longest_prompt + cfg.max_new_tokens;
        let prompt_slots = match (cfg.prompt_slots, cfg.share_prefill) {
            (0, true) => cfg.max_batch.min(2 * cfg.max_batch.div_ceil(cfg.n)),
            (0, false) => cfg.max_batch,
            (k, _) => k,
        };
        // The last token sampled is never written: max_new_tokens − 1 rows would do.
        let shape = CacheShape {
            prompt_slots,
            prompt_cap: longest_prompt,
            gen_slots: cfg.max_batch,
            gen_cap: cfg.max_new_tokens,
            pad_rows: if cfg.graphs { cfg.max_batch } else { 0 },
        };
        if shape.rows() > u32::MAX as usize {
            bail!("generate: a KV cache of {} rows does not fit 32-bit row indices", shape.rows());
        }
        let cache = KvCache::new(be, c.n_layers, c.kv_dim(), shape);
        let cap = cfg.prefill_tokens.max(longest_prompt).max(cfg.max_batch);
        let chunk = backend_chunk(be, c, cfg.max_batch);
        let acts = Activations::with_positions(be, c, cap, chunk, false, capacity);
        if cfg.graphs {
            if chunk < cfg.max_batch {
                bail!("generate: graphs need the lm_head chunk ({chunk} rows) to hold max_batch ({})", cfg.max_batch);
            }
            // The sampler's buffers at their largest now, so that no later
            // growth makes the captured steps stale.
            be.sample_stage(&vec![Stream::new(0, 0, 0).draw(0); cfg.max_batch]);
        }
        Ok(Generator { be, model, cfg, cache, acts, stats: DecodeStats::default(), graphs: Vec::new() })
    }

    /// Timing of the decode steps run so far.
    pub fn decode_stats(&self) -> DecodeStats {
        self.stats
    }

    /// The sizes of the KV cache's pools.
    pub fn cache_shape(&self) -> CacheShape {
        self.cache.shape()
    }

    /// Generates `n` samples for each prompt; `on_token` is called with the
    /// number of tokens produced at each step (for a progress bar).
    pub fn generate(
        &mut self,
        prompts: &[Vec<u32>],
        detok: Option<Detokenize>,
        mut on_token: impl FnMut(usize),
    ) -> Result<Vec<Sample>> {
        let vocab = self.model.cfg.vocab_size;
        for (i, p) in prompts.iter().enumerate() {
            if p.is_empty() {
                bail!("prompt {i} is empty");
            }
            if p.len() > self.cache.prompt_cap {
                bail!("prompt {i} ({} tokens) does not fit the cache built for {}", p.len(), self.cache.prompt_cap);
            }
            if let Some(&t) = p.iter().find(|&&t| t as usize >= vocab) {
                bail!("prompt {i}: token id {t} outside the vocabulary ({vocab})");
            }
        }
        // Units of admission: (prompt, samples prefilled together).
        let units: Vec<(usize, std::ops::Range<usize>)> = (0..prompts.len())
            .flat_map(|p| {
                let n = self.cfg.n;
                if self.cfg.share_prefill {
                    vec![(p, 0..n)]
                } else {
                    (0..n).map(|s| (p, s..s + 1)).collect()
                }
            })
            .collect();
        let mut waiting: VecDeque<(usize, std::ops::Range<usize>)> = units.into();
        let mut free = Slots::new(self.cache.shape());
        let mut active: Vec<Active> = Vec::new();
        let mut done: Vec<Sample> = Vec::new();

        while !waiting.is_empty() || !active.is_empty() {
            let admitted = self.admit(prompts, &mut waiting, &mut free)?;
            let mut step_tokens = 0;
            for mut a in admitted {
                step_tokens += 1;
                match self.finished(&a, detok) {
                    Some(reason) => done.push(self.retire(&mut a, reason, &mut free)),
                    None => active.push(a),
                }
            }
            if !active.is_empty() {
                self.decode_step(&mut active)?;
                step_tokens += active.len();
                let mut still = Vec::with_capacity(active.len());
                for mut a in active.drain(..) {
                    match self.finished(&a, detok) {
                        Some(reason) => done.push(self.retire(&mut a, reason, &mut free)),
                        None => still.push(a),
                    }
                }
                active = still;
            }
            on_token(step_tokens);
        }
        done.sort_by_key(|s| (s.prompt_index, s.sample_index));
        Ok(done)
    }

    /// Prefills as many waiting prompts as there are free slots (and prefill
    /// budget) for, and samples each sample's first token.
    fn admit(
        &mut self,
        prompts: &[Vec<u32>],
        waiting: &mut VecDeque<(usize, std::ops::Range<usize>)>,
        free: &mut Slots,
    ) -> Result<Vec<Active>> {
        // (prompt, its samples, its prompt slot, their generation slots)
        let mut group: Vec<(usize, std::ops::Range<usize>, u32, Vec<u32>)> = Vec::new();
        let mut tokens = 0;
        while let Some((p, samples)) = waiting.front() {
            let len = prompts[*p].len();
            if !group.is_empty() && tokens + len > self.acts.cap {
                break;
            }
            let Some((prompt_slot, gen_slots)) = free.take(samples.len()) else { break };
            group.push((*p, samples.clone(), prompt_slot, gen_slots));
            tokens += len;
            waiting.pop_front();
        }
        if group.is_empty() {
            return Ok(vec![]);
        }
        let seqs: Vec<&[u32]> = group.iter().map(|(p, _, _, _)| prompts[*p].as_slice()).collect();
        let batch = Batch::pack(&seqs);
        let mut writes = Vec::new();
        for (i, (_, _, prompt_slot, _)) in group.iter().enumerate() {
            let row = self.cache.prompt_row(*prompt_slot);
            writes.extend(batch.seq(i).map(|t| (t as u32, row + batch.positions[t])));
        }
        self.cache.plan_writes(self.be, &writes);
        self.model.forward_with(self.be, &mut self.acts, &batch, Attend::PackedFill(&mut self.cache))?;
        // One row per sample: a prompt's samples draw from its last row.
        let mut draws = Vec::new();
        for (i, (p, samples, _, _)) in group.iter().enumerate() {
            let last = batch.seq(i).end as u32 - 1;
            for s in samples.clone() {
                let stream = Stream::new(self.cfg.seed, *p as u64, s as u64);
                draws.push((last, stream.draw(0)));
            }
        }
        let mut sampled =
            self.model.sample_rows(self.be, &mut self.acts, &draws, &self.cfg.sampling).into_iter().zip(draws);
        let mut out = Vec::new();
        for (p, samples, prompt_slot, gen_slots) in group {
            for (s, gen_slot) in samples.zip(gen_slots) {
                let (x, (_, draw)) = sampled.next().expect("one draw per sample");
                out.push(Active {
                    prompt: p,
                    sample: s,
                    prompt_slot,
                    gen_slot,
                    prompt_len: prompts[p].len(),
                    len: prompts[p].len(),
                    stream: draw.stream,
                    tokens: vec![x.token],
                    logprobs: vec![x.logprob],
                });
            }
        }
        Ok(out)
    }

    /// One new token for every active sequence.
    fn decode_step(&mut self, active: &mut [Active]) -> Result<()> {
        let t0 = std::time::Instant::now();
        let b = active.len();
        let rows = if self.cfg.graphs { padded_batch(b, self.cfg.max_batch) } else { b };
        // Padding sequences: token 0 at position 0, in their own cache rows.
        let mut tokens: Vec<u32> = active.iter().map(|a| *a.tokens.last().unwrap()).collect();
        let mut positions: Vec<u32> = active.iter().map(|a| a.len as u32).collect();
        tokens.resize(rows, 0);
        positions.resize(rows, 0);
        let seqs: Vec<DecodeSeq> = active
            .iter()
            .map(|a| DecodeSeq {
                prefix_row: self.cache.prompt_row(a.prompt_slot),
                prefix_len: a.prompt_len as u32,
                own_row: self.cache.gen_row(a.gen_slot),
                len: a.len as u32 + 1,
            })
            .collect();
        let batch = Batch {
            tokens,
            positions,
            cu_seqlens: (0..=rows as u32).collect(),
            next_tokens: vec![crate::backend::IGNORE; rows],
        };
        self.cache.plan_decode_padded(self.be, &seqs, rows);
        // Each sequence draws from its own stream, step = tokens so far.
        let mut draws: Vec<Draw> = active.iter().map(|a| a.stream.draw(a.tokens.len() as u64)).collect();
        let sampled = if self.cfg.graphs {
            self.model.stage(self.be, &mut self.acts, &batch)?;
            draws.resize(rows, Stream::new(0, 0, 0).draw(0));
            self.be.sample_stage(&draws);
            let t1 = std::time::Instant::now();
            self.run_graph_step(rows);
            self.stats.forward_issue_s += t1.elapsed().as_secs_f64();
            self.model.sample_first_collect(self.be, &mut self.acts, &draws[..b], &self.cfg.sampling)
        } else {
            let t1 = std::time::Instant::now();
            self.model.forward_with(self.be, &mut self.acts, &batch, Attend::Decode(&mut self.cache))?;
            self.stats.forward_issue_s += t1.elapsed().as_secs_f64();
            let rows: Vec<(u32, Draw)> = draws.into_iter().enumerate().map(|(i, d)| (i as u32, d)).collect();
            self.model.sample_rows(self.be, &mut self.acts, &rows, &self.cfg.sampling)
        };
        for (a, x) in active.iter_mut().zip(sampled) {
            a.len += 1;
            a.tokens.push(x.token);
            a.logprobs.push(x.logprob);
        }
        self.stats.steps += 1;
        self.stats.step_s += t0.elapsed().as_secs_f64();
        Ok(())
    }

    /// The staged step's device work (forward, lm_head, sampling) for
    /// `rows` token rows (`cfg.graphs`): run once, then captured and
    /// replayed (recaptured when the backend's buffers move; see
    /// [`StepGraph`]).
    fn run_graph_step(&mut self, rows: usize) {
        let Generator { be, model, cfg, cache, acts, graphs, .. } = self;
        let be: &B = be;
        // One launch shape for every length up to the cache's.
        be.set_decode_keys_floor(cache.max_len());
        let mut issue = || {
            model.forward_staged(be, acts, Attend::Decode(cache));
            model.sample_first_launch(be, acts, rows, &cfg.sampling);
        };
        let epoch = be.graph_epoch();
        let at = graphs.iter().position(|(r, _)| *r == rows);
        match at.map(|i| &graphs[i].1) {
            Some(StepGraph::Captured(g, e)) if *e == epoch => be.replay(g),
            Some(StepGraph::WarmedUp(e)) if *e == epoch => {
                // None: the backend has no graphs, and `issue` has run.
                if let Some(g) = be.capture(&mut issue) {
                    let i = at.expect("found");
                    if be.graph_epoch() == epoch {
                        be.replay(&g);
                        graphs[i].1 = StepGraph::Captured(g, epoch);
                    } else {
                        // A buffer moved while the step was recorded (which
                        // the warm-up should rule out): the graph is stale
                        // and nothing ran. Run the step, warm up again.
                        drop(g);
                        issue();
                        graphs[i].1 = StepGraph::WarmedUp(be.graph_epoch());
                    }
                }
            }
            _ => {
                issue();
                let warm = StepGraph::WarmedUp(be.graph_epoch());
                match at {
                    Some(i) => graphs[i].1 = warm,
                    None => graphs.push((rows, warm)),
                }
            }
        }
        be.set_decode_keys_floor(0);
    }

    fn finished(&self, a: &Active, detok: Option<Detokenize>) -> Option<FinishReason> {
        let last = *a.tokens.last().unwrap();
        if self.cfg.eos_ids.contains(&last) {
            return Some(FinishReason::Stop);
        }
        if !self.cfg.stop_strings.is_empty() {
            if let Some(detok) = detok {
                let text = detok(&a.tokens);
                if self.cfg.stop_strings.iter().any(|s| text.contains(s.as_str())) {
                    return Some(FinishReason::Stop);
                }
            }
        }
        (a.tokens.len() >= self.cfg.max_new_tokens).then_some(FinishReason::Length)
    }

    fn retire(&self, a: &mut Active, reason: FinishReason, free: &mut Slots) -> Sample {
        free.release(a);
        Sample {
            prompt_index: a.prompt,
            sample_index: a.sample,
            tokens: std::mem::take(&mut a.tokens),
            logprobs: std::mem::take(&mut a.logprobs),
            finish_reason: reason,
        }
    }
}
