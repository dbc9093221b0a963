// RMSNorm, forward (with the fused residual add) beside its backward.
// One block per row; fp32 arithmetic; the weight gradient is summed per
// block of rows, then across blocks in a fixed order (deterministic).
#include "common.cuh"
#include "rmsnorm.h"

extern "C" __global__ void __launch_bounds__(ENGINE_ROW_THREADS) rmsnorm_fwd(RmsNormFwdParams p) {
  __shared__ float scratch[33];
  const uint32_t row = blockIdx.x;
  if (row >= p.rows) return;
  const size_t base = (size_t)row * p.dim;
  const bf16* x = ptr<const bf16>(p.x) + base;
  const bf16* r = p.residual ? ptr<const bf16>(p.residual) + base : nullptr;
  bf16* h = p.residual ? ptr<bf16>(p.h) + base : nullptr;
  const bf16* w = ptr<const bf16>(p.w);
  bf16* y = ptr<bf16>(p.y) + base;
  float ss = 0.0f;
  for (uint32_t i = threadIdx.x; i < p.dim; i += blockDim.x) {
    float v = to_f(x[i]);
    if (r) {
      // The sum is rounded to bf16 first: the normalised value is the stored h.
      const bf16 hv = to_bf(v + to_f(r[i]));
      h[i] = hv;
      v = to_f(hv);
    }
    ss += v * v;
  }
  const float rstd = rsqrtf(block_sum(ss, scratch) / (float)p.dim + p.eps);
  if (threadIdx.x == 0) ptr<float>(p.rstd)[row] = rstd;
  for (uint32_t i = threadIdx.x; i < p.dim; i += blockDim.x) {
    const float v = r ? to_f(h[i]) : to_f(x[i]);
    y[i] = to_bf(v * rstd * to_f(w[i]));
  }
}

// dx = rstd · (w∘dy − x̂ · mean(w∘dy∘x̂)), x̂ = x·rstd; dw += Σ_rows dy∘x̂.
// Block b handles rows [b·rows_per_block, …) and writes its dw share to
// dw_partial[b]; rmsnorm_dw_reduce then adds the shares into dw in order.
extern "C" __global__ void __launch_bounds__(ENGINE_ROW_THREADS) rmsnorm_bwd(RmsNormBwdParams p) {
  __shared__ float scratch[33];
  const bf16* w = ptr<const bf16>(p.w);
  float* part = ptr<float>(p.dw_partial) + (size_t)blockIdx.x * p.dim;
  for (uint32_t i = threadIdx.x; i < p.dim; i += blockDim.x) part[i] = 0.0f;
  const uint32_t r0 = blockIdx.x * p.rows_per_block;
  const uint32_t r1 = min(p.rows, r0 + p.rows_per_block);
  for (uint32_t row = r0; row < r1; ++row) {
    const size_t base = (size_t)row * p.dim;
    const bf16* x = ptr<const bf16>(p.x) + base;
    const bf16* dy = ptr<const bf16>(p.dy) + base;
    bf16* dx = ptr<bf16>(p.dx) + base;
    const float rstd = ptr<const float>(p.rstd)[row];
    float dot = 0.0f;
    for (uint32_t i = threadIdx.x; i < p.dim; i += blockDim.x) {
      const float xh = to_f(x[i]) * rstd;
      const float g = to_f(dy[i]);
      dot += g * to_f(w[i]) * xh;
      part[i] += g * xh;  // each thread owns its columns: no race
    }
    const float mean = block_sum(dot, scratch) / (float)p.dim;
    for (uint32_t i = threadIdx.x; i < p.dim; i += blockDim.x) {
      const float xh = to_f(x[i]) * rstd;
      float d = rstd * (to_f(dy[i]) * to_f(w[i]) - xh * mean);
      if (p.accumulate_dx) d += to_f(dx[i]);
      dx[i] = to_bf(d);
    }
  }
}

// dw[i] += Σ_b dw_partial[b][i], b in order. One thread per column.
extern "C" __global__ void rmsnorm_dw_reduce(RmsNormBwdParams p) {
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.dim) return;
  const uint32_t blocks = (p.rows + p.rows_per_block - 1) / p.rows_per_block;
  float s = 0.0f;
  for (uint32_t b = 0; b < blocks; ++b) s += ptr<const float>(p.dw_partial)[(size_t)b * p.dim + i];
  bf16* dw = ptr<bf16>(p.dw);
  dw[i] = to_bf(to_f(dw[i]) + s);
}
