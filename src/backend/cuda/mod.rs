//! The CUDA backend (issue 6), first part: the device, the kernels that
//! build.rs compiled into fatbins, and a typed, bounds-checked launch for
//! each kernel. The [`Backend`](super::Backend) implementation over these
//! (bf16 arenas, fp32 master weights, cuBLASLt GEMMs) builds on it.
//!
//! The driver is loaded at run time (cudarc's dynamic loading), so the binary
//! starts on a machine without one and [`Gpu::new`] says so as an error.

mod norm;
pub mod params;

use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, LaunchConfig};
use std::collections::HashMap;
use std::sync::Arc;

mod modules {
    include!(concat!(env!("OUT_DIR"), "/modules.rs"));
}

/// bf16 as the device stores it.
pub type Bf16 = half::bf16;

/// Every kernel function, resolved once when the device starts.
pub struct Kernels {
    pub cast_f32_bf16: CudaFunction,
    pub cast_bf16_f32: CudaFunction,
    pub rmsnorm_fwd: CudaFunction,
    pub rmsnorm_bwd: CudaFunction,
    pub rmsnorm_dw_reduce: CudaFunction,
}

/// One GPU: its context, the stream every kernel runs on, and the kernels.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub k: Kernels,
    /// The device's name, as the driver reports it.
    pub name: String,
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
        let mut mods: HashMap<&str, Arc<CudaModule>> = HashMap::new();
        for (file, image) in modules::MODULES {
            let m = ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(image.to_vec()))
                .map_err(|e| anyhow!("{name}: cannot load kernels/{file}.cu's fatbin: {e}"))?;
            mods.insert(file, m);
        }
        let f = |file: &str, function: &str| -> Result<CudaFunction> {
            mods.get(file)
                .with_context(|| format!("kernels/{file}.cu was not built"))?
                .load_function(function)
                .map_err(|e| anyhow!("kernels/{file}.cu: kernel {function}: {e}"))
        };
        let k = Kernels {
            cast_f32_bf16: f("cast", "cast_f32_bf16")?,
            cast_bf16_f32: f("cast", "cast_bf16_f32")?,
            rmsnorm_fwd: f("rmsnorm", "rmsnorm_fwd")?,
            rmsnorm_bwd: f("rmsnorm", "rmsnorm_bwd")?,
            rmsnorm_dw_reduce: f("rmsnorm", "rmsnorm_dw_reduce")?,
        };
        Ok(Gpu { stream: ctx.default_stream(), ctx, k, name })
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
