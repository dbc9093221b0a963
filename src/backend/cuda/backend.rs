//! The CUDA backend: the [`Backend`] op set over [`Gpu`]'s kernels, so the
//! model code runs on the GPU unchanged (DESIGN.md §3): bf16 parameters,
//! activations and gradients, fp32 statistics and optimizer state with fp32
//! master weights, cuBLASLt for every product.
//!
//! The trait's ops return nothing: a failed launch is a device fault or a
//! bug, not bad input (the model checks its inputs before they reach the
//! device), so it panics with the op's name. Indices read on the device
//! (RoPE positions, row copies, embedding ids) set one shared flag instead
//! of faulting; [`Cuda::check`] and every [`Backend::read`] report it.

use super::buf::{DBuf, DIdx, DMut, DRef, DType, IdxRef};
use super::PolicyViews;
use super::{Bf16, Gpu};
use super::{QkNormOn, RopeTables, SplitOn};
use crate::backend::{AdamWStep, AttnShape, Backend, MatShape, PolicyInputs, QkNorm, QkvShape, RopeAt, Span};
use crate::loss::{DistillMode, DpoConfig, DpoStats, PolicyConfig, PolicyStats, StepCounts};
use crate::rollout::{Draw, Sampled, SamplingParams};
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DeviceRepr, ValidAsZeroBits};
use std::sync::{Mutex, MutexGuard};

/// Scratch the ops need beside their operands, grown on first use (the
/// first training step), so later steps allocate nothing.
struct Scratch {
    /// sum_squares' partial sums.
    f64: CudaSlice<f64>,
    /// rmsnorm_bwd's per-block weight-gradient shares.
    f32: CudaSlice<f32>,
    /// embedding_bwd's plan.
    plan: CudaSlice<u32>,
    /// One u32 set by kernels that meet an index outside their buffer.
    flag: CudaSlice<u32>,
    /// policy_loss's (and dpo_loss's) host-side inputs (mask, cu_seqlens,
    /// advantages and rewards) and its per-sequence (per-pair) sums.
    pmask: CudaSlice<u8>,
    pcu: CudaSlice<u32>,
    pseq: CudaSlice<f32>,
    pout: CudaSlice<f64>,
    /// sample's inputs (stream key, step per row) and outputs.
    draws: CudaSlice<u64>,
    tokens: CudaSlice<u32>,
    logprobs: CudaSlice<f32>,
}

/// The CUDA backend: one GPU, one stream.
pub struct Cuda {
    pub gpu: Gpu,
    scratch: Mutex<Scratch>,
}

/// The result of a launch, or a panic naming it (see the module docs).
fn must<T>(r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("CUDA: {e:#}"))
}

fn zeros<T: DeviceRepr + ValidAsZeroBits>(gpu: &Gpu, len: usize) -> Result<CudaSlice<T>> {
    if len == 0 {
        return gpu.stream.null().map_err(|e| anyhow!("{}: allocation: {e}", gpu.name));
    }
    gpu.stream
        .alloc_zeros(len)
        .map_err(|e| anyhow!("{}: cannot allocate {} MiB: {e}", gpu.name, (len * std::mem::size_of::<T>()) >> 20))
}

