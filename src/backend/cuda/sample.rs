//! Token sampling on the GPU (kernels/sample.cu), the twin of
//! [`crate::rollout::sample`]: greedy, or temperature with top-k, top-p and
//! min-p, without a sort, one block per row; the uniform numbers come from
//! each row's random stream through `kernels/include/rng.h`, the same
//! arithmetic as the CPU's [`crate::rollout::Stream`]. Only the tokens and
//! their log-probabilities leave the device.

use super::params::{RngParams, SampleParams, ENGINE_SAMPLE_THREADS};
use super::{check_len, grid_1d, grid_rows, Bf16, Gpu, Modules};
use crate::rollout::SamplingParams;
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{CudaFunction, DevicePtr, DevicePtrMut, PushKernelArg};

super::params::device_repr!(SampleParams, RngParams);

pub struct Fns {
    sample: CudaFunction,
    uniform: CudaFunction,
}

pub(super) fn load(m: &Modules) -> Result<Fns> {
    Ok(Fns { sample: m.get("sample", "sample_rows")?, uniform: m.get("sample", "rng_uniform")? })
}

impl Gpu {
    /// One token per row of bf16 `logits [rows, vocab]` (`rows =
    /// tokens.len()`), row `r` drawn with the uniform number of stream key
    /// `draws[2r]` at step `draws[2r + 1]`, as the CPU sampler draws it;
    /// `logprobs[r]` is the token's log-probability under the untruncated
    /// `softmax(z/T)` (`softmax(z)` when greedy).
    pub fn sample(
        &self,
        logits: &impl DevicePtr<Bf16>,
        vocab: usize,
        params: &SamplingParams,
        draws: &impl DevicePtr<u64>,
        tokens: &mut impl DevicePtrMut<u32>,
        logprobs: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        params.validate().map_err(|e| anyhow!("sample: {e}"))?;
        let rows = tokens.len();
        if vocab == 0 {
            bail!("sample: vocab is 0");
        }
        if rows > i32::MAX as usize {
            bail!("sample: {rows} rows do not fit one launch");
        }
        check_len("sample: logits", logits.len(), rows * vocab)?;
        check_len("sample: draws", draws.len(), 2 * rows)?;
        check_len("sample: logprobs", logprobs.len(), rows)?;
        if rows == 0 {
            return Ok(());
        }
        let k = params.kernel_settings();
        let (zp, _g1) = logits.device_ptr(&self.stream);
        let (dp, _g2) = draws.device_ptr(&self.stream);
        let (tp, _g3) = tokens.device_ptr_mut(&self.stream);
        let (lp, _g4) = logprobs.device_ptr_mut(&self.stream);
        let p = SampleParams {
            inv_temp: k.inv_temp,
            top_p_budget: k.top_p_budget,
            min_p: k.min_p,
            logits: zp,
            draws: dp,
            tokens: tp,
            logprobs: lp,
            rows: rows as u32,
            vocab: vocab as u32,
            top_k: k.top_k,
            greedy: k.greedy as u32,
            filtered: k.filtered as u32,
            use_top_p: k.use_top_p as u32,
        };
        // SAFETY: logits hold rows × vocab bf16, draws 2·rows u64, tokens and
        // logprobs rows (checked above); the kernel touches nothing else.
        unsafe {
            self.stream.launch_builder(&self.k.sample.sample).arg(&p).launch(grid_rows(rows, ENGINE_SAMPLE_THREADS))
        }
        .map_err(|e| anyhow!("sample: {e}"))?;
        Ok(())
    }

    /// `out[i]` = the uniform number of stream key `draws[2i]` at step
    /// `draws[2i + 1]`, computed on the device (for tests: it must equal the
    /// CPU's, bit for bit).
    pub fn rng_uniform(&self, draws: &impl DevicePtr<u64>, out: &mut impl DevicePtrMut<f64>) -> Result<()> {
        let n = out.len();
        check_len("rng_uniform: draws", draws.len(), 2 * n)?;
        if n == 0 {
            return Ok(());
        }
        let (dp, _g1) = draws.device_ptr(&self.stream);
        let (op, _g2) = out.device_ptr_mut(&self.stream);
        let p = RngParams { draws: dp, out: op, n: n as u32 };
        // SAFETY: draws holds 2n u64 and out n f64 (checked above).
        unsafe { self.stream.launch_builder(&self.k.sample.uniform).arg(&p).launch(grid_1d(n)) }
            .map_err(|e| anyhow!("rng_uniform: {e}"))?;
        Ok(())
    }
}
