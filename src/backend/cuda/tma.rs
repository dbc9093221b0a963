//! TMA tensor maps (Hopper's bulk tensor copies): made on the host by the
//! driver's `cuTensorMapEncodeTiled` and passed to a kernel by value in its
//! parameters (kernels/include/flash_attention.h's `EngineTmap`).

use super::params::EngineTmap;
use anyhow::{bail, Result};
use cudarc::driver::sys::{
    cuTensorMapEncodeTiled, CUresult, CUtensorMap, CUtensorMapDataType, CUtensorMapFloatOOBfill, CUtensorMapInterleave,
    CUtensorMapL2promotion, CUtensorMapSwizzle,
};

/// The map of a bf16 tensor `[rows, heads, head_dim]` at `addr` (row-major,
/// 16-byte aligned) as 3-d (head_dim, heads, rows), read in boxes of 64 ×
/// 1 × `box_rows` elements (128-byte rows, as the 128-byte swizzle needs)
/// and written to shared memory with that swizzle; elements out of bounds
/// read as zero. `what` names the tensor in errors.
pub(super) fn bf16_rows(
    what: &str,
    addr: u64,
    rows: usize,
    heads: usize,
    head_dim: usize,
    box_rows: u32,
) -> Result<EngineTmap> {
    if !addr.is_multiple_of(16)
        || !head_dim.is_multiple_of(64)
        || rows == 0
        || heads == 0
        || !(1..=256).contains(&box_rows)
    {
        bail!("{what}: no tensor map for {rows} × {heads} × {head_dim} at {addr:#x} in boxes of {box_rows} rows");
    }
    let dims: [u64; 3] = [head_dim as u64, heads as u64, rows as u64];
    // Byte strides of dims 1 and 2 (dim 0 is contiguous).
    let strides: [u64; 2] = [(head_dim * 2) as u64, (heads * head_dim * 2) as u64];
    let boxes: [u32; 3] = [64, 1, box_rows];
    let unit: [u32; 3] = [1, 1, 1];
    let mut map = CUtensorMap { opaque: [0; 16] };
    // SAFETY: every array has the rank's length (3, and 2 strides); the
    // driver only reads them and writes `map`. The address is checked
    // (aligned) above; the driver checks the rest and says so in its result.
    let r = unsafe {
        cuTensorMapEncodeTiled(
            &mut map,
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            3,
            addr as *mut core::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            unit.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    if r != CUresult::CUDA_SUCCESS {
        bail!("{what}: cuTensorMapEncodeTiled ({rows} × {heads} × {head_dim} bf16, boxes of {box_rows} rows): {r:?}");
    }
    Ok(EngineTmap { opaque: map.opaque })
}
