// SwiGLU, forward beside its backward: bf16 in and out, fp32 arithmetic in
// the same order as the CPU's (src/backend/cpu/elementwise.rs). Eight
// elements per thread and step with 16-byte accesses when every pointer sits
// at the same offset mod 16 (for_each_8 in vec.cuh), scalar otherwise; both
// paths call the same per-element functions, so they give the same bits.
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

struct SwiGluFwd {
  const bf16 *g, *u;
  bf16* out;
  __device__ void one(size_t i) const { out[i] = to_bf(swiglu_out(to_f(g[i]), to_f(u[i]))); }
  __device__ void eight(size_t i) const {
    float a[8], b[8];
    unpack8(ld16(g + i), a);
    unpack8(ld16(u + i), b);
#pragma unroll
    for (int k = 0; k < 8; ++k) a[k] = swiglu_out(a[k], b[k]);
    st16(out + i, pack8(a));
  }
};

extern "C" __global__ void swiglu_fwd(SwiGluFwdParams p) {
  const bool vec = same_phase(p.g, p.u) && same_phase(p.g, p.out);
  const SwiGluFwd op{ptr<const bf16>(p.g), ptr<const bf16>(p.u), ptr<bf16>(p.out)};
  for_each_8(op, p.n, vec ? bf16_head(p.g, p.n) : p.n);
}

struct SwiGluBwd {
  const bf16 *dout, *g, *u;
  bf16 *dg, *du;
  __device__ void one(size_t i) const {
    float a, b;
    swiglu_grads(to_f(dout[i]), to_f(g[i]), to_f(u[i]), a, b);
    du[i] = to_bf(b);
    dg[i] = to_bf(a);
  }
  __device__ void eight(size_t i) const {
    float d[8], gg[8], uu[8];
    unpack8(ld16(dout + i), d);
    unpack8(ld16(g + i), gg);
    unpack8(ld16(u + i), uu);
#pragma unroll
    for (int k = 0; k < 8; ++k) swiglu_grads(d[k], gg[k], uu[k], gg[k], uu[k]);
    st16(du + i, pack8(uu));
    st16(dg + i, pack8(gg));
  }
};

extern "C" __global__ void swiglu_bwd(SwiGluBwdParams p) {
  const bool vec =
      same_phase(p.dout, p.g) && same_phase(p.dout, p.u) && same_phase(p.dout, p.dg) && same_phase(p.dout, p.du);
  const SwiGluBwd op{ptr<const bf16>(p.dout), ptr<const bf16>(p.g), ptr<const bf16>(p.u), ptr<bf16>(p.dg),
                     ptr<bf16>(p.du)};
  for_each_8(op, p.n, vec ? bf16_head(p.dout, p.n) : p.n);
}
