// SwiGLU, forward beside its backward: bf16 in and out, fp32 arithmetic in
// the same order as the CPU's (src/backend/cpu/elementwise.rs). Eight
// elements per thread and step with 16-byte accesses when every pointer sits
// at the same offset mod 16 (for_each_8 in vec.cuh), scalar otherwise; both
// paths call the same per-element functions, so they give the same bits.
// Gate and up may be the two halves of each row of one product's output
// (row stride ld = 2·cols): output element i is row i / cols, column
// i % cols. Rows of several elements take 16-byte vectors only where every
// row starts on a 16-byte boundary (cols and ld multiples of 8, every
// pointer aligned), so that no vector crosses a row.
#include "common.cuh"
#include "swiglu.h"
#include "vec.cuh"

// σ(x) = 1 / (1 + e^−x). For x → −∞, e^−x overflows to +inf and σ is 0
// (no NaN); for x → +∞ it is 1.
__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ __forceinline__ float swiglu_out(float g, float u) { return g * sigmoid(g) * u; }

__device__ __forceinline__ void swiglu_grads(float d, float g, float u, float& dg, float& du) {
  const float s = sigmoid(g);
  du = d * g * s;
  dg = d * u * s * (1.0f + g * (1.0f - s));
}

// Where output element i's gate (and up, and their gradients) sit. i < n
// fits 32 bits: the division is a 32-bit one.
__device__ __forceinline__ size_t in_row(size_t i, uint32_t cols, uint32_t ld) {
  const uint32_t k = (uint32_t)i;
  return cols == ld ? i : (size_t)(k / cols) * ld + k % cols;
}

// The scalar head for_each_8 takes: as for a flat range where the rows are
// one (cols == ld), else none if every row is 16-byte aligned, else all.
__device__ __forceinline__ uint32_t rows_head(bool same, dptr p, uint32_t n, uint32_t cols, uint32_t ld) {
  if (!same) return n;
  if (cols == ld) return bf16_head(p, n);
  return cols % 8 == 0 && ld % 8 == 0 && bf16_head(p, n) == 0 ? 0 : n;
}

struct SwiGluFwd {
  const bf16 *g, *u;
  bf16* out;
  uint32_t cols, ld;
  __device__ void one(size_t i) const {
    const size_t j = in_row(i, cols, ld);
    out[i] = to_bf(swiglu_out(to_f(g[j]), to_f(u[j])));
  }
  __device__ void eight(size_t i) const {
    const size_t j = in_row(i, cols, ld);
    float a[8], b[8];
    unpack8(ld16(g + j), a);
    unpack8(ld16(u + j), b);
#pragma unroll
    for (int k = 0; k < 8; ++k) a[k] = swiglu_out(a[k], b[k]);
    st16(out + i, pack8(a));
  }
};

extern "C" __global__ void swiglu_fwd(SwiGluFwdParams p) {
  if (p.cols == 0) return;  // rows of nothing (the host refuses them)
  const bool same = same_phase(p.g, p.u) && same_phase(p.g, p.out);
  const SwiGluFwd op{ptr<const bf16>(p.g), ptr<const bf16>(p.u), ptr<bf16>(p.out), p.cols, p.ld};
  for_each_8(op, p.n, rows_head(same, p.g, p.n, p.cols, p.ld));
}

struct SwiGluBwd {
  const bf16 *dout, *g, *u;
  bf16 *dg, *du;
  uint32_t cols, ld;
  __device__ void one(size_t i) const {
    const size_t j = in_row(i, cols, ld);
    float a, b;
    swiglu_grads(to_f(dout[i]), to_f(g[j]), to_f(u[j]), a, b);
    du[j] = to_bf(b);
    dg[j] = to_bf(a);
  }
  __device__ void eight(size_t i) const {
    const size_t j = in_row(i, cols, ld);
    float d[8], gg[8], uu[8];
    unpack8(ld16(dout + i), d);
    unpack8(ld16(g + j), gg);
    unpack8(ld16(u + j), uu);
#pragma unroll
    for (int k = 0; k < 8; ++k) swiglu_grads(d[k], gg[k], uu[k], gg[k], uu[k]);
    st16(du + j, pack8(uu));
    st16(dg + j, pack8(gg));
  }
};

extern "C" __global__ void swiglu_bwd(SwiGluBwdParams p) {
  if (p.cols == 0) return;
  const bool same =
      same_phase(p.dout, p.g) && same_phase(p.dout, p.u) && same_phase(p.dout, p.dg) && same_phase(p.dout, p.du);
  const SwiGluBwd op{ptr<const bf16>(p.dout), ptr<const bf16>(p.g), ptr<const bf16>(p.u), ptr<bf16>(p.dg),
                     ptr<bf16>(p.du), p.cols, p.ld};
  for_each_8(op, p.n, rows_head(same, p.dout, p.n, p.cols, p.ld));
}
