//! The lm_head and the loss in two phases over chunks of tokens (DESIGN.md
//! §3), so the `[tokens × vocab]` logits are never held for the whole batch:
//!
//! 1. [`phase1`]: for each chunk, `logits = h · Wᵀ`, then per token `logp`,
//!    `lse` (and the entropy). Only those per-token arrays survive.
//! 2. The loss runs on the per-token arrays (`crate::loss`), giving each
//!    token its coefficients ([`TokenCoefs`]).
//! 3. [`phase2`]: for each chunk, the logits again (skipped when one chunk
//!    held the whole batch in phase 1), the gradient written over them in
//!    place, then `dh = dz · W` and `dW += dzᵀ · h`.
//!
//! A token-local loss can run both phases in one pass per chunk, computing
//! each chunk's logits once: [`one_pass`] (coefficients known beforehand, as
//! SFT's), [`one_pass_with`] (coefficients from the chunk's log-probs, as
//! the policy losses but GSPO's). Distillation is token-local and needs the
//! teacher's rows: [`distill`] does both phases in one pass, with a chunk of
//! teacher logits beside the student's.

use crate::backend::{Backend, MatShape, Span};
use crate::loss::{DistillMode, TokenCoefs};

/// Per-token arrays and the logit chunk of the lm_head path.
pub struct HeadBuffers<B: Backend> {
    /// Tokens the per-token arrays hold.
    pub cap: usize,
    /// Rows of logits computed at once.
    pub chunk: usize,
    pub targets: B::Idx,
    /// `[chunk, vocab]`.
    pub logits: B::Buf,
    /// True while `logits` holds the logits of every row (one chunk covered
    /// the batch in phase 1), so phase 2 need not recompute them.
    pub logits_hold_all: bool,
    /// True when the last phase 1 computed the entropy (an entropy term in
    /// phase 2 reads it).
    pub has_entropy: bool,
    pub logp: B::Buf,
    pub lse: B::Buf,
    pub entropy: B::Buf,
    pub coef: B::Buf,
    pub ent_coef: B::Buf,
}

impl<B: Backend> HeadBuffers<B> {
    pub fn new(be: &B, cap: usize, chunk: usize, vocab: usize) -> Self {
        HeadBuffers {
            cap,
            chunk,
            targets: be.alloc_idx(cap),
            logits: be.alloc(chunk * vocab),
            logits_hold_all: false,
            has_entropy: false,
            logp: be.alloc_f32(cap),
            lse: be.alloc_f32(cap),
            entropy: be.alloc_f32(cap),
            coef: be.alloc_f32(cap),
            ent_coef: be.alloc_f32(cap),
        }
    }

    /// Phase 1's per-token arrays for the first `n` tokens, on the host.
    pub fn read_logp(&self, be: &B, n: usize) -> Vec<f32> {
        be.read(B::view(&self.logp, Span::new(0, n)))
    }
    pub fn read_entropy(&self, be: &B, n: usize) -> Vec<f32> {
        be.read(B::view(&self.entropy, Span::new(0, n)))
    }
}

/// f32 elements of a [`HeadBuffers`].
pub fn elements(cap: usize, chunk: usize, vocab: usize) -> usize {
    chunk * vocab + 5 * cap
}

/// Shapes: `n` tokens, hidden size `d`, vocabulary `v`.
#[derive(Clone, Copy, Debug)]
pub struct HeadShape {
    pub n: usize,
    pub d: usize,
    pub v: usize,
}

/// Rows `r0..r0+rows` of each chunk.
fn chunks(n: usize, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n).step_by(chunk.max(1)).map(move |r0| (r0, chunk.min(n - r0)))
}

/// The per-chunk steps the phases share, each on rows `r0..r0 + rows`.
impl<B: Backend> HeadBuffers<B> {
    /// `logits = h · Wᵀ` for the chunk.
    fn chunk_logits(&mut self, be: &B, s: HeadShape, h: &B::Buf, w: B::Ref<'_>, r0: usize, rows: usize) {
        let HeadShape { d, v, .. } = s;
        let hs = B::view(h, Span::new(r0 * d, rows * d));
        let z = B::view_mut(&mut self.logits, Span::new(0, rows * v));
        be.matmul(MatShape { m: rows, n: v, k: d }, hs, w, None, z, false);
    }

