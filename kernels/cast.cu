// Casts between fp32 and bf16 (uploads, reads, master → working copy).
#include "common.cuh"
#include "cast.h"

extern "C" __global__ void cast_f32_bf16(CastParams p) {
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < p.n) ptr<bf16>(p.dst)[i] = to_bf(ptr<const float>(p.src)[i]);
}

extern "C" __global__ void cast_bf16_f32(CastParams p) {
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < p.n) ptr<float>(p.dst)[i] = to_f(ptr<const bf16>(p.src)[i]);
}
