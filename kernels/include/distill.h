/* Parameters of kernels/distill.cu (DESIGN.md §4.6). One block of
 * ENGINE_ROW_THREADS per row of `vocab` logits; s = z·inv_temp, log-softmax
 * per row for the student (z_s) and the teacher (z_t). */
#pragma once
#include "params.h"

/* Per row: the divergence D into loss[row], and weight[row]·∂D/∂z_s written
 * over the student's logits in place (a row whose weight is 0 is zeroed; its
 * D is still written). Three kernels, one per mode (TRL's JSD with β = 0 or
 * 1 is the forward or reverse kernel, chosen by the host):
 *   distill_forward  D = KL(p_t ‖ p_s)
 *   distill_reverse  D = KL(p_s ‖ p_t)
 *   distill_jsd      D = β·KL(p_t ‖ m) + (1−β)·KL(p_s ‖ m), m = β·p_t + (1−β)·p_s
 * `beta`, `log_beta` = ln β and `log_1m_beta` = ln(1 − β) are read by
 * distill_jsd only (the host computes the logarithms in fp32 as the CPU does).
 * student: bf16 [rows, vocab] (in: z_s, out: dz_s); teacher: bf16
 * [rows, vocab]; weight, loss: fp32 [rows]. */
typedef struct DistillParams {
  dptr student;
  dptr teacher;
  dptr weight;
  dptr loss;
  uint32_t rows;
  uint32_t vocab;
  float inv_temp;
  float beta;
  float log_beta;
  float log_1m_beta;
} DistillParams;
