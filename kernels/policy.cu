// The per-token coefficient pass of the policy losses on the GPU: every
// variant of DESIGN.md §4.2 (GPPO's gradient-preserving clip in the same
// kernel as PPO's), the KL term (§4.3), the entropy bonus, truncated
// importance sampling, GPPO's positive NLL term and the aggregation weights
// (§4.4), with the statistics a trainer logs. The twin of
// src/loss/policy.rs's `policy_loss`; the per-token arithmetic is shared
// through kernels/include/policy.h.
//
// One block per sequence: the sequence's unmasked count (its weight) and
// GSPO's mean log-ratio are block reductions over its tokens, then each
// thread handles tokens t0 + tid, t0 + tid + blockDim, …; the sequence's
// loss and statistics are reduced in a fixed order (deterministic) into one
// row of seq_out, which the host sums over sequences in order.
#include <float.h>

#include "common.cuh"
#include "policy.h"

// Max over the block in a fixed order (values ≥ 0); every thread gets it.
__device__ __forceinline__ double block_max_nonneg(double v, double* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  double s = lane < warps ? scratch[lane] : 0.0;
  if (warp == 0) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s = fmax(s, __shfl_xor_sync(0xffffffffu, s, o));
    if (lane == 0) scratch[32] = s;
  }
  __syncthreads();
  return scratch[32];
}

extern "C" __global__ void __launch_bounds__(ENGINE_POLICY_THREADS) policy_coefs(PolicyParams p) {
  __shared__ double sh[33];
  const uint32_t s = blockIdx.x;
  if (s >= p.seqs) return;
  const uint32_t* cu = ptr<const uint32_t>(p.cu_seqlens);
  const uint32_t t0 = cu[s], t1 = cu[s + 1];
  const uint8_t* mask = ptr<const uint8_t>(p.mask);
  const float* logp = ptr<const float>(p.logp);
  const float* old = ptr<const float>(p.old_logp);
  const float* ref = p.ref_logp ? ptr<const float>(p.ref_logp) : nullptr;
  const float* sampler = p.sampler_logp ? ptr<const float>(p.sampler_logp) : nullptr;
  const float* entropy = p.entropy ? ptr<const float>(p.entropy) : nullptr;
  float* coef = ptr<float>(p.coef);
  float* ent_coef = p.ent_coef ? ptr<float>(p.ent_coef) : nullptr;

  // The sequence's unmasked tokens and (GSPO) the sum of their log-ratios.
  double n = 0.0, lr_sum = 0.0;
  for (uint32_t t = t0 + threadIdx.x; t < t1; t += blockDim.x) {
    if (mask[t]) {
      n += 1.0;
      lr_sum += (double)logp[t] - (double)old[t];
    }
  }
  const double len = block_sum(n, sh);
  double stats[ENGINE_POLICY_STATS] = {};
  if (len == 0.0) {
    for (uint32_t t = t0 + threadIdx.x; t < t1; t += blockDim.x) {
      coef[t] = 0.0f;
      if (ent_coef) ent_coef[t] = 0.0f;
    }
  } else {
    const double seq_log_ratio = p.kind == ENGINE_POLICY_GSPO ? block_sum(lr_sum, sh) / len : 0.0;
    const double w = engine_agg_weight(&p, len);
    const double a = (double)ptr<const float>(p.advantages)[s];
    const bool correct = p.nll_k != 0.0 && (double)ptr<const float>(p.rewards)[s] == p.correct_score;
    for (uint32_t t = t0 + threadIdx.x; t < t1; t += blockDim.x) {
      if (!mask[t]) {
        coef[t] = 0.0f;
        if (ent_coef) ent_coef[t] = 0.0f;
        continue;
      }
      const double lp = (double)logp[t], log_ratio = lp - (double)old[t];
      PolicyTerm term = engine_policy_term(&p, lp, (double)old[t], a, seq_log_ratio);
      double value = term.value, g = term.grad;
      if (p.has_tis) {
        double wt = exp((double)old[t] - (double)sampler[t]);
        wt = wt < p.tis_cap ? wt : p.tis_cap;
        value *= wt;
        g *= wt;
      }
      double kl_value = 0.0;
      if (p.kl_kind != ENGINE_KL_NONE) {
        double kv, kg;
        engine_token_kl(p.kl_kind, lp, (double)ref[t], &kv, &kg);
        kl_value = kv;
        value += p.kl_coef * kv;
        g += p.kl_coef * kg;
      }
      const double h = entropy ? (double)entropy[t] : 0.0;
      value -= p.entropy_coef * h;
      if (ent_coef) ent_coef[t] = (float)(-p.entropy_coef * w);
      double loss = w * value, c = w * g;
      if (correct) {
        loss -= p.nll_k * lp;
        c -= p.nll_k;
      }
      coef[t] = (float)c;
      stats[ENGINE_PS_LOSS] += loss;
      stats[ENGINE_PS_TOKENS] += 1.0;
      stats[ENGINE_PS_CLIPPED_LOW] += term.region == ENGINE_REGION_LOW;
      stats[ENGINE_PS_CLIPPED_HIGH] += term.region == ENGINE_REGION_HIGH;
      stats[ENGINE_PS_CLIPPED_DUAL] += term.region == ENGINE_REGION_DUAL;
      stats[ENGINE_PS_RATIO_SUM] += term.ratio;
      stats[ENGINE_PS_RATIO_MAX] = fmax(stats[ENGINE_PS_RATIO_MAX], term.ratio);
      stats[ENGINE_PS_PPO_KL_SUM] -= log_ratio;
      stats[ENGINE_PS_ENTROPY_SUM] += h;
      stats[ENGINE_PS_KL_SUM] += kl_value;
      if (sampler) {
        const double d = fabs((double)sampler[t] - (double)old[t]);
        stats[ENGINE_PS_SAMPLER_DIFF_SUM] += d;
        stats[ENGINE_PS_SAMPLER_DIFF_MAX] = fmax(stats[ENGINE_PS_SAMPLER_DIFF_MAX], d);
      }
    }
  }
  double* out = ptr<double>(p.seq_out) + (size_t)s * ENGINE_POLICY_STATS;
#pragma unroll
  for (int i = 0; i < ENGINE_POLICY_STATS; ++i) {
    const bool is_max = i == ENGINE_PS_RATIO_MAX || i == ENGINE_PS_SAMPLER_DIFF_MAX;
    const double v = is_max ? block_max_nonneg(stats[i], sh) : block_sum(stats[i], sh);
    if (threadIdx.x == 0) out[i] = v;
  }
}
