// Helpers every kernel file includes: bf16 conversion, block reductions in a
// fixed order (so results do not depend on scheduling), bounds checks.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

#include "params.h"

typedef __nv_bfloat16 bf16;

template <typename T>
__device__ __forceinline__ T* ptr(dptr p) {
  return reinterpret_cast<T*>(p);
}

__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ bf16 to_bf(float x) { return __float2bfloat16_rn(x); }
// The quiet NaN the kernels write where an input was bad (a loud result).
__device__ __forceinline__ float nan_f() { return __int_as_float(0x7fc00000); }

// Sum over the block (float or double): each warp reduces by shuffles in a
// fixed pattern, then warp 0 reduces the warp sums. Every thread gets the
// result. `scratch` holds at least 33 values. The order is fixed by thread
// index, so the same inputs give the same bits on every run.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T s = lane < warps ? scratch[lane] : T(0);
  if (warp == 0) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) scratch[32] = s;
  }
  __syncthreads();
  return scratch[32];
}
