/* The per-token coefficient pass of the policy losses (DESIGN.md §4.2–4.4):
 * parameters of kernels/policy.cu, and the per-token arithmetic as
 * `__host__ __device__` functions, so that a host build of them (the CPU
 * emulation in tools/kernel_emu/policy.cpp, run in CI by tests/kernel_emu.rs)
 * is checked against the CPU loss library (src/loss/policy.rs,
 * `policy_loss`), which is the specification: the same branches, the same
 * clamps, the same ties (a tie between the two branches of max shares the
 * gradient evenly, as torch.maximum does), all in double.
 *
 * One block per sequence of the micro-batch. Per token t of sequence s with
 * mask[t] set: r = exp(clamp(logp − old_logp, ±20)), the variant's value and
 * g = ∂L_t/∂logp, then truncated importance sampling, the KL term, the
 * entropy bonus, and GPPO's positive NLL term; the outputs are
 *   coef[t]     = w_s·g − nll_k·[correct]       (0 where masked)
 *   ent_coef[t] = −entropy_coef·w_s             (0 where masked; if set)
 *   seq_out[s·ENGINE_POLICY_STATS + i] = the sequence's share of the loss
 *     and of each statistic (the host sums them over sequences in order).
 * w_s is the aggregation weight of §4.4 from the step's counts. */
#pragma once
#include <math.h>

#include "params.h"
#include "rng.h" /* ENGINE_HD */

#define ENGINE_POLICY_PPO 0
#define ENGINE_POLICY_GPPO 1
#define ENGINE_POLICY_CISPO 2
#define ENGINE_POLICY_GSPO 3

#define ENGINE_KL_NONE 0
#define ENGINE_KL_K1 1
#define ENGINE_KL_K2 2
#define ENGINE_KL_K3 3
#define ENGINE_KL_K3PLUS 4

#define ENGINE_AGG_TOKEN_MEAN 0
#define ENGINE_AGG_SEQ_MEAN_TOKEN_MEAN 1
#define ENGINE_AGG_SEQ_MEAN_TOKEN_SUM 2
#define ENGINE_AGG_SEQ_MEAN_TOKEN_SUM_NORM 3

/* Where a token fell (the clip statistics). */
#define ENGINE_REGION_INSIDE 0
#define ENGINE_REGION_LOW 1
#define ENGINE_REGION_HIGH 2
#define ENGINE_REGION_DUAL 3

/* seq_out's columns. */
#define ENGINE_POLICY_STATS 12
#define ENGINE_PS_LOSS 0
#define ENGINE_PS_TOKENS 1
#define ENGINE_PS_CLIPPED_LOW 2
#define ENGINE_PS_CLIPPED_HIGH 3
#define ENGINE_PS_CLIPPED_DUAL 4
#define ENGINE_PS_RATIO_SUM 5
#define ENGINE_PS_RATIO_MAX 6
#define ENGINE_PS_PPO_KL_SUM 7
#define ENGINE_PS_ENTROPY_SUM 8
#define ENGINE_PS_KL_SUM 9
#define ENGINE_PS_SAMPLER_DIFF_SUM 10
#define ENGINE_PS_SAMPLER_DIFF_MAX 11

#define ENGINE_POLICY_THREADS 256

/* logp, old_logp, ref_logp, sampler_logp, entropy: fp32 [tokens] (the
 * optional ones 0 when absent); mask: u8 [tokens]; cu_seqlens: u32
 * [seqs + 1]; advantages, rewards: fp32 [seqs]; coef, ent_coef: fp32
 * [tokens] (ent_coef 0: not written); seq_out: f64 [seqs, ENGINE_POLICY_STATS]. */
typedef struct PolicyParams {
  /* The variant: PPO/GPPO/GSPO clip band, dual clip, GPPO's β, CISPO's bounds. */
  double eps_low;
  double eps_high;
  double dual_clip;
  double beta1;
  double beta2;
  double cispo_floor;
  double cispo_cap;
  double kl_coef;
  double entropy_coef;
  double tis_cap;
  /* positive_nll_coef / correct tokens of the step (0: no NLL term). */
  double nll_k;
  double correct_score;
  /* The step's counts, for the aggregation weight. */
  double step_tokens;
  double step_seqs;
  double l_max;
  dptr logp;
  dptr old_logp;
  dptr ref_logp;
  dptr sampler_logp;
  dptr entropy;
  dptr mask;
  dptr cu_seqlens;
  dptr advantages;
  dptr rewards;
  dptr coef;
  dptr ent_coef;
  dptr seq_out;
  uint32_t tokens;
  uint32_t seqs;
  uint32_t kind;
  uint32_t kl_kind;
  uint32_t agg;
  uint32_t has_dual;
  uint32_t has_floor;
  uint32_t has_tis;
} PolicyParams;

/* One token's policy term: its value, g = ∂value/∂logp, the region, and the
 * ratio the statistics log (r, or GSPO's sequence ratio). */
typedef struct PolicyTerm {
  double value;
  double grad;
  double ratio;
  int region;
} PolicyTerm;

ENGINE_HD double engine_clamp(double x, double lo, double hi) { return x < lo ? lo : (x > hi ? hi : x); }

/* The clipped surrogate max(−A·r, −A·clip(r)), then for A < 0 the dual clip
 * min(·, −c·A); value and ∂/∂logp (∂r/∂logp = r). With `preserve` (GPPO) the
 * clipped branch is β·bound/sg(r)·r, whose gradient is β·bound, not 0. */
