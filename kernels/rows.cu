// Row moves and row sums: copy_rows (KV-cache writes, row gathers) and the
// bias gradient (column sums over rows).
#include "common.cuh"
#include "rows.h"

// Records a row index outside its buffer: bad = max(bad, 1 + index).
__device__ __forceinline__ void record_bad(dptr bad, uint32_t index) {
  atomicMax(ptr<unsigned int>(bad), index < 0xFFFFFFFFu ? index + 1u : 0xFFFFFFFFu);
}

// One block per copy i. Every early return below depends on blockIdx.x
// alone, so the whole block takes it together (needed by __syncthreads_or).
extern "C" __global__ void __launch_bounds__(ENGINE_ROW_THREADS) copy_rows(CopyRowsParams p) {
  const uint32_t i = blockIdx.x;
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
  int later = 0;
  for (uint32_t j = i + 1 + threadIdx.x; j < p.n; j += blockDim.x) {
    later |= dst_rows[j] == d && src_rows[j] < p.src_count;
  }
  if (__syncthreads_or(later)) return;
  const uint16_t* from = ptr<const uint16_t>(p.src) + (size_t)s * p.width;
  uint16_t* to = ptr<uint16_t>(p.dst) + (size_t)d * p.width;
  for (uint32_t k = threadIdx.x; k < p.width; k += blockDim.x) to[k] = from[k];
}

// One thread per column, rows added in order from db's own value: the
// same sum, in the same order, as the CPU's column sums.
extern "C" __global__ void bias_grad(BiasGradParams p) {
  const size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= p.cols) return;
  const bf16* dy = ptr<const bf16>(p.dy) + j;
  bf16* db = ptr<bf16>(p.db);
  float s = to_f(db[j]);
  for (uint32_t r = 0; r < p.rows; ++r) s += to_f(dy[(size_t)r * p.cols]);
  db[j] = to_bf(s);
}
