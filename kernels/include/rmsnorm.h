/* Parameters of kernels/rmsnorm.cu. */
#pragma once
#include "params.h"

/* y = x · rstd · w per row of `dim`, rstd = 1/sqrt(mean(x²) + eps).
 * With `residual` non-zero: first h = x + residual is written to `h`, and h
 * is normalised (the fused residual add). x, residual, h, w, y: bf16; rstd: fp32. */
typedef struct RmsNormFwdParams {
  dptr x;
  dptr residual;
  dptr h;
  dptr w;
  dptr y;
  dptr rstd;
  uint32_t rows;
  uint32_t dim;
  float eps;
} RmsNormFwdParams;

/* dx (+)= ∂L/∂x; dw_partial[block][dim] = this block's rows' share of ∂L/∂w,
 * which rmsnorm_dw_reduce adds into dw in block order (deterministic).
 * dy, x, w, dx, dw: bf16; rstd, dw_partial: fp32 (ceil(rows/rows_per_block)
 * rows of dim).
 *
 * The fast backward for rows of up to ENGINE_RMSNORM_BWD_MAX_DIM (one warp
 * per row) sums dw in this fixed order, for column j, v(r) = dy[r,j] · x̂[r,j]
 * with x̂ = x[r,j] · rstd[r] rounded to fp32 and each term added by one fma:
 *   quad (b, w) = rows BWD_ROWS·b + WARP_ROWS·w … + WARP_ROWS − 1, added in
 *     row order to 0 (fp32);
 *   share b = its BWD_ROWS / WARP_ROWS quads, added in order to 0
 *     (dw_partial[b], rows_per_block = BWD_ROWS);
 *   group g = shares GROUP·g … GROUP·g + GROUP − 1, added in order to 0;
 *   result = bf16(dw[j] + group 0 + group 1 + …), in order.
 * Rows past the last add nothing. Wider rows: the ENGINE_COLSUM order of
 * kernels/include/rows.h. Fixed by the shape alone: the same bits on every
 * GPU and every run. */
#define ENGINE_RMSNORM_BWD_ROWS 32
#define ENGINE_RMSNORM_BWD_WARP_ROWS 4
#define ENGINE_RMSNORM_BWD_GROUP 16
#define ENGINE_RMSNORM_BWD_MAX_DIM 2048
typedef struct RmsNormBwdParams {
  dptr dy;
  dptr x;
  dptr w;
  dptr rstd;
  dptr dx;
  dptr dw_partial;
  dptr dw;
  uint32_t rows;
  uint32_t dim;
  uint32_t rows_per_block;
  uint32_t accumulate_dx;
} RmsNormBwdParams;