    /// `logp`, `lse` (and the entropy) of the chunk's logits.
    fn chunk_logprobs(&mut self, be: &B, v: usize, r0: usize, rows: usize, inv_t: f32, entropy: bool) {
        let span = Span::new(r0, rows);
        be.logprob_fwd(
            B::view(&self.logits, Span::new(0, rows * v)),
            B::idx_view(&self.targets, span),
            v,
            inv_t,
            B::view_mut(&mut self.logp, span),
            B::view_mut(&mut self.lse, span),
            entropy.then(|| B::view_mut(&mut self.entropy, span)),
        );
    }

    /// dz over the chunk's logits from the coefficients in `coef` (and
    /// `ent_coef`), then `dh = dz · W` for its rows and `dW += dzᵀ · h`.
    #[allow(clippy::too_many_arguments)]
    fn chunk_grads(
        &mut self,
        be: &B,
        s: HeadShape,
        (h, w): (&B::Buf, B::Ref<'_>),
        (r0, rows): (usize, usize),
        inv_t: f32,
        entropy: bool,
        dh: &mut B::Buf,
        grads: &mut B::Buf,
        dw: Span,
    ) {
        let HeadShape { d, v, .. } = s;
        let (z, span, hs) = (Span::new(0, rows * v), Span::new(r0, rows), Span::new(r0 * d, rows * d));
        let ent = entropy.then(|| (B::view(&self.ent_coef, span), B::view(&self.entropy, span)));
        be.logprob_bwd(
            B::view_mut(&mut self.logits, z),
            B::idx_view(&self.targets, span),
            v,
            inv_t,
            B::view(&self.lse, span),
            B::view(&self.coef, span),
            ent,
        );
        let ms = MatShape { m: rows, n: v, k: d };
        be.matmul_dx(ms, B::view(&self.logits, z), w, B::view_mut(dh, hs), false);
        be.matmul_dw(ms, B::view(&self.logits, z), B::view(h, hs), B::view_mut(grads, dw));
    }

    /// Host coefficients into `coef` (and `ent_coef`); whether the loss has
    /// an entropy term.
    fn put_coefs(&mut self, be: &B, coefs: &TokenCoefs, n: usize) -> bool {
        assert_eq!(coefs.logp.len(), n, "lm_head: one coefficient per token");
        be.write(&coefs.logp, B::view_mut(&mut self.coef, Span::new(0, n)));
        if let Some(e) = &coefs.entropy {
            assert_eq!(e.len(), n, "lm_head: one entropy coefficient per token");
            be.write(e, B::view_mut(&mut self.ent_coef, Span::new(0, n)));
        }
        coefs.entropy.is_some()
    }

    /// The targets of a forward of `n` tokens, checked against the capacity.
    fn put_targets(&mut self, be: &B, targets: &[u32], n: usize, what: &str) {
        assert!(
            n <= self.cap && targets.len() == n,
            "{what}: {} targets for {n} tokens (capacity {})",
            targets.len(),
            self.cap
        );
        be.write_idx(targets, &mut self.targets);
    }
}

/// Phase 1: `logp`, `lse` (and the entropy) of `targets` under `softmax(h·Wᵀ / T)`.
#[allow(clippy::too_many_arguments)]
pub fn phase1<B: Backend>(
    be: &B,
    hb: &mut HeadBuffers<B>,
    s: HeadShape,
    h: &B::Buf,
    w: B::Ref<'_>,
    targets: &[u32],
    temperature: f32,
    entropy: bool,
) {
    let n = s.n;
    hb.put_targets(be, targets, n, "head phase 1");
    hb.logits_hold_all = n <= hb.chunk;
    hb.has_entropy = entropy;
    for (r0, rows) in chunks(n, hb.chunk) {
        hb.chunk_logits(be, s, h, w, r0, rows);
        hb.chunk_logprobs(be, s.v, r0, rows, 1.0 / temperature, entropy);
    }
}

/// Where phase 2 finds the loss's per-token coefficients.
#[derive(Clone, Copy, Debug)]
pub enum Coefs<'a> {
    /// On the host: written into the head buffers first.
    Host(&'a TokenCoefs),
    /// Already in the head buffers' `coef` (and, with `entropy`, `ent_coef`),
    /// as [`Backend::policy_loss`] leaves them.
    InBuffers { entropy: bool },
}

impl<'a> From<&'a TokenCoefs> for Coefs<'a> {
    fn from(c: &'a TokenCoefs) -> Self {
        Coefs::Host(c)
    }
}

