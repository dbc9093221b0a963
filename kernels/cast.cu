// Casts between fp32 and bf16 (uploads, reads, master → working copy).
// Eight elements per thread and step where both pointers reach a 16-byte
// boundary at the same element (two float4 and one 16-byte bf16 vector);
// scalar otherwise, with the same rounding (for_each_8 in vec.cuh).
#include "cast.h"
#include "common.cuh"
#include "vec.cuh"

// The scalar head that aligns the bf16 pointer b, if the fp32 pointer f is
// then aligned too; n (all scalar) otherwise.
__device__ __forceinline__ uint32_t cast_head(dptr f, dptr b, uint32_t n) {
  if ((b & 1u) != 0 || (f & 3u) != 0) return n;
  const uint32_t h = bf16_head(b, n);
  return ((f + 4 * (dptr)h) & 15u) == 0 ? h : n;
}

struct ToBf16 {
  const float* s;
  bf16* d;
  __device__ void one(size_t i) const { d[i] = to_bf(s[i]); }
  __device__ void eight(size_t i) const {
    const float4 a = *reinterpret_cast<const float4*>(s + i);
    const float4 b = *reinterpret_cast<const float4*>(s + i + 4);
    st16(d + i, make_uint4(pack2(a.x, a.y), pack2(a.z, a.w), pack2(b.x, b.y), pack2(b.z, b.w)));
  }
};

extern "C" __global__ void cast_f32_bf16(CastParams p) {
  const ToBf16 op{ptr<const float>(p.src), ptr<bf16>(p.dst)};
  for_each_8(op, p.n, cast_head(p.src, p.dst, p.n));
}

struct ToF32 {
  const bf16* s;
  float* d;
  __device__ void one(size_t i) const { d[i] = to_f(s[i]); }
  __device__ void eight(size_t i) const {
    float f[8];
    unpack8(ld16(s + i), f);
    *reinterpret_cast<float4*>(d + i) = make_float4(f[0], f[1], f[2], f[3]);
    *reinterpret_cast<float4*>(d + i + 4) = make_float4(f[4], f[5], f[6], f[7]);
  }
};

extern "C" __global__ void cast_bf16_f32(CastParams p) {
  const ToF32 op{ptr<const bf16>(p.src), ptr<float>(p.dst)};
  for_each_8(op, p.n, cast_head(p.dst, p.src, p.n));
}