/// Grows `s` to at least `len` elements (its contents are not kept).
fn grow<T: DeviceRepr + ValidAsZeroBits>(gpu: &Gpu, s: &mut CudaSlice<T>, len: usize) {
    if s.len() < len {
        must(gpu.check_not_capturing("scratch"));
        *s = must(zeros(gpu, len));
        gpu.buffer_epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Cuda {
    /// Whether the CUDA driver library can be loaded (a GPU machine).
    pub fn driver_present() -> bool {
        // SAFETY: only tries to open the driver library.
        unsafe { cudarc::driver::sys::is_culib_present() }
    }

    /// Starts GPU `ordinal` (see [`Gpu::new`]).
    pub fn new(ordinal: usize) -> Result<Self> {
        // One stream, cudarc's per-buffer events off (Gpu::new).
        let gpu = Gpu::new(ordinal)?;
        let scratch = Scratch {
            f64: zeros(&gpu, 1)?,
            f32: zeros(&gpu, 1)?,
            plan: zeros(&gpu, 1)?,
            flag: zeros(&gpu, 1)?,
            pmask: zeros(&gpu, 1)?,
            pcu: zeros(&gpu, 1)?,
            pseq: zeros(&gpu, 1)?,
            pout: zeros(&gpu, 1)?,
            draws: zeros(&gpu, 1)?,
            tokens: zeros(&gpu, 1)?,
            logprobs: zeros(&gpu, 1)?,
        };
        Ok(Cuda { gpu, scratch: Mutex::new(scratch) })
    }

    fn scratch(&self) -> MutexGuard<'_, Scratch> {
        self.scratch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for every launched op; fails on a device fault or on an index
    /// a kernel found outside its buffer since the last check.
    pub fn check(&self) -> Result<()> {
        self.gpu.sync()?;
        let mut s = self.scratch();
        if let Some(i) = self.gpu.take_bad_index(&mut s.flag)? {
            bail!(
                "{}: a kernel met index {i} outside its buffer (RoPE position, row copy, KV cache row or token id)",
                self.gpu.name
            );
        }
        Ok(())
    }

    /// The loss passes' micro-batch layout on the device: `cu_seqlens`
    /// checked (rising from 0 to the tokens) and copied, the mask as u8,
    /// into the scratch's `pcu` and `pmask`. Returns (tokens, sequences).
    fn put_layout(&self, op: &str, s: &mut Scratch, mask: &[bool], cu_seqlens: &[u32]) -> (usize, usize) {
        let n = mask.len();
        let cu_ok = cu_seqlens.first() == Some(&0)
            && cu_seqlens.windows(2).all(|w| w[0] <= w[1])
            && cu_seqlens.last() == Some(&(n as u32));
        assert!(cu_ok, "{op}: cu_seqlens must rise from 0 to the {n} tokens");
        let mask8: Vec<u8> = mask.iter().map(|&m| m as u8).collect();
        grow(&self.gpu, &mut s.pmask, n.max(1));
        grow(&self.gpu, &mut s.pcu, cu_seqlens.len());
        let st = &self.gpu.stream;
        if n > 0 {
            must(st.memcpy_htod(&mask8, &mut s.pmask.slice_mut(0..n)).map_err(|e| anyhow!("{op}: mask: {e}")));
        }
        let cu = st.memcpy_htod(cu_seqlens, &mut s.pcu.slice_mut(0..cu_seqlens.len()));
        must(cu.map_err(|e| anyhow!("{op}: cu_seqlens: {e}")));
        (n, cu_seqlens.len() - 1)
    }

    /// A loss pass's per-sequence rows, read back (none for an empty view).
    fn read_rows(&self, op: &str, rows: &CudaViewMut<'_, f64>) -> Vec<f64> {
        if rows.is_empty() {
            return Vec::new();
        }
        must(self.gpu.stream.clone_dtoh(rows).map_err(|e| anyhow!("{op}: {e}")))
    }

    /// Free and total device memory, in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.gpu.ctx.mem_get_info().map_err(|e| anyhow!("{}: memory info: {e}", self.gpu.name))
    }
}

impl Backend for Cuda {
    type Buf = DBuf;
    type Idx = DIdx;
    type Ref<'a> = DRef<'a>;
    type Mut<'a> = DMut<'a>;
    type IdxRef<'a> = IdxRef<'a>;
    type Graph = cudarc::driver::CudaGraph;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn capture(&self, f: &mut dyn FnMut()) -> Option<Self::Graph> {
        if !self.gpu.graphs_on.load(std::sync::atomic::Ordering::Relaxed) {
            f();
            return None;
        }
        Some(must(self.gpu.capture(|| {
            f();
            Ok(())
        })))
    }
    fn replay(&self, graph: &Self::Graph) {
        must(graph.launch().map_err(|e| anyhow!("graph launch: {e}")));
    }
    fn graph_epoch(&self) -> u64 {
        self.gpu.buffer_epoch.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn set_decode_keys_floor(&self, keys: usize) {
        self.gpu.set_decode_keys_floor(keys);
    }
    /// 2^30 bf16 logits (2 GiB): 7,067 rows of Qwen's 151,936, so a
    /// micro-batch of 16k tokens takes 3 chunks.
    fn logit_chunk_elements(&self) -> usize {
        crate::model::activations::CUDA_LOGIT_CHUNK_ELEMENTS
    }
    /// Dense bf16 tensor-core peaks from NVIDIA's data sheets, by the name
    /// the driver reports (SXM unless the name says PCIe).
    fn peak_tflops(&self) -> Option<f64> {
        let name = self.gpu.name.as_str();
        let pcie = name.contains("PCIe");
        if name.contains("H100") || name.contains("H200") || name.contains("H800") {
            Some(if pcie { 756.0 } else { 989.4 })
        } else if name.contains("A100") || name.contains("A800") {
            Some(312.0)
        } else {
            None
        }
    }
    /// Free device memory, as the driver reports it.
    fn available_memory(&self) -> Option<u64> {
        self.mem_info().ok().map(|(free, _)| free as u64)
    }

    fn alloc(&self, len: usize) -> DBuf {
        DBuf::Bf16(must(zeros(&self.gpu, len)))
    }
    fn alloc_f32(&self, len: usize) -> DBuf {
        DBuf::F32(must(zeros(&self.gpu, len)))
    }
    fn alloc_idx(&self, len: usize) -> DIdx {
        DIdx { dev: must(zeros(&self.gpu, len)), host: vec![0; len] }
    }
    fn len(buf: &DBuf) -> usize {
        buf.len()
    }
    fn view(buf: &DBuf, span: Span) -> DRef<'_> {
        DRef::new(buf, span)
    }
    fn view_mut(buf: &mut DBuf, span: Span) -> DMut<'_> {
        DMut::new(buf, span)
    }
    fn idx_view(idx: &DIdx, span: Span) -> IdxRef<'_> {
        IdxRef::new(idx, span)
    }
    /// Parameters: rounded to bf16 (the optimizer's master copy is made from
    /// them at its first step).
    fn upload(&self, host: Vec<f32>) -> DBuf {
        let h: Vec<Bf16> = host.iter().map(|&v| Bf16::from_f32(v)).collect();
        if h.is_empty() {
            return self.alloc(0);
        }
        DBuf::Bf16(must(self.gpu.stream.clone_htod(&h).map_err(|e| anyhow!("upload: {e}"))))
    }
    fn write(&self, src: &[f32], dst: DMut<'_>) {
        assert_eq!(src.len(), dst.len(), "write: {} values into a view of {}", src.len(), dst.len());
        if src.is_empty() {
            return;
        }
        let r = match dst.dtype() {
            DType::F32 => self.gpu.stream.memcpy_htod(src, &mut dst.f32("write")),
            DType::Bf16 => {
                let h: Vec<Bf16> = src.iter().map(|&v| Bf16::from_f32(v)).collect();
                self.gpu.stream.memcpy_htod(&h, &mut dst.bf16("write"))
            }
        };
        must(r.map_err(|e| anyhow!("write: {e}")));
    }
    /// Into the device array and its host copy.
    fn write_idx(&self, src: &[u32], dst: &mut DIdx) {
        assert!(src.len() <= dst.len(), "write_idx: {} indices into a buffer of {}", src.len(), dst.len());
        if src.is_empty() {
            return;
        }
        let r = self.gpu.stream.memcpy_htod(src, &mut dst.dev.slice_mut(0..src.len()));
        must(r.map_err(|e| anyhow!("write_idx: {e}")));
        dst.host[..src.len()].copy_from_slice(src);
    }
    /// Waits for the stream; panics on a flagged bad index (see [`Cuda::check`]).
    fn read(&self, src: DRef<'_>) -> Vec<f32> {
        let out = if src.is_empty() {
            Vec::new()
        } else {
            match src.dtype() {
                DType::F32 => must(self.gpu.stream.clone_dtoh(&src.f32("read")).map_err(|e| anyhow!("read: {e}"))),
                DType::Bf16 => must(self.gpu.stream.clone_dtoh(&src.bf16("read")).map_err(|e| anyhow!("read: {e}")))
                    .iter()
                    .map(|v| v.to_f32())
                    .collect(),
            }
        };
        must(self.check());
        out
    }

    fn fill(&self, dst: DMut<'_>, value: f32) {
        match dst.dtype() {
            DType::Bf16 => must(self.gpu.fill(&mut dst.bf16("fill"), value)),
            DType::F32 if value == 0.0 => {
                must(self.gpu.stream.memset_zeros(&mut dst.f32("fill")).map_err(|e| anyhow!("fill: {e}")))
            }
            // Rare (never in the step): from the host.
            DType::F32 => {
                let host = vec![value; dst.len()];
                self.write(&host, dst)
            }
        }
    }
    fn copy(&self, src: DRef<'_>, dst: DMut<'_>) {
        assert_eq!(src.len(), dst.len(), "copy: {} elements into {}", src.len(), dst.len());
        let r = match (src.dtype(), dst.dtype()) {
            (DType::Bf16, DType::Bf16) => self.gpu.copy(&src.bf16("copy"), &mut dst.bf16("copy")),
            (DType::F32, DType::F32) => {
                self.gpu.stream.memcpy_dtod(&src.f32("copy"), &mut dst.f32("copy")).map_err(|e| anyhow!("copy: {e}"))
            }
            (DType::Bf16, DType::F32) => self.gpu.cast_to_f32(&src.bf16("copy"), &mut dst.f32("copy")),
            (DType::F32, DType::Bf16) => self.gpu.cast_to_bf16(&src.f32("copy"), &mut dst.bf16("copy")),
        };
        must(r);
    }
    fn add_assign(&self, dst: DMut<'_>, src: DRef<'_>) {
        must(self.gpu.add_assign(&mut dst.bf16("add_assign"), &src.bf16("add_assign")));
    }
    fn scale(&self, x: DMut<'_>, s: f32) {
        must(self.gpu.scale(&mut x.bf16("scale"), s));
    }
    fn sum_squares(&self, x: DRef<'_>) -> f64 {
        let mut sc = self.scratch();
        grow(&self.gpu, &mut sc.f64, Gpu::sum_squares_scratch_len(x.len()));
        must(self.gpu.sum_squares(&x.bf16("sum_squares"), &mut sc.f64))
    }
    fn adamw(&self, p: DMut<'_>, master: Option<DMut<'_>>, g: DRef<'_>, m: DMut<'_>, v: DMut<'_>, h: &AdamWStep) {
        let master = master.expect("adamw: the CUDA backend steps fp32 master weights (keeps_master)");
        must(self.gpu.adamw(
            &mut master.f32("adamw master"),
            &mut p.bf16("adamw p"),
            &g.bf16("adamw g"),
            &mut m.f32("adamw m"),
            &mut v.f32("adamw v"),
            h,
            1.0,
        ));
    }
    fn keeps_master(&self) -> bool {
        true
    }

    fn embedding_fwd(&self, table: DRef<'_>, ids: IdxRef<'_>, dim: usize, out: DMut<'_>) {
        let mut sc = self.scratch();
        must(self.gpu.embedding_fwd(
            &table.bf16("embedding_fwd"),
            &ids.view(),
            dim,
            &mut out.bf16("embedding_fwd"),
            &mut sc.flag,
        ));
    }
    fn embedding_bwd(&self, dout: DRef<'_>, ids: IdxRef<'_>, dim: usize, dtable: DMut<'_>) {
        // The deterministic plan is built on the host from the ids.
        let host_ids = ids.host();
        let mut sc = self.scratch();
        let Scratch { plan, flag, .. } = &mut *sc;
        grow(&self.gpu, plan, Gpu::embedding_bwd_plan_len(host_ids.len()));
        must(self.gpu.embedding_bwd(
            &dout.bf16("embedding_bwd"),
            host_ids,
            dim,
            &mut dtable.bf16("embedding_bwd"),
            plan,
            flag,
        ));
    }

    fn rmsnorm_fwd(&self, x: DRef<'_>, w: DRef<'_>, dim: usize, eps: f32, y: DMut<'_>, rstd: DMut<'_>) {
        assert_eq!(w.len(), dim, "rmsnorm_fwd: weight of {} for rows of {dim}", w.len());
        must(self.gpu.rmsnorm_fwd(
            &x.bf16("rmsnorm_fwd"),
            None,
            &w.bf16("rmsnorm_fwd"),
            eps,
            &mut y.bf16("rmsnorm_fwd"),
            &mut rstd.f32("rmsnorm_fwd rstd"),
        ));
    }
    fn rmsnorm_bwd(
        &self,
        dy: DRef<'_>,
        x: DRef<'_>,
        w: DRef<'_>,
        rstd: DRef<'_>,
        dim: usize,
        dx: DMut<'_>,
        dw: DMut<'_>,
    ) {
        assert_eq!(w.len(), dim, "rmsnorm_bwd: weight of {} for rows of {dim}", w.len());
        let mut sc = self.scratch();
        // The launcher splits rows into blocks of 32 (one fp32 share of dw each).
        grow(&self.gpu, &mut sc.f32, rstd.len().div_ceil(32).max(1) * dim);
        must(self.gpu.rmsnorm_bwd(
            &dy.bf16("rmsnorm_bwd"),
            &x.bf16("rmsnorm_bwd"),
            &w.bf16("rmsnorm_bwd"),
            &rstd.f32("rmsnorm_bwd rstd"),
            &mut dx.bf16("rmsnorm_bwd"),
            true,
            &mut dw.bf16("rmsnorm_bwd dw"),
            &mut sc.f32,
        ));
    }

    fn matmul(&self, s: MatShape, x: DRef<'_>, w: DRef<'_>, bias: Option<DRef<'_>>, y: DMut<'_>, accumulate: bool) {
        let b = bias.map(|b| b.bf16("matmul bias"));
        must(self.gpu.matmul(s, &x.bf16("matmul"), &w.bf16("matmul"), b.as_ref(), &mut y.bf16("matmul"), accumulate));
    }
    fn matmul_dx(&self, s: MatShape, dy: DRef<'_>, w: DRef<'_>, dx: DMut<'_>, accumulate: bool) {
        must(self.gpu.matmul_dx(s, &dy.bf16("matmul_dx"), &w.bf16("matmul_dx"), &mut dx.bf16("matmul_dx"), accumulate));
    }
    fn matmul_dw(&self, s: MatShape, dy: DRef<'_>, x: DRef<'_>, dw: DMut<'_>) {
        must(self.gpu.matmul_dw(s, &dy.bf16("matmul_dw"), &x.bf16("matmul_dw"), &mut dw.bf16("matmul_dw")));
    }
    fn bias_grad(&self, dy: DRef<'_>, db: DMut<'_>) {
        must(self.gpu.bias_grad(&dy.bf16("bias_grad"), &mut db.bf16("bias_grad")));
    }

    fn rope(
        &self,
        x: DMut<'_>,
        pos: IdxRef<'_>,
        heads: usize,
        head_dim: usize,
        cos: DRef<'_>,
        sin: DRef<'_>,
        inverse: bool,
    ) {
        let mut sc = self.scratch();
        must(self.gpu.rope(
            &mut x.bf16("rope"),
            &pos.view(),
            heads,
            head_dim,
            &cos.f32("rope cos"),
            &sin.f32("rope sin"),
            inverse,
            &mut sc.flag,
        ));
    }

    fn rope_qk(
        &self,
        q: DMut<'_>,
        q_heads: usize,
        k: DMut<'_>,
        k_heads: usize,
        pos: IdxRef<'_>,
        head_dim: usize,
        cos: DRef<'_>,
        sin: DRef<'_>,
        inverse: bool,
    ) {
        let mut sc = self.scratch();
        must(self.gpu.rope_qk(
            &mut q.bf16("rope q"),
            q_heads,
            &mut k.bf16("rope k"),
            k_heads,
            &pos.view(),
            head_dim,
            &cos.f32("rope cos"),
            &sin.f32("rope sin"),
            inverse,
            &mut sc.flag,
        ));
    }

    fn qkv_split(
        &self,
        qkv: DRef<'_>,
        s: QkvShape,
        q: DMut<'_>,
        k: DMut<'_>,
        v: DMut<'_>,
        norm: Option<QkNorm<'_, Self>>,
        rope: Option<RopeAt<'_, Self>>,
        kv_rows: Option<IdxRef<'_>>,
    ) {
        let mut sc = self.scratch();
        let tables = rope.map(|r| (r.pos.view(), r.cos.f32("qkv_split cos"), r.sin.f32("qkv_split sin")));
        let norm = norm.map(|n| (n.q_w.bf16("qkv_split q norm"), n.k_w.bf16("qkv_split k norm"), n.eps));
        let rows = kv_rows.map(|r| r.view());
        let on = SplitOn {
            rope: tables.as_ref().map(|(pos, cos, sin)| RopeTables { pos, cos, sin }),
            kv_rows: rows.as_ref(),
            norm: norm.as_ref().map(|(q_w, k_w, eps)| QkNormOn { q_w, k_w, eps: *eps }),
        };
        let (mut q, mut k, mut v) = (q.bf16("qkv_split q"), k.bf16("qkv_split k"), v.bf16("qkv_split v"));
        must(self.gpu.qkv_split(true, &qkv.bf16("qkv_split"), s, &mut q, &mut k, &mut v, on, &mut sc.flag));
    }

    fn qkv_join(
        &self,
        dq: DRef<'_>,
        dk: DRef<'_>,
        dv: DRef<'_>,
        s: QkvShape,
        d_qkv: DMut<'_>,
        rope: Option<RopeAt<'_, Self>>,
    ) {
        let mut sc = self.scratch();
        let tables = rope.map(|r| (r.pos.view(), r.cos.f32("qkv_join cos"), r.sin.f32("qkv_join sin")));
        let tables = tables.as_ref().map(|(pos, cos, sin)| RopeTables { pos, cos, sin });
        let (dq, dk, dv) = (dq.bf16("qkv_join dq"), dk.bf16("qkv_join dk"), dv.bf16("qkv_join dv"));
        must(self.gpu.qkv_join(true, &dq, &dk, &dv, s, &mut d_qkv.bf16("qkv_join"), tables, &mut sc.flag));
    }

    fn attention_fwd(
        &self,
        s: &AttnShape,
        cu: IdxRef<'_>,
        q: DRef<'_>,
        k: DRef<'_>,
        v: DRef<'_>,
        out: DMut<'_>,
        lse: DMut<'_>,
    ) {
        must(self.gpu.attention_fwd(
            s,
            &cu.mirrored(),
            &q.bf16("attention_fwd q"),
            &k.bf16("attention_fwd k"),
            &v.bf16("attention_fwd v"),
            &mut out.bf16("attention_fwd out"),
            &mut lse.f32("attention_fwd lse"),
        ));
    }
    fn attention_bwd(
        &self,
        s: &AttnShape,
        cu: IdxRef<'_>,
        q: DRef<'_>,
        k: DRef<'_>,
        v: DRef<'_>,
        out: DRef<'_>,
        lse: DRef<'_>,
        dout: DRef<'_>,
        dq: DMut<'_>,
        dk: DMut<'_>,
        dv: DMut<'_>,
    ) {
        let op = "attention_bwd";
        must(self.gpu.attention_bwd(
            s,
            &cu.mirrored(),
            &q.bf16(op),
            &k.bf16(op),
            &v.bf16(op),
            &out.bf16(op),
            &lse.f32(op),
            &dout.bf16(op),
            &mut dq.bf16(op),
            &mut dk.bf16(op),
            &mut dv.bf16(op),
        ));
    }
    fn attention_decode(
        &self,
        s: &AttnShape,
        plan: IdxRef<'_>,
        q: DRef<'_>,
        kc: DRef<'_>,
        vc: DRef<'_>,
        out: DMut<'_>,
    ) {
        let op = "attention_decode";
        must(self.gpu.attention_decode(
            s,
            &plan.mirrored(),
            &q.bf16(op),
            &kc.bf16(op),
            &vc.bf16(op),
            &mut out.bf16(op),
        ));
    }
    fn copy_rows(&self, src: DRef<'_>, dst: DMut<'_>, width: usize, src_rows: IdxRef<'_>, dst_rows: IdxRef<'_>) {
        let mut sc = self.scratch();
        // The destinations with their host copy: distinct ones skip the kernel's duplicate scan.
        let (sr, dr) = (src_rows.view(), dst_rows.mirrored());
        let r = match (src.dtype(), dst.dtype()) {
            (DType::Bf16, DType::Bf16) => {
                self.gpu.copy_rows(&src.bf16("copy_rows"), &mut dst.bf16("copy_rows"), width, &sr, &dr, &mut sc.flag)
            }
            (DType::F32, DType::F32) => {
                self.gpu.copy_rows_f32(&src.f32("copy_rows"), &mut dst.f32("copy_rows"), width, &sr, &dr, &mut sc.flag)
            }
            (a, b) => panic!("copy_rows: from {a:?} rows into {b:?} rows"),
        };
        must(r);
    }
    fn copy_rows2(
        &self,
        src: DRef<'_>,
        dst: DMut<'_>,
        src2: DRef<'_>,
        dst2: DMut<'_>,
        width: usize,
        src_rows: IdxRef<'_>,
        dst_rows: IdxRef<'_>,
    ) {
        if [src.dtype(), dst.dtype(), src2.dtype(), dst2.dtype()] != [DType::Bf16; 4] {
            self.copy_rows(src, dst, width, src_rows, dst_rows);
            self.copy_rows(src2, dst2, width, src_rows, dst_rows);
            return;
        }
        let mut sc = self.scratch();
        let (sr, dr) = (src_rows.view(), dst_rows.mirrored());
        let op = "copy_rows2";
        must(self.gpu.copy_rows2(
            &src.bf16(op),
            &mut dst.bf16(op),
            &src2.bf16(op),
            &mut dst2.bf16(op),
            width,
            &sr,
            &dr,
            &mut sc.flag,
        ));
    }
    fn swiglu_fwd(&self, gu: DRef<'_>, cols: usize, out: DMut<'_>) {
        must(self.gpu.swiglu_fwd_pair(&gu.bf16("swiglu_fwd"), cols, &mut out.bf16("swiglu_fwd")));
    }
    fn swiglu_bwd(&self, dout: DRef<'_>, gu: DRef<'_>, cols: usize, dgu: DMut<'_>) {
        let op = "swiglu_bwd";
        must(self.gpu.swiglu_bwd_pair(&dout.bf16(op), &gu.bf16(op), cols, &mut dgu.bf16(op)));
    }

    fn logprob_fwd(
        &self,
        logits: DRef<'_>,
        targets: IdxRef<'_>,
        vocab: usize,
        inv_temp: f32,
        logp: DMut<'_>,
        lse: DMut<'_>,
        entropy: Option<DMut<'_>>,
    ) {
        let op = "logprob_fwd";
        let mut ent: Option<CudaViewMut<'_, f32>> = entropy.map(|e| e.f32(op));
        let (t, lp, ls) = (&targets.view(), &mut logp.f32(op), &mut lse.f32(op));
        must(match logits.dtype() {
            DType::Bf16 => self.gpu.logprob_fwd(&logits.bf16(op), t, vocab, inv_temp, lp, ls, ent.as_mut()),
            DType::F32 => self.gpu.logprob_fwd(&logits.f32(op), t, vocab, inv_temp, lp, ls, ent.as_mut()),
        });
    }
    fn logprob_bwd(
        &self,
        logits: DMut<'_>,
        targets: IdxRef<'_>,
        vocab: usize,
        inv_temp: f32,
        lse: DRef<'_>,
        coef: DRef<'_>,
        entropy: Option<(DRef<'_>, DRef<'_>)>,
    ) {
        let op = "logprob_bwd";
        let ent: Option<(CudaView<'_, f32>, CudaView<'_, f32>)> = entropy.map(|(c, h)| (c.f32(op), h.f32(op)));
        let (t, ls, c, e) = (&targets.view(), &lse.f32(op), &coef.f32(op), ent.as_ref().map(|(c, h)| (c, h)));
        must(match logits.dtype() {
            DType::Bf16 => self.gpu.logprob_bwd(&mut logits.bf16(op), t, vocab, inv_temp, ls, c, e),
            DType::F32 => self.gpu.logprob_bwd(&mut logits.f32(op), t, vocab, inv_temp, ls, c, e),
        });
    }

    /// kernels/distill.cu: one block per row, the gradient written in place.
    fn policy_loss(
        &self,
        cfg: &PolicyConfig,
        x: &PolicyInputs<'_, Self>,
        counts: &StepCounts,
        correct_tokens: usize,
        coef: DMut<'_>,
        ent_coef: Option<DMut<'_>>,
    ) -> (f64, PolicyStats) {
        let op = "policy_loss";
        let views = PolicyViews {
            logp: x.logp.f32(op),
            old_logp: x.old_logp.f32(op),
            ref_logp: x.ref_logp.map(|v| v.f32(op)),
            sampler_logp: x.sampler_logp.map(|v| v.f32(op)),
            entropy: x.entropy.map(|v| v.f32(op)),
        };
        let cols = crate::backend::cuda::params::ENGINE_POLICY_STATS as usize;
        let mut guard = self.scratch();
        let s = &mut *guard;
        let (n, seqs) = self.put_layout(op, s, x.mask, x.cu_seqlens);
        assert!(x.advantages.len() == seqs && x.rewards.len() == seqs, "{op}: one advantage and reward per sequence");
        let seq_in: Vec<f32> = x.advantages.iter().chain(x.rewards).copied().collect();
        grow(&self.gpu, &mut s.pseq, (2 * seqs).max(1));
        grow(&self.gpu, &mut s.pout, (seqs * cols).max(1));
        let mut sv = s.pseq.slice_mut(0..2 * seqs);
        if seqs > 0 {
            must(self.gpu.stream.memcpy_htod(&seq_in, &mut sv).map_err(|e| anyhow!("{op}: {e}")));
        }
        let (mv, cv) = (s.pmask.slice(0..n), s.pcu.slice(0..seqs + 1));
        let mut ov = s.pout.slice_mut(0..seqs * cols);
        let k = cfg.kernel_settings(counts, correct_tokens);
        let mut ev = ent_coef.filter(|_| cfg.entropy_coef != 0.0).map(|e| e.f32(op));
        must(self.gpu.policy_coefs(&k, &views, &mv, &cv, &sv, &mut coef.f32(op), ev.as_mut(), &mut ov));
        let rows = self.read_rows(op, &ov);
        drop(guard);
        must(self.check());
        crate::loss::policy::stats_from_rows(&rows)
    }

    #[allow(clippy::too_many_arguments)]
    fn dpo_loss(
        &self,
        cfg: &DpoConfig,
        logp: DRef<'_>,
        ref_logp: DRef<'_>,
        mask: &[bool],
        cu_seqlens: &[u32],
        pairs_in_step: usize,
        coef: DMut<'_>,
    ) -> (f64, DpoStats) {
        let op = "dpo_loss";
        let mut guard = self.scratch();
        let s = &mut *guard;
        let (n, seqs) = self.put_layout(op, s, mask, cu_seqlens);
        let pairs = seqs / 2;
        grow(&self.gpu, &mut s.pout, (4 * pairs).max(1));
        let (mv, cv) = (s.pmask.slice(0..n), s.pcu.slice(0..seqs + 1));
        let mut ov = s.pout.slice_mut(0..4 * pairs);
        let k = cfg.kernel_settings(pairs_in_step);
        must(self.gpu.dpo_coefs(&k, &logp.f32(op), &ref_logp.f32(op), &mv, &cv, &mut coef.f32(op), &mut ov));
        let rows = self.read_rows(op, &ov);
        drop(guard);
        must(self.check());
        crate::loss::dpo::dpo_stats_from_rows(&rows)
    }

    fn sample(&self, logits: DRef<'_>, vocab: usize, params: &SamplingParams, draws: &[Draw]) -> Vec<Sampled> {
        if draws.is_empty() {
            return Vec::new();
        }
        self.sample_stage(draws);
        self.sample_launch(logits, vocab, params, draws.len());
        self.sample_collect(logits, vocab, params, draws)
    }

    /// The draws into the sampler's scratch (grown to `rows` first: a
    /// graph captured before a growth is stale, see [`Backend::graph_epoch`]).
    fn sample_stage(&self, draws: &[Draw]) {
        let rows = draws.len();
        let host: Vec<u64> = draws.iter().flat_map(|d| [d.stream.key(), d.step]).collect();
        let mut guard = self.scratch();
        let s = &mut *guard;
        grow(&self.gpu, &mut s.draws, 2 * rows);
        grow(&self.gpu, &mut s.tokens, rows);
        grow(&self.gpu, &mut s.logprobs, rows);
        let mut dv = s.draws.slice_mut(0..2 * rows);
        must(self.gpu.stream.memcpy_htod(&host, &mut dv).map_err(|e| anyhow!("sample: draws: {e}")));
    }
    /// Launches only: rows `0..rows` of `logits` with the staged draws.
    fn sample_launch(&self, logits: DRef<'_>, vocab: usize, params: &SamplingParams, rows: usize) {
        let mut guard = self.scratch();
        let s = &mut *guard;
        assert!(s.tokens.len() >= rows && s.draws.len() >= 2 * rows, "sample_launch: {rows} rows not staged");
        let dv = s.draws.slice(0..2 * rows);
        let (mut tv, mut lv) = (s.tokens.slice_mut(0..rows), s.logprobs.slice_mut(0..rows));
        must(self.gpu.sample(&logits.bf16("sample"), vocab, params, &dv, &mut tv, &mut lv));
    }
    /// The first `draws.len()` rows of the last launch's tokens (waits).
    fn sample_collect(
        &self,
        _logits: DRef<'_>,
        _vocab: usize,
        _params: &SamplingParams,
        draws: &[Draw],
    ) -> Vec<Sampled> {
        let rows = draws.len();
        if rows == 0 {
            return Vec::new();
        }
        let guard = self.scratch();
        let stream = &self.gpu.stream;
        let tokens = must(stream.clone_dtoh(&guard.tokens.slice(0..rows)).map_err(|e| anyhow!("sample: tokens: {e}")));
        let logprobs = must(
            stream.clone_dtoh(&guard.logprobs.slice(0..rows)).map_err(|e| anyhow!("sample: log-probabilities: {e}")),
        );
        drop(guard);
        must(self.check());
        tokens.into_iter().zip(logprobs).map(|(token, logprob)| Sampled { token, logprob }).collect()
    }

    fn distill(
        &self,
        student: DMut<'_>,
        teacher: DRef<'_>,
        vocab: usize,
        mode: DistillMode,
        inv_temp: f32,
        weight: DRef<'_>,
        loss: DMut<'_>,
    ) {
        let op = "distill";
        must(self.gpu.distill(
            &mut student.bf16(op),
            &teacher.bf16(op),
            vocab,
            mode,
            inv_temp,
            &weight.f32(op),
            &mut loss.f32(op),
        ));
    }
}
