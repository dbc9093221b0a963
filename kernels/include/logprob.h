/* Parameters of kernels/logprob.cu (DESIGN.md §4.1). One block of
 * ENGINE_ROW_THREADS per row of `vocab` logits; s = z · inv_temp. The fast
 * kernels (logprob_fwd, logprob_bwd) and the scalar reference kernels
 * (logprob_fwd_reference, logprob_bwd_reference) take the same structs. */
#pragma once
#include "params.h"

/* Per row: lse = log Σ exp(s), logp = s[y] − lse (0 where y is IGNORE =
 * 0xFFFFFFFF), and with `entropy` non-zero H = lse − Σ softmax(s)·s.
 * A target y ≥ vocab that is not IGNORE writes logp = NaN for its row (lse
 * and H are still written); there is no error flag.
 * logits: bf16 [rows, vocab], or fp32 where `fp32` is non-zero; targets:
 * u32 [rows]; logp, lse, entropy: fp32 [rows] (entropy may be 0: not
 * computed). */
typedef struct LogprobFwdParams {
  dptr logits;
  dptr targets;
  dptr logp;
  dptr lse;
  dptr entropy;
  uint32_t rows;
  uint32_t vocab;
  float inv_temp;
  uint32_t fp32;
} LogprobFwdParams;

/* Overwrites the logits with dz, in place, per row with p = exp(s − lse):
 *   dz = −inv_temp · p · (c + e·(s − lse + h)),  plus c · inv_temp at y,
 * c = coef[row] (0 where y is IGNORE), e = ent_coef[row], h = entropy[row]
 * (e = 0 when ent_coef is 0: no entropy term). A row with c = e = 0 is
 * zeroed. A target y ≥ vocab that is not IGNORE writes NaN over its whole
 * row (so the gradient's norm shows it).
 * logits: bf16 [rows, vocab], or fp32 where `fp32` is non-zero (in: z,
 * out: dz, in the logits' type); targets: u32 [rows];
 * lse, coef, ent_coef, entropy: fp32 [rows] (ent_coef and entropy both 0
 * or both set). */
typedef struct LogprobBwdParams {
  dptr logits;
  dptr targets;
  dptr lse;
  dptr coef;
  dptr ent_coef;
  dptr entropy;
  uint32_t rows;
  uint32_t vocab;
  float inv_temp;
  uint32_t fp32;
} LogprobBwdParams;
