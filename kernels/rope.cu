// Rotary position embedding (HF rotate-half layout). The backward is the
// same kernel with `inverse` set: the rotation by the opposite angle is the
// transpose of the forward's. `rope`, the simple version (for tests): one
// thread per rotated pair (token, head, frequency); `rope8`, the fast one:
// one thread per 8 pairs. Each element is read and written by one thread
// (destination rows are distinct), so a tensor may be rotated in place,
// unless it is normalised (a head's threads read the whole head: the
// launcher allows norms only from the fused rows into other buffers). A launch serves up to three tensors
// (rope.h): q and k in place, or the fused q/k/v product's rows split into
// q, k (rotated) and v (moved), and joined back in the backward; a split
// may also normalise q and k first (Qwen3's per-head RMSNorm) and send k
// and v to a KV cache's rows.
#include "common.cuh"
#include "rope.h"
#include "vec.cuh"

// Head h (of all the tensors' heads, in order) of token `token`; dst is
// null where the token's destination row is outside its tensor.
struct RopeHead {
  const bf16* src;
  bf16* dst;
  const bf16* norm_w;  // null: no norm
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
                      ptr<const bf16>(ROPE_PICK(norm_w)), ROPE_PICK(rotate) != 0};
#undef ROPE_PICK
  return x;
}

__device__ __forceinline__ uint32_t rope_heads(const RopeParams& p) {
  return p.t[0].heads + p.t[1].heads + p.t[2].heads;
}

__device__ __forceinline__ bool rope_norms(const RopeParams& p) {
  return (p.t[0].norm_w | p.t[1].norm_w | p.t[2].norm_w) != 0;
}

// The position of `token` if it is in the tables; otherwise records it in
// `bad` and returns false.
__device__ __forceinline__ bool rope_pos(const RopeParams& p, uint32_t token, uint32_t* pos) {
  *pos = ptr<const uint32_t>(p.pos)[token];
  if (*pos < p.max_pos) return true;
  rope_flag(p, *pos);
  return false;
}

// Σ x² over a head vector, in element order (the simple kernel's sum, and
// the fast one's where its lanes cannot share the work).
__device__ __forceinline__ float head_squares(const bf16* x, uint32_t head_dim) {
  float ss = 0.0f;
  for (uint32_t e = 0; e < head_dim; ++e) {
    const float v = to_f(x[e]);
    ss += v * v;
  }
  return ss;
}

