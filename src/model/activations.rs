//! The activation arena: every buffer a forward and backward pass needs,
//! allocated once for a token capacity, so the hot loop allocates nothing.
//!
//! The same list of buffers serves to allocate them and to count their
//! size (`engine info` reports activation memory from it).

use super::config::ModelConfig;
use super::head::HeadBuffers;
use crate::backend::{Backend, Span};

/// Saved per layer for the backward (in inference mode one set is reused).
pub struct LayerActs<B: Backend> {
    pub ln1: B::Buf,
    pub rstd1: B::Buf,
    /// q, k before the Qwen3 q/k RMSNorm and its rstd (training only;
    /// empty otherwise).
    pub q_pre: B::Buf,
    pub k_pre: B::Buf,
    pub rstd_q: B::Buf,
    pub rstd_k: B::Buf,
    /// q and k after norm and RoPE; v.
    pub q: B::Buf,
    pub k: B::Buf,
    pub v: B::Buf,
    pub att: B::Buf,
    pub lse: B::Buf,
    /// The residual stream after attention (training only: otherwise the
    /// stream is updated in place and this is empty).
    pub x2: B::Buf,
    pub ln2: B::Buf,
    pub rstd2: B::Buf,
    /// The MLP's gate and up projections as one product's output:
    /// `[tokens, 2·intermediate]`, gate then up in each row.
    pub gu: B::Buf,
    pub act: B::Buf,
}

/// Gradient scratch, reused by every layer of the backward.
pub struct GradScratch<B: Backend> {
    pub d_resid: B::Buf,
    pub d_ln: B::Buf,
    pub d_att: B::Buf,
    pub dq: B::Buf,
    pub dk: B::Buf,
    pub dv: B::Buf,
    pub dq_pre: B::Buf,
    pub dk_pre: B::Buf,
    pub d_act: B::Buf,
    /// dgate and dup, laid out as `gu`.
    pub d_gu: B::Buf,
}

pub struct Activations<B: Backend> {
    /// Most tokens one batch may hold (also the longest sequence).
    pub cap: usize,
    pub train: bool,
    /// Tokens and sequences of the batch now loaded (set by the forward).
    pub n: usize,
    pub n_seqs: usize,
    pub ids: B::Idx,
    pub pos: B::Idx,
    pub cu_seqlens: B::Idx,
    /// Row indices for gathering hidden states (`Model::sample_rows`).
    pub gather_src: B::Idx,
    pub gather_dst: B::Idx,
    pub rope_cos: B::Buf,
    pub rope_sin: B::Buf,
    /// Residual stream at each layer boundary in training (L+1); otherwise
    /// one buffer, updated in place layer by layer.
    pub resid: Vec<B::Buf>,
    pub layers: Vec<LayerActs<B>>,
    /// Final RMSNorm output and its rstd.
    pub h: B::Buf,
    pub rstd_f: B::Buf,
    /// The fused q/k/v product's rows `[tokens, q_dim + 2·kv_dim]`, split
    /// into each layer's q, k and v straight away (so one buffer serves
    /// every layer); in the backward, dq, dk and dv joined the same way.
    pub qkv: B::Buf,
    /// The lm_head + loss path's logit chunk and per-token arrays.
    pub head: HeadBuffers<B>,
    pub grad: Option<GradScratch<B>>,
}

/// Sizes (in elements) of every f32 buffer of the arena.
struct Sizes {
    per_layer: Vec<usize>,
    n_layer_sets: usize,
    resid: usize,
    n_resid: usize,
    rest: Vec<usize>,
    head: usize,
    scratch: Vec<usize>,
}

fn sizes(c: &ModelConfig, cap: usize, chunk: usize, train: bool, max_pos: usize) -> Sizes {
    let (d, q, kv, i) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
    // Qwen3's q, k before their norms and the norms' rstd: kept for the
    // backward (outside training the split normalises on the way).
    let qk = |x: usize| if c.qk_norm && train { x } else { 0 };
    let half = c.head_dim / 2;
    Sizes {
        // Order as in LayerActs.
        per_layer: vec![
            cap * d,
            cap,
            qk(cap * q),
            qk(cap * kv),
            qk(cap * c.n_heads),
            qk(cap * c.n_kv_heads),
            cap * q,
            cap * kv,
            cap * kv,
            cap * q,
            cap * c.n_heads,
            // x2: outside training the residual stream is updated in place.
            if train { cap * d } else { 0 },
            cap * d,
            cap,
            2 * cap * i,
            cap * i,
        ],
        n_layer_sets: if train { c.n_layers } else { 1 },
        resid: cap * d,
        n_resid: if train { c.n_layers + 1 } else { 1 },
        // rope cos, sin, h, rstd_f, qkv
        rest: vec![max_pos * half, max_pos * half, cap * d, cap, cap * (q + 2 * kv)],
        head: super::head::elements(cap, chunk, c.vocab_size),
        scratch: if train {
            vec![
                cap * d,
                cap * d,
                cap * q,
                cap * q,
                cap * kv,
                cap * kv,
                qk(cap * q),
                qk(cap * kv),
                cap * i,
                2 * cap * i,
            ]
        } else {
            vec![]
        },
    }
}

