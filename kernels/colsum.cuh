// Column sums over rows in a fixed order (the bias gradient, RMSNorm's weight
// gradient): Σ_r v(r, j) for the 8 columns j0 … j0+7 of a block, where the
// order depends on the row count alone, never on the GPU or the grid:
//   chunk k: rows [16k, 16k + 16), added in row order to 0 (fp32);
//   run q of span s: chunks k = 256s + 32q … 256s + 32q + 31, added in order to 0;
//   span s: its runs q = 0 … 7 added in order to 0;
//   result: init + S_0 + S_1 + … (spans in order).
// Chunks, runs and spans past the last row add +0, which changes nothing
// (a sum that starts at +0 is never −0). One block of 256 threads handles
// one span per pass: thread t sums chunk 256s + t. src provides
//   Raw load(r): the raw data of row r for the 8 columns (16-byte loads, or
//     scalar loads where the pointers or the width forbid them; 0 past the
//     last column), and
//   void add(const Raw&, float c[8]): c[e] += v(r, j0 + e),
// The constants of the order are in kernels/include/rows.h (ENGINE_COLSUM_*),
// where Rust sees them too.
#pragma once
#include "common.cuh"
#include "rows.h"
#include "vec.cuh"

#define COLSUM_CHUNK ENGINE_COLSUM_CHUNK      // rows per chunk
#define COLSUM_THREADS ENGINE_COLSUM_CHUNKS   // chunks per span = threads per block
#define COLSUM_RUN ENGINE_COLSUM_RUN          // chunks per run
#define COLSUM_BATCH 8                        // rows loaded before they are added (loads in flight)
static_assert(COLSUM_THREADS % COLSUM_RUN == 0 && COLSUM_THREADS / COLSUM_RUN * 8 <= COLSUM_THREADS, "runs");
static_assert(COLSUM_CHUNK % COLSUM_BATCH == 0, "batches");
#define COLSUM_SMEM (8 * (COLSUM_THREADS / COLSUM_RUN) * (COLSUM_RUN + 1) + 64)

// Span s's sums for the block's 8 columns: valid in threads 0 … 7 (column
// j0 + threadIdx.x); every thread of the block must call it (barriers).
// sh: COLSUM_SMEM floats of shared memory.
template <typename Src>
__device__ __forceinline__ float colsum_span(const Src& src, uint32_t rows, uint32_t s, float* sh) {
  constexpr int RUNS = COLSUM_THREADS / COLSUM_RUN;  // 8
  constexpr int PER_COL = RUNS * (COLSUM_RUN + 1);   // padded: run q at q·33
  const uint32_t t = threadIdx.x;
  float c[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) c[e] = 0.0f;
  const size_t r0 = ((size_t)s * COLSUM_THREADS + t) * COLSUM_CHUNK;
#pragma unroll
  for (int b = 0; b < COLSUM_CHUNK; b += COLSUM_BATCH) {
    typename Src::Raw raw[COLSUM_BATCH];
#pragma unroll
    for (int i = 0; i < COLSUM_BATCH; ++i) {
      const size_t r = r0 + b + i;
      if (r < rows) raw[i] = src.load((uint32_t)r);
    }
#pragma unroll
    for (int i = 0; i < COLSUM_BATCH; ++i) {
      if (r0 + b + i < rows) src.add(raw[i], c);
    }
  }
  __syncthreads();  // sh may still be read by the previous span
  const uint32_t q = t / COLSUM_RUN, i = t % COLSUM_RUN;
#pragma unroll
  for (int e = 0; e < 8; ++e) sh[e * PER_COL + q * (COLSUM_RUN + 1) + i] = c[e];
  __syncthreads();
  float* runs = sh + 8 * PER_COL;  // [RUNS][8]
  if (t < 8 * RUNS) {
    const uint32_t e = t % 8, qq = t / 8;
    const float* col = sh + e * PER_COL + qq * (COLSUM_RUN + 1);
    float r = 0.0f;
#pragma unroll 8
    for (int k = 0; k < COLSUM_RUN; ++k) r += col[k];
    runs[qq * 8 + e] = r;
  }
  __syncthreads();
  float total = 0.0f;
  if (t < 8) {
#pragma unroll
    for (int qq = 0; qq < RUNS; ++qq) total += runs[qq * 8 + t];
  }
  return total;
}
