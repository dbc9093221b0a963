//! The kernel benchmarks of the GPU check (DESIGN.md §7): every kernel at
//! the shapes of a Qwen2.5-0.5B-like layer (hidden 896, intermediate 4864,
//! 14 query / 2 key-value heads of 64, 4096 tokens), AdamW over 100M
//! parameters, the cuBLASLt products of a layer, the simple attention, and
//! the loss kernels on 16,384 tokens of Qwen's 151,936-word vocabulary (5 GB
//! of bf16 logits a buffer), each timed with CUDA events and set against the card's device-to-device
//! copy bandwidth (memory-bound kernels) or given in TFLOP/s (products,
//! attention). `tools/gpu_bench_torch.py` times the same ops in PyTorch
//! under the same kernel names.
//!
//! Ignored: run with `cuda-tests --ignored bench_kernels --nocapture`.
//! Environment:
//! - `ENGINE_BENCH_OUT`: a file for the results as JSON lines (one object
//!   per kernel: kernel, shape, ms, gb_s or tflops, copy_fraction, ...);
//!   without it they are only printed.
//! - `ENGINE_BENCH_SKIP`: sections to skip, comma-separated: copy,
//!   elementwise, cast, rmsnorm, rope, swiglu, embedding, rows, adamw, gemm,
//!   attention, decode, loss, sample; and `hopper`: the rows of the Hopper
//!   kernels (here and in the train-step bench).
//! - `ENGINE_BENCH_TARGET_MS` (default 100): GPU time per timed loop.
//! - `ENGINE_BENCH_BUDGET_S` (default 80): no section starts after this
//!   many seconds.
//!
//! Timing: one warm-up call, one timed call to size the loop, then `n`
//! calls (about `ENGINE_BENCH_TARGET_MS` of GPU time, at most 1000) between
//! two events. Before the loop the stream is kept busy with device-to-device
//! copies long enough for the host to queue all `n` calls (at most 50 ms;
//! `n` is cut to what the host queues in that time), so the events time the
//! GPU's work rather than the host's launch rate. Calls that wait for the
//! stream themselves (marked `syncs`: they read a result back or copy from
//! the host) get no such head start: their time includes the host's part.
//! `host_ms` is the host's time to issue one call. Bytes count each
//! buffer's reads and writes once (the least traffic the op can make); GB/s
//! are 10⁹ bytes/s.

use super::util::{gpu, random_bf16};
use anyhow::{anyhow, Context, Result};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaSlice, DeviceRepr, ValidAsZeroBits};
use engine::backend::cuda::{Bf16, DecodeKernel, DistillKernel, Gpu};
use engine::backend::{AdamWStep, AttnShape, MatShape};
use engine::loss::DistillMode;
use std::io::Write;
use std::time::{Duration, Instant};

const HIDDEN: usize = 896;
const INTER: usize = 4864;
const HEADS: usize = 14;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 64;
const TOKENS: usize = 4096;
const SEQ: usize = 1024;
const VOCAB: usize = 151_936;
const PARAMS: usize = 100_000_000;
/// Tokens (rows of `VOCAB` logits) of the loss kernels.
const LOSS_ROWS: usize = 16_384;
/// Elements of the bf16 buffers of the elementwise kernels and casts (a
/// gradient-sized buffer).
const ELEMS: usize = 100_000_000;
const COPY_BYTES: usize = 1 << 30;
/// Most calls in one timed loop (all are queued before the GPU starts them).
const MAX_N: usize = 1000;
/// The longest head start (ms of copies) before a timed loop; loops are cut
/// to what the host can queue in that time.
const HEAD_START_MS: f64 = 50.0;

/// One result row.
struct Row {
    kernel: String,
    shape: String,
    ms: f64,
    n: usize,
    host_ms: f64,
    syncs: bool,
    /// Bytes moved (memory-bound kernels) or floating-point operations.
    work: Work,
}

#[derive(Clone, Copy)]
enum Work {
    Bytes(f64),
    Flops(f64),
}

struct Bench<'a> {
    g: &'a Gpu,
    out: Option<std::fs::File>,
    skip: Vec<String>,
    start: Instant,
    budget: Duration,
    target_ms: f64,
    /// GB/s of the 1 GiB device-to-device copy, once measured.
    copy_gb_s: Option<f64>,
    /// Two buffers whose copy keeps the stream busy before a timed loop.
    blocker: (CudaSlice<u8>, CudaSlice<u8>),
    blocker_ms: f64,
    rows: usize,
    errors: usize,
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

/// Host data of `n` bf16 values in [-1, 1): a 1M-value random pattern, repeated.
fn pattern(n: usize, seed: u64) -> Vec<Bf16> {
    let p: Vec<Bf16> = random_bf16(n.min(1 << 20), seed).into_iter().map(Bf16::from_f32).collect();
    p.iter().copied().cycle().take(n).collect()
}

impl<'a> Bench<'a> {
    fn event(&self) -> Result<CudaEvent> {
        self.g.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(|e| anyhow!("new_event: {e}"))
    }

    fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, n: usize) -> Result<CudaSlice<T>> {
        self.g.stream.alloc_zeros::<T>(n).map_err(|e| anyhow!("alloc of {n} elements: {e}"))
    }

    fn random(&self, n: usize, seed: u64) -> Result<CudaSlice<Bf16>> {
        self.g.stream.clone_htod(&pattern(n, seed)).map_err(|e| anyhow!("upload of {n} bf16: {e}"))
    }

    /// `n` bf16 values as [`pattern`] has them, its 1M values uploaded once
    /// and tiled on the device (a host copy of gigabytes takes seconds).
    fn random_tiled(&self, n: usize, seed: u64) -> Result<CudaSlice<Bf16>> {
        let p = pattern(n.min(1 << 20), seed);
        let mut x: CudaSlice<Bf16> = self.zeros(n)?;
        let s = &self.g.stream;
        s.memcpy_htod(&p, &mut x.slice_mut(0..p.len())).map_err(|e| anyhow!("upload of {} bf16: {e}", p.len()))?;
        let mut have = p.len();
        while have < n {
            let k = have.min(n - have);
            let (done, mut rest) = x.split_at_mut(have);
            s.memcpy_dtod(&done.slice(0..k), &mut rest.slice_mut(0..k)).map_err(|e| anyhow!("tiling: {e}"))?;
            have += k;
        }
        Ok(x)
    }

    fn random_f32(&self, n: usize, seed: u64) -> Result<CudaSlice<f32>> {
        let h: Vec<f32> = pattern(n, seed).iter().map(|v| v.to_f32()).collect();
        self.g.stream.clone_htod(&h).map_err(|e| anyhow!("upload of {n} f32: {e}"))
    }

    fn u32s(&self, h: &[u32]) -> Result<CudaSlice<u32>> {
        self.g.stream.clone_htod(h).map_err(|e| anyhow!("upload of {} u32: {e}", h.len()))
    }

    /// Milliseconds per call of `f` and the number of calls timed.
    fn time(&mut self, syncs: bool, max_n: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, usize, f64)> {
        f().context("warm-up")?;
        self.g.sync().context("warm-up")?;
        let (e0, e1) = (self.event()?, self.event()?);
        let t = Instant::now();
        e0.record(&self.g.stream).map_err(|e| anyhow!("record: {e}"))?;
        f()?;
        let host_ms = t.elapsed().as_secs_f64() * 1e3;
        e1.record(&self.g.stream).map_err(|e| anyhow!("record: {e}"))?;
        let one = e0.elapsed_ms(&e1).map_err(|e| anyhow!("elapsed: {e}"))? as f64;
        let mut n = ((self.target_ms / one.max(1e-4)).ceil() as usize).clamp(1, max_n.max(1));
        if !syncs {
            // Queue no more calls than the head start covers (with a margin).
            let fit = (HEAD_START_MS / (1.5 * host_ms).max(1e-4)).floor() as usize;
            n = n.min(fit.max(3));
            let need = 1.5 * n as f64 * host_ms;
            let blockers = (need.min(HEAD_START_MS) / self.blocker_ms.max(1e-3)).ceil() as usize + 1;
            for _ in 0..blockers {
                self.g.stream.memcpy_dtod(&self.blocker.0, &mut self.blocker.1).map_err(|e| anyhow!("blocker: {e}"))?;
            }
        }
        let t = Instant::now();
        e0.record(&self.g.stream).map_err(|e| anyhow!("record: {e}"))?;
        for _ in 0..n {
            f()?;
        }
        e1.record(&self.g.stream).map_err(|e| anyhow!("record: {e}"))?;
        let host_ms = host_ms.min(t.elapsed().as_secs_f64() * 1e3 / n as f64);
        let ms = e0.elapsed_ms(&e1).map_err(|e| anyhow!("elapsed: {e}"))? as f64 / n as f64;
        self.g.sync()?;
        Ok((ms, n, host_ms))
    }

    /// Times `f` and records the row.
    fn run(
        &mut self,
        kernel: &str,
        shape: &str,
        work: Work,
        syncs: bool,
        max_n: usize,
        f: impl FnMut() -> Result<()>,
    ) -> Result<()> {
        let (ms, n, host_ms) = self.time(syncs, max_n, f).with_context(|| kernel.to_string())?;
        self.emit(Row { kernel: kernel.into(), shape: shape.into(), ms, n, host_ms, syncs, work })
    }

    fn emit(&mut self, r: Row) -> Result<()> {
        let mut j = serde_json::json!({ "kernel": r.kernel, "shape": r.shape, "ms": r.ms });
        let rate = match r.work {
            Work::Bytes(b) => {
                let gb_s = b / (r.ms * 1e-3) / 1e9;
                let frac = self.copy_gb_s.map(|c| gb_s / c);
                j["gb_s"] = gb_s.into();
                j["copy_fraction"] = frac.into();
                j["bytes"] = b.into();
                format!("{gb_s:9.1} GB/s {}", frac.map_or("     -".into(), |f| format!("{:5.1}%", 100.0 * f)))
            }
            Work::Flops(fl) => {
                let tf = fl / (r.ms * 1e-3) / 1e12;
                j["tflops"] = tf.into();
                j["copy_fraction"] = serde_json::Value::Null;
                j["flops"] = fl.into();
                format!("{tf:9.1} TFLOP/s      ")
            }
        };
        j["n"] = r.n.into();
        j["host_ms"] = r.host_ms.into();
        j["syncs"] = r.syncs.into();
        j["source"] = "engine".into();
        let note = if r.syncs {
            " (waits for the stream)"
        } else if r.host_ms >= 0.9 * r.ms {
            " (launch-bound?)"
        } else {
            ""
        };
        println!("{:24} {:28} {:10.4} ms {rate} n={}{note}", r.kernel, r.shape, r.ms, r.n);
        self.write(&j)?;
        self.rows += 1;
        Ok(())
    }

    fn write(&mut self, j: &serde_json::Value) -> Result<()> {
        if let Some(f) = &mut self.out {
            writeln!(f, "{j}").context("ENGINE_BENCH_OUT")?;
            f.flush().context("ENGINE_BENCH_OUT")?;
        }
        Ok(())
    }

    /// Runs section `name` unless it is skipped or the time is up; an error
    /// is printed and recorded, and the next section runs.
    fn section(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<()>) {
        if self.skip.iter().any(|s| s == name) {
            println!("-- {name}: skipped (ENGINE_BENCH_SKIP)");
            return;
        }
        if self.start.elapsed() > self.budget {
            println!("-- {name}: skipped, past the budget of {:?} (ENGINE_BENCH_BUDGET_S)", self.budget);
            let _ = self.write(&serde_json::json!({ "kernel": name, "section": name, "error": "skipped: out of time", "source": "engine" }));
            return;
        }
        let t = Instant::now();
        println!("-- {name}");
        if let Err(e) = f(self) {
            println!("-- {name}: ERROR {e:#}");
            self.errors += 1;
            let _ = self.write(
                &serde_json::json!({ "kernel": name, "section": name, "error": format!("{e:#}"), "source": "engine" }),
            );
        }
        println!("-- {name}: {:.1} s", t.elapsed().as_secs_f64());
    }
}

fn bytes_bf16(n: usize) -> f64 {
    2.0 * n as f64
}

