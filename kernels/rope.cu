// Rotary position embedding (HF rotate-half layout). The backward is the
// same kernel with `inverse` set: the rotation by the opposite angle is the
// transpose of the forward's. `rope`, the simple version (for tests): one
// thread per rotated pair (token, head, frequency); `rope8`, the fast one:
// one thread per 8 pairs. Each element is read and written by one thread
// (destination rows are distinct), so a tensor may be rotated in place. A launch serves up to three tensors
// (rope.h): q and k in place, or the fused q/k/v product's rows split into
// q, k (rotated) and v (moved), and joined back in the backward.
#include "common.cuh"
#include "rope.h"
#include "vec.cuh"

// Head h (of all the tensors' heads, in order) of token `token`; dst is
// null where the token's destination row is outside its tensor.
struct RopeHead {
  const bf16* src;
  bf16* dst;
  bool rotate;
};

// Records index i (a position or a row) outside its table in `bad`.
__device__ __forceinline__ void rope_flag(const RopeParams& p, uint32_t i) {
  atomicMax(ptr<unsigned int>(p.bad), i < 0xFFFFFFFFu ? i + 1u : 0xFFFFFFFFu);
}

__device__ __forceinline__ RopeHead rope_head(const RopeParams& p, uint32_t token, uint32_t h) {
  // Field by field through selects of values (unary + makes each operand
  // an rvalue), not p.t[i] with a computed i or a select of lvalues: those
  // take the parameters' address, and nvcc may copy them to local memory.
  const uint32_t h0 = p.t[0].heads, h01 = h0 + p.t[1].heads;
  const bool in0 = h < h0, in1 = !in0 && h < h01;
#define ROPE_PICK(field) (in0 ? +p.t[0].field : in1 ? +p.t[1].field : +p.t[2].field)
  const size_t col = (size_t)(in0 ? h : in1 ? h - h0 : h - h01) * p.head_dim;
  const dptr rows = ROPE_PICK(dst_rows);
  const uint32_t row = rows ? ptr<const uint32_t>(rows)[token] : token;
  const bool row_ok = !rows || row < ROPE_PICK(dst_limit);
  if (!row_ok) rope_flag(p, row);
  const RopeHead x = {ptr<const bf16>(ROPE_PICK(src)) + (size_t)token * ROPE_PICK(src_ld) + col,
                      row_ok ? ptr<bf16>(ROPE_PICK(dst)) + (size_t)row * ROPE_PICK(dst_ld) + col : nullptr,
                      ROPE_PICK(rotate) != 0};
#undef ROPE_PICK
  return x;
}

__device__ __forceinline__ uint32_t rope_heads(const RopeParams& p) {
  return p.t[0].heads + p.t[1].heads + p.t[2].heads;
}

// The position of `token` if it is in the tables; otherwise records it in
// `bad` and returns false.
__device__ __forceinline__ bool rope_pos(const RopeParams& p, uint32_t token, uint32_t* pos) {
  *pos = ptr<const uint32_t>(p.pos)[token];
  if (*pos < p.max_pos) return true;
  rope_flag(p, *pos);
  return false;
}

extern "C" __global__ void rope(RopeParams p) {
  const uint32_t half = p.head_dim / 2, heads = rope_heads(p);
  if (half == 0 || heads == 0) return;
  // tokens · heads · half ≤ 2^31 (the launcher checks).
  const uint32_t pairs = p.tokens * heads * half;
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= pairs) return;
  const uint32_t f = i % half;        // frequency
  const uint32_t th = i / half;       // token · heads + head
  const uint32_t token = th / heads;  // < tokens since i < pairs
  const RopeHead x = rope_head(p, token, th % heads);
  if (!x.dst) return;
  const float a = to_f(x.src[f]);
  const float b = to_f(x.src[f + half]);  // f + half < head_dim
  if (!x.rotate) {
    x.dst[f] = to_bf(a);
    x.dst[f + half] = to_bf(b);
    return;
  }
  uint32_t pos;
  if (!rope_pos(p, token, &pos)) return;
  const size_t t = (size_t)pos * half + f;  // < max_pos · half
  const float c = ptr<const float>(p.cos)[t];
  const float sn = ptr<const float>(p.sin)[t];
  const float s = p.inverse ? -sn : sn;
  x.dst[f] = to_bf(a * c - b * s);
  x.dst[f + half] = to_bf(b * c + a * s);
}

// Whether every tensor's rows and the tables allow 16-byte accesses.
__device__ __forceinline__ bool rope_vectors(const RopeParams& p) {
  uint64_t addr = p.cos | p.sin;
  uint32_t ld = 0;
#pragma unroll
  for (int i = 0; i < 3; ++i) {
    addr |= p.t[i].src | p.t[i].dst;
    ld |= p.t[i].src_ld | p.t[i].dst_ld;
  }
  return p.head_dim % 16 == 0 && (addr & 15u) == 0 && ld % 8 == 0;
}

// The fast version: one thread per (token, head, group of 8 frequencies
// f = 8g … 8g+7 < half), so ceil(half/8) threads per head. With half a
// multiple of 8, every pointer 16-byte aligned and every row stride a
// multiple of 8 elements, the heads move in 16-byte vectors (8 values of
// each half) and the tables in float4s; otherwise the same pairs are done
// with scalar accesses. Each pair's arithmetic is rope's.
extern "C" __global__ void rope8(RopeParams p) {
  const uint32_t half = p.head_dim / 2, heads = rope_heads(p);
  if (half == 0 || heads == 0) return;
  const uint32_t groups = (half + 7) / 8;  // per head
  // tokens · heads · groups ≤ tokens · heads · half ≤ 2^31.
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.tokens * heads * groups) return;
  const uint32_t f0 = 8 * (i % groups);
  const uint32_t th = i / groups;     // token · heads + head
  const uint32_t token = th / heads;  // < tokens
  const RopeHead x = rope_head(p, token, th % heads);
  if (!x.dst) return;
  uint32_t pos = 0;
  if (x.rotate && !rope_pos(p, token, &pos)) return;
  const float* cs = ptr<const float>(p.cos) + (size_t)pos * half;  // this position's row
  const float* sn = ptr<const float>(p.sin) + (size_t)pos * half;
  if (rope_vectors(p)) {
    const uint4 va = ld16(x.src + f0), vb = ld16(x.src + f0 + half);
    if (!x.rotate) {
      st16(x.dst + f0, va);
      st16(x.dst + f0 + half, vb);
      return;
    }
    float a[8], b[8], c[8], s[8];
    unpack8(va, a);
    unpack8(vb, b);
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
    st16(x.dst + f0, pack8(ya));
    st16(x.dst + f0 + half, pack8(yb));
  } else {
    for (uint32_t f = f0; f < f0 + 8 && f < half; ++f) {
      const float a = to_f(x.src[f]);
      const float b = to_f(x.src[f + half]);  // f + half < head_dim
      if (!x.rotate) {
        x.dst[f] = to_bf(a);
        x.dst[f + half] = to_bf(b);
        continue;
      }
      const float c = cs[f];
      const float se = p.inverse ? -sn[f] : sn[f];
      x.dst[f] = to_bf(a * c - b * se);
      x.dst[f + half] = to_bf(b * c + a * se);
    }
  }
}
