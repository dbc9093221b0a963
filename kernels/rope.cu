// Rotary position embedding (HF rotate-half layout), in place. The backward
// is the same kernel with `inverse` set: the rotation by the opposite angle
// is the transpose of the forward's. `rope`, the simple version (for tests):
// one thread per rotated pair (token, head, frequency); `rope8`, the fast
// one: one thread per 8 pairs. Each element is read and written by one thread.
// Both take a second tensor (x2, heads2) whose heads follow x's in each
// token's thread range: q and k in one launch.
#include "common.cuh"
#include "rope.h"
#include "vec.cuh"

// Head h (of heads + heads2) of token `token`: x's head h, or x2's h − heads.
__device__ __forceinline__ bf16* rope_head(const RopeParams& p, uint32_t token, uint32_t h) {
  return h < p.heads ? ptr<bf16>(p.x) + ((size_t)token * p.heads + h) * p.head_dim
                     : ptr<bf16>(p.x2) + ((size_t)token * p.heads2 + (h - p.heads)) * p.head_dim;
}

extern "C" __global__ void rope(RopeParams p) {
  const uint32_t half = p.head_dim / 2, heads = p.heads + p.heads2;
  if (half == 0 || p.heads == 0) return;
  // tokens · heads · half ≤ 2^31 (the launcher checks x, x2 fit 32-bit counts).
  const uint32_t pairs = p.tokens * heads * half;
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= pairs) return;
  const uint32_t f = i % half;        // frequency
  const uint32_t th = i / half;       // token · heads + head
  const uint32_t token = th / heads;  // < tokens since i < pairs
  const uint32_t pos = ptr<const uint32_t>(p.pos)[token];
  if (pos >= p.max_pos) {
    atomicMax(ptr<unsigned int>(p.bad), pos < 0xFFFFFFFFu ? pos + 1u : 0xFFFFFFFFu);
    return;
  }
  const size_t t = (size_t)pos * half + f;  // < max_pos · half
  const float c = ptr<const float>(p.cos)[t];
  const float sn = ptr<const float>(p.sin)[t];
  const float s = p.inverse ? -sn : sn;
  bf16* x = rope_head(p, token, th % heads);  // this head's vector
  const float a = to_f(x[f]);
  const float b = to_f(x[f + half]);  // f + half < head_dim
  x[f] = to_bf(a * c - b * s);
  x[f + half] = to_bf(b * c + a * s);
}

// The fast version: one thread per (token, head, group of 8 frequencies
// f = 8g … 8g+7 < half), so ceil(half/8) threads per head. With half a
// multiple of 8 and x, cos, sin 16-byte aligned, x moves in 16-byte vectors
// (8 values of each half) and the tables in float4s; otherwise the same
// pairs are done with scalar accesses. Each pair's arithmetic is rope's.
extern "C" __global__ void rope8(RopeParams p) {
  const uint32_t half = p.head_dim / 2, heads = p.heads + p.heads2;
  if (half == 0 || p.heads == 0) return;
  const uint32_t groups = (half + 7) / 8;  // per head
  // tokens · heads · groups ≤ tokens · heads · half ≤ 2^31.
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.tokens * heads * groups) return;
  const uint32_t f0 = 8 * (i % groups);
  const uint32_t th = i / groups;     // token · heads + head
  const uint32_t token = th / heads;  // < tokens
  const uint32_t pos = ptr<const uint32_t>(p.pos)[token];
  if (pos >= p.max_pos) {
    atomicMax(ptr<unsigned int>(p.bad), pos < 0xFFFFFFFFu ? pos + 1u : 0xFFFFFFFFu);
    return;
  }
  const float* cs = ptr<const float>(p.cos) + (size_t)pos * half;  // this position's row
  const float* sn = ptr<const float>(p.sin) + (size_t)pos * half;
  bf16* x = rope_head(p, token, th % heads);  // this head's vector
  if (half % 8 == 0 && ((p.x | p.x2 | p.cos | p.sin) & 15u) == 0) {
    float a[8], b[8], c[8], s[8];
    unpack8(ld16(x + f0), a);
    unpack8(ld16(x + f0 + half), b);
    const float4 c0 = *reinterpret_cast<const float4*>(cs + f0), c1 = *reinterpret_cast<const float4*>(cs + f0 + 4);
    const float4 s0 = *reinterpret_cast<const float4*>(sn + f0), s1 = *reinterpret_cast<const float4*>(sn + f0 + 4);
    c[0] = c0.x, c[1] = c0.y, c[2] = c0.z, c[3] = c0.w, c[4] = c1.x, c[5] = c1.y, c[6] = c1.z, c[7] = c1.w;
    s[0] = s0.x, s[1] = s0.y, s[2] = s0.z, s[3] = s0.w, s[4] = s1.x, s[5] = s1.y, s[6] = s1.z, s[7] = s1.w;
    float ya[8], yb[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float se = p.inverse ? -s[e] : s[e];
      ya[e] = a[e] * c[e] - b[e] * se;
      yb[e] = b[e] * c[e] + a[e] * se;
    }
    st16(x + f0, pack8(ya));
    st16(x + f0 + half, pack8(yb));
  } else {
    for (uint32_t f = f0; f < f0 + 8 && f < half; ++f) {
      const float c = cs[f];
      const float se = p.inverse ? -sn[f] : sn[f];
      const float a = to_f(x[f]);
      const float b = to_f(x[f + half]);  // f + half < head_dim
      x[f] = to_bf(a * c - b * se);
      x[f + half] = to_bf(b * c + a * se);
    }
  }
}