fn copy(b: &mut Bench) -> Result<()> {
    let src: CudaSlice<u8> = b.zeros(COPY_BYTES)?;
    let mut dst: CudaSlice<u8> = b.zeros(COPY_BYTES)?;
    let (ms, n, host_ms) = {
        let g = b.g;
        b.time(false, MAX_N, || g.stream.memcpy_dtod(&src, &mut dst).map_err(|e| anyhow!("memcpy_dtod: {e}")))?
    };
    let bytes = 2.0 * COPY_BYTES as f64;
    b.copy_gb_s = Some(bytes / (ms * 1e-3) / 1e9);
    b.emit(Row {
        kernel: "copy_dtod".into(),
        shape: "1GiB".into(),
        ms,
        n,
        host_ms,
        syncs: false,
        work: Work::Bytes(bytes),
    })?;
    drop((src, dst));
    // The same gigabyte through the engine's copy kernel.
    let n = COPY_BYTES / 2;
    let src: CudaSlice<Bf16> = b.zeros(n)?;
    let mut dst: CudaSlice<Bf16> = b.zeros(n)?;
    let g = b.g;
    b.run("copy_bf16", "1GiB", Work::Bytes(2.0 * bytes_bf16(n)), false, MAX_N, || g.copy(&src, &mut dst))
}

fn elementwise(b: &mut Bench) -> Result<()> {
    let g = b.g;
    let n = ELEMS;
    let shape = format!("{n}");
    let mut x = b.random(n, 1)?;
    let y = b.random(n, 2)?;
    b.run("fill_bf16", &shape, Work::Bytes(bytes_bf16(n)), false, MAX_N, || g.fill(&mut x, 0.5))?;
    b.run("add_assign_bf16", &shape, Work::Bytes(3.0 * bytes_bf16(n)), false, MAX_N, || g.add_assign(&mut x, &y))?;
    // A factor of 1 keeps the values finite over many calls.
    b.run("scale_bf16", &shape, Work::Bytes(2.0 * bytes_bf16(n)), false, MAX_N, || g.scale(&mut x, 1.0))?;
    let mut scratch: CudaSlice<f64> = b.zeros(Gpu::sum_squares_scratch_len(n))?;
    b.run("sum_squares", &shape, Work::Bytes(bytes_bf16(n)), true, MAX_N, || {
        g.sum_squares(&y, &mut scratch).map(|_| ())
    })
}

fn cast(b: &mut Bench) -> Result<()> {
    let g = b.g;
    let n = ELEMS;
    let shape = format!("{n}");
    let src32 = b.random_f32(n, 3)?;
    let mut dst16: CudaSlice<Bf16> = b.zeros(n)?;
    let bytes = 6.0 * n as f64;
    b.run("cast_f32_bf16", &shape, Work::Bytes(bytes), false, MAX_N, || g.cast_to_bf16(&src32, &mut dst16))?;
    drop(src32);
    let mut dst32: CudaSlice<f32> = b.zeros(n)?;
    b.run("cast_bf16_f32", &shape, Work::Bytes(bytes), false, MAX_N, || g.cast_to_f32(&dst16, &mut dst32))
}

fn rmsnorm(b: &mut Bench) -> Result<()> {
    let g = b.g;
    let (rows, dim) = (TOKENS, HIDDEN);
    let n = rows * dim;
    let shape = format!("{rows}x{dim}");
    let x = b.random(n, 4)?;
    let r = b.random(n, 5)?;
    let w = b.random(dim, 6)?;
    let mut h: CudaSlice<Bf16> = b.zeros(n)?;
    let mut y: CudaSlice<Bf16> = b.zeros(n)?;
    let mut rstd: CudaSlice<f32> = b.zeros(rows)?;
    // Reads x, r, w; writes h, y, rstd.
    let fwd = 4.0 * bytes_bf16(n) + bytes_bf16(dim) + 4.0 * rows as f64;
    b.run("rmsnorm_fwd", &shape, Work::Bytes(fwd), false, MAX_N, || {
        g.rmsnorm_fwd(&x, Some((&r, &mut h)), &w, 1e-6, &mut y, &mut rstd)
    })?;
    let blocks = rows.div_ceil(32);
    let mut scratch: CudaSlice<f32> = b.zeros(blocks * dim)?;
    let mut dx: CudaSlice<Bf16> = b.zeros(n)?;
    let mut dw: CudaSlice<Bf16> = b.zeros(dim)?;
    // Reads dy, x, w, rstd; writes dx; the partial sums out and back; dw read and written.
    let bwd =
        3.0 * bytes_bf16(n) + bytes_bf16(dim) + 4.0 * rows as f64 + 8.0 * (blocks * dim) as f64 + 2.0 * bytes_bf16(dim);
    b.run("rmsnorm_bwd", &shape, Work::Bytes(bwd), false, MAX_N, || {
        g.rmsnorm_bwd(&y, &h, &w, &rstd, &mut dx, false, &mut dw, &mut scratch)
    })
}

fn rope(b: &mut Bench) -> Result<()> {
    let g = b.g;
    let half = HEAD_DIM / 2;
    let n = TOKENS * HEADS * HEAD_DIM;
    let shape = format!("{TOKENS}x{HEADS}x{HEAD_DIM}");
    let inv: Vec<f32> = (0..half).map(|i| 1.0 / 1_000_000f64.powf(2.0 * i as f64 / HEAD_DIM as f64) as f32).collect();
    let (cos, sin) = engine::model::rope::tables_from(&inv, SEQ);
    let cd = b.g.stream.clone_htod(&cos).map_err(|e| anyhow!("{e}"))?;
    let sd = b.g.stream.clone_htod(&sin).map_err(|e| anyhow!("{e}"))?;
    let pos: Vec<u32> = (0..TOKENS).map(|t| (t % SEQ) as u32).collect();
    let posd = b.u32s(&pos)?;
    let mut bad: CudaSlice<u32> = b.zeros(1)?;
    let mut x = b.random(n, 7)?;
    // x read and written; positions; one row of cos and of sin per token.
    let bytes = 2.0 * bytes_bf16(n) + 4.0 * TOKENS as f64 + 2.0 * 4.0 * (TOKENS * half) as f64;
    for (kernel, inverse) in [("rope_fwd", false), ("rope_bwd", true)] {
        b.run(kernel, &shape, Work::Bytes(bytes), false, MAX_N, || {
            g.rope(&mut x, &posd, HEADS, HEAD_DIM, &cd, &sd, inverse, &mut bad)
        })?;
    }
    // The fused q/k/v rows of the 0.5B layer split into q, k (rotated) and v,
    // and joined back: the rows read and q, k, v written (or the reverse).
    let s = engine::backend::QkvShape { q: HEADS, kv: KV_HEADS, head_dim: HEAD_DIM };
    let (nq, nk) = (TOKENS * HEADS * HEAD_DIM, TOKENS * KV_HEADS * HEAD_DIM);
    let mut fused = b.random(TOKENS * s.row(), 9)?;
    let (mut q, mut k, mut v) = (b.random(nq, 10)?, b.random(nk, 11)?, b.random(nk, 12)?);
    let (pv, cv, sv) = (posd.as_view(), cd.as_view(), sd.as_view());
    let t = Some(engine::backend::cuda::RopeTables { pos: &pv, cos: &cv, sin: &sv });
    use engine::backend::cuda::SplitOn;
    let shape = format!("{TOKENS}x({HEADS}+2x{KV_HEADS})x{HEAD_DIM}");
    let bytes = 2.0 * bytes_bf16(TOKENS * s.row()) + 4.0 * TOKENS as f64 + 2.0 * 4.0 * (TOKENS * half) as f64;
    b.run("qkv_split", &shape, Work::Bytes(bytes), false, MAX_N, || {
        g.qkv_split(true, &fused, s, &mut q, &mut k, &mut v, SplitOn { rope: t, ..SplitOn::default() }, &mut bad)
    })?;
    b.run("qkv_join", &shape, Work::Bytes(bytes), false, MAX_N, || {
        g.qkv_join(true, &q, &k, &v, s, &mut fused, t, &mut bad)
    })?;
    match g.take_bad_index(&mut bad)? {
        None => Ok(()),
        Some(i) => Err(anyhow!("rope flagged position {i}")),
    }
}

