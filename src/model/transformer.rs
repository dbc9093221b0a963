//! The decoder: explicit forward and backward, layer by layer, written once
//! against the [`Backend`] trait. Each step of the backward sits in the same
//! order as the forward it undoes, read bottom-up.

use super::activations::{Activations, GradScratch, LayerActs};
use super::head::{self, HeadShape};
use super::kv_cache::KvCache;
use super::Model;
use crate::backend::{AttnShape, Backend, MatShape, QkNorm, QkvShape, RopeAt, Span};
use crate::data::Batch;
use crate::loss::TokenCoefs;
use crate::rollout::{Draw, Sampled, SamplingParams};
use anyhow::{bail, Result};

/// The first `len` elements of a buffer.
fn pr<B: Backend>(b: &B::Buf, len: usize) -> B::Ref<'_> {
    B::view(b, Span::new(0, len))
}
fn pm<B: Backend>(b: &mut B::Buf, len: usize) -> B::Mut<'_> {
    B::view_mut(b, Span::new(0, len))
}
fn ms(m: usize, n: usize, k: usize) -> MatShape {
    MatShape { m, n, k }
}

/// What a layer's forward and backward read besides its own buffers.
struct Ctx<'a, B: Backend> {
    n: usize,
    pos: B::IdxRef<'a>,
    /// Packed sequences (training, scoring, prefill); unused in decode.
    cu: B::IdxRef<'a>,
    cos: B::Ref<'a>,
    sin: B::Ref<'a>,
}

impl<'a, B: Backend> Ctx<'a, B> {
    fn rope(&self) -> RopeAt<'a, B> {
        RopeAt { pos: self.pos, cos: self.cos, sin: self.sin }
    }
}

/// A layer's residual stream: in training, its input (kept for the
/// backward) and a separate output; otherwise one buffer updated in place
/// (`x += attention`, `x += MLP`: the same bf16 sums as through a copy, two
/// copies and their launches fewer per layer).
enum Resid<'a, B: Backend> {
    Kept { x_in: &'a B::Buf, x_out: &'a mut B::Buf },
    InPlace(&'a mut B::Buf),
}

