//! fp32 ↔ bf16 casts on the GPU (kernels/cast.cu).

use super::elementwise::grid_8;
use super::params::CastParams;
use super::{check_len, Bf16, Gpu, Modules};
use anyhow::{anyhow, Result};
use cudarc::driver::{CudaFunction, DevicePtr, DevicePtrMut, PushKernelArg};

super::params::device_repr!(CastParams);

pub struct Fns {
    cast_f32_bf16: CudaFunction,
    cast_bf16_f32: CudaFunction,
}

pub(super) fn load(m: &Modules) -> Result<Fns> {
    Ok(Fns { cast_f32_bf16: m.get("cast", "cast_f32_bf16")?, cast_bf16_f32: m.get("cast", "cast_bf16_f32")? })
}

impl Gpu {
    /// `dst = bf16(src)`.
    pub fn cast_to_bf16(&self, src: &impl DevicePtr<f32>, dst: &mut impl DevicePtrMut<Bf16>) -> Result<()> {
        check_len("cast: dst", dst.len(), src.len())?;
        let (s, _g1) = src.device_ptr(&self.stream);
        let (d, _g2) = dst.device_ptr_mut(&self.stream);
        let p = CastParams { src: s, dst: d, n: src.len() as u32 };
        // SAFETY: both buffers hold n elements of the kernel's types.
        unsafe { self.stream.launch_builder(&self.k.cast.cast_f32_bf16).arg(&p).launch(grid_8(src.len())) }
            .map_err(|e| anyhow!("cast_f32_bf16: {e}"))?;
        Ok(())
    }

    /// `dst = f32(src)`.
    pub fn cast_to_f32(&self, src: &impl DevicePtr<Bf16>, dst: &mut impl DevicePtrMut<f32>) -> Result<()> {
        check_len("cast: dst", dst.len(), src.len())?;
        let (s, _g1) = src.device_ptr(&self.stream);
        let (d, _g2) = dst.device_ptr_mut(&self.stream);
        let p = CastParams { src: s, dst: d, n: src.len() as u32 };
        // SAFETY: both buffers hold n elements of the kernel's types.
        unsafe { self.stream.launch_builder(&self.k.cast.cast_bf16_f32).arg(&p).launch(grid_8(src.len())) }
            .map_err(|e| anyhow!("cast_bf16_f32: {e}"))?;
        Ok(())
    }
}
