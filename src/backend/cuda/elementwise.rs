//! Elementwise ops on bf16 buffers and the deterministic sum of squares
//! (kernels/elementwise.cu): fill, copy, `+=`, scale (which is also the
//! gradient-clipping multiply), and `Σ x²` in f64 for the global norm.

use super::params::{ElementwiseParams, SumSquaresParams, ENGINE_SUMSQ_CHUNK, ENGINE_SUMSQ_THREADS};
use super::{check_len, grid_rows, Bf16, Gpu, Modules};
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

super::params::device_repr!(ElementwiseParams, SumSquaresParams);

pub struct Fns {
    fill: CudaFunction,
    copy: CudaFunction,
    add_assign: CudaFunction,
    scale: CudaFunction,
    sumsq_partial: CudaFunction,
    sumsq_final: CudaFunction,
}

pub(super) fn load(m: &Modules) -> Result<Fns> {
    Ok(Fns {
        fill: m.get("elementwise", "fill_bf16")?,
        copy: m.get("elementwise", "copy_bf16")?,
        add_assign: m.get("elementwise", "add_assign_bf16")?,
        scale: m.get("elementwise", "scale_bf16")?,
        sumsq_partial: m.get("elementwise", "sum_squares_partial")?,
        sumsq_final: m.get("elementwise", "sum_squares_final")?,
    })
}

/// Blocks of 256 threads for a grid-stride kernel that handles 8 elements
/// per thread and step (kernels/vec.cuh `for_each_8`): one step per thread
/// when the pointers allow 16-byte accesses. Any grid is correct (the loops
/// stride over the whole range); this one only sets the speed.
pub(super) fn grid_8(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(8 * 256).clamp(1, 1 << 20);
    LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// Elements per partial sum of [`Gpu::sum_squares`] (fixed, so the result
/// does not depend on the GPU).
const SUMSQ_CHUNK: usize = ENGINE_SUMSQ_CHUNK as usize;

impl Gpu {
    /// The f64 scratch [`Gpu::sum_squares`] needs for `n` elements: one
    /// partial per chunk of 16384 and one slot for the total.
    pub fn sum_squares_scratch_len(n: usize) -> usize {
        n.div_ceil(SUMSQ_CHUNK) + 1
    }

    /// One launch of an elementwise kernel over `n` elements.
    fn elementwise(&self, f: &CudaFunction, name: &str, p: ElementwiseParams) -> Result<()> {
        // SAFETY: the callers checked that dst (and src where the kernel reads
        // it) hold p.n elements; the kernel checks every index against p.n and
        // uses 16-byte accesses only at 16-byte aligned addresses.
        unsafe { self.stream.launch_builder(f).arg(&p).launch(grid_8(p.n as usize)) }
            .map_err(|e| anyhow!("{name}: {e}"))?;
        Ok(())
    }

    /// `dst[i] = bf16(value)`.
    pub fn fill(&self, dst: &mut impl DevicePtrMut<Bf16>, value: f32) -> Result<()> {
        let n = dst.len();
        check_len("fill: dst", n, n)?;
        let (d, _g) = dst.device_ptr_mut(&self.stream);
        self.elementwise(
            &self.k.elementwise.fill,
            "fill_bf16",
            ElementwiseParams { dst: d, src: 0, n: n as u32, value },
        )
    }

    /// `dst = src`.
    pub fn copy(&self, src: &impl DevicePtr<Bf16>, dst: &mut impl DevicePtrMut<Bf16>) -> Result<()> {
        let n = src.len();
        check_len("copy: dst", dst.len(), n)?;
        let (s, _g1) = src.device_ptr(&self.stream);
        let (d, _g2) = dst.device_ptr_mut(&self.stream);
        self.elementwise(
            &self.k.elementwise.copy,
            "copy_bf16",
            ElementwiseParams { dst: d, src: s, n: n as u32, value: 0.0 },
        )
    }

    /// `dst += src` (fp32 sum, rounded to bf16 once).
    pub fn add_assign(&self, dst: &mut impl DevicePtrMut<Bf16>, src: &impl DevicePtr<Bf16>) -> Result<()> {
        let n = src.len();
        check_len("add_assign: dst", dst.len(), n)?;
        let (s, _g1) = src.device_ptr(&self.stream);
        let (d, _g2) = dst.device_ptr_mut(&self.stream);
        self.elementwise(
            &self.k.elementwise.add_assign,
            "add_assign_bf16",
            ElementwiseParams { dst: d, src: s, n: n as u32, value: 0.0 },
        )
    }

    /// `x *= s` (fp32 product, rounded to bf16 once). Gradient clipping is
    /// this with `s` the clip factor.
    pub fn scale(&self, x: &mut impl DevicePtrMut<Bf16>, s: f32) -> Result<()> {
        let n = x.len();
        check_len("scale: x", n, n)?;
        let (d, _g) = x.device_ptr_mut(&self.stream);
        self.elementwise(
            &self.k.elementwise.scale,
            "scale_bf16",
            ElementwiseParams { dst: d, src: 0, n: n as u32, value: s },
        )
    }

    /// `Σ x²` in f64, deterministic: fixed chunks of `SUMSQ_CHUNK` summed by
    /// one block each, then the partials summed by one block in a fixed
    /// order. `scratch` holds at least [`Gpu::sum_squares_scratch_len`]`(x.len())`
    /// f64. Reads the result back, so it waits for the stream.
    pub fn sum_squares(&self, x: &impl DevicePtr<Bf16>, scratch: &mut CudaSlice<f64>) -> Result<f64> {
        let n = x.len();
        check_len("sum_squares: x", n, n)?;
        let chunks = n.div_ceil(SUMSQ_CHUNK);
        if scratch.len() < chunks + 1 {
            bail!("sum_squares: scratch of {} f64, needs {} for {n} elements", scratch.len(), chunks + 1);
        }
        {
            let (xp, _g1) = x.device_ptr(&self.stream);
            let (sp, _g2) = scratch.device_ptr_mut(&self.stream);
            let p = SumSquaresParams {
                x: xp,
                partial: sp,
                out: sp + (chunks * std::mem::size_of::<f64>()) as u64,
                n: n as u32,
                chunks: chunks as u32,
            };
            // At least one block: a launch of zero blocks is an error; with
            // n = 0 that block sees chunks = 0 and leaves.
            let cfg = grid_rows(chunks, ENGINE_SUMSQ_THREADS);
            // SAFETY: x holds n bf16; partial covers `chunks` f64 and out is
            // scratch[chunks], inside scratch (checked above).
            unsafe { self.stream.launch_builder(&self.k.elementwise.sumsq_partial).arg(&p).launch(cfg) }
                .map_err(|e| anyhow!("sum_squares_partial: {e}"))?;
            // SAFETY: as above; one block reads the `chunks` partials.
            unsafe {
                self.stream
                    .launch_builder(&self.k.elementwise.sumsq_final)
                    .arg(&p)
                    .launch(grid_rows(1, ENGINE_SUMSQ_THREADS))
            }
            .map_err(|e| anyhow!("sum_squares_final: {e}"))?;
        }
        let total = self
            .stream
            .clone_dtoh(&scratch.slice(chunks..chunks + 1))
            .map_err(|e| anyhow!("sum_squares: read back: {e}"))?;
        Ok(total[0])
    }
}