/// How the layers attend, and whether they fill a KV cache.
pub enum Attend<'a, B: Backend> {
    /// Causal attention within the batch's packed sequences.
    Packed,
    /// As `Packed`, and each layer's keys and values are written into the
    /// cache as staged by [`KvCache::plan_writes`] (prefill).
    PackedFill(&'a mut KvCache<B>),
    /// One token per sequence against the cache, as staged by
    /// [`KvCache::plan_decode`].
    Decode(&'a mut KvCache<B>),
}

impl<B: Backend> Model<B> {
    pub fn attn_shape(&self) -> AttnShape {
        let c = &self.cfg;
        AttnShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            scale: 1.0 / (c.head_dim as f32).sqrt(),
        }
    }

    /// The heads of the fused q/k/v product's rows.
    pub fn qkv_shape(&self) -> QkvShape {
        QkvShape { q: self.cfg.n_heads, kv: self.cfg.n_kv_heads, head_dim: self.cfg.head_dim }
    }

    fn w(&self, s: Span) -> B::Ref<'_> {
        B::view(&self.params, s)
    }

    /// Checks a batch against the model and the arena.
    pub fn check_batch(&self, acts: &Activations<B>, batch: &Batch) -> Result<()> {
        if batch.is_empty() {
            bail!("empty batch");
        }
        if batch.len() > acts.cap {
            bail!("batch of {} tokens exceeds the arena's capacity of {}", batch.len(), acts.cap);
        }
        let v = self.cfg.vocab_size;
        if let Some(&t) = batch.tokens.iter().find(|&&t| t as usize >= v) {
            bail!("token id {t} outside the vocabulary ({v})");
        }
        Ok(())
    }

    /// Loads `batch` into the arena and runs the decoder; the final
    /// normalised hidden states end in `acts.h`.
    pub fn forward(&self, be: &B, acts: &mut Activations<B>, batch: &Batch) -> Result<()> {
        self.forward_with(be, acts, batch, Attend::Packed)
    }

    /// [`Self::forward`] with a choice of attention (see [`Attend`]). For
    /// `Decode`, each "sequence" of the batch is one new token and its
    /// position is that of the token in its own sequence.
    pub fn forward_with(&self, be: &B, acts: &mut Activations<B>, batch: &Batch, attend: Attend<B>) -> Result<()> {
        self.stage(be, acts, batch)?;
        self.forward_staged(be, acts, attend);
        Ok(())
    }

    /// The host's half of [`Self::forward_with`]: checks `batch` and writes
    /// its tokens, positions and sequence bounds into the arena.
    pub fn stage(&self, be: &B, acts: &mut Activations<B>, batch: &Batch) -> Result<()> {
        self.check_batch(acts, batch)?;
        let max_pos = B::len(&acts.rope_cos) / (self.cfg.head_dim / 2);
        if let Some(&p) = batch.positions.iter().find(|&&p| p as usize >= max_pos) {
            bail!("position {p} beyond the arena's RoPE table ({max_pos} positions)");
        }
        acts.n = batch.len();
        acts.n_seqs = batch.n_seqs();
        acts.head.logits_hold_all = false;
        be.write_idx(&batch.tokens, &mut acts.ids);
        be.write_idx(&batch.positions, &mut acts.pos);
        be.write_idx(&batch.cu_seqlens, &mut acts.cu_seqlens);
        Ok(())
    }

    /// The device's half of [`Self::forward_with`], on the batch last
    /// [`staged`](Self::stage): launches only, so a decode step can be
    /// captured as a graph ([`Backend::capture`]).
    pub fn forward_staged(&self, be: &B, acts: &mut Activations<B>, mut attend: Attend<B>) {
        let (n, d) = (acts.n, self.cfg.hidden_size);
        let Activations {
            ids, pos, cu_seqlens, rope_cos, rope_sin, resid, layers, h, rstd_f, qkv, train, n_seqs, ..
        } = acts;
        let ctx = Ctx::<B> {
            n,
            pos: B::idx_view(pos, Span::new(0, n)),
            cu: B::idx_view(cu_seqlens, Span::new(0, *n_seqs + 1)),
            cos: B::view(rope_cos, Span::new(0, B::len(rope_cos))),
            sin: B::view(rope_sin, Span::new(0, B::len(rope_sin))),
        };
        be.embedding_fwd(
            self.w(self.layout.embed),
            B::idx_view(ids, Span::new(0, n)),
            d,
            pm::<B>(&mut resid[0], n * d),
        );
        for l in 0..self.cfg.n_layers {
            if *train {
                let (a, b) = resid.split_at_mut(l + 1);
                let x = Resid::Kept { x_in: &a[l], x_out: &mut b[0] };
                self.layer_fwd(be, l, &ctx, x, &mut layers[l], qkv, &mut attend);
            } else {
                self.layer_fwd(be, l, &ctx, Resid::InPlace(&mut resid[0]), &mut layers[0], qkv, &mut attend);
            }
        }
        let last = if *train { self.cfg.n_layers } else { 0 };
        be.rmsnorm_fwd(
            pr::<B>(&resid[last], n * d),
            self.w(self.layout.final_norm),
            d,
            self.cfg.rms_norm_eps,
            pm::<B>(h, n * d),
            pm::<B>(rstd_f, n),
        );
    }

    /// Samples one token for each `(row, draw)`: the logits of token row
    /// `row` of the last forward (e.g. a sequence's last position), drawn
    /// with `draw` by the backend, chunk by chunk of the lm_head (a row may
    /// appear more than once: a prompt's samples share its last row).
    pub fn sample_rows(
        &self,
        be: &B,
        acts: &mut Activations<B>,
        rows: &[(u32, Draw)],
        params: &SamplingParams,
    ) -> Vec<Sampled> {
        let (d, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        assert!(rows.iter().all(|&(r, _)| (r as usize) < acts.n), "sample_rows: row outside the last batch");
        let mut out = Vec::with_capacity(rows.len());
        for part in rows.chunks(acts.head.chunk) {
            let m = part.len();
            let src: Vec<u32> = part.iter().map(|&(r, _)| r).collect();
            let dst: Vec<u32> = (0..m as u32).collect();
            be.write_idx(&src, &mut acts.gather_src);
            be.write_idx(&dst, &mut acts.gather_dst);
            // The residual buffers are free once the forward is done.
            let gathered = &mut acts.resid[0];
            be.copy_rows(
                pr::<B>(&acts.h, acts.n * d),
                pm::<B>(gathered, m * d),
                d,
                B::idx_view(&acts.gather_src, Span::new(0, m)),
                B::idx_view(&acts.gather_dst, Span::new(0, m)),
            );
            let z = Span::new(0, m * v);
            be.matmul(
                ms(m, v, d),
                pr::<B>(gathered, m * d),
                self.w(self.layout.lm_head),
                None,
                B::view_mut(&mut acts.head.logits, z),
                false,
            );
            let draws: Vec<Draw> = part.iter().map(|&(_, d)| d).collect();
            out.extend(be.sample(B::view(&acts.head.logits, z), v, params, &draws));
        }
        acts.head.logits_hold_all = false;
        out
    }

    /// [`Self::sample_rows`] for token rows `0..rows` of the last forward
    /// (a decode step: one row per sequence), in the two parts a graph-replayed
    /// step needs. This one launches only (capturable): the lm_head's logits
    /// of those rows, and the backend's sampling of them with the draws it
    /// was given by [`Backend::sample_stage`].
    pub fn sample_first_launch(&self, be: &B, acts: &mut Activations<B>, rows: usize, params: &SamplingParams) {
        let (d, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        assert!(rows <= acts.n && rows <= acts.head.chunk, "sample_first_launch: {rows} rows");
        let z = Span::new(0, rows * v);
        be.matmul(
            ms(rows, v, d),
            pr::<B>(&acts.h, rows * d),
            self.w(self.layout.lm_head),
            None,
            B::view_mut(&mut acts.head.logits, z),
            false,
        );
        be.sample_launch(B::view(&acts.head.logits, z), v, params, rows);
    }

    /// The second part: the sampled tokens of the first `draws.len()` rows
    /// (`draws` as staged; where the backend samples on the host, it does so
    /// here, from the logits the first part left).
    pub fn sample_first_collect(
        &self,
        be: &B,
        acts: &mut Activations<B>,
        draws: &[Draw],
        params: &SamplingParams,
    ) -> Vec<Sampled> {
        let v = self.cfg.vocab_size;
        acts.head.logits_hold_all = false;
        be.sample_collect(B::view(&acts.head.logits, Span::new(0, draws.len() * v)), v, params, draws)
    }

    /// One layer's forward; `qkv` is scratch for the fused q/k/v product.
    #[allow(clippy::too_many_arguments)]
    fn layer_fwd(
        &self,
        be: &B,
        l: usize,
        c: &Ctx<B>,
        mut x: Resid<B>,
        a: &mut LayerActs<B>,
        qkv: &mut B::Buf,
        attend: &mut Attend<B>,
    ) {
        let cfg = &self.cfg;
        let p = &self.layout.layers[l];
        let (n, d, q, kv, i) = (c.n, cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
        let eps = cfg.rms_norm_eps;
        let x_in = match &x {
            Resid::Kept { x_in, .. } => pr::<B>(x_in, n * d),
            Resid::InPlace(x) => pr::<B>(x, n * d),
        };

        // Attention block: x2 = x + Attn(RMSNorm(x)) · Woᵀ.
        be.rmsnorm_fwd(x_in, self.w(p.input_norm), d, eps, pm::<B>(&mut a.ln1, n * d), pm::<B>(&mut a.rstd1, n));
        let ln1 = pr::<B>(&a.ln1, n * d);
        // q, k and v by one product, then moved into their own tensors, q
        // and k normalised (Qwen3) and rotated on the way.
        let qs = self.qkv_shape();
        let w = (self.w(p.qkv_w()), p.qkv_b().map(|s| self.w(s)));
        be.matmul(ms(n, qs.row(), d), ln1, w.0, w.1, pm::<B>(qkv, n * qs.row()), false);
        let fused = pr::<B>(qkv, n * qs.row());
        let norm = p.q_norm.zip(p.k_norm).map(|(qn, kn)| QkNorm { q_w: self.w(qn), k_w: self.w(kn), eps });
        // Training Qwen3 keeps q and k before their norms for the backward.
        let kept = matches!(x, Resid::Kept { .. }) && norm.is_some();
        match attend {
            _ if kept => self.qk_norm_kept(be, l, c, fused, a),
            // A decode step writes its keys and values straight into the cache.
            Attend::Decode(cache) => {
                let (kc, vc, rows) = cache.decode_rows(l);
                be.qkv_split(fused, qs, pm::<B>(&mut a.q, n * q), kc, vc, norm, Some(c.rope()), Some(rows));
            }
            _ => {
                let (qd, kd, vd) = (pm::<B>(&mut a.q, n * q), pm::<B>(&mut a.k, n * kv), pm::<B>(&mut a.v, n * kv));
                be.qkv_split(fused, qs, qd, kd, vd, norm, Some(c.rope()), None);
            }
        }
        // The cache from k and v, where the split did not write it.
        match attend {
            Attend::PackedFill(cache) => cache.write_layer(be, l, pr::<B>(&a.k, n * kv), pr::<B>(&a.v, n * kv)),
            Attend::Decode(cache) if kept => cache.write_layer(be, l, pr::<B>(&a.k, n * kv), pr::<B>(&a.v, n * kv)),
            _ => {}
        }
        match attend {
            Attend::Packed | Attend::PackedFill(_) => be.attention_fwd(
                &self.attn_shape(),
                c.cu,
                pr::<B>(&a.q, n * q),
                pr::<B>(&a.k, n * kv),
                pr::<B>(&a.v, n * kv),
                pm::<B>(&mut a.att, n * q),
                pm::<B>(&mut a.lse, n * cfg.n_heads),
            ),
            Attend::Decode(cache) => {
                be.attention_decode(
                    &self.attn_shape(),
                    cache.decode_plan(),
                    pr::<B>(&a.q, n * q),
                    pr::<B>(&cache.k[l], B::len(&cache.k[l])),
                    pr::<B>(&cache.v[l], B::len(&cache.v[l])),
                    pm::<B>(&mut a.att, n * q),
                );
            }
        }
        let x2 = match &mut x {
            Resid::Kept { x_in, .. } => {
                be.copy(pr::<B>(x_in, n * d), pm::<B>(&mut a.x2, n * d));
                &mut a.x2
            }
            Resid::InPlace(x) => &mut **x,
        };
        be.matmul(ms(n, d, q), pr::<B>(&a.att, n * q), self.w(p.o_w), None, pm::<B>(x2, n * d), true);

        // MLP block: out = x2 + (silu(ln2·Wgᵀ) ∘ ln2·Wuᵀ) · Wdᵀ.
        let x2 = pr::<B>(x2, n * d);
        be.rmsnorm_fwd(x2, self.w(p.post_norm), d, eps, pm::<B>(&mut a.ln2, n * d), pm::<B>(&mut a.rstd2, n));
        let ln2 = pr::<B>(&a.ln2, n * d);
        // gate and up in one product: [n, 2i], gate then up in each row.
        be.matmul(ms(n, 2 * i, d), ln2, self.w(p.gate_up_w()), None, pm::<B>(&mut a.gu, 2 * n * i), false);
        be.swiglu_fwd(pr::<B>(&a.gu, 2 * n * i), i, pm::<B>(&mut a.act, n * i));
        let out = match x {
            Resid::Kept { x_out, .. } => {
                be.copy(pr::<B>(&a.x2, n * d), pm::<B>(x_out, n * d));
                x_out
            }
            Resid::InPlace(x) => x,
        };
        be.matmul(ms(n, d, i), pr::<B>(&a.act, n * i), self.w(p.down_w), None, pm::<B>(out, n * d), true);
    }

    /// Training Qwen3's split: the fused q/k/v rows moved into the layer's
    /// q and k before their norms (kept for the backward) and v, then the
    /// per-head norms (their rstd kept too) and RoPE.
    fn qk_norm_kept(&self, be: &B, l: usize, c: &Ctx<B>, fused: B::Ref<'_>, a: &mut LayerActs<B>) {
        let cfg = &self.cfg;
        let p = &self.layout.layers[l];
        let (n, q, kv, hd, eps) = (c.n, cfg.q_dim(), cfg.kv_dim(), cfg.head_dim, cfg.rms_norm_eps);
        let (qd, kd, vd) = (pm::<B>(&mut a.q_pre, n * q), pm::<B>(&mut a.k_pre, n * kv), pm::<B>(&mut a.v, n * kv));
        be.qkv_split(fused, self.qkv_shape(), qd, kd, vd, None, None, None);
        let (qn, kn) = (p.q_norm.expect("Qwen3's q_norm"), p.k_norm.expect("Qwen3's k_norm"));
        // RMSNorm over each head's vector, before RoPE.
        let (hq, hk) = (n * cfg.n_heads, n * cfg.n_kv_heads);
        be.rmsnorm_fwd(
            pr::<B>(&a.q_pre, n * q),
            self.w(qn),
            hd,
            eps,
            pm::<B>(&mut a.q, n * q),
            pm::<B>(&mut a.rstd_q, hq),
        );
        be.rmsnorm_fwd(
            pr::<B>(&a.k_pre, n * kv),
            self.w(kn),
            hd,
            eps,
            pm::<B>(&mut a.k, n * kv),
            pm::<B>(&mut a.rstd_k, hk),
        );
        let (qh, kh) = (cfg.n_heads, cfg.n_kv_heads);
        be.rope_qk(pm::<B>(&mut a.q, n * q), qh, pm::<B>(&mut a.k, n * kv), kh, c.pos, hd, c.cos, c.sin, false);
    }

    /// Phase 1 of the lm_head + loss (DESIGN.md §3, [`head::phase1`]):
    /// `logp`, `lse` (and the entropy if asked) of `targets` at temperature
    /// `t`, in `acts.head`.
    pub fn head_fwd(&self, be: &B, acts: &mut Activations<B>, targets: &[u32], t: f32, entropy: bool) {
        let s = HeadShape { n: acts.n, d: self.cfg.hidden_size, v: self.cfg.vocab_size };
        head::phase1(be, &mut acts.head, s, &acts.h, self.w(self.layout.lm_head), targets, t, entropy);
    }

    /// Phase 2 and the whole backward: with the loss's coefficients for the
    /// targets given to [`Self::head_fwd`], recomputes each logit chunk,
    /// turns it into dz in place, and back-propagates to every parameter,
    /// accumulating into `grads` (laid out as `self.layout`).
    pub fn backward(&self, be: &B, acts: &mut Activations<B>, coefs: &TokenCoefs, t: f32, grads: &mut B::Buf) {
        self.backward_from(be, acts, coefs.into(), t, grads);
    }

    /// [`Self::backward`] with the coefficients wherever they are: on the
    /// host, or already in the head buffers (`acts.head.coef`, and
    /// `ent_coef` with an entropy term) where [`Backend::policy_loss`] wrote
    /// them on the device.
    pub fn backward_from(&self, be: &B, acts: &mut Activations<B>, coefs: head::Coefs<'_>, t: f32, grads: &mut B::Buf) {
        self.backward_with_head(be, acts, grads, |be, hb, s, h, w, dh, grads, dw| {
            head::phase2(be, hb, s, h, w, coefs, t, dh, grads, dw)
        });
    }

    /// The backward with the lm_head + loss part supplied by the caller:
    /// `head_bwd(be, head buffers, shape, h, W_lm, dh, grads, dW span)` must
    /// write `dh` (the gradient of the final hidden states) and accumulate
    /// the lm_head's weight gradient; the rest of the model follows.
    /// (Distillation uses it with its one-pass head.)
    pub fn backward_with_head<F>(&self, be: &B, acts: &mut Activations<B>, grads: &mut B::Buf, head_bwd: F)
    where
        F: FnOnce(&B, &mut head::HeadBuffers<B>, HeadShape, &B::Buf, B::Ref<'_>, &mut B::Buf, &mut B::Buf, Span),
    {
        let cfg = &self.cfg;
        let (n, d) = (acts.n, cfg.hidden_size);
        assert!(acts.train, "backward needs an arena built for training");
        assert_eq!(B::len(grads), self.layout.total, "backward: gradient buffer does not match the layout");
        let Activations {
            ids,
            pos,
            cu_seqlens,
            rope_cos,
            rope_sin,
            resid,
            layers,
            h,
            rstd_f,
            qkv,
            head,
            grad,
            n_seqs,
            ..
        } = acts;
        let g = grad.as_mut().expect("training arena has gradient scratch");
        let s = HeadShape { n, d, v: cfg.vocab_size };
        let w_lm = self.w(self.layout.lm_head);
        head_bwd(be, head, s, h, w_lm, &mut g.d_ln, grads, self.layout.lm_head);
        be.fill(pm::<B>(&mut g.d_resid, n * d), 0.0);
        be.rmsnorm_bwd(
            pr::<B>(&g.d_ln, n * d),
            pr::<B>(&resid[cfg.n_layers], n * d),
            self.w(self.layout.final_norm),
            pr::<B>(rstd_f, n),
            d,
            pm::<B>(&mut g.d_resid, n * d),
            B::view_mut(grads, self.layout.final_norm),
        );
        let ctx = Ctx::<B> {
            n,
            pos: B::idx_view(pos, Span::new(0, n)),
            cu: B::idx_view(cu_seqlens, Span::new(0, *n_seqs + 1)),
            cos: B::view(rope_cos, Span::new(0, B::len(rope_cos))),
            sin: B::view(rope_sin, Span::new(0, B::len(rope_sin))),
        };
        for l in (0..cfg.n_layers).rev() {
            self.layer_bwd(be, l, &ctx, &resid[l], &layers[l], g, qkv, grads);
        }
        be.embedding_bwd(
            pr::<B>(&g.d_resid, n * d),
            B::idx_view(ids, Span::new(0, n)),
            d,
            B::view_mut(grads, self.layout.embed),
        );
    }

    /// Backward of `y = x · Wᵀ (+ b)`, `s = (rows, out, in)`: `dW += dyᵀ · x`,
    /// `db += Σ_rows dy`, and `dx = dy · W` (`+=` with `accumulate`).
    #[allow(clippy::too_many_arguments)]
    fn linear_bwd(
        &self,
        be: &B,
        s: MatShape,
        dy: B::Ref<'_>,
        x: B::Ref<'_>,
        w: Span,
        b: Option<Span>,
        grads: &mut B::Buf,
        dx: B::Mut<'_>,
        accumulate: bool,
    ) {
        be.matmul_dw(s, dy, x, B::view_mut(grads, w));
        if let Some(b) = b {
            be.bias_grad(dy, B::view_mut(grads, b));
        }
        be.matmul_dx(s, dy, self.w(w), dx, accumulate);
    }

    /// On entry `g.d_resid` holds ∂L/∂(layer output); on exit ∂L/∂(layer input).
    /// `d_qkv` is scratch for the fused q/k/v rows' gradient.
    #[allow(clippy::too_many_arguments)]
    fn layer_bwd(
        &self,
        be: &B,
        l: usize,
        c: &Ctx<B>,
        x_in: &B::Buf,
        a: &LayerActs<B>,
        g: &mut GradScratch<B>,
        d_qkv: &mut B::Buf,
        grads: &mut B::Buf,
    ) {
        let cfg = &self.cfg;
        let p = &self.layout.layers[l];
        let (n, d, q, kv, i, hd) =
            (c.n, cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size, cfg.head_dim);

        // MLP: out = x2 + act · Wdᵀ.
        let dout = pr::<B>(&g.d_resid, n * d);
        let d_act = pm::<B>(&mut g.d_act, n * i);
        self.linear_bwd(be, ms(n, d, i), dout, pr::<B>(&a.act, n * i), p.down_w, None, grads, d_act, false);
        be.swiglu_bwd(pr::<B>(&g.d_act, n * i), pr::<B>(&a.gu, 2 * n * i), i, pm::<B>(&mut g.d_gu, 2 * n * i));
        // gate and up in one product's backward: d_ln = dgu · W_gu, dW_gu += dguᵀ · ln2.
        let (ln2, d_gu, d_ln) = (pr::<B>(&a.ln2, n * d), pr::<B>(&g.d_gu, 2 * n * i), pm::<B>(&mut g.d_ln, n * d));
        self.linear_bwd(be, ms(n, 2 * i, d), d_gu, ln2, p.gate_up_w(), None, grads, d_ln, false);
        be.rmsnorm_bwd(
            pr::<B>(&g.d_ln, n * d),
            pr::<B>(&a.x2, n * d),
            self.w(p.post_norm),
            pr::<B>(&a.rstd2, n),
            d,
            pm::<B>(&mut g.d_resid, n * d),
            B::view_mut(grads, p.post_norm),
        );

        // Attention: x2 = x + att · Woᵀ.
        let (dx2, d_att) = (pr::<B>(&g.d_resid, n * d), pm::<B>(&mut g.d_att, n * q));
        self.linear_bwd(be, ms(n, d, q), dx2, pr::<B>(&a.att, n * q), p.o_w, None, grads, d_att, false);
        be.attention_bwd(
            &self.attn_shape(),
            c.cu,
            pr::<B>(&a.q, n * q),
            pr::<B>(&a.k, n * kv),
            pr::<B>(&a.v, n * kv),
            pr::<B>(&a.att, n * q),
            pr::<B>(&a.lse, n * cfg.n_heads),
            pr::<B>(&g.d_att, n * q),
            pm::<B>(&mut g.dq, n * q),
            pm::<B>(&mut g.dk, n * kv),
            pm::<B>(&mut g.dv, n * kv),
        );
        if let (Some(qn), Some(kn)) = (p.q_norm, p.k_norm) {
            let (qh, kh) = (cfg.n_heads, cfg.n_kv_heads);
            be.rope_qk(pm::<B>(&mut g.dq, n * q), qh, pm::<B>(&mut g.dk, n * kv), kh, c.pos, hd, c.cos, c.sin, true);
            // Qwen3's per-head norms: rows are (token, head) vectors of head_dim.
            for (dy, x, w, rstd, width, dx) in [
                (&g.dq, &a.q_pre, qn, &a.rstd_q, q, &mut g.dq_pre),
                (&g.dk, &a.k_pre, kn, &a.rstd_k, kv, &mut g.dk_pre),
            ] {
                be.fill(pm::<B>(dx, n * width), 0.0);
                let (dy, x, rstd) = (pr::<B>(dy, n * width), pr::<B>(x, n * width), pr::<B>(rstd, n * width / hd));
                be.rmsnorm_bwd(dy, x, self.w(w), rstd, hd, pm::<B>(dx, n * width), B::view_mut(grads, w));
            }
        }
        // dq, dk (rotated back, unless Qwen3's norms came between) and dv as
        // the fused product's rows, then that product's backward.
        let (dq, dk) = if cfg.qk_norm { (&g.dq_pre, &g.dk_pre) } else { (&g.dq, &g.dk) };
        let (qs, rope) = (self.qkv_shape(), (!cfg.qk_norm).then(|| c.rope()));
        let (dq, dk, dv) = (pr::<B>(dq, n * q), pr::<B>(dk, n * kv), pr::<B>(&g.dv, n * kv));
        be.qkv_join(dq, dk, dv, qs, pm::<B>(d_qkv, n * qs.row()), rope);
        let (d_qkv, ln1, d_ln) = (pr::<B>(d_qkv, n * qs.row()), pr::<B>(&a.ln1, n * d), pm::<B>(&mut g.d_ln, n * d));
        self.linear_bwd(be, ms(n, qs.row(), d), d_qkv, ln1, p.qkv_w(), p.qkv_b(), grads, d_ln, false);
        be.rmsnorm_bwd(
            pr::<B>(&g.d_ln, n * d),
            pr::<B>(x_in, n * d),
            self.w(p.input_norm),
            pr::<B>(&a.rstd1, n),
            d,
            pm::<B>(&mut g.d_resid, n * d),
            B::view_mut(grads, p.input_norm),
        );
    }
}