/// Phase 2: with the loss's coefficients for phase 1's targets, writes
/// `dh = dz · W` (overwriting the first `n` rows of `dh`) and accumulates
/// `dW += dzᵀ · h` into `grads[dw]`. An entropy coefficient needs phase 1
/// to have computed the entropy.
#[allow(clippy::too_many_arguments)]
pub fn phase2<'c, B: Backend>(
    be: &B,
    hb: &mut HeadBuffers<B>,
    s: HeadShape,
    h: &B::Buf,
    w: B::Ref<'_>,
    coefs: impl Into<Coefs<'c>>,
    temperature: f32,
    dh: &mut B::Buf,
    grads: &mut B::Buf,
    dw: Span,
) {
    let with_entropy = match coefs.into() {
        Coefs::Host(coefs) => hb.put_coefs(be, coefs, s.n),
        Coefs::InBuffers { entropy } => entropy,
    };
    assert!(!with_entropy || hb.has_entropy, "head phase 2: an entropy term needs phase 1 run with entropy");
    for (r0, rows) in chunks(s.n, hb.chunk) {
        if !hb.logits_hold_all {
            hb.chunk_logits(be, s, h, w, r0, rows);
        }
        hb.chunk_grads(be, s, (h, w), (r0, rows), 1.0 / temperature, with_entropy, dh, grads, dw);
    }
    // The buffer now holds dz, not logits.
    hb.logits_hold_all = false;
}

/// Phases 1 and 2 in one pass, for a token-local loss whose coefficients are
/// known before the log-probabilities (SFT's cross-entropy: `−1/n` per
/// target): per chunk, the logits, `logp` and `lse` (and the entropy), the
/// gradient in place, `dh` and `dW` — the logits are computed once, where the
/// two phases compute them twice when the batch takes more than one chunk.
/// The same kernels on the same inputs as [`phase1`] then [`phase2`], so the
/// same numbers; `hb.logp` holds the log-probabilities afterwards (for the
/// loss's value).
#[allow(clippy::too_many_arguments)]
pub fn one_pass<B: Backend>(
    be: &B,
    hb: &mut HeadBuffers<B>,
    s: HeadShape,
    h: &B::Buf,
    w: B::Ref<'_>,
    targets: &[u32],
    coefs: &TokenCoefs,
    temperature: f32,
    dh: &mut B::Buf,
    grads: &mut B::Buf,
    dw: Span,
) {
    hb.put_targets(be, targets, s.n, "head one pass");
    let entropy = hb.put_coefs(be, coefs, s.n);
    chunk_passes(be, hb, s, (h, w), temperature, entropy, |_, _, _| {}, (dh, grads, dw));
}

/// [`one_pass`] for a token-local loss whose coefficients need the
/// log-probabilities (the policy losses but GSPO, whose ratio is a
/// sequence's): after each chunk's `logp`, `lse` (and entropy, if
/// `entropy`), `coefs(be, hb, end)` must leave in `hb.coef` (and, with
/// `entropy`, `hb.ent_coef`) the coefficients of at least the tokens before
/// `end`, whose log-probabilities are final by then; the gradient of the
/// chunk follows. A coefficient pass over the whole batch is fine (the
/// tokens past `end` get values from stale log-probabilities that no chunk
/// reads), and its last call sees every token's. The numbers are the two
/// phases' when the coefficients are: the logits are computed once.
#[allow(clippy::too_many_arguments)]
pub fn one_pass_with<B: Backend>(
    be: &B,
    hb: &mut HeadBuffers<B>,
    s: HeadShape,
    h: &B::Buf,
    w: B::Ref<'_>,
    targets: &[u32],
    temperature: f32,
    entropy: bool,
    coefs: impl FnMut(&B, &mut HeadBuffers<B>, usize),
    dh: &mut B::Buf,
    grads: &mut B::Buf,
    dw: Span,
) {
    hb.put_targets(be, targets, s.n, "head one pass");
    chunk_passes(be, hb, s, (h, w), temperature, entropy, coefs, (dh, grads, dw));
}

