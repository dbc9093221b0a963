//! The op set every backend implements.
//!
//! One trait, two implementations: `cpu` (f32, the reference and the oracle
//! for the GPU) and, with the `cuda` feature, the CUDA backend (issue 6).
//! The model code (`crate::model`) is written once against this trait, with
//! explicit forward and backward passes, so a backend only supplies kernels.
//!
//! Conventions shared by every op:
//! - buffers are flat, row-major; shapes are passed explicitly and checked;
//! - an op whose output is a gradient *accumulates* (`+=`) when it says so
//!   in its name or docs, otherwise it overwrites;
//! - index buffers (`Idx`) hold `u32`: token ids, positions, `cu_seqlens`,
//!   targets (with [`IGNORE`] for "no target here");
//! - every reduction runs in a fixed order that does not depend on the
//!   number of threads (DESIGN.md §6), so results are bitwise reproducible.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod decode_plan;

pub use decode_plan::DecodeSeq;

/// Target id meaning "this position has no target" (masked / end of sequence).
pub const IGNORE: u32 = u32::MAX;

/// Geometry of one attention call; query head `h` reads kv head
/// `h / (n_heads / n_kv_heads)`; scores are scaled by `scale`.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
}

/// The heads of one fused q/k/v product's rows: `[tokens, (q + 2·kv)·head_dim]`,
/// q's `q` heads, then k's `kv`, then v's `kv` in each row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QkvShape {
    pub q: usize,
    pub kv: usize,
    pub head_dim: usize,
}

impl QkvShape {
    /// Elements of one row of the fused product.
    pub fn row(&self) -> usize {
        (self.q + 2 * self.kv) * self.head_dim
    }
}

/// Each token's position and the RoPE tables `[max_pos, head_dim/2]`.
pub struct RopeAt<'a, B: Backend + ?Sized> {
    pub pos: B::IdxRef<'a>,
    pub cos: B::Ref<'a>,
    pub sin: B::Ref<'a>,
}

impl<B: Backend + ?Sized> Clone for RopeAt<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend + ?Sized> Copy for RopeAt<'_, B> {}

/// Qwen3's RMSNorm of each q and k head: weights `[head_dim]` each, and eps.
pub struct QkNorm<'a, B: Backend + ?Sized> {
    pub q_w: B::Ref<'a>,
    pub k_w: B::Ref<'a>,
    pub eps: f32,
}

impl<B: Backend + ?Sized> Clone for QkNorm<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend + ?Sized> Copy for QkNorm<'_, B> {}

/// A contiguous range of a flat buffer, in elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub off: usize,
    pub len: usize,
}

impl Span {
    pub fn new(off: usize, len: usize) -> Self {
        Span { off, len }
    }
    pub fn end(&self) -> usize {
        self.off + self.len
    }
}

/// The scalars of one AdamW step on one tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based step count (for the bias corrections).
    pub step: u64,
}

/// Shapes of a matrix product `y[m,n] = x[m,k] · w[n,k]ᵀ` (PyTorch's Linear).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

pub trait Backend: Sync {
    /// Owned storage for activations, parameters and gradients.
    type Buf: Send + Sync;
    /// Owned storage for `u32` indices.
    type Idx: Send + Sync;
    /// Borrowed read-only view of part of a `Buf`.
    type Ref<'a>: Copy;
    /// Borrowed writable view of part of a `Buf`.
    type Mut<'a>;
    /// Borrowed view of part of an `Idx`.
    type IdxRef<'a>: Copy;
    /// A recorded sequence of device work, replayed without the host
    /// ([`Backend::capture`]); `()` where the backend has none.
    type Graph;

    fn name(&self) -> &'static str;

    // ---- graphs: a step replayed without the host -------------------------
    /// Records the device work `f` issues as a graph, without running it
    /// (CUDA: stream capture); `None` where the backend has no graphs, and
    /// then `f` has run, eagerly. `f` may only launch work on buffers that
    /// stay where they are (no uploads, no reads, no allocation): every
    /// argument is frozen, so what changes between replays must be written
    /// to the buffers before each [`replay`](Self::replay).
    fn capture(&self, f: &mut dyn FnMut()) -> Option<Self::Graph>;
    /// Runs a captured graph.
    fn replay(&self, graph: &Self::Graph);
    /// Moves whenever a buffer the ops keep between calls is reallocated: a
    /// graph captured at another value must not be replayed.
    fn graph_epoch(&self) -> u64 {
        0
    }
    /// Decode attention plans its work for sequences of up to `keys` keys
    /// (0: from each plan), so that one captured decode step serves every
    /// length up to it.
    fn set_decode_keys_floor(&self, _keys: usize) {}

