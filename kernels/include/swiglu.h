/* Parameters of kernels/swiglu.cu. */
#pragma once
#include "params.h"

/* out = silu(g) · u elementwise, silu(g) = g·σ(g). out: bf16 [n], rows of
 * `cols` (≥ 1, or n = 0); g, u: bf16, the same rows `ld` ≥ cols elements apart (ld == cols: flat
 * [n]; ld == 2·cols with u = g + cols: one product's [rows, 2·cols] output,
 * gate in the first cols columns and up in the last). */
typedef struct SwiGluFwdParams {
  dptr g;
  dptr u;
  dptr out;
  uint32_t n;
  uint32_t cols;
  uint32_t ld;
} SwiGluFwdParams;

/* dg = dout · u · σ(g)·(1 + g·(1 − σ(g))), du = dout · g·σ(g); both
 * overwritten. dout: bf16 [n], rows of `cols`; g, u, dg, du: bf16 rows `ld`
 * elements apart, as in SwiGluFwdParams. */
typedef struct SwiGluBwdParams {
  dptr dout;
  dptr g;
  dptr u;
  dptr dg;
  dptr du;
  uint32_t n;
  uint32_t cols;
  uint32_t ld;
} SwiGluBwdParams;
