/* Parameters of kernels/rope.cu. */
#pragma once
#include "params.h"

/* Rotary position embedding in HF's rotate-half layout, in place: for each
 * token t, head h and frequency i < head_dim/2, with a = x[t,h,i],
 * b = x[t,h,i + head_dim/2], c = cos[pos[t], i], s = ±sin[pos[t], i]:
 *   x[t,h,i] = a·c − b·s,  x[t,h,i + head_dim/2] = b·c + a·s.
 * `inverse` non-zero rotates by the opposite angle (s = −sin): the backward.
 * A position ≥ max_pos leaves its token untouched and records
 * `bad = max(bad, 1 + position)` (saturating at 0xFFFFFFFF); `bad` is never
 * cleared by the kernel, so one flag can serve many launches.
 * x: bf16 [tokens, heads, head_dim]; pos: uint32 [tokens];
 * cos, sin: fp32 [max_pos, head_dim/2]; bad: uint32 [1].
 * x2 (with heads2 > 0): a second tensor bf16 [tokens, heads2, head_dim]
 * rotated by the same launch (keys beside queries: one launch, not two);
 * heads2 = 0 for none. */
typedef struct RopeParams {
  dptr x;
  dptr pos;
  dptr cos;
  dptr sin;
  dptr bad;
  uint32_t tokens;
  uint32_t heads;
  uint32_t head_dim;
  uint32_t max_pos;
  uint32_t inverse;
  dptr x2;
  uint32_t heads2;
} RopeParams;