    /// How many logits the lm_head + loss path computes at once (its chunk
    /// of `[rows, vocab]`): small on the CPU (cache-friendly f32), large on a
    /// GPU, where a chunk of a few rows would leave the GEMM starved and
    /// add a bf16 rounding of the lm_head's weight gradient per chunk.
    fn logit_chunk_elements(&self) -> usize {
        1 << 24
    }

    /// Bytes of device memory free for new buffers, where the backend has a
    /// device of its own (`None`: the host's memory, which the caller checks).
    fn available_memory(&self) -> Option<u64> {
        None
    }

    /// The device's dense bf16 peak in TFLOP/s, where known (for MFU).
    fn peak_tflops(&self) -> Option<f64> {
        None
    }

    // ---- memory -----------------------------------------------------------
    /// A zero-filled buffer of `len` elements (called when arenas are built,
    /// never in the hot loop).
    fn alloc(&self, len: usize) -> Self::Buf;
    /// A zero-filled buffer that holds fp32 on every backend: per-row
    /// statistics (rstd, lse, log-probs), RoPE tables, optimizer state. On
    /// CUDA `alloc` gives bf16 (parameters, activations, gradients).
    fn alloc_f32(&self, len: usize) -> Self::Buf {
        self.alloc(len)
    }
    fn alloc_idx(&self, len: usize) -> Self::Idx;
    fn len(buf: &Self::Buf) -> usize;
    fn view(buf: &Self::Buf, span: Span) -> Self::Ref<'_>;
    fn view_mut(buf: &mut Self::Buf, span: Span) -> Self::Mut<'_>;
    fn idx_view(idx: &Self::Idx, span: Span) -> Self::IdxRef<'_>;
    /// A buffer holding `host` (moved, not copied, where the backend can).
    fn upload(&self, host: Vec<f32>) -> Self::Buf;
    /// Host → device copy into `dst` (whose length must equal `src`'s).
    fn write(&self, src: &[f32], dst: Self::Mut<'_>);
    fn write_idx(&self, src: &[u32], dst: &mut Self::Idx);
    /// Device → host copy of a view, as f32.
    fn read(&self, src: Self::Ref<'_>) -> Vec<f32>;

    // ---- elementwise ------------------------------------------------------
    fn fill(&self, dst: Self::Mut<'_>, value: f32);
    /// `dst = src`, converting between the storage types where they differ
    /// (bf16 ↔ fp32 on CUDA).
    fn copy(&self, src: Self::Ref<'_>, dst: Self::Mut<'_>);
    /// `dst += src`.
    fn add_assign(&self, dst: Self::Mut<'_>, src: Self::Ref<'_>);

    /// `x *= s`.
    fn scale(&self, x: Self::Mut<'_>, s: f32);
    /// `Σ x²` in f64, summed in fixed chunks in a fixed order (gradient clipping).
    fn sum_squares(&self, x: Self::Ref<'_>) -> f64;
    /// One AdamW step on a tensor (PyTorch's `torch.optim.AdamW`): decoupled
    /// weight decay `p −= lr·wd·p`, then `m = β1·m + (1−β1)·g`,
    /// `v = β2·v + (1−β2)·g²`, `p −= lr · (m/(1−β1^t)) / (sqrt(v/(1−β2^t)) + eps)`.
    /// `m`, `v` come from [`Backend::alloc_f32`]. Where the backend keeps
    /// master weights ([`Backend::keeps_master`]) the step updates `master`
    /// (fp32) and writes `p` as its rounded copy; otherwise `master` is `None`
    /// and `p` is updated itself.
    fn adamw(
        &self,
        p: Self::Mut<'_>,
        master: Option<Self::Mut<'_>>,
        g: Self::Ref<'_>,
        m: Self::Mut<'_>,
        v: Self::Mut<'_>,
        h: &AdamWStep,
    );
    /// True when parameters are stored narrower than fp32 (bf16 on CUDA), so
    /// the optimizer keeps fp32 master weights beside them.
    fn keeps_master(&self) -> bool {
        false
    }

    // ---- embedding --------------------------------------------------------
    /// `out[t] = table[ids[t]]`, rows of `dim`.
    fn embedding_fwd(&self, table: Self::Ref<'_>, ids: Self::IdxRef<'_>, dim: usize, out: Self::Mut<'_>);
    /// `dtable[ids[t]] += dout[t]`, deterministic (fixed order per row).
    fn embedding_bwd(&self, dout: Self::Ref<'_>, ids: Self::IdxRef<'_>, dim: usize, dtable: Self::Mut<'_>);

    // ---- RMSNorm ----------------------------------------------------------
    /// `y = x · rstd · w`, `rstd = 1/sqrt(mean(x²) + eps)` per row of `dim`.
    fn rmsnorm_fwd(
        &self,
        x: Self::Ref<'_>,
        w: Self::Ref<'_>,
        dim: usize,
        eps: f32,
        y: Self::Mut<'_>,
        rstd: Self::Mut<'_>,
    );
    /// Accumulates: `dx += ∂L/∂x`, `dw += ∂L/∂w` (summed over rows in a fixed order).
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_bwd(
        &self,
        dy: Self::Ref<'_>,
        x: Self::Ref<'_>,
        w: Self::Ref<'_>,
        rstd: Self::Ref<'_>,
        dim: usize,
        dx: Self::Mut<'_>,
        dw: Self::Mut<'_>,
    );

    // ---- matrix products (cuBLASLt on CUDA) --------------------------------
    /// `y = x · wᵀ (+ bias)`; with `accumulate`, `y += x · wᵀ (+ bias)`.
    fn matmul(
        &self,
        s: MatShape,
        x: Self::Ref<'_>,
        w: Self::Ref<'_>,
        bias: Option<Self::Ref<'_>>,
        y: Self::Mut<'_>,
        accumulate: bool,
    );
    /// `dx = dy · w` (or `+=` with `accumulate`); dy `[m,n]`, w `[n,k]`, dx `[m,k]`.
    fn matmul_dx(&self, s: MatShape, dy: Self::Ref<'_>, w: Self::Ref<'_>, dx: Self::Mut<'_>, accumulate: bool);
    /// Accumulates `dw += dyᵀ · x`.
    fn matmul_dw(&self, s: MatShape, dy: Self::Ref<'_>, x: Self::Ref<'_>, dw: Self::Mut<'_>);
    /// Accumulates a bias gradient: `db[j] += Σ_rows dy[r, j]`.
    fn bias_grad(&self, dy: Self::Ref<'_>, db: Self::Mut<'_>);

    // ---- RoPE ---------------------------------------------------------------
    /// Rotates `x [tokens, heads, head_dim]` in place by the angle of each
    /// token's position (HF rotate-half layout). `cos`/`sin` are tables
    /// `[max_pos, head_dim/2]`. `inverse` rotates by the opposite angle, which
    /// is the backward (the rotation's transpose).
    #[allow(clippy::too_many_arguments)]
    fn rope(
        &self,
        x: Self::Mut<'_>,
        pos: Self::IdxRef<'_>,
        heads: usize,
        head_dim: usize,
        cos: Self::Ref<'_>,
        sin: Self::Ref<'_>,
        inverse: bool,
    );
    /// [`rope`](Self::rope) of q (`q_heads` heads) and k (`k_heads`) at the
    /// same positions: the same values as two calls (which is what it does
    /// unless a backend does both at once).
    #[allow(clippy::too_many_arguments)]
    fn rope_qk(
        &self,
        q: Self::Mut<'_>,
        q_heads: usize,
        k: Self::Mut<'_>,
        k_heads: usize,
        pos: Self::IdxRef<'_>,
        head_dim: usize,
        cos: Self::Ref<'_>,
        sin: Self::Ref<'_>,
        inverse: bool,
    ) {
        self.rope(q, pos, q_heads, head_dim, cos, sin, inverse);
        self.rope(k, pos, k_heads, head_dim, cos, sin, inverse);
    }

    /// The fused q/k/v product's rows `qkv [tokens, s.row()]` split into `q
    /// [tokens, s.q, head_dim]`, `k` and `v [tokens, s.kv, head_dim]`, and
    /// on the way, in this order: q and k normalised per head (`norm`,
    /// Qwen3), rotated (`rope`); the values of a copy, then
    /// [`rmsnorm_fwd`](Self::rmsnorm_fwd) per head, then
    /// [`rope_qk`](Self::rope_qk) (on a GPU up to the order of the norm's
    /// Σ x², so within an ulp of its rstd). With `kv_rows` (one per token, distinct),
    /// `k` and `v` are tables of rows of `s.kv` heads (a KV cache layer) and
    /// token t's go to row `kv_rows[t]`: a decode step writes its cache
    /// without a copy.
    #[allow(clippy::too_many_arguments)]
    fn qkv_split(
        &self,
        qkv: Self::Ref<'_>,
        s: QkvShape,
        q: Self::Mut<'_>,
        k: Self::Mut<'_>,
        v: Self::Mut<'_>,
        norm: Option<QkNorm<'_, Self>>,
        rope: Option<RopeAt<'_, Self>>,
        kv_rows: Option<Self::IdxRef<'_>>,
    );
    /// The backward of [`qkv_split`](Self::qkv_split): `dq`, `dk` (rotated
    /// back with `rope`) and `dv` written into the rows `d_qkv [tokens,
    /// s.row()]`, ready for the fused product's backward.
    fn qkv_join(
        &self,
        dq: Self::Ref<'_>,
        dk: Self::Ref<'_>,
        dv: Self::Ref<'_>,
        s: QkvShape,
        d_qkv: Self::Mut<'_>,
        rope: Option<RopeAt<'_, Self>>,
    );

    // ---- attention ----------------------------------------------------------
    /// Causal attention over packed sequences (`cu_seqlens`); see
    /// [`cpu::attention::attention_fwd`] for the layout. Writes `out` and `lse`.
    #[allow(clippy::too_many_arguments)]
    fn attention_fwd(
        &self,
        s: &AttnShape,
        cu_seqlens: Self::IdxRef<'_>,
        q: Self::Ref<'_>,
        k: Self::Ref<'_>,
        v: Self::Ref<'_>,
        out: Self::Mut<'_>,
        lse: Self::Mut<'_>,
    );
    /// Overwrites `dq`, `dk`, `dv`.
    #[allow(clippy::too_many_arguments)]
    fn attention_bwd(
        &self,
        s: &AttnShape,
        cu_seqlens: Self::IdxRef<'_>,
        q: Self::Ref<'_>,
        k: Self::Ref<'_>,
        v: Self::Ref<'_>,
        out: Self::Ref<'_>,
        lse: Self::Ref<'_>,
        dout: Self::Ref<'_>,
        dq: Self::Mut<'_>,
        dk: Self::Mut<'_>,
        dv: Self::Mut<'_>,
    );
    /// One query per sequence against a KV cache of rows `[n_rows, kv_heads,
    /// head_dim]` (rollouts): `plan` holds one [`DecodeSeq`] per sequence
    /// ([`DecodeSeq::encode`]), which says which rows hold its positions, its
    /// own new key and value included.
    fn attention_decode(
        &self,
        s: &AttnShape,
        plan: Self::IdxRef<'_>,
        q: Self::Ref<'_>,
        k_cache: Self::Ref<'_>,
        v_cache: Self::Ref<'_>,
        out: Self::Mut<'_>,
    );

    /// `dst[dst_rows[i]] = src[src_rows[i]]` for rows of `width` (writes keys
    /// and values into a KV cache, gathers the rows a sampler needs).
    fn copy_rows(
        &self,
        src: Self::Ref<'_>,
        dst: Self::Mut<'_>,
        width: usize,
        src_rows: Self::IdxRef<'_>,
        dst_rows: Self::IdxRef<'_>,
    );
    /// [`copy_rows`](Self::copy_rows) of two pairs of buffers with the same
    /// row indices (a KV cache's keys and values): the same result as two
    /// calls (which is what it does unless a backend does both at once).
    #[allow(clippy::too_many_arguments)]
    fn copy_rows2(
        &self,
        src: Self::Ref<'_>,
        dst: Self::Mut<'_>,
        src2: Self::Ref<'_>,
        dst2: Self::Mut<'_>,
        width: usize,
        src_rows: Self::IdxRef<'_>,
        dst_rows: Self::IdxRef<'_>,
    ) {
        self.copy_rows(src, dst, width, src_rows, dst_rows);
        self.copy_rows(src2, dst2, width, src_rows, dst_rows);
    }

    // ---- MLP ----------------------------------------------------------------
    /// `out[r, c] = silu(gu[r, c]) · gu[r, cols + c]`: `gu [rows, 2·cols]` is
    /// one product's output (gate_proj and up_proj side by side in the
    /// weights), the gate in the first `cols` columns of each row and up in
    /// the last; `out [rows, cols]`.
    fn swiglu_fwd(&self, gu: Self::Ref<'_>, cols: usize, out: Self::Mut<'_>);
    /// Overwrites `dgu [rows, 2·cols]` (dgate, then dup, in each row).
    fn swiglu_bwd(&self, dout: Self::Ref<'_>, gu: Self::Ref<'_>, cols: usize, dgu: Self::Mut<'_>);

    // ---- log-probabilities (phase 1 and 2 of the lm_head + loss) ------------
    /// Per row of `logits [rows, vocab]`: `lse = logsumexp(z/T)`,
    /// `logp = z[y]/T − lse` (0 where the target is [`IGNORE`]), and, if
    /// asked, the entropy `H = lse − Σ p·z/T`. `inv_temp = 1/T`.
    #[allow(clippy::too_many_arguments)]
    fn logprob_fwd(
        &self,
        logits: Self::Ref<'_>,
        targets: Self::IdxRef<'_>,
        vocab: usize,
        inv_temp: f32,
        logp: Self::Mut<'_>,
        lse: Self::Mut<'_>,
        entropy: Option<Self::Mut<'_>>,
    );
    /// Overwrites the logits with their gradient, in place:
    /// `dz = coef · (onehot(y) − p) / T` with `p = softmax(z/T)` and
    /// `coef = w·∂L/∂logp` per row (a row with target [`IGNORE`] has no
    /// one-hot term); with `entropy = Some((ent_coef, h))`, plus the entropy
    /// term `ent_coef · ∂H/∂z = −ent_coef · p ∘ (z/T − lse + H) / T`, where
    /// `h` is phase 1's entropy of the row.
    #[allow(clippy::too_many_arguments)]
    fn logprob_bwd(
        &self,
        logits: Self::Mut<'_>,
        targets: Self::IdxRef<'_>,
        vocab: usize,
        inv_temp: f32,
        lse: Self::Ref<'_>,
        coef: Self::Ref<'_>,
        entropy: Option<(Self::Ref<'_>, Self::Ref<'_>)>,
    );

    // ---- policy losses (the per-token coefficient pass) ---------------------
    /// One micro-batch's policy loss (DESIGN.md §4.2–4.4) from per-token
    /// arrays held by the backend: writes each token's coefficient into
    /// `coef` (and `−entropy_coef·w` into `ent_coef` where the loss has an
    /// entropy term) and returns the micro-batch's share of the loss with its
    /// statistics, as [`crate::loss::policy_loss`] computes them. The default
    /// reads the arrays to the host and calls it.
    fn policy_loss(
        &self,
        cfg: &crate::loss::PolicyConfig,
        x: &PolicyInputs<'_, Self>,
        counts: &crate::loss::StepCounts,
        correct_tokens: usize,
        coef: Self::Mut<'_>,
        ent_coef: Option<Self::Mut<'_>>,
    ) -> (f64, crate::loss::PolicyStats) {
        let read = |r: Option<Self::Ref<'_>>| r.map(|r| self.read(r));
        let (logp, old_logp) = (self.read(x.logp), self.read(x.old_logp));
        let (ref_logp, sampler_logp, entropy) = (read(x.ref_logp), read(x.sampler_logp), read(x.entropy));
        let b = crate::loss::PolicyBatch {
            logp: &logp,
            old_logp: &old_logp,
            ref_logp: ref_logp.as_deref(),
            sampler_logp: sampler_logp.as_deref(),
            entropy: entropy.as_deref(),
            mask: x.mask,
            cu_seqlens: x.cu_seqlens,
            advantages: x.advantages,
            rewards: x.rewards,
        };
        let out = crate::loss::policy_loss(cfg, &b, counts, correct_tokens);
        self.write(&out.coefs.logp, coef);
        if let (Some(e), Some(dst)) = (&out.coefs.entropy, ent_coef) {
            self.write(e, dst);
        }
        (out.loss, out.stats)
    }

    /// One micro-batch of DPO pairs (DESIGN.md §4.7; sequences `2k` chosen,
    /// `2k + 1` rejected): writes each token's coefficient into `coef` and
    /// returns the micro-batch's share of the loss with its statistics, as
    /// [`crate::loss::dpo_loss`] computes them from per-token log-probs held
    /// by the backend. The default reads them to the host and calls it.
    #[allow(clippy::too_many_arguments)]
    fn dpo_loss(
        &self,
        cfg: &crate::loss::DpoConfig,
        logp: Self::Ref<'_>,
        ref_logp: Self::Ref<'_>,
        mask: &[bool],
        cu_seqlens: &[u32],
        pairs_in_step: usize,
        coef: Self::Mut<'_>,
    ) -> (f64, crate::loss::DpoStats) {
        let (logp, ref_logp) = (self.read(logp), self.read(ref_logp));
        let (loss, coefs, stats) = crate::loss::dpo_loss(cfg, &logp, &ref_logp, mask, cu_seqlens, pairs_in_step);
        self.write(&coefs.logp, coef);
        (loss, stats)
    }

    // ---- sampling -------------------------------------------------------------
    /// One token per row of `logits [rows, vocab]` (`rows = draws.len()`),
    /// drawn as [`crate::rollout::sample`] draws it with the uniform number
    /// of `draws[row]`, with its log-probability: on a GPU the logits stay on
    /// the device and only these come back. The default reads the rows to
    /// the host and samples there.
    fn sample(
        &self,
        logits: Self::Ref<'_>,
        vocab: usize,
        params: &crate::rollout::SamplingParams,
        draws: &[crate::rollout::Draw],
    ) -> Vec<crate::rollout::Sampled> {
        let z = self.read(logits);
        sample_on_host(&z, vocab, params, draws)
    }

    /// [`sample`](Self::sample) in three parts, for steps replayed as graphs:
    /// `sample_stage` puts the draws where `sample_launch` (which issues
    /// device work only, so it can be captured) reads them, and
    /// `sample_collect` returns the rows `sample_launch` sampled. The
    /// default samples in `sample_collect`, from the logits it is given
    /// (the caller passes the same logits and draws to both).
    fn sample_stage(&self, _draws: &[crate::rollout::Draw]) {}
    fn sample_launch(
        &self,
        _logits: Self::Ref<'_>,
        _vocab: usize,
        _params: &crate::rollout::SamplingParams,
        _rows: usize,
    ) {
    }
    fn sample_collect(
        &self,
        logits: Self::Ref<'_>,
        vocab: usize,
        params: &crate::rollout::SamplingParams,
        draws: &[crate::rollout::Draw],
    ) -> Vec<crate::rollout::Sampled> {
        self.sample(logits, vocab, params, draws)
    }

    // ---- distillation ------------------------------------------------------
    /// Per row, the divergence between the student's and the teacher's
    /// distributions at temperature T (DESIGN.md §4.6) into `loss`, and its
    /// gradient times `weight[row]` written over the student's logits.
    #[allow(clippy::too_many_arguments)]
    fn distill(
        &self,
        student: Self::Mut<'_>,
        teacher: Self::Ref<'_>,
        vocab: usize,
        mode: crate::loss::DistillMode,
        inv_temp: f32,
        weight: Self::Ref<'_>,
        loss: Self::Mut<'_>,
    );
}

/// One micro-batch's inputs to [`Backend::policy_loss`]: per-token arrays
/// on the backend (fp32 `[tokens]`), the mask and per-sequence arrays on the
/// host (`cu_seqlens` local to the micro-batch).
pub struct PolicyInputs<'a, B: Backend + ?Sized> {
    pub logp: B::Ref<'a>,
    pub old_logp: B::Ref<'a>,
    pub ref_logp: Option<B::Ref<'a>>,
    pub sampler_logp: Option<B::Ref<'a>>,
    pub entropy: Option<B::Ref<'a>>,
    pub mask: &'a [bool],
    pub cu_seqlens: &'a [u32],
    pub advantages: &'a [f32],
    pub rewards: &'a [f32],
}

/// [`Backend::sample`] on host rows, rows in parallel (each has its own stream).
pub fn sample_on_host(
    logits: &[f32],
    vocab: usize,
    params: &crate::rollout::SamplingParams,
    draws: &[crate::rollout::Draw],
) -> Vec<crate::rollout::Sampled> {
    use rayon::prelude::*;
    assert_eq!(logits.len(), draws.len() * vocab, "sample: logits for {} rows of {vocab}", draws.len());
    logits.par_chunks(vocab).zip(draws).map(|(row, d)| crate::rollout::sample(row, params, d.uniform())).collect()
}
