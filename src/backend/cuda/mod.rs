//! The CUDA backend (issue 6), first part: the device, the kernels that
//! build.rs compiled into fatbins, and a typed, bounds-checked launch for
//! each kernel. The [`Backend`](super::Backend) implementation over these
//! (bf16 arenas, fp32 master weights, cuBLASLt GEMMs) builds on it.
//!
//! The driver is loaded at run time (cudarc's dynamic loading), so the binary
//! starts on a machine without one and [`Gpu::new`] says so as an error.

mod adamw;
mod attention;
mod backend;
pub mod buf;
mod cast;
mod distill;
mod dpo;
mod elementwise;
mod embedding;
mod flash_attention;
mod gemm;
mod logprob;
pub mod params;
mod policy;
mod rmsnorm;
mod rope;
mod rows;
mod sample;
mod scratch;
mod swiglu;
mod tma;

pub use attention::{decode_splits, DecodeKernel};
pub use backend::Cuda;
pub use buf::{DBuf, DIdx};
pub use distill::{split_chunks, DistillKernel};
pub use flash_attention::{FlashVariant, FLASH_ENABLED, FLASH_VARIANT, WGMMA_DESC};
pub use logprob::LogitElem;
pub use policy::PolicyViews;
pub use rope::{QkNormOn, RopeTables, SplitOn};

use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaGraph, CudaModule, CudaStream, LaunchConfig};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

mod modules {
    include!(concat!(env!("OUT_DIR"), "/modules.rs"));
}

/// bf16 as the device stores it.
pub type Bf16 = half::bf16;

/// Every kernel function, resolved once when the device starts, by the
/// kernel file that holds it.
pub struct Kernels {
    pub adamw: adamw::Fns,
    pub attention: attention::Fns,
    pub cast: cast::Fns,
    pub distill: distill::Fns,
    pub dpo: dpo::Fns,
    pub elementwise: elementwise::Fns,
    pub embedding: embedding::Fns,
    pub flash_attention: flash_attention::Fns,
    pub logprob: logprob::Fns,
    pub policy: policy::Fns,
    pub rmsnorm: rmsnorm::Fns,
    pub rope: rope::Fns,
    pub rows: rows::Fns,
    pub sample: sample::Fns,
    pub swiglu: swiglu::Fns,
}

/// The loaded modules, by kernel file stem.
pub(crate) struct Modules {
    by_file: HashMap<&'static str, Arc<CudaModule>>,
}

impl Modules {
    /// Function `function` of `kernels/{file}.cu`.
    pub(crate) fn get(&self, file: &str, function: &str) -> Result<CudaFunction> {
        self.by_file
            .get(file)
            .with_context(|| format!("kernels/{file}.cu was not built"))?
            .load_function(function)
            .map_err(|e| anyhow!("kernels/{file}.cu: kernel {function}: {e}"))
    }
}

/// A flash-attention tile table on the device: the `cu_seqlens` it was
/// built from, the table, its length in tiles.
/// A flash tile table: (tile size, the `cu_seqlens` it was built from) → the table and its length in tiles.
type TileTable = ((usize, Vec<u32>), cudarc::driver::CudaSlice<u32>, u32);

/// One GPU: its context, the stream every kernel runs on, and the kernels.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub k: Kernels,
    /// cuBLASLt, on the same stream, for every matrix product.
    pub blas: cudarc::cublaslt::CudaBlasLT,
    /// The device's name, as the driver reports it.
    pub name: String,
    /// The flash kernels' last tile table of each tile size (64, the fast forward's 128).
    tile_cache: std::sync::Mutex<[Option<TileTable>; 2]>,
    /// The flash backward's scratch buffers, kept between calls.
    flash_scratch: flash_attention::BwdScratch,
    /// Split decode attention's partial states, kept between calls.
    decode_scratch: scratch::Scratch,
    /// The split distillation kernels' counters and partial sums.
    distill_scratch: scratch::Scratch,
    /// The flash variant attention_fwd / attention_bwd run
    /// ([`FLASH_VARIANT`] until [`Gpu::set_flash_variant`]).
    flash_variant: std::sync::atomic::AtomicU8,
    /// Streaming multiprocessors: how many blocks it takes to fill the GPU.
    pub sms: usize,
    /// Compute capability (major, minor): 9.0 runs the sm_90a kernels.
    pub cc: (u32, u32),
    /// The most dynamic shared memory a block may opt in to (bytes): 227 KB
    /// on Hopper, 163 KB on the A100, 99 KB on sm_86 / sm_89 (RTX 30xx /
    /// 40xx, L4, L40); the flash dispatch runs only kernels that fit.
    pub smem_optin: usize,
    /// copy_rows' last destination list and whether its rows are distinct.
    distinct_cache: std::sync::Mutex<Option<(Vec<u32>, bool)>>,
    /// Decode attention plans its key splits as if some sequence had at
    /// least this many keys (0: from the plan's longest), so that a step
    /// replayed as a graph keeps one launch shape while lengths grow.
    decode_keys_floor: AtomicUsize,
    /// Moves whenever a device buffer that ops keep between calls (scratch)
    /// is replaced by a larger one: a captured graph holds the old address,
    /// so a graph captured at another value must not be replayed.
    pub buffer_epoch: AtomicU64,
    /// Whether [`Backend::capture`](super::Backend::capture) records graphs
    /// (on by default; off, it runs the work eagerly, for tests that compare).
    pub graphs_on: std::sync::atomic::AtomicBool,
}

