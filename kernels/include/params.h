/* Parameter structs of the CUDA kernels, one definition for both sides:
 * the kernels include this file, and build.rs runs bindgen over it for Rust.
 * Every kernel takes one struct by value. Device pointers are plain 64-bit
 * addresses (a CUdeviceptr) so the header needs no CUDA types; the kernel
 * casts them. Element types are in the field comments: bf16 activations and
 * weights, fp32 master weights, optimizer moments and statistics
 * (DESIGN.md §3). Counts are 32-bit: one kernel never sees 2^32 elements. */
#pragma once
#include <stdint.h>

typedef uint64_t dptr;

/* Threads per block of the row kernels (one block per row). */
#define ENGINE_ROW_THREADS 256

/* dst[i] = (bf16) src[i] and back. */
typedef struct CastParams {
  dptr src;
  dptr dst;
  uint32_t n;
} CastParams;

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