fn swiglu(b: &mut Bench) -> Result<()> {
    let g = b.g;
    let n = TOKENS * INTER;
    let shape = format!("{TOKENS}x{INTER}");
    let gate = b.random(n, 8)?;
    let up = b.random(n, 9)?;
    let mut out: CudaSlice<Bf16> = b.zeros(n)?;
    b.run("swiglu_fwd", &shape, Work::Bytes(3.0 * bytes_bf16(n)), false, MAX_N, || g.swiglu_fwd(&gate, &up, &mut out))?;
    let mut dg: CudaSlice<Bf16> = b.zeros(n)?;
    let mut du: CudaSlice<Bf16> = b.zeros(n)?;
    b.run("swiglu_bwd", &shape, Work::Bytes(5.0 * bytes_bf16(n)), false, MAX_N, || {
        g.swiglu_bwd(&out, &gate, &up, &mut dg, &mut du)
    })?;
    // The model's layout: gate and up as the halves of each row of one
    // product's output (the same bytes).
    let gu = b.random(2 * n, 10)?;
    let mut dgu: CudaSlice<Bf16> = b.zeros(2 * n)?;
    b.run("swiglu_fwd_pair", &shape, Work::Bytes(3.0 * bytes_bf16(n)), false, MAX_N, || {
        g.swiglu_fwd_pair(&gu, INTER, &mut out)
    })?;
    b.run("swiglu_bwd_pair", &shape, Work::Bytes(5.0 * bytes_bf16(n)), false, MAX_N, || {
        g.swiglu_bwd_pair(&out, &gu, INTER, &mut dgu)
    })
}

/// Token ids as a batch of text has them: many repeats of common ids.
fn token_ids(n: usize) -> Vec<u32> {
    let mut s = 0x2545F4914F6CDD1Du64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // Squaring a uniform number favours small ids (a crude Zipf).
            let u = (s >> 11) as f64 / (1u64 << 53) as f64;
            ((u * u * VOCAB as f64) as usize).min(VOCAB - 1) as u32
        })
        .collect()
}

fn embedding(b: &mut Bench) -> Result<()> {
    let g = b.g;
    let dim = HIDDEN;
    let shape = format!("{TOKENS}x{dim} of {VOCAB}");
    let ids = token_ids(TOKENS);
    let distinct = {
        let mut v = ids.clone();
        v.sort_unstable();
        v.dedup();
        v.len()
    };
    let idsd = b.u32s(&ids)?;
    let table = b.random(VOCAB * dim, 10)?;
    let mut out: CudaSlice<Bf16> = b.zeros(TOKENS * dim)?;
    let mut err: CudaSlice<u32> = b.zeros(1)?;
    // ids; one table row read and one output row written per token.
    let fwd = 4.0 * TOKENS as f64 + 2.0 * bytes_bf16(TOKENS * dim);
    b.run("embedding_fwd", &shape, Work::Bytes(fwd), false, MAX_N, || {
        g.embedding_fwd(&table, &idsd, dim, &mut out, &mut err)
    })?;
    drop(table);
    let mut dtable: CudaSlice<Bf16> = b.zeros(VOCAB * dim)?;
    let mut plan: CudaSlice<u32> = b.zeros(Gpu::embedding_bwd_plan_len(TOKENS))?;
    // dout read; the plan read; each distinct id's row read and written.
    let bwd = bytes_bf16(TOKENS * dim) + 4.0 * (TOKENS + 2 * distinct + 1) as f64 + 2.0 * bytes_bf16(distinct * dim);
    // Each call builds its plan on the host and uploads it (which waits for the stream).
    b.run("embedding_bwd", &shape, Work::Bytes(bwd), true, 200, || {
        g.embedding_bwd(&out, &ids, dim, &mut dtable, &mut plan, &mut err)
    })?;
    g.embedding_check(&mut err)
}

fn rows(b: &mut Bench) -> Result<()> {
    let g = b.g;
    // Keys of one layer into a KV cache of twice as many rows.
    let width = KV_HEADS * HEAD_DIM;
    let shape = format!("{TOKENS} rows of {width}");
    let src = b.random(TOKENS * width, 11)?;
    let mut cache: CudaSlice<Bf16> = b.zeros(2 * TOKENS * width)?;
    let src_rows: Vec<u32> = (0..TOKENS as u32).collect();
    let dst_rows: Vec<u32> = (0..TOKENS as u32).map(|t| (t * 2 + 1) % (2 * TOKENS as u32)).collect();
    let (sr, dr) = (b.u32s(&src_rows)?, b.u32s(&dst_rows)?);
    let mut bad: CudaSlice<u32> = b.zeros(1)?;
    let bytes = 2.0 * bytes_bf16(TOKENS * width) + 8.0 * TOKENS as f64;
    b.run("copy_rows", &shape, Work::Bytes(bytes), false, MAX_N, || {
        g.copy_rows(&src, &mut cache, width, &sr, &dr, &mut bad)
    })?;
    if let Some(i) = g.take_bad_index(&mut bad)? {
        return Err(anyhow!("copy_rows flagged row {i}"));
    }
    // The bias gradient of q: dy [tokens, hidden] summed into db.
    let dy = b.random(TOKENS * HIDDEN, 12)?;
    let mut db: CudaSlice<Bf16> = b.zeros(HIDDEN)?;
    let bytes = bytes_bf16(TOKENS * HIDDEN) + 2.0 * bytes_bf16(HIDDEN);
    b.run("bias_grad", &format!("{TOKENS}x{HIDDEN}"), Work::Bytes(bytes), false, MAX_N, || g.bias_grad(&dy, &mut db))
}

