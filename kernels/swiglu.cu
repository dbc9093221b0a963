// SwiGLU, forward beside its backward: one thread per element, bf16 in and
// out, fp32 arithmetic in the same order as the CPU's
// (src/backend/cpu/elementwise.rs).
#include "common.cuh"
#include "swiglu.h"

// σ(x) = 1 / (1 + e^−x). For x → −∞, e^−x overflows to +inf and σ is 0
// (no NaN); for x → +∞ it is 1.
__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

extern "C" __global__ void swiglu_fwd(SwiGluFwdParams p) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.n) return;
  const float g = to_f(ptr<const bf16>(p.g)[i]);
  const float u = to_f(ptr<const bf16>(p.u)[i]);
  ptr<bf16>(p.out)[i] = to_bf(g * sigmoid(g) * u);
}

extern "C" __global__ void swiglu_bwd(SwiGluBwdParams p) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.n) return;
  const float d = to_f(ptr<const bf16>(p.dout)[i]);
  const float g = to_f(ptr<const bf16>(p.g)[i]);
  const float u = to_f(ptr<const bf16>(p.u)[i]);
  const float s = sigmoid(g);
  ptr<bf16>(p.du)[i] = to_bf(d * g * s);
  ptr<bf16>(p.dg)[i] = to_bf(d * u * s * (1.0f + g * (1.0f - s)));
}
