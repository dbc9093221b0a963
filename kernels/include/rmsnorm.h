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
 * rows of dim). */
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
