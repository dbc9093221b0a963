/* DPO's coefficient pass on the GPU (DESIGN.md §4.7): parameters of
 * kernels/dpo.cu and the per-pair arithmetic as `__host__ __device__`
 * functions, checked on the CPU against src/loss/dpo.rs's `dpo_loss` (the
 * specification) by tools/kernel_emu in CI.
 *
 * Sequences come in pairs (2k chosen, 2k + 1 rejected); one block per pair.
 * The block sums each sequence's unmasked log-probs (π) and reference
 * log-probs (ref) in double, then per pair, with β, label smoothing ls and
 * the step's `per_pair` = 1 / pairs in the step:
 *   sigmoid: h = β·((π_c − ref_c) − (π_r − ref_r)),
 *            L = −(1−ls)·log σ(h) − ls·log σ(−h),
 *            g_c = β·((1−ls)(σ(h) − 1) + ls·σ(h)), g_r = −g_c;
 *   ipo:     x = (π_c − ref_c)/n_c − (π_r − ref_r)/n_r − 1/(2β),
 *            L = x², g_c = 2x/n_c, g_r = −2x/n_r (n = unmasked tokens, ≥ 1);
 * coef[t] = per_pair·g of t's sequence where mask[t], else 0;
 * pair_out[k] = (per_pair·L, chosen reward, rejected reward, correct), the
 * rewards β·(π − ref)/len as TRL logs them (len = 1 for sigmoid).
 *
 * logp, ref_logp: fp32 [tokens]; mask: u8 [tokens]; cu_seqlens: u32
 * [2·pairs + 1]; coef: fp32 [tokens]; pair_out: f64 [pairs, 4]. */
#pragma once
#include <math.h>

#include "params.h"
#include "rng.h" /* ENGINE_HD */

#define ENGINE_DPO_SIGMOID 0
#define ENGINE_DPO_IPO 1
#define ENGINE_DPO_THREADS 256
#define ENGINE_DPO_STATS 4

typedef struct DpoParams {
  double beta;
  double label_smoothing;
  double per_pair;
  dptr logp;
  dptr ref_logp;
  dptr mask;
  dptr cu_seqlens;
  dptr coef;
  dptr pair_out;
  uint32_t tokens;
  uint32_t pairs;
  uint32_t loss_type;
} DpoParams;

/* log σ(x), stable for both signs. */
ENGINE_HD double engine_log_sigmoid(double x) { return x >= 0.0 ? -log1p(exp(-x)) : x - log1p(exp(x)); }
ENGINE_HD double engine_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

/* One pair's loss and the gradients g_c, g_r with respect to each token's
 * log-prob of the chosen and the rejected response, from the sums. */
typedef struct DpoPair {
  double loss, g_chosen, g_rejected, reward_chosen, reward_rejected;
} DpoPair;

ENGINE_HD DpoPair engine_dpo_pair(const DpoParams* p, double pc, double qc, double nc, double pr, double qr,
                                  double nr) {
  DpoPair o;
  const double lc = p->loss_type == ENGINE_DPO_IPO ? (nc > 1.0 ? nc : 1.0) : 1.0;
  const double lr = p->loss_type == ENGINE_DPO_IPO ? (nr > 1.0 ? nr : 1.0) : 1.0;
  o.reward_chosen = p->beta * (pc - qc) / lc;
  o.reward_rejected = p->beta * (pr - qr) / lr;
  if (p->loss_type == ENGINE_DPO_IPO) {
    const double x = (pc - qc) / lc - (pr - qr) / lr - 1.0 / (2.0 * p->beta);
    o.loss = x * x;
    o.g_chosen = 2.0 * x / lc;
    o.g_rejected = -2.0 * x / lr;
  } else {
    const double h = p->beta * ((pc - qc) - (pr - qr));
    const double ls = p->label_smoothing;
    o.loss = -(1.0 - ls) * engine_log_sigmoid(h) - ls * engine_log_sigmoid(-h);
    const double dh = (1.0 - ls) * (engine_sigmoid(h) - 1.0) + ls * engine_sigmoid(h);
    o.g_chosen = dh * p->beta;
    o.g_rejected = -dh * p->beta;
  }
  return o;
}
