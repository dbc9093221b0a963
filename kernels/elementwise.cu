// Small elementwise ops on bf16 buffers (fill, copy, add, scale) and the
// deterministic sum of squares behind gradient clipping. fp32 arithmetic.
// Each thread moves 16 bytes (8 elements) at a time where the pointers allow
// (for_each_8 in vec.cuh): a scalar head up to the first 16-byte boundary,
// vectors, a scalar tail; when dst and src sit at different offsets mod 16
// everything is scalar. The scalar and vector paths do the same per-element
// arithmetic, so the results do not depend on the path.
#include "common.cuh"
#include "elementwise.h"
#include "vec.cuh"

// The vector head for dst (and src, when the op reads it): n when the two
// cannot be aligned together, making the whole op scalar.
__device__ __forceinline__ uint32_t ew_head(const ElementwiseParams& p, bool reads_src) {
  if ((p.dst & 1u) != 0 || (reads_src && !same_phase(p.dst, p.src))) return p.n;
  return bf16_head(p.dst, p.n);
}

struct FillOp {
  bf16* d;
  bf16 v;
  uint32_t w;  // v twice
  __device__ void one(size_t i) const { d[i] = v; }
  __device__ void eight(size_t i) const { st16(d + i, make_uint4(w, w, w, w)); }
};

extern "C" __global__ void fill_bf16(ElementwiseParams p) {
  const bf16 v = to_bf(p.value);
  const FillOp op{ptr<bf16>(p.dst), v, bits(v) | (bits(v) << 16)};
  for_each_8(op, p.n, ew_head(p, false));
}

struct CopyOp {
  bf16* d;
  const bf16* s;
  __device__ void one(size_t i) const { d[i] = s[i]; }
  __device__ void eight(size_t i) const { st16(d + i, ld16(s + i)); }
};

extern "C" __global__ void copy_bf16(ElementwiseParams p) {
  const CopyOp op{ptr<bf16>(p.dst), ptr<const bf16>(p.src)};
  for_each_8(op, p.n, ew_head(p, true));
}

struct AddOp {
  bf16* d;
  const bf16* s;
  __device__ void one(size_t i) const { d[i] = to_bf(to_f(d[i]) + to_f(s[i])); }
  __device__ void eight(size_t i) const {
    float a[8], b[8];
    unpack8(ld16(d + i), a);
    unpack8(ld16(s + i), b);
#pragma unroll
    for (int k = 0; k < 8; ++k) a[k] += b[k];
    st16(d + i, pack8(a));
  }
};

extern "C" __global__ void add_assign_bf16(ElementwiseParams p) {
  const AddOp op{ptr<bf16>(p.dst), ptr<const bf16>(p.src)};
  for_each_8(op, p.n, ew_head(p, true));
}

struct ScaleOp {
  bf16* d;
  float v;
  __device__ void one(size_t i) const { d[i] = to_bf(to_f(d[i]) * v); }
  __device__ void eight(size_t i) const {
    float a[8];
    unpack8(ld16(d + i), a);
#pragma unroll
    for (int k = 0; k < 8; ++k) a[k] *= v;
    st16(d + i, pack8(a));
  }
};

extern "C" __global__ void scale_bf16(ElementwiseParams p) {
  const ScaleOp op{ptr<bf16>(p.dst), p.value};
  for_each_8(op, p.n, ew_head(p, false));
}

// Groups of 8 elements each thread of sum_squares_partial reads per chunk.
#define SUMSQ_GROUPS (ENGINE_SUMSQ_CHUNK / 8 / ENGINE_SUMSQ_THREADS)
static_assert(SUMSQ_GROUPS * 8 * ENGINE_SUMSQ_THREADS == ENGINE_SUMSQ_CHUNK, "chunk = threads · groups · 8");

// Stage 1: block b sums the squares of its fixed chunk into partial[b].
// Squares and sums in fp64: a bf16 squared is exact there, and neither
// underflows nor overflows (in fp32, a square of 1e-30 or 1e30 would).
// Thread k adds, in order, the 8 elements of each group g = k + 256·j
// (j = 0 … 7) of the chunk: one 16-byte load per group when x is 16-byte
// aligned and the chunk is whole, else scalar loads of the same elements in
// the same order (the same bits). Then the fixed block reduction.
extern "C" __global__ void __launch_bounds__(ENGINE_SUMSQ_THREADS) sum_squares_partial(SumSquaresParams p) {
  __shared__ double scratch[33];
  const uint32_t b = blockIdx.x;
  if (b >= p.chunks) return;  // the whole block leaves together
  const bf16* x = ptr<const bf16>(p.x);
  const size_t begin = (size_t)b * ENGINE_SUMSQ_CHUNK;
  const size_t end = min((size_t)p.n, begin + (size_t)ENGINE_SUMSQ_CHUNK);
  double s = 0.0;
  if ((p.x & 15u) == 0 && end - begin == ENGINE_SUMSQ_CHUNK) {
    uint4 r[SUMSQ_GROUPS];
#pragma unroll
    for (int j = 0; j < SUMSQ_GROUPS; ++j) r[j] = ld16(x + begin + 8 * (threadIdx.x + ENGINE_SUMSQ_THREADS * j));
#pragma unroll
    for (int j = 0; j < SUMSQ_GROUPS; ++j) {
      float f[8];
      unpack8(r[j], f);
#pragma unroll
      for (int k = 0; k < 8; ++k) s = fma((double)f[k], (double)f[k], s);
    }
  } else {
#pragma unroll
    for (int j = 0; j < SUMSQ_GROUPS; ++j) {
      const size_t g = begin + 8 * (threadIdx.x + ENGINE_SUMSQ_THREADS * j);
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        if (g + k < end) {
          const double v = (double)to_f(x[g + k]);
          s = fma(v, v, s);
        }
      }
    }
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
