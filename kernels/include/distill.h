/* Parameters of kernels/distill.cu (DESIGN.md §4.6). The row kernels: one
 * block of ENGINE_ROW_THREADS per row of `vocab` logits. The split kernels:
 * `chunks` blocks per row, each holding ENGINE_DISTILL_SPLIT_VECS 16-byte
 * vectors of each row per thread in registers. s = z·inv_temp, log-softmax
 * per row for the student (z_s) and the teacher (z_t). */
#pragma once
#include "params.h"

/* The split kernels' block size (what the host launches; the kernels read
 * blockDim) and vectors of 8 elements per row per thread: a block holds
 * 8·SPLIT_VECS·threads elements of each row, 8192 at 256 threads. */
#define ENGINE_DISTILL_SPLIT_THREADS 256
#define ENGINE_DISTILL_SPLIT_VECS 4

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
 * [rows, vocab]; weight, loss: fp32 [rows].
 *
 * Split kernels only (distill_split_*): the student's and the teacher's rows
 * at the same 16-byte phase (the host checks); `chunks` blocks per row
 * (rows·chunks blocks in all); `scratch`: 4-byte words, the first 2 + rows
 * zero at launch (a ticket counter, an error word, a counter per row), then
 * from word 2 + rows rounded up to even (8-byte aligned) the blocks' partial
 * statistics (4 floats and a double, 24 bytes each, rows·chunks), then their
 * partial sums (2 doubles each, rows·chunks). */
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
  dptr scratch;
  uint32_t chunks;
} DistillParams;