fn adamw(b: &mut Bench) -> Result<()> {
    let g = b.g;
    let n = PARAMS;
    let mut p32 = b.random_f32(n, 13)?;
    let mut p16: CudaSlice<Bf16> = b.zeros(n)?;
    let grad = b.random(n, 14)?;
    let mut m: CudaSlice<f32> = b.zeros(n)?;
    let mut v: CudaSlice<f32> = b.zeros(n)?;
    let h = AdamWStep { lr: 1e-5, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, step: 10 };
    // p32, m, v read and written (fp32), g read and p16 written (bf16).
    let bytes = 28.0 * n as f64;
    b.run("adamw", &format!("{n}"), Work::Bytes(bytes), false, MAX_N, || {
        g.adamw(&mut p32, &mut p16, &grad, &mut m, &mut v, &h, 1.0)
    })
}

fn gemm(b: &mut Bench) -> Result<()> {
    let g = b.g;
    let m = TOKENS;
    let q = HEADS * HEAD_DIM;
    let kv = KV_HEADS * HEAD_DIM;
    // The products of one layer, as src/model/transformer.rs makes them.
    for (name, n, k, bias) in [
        ("q", q, HIDDEN, true),
        ("kv", kv, HIDDEN, true),
        ("o", HIDDEN, q, false),
        ("gate_up", INTER, HIDDEN, false),
        ("down", HIDDEN, INTER, false),
    ] {
        let s = MatShape { m, n, k };
        let shape = format!("m{m} n{n} k{k}");
        let flops = 2.0 * (m * n * k) as f64;
        let x = b.random(m * k, 20)?;
        let w = b.random(n * k, 21)?;
        let bv = if bias { Some(b.random(n, 22)?) } else { None };
        let dy = b.random(m * n, 23)?;
        let mut y: CudaSlice<Bf16> = b.zeros(m * n)?;
        let mut dx: CudaSlice<Bf16> = b.zeros(m * k)?;
        let mut dw: CudaSlice<Bf16> = b.zeros(n * k)?;
        b.run(&format!("gemm_{name}_fwd"), &shape, Work::Flops(flops), false, MAX_N, || {
            g.matmul(s, &x, &w, bv.as_ref(), &mut y, false)
        })?;
        b.run(&format!("gemm_{name}_dx"), &shape, Work::Flops(flops), false, MAX_N, || {
            g.matmul_dx(s, &dy, &w, &mut dx, false)
        })?;
        b.run(&format!("gemm_{name}_dw"), &shape, Work::Flops(flops), false, MAX_N, || {
            g.matmul_dw(s, &dy, &x, &mut dw)
        })?;
    }
    Ok(())
}

/// Attention shapes: the layer's own (4 × 1024, 14 / 2 heads of 64), then
/// issue 8's and DESIGN.md §8's yardstick, 16k tokens per batch with 16
/// heads of 128 and of 64 at sequence lengths 1k, 2k, 4k and 8k; the name's
/// suffix says which (`_d{D}_s{S}`). The same list as
/// `tools/gpu_bench_torch.py`'s `attention_shapes`.
///
/// Time: the FLOPs of a call are 4·tokens·seq·heads·d / 2 forward (2.5× that
/// backward): 69 / 137 / 275 / 550 GFLOP forward at d128 and 1k / 2k / 4k /
/// 8k, half at d64. A row takes a warm-up call, a sizing call and a loop of
/// about `ENGINE_BENCH_TARGET_MS` (100 ms) of calls, capped at
/// [`attention_calls`]; at a worst case of 100 TFLOP/s the slowest call (the
/// d128 8k backward) is 14 ms, so a row stays under about 0.15 s, and the 9
/// shapes' 6–7 rows each (Hopper) under 10 s.
const ATTENTION_SHAPES: [(&str, usize, usize, usize, usize, usize); 9] = [
    ("", TOKENS, SEQ, HEADS, KV_HEADS, HEAD_DIM),
    ("_d128_s1k", 16384, 1024, 16, 16, 128),
    ("_d128_s2k", 16384, 2048, 16, 16, 128),
    ("_d128_s4k", 16384, 4096, 16, 16, 128),
    ("_d128_s8k", 16384, 8192, 16, 16, 128),
    ("_d64_s1k", 16384, 1024, 16, 16, 64),
    ("_d64_s2k", 16384, 2048, 16, 16, 64),
    ("_d64_s4k", 16384, 4096, 16, 16, 64),
    ("_d64_s8k", 16384, 8192, 16, 16, 64),
];

/// The most calls in one timed loop of an attention row: 20, and 10 at 8k
/// (a d128 8k call takes 3–14 ms, so 10 calls still give 30 ms or more of
/// GPU time between the events).
fn attention_calls(seq: usize) -> usize {
    if seq >= 8192 {
        10
    } else {
        20
    }
}

