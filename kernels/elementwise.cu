// Small elementwise ops on bf16 buffers (fill, copy, add, scale) and the
// deterministic sum of squares behind gradient clipping. One thread per
// element; fp32 arithmetic; every index is checked against n.
#include "common.cuh"
#include "elementwise.h"

// The element of this thread, in 64 bits (blocks · 256 may exceed 2^32).
__device__ __forceinline__ size_t elem_index() { return (size_t)blockIdx.x * blockDim.x + threadIdx.x; }

extern "C" __global__ void fill_bf16(ElementwiseParams p) {
  const size_t i = elem_index();
  if (i < p.n) ptr<bf16>(p.dst)[i] = to_bf(p.value);
}

extern "C" __global__ void copy_bf16(ElementwiseParams p) {
  const size_t i = elem_index();
  if (i < p.n) ptr<bf16>(p.dst)[i] = ptr<const bf16>(p.src)[i];
}

extern "C" __global__ void add_assign_bf16(ElementwiseParams p) {
  const size_t i = elem_index();
  if (i < p.n) {
    bf16* d = ptr<bf16>(p.dst);
    d[i] = to_bf(to_f(d[i]) + to_f(ptr<const bf16>(p.src)[i]));
  }
}

extern "C" __global__ void scale_bf16(ElementwiseParams p) {
  const size_t i = elem_index();
  if (i < p.n) {
    bf16* d = ptr<bf16>(p.dst);
    d[i] = to_bf(to_f(d[i]) * p.value);
  }
}

// Stage 1: block b sums the squares of its fixed chunk into partial[b].
// Squares and sums in fp64: a bf16 squared is exact there, and neither
// underflows nor overflows (in fp32, a square of 1e-30 or 1e30 would).
extern "C" __global__ void __launch_bounds__(ENGINE_SUMSQ_THREADS) sum_squares_partial(SumSquaresParams p) {
  __shared__ double scratch[33];
  const uint32_t b = blockIdx.x;
  if (b >= p.chunks) return;  // the whole block leaves together
  const bf16* x = ptr<const bf16>(p.x);
  const size_t begin = (size_t)b * ENGINE_SUMSQ_CHUNK;
  const size_t end = min((size_t)p.n, begin + (size_t)ENGINE_SUMSQ_CHUNK);
  double s = 0.0;
  for (size_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const double v = (double)to_f(x[i]);
    s += v * v;
  }
  s = block_sum<double>(s, scratch);
  if (threadIdx.x == 0) ptr<double>(p.partial)[b] = s;
}

// Stage 2, one block: *out = Σ partial[b]; thread k sums b = k, k + blockDim,
// … in order, then the fixed block reduction.
extern "C" __global__ void __launch_bounds__(ENGINE_SUMSQ_THREADS) sum_squares_final(SumSquaresParams p) {
  __shared__ double scratch[33];
  const double* part = ptr<const double>(p.partial);
  double s = 0.0;
  for (uint32_t b = threadIdx.x; b < p.chunks; b += blockDim.x) s += part[b];
  s = block_sum<double>(s, scratch);
  if (threadIdx.x == 0 && blockIdx.x == 0) *ptr<double>(p.out) = s;
}
