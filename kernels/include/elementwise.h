/* Parameters of kernels/elementwise.cu. */
#pragma once
#include "params.h"

/* fill: dst[i] = bf16(value); copy: dst[i] = src[i]; add_assign:
 * dst[i] = bf16(dst[i] + src[i]); scale: dst[i] = bf16(dst[i] · value).
 * dst, src: bf16 of n elements (src unused by fill and scale); fp32 math. */
typedef struct ElementwiseParams {
  dptr dst;
  dptr src;
  uint32_t n;
  float value;
} ElementwiseParams;

/* Elements per block of sum_squares_partial: a constant, so the split of the
 * sum (and hence its bits) does not depend on the GPU. Equal to the CPU's
 * chunk (src/backend/cpu/optim.rs). */
#define ENGINE_SUMSQ_CHUNK 16384
/* Threads per block of both sum_squares kernels (part of the fixed order). */
#define ENGINE_SUMSQ_THREADS 256

/* Σ x² in fp64, deterministic, in two launches:
 * sum_squares_partial: block b writes partial[b] = Σ x[i]² over its chunk
 *   [b·CHUNK, min(n, (b+1)·CHUNK)), for b < chunks = ceil(n / CHUNK);
 * sum_squares_final (one block): *out = Σ_b partial[b].
 * x: bf16[n]; partial: f64[chunks]; out: f64[1]. */
typedef struct SumSquaresParams {
  dptr x;
  dptr partial;
  dptr out;
  uint32_t n;
  uint32_t chunks;
} SumSquaresParams;
