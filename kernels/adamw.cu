// One AdamW step: fp32 master weights and moments, bf16 gradient in, bf16
// working copy of the weights out. One thread per element. The arithmetic
// uses the round-to-nearest intrinsics so nvcc cannot fuse a multiply and an
// add: each operation rounds as the CPU reference's does (bitwise the same
// fp32 results, not just close).
#include "adamw.h"
#include "common.cuh"

extern "C" __global__ void adamw_step(AdamWParams p) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.n) return;
  float* p32 = ptr<float>(p.p32);
  float* m1 = ptr<float>(p.m);
  float* m2 = ptr<float>(p.v);
  const float g = __fmul_rn(to_f(ptr<const bf16>(p.g)[i]), p.grad_scale);
  float w = __fmul_rn(p32[i], p.decay);  // decoupled weight decay first
  const float m = __fadd_rn(__fmul_rn(p.beta1, m1[i]), __fmul_rn(p.one_minus_beta1, g));
  const float v = __fadd_rn(__fmul_rn(p.beta2, m2[i]), __fmul_rn(__fmul_rn(p.one_minus_beta2, g), g));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), p.bc2_sqrt), p.eps);
  w = __fsub_rn(w, __fdiv_rn(__fmul_rn(p.step_size, m), denom));
  m1[i] = m;
  m2[i] = v;
  p32[i] = w;
  ptr<bf16>(p.p16)[i] = to_bf(w);
}