/// Rows per lm_head chunk on the CPU: at most 2^24 logits (64 MiB in f32) at once.
pub fn default_chunk(c: &ModelConfig, cap: usize) -> usize {
    chunk_for(1 << 24, c, cap)
}

/// Logits per lm_head chunk on CUDA (bf16, 2 GiB): see
/// [`Backend::logit_chunk_elements`].
pub const CUDA_LOGIT_CHUNK_ELEMENTS: usize = 1 << 30;

/// Rows per lm_head chunk on CUDA.
pub fn cuda_chunk(c: &ModelConfig, cap: usize) -> usize {
    chunk_for(CUDA_LOGIT_CHUNK_ELEMENTS, c, cap)
}

/// Rows per lm_head chunk for backend `be` ([`Backend::logit_chunk_elements`]).
pub fn backend_chunk<B: Backend>(be: &B, c: &ModelConfig, cap: usize) -> usize {
    chunk_for(be.logit_chunk_elements(), c, cap)
}

fn chunk_for(elements: usize, c: &ModelConfig, cap: usize) -> usize {
    (elements / c.vocab_size).clamp(1, cap.max(1))
}

/// Total f32 elements of an arena, plus its index buffers (in u32 elements).
pub fn arena_elements(c: &ModelConfig, cap: usize, chunk: usize, train: bool) -> (usize, usize) {
    let s = sizes(c, cap, chunk, train, cap);
    let floats = s.per_layer.iter().sum::<usize>() * s.n_layer_sets
        + s.resid * s.n_resid
        + s.rest.iter().sum::<usize>()
        + s.head
        + s.scratch.iter().sum::<usize>();
    (floats, 4 * cap + 1)
}

impl<B: Backend> Activations<B> {
    pub fn new(be: &B, c: &ModelConfig, cap: usize, chunk: usize, train: bool) -> Self {
        Self::with_positions(be, c, cap, chunk, train, cap)
    }

    /// An arena whose RoPE table covers `max_pos` positions (decode steps
    /// have few tokens at large positions).
    pub fn with_positions(be: &B, c: &ModelConfig, cap: usize, chunk: usize, train: bool, max_pos: usize) -> Self {
        assert!(cap > 0 && chunk > 0, "activations: capacity and chunk must be positive");
        let max_pos = max_pos.max(cap);
        let s = sizes(c, cap, chunk, train, max_pos);
        // Per-row statistics stay fp32 on every backend (bf16 elsewhere on CUDA).
        const F32_PER_LAYER: [usize; 5] = [1, 4, 5, 10, 13]; // rstd1, rstd_q, rstd_k, lse, rstd2
        let layer = || {
            let mut b = s.per_layer.iter().enumerate().map(|(i, &n)| {
                if F32_PER_LAYER.contains(&i) {
                    be.alloc_f32(n)
                } else {
                    be.alloc(n)
                }
            });
            let mut next = || b.next().unwrap();
            LayerActs {
                ln1: next(),
                rstd1: next(),
                q_pre: next(),
                k_pre: next(),
                rstd_q: next(),
                rstd_k: next(),
                q: next(),
                k: next(),
                v: next(),
                att: next(),
                lse: next(),
                x2: next(),
                ln2: next(),
                rstd2: next(),
                gu: next(),
                act: next(),
            }
        };
        // rope cos, sin and rstd_f are fp32; h and qkv have the activations' type.
        let mut rest =
            s.rest.iter().enumerate().map(|(i, &n)| if i == 2 || i == 4 { be.alloc(n) } else { be.alloc_f32(n) });
        let mut r = || rest.next().unwrap();
        let (mut rope_cos, mut rope_sin) = (r(), r());
        let (h, rstd_f, qkv) = (r(), r(), r());
        let (cos, sin) = super::rope::tables(c, max_pos);
        be.write(&cos, B::view_mut(&mut rope_cos, Span::new(0, cos.len())));
        be.write(&sin, B::view_mut(&mut rope_sin, Span::new(0, sin.len())));
        let grad = train.then(|| {
            let mut b = s.scratch.iter().map(|&n| be.alloc(n));
            let mut g = || b.next().unwrap();
            GradScratch {
                d_resid: g(),
                d_ln: g(),
                d_att: g(),
                dq: g(),
                dk: g(),
                dv: g(),
                dq_pre: g(),
                dk_pre: g(),
                d_act: g(),
                d_gu: g(),
            }
        });
        Activations {
            cap,
            train,
            n: 0,
            n_seqs: 0,
            ids: be.alloc_idx(cap),
            pos: be.alloc_idx(cap),
            cu_seqlens: be.alloc_idx(cap + 1),
            gather_src: be.alloc_idx(cap),
            gather_dst: be.alloc_idx(cap),
            rope_cos,
            rope_sin,
            resid: (0..s.n_resid).map(|_| be.alloc(s.resid)).collect(),
            layers: (0..s.n_layer_sets).map(|_| layer()).collect(),
            h,
            rstd_f,
            qkv,
            head: HeadBuffers::new(be, cap, chunk, c.vocab_size),
            grad,
        }
    }
}
