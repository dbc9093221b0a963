/* Parameters of kernels/adamw.cu. */
#pragma once
#include "params.h"

/* One AdamW step per element, in fp32, in the CPU reference's exact order of
 * operations (src/backend/cpu/optim.rs, PyTorch's torch.optim.AdamW):
 *   g  = bf16 gradient · grad_scale         (grad_scale: the clip factor, or 1)
 *   p  = p · decay                          (decay = 1 − lr·wd; 1 for no decay)
 *   m  = beta1·m + one_minus_beta1·g
 *   v  = beta2·v + (one_minus_beta2·g)·g
 *   p  = p − (step_size·m) / (sqrt(v)/bc2_sqrt + eps)
 *   p16 = bf16(p)
 * step_size = lr / (1 − β1^t) and bc2_sqrt = sqrt(1 − β2^t) are computed on
 * the host in f64 from the 1-based step t, then rounded to fp32.
 * p32, m, v: fp32[n] (master weights, moments); g, p16: bf16[n]. */
typedef struct AdamWParams {
  dptr p32;
  dptr p16;
  dptr g;
  dptr m;
  dptr v;
  uint32_t n;
  float beta1;
  float beta2;
  float one_minus_beta1;
  float one_minus_beta2;
  float eps;
  float decay;
  float step_size;
  float bc2_sqrt;
  float grad_scale;
} AdamWParams;