ENGINE_HD PolicyTerm engine_clipped_surrogate(double r, double a, double eps_low, double eps_high, int has_dual,
                                              double dual, int preserve, double beta1, double beta2) {
  const double lo = 1.0 - eps_low, hi = 1.0 + eps_high;
  const double pg1 = -a * r, g1 = -a * r;
  double clip_value, clip_grad;
  int region;
  if (r < lo) {
    clip_value = preserve ? beta1 * lo : lo;
    clip_grad = preserve ? beta1 * lo : 0.0;
    region = ENGINE_REGION_LOW;
  } else if (r > hi) {
    clip_value = preserve ? beta2 * hi : hi;
    clip_grad = preserve ? beta2 * hi : 0.0;
    region = ENGINE_REGION_HIGH;
  } else {
    clip_value = r;
    clip_grad = r;
    region = ENGINE_REGION_INSIDE;
  }
  const double pg2 = -a * clip_value, g2 = -a * clip_grad;
  PolicyTerm t;
  t.ratio = r;
  if (pg1 > pg2) {
    t.value = pg1;
    t.grad = g1;
  } else if (pg2 > pg1) {
    t.value = pg2;
    t.grad = g2;
  } else {
    t.value = pg1;
    t.grad = 0.5 * (g1 + g2);
  }
  /* The statistics name the branch that clips: A > 0 above the band, A < 0 below it. */
  t.region = (region == ENGINE_REGION_HIGH && a > 0.0) || (region == ENGINE_REGION_LOW && a < 0.0)
                 ? region
                 : ENGINE_REGION_INSIDE;
  if (has_dual && a < 0.0) {
    const double d = -dual * a;
    if (d < t.value) {
      t.value = d;
      t.grad = 0.0;
      t.region = ENGINE_REGION_DUAL;
    } else if (d == t.value) {
      t.grad *= 0.5;
    }
  }
  return t;
}

/* The variant's term for one token; `seq_log_ratio` is GSPO's mean log-ratio
 * of the sequence (unused by the others). */
ENGINE_HD PolicyTerm engine_policy_term(const PolicyParams* p, double logp, double old_logp, double a,
                                        double seq_log_ratio) {
  const double r = exp(engine_clamp(logp - old_logp, -20.0, 20.0));
  switch (p->kind) {
    case ENGINE_POLICY_PPO:
      return engine_clipped_surrogate(r, a, p->eps_low, p->eps_high, (int)p->has_dual, p->dual_clip, 0, 1.0, 1.0);
    case ENGINE_POLICY_GPPO:
      return engine_clipped_surrogate(r, a, p->eps_low, p->eps_high, (int)p->has_dual, p->dual_clip, 1, p->beta1,
                                      p->beta2);
    case ENGINE_POLICY_CISPO: {
      double c = r < p->cispo_cap ? r : p->cispo_cap;
      if (p->has_floor && c < p->cispo_floor) c = p->cispo_floor;
      PolicyTerm t;
      t.region = r > p->cispo_cap                        ? ENGINE_REGION_HIGH
                 : (p->has_floor && r < p->cispo_floor) ? ENGINE_REGION_LOW
                                                         : ENGINE_REGION_INSIDE;
      t.value = -c * a * logp;
      t.grad = -c * a;
      t.ratio = r;
      return t;
    }
    default: { /* GSPO: the clamp at 10 stops the gradient where it bites. */
      const double s = exp(seq_log_ratio < 10.0 ? seq_log_ratio : 10.0);
      const double ds = seq_log_ratio > 10.0 ? 0.0 : s;
      PolicyTerm t = engine_clipped_surrogate(s, a, p->eps_low, p->eps_high, 0, 0.0, 0, 1.0, 1.0);
      t.grad = s != 0.0 ? t.grad / s * ds : 0.0;
      t.ratio = s;
      return t;
    }
  }
}

/* One token's KL estimate to the reference policy and its ∂/∂logp (§4.3). */
ENGINE_HD void engine_token_kl(uint32_t kind, double logp, double ref_logp, double* value, double* grad) {
  const double d = logp - ref_logp;
  if (kind == ENGINE_KL_K1) {
    *value = d;
    *grad = 1.0;
  } else if (kind == ENGINE_KL_K2) {
    *value = 0.5 * d * d;
    *grad = d;
  } else {
    /* k3: kl = clamp(ref − logp, ±20), value clamp(e^kl − kl − 1, ±10); a clamp that bites stops the gradient. */
    const double raw = ref_logp - logp;
    const double kl = engine_clamp(raw, -20.0, 20.0);
    const double v = exp(kl) - kl - 1.0;
    const double dkl = fabs(raw) > 20.0 ? 0.0 : -1.0;
    double g;
    if (fabs(v) > 10.0) {
      *value = engine_clamp(v, -10.0, 10.0);
      g = 0.0;
    } else {
      *value = v;
      g = (exp(kl) - 1.0) * dkl;
    }
    *grad = kind == ENGINE_KL_K3PLUS ? d : g;
  }
}

/* The aggregation weight of one unmasked token of a sequence with `len`
 * unmasked tokens (§4.4). */
ENGINE_HD double engine_agg_weight(const PolicyParams* p, double len) {
  switch (p->agg) {
    case ENGINE_AGG_TOKEN_MEAN:
      return 1.0 / p->step_tokens;
    case ENGINE_AGG_SEQ_MEAN_TOKEN_MEAN:
      return 1.0 / (p->step_seqs * len);
    case ENGINE_AGG_SEQ_MEAN_TOKEN_SUM:
      return 1.0 / p->step_seqs;
    default:
      return 1.0 / (p->step_seqs * p->l_max);
  }
}
