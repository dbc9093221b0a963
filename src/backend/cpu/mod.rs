//! The CPU reference backend: f32 everywhere, rayon-parallel, deterministic.
//! Each op lives in the file named for it, forward and backward side by side.

pub mod attention;
pub mod attention_tiled;
pub mod distill;
pub mod elementwise;
pub mod fastmath;
pub mod logprob;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod reduce;
pub mod rope;

use super::{AdamWStep, AttnShape, Backend, MatShape, QkNorm, QkvShape, RopeAt, Span};
use rayon::prelude::*;

/// The CPU backend. Stateless: threads come from the ambient rayon pool.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl Backend for Cpu {
    type Buf = Vec<f32>;
    type Idx = Vec<u32>;
    type Ref<'a> = &'a [f32];
    type Mut<'a> = &'a mut [f32];
    type IdxRef<'a> = &'a [u32];
    type Graph = ();

    /// No graphs: `f` runs now.
    fn capture(&self, f: &mut dyn FnMut()) -> Option<()> {
        f();
        None
    }
    fn replay(&self, _graph: &()) {}

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn alloc(&self, len: usize) -> Vec<f32> {
        vec![0.0; len]
    }
    fn alloc_idx(&self, len: usize) -> Vec<u32> {
        vec![0; len]
    }
    fn len(buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn view(buf: &Vec<f32>, span: Span) -> &[f32] {
        &buf[span.off..span.end()]
    }
    fn view_mut(buf: &mut Vec<f32>, span: Span) -> &mut [f32] {
        &mut buf[span.off..span.end()]
    }
    fn idx_view(idx: &Vec<u32>, span: Span) -> &[u32] {
        &idx[span.off..span.end()]
    }
    fn upload(&self, host: Vec<f32>) -> Vec<f32> {
        host
    }
    fn write(&self, src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn write_idx(&self, src: &[u32], dst: &mut Vec<u32>) {
        assert!(src.len() <= dst.len(), "write_idx: {} indices into a buffer of {}", src.len(), dst.len());
        dst[..src.len()].copy_from_slice(src);
    }
    fn read(&self, src: &[f32]) -> Vec<f32> {
        src.to_vec()
    }

    fn fill(&self, dst: &mut [f32], value: f32) {
        dst.par_iter_mut().for_each(|v| *v = value);
    }
    fn copy(&self, src: &[f32], dst: &mut [f32]) {
        dst.par_iter_mut().zip(src.par_iter()).for_each(|(d, s)| *d = *s);
    }
    fn add_assign(&self, dst: &mut [f32], src: &[f32]) {
        elementwise::add_assign(dst, src);
    }
    fn scale(&self, x: &mut [f32], s: f32) {
        x.par_iter_mut().for_each(|v| *v *= s);
    }
    fn sum_squares(&self, x: &[f32]) -> f64 {
        optim::sum_squares(x)
    }
    fn adamw(&self, p: &mut [f32], master: Option<&mut [f32]>, g: &[f32], m: &mut [f32], v: &mut [f32], h: &AdamWStep) {
        assert!(master.is_none(), "adamw: the CPU's f32 parameters are their own master weights");
        optim::adamw(p, g, m, v, h);
    }

    fn embedding_fwd(&self, table: &[f32], ids: &[u32], dim: usize, out: &mut [f32]) {
        elementwise::embedding_fwd(table, ids, dim, out);
    }
    fn embedding_bwd(&self, dout: &[f32], ids: &[u32], dim: usize, dtable: &mut [f32]) {
        elementwise::embedding_bwd(dout, ids, dim, dtable);
    }

    fn rmsnorm_fwd(&self, x: &[f32], w: &[f32], dim: usize, eps: f32, y: &mut [f32], rstd: &mut [f32]) {
        norm::rmsnorm_fwd(x, w, dim, eps, y, rstd);
    }
    fn rmsnorm_bwd(&self, dy: &[f32], x: &[f32], w: &[f32], rstd: &[f32], dim: usize, dx: &mut [f32], dw: &mut [f32]) {
        norm::rmsnorm_bwd(dy, x, w, rstd, dim, dx, dw);
    }

    fn matmul(&self, s: MatShape, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32], accumulate: bool) {
        matmul::matmul(s, x, w, bias, y, accumulate);
    }
    fn matmul_dx(&self, s: MatShape, dy: &[f32], w: &[f32], dx: &mut [f32], accumulate: bool) {
        matmul::matmul_dx(s, dy, w, dx, accumulate);
    }
    fn matmul_dw(&self, s: MatShape, dy: &[f32], x: &[f32], dw: &mut [f32]) {
        matmul::matmul_dw(s, dy, x, dw);
    }
    fn bias_grad(&self, dy: &[f32], db: &mut [f32]) {
        reduce::add_column_sums(dy, db);
    }

    fn rope(&self, x: &mut [f32], pos: &[u32], heads: usize, head_dim: usize, cos: &[f32], sin: &[f32], inverse: bool) {
        rope::rope(x, pos, heads, head_dim, cos, sin, inverse);
    }
    fn qkv_split(
        &self,
        qkv: &[f32],
        s: QkvShape,
        q: &mut [f32],
        k: &mut [f32],
        v: &mut [f32],
        norm: Option<QkNorm<'_, Self>>,
        rope: Option<RopeAt<'_, Self>>,
        kv_rows: Option<&[u32]>,
    ) {
        let how = rope::Split {
            norm: norm.map(|n| (n.q_w, n.k_w, n.eps)),
            rope: rope.map(|r| (r.pos, r.cos, r.sin)),
            kv_rows,
        };
        rope::qkv_split(qkv, s, q, k, v, how);
    }
    fn qkv_join(
        &self,
        dq: &[f32],
        dk: &[f32],
        dv: &[f32],
        s: QkvShape,
        d_qkv: &mut [f32],
        rope: Option<RopeAt<'_, Self>>,
    ) {
        rope::qkv_join(dq, dk, dv, s, d_qkv, rope.map(|r| (r.pos, r.cos, r.sin)));
    }

    fn attention_fwd(
        &self,
        s: &AttnShape,
        cu: &[u32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &mut [f32],
        lse: &mut [f32],
    ) {
        attention_tiled::attention_fwd(s, cu, q, k, v, out, lse);
    }
    fn attention_bwd(
        &self,
        s: &AttnShape,
        cu: &[u32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &[f32],
        lse: &[f32],
        dout: &[f32],
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
    ) {
        attention_tiled::attention_bwd(s, cu, q, k, v, out, lse, dout, dq, dk, dv);
    }
    fn attention_decode(&self, s: &AttnShape, plan: &[u32], q: &[f32], kc: &[f32], vc: &[f32], out: &mut [f32]) {
        attention::attention_decode(s, plan, q, kc, vc, out);
    }
    fn copy_rows(&self, src: &[f32], dst: &mut [f32], width: usize, src_rows: &[u32], dst_rows: &[u32]) {
        elementwise::copy_rows(src, dst, width, src_rows, dst_rows);
    }
    fn swiglu_fwd(&self, gu: &[f32], cols: usize, out: &mut [f32]) {
        elementwise::swiglu_fwd_pair(gu, cols, out);
    }
    fn swiglu_bwd(&self, dout: &[f32], gu: &[f32], cols: usize, dgu: &mut [f32]) {
        elementwise::swiglu_bwd_pair(dout, gu, cols, dgu);
    }

    fn logprob_fwd(
        &self,
        logits: &[f32],
        targets: &[u32],
        vocab: usize,
        inv_temp: f32,
        logp: &mut [f32],
        lse: &mut [f32],
        entropy: Option<&mut [f32]>,
    ) {
        logprob::logprob_fwd(logits, targets, vocab, inv_temp, logp, lse, entropy);
    }
    fn logprob_bwd(
        &self,
        logits: &mut [f32],
        targets: &[u32],
        vocab: usize,
        inv_temp: f32,
        lse: &[f32],
        coef: &[f32],
        entropy: Option<(&[f32], &[f32])>,
    ) {
        logprob::logprob_bwd(logits, targets, vocab, inv_temp, lse, coef, entropy);
    }
    /// Straight from the buffer, no copy.
    fn sample(
        &self,
        logits: &[f32],
        vocab: usize,
        params: &crate::rollout::SamplingParams,
        draws: &[crate::rollout::Draw],
    ) -> Vec<crate::rollout::Sampled> {
        super::sample_on_host(logits, vocab, params, draws)
    }
    fn distill(
        &self,
        student: &mut [f32],
        teacher: &[f32],
        vocab: usize,
        mode: crate::loss::DistillMode,
        inv_temp: f32,
        weight: &[f32],
        loss: &mut [f32],
    ) {
        assert_eq!(student.len(), teacher.len(), "distill: student and teacher chunks differ");
        assert!(weight.len() * vocab == student.len() && loss.len() == weight.len(), "distill: rows");
        student
            .par_chunks_mut(vocab)
            .zip(teacher.par_chunks(vocab))
            .zip(weight.par_iter().zip(loss.par_iter_mut()))
            .for_each(|((zs, zt), (&w, l))| {
                *l = distill::distill_row(zs, zt, mode, inv_temp, w) as f32;
            });
    }
}