/// The chunks of [`one_pass`] and [`one_pass_with`]: logits, log-probs,
/// `coefs(be, hb, end of the chunk)`, gradient, `dh` and `dW`.
#[allow(clippy::too_many_arguments)]
fn chunk_passes<B: Backend>(
    be: &B,
    hb: &mut HeadBuffers<B>,
    s: HeadShape,
    (h, w): (&B::Buf, B::Ref<'_>),
    temperature: f32,
    entropy: bool,
    mut coefs: impl FnMut(&B, &mut HeadBuffers<B>, usize),
    (dh, grads, dw): (&mut B::Buf, &mut B::Buf, Span),
) {
    hb.has_entropy = entropy;
    let inv_t = 1.0 / temperature;
    for (r0, rows) in chunks(s.n, hb.chunk) {
        hb.chunk_logits(be, s, h, w, r0, rows);
        hb.chunk_logprobs(be, s.v, r0, rows, inv_t, entropy);
        coefs(be, hb, r0 + rows);
        hb.chunk_grads(be, s, (h, w), (r0, rows), inv_t, entropy, dh, grads, dw);
    }
    hb.logits_hold_all = false;
}

/// A teacher's side of distillation: its final hidden states and lm_head.
pub struct Teacher<'a, B: Backend> {
    pub h: &'a B::Buf,
    pub w: B::Ref<'a>,
    pub d: usize,
}

/// Distillation in one pass: per chunk, the student's and the teacher's
/// logits, the divergence per token into `loss` (host, per token), the
/// gradient (times `weight[t]`, e.g. mask × aggregation weight) in place,
/// then `dh` and `dW` as in [`phase2`]. `teacher_logits` is a `[chunk, v]`
/// buffer. Returns `Σ_t weight_t · D_t`.
#[allow(clippy::too_many_arguments)]
pub fn distill<B: Backend>(
    be: &B,
    hb: &mut HeadBuffers<B>,
    s: HeadShape,
    h: &B::Buf,
    w: B::Ref<'_>,
    teacher: &Teacher<B>,
    teacher_logits: &mut B::Buf,
    mode: DistillMode,
    temperature: f32,
    weight: &[f32],
    dh: &mut B::Buf,
    grads: &mut B::Buf,
    dw: Span,
) -> f64 {
    let HeadShape { n, d, v } = s;
    assert!(n <= hb.cap && weight.len() == n, "distill: one weight per token");
    be.write(weight, B::view_mut(&mut hb.coef, Span::new(0, n)));
    let ms = |rows, d| MatShape { m: rows, n: v, k: d };
    for (r0, rows) in chunks(n, hb.chunk) {
        let (z, span) = (Span::new(0, rows * v), Span::new(r0, rows));
        let (hs, ht) = (Span::new(r0 * d, rows * d), Span::new(r0 * teacher.d, rows * teacher.d));
        be.matmul(ms(rows, d), B::view(h, hs), w, None, B::view_mut(&mut hb.logits, z), false);
        be.matmul(ms(rows, teacher.d), B::view(teacher.h, ht), teacher.w, None, B::view_mut(teacher_logits, z), false);
        be.distill(
            B::view_mut(&mut hb.logits, z),
            B::view(teacher_logits, z),
            v,
            mode,
            1.0 / temperature,
            B::view(&hb.coef, span),
            B::view_mut(&mut hb.logp, span),
        );
        be.matmul_dx(ms(rows, d), B::view(&hb.logits, z), w, B::view_mut(dh, hs), false);
        be.matmul_dw(ms(rows, d), B::view(&hb.logits, z), B::view(h, hs), B::view_mut(grads, dw));
    }
    hb.logits_hold_all = false;
    let per_token = be.read(B::view(&hb.logp, Span::new(0, n)));
    per_token.iter().zip(weight).map(|(&l, &w)| l as f64 * w as f64).sum()
}