fn attention(b: &mut Bench) -> Result<()> {
    for (suffix, tokens, seq, heads, kv_heads, d) in ATTENTION_SHAPES {
        attention_at(b, suffix, tokens, seq, heads, kv_heads, d)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn attention_at(
    b: &mut Bench,
    suffix: &str,
    tokens: usize,
    seq: usize,
    heads: usize,
    kv_heads: usize,
    d: usize,
) -> Result<()> {
    let g = b.g;
    let s = AttnShape { n_heads: heads, n_kv_heads: kv_heads, head_dim: d, scale: 1.0 / (d as f32).sqrt() };
    let seqs = tokens / seq;
    let shape = format!("{seqs}x{seq} h{heads}/{kv_heads} d{d} causal");
    let cu: Vec<u32> = (0..=seqs).map(|i| (i * seq) as u32).collect();
    let cud = b.u32s(&cu)?;
    let (qn, kvn) = (tokens * heads * d, tokens * kv_heads * d);
    let q = b.random(qn, 30)?;
    let k = b.random(kvn, 31)?;
    let v = b.random(kvn, 32)?;
    let dout = b.random(qn, 33)?;
    let mut out: CudaSlice<Bf16> = b.zeros(qn)?;
    let mut lse: CudaSlice<f32> = b.zeros(tokens * heads)?;
    // Causal: half of the seq² scores; q·kᵀ and p·v, 2 flops a multiply-add.
    let fwd = 4.0 * (seqs * heads * d) as f64 * (seq * seq) as f64 / 2.0;
    // The backward's five products against the forward's two (FlashAttention's count).
    let bwd = 2.5 * fwd;
    // cu_seqlens with its host copy, as the backend passes it (no read-back;
    // the tile table is built on the first call and kept, as across layers).
    let cum = engine::backend::cuda::buf::Mirrored::new(cud.slice(..), &cu);
    // The Hopper kernels (compute capability 9.0), unless skipped ("hopper"
    // in ENGINE_BENCH_SKIP: the GPU check adds it when their tests failed,
    // so that a kernel that breaks the CUDA context costs no other rows).
    let hopper = g.cc == (9, 0) && !b.skip.iter().any(|s| s == "hopper");
    let calls = attention_calls(seq);
    b.run(&format!("attention_fwd{suffix}"), &shape, Work::Flops(fwd), false, calls, || {
        g.attention_fwd(&s, &cum, &q, &k, &v, &mut out, &mut lse)
    })?;
    let mut dq: CudaSlice<Bf16> = b.zeros(qn)?;
    let mut dk: CudaSlice<Bf16> = b.zeros(kvn)?;
    let mut dv: CudaSlice<Bf16> = b.zeros(kvn)?;
    b.run(&format!("attention_bwd{suffix}"), &shape, Work::Flops(bwd), false, calls, || {
        g.attention_bwd(&s, &cum, &q, &k, &v, &out, &lse, &dout, &mut dq, &mut dk, &mut dv)
    })?;
    {
        // The one-pass backward (not yet the dispatch's choice; mma.sync),
        // and on 9.0 its Hopper kernel (both head dims).
        use engine::backend::cuda::FlashVariant;
        let mut variants = vec![("fused", FlashVariant::Fused)];
        if hopper {
            variants.push(("wgmma", FlashVariant::Hopper));
        }
        for (name, variant) in variants {
            b.run(&format!("attention_bwd_{name}{suffix}"), &shape, Work::Flops(bwd), false, calls, || {
                g.flash_attention_bwd(variant, &s, &cum, &q, &k, &v, &out, &lse, &dout, &mut dq, &mut dk, &mut dv)
            })?;
        }
        if hopper {
            // The warp-specialised Hopper backward (TMA, a dq writer warp).
            b.run(&format!("attention_bwd_ws{suffix}"), &shape, Work::Flops(bwd), false, calls, || {
                g.flash_attention_bwd_ws(&s, &cum, &q, &k, &v, &out, &lse, &dout, &mut dq, &mut dk, &mut dv)
            })?;
        }
    }
    if hopper {
        // The Hopper forwards (not the dispatch's choice yet), last: nothing
        // after them reads out and lse.
        let desc = engine::backend::cuda::WGMMA_DESC;
        b.run(&format!("attention_fwd_wgmma{suffix}"), &shape, Work::Flops(fwd), false, calls, || {
            g.flash_attention_fwd_wgmma(desc, &s, &cum, &q, &k, &v, &mut out, &mut lse)
        })?;
        // The warp-specialised Hopper forward (TMA, a producer warpgroup).
        b.run(&format!("attention_fwd_ws{suffix}"), &shape, Work::Flops(fwd), false, calls, || {
            g.flash_attention_fwd_ws(0, &s, &cum, &q, &k, &v, &mut out, &mut lse)
        })?;
    }
    Ok(())
}

/// Decode attention at batch 64 on the 0.5B shape (14 / 2 heads of 64), every
/// sequence at `len` keys, each in its own cache slot: the grouped kernel
/// with its key splits (`decode_attn`) and without (`decode_attn_whole`: 128
/// blocks, one per (sequence, kv head)). Bytes: the keys and values read
/// once, q read and out written (issue 7's decode bound).
fn decode(b: &mut Bench) -> Result<()> {
    use engine::backend::DecodeSeq;
    let g = b.g;
    let (batch, heads, kv_heads, d) = (64usize, 14usize, 2usize, 64usize);
    let s = AttnShape { n_heads: heads, n_kv_heads: kv_heads, head_dim: d, scale: 1.0 / (d as f32).sqrt() };
    for len in [1024usize, 4096] {
        let plan: Vec<DecodeSeq> = (0..batch).map(|i| DecodeSeq::contiguous((i * len) as u32, len as u32)).collect();
        let words = DecodeSeq::encode(&plan);
        let plan_dev = b.u32s(&words)?;
        let plan_d = engine::backend::cuda::buf::Mirrored::new(plan_dev.slice(..), &words);
        let cache = batch * len * kv_heads * d;
        let (k, v) = (b.random(cache, 60)?, b.random(cache, 61)?);
        let q = b.random(batch * heads * d, 62)?;
        let mut out: CudaSlice<Bf16> = b.zeros(batch * heads * d)?;
        let bytes = Work::Bytes(bytes_bf16(2 * cache + 2 * batch * heads * d));
        let shape = format!("{batch}x{len} h{heads}/{kv_heads} d{d}");
        b.run("decode_attn", &shape, bytes, false, 200, || g.attention_decode(&s, &plan_d, &q, &k, &v, &mut out))?;
        b.run("decode_attn_whole", &shape, bytes, false, 200, || {
            g.attention_decode_with(DecodeKernel::GroupedSplit(usize::MAX), &s, &plan_d, &q, &k, &v, &mut out)
        })?;
    }
    Ok(())
}

/// Sampling one token per row for a decode step at batch 64 over Qwen's
/// vocabulary (issue 7): plain temperature, top-k 50, top-p 0.95. Bytes: the
/// bf16 logits read once (the kernel makes 3 passes for temperature, more for
/// the filters; over 100% of a pass means re-reads hit L2).
fn sample(b: &mut Bench) -> Result<()> {
    use engine::rollout::{SamplingParams, Stream};
    let g = b.g;
    let (rows, vocab) = (64usize, VOCAB);
    let shape = format!("{rows}x{vocab}");
    let z = b.random_tiled(rows * vocab, 50)?;
    let stream = Stream::new(1, 2, 3);
    let draws: Vec<u64> = (0..rows as u64).flat_map(|r| [stream.key(), r]).collect();
    let d = g.stream.clone_htod(&draws).map_err(|e| anyhow!("draws: {e}"))?;
    let mut tokens: CudaSlice<u32> = b.zeros(rows)?;
    let mut logprobs: CudaSlice<f32> = b.zeros(rows)?;
    let bytes = Work::Bytes(bytes_bf16(rows * vocab) + 24.0 * rows as f64);
    for (name, params) in [
        ("sample_t1", SamplingParams { temperature: 1.0, ..Default::default() }),
        ("sample_topk50", SamplingParams { temperature: 1.0, top_k: 50, ..Default::default() }),
        ("sample_topp095", SamplingParams { temperature: 1.0, top_p: 0.95, ..Default::default() }),
    ] {
        b.run(name, &shape, bytes, false, 200, || g.sample(&z, vocab, &params, &d, &mut tokens, &mut logprobs))?;
    }
    Ok(())
}

/// The loss kernels at 16k tokens × 151,936 (issue 7): log-probabilities
/// (with and without the entropy; and on fp32 logits), their in-place
/// backward, and the
/// distillation kernel (forward KL, reverse KL, JSD), at T = 0.7; then the
/// coefficient passes ([`coefficient_passes`]). Bytes: the logits read once
/// (forward), read and written (backward), both rows read and the student's
/// written (distillation), plus the per-row arrays. The backward and the
/// distillation overwrite their logits with gradients, so later calls see
/// those (still finite) values.
fn loss(b: &mut Bench) -> Result<()> {
    let g = b.g;
    let (rows, vocab) = (LOSS_ROWS, VOCAB);
    let n = rows * vocab;
    let shape = format!("{rows}x{vocab}");
    let inv_temp = 1.0 / 0.7;
    let (logits, per_row) = (bytes_bf16(n), 4.0 * rows as f64);
    let mut z = b.random_tiled(n, 40)?;
    let y = b.u32s(&token_ids(rows))?;
    let mut logp: CudaSlice<f32> = b.zeros(rows)?;
    let mut lse: CudaSlice<f32> = b.zeros(rows)?;
    let mut h: CudaSlice<f32> = b.zeros(rows)?;
    // Targets read; logp, lse (and the entropy) written.
    b.run("logprob_fwd", &shape, Work::Bytes(logits + 3.0 * per_row), false, MAX_N, || {
        g.logprob_fwd(&z, &y, vocab, inv_temp, &mut logp, &mut lse, None)
    })?;
    b.run("logprob_fwd_entropy", &shape, Work::Bytes(logits + 4.0 * per_row), false, MAX_N, || {
        g.logprob_fwd(&z, &y, vocab, inv_temp, &mut logp, &mut lse, Some(&mut h.as_view_mut()))
    })?;
    let coef = b.random_f32(rows, 41)?;
    // Targets, lse and coef read.
    // The same rows as fp32 logits (the kernels' fp32 flag: 4 floats per
    // 16-byte vector, twice the bytes), before the backward overwrites z.
    {
        let mut zf: CudaSlice<f32> = b.zeros(n)?;
        g.cast_to_f32(&z, &mut zf)?;
        let logits_f32 = 2.0 * logits;
        b.run("logprob_fwd_f32", &shape, Work::Bytes(logits_f32 + 3.0 * per_row), false, MAX_N, || {
            g.logprob_fwd(&zf, &y, vocab, inv_temp, &mut logp, &mut lse, None)
        })?;
        b.run("logprob_bwd_f32", &shape, Work::Bytes(2.0 * logits_f32 + 3.0 * per_row), false, MAX_N, || {
            g.logprob_bwd(&mut zf, &y, vocab, inv_temp, &lse, &coef, None)
        })?;
    }
    b.run("logprob_bwd", &shape, Work::Bytes(2.0 * logits + 3.0 * per_row), false, MAX_N, || {
        g.logprob_bwd(&mut z, &y, vocab, inv_temp, &lse, &coef, None)
    })?;
    drop(z);
    let mut zs = b.random_tiled(n, 42)?;
    let zt = b.random_tiled(n, 43)?;
    let w = b.random_f32(rows, 44)?;
    let mut dl: CudaSlice<f32> = b.zeros(rows)?;
    // Weights read, the divergence written. distill_forward is the split
    // kernel (each logit read once); distill_forward_row the row kernel it
    // replaced (each row pair read twice: 10 bytes moved per element, not 6).
    let distill_bytes = Work::Bytes(3.0 * logits + 2.0 * per_row);
    for (name, how, mode) in [
        ("distill_forward", DistillKernel::Auto, DistillMode::Forward),
        ("distill_forward_row", DistillKernel::Row, DistillMode::Forward),
        ("distill_reverse", DistillKernel::Auto, DistillMode::Reverse),
        ("distill_jsd", DistillKernel::Auto, DistillMode::Jsd { beta: 0.5 }),
    ] {
        b.run(name, &shape, distill_bytes, false, MAX_N, || {
            g.distill_with(how, &mut zs, &zt, vocab, mode, inv_temp, &w, &mut dl)
        })?;
    }
    drop((zs, zt));
    coefficient_passes(b)
}

/// The per-token coefficient passes on the small arrays (issue 7), at the
/// loss rows' 16,384 tokens: `policy_coefs_ppo`, the policy losses' kernel
/// (kernels/policy.cu) for PPO-clip (ε 0.2, dual clip 3, token mean) on 16
/// sequences × 1024 tokens, the first 128 of each masked (the prompt), as
/// the GRPO trainer calls it through `Backend::policy_loss` (less that op's
/// uploads and read-back of 16 rows); `dpo_coefs`, DPO's (kernels/dpo.cu,
/// sigmoid, β 0.1) on 16 pairs of 512-token sequences, the first 64 of each
/// masked. Bytes: logp and old (or reference) logp read, the mask read, the
/// coefficients written, and the per-sequence arrays; a few hundred KB, so
/// these rows are bound by the launch and one block per sequence, not by
/// bandwidth: their figure is the time.
fn coefficient_passes(b: &mut Bench) -> Result<()> {
    use engine::backend::cuda::PolicyViews;
    use engine::loss::{DpoConfig, DpoLossType, PolicyConfig, PolicyKind, StepCounts};
    let g = b.g;
    let n = LOSS_ROWS;
    let layout = |seqs: usize, prompt: usize| -> (Vec<u32>, Vec<bool>) {
        let len = n / seqs;
        let cu: Vec<u32> = (0..=seqs).map(|i| (i * len) as u32).collect();
        (cu, (0..n).map(|t| t % len >= prompt).collect())
    };
    let per_token = 13.0 * n as f64;
    let logp = b.random_f32(n, 70)?;
    let old = b.random_f32(n, 71)?;
    let mut coef: CudaSlice<f32> = b.zeros(n)?;

    let seqs = 16;
    let (cu, mask) = layout(seqs, 128);
    let counts = StepCounts::of([(mask.as_slice(), cu.as_slice())]);
    let k = PolicyConfig::new(PolicyKind::ppo()).kernel_settings(&counts, 0);
    let mask_d =
        g.stream.clone_htod(&mask.iter().map(|&m| m as u8).collect::<Vec<u8>>()).map_err(|e| anyhow!("{e}"))?;
    let cu_d = b.u32s(&cu)?;
    let seq_in = b.random_f32(2 * seqs, 72)?;
    let cols = engine::backend::cuda::params::ENGINE_POLICY_STATS as usize;
    let mut seq_out: CudaSlice<f64> = b.zeros(seqs * cols)?;
    let views = PolicyViews {
        logp: logp.slice(..),
        old_logp: old.slice(..),
        ref_logp: None,
        sampler_logp: None,
        entropy: None,
    };
    let bytes = per_token + 4.0 * (seqs + 1) as f64 + 8.0 * seqs as f64 + 8.0 * (seqs * cols) as f64;
    b.run("policy_coefs_ppo", &format!("{seqs}x{}", n / seqs), Work::Bytes(bytes), false, MAX_N, || {
        g.policy_coefs(&k, &views, &mask_d, &cu_d, &seq_in, &mut coef, None, &mut seq_out)
    })?;

    let pairs = 16;
    let (cu, mask) = layout(2 * pairs, 64);
    let cfg = DpoConfig { loss_type: DpoLossType::Sigmoid, beta: 0.1, label_smoothing: 0.0 };
    let k = cfg.kernel_settings(pairs);
    let mask_d =
        g.stream.clone_htod(&mask.iter().map(|&m| m as u8).collect::<Vec<u8>>()).map_err(|e| anyhow!("{e}"))?;
    let cu_d = b.u32s(&cu)?;
    let mut pair_out: CudaSlice<f64> = b.zeros(pairs * 4)?;
    let bytes = per_token + 4.0 * (2 * pairs + 1) as f64 + 32.0 * pairs as f64;
    b.run("dpo_coefs", &format!("{pairs} pairs x2x{}", n / (2 * pairs)), Work::Bytes(bytes), false, MAX_N, || {
        g.dpo_coefs(&k, &logp, &old, &mask_d, &cu_d, &mut coef, &mut pair_out)
    })
}

#[test]
#[ignore = "the kernel benchmarks: run with --ignored bench_kernels on a GPU (tools/gpu-check.sh run)"]
fn bench_kernels() {
    let Some(g) = gpu("bench_kernels") else { return };
    let out = std::env::var("ENGINE_BENCH_OUT").ok().filter(|p| !p.is_empty());
    let out_file =
        out.as_ref().map(|p| std::fs::File::create(p).unwrap_or_else(|e| panic!("ENGINE_BENCH_OUT={p}: {e}")));
    let skip: Vec<String> = std::env::var("ENGINE_BENCH_SKIP")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    let blocker_bytes = 256 << 20;
    let blocker =
        (g.stream.alloc_zeros::<u8>(blocker_bytes).unwrap(), g.stream.alloc_zeros::<u8>(blocker_bytes).unwrap());
    let mut b = Bench {
        g: &g,
        out: out_file,
        skip,
        start: Instant::now(),
        budget: Duration::from_secs_f64(env_f64("ENGINE_BENCH_BUDGET_S", 80.0)),
        target_ms: env_f64("ENGINE_BENCH_TARGET_MS", 100.0),
        copy_gb_s: None,
        blocker,
        blocker_ms: 0.0,
        rows: 0,
        errors: 0,
    };
    // The head-start copy's own time.
    {
        let (e0, e1) = (b.event().unwrap(), b.event().unwrap());
        let (src, dst) = (&b.blocker.0, &mut b.blocker.1);
        g.stream.memcpy_dtod(src, dst).unwrap();
        e0.record(&g.stream).unwrap();
        for _ in 0..5 {
            g.stream.memcpy_dtod(src, dst).unwrap();
        }
        e1.record(&g.stream).unwrap();
        b.blocker_ms = e0.elapsed_ms(&e1).unwrap() as f64 / 5.0;
    }
    println!("bench_kernels on {}: head-start copy of 256 MiB takes {:.3} ms", g.name, b.blocker_ms);
    println!("{:24} {:28} {:>13} {:>14}", "kernel", "shape", "time", "rate");
    type Section = fn(&mut Bench) -> Result<()>;
    let sections: [(&str, Section); 14] = [
        ("copy", copy),
        ("elementwise", elementwise),
        ("cast", cast),
        ("rmsnorm", rmsnorm),
        ("rope", rope),
        ("swiglu", swiglu),
        ("embedding", embedding),
        ("rows", rows),
        ("adamw", adamw),
        ("gemm", gemm),
        ("attention", attention),
        ("decode", decode),
        ("loss", loss),
        ("sample", sample),
    ];
    for (name, f) in sections {
        b.section(name, f);
    }
    println!(
        "bench_kernels: {} rows, {} sections failed, {:.1} s{}",
        b.rows,
        b.errors,
        b.start.elapsed().as_secs_f64(),
        out.map_or(String::new(), |p| format!(", written to {p}"))
    );
    assert_eq!(b.errors, 0, "a benchmark section failed (see above)");
}
