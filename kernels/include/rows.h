/* Parameters of kernels/rows.cu. */
#pragma once
#include "params.h"

/* dst[dst_rows[i]] = src[src_rows[i]] for i < n, rows of `width` 16-bit
 * units (a bf16 row of w elements is w units, an fp32 row 2w: the kernel
 * moves bits). A row index outside its buffer (src_rows[i] ≥ src_count or
 * dst_rows[i] ≥ dst_count) skips copy i and records
 * `bad = max(bad, 1 + index)` (saturating); the kernel never clears `bad`.
 * Where several valid copies name the same destination row, the last one
 * wins: the result is the CPU's sequential loop over the valid copies.
 * Cost: each copy scans the later destination indices, O(n²) index reads,
 * unless `unique` is 1: the caller has checked that no two copies name the
 * same destination row (the KV cache's writes never do), and the scan is
 * skipped. src: [src_count, width]; dst: [dst_count, width]; src_rows,
 * dst_rows: uint32 [n]; bad: uint32 [1].
 * src2, dst2 (non-zero): a second pair of buffers of the same shapes, copied
 * with the same row indices by blocks n … 2n − 1 of the same launch (a KV
 * cache's keys and values: one launch, not two); 0 for none. */
typedef struct CopyRowsParams {
  dptr src;
  dptr dst;
  dptr src_rows;
  dptr dst_rows;
  dptr bad;
  uint32_t n;
  uint32_t width;
  uint32_t src_count;
  uint32_t dst_count;
  uint32_t unique;
  dptr src2;
  dptr dst2;
} CopyRowsParams;

/* The fixed order of the column sums of bias_grad and of RMSNorm's weight
 * gradient (kernels/colsum.cuh), for column j of rows [0, rows):
 *   chunk k = rows [CHUNK·k, CHUNK·k + CHUNK), added in row order to 0 (fp32);
 *   run q of span s = chunks CHUNKS·s + RUN·q … + RUN − 1, added in order to 0;
 *   span s = its CHUNKS/RUN runs added in order to 0;
 *   result = init + span 0 + span 1 + … in order (init: db[j], or dw[j]).
 * Fixed by these constants alone: the same bits on every GPU and every run. */
#define ENGINE_COLSUM_CHUNK 16
#define ENGINE_COLSUM_CHUNKS 256
#define ENGINE_COLSUM_RUN 32

/* bias_grad: db[j] = bf16(db[j] + Σ_r dy[r, j]), the sum in fp32 in the
 * ENGINE_COLSUM order; one block of 256 threads per 8 columns walks every span.
 * bias_grad_reference: the same with one thread per column adding the rows
 * in order from db[j] (the CPU's order; for tests).
 * dy: bf16 [rows, cols]; db: bf16 [cols]. */
typedef struct BiasGradParams {
  dptr dy;
  dptr db;
  uint32_t rows;
  uint32_t cols;
} BiasGradParams;
