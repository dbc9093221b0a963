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
 * Cost: each copy scans the later destination indices, O(n²) index reads. src: [src_count, width]; dst: [dst_count, width]; src_rows,
 * dst_rows: uint32 [n]; bad: uint32 [1]. */
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
} CopyRowsParams;

/* db[j] += Σ_r dy[r, j], the sum in fp32 starting from db[j] and adding rows
 * in order (one thread per column: deterministic, the CPU's order).
 * dy: bf16 [rows, cols]; db: bf16 [cols]. */
typedef struct BiasGradParams {
  dptr dy;
  dptr db;
  uint32_t rows;
  uint32_t cols;
} BiasGradParams;
