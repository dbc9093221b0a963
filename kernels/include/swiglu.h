/* Parameters of kernels/swiglu.cu. */
#pragma once
#include "params.h"

/* out = silu(g) · u elementwise, silu(g) = g·σ(g). g, u, out: bf16 [n]. */
typedef struct SwiGluFwdParams {
  dptr g;
  dptr u;
  dptr out;
  uint32_t n;
} SwiGluFwdParams;

/* dg = dout · u · σ(g)·(1 + g·(1 − σ(g))), du = dout · g·σ(g); both
 * overwritten. dout, g, u, dg, du: bf16 [n]. */
typedef struct SwiGluBwdParams {
  dptr dout;
  dptr g;
  dptr u;
  dptr dg;
  dptr du;
  uint32_t n;
} SwiGluBwdParams;