impl Gpu {
    /// Starts device `ordinal`: a context, its default stream, every
    /// embedded module loaded and every kernel resolved.
    pub fn new(ordinal: usize) -> Result<Self> {
        // cudarc panics on first use when libcuda cannot be loaded: probe first.
        // SAFETY: only tries to open the driver library.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            bail!("no CUDA driver found (libcuda.so could not be loaded); use --device cpu");
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| anyhow!("CUDA device {ordinal}: {e}"))?;
        let name = ctx.name().unwrap_or_else(|_| format!("CUDA device {ordinal}"));
        let sms = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| anyhow!("{name}: multiprocessor count: {e}"))? as usize;
        let cap = |a, what: &str| -> Result<u32> {
            Ok(ctx.attribute(a).map_err(|e| anyhow!("{name}: compute capability {what}: {e}"))? as u32)
        };
        use cudarc::driver::sys::CUdevice_attribute as Attr;
        let cc = (
            cap(Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, "major")?,
            cap(Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, "minor")?,
        );
        let smem_optin = ctx
            .attribute(Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(|e| anyhow!("{name}: shared memory per block: {e}"))? as usize;
        let mut by_file = HashMap::new();
        for (file, image) in modules::MODULES {
            let m = ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(image.to_vec()))
                .map_err(|e| anyhow!("{name}: cannot load kernels/{file}.cu's fatbin: {e}"))?;
            by_file.insert(*file, m);
        }
        let m = Modules { by_file };
        let k = Kernels {
            adamw: adamw::load(&m)?,
            attention: attention::load(&m)?,
            cast: cast::load(&m)?,
            distill: distill::load(&m)?,
            dpo: dpo::load(&m)?,
            elementwise: elementwise::load(&m)?,
            embedding: embedding::load(&m)?,
            flash_attention: flash_attention::load(&m, smem_optin)?,
            logprob: logprob::load(&m)?,
            policy: policy::load(&m)?,
            rmsnorm: rmsnorm::load(&m)?,
            rope: rope::load(&m)?,
            rows: rows::load(&m)?,
            sample: sample::load(&m)?,
            swiglu: swiglu::load(&m)?,
        };
        // A stream of our own, not the legacy default stream, on which CUDA
        // cannot capture graphs. Every buffer lives on it alone, so cudarc's
        // per-buffer events (which guard cross-stream use, and would record
        // events inside a capture) are off.
        // SAFETY: no buffer of this context is used on another stream.
        unsafe { ctx.disable_event_tracking() };
        // ENGINE_CUDA_LEGACY_STREAM=1: the legacy default stream instead (no
        // graphs then), to tell a fault of the stream change from another
        // without a rebuild.
        let legacy = std::env::var_os("ENGINE_CUDA_LEGACY_STREAM").is_some_and(|v| v != "0");
        let stream =
            if legacy { ctx.default_stream() } else { ctx.new_stream().map_err(|e| anyhow!("{name}: stream: {e}"))? };
        // SAFETY: only tries to open the library (cudarc panics on use without it).
        if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
            bail!("{name}: cuBLASLt (libcublasLt.so) could not be loaded");
        }
        let blas = cudarc::cublaslt::CudaBlasLT::new(stream.clone()).map_err(|e| anyhow!("{name}: cuBLASLt: {e:?}"))?;
        Ok(Gpu {
            stream,
            ctx,
            k,
            blas,
            name,
            tile_cache: std::sync::Mutex::new([None, None]),
            flash_scratch: Default::default(),
            decode_scratch: Default::default(),
            distill_scratch: Default::default(),
            flash_variant: std::sync::atomic::AtomicU8::new(FLASH_VARIANT as u8),
            sms,
            cc,
            smem_optin,
            distinct_cache: std::sync::Mutex::new(None),
            decode_keys_floor: AtomicUsize::new(0),
            graphs_on: std::sync::atomic::AtomicBool::new(!legacy),
            buffer_epoch: AtomicU64::new(0),
        })
    }

    /// Records the work `f` issues on the stream as a graph, without running
    /// it (CUDA stream capture; replay with [`CudaGraph::launch`]). `f` must
    /// only launch: no copies from or to the host, no allocation, no wait;
    /// such a call fails the capture. Every kernel argument is frozen, so
    /// what changes between replays must live in device buffers at fixed
    /// addresses. A graph is valid while [`Gpu::buffer_epoch`] stays as it was.
    pub fn capture(&self, f: impl FnOnce() -> Result<()>) -> Result<CudaGraph> {
        use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| anyhow!("{}: begin capture: {e}", self.name))?;
        let issued = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        // The capture always ends, so the stream is usable whatever f did
        // (a failed launch panics in the backend's ops: the panic goes on
        // once the stream is out of capture).
        let graph = self.stream.end_capture(CUgraphInstantiate_flags(0));
        match issued {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(r) => r.context("while capturing a graph")?,
        }
        graph.map_err(|e| anyhow!("{}: end capture: {e}", self.name))?.ok_or_else(|| anyhow!("captured an empty graph"))
    }

    /// Fails while the stream is being captured: an allocation there would
    /// belong to the graph, not to the buffer that keeps it.
    pub(crate) fn check_not_capturing(&self, what: &str) -> Result<()> {
        use cudarc::driver::sys::CUstreamCaptureStatus;
        let status = self.stream.capture_status().map_err(|e| anyhow!("{what}: capture status: {e}"))?;
        if status != CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
            bail!("{what}: a buffer would grow while a graph is being captured (run the step once first)");
        }
        Ok(())
    }

    /// Decode attention's key splits planned for at least `keys` keys per
    /// sequence (0: from each plan's longest); see [`attention::decode_splits`].
    pub fn set_decode_keys_floor(&self, keys: usize) {
        self.decode_keys_floor.store(keys, Ordering::Relaxed);
    }

    /// The flash variant the attention dispatch runs.
    pub fn flash_variant(&self) -> FlashVariant {
        match self.flash_variant.load(std::sync::atomic::Ordering::Relaxed) {
            v if v == FlashVariant::Simple as u8 => FlashVariant::Simple,
            v if v == FlashVariant::Fused as u8 => FlashVariant::Fused,
            v if v == FlashVariant::Hopper as u8 => FlashVariant::Hopper,
            v if v == FlashVariant::HopperWs as u8 => FlashVariant::HopperWs,
            _ => FlashVariant::Fast,
        }
    }

    /// Runs the attention dispatch on another flash variant from now on (for
    /// benchmarks that time a whole step on each; every variant gives the
    /// same numbers to the tests' tolerance, the fused backward's dq in
    /// another order of additions).
    pub fn set_flash_variant(&self, v: FlashVariant) {
        self.flash_variant.store(v as u8, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits for every launched kernel; a kernel's fault surfaces here.
    pub fn sync(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| anyhow!("{}: {e}", self.name))
    }
}

/// One thread per element, 256 to a block.
pub(crate) fn grid_1d(n: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (n.div_ceil(256).max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// One block of `threads` per row.
pub(crate) fn grid_rows(rows: usize, threads: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows.max(1) as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// Fails unless `len` is `want` (a launch with a wrong length would read or
/// write out of bounds).
pub(crate) fn check_len(what: &str, len: usize, want: usize) -> Result<()> {
    if len != want {
        bail!("{what}: {len} elements, expected {want}");
    }
    if want > u32::MAX as usize {
        bail!("{what}: {want} elements do not fit one kernel launch");
    }
    Ok(())
}
