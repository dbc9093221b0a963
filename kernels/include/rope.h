/* Parameters of kernels/rope.cu. */
#pragma once
#include "params.h"

/* One tensor of a launch: `tokens` rows, each `heads` head vectors of
 * head_dim bf16 values, read from `src` (row stride `src_ld` elements) and
 * written to `dst` (row stride `dst_ld`). src = dst (with equal strides)
 * rotates in place; `rotate` = 0 moves the heads unrotated (v beside q and
 * k when the fused q/k/v product's rows are split). heads = 0: no tensor. */
typedef struct RopeTensor {
  dptr src;
  dptr dst;
  uint32_t heads;
  uint32_t src_ld;
  uint32_t dst_ld;
  uint32_t rotate;
  /* 0, or uint32 [tokens], distinct: token t's heads go to row
   * dst_rows[t] of dst (a KV cache layer in a decode step), which holds
   * dst_limit rows; a row ≥ dst_limit is skipped and recorded in `bad` as
   * 1 + row. */
  dptr dst_rows;
  uint32_t dst_limit;
  uint32_t pad_;
  /* 0, or bf16 [head_dim]: each head vector is first normalised, RMSNorm
   * with these weights and RopeParams.eps (Qwen3's q/k norms), the result
   * rounded to bf16 as a stored norm output would be, then rotated (if
   * `rotate`). Only where src and dst are distinct (a head's threads read
   * the whole head). */
  dptr norm_w;
} RopeTensor;

/* Rotary position embedding in HF's rotate-half layout: for each token t,
 * head h and frequency i < head_dim/2, with a = src[t,h,i],
 * b = src[t,h,i + head_dim/2], c = cos[pos[t], i], s = ±sin[pos[t], i]:
 *   dst[t,h,i] = a·c − b·s,  dst[t,h,i + head_dim/2] = b·c + a·s.
 * `inverse` non-zero rotates by the opposite angle (s = −sin): the backward.
 * Up to three tensors per launch (q and k in place; or the fused product's
 * q, k, v parts split out, and back for the backward), their heads one
 * after another in each token's thread range.
 * A position ≥ max_pos leaves its token's rotated heads unwritten and
 * records `bad = max(bad, 1 + position)` (saturating at 0xFFFFFFFF; a
 * destination row outside its table likewise); `bad`
 * is never cleared by the kernel, so one flag can serve many launches.
 * Positions and tables are read only for rotated heads.
 * pos: uint32 [tokens]; cos, sin: fp32 [max_pos, head_dim/2]; bad: uint32 [1]. */
typedef struct RopeParams {
  RopeTensor t[3];
  dptr pos;
  dptr cos;
  dptr sin;
  dptr bad;
  uint32_t tokens;
  uint32_t head_dim;
  uint32_t max_pos;
  uint32_t inverse;
  float eps;
  uint32_t pad_;
} RopeParams;
