// Row moves and row sums: copy_rows (KV-cache writes, row gathers) and the
// bias gradient (column sums over rows).
#include "colsum.cuh"
#include "common.cuh"
#include "rows.h"

// Records a row index outside its buffer: bad = max(bad, 1 + index).
__device__ __forceinline__ void record_bad(dptr bad, uint32_t index) {
  atomicMax(ptr<unsigned int>(bad), index < 0xFFFFFFFFu ? index + 1u : 0xFFFFFFFFu);
}

// One block per copy i (and, with src2, one more per copy i of the second
// pair: block n + i). Every early return below depends on blockIdx.x
// alone, so the whole block takes it together (needed by __syncthreads_or).
extern "C" __global__ void __launch_bounds__(ENGINE_ROW_THREADS) copy_rows(CopyRowsParams p) {
  const bool second = p.src2 != 0 && p.dst2 != 0 && blockIdx.x >= p.n;
  const uint32_t i = second ? blockIdx.x - p.n : blockIdx.x;
  if (i >= p.n) return;
  const uint32_t* src_rows = ptr<const uint32_t>(p.src_rows);
  const uint32_t* dst_rows = ptr<const uint32_t>(p.dst_rows);
  const uint32_t s = src_rows[i], d = dst_rows[i];
  if (s >= p.src_count || d >= p.dst_count) {
    if (threadIdx.x == 0) {
      if (s >= p.src_count) record_bad(p.bad, s);
      if (d >= p.dst_count) record_bad(p.bad, d);
    }
    return;
  }
  // The last copy into a row wins: skip this one if a later valid copy
  // writes the same destination row (so the result is the CPU's sequential
  // loop over the valid copies). n < 2^31, so j does not wrap.
  // (`unique` is the same for the whole grid, so the block takes the branch together.)
  if (!p.unique) {
    int later = 0;
    for (uint32_t j = i + 1 + threadIdx.x; j < p.n; j += blockDim.x) {
      if (dst_rows[j] == d) later |= src_rows[j] < p.src_count;  // src_rows read only on a match
    }
    if (__syncthreads_or(later)) return;
  }
  const dptr src = second ? p.src2 : p.src, dst = second ? p.dst2 : p.dst;
  const uint16_t* from = ptr<const uint16_t>(src) + (size_t)s * p.width;
  uint16_t* to = ptr<uint16_t>(dst) + (size_t)d * p.width;
  if (same_phase(src, dst) && p.width % 8 == 0) {
    // Rows of whole 16-byte vectors at the same phase: the row starts share
    // the buffers' phase, so one head aligns both.
    const uint32_t h = bf16_head((dptr)to, p.width);
    for (uint32_t k = threadIdx.x; k < h; k += blockDim.x) to[k] = from[k];
    const uint32_t nv = (p.width - h) / 8;
    for (uint32_t v = threadIdx.x; v < nv; v += blockDim.x) st16(to + h + 8 * v, ld16(from + h + 8 * v));
    for (uint32_t k = h + 8 * nv + threadIdx.x; k < p.width; k += blockDim.x) to[k] = from[k];
  } else {
    for (uint32_t k = threadIdx.x; k < p.width; k += blockDim.x) to[k] = from[k];
  }
}

// The rows of dy for the 8 columns j0 … j0+7 (colsum.cuh).
struct BiasRows {
  typedef uint4 Raw;
  const bf16* dy;
  uint32_t cols, j0;
  bool vec;
  __device__ uint4 load(uint32_t r) const { return load_row8(dy + (size_t)r * cols, j0, cols, vec); }
  __device__ void add(const uint4& v, float c[8]) const {
    float f[8];
    unpack8(v, f);
#pragma unroll
    for (int e = 0; e < 8; ++e) c[e] += f[e];
  }
};

// Block b owns columns 8b … 8b+7 and walks every span of rows (the
// ENGINE_COLSUM order); threads 0 … 7 hold the columns' running sums.
extern "C" __global__ void __launch_bounds__(ENGINE_COLSUM_CHUNKS) bias_grad(BiasGradParams p) {
  __shared__ float sh[COLSUM_SMEM];
  const uint32_t j0 = blockIdx.x * 8;
  if (j0 >= p.cols) return;  // the whole block leaves together
  const uint32_t t = threadIdx.x;
  const BiasRows src{ptr<const bf16>(p.dy), p.cols, j0, p.cols % 8 == 0 && (p.dy & 15u) == 0};
  bf16* db = ptr<bf16>(p.db);
  const bool mine = t < 8 && j0 + t < p.cols;
  float acc = mine ? to_f(db[j0 + t]) : 0.0f;
  const uint32_t span = ENGINE_COLSUM_CHUNK * ENGINE_COLSUM_CHUNKS;
  const uint32_t spans = p.rows / span + (p.rows % span != 0);
  for (uint32_t s = 0; s < spans; ++s) {
    const float sum = colsum_span(src, p.rows, s, sh);
    if (t < 8) acc += sum;
  }
  if (mine) db[j0 + t] = to_bf(acc);
}

// The reference: one thread per column, rows added in order from db's own
// value: the same sum, in the same order, as the CPU's column sums.
extern "C" __global__ void bias_grad_reference(BiasGradParams p) {
  const size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= p.cols) return;
  const bf16* dy = ptr<const bf16>(p.dy) + j;
  bf16* db = ptr<bf16>(p.db);
  float s = to_f(db[j]);
  for (uint32_t r = 0; r < p.rows; ++r) s += to_f(dy[(size_t)r * p.cols]);
  db[j] = to_bf(s);
}