// The head's RMSNorm factor from its Σ x² (rmsnorm_fwd's formula).
__device__ __forceinline__ float rope_rstd(const RopeParams& p, float ss) {
  return rsqrtf(ss / (float)p.head_dim + p.eps);
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
  float a = to_f(x.src[f]);
  float b = to_f(x.src[f + half]);  // f + half < head_dim
  if (x.norm_w) {
    // The head's norm: this thread sums the whole head itself.
    const float rstd = rope_rstd(p, head_squares(x.src, p.head_dim));
    a = to_f(to_bf(a * rstd * to_f(x.norm_w[f])));
    b = to_f(to_bf(b * rstd * to_f(x.norm_w[f + half])));
  }
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

// Whether every tensor's rows, norm weights and the tables allow 16-byte
// accesses.
__device__ __forceinline__ bool rope_vectors(const RopeParams& p) {
  uint64_t addr = p.cos | p.sin;
  uint32_t ld = 0;
#pragma unroll
  for (int i = 0; i < 3; ++i) {
    addr |= p.t[i].src | p.t[i].dst | p.t[i].norm_w;
    ld |= p.t[i].src_ld | p.t[i].dst_ld;
  }
  return p.head_dim % 16 == 0 && (addr & 15u) == 0 && ld % 8 == 0;
}

// The fast version: one thread per (token, head, group of 8 frequencies
// f = 8g … 8g+7 < half), so ceil(half/8) threads per head. With half a
// multiple of 8, every pointer 16-byte aligned and every row stride a
// multiple of 8 elements, the heads move in 16-byte vectors (8 values of
// each half) and the tables in float4s; otherwise the same pairs are done
// with scalar accesses. Each pair's arithmetic is rope's (but for the
// order of a normalised head's Σ x²). A normalised
// head's Σ x² is shared by its lanes through shuffles where they are an
// aligned run of one warp (groups a power of two ≤ 32: head_dim 16 … 512);
// otherwise each lane sums the whole head, as rope does.
extern "C" __global__ void rope8(RopeParams p) {
  const uint32_t half = p.head_dim / 2, heads = rope_heads(p);
  if (half == 0 || heads == 0) return;
  const uint32_t groups = (half + 7) / 8;  // per head
  // tokens · heads · groups ≤ tokens · heads · half ≤ 2^31.
  const uint32_t items = p.tokens * heads * groups;
  if (items == 0) return;
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  // With shuffles every lane of a warp must reach them: a lane past the
  // end works on the last item (reads only) and stops before any write.
  const bool shuffle = rope_norms(p) && groups <= 32 && (groups & (groups - 1)) == 0;
  if (i >= items && !shuffle) return;
  const bool live = i < items;
  const uint32_t j = live ? i : items - 1;
  const uint32_t f0 = 8 * (j % groups);
  const uint32_t th = j / groups;     // token · heads + head
  const uint32_t token = th / heads;  // < tokens
  const RopeHead x = rope_head(p, token, th % heads);
  const bool vec = rope_vectors(p);
  // This lane's pairs, 0 past half (scalar accesses).
  const uint4 va = load_row8(x.src, f0, half, vec), vb = load_row8(x.src + half, f0, half, vec);
  float a[8], b[8];
  unpack8(va, a);
  unpack8(vb, b);
  float ss = 0.0f;
  if (x.norm_w) {
#pragma unroll
    for (int e = 0; e < 8; ++e) ss += a[e] * a[e] + b[e] * b[e];
  }
  if (shuffle) {
    // The head's lanes are lanes [g·groups, (g+1)·groups) of the warp: the
    // butterfly gives each of them the same bits.
    for (uint32_t o = 1; o < groups; o <<= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  } else if (x.norm_w) {
    ss = head_squares(x.src, p.head_dim);
  }
  if (!live || !x.dst) return;
  if (!x.norm_w && !x.rotate) {
    // Moved as they are (v beside q and k): the same bits.
    store_row8(x.dst, f0, half, vec, va);
    store_row8(x.dst + half, f0, half, vec, vb);
    return;
  }
  if (x.norm_w) {
    const float rstd = rope_rstd(p, ss);
    float wa[8], wb[8];
    unpack8(load_row8(x.norm_w, f0, half, vec), wa);
    unpack8(load_row8(x.norm_w + half, f0, half, vec), wb);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      a[e] = to_f(to_bf(a[e] * rstd * wa[e]));
      b[e] = to_f(to_bf(b[e] * rstd * wb[e]));
    }
  }
  if (x.rotate) {
    uint32_t pos;
    if (!rope_pos(p, token, &pos)) return;
    float c[8], s[8];
    const float* cs = ptr<const float>(p.cos) + (size_t)pos * half + f0;  // this position's row
    const float* sn = ptr<const float>(p.sin) + (size_t)pos * half + f0;
    if (vec) {
      const float4 c0 = *reinterpret_cast<const float4*>(cs), c1 = *reinterpret_cast<const float4*>(cs + 4);
      const float4 s0 = *reinterpret_cast<const float4*>(sn), s1 = *reinterpret_cast<const float4*>(sn + 4);
      c[0] = c0.x, c[1] = c0.y, c[2] = c0.z, c[3] = c0.w, c[4] = c1.x, c[5] = c1.y, c[6] = c1.z, c[7] = c1.w;
      s[0] = s0.x, s[1] = s0.y, s[2] = s0.z, s[3] = s0.w, s[4] = s1.x, s[5] = s1.y, s[6] = s1.z, s[7] = s1.w;
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const bool in = f0 + e < half;
        c[e] = in ? cs[e] : 0.0f;
        s[e] = in ? sn[e] : 0.0f;
      }
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float se = p.inverse ? -s[e] : s[e];
      const float ya = a[e] * c[e] - b[e] * se;
      b[e] = b[e] * c[e] + a[e] * se;
      a[e] = ya;
    }
  }
  store_row8(x.dst, f0, half, vec, pack8(a));
  store_row8(x.dst + half, f0, half, vec, pack8(b));
}
