// DPO's per-token coefficient pass on the GPU, the twin of src/loss/dpo.rs's
// `dpo_loss`: one block per (chosen, rejected) pair sums each response's
// log-probs and reference log-probs in double in a fixed order (so the
// results are deterministic), then kernels/include/dpo.h's per-pair
// arithmetic gives the loss and each response's coefficient, written to its
// unmasked tokens.
#include "common.cuh"
#include "dpo.h"

// Σ over tokens t0..t1 with mask[t] of x[t] (double), and the count.
__device__ __forceinline__ void seq_sums(const float* logp, const float* ref, const uint8_t* mask, uint32_t t0,
                                         uint32_t t1, double* sh, double* p, double* q, double* n) {
  double a = 0.0, b = 0.0, c = 0.0;
  for (uint32_t t = t0 + threadIdx.x; t < t1; t += blockDim.x) {
    if (mask[t]) {
      a += (double)logp[t];
      b += (double)ref[t];
      c += 1.0;
    }
  }
  *p = block_sum(a, sh);
  *q = block_sum(b, sh);
  *n = block_sum(c, sh);
}

extern "C" __global__ void __launch_bounds__(ENGINE_DPO_THREADS) dpo_coefs(DpoParams p) {
  __shared__ double sh[33];
  const uint32_t k = blockIdx.x;
  if (k >= p.pairs) return;
  const uint32_t* cu = ptr<const uint32_t>(p.cu_seqlens);
  const float* logp = ptr<const float>(p.logp);
  const float* ref = ptr<const float>(p.ref_logp);
  const uint8_t* mask = ptr<const uint8_t>(p.mask);
  double pc, qc, nc, pr, qr, nr;
  seq_sums(logp, ref, mask, cu[2 * k], cu[2 * k + 1], sh, &pc, &qc, &nc);
  seq_sums(logp, ref, mask, cu[2 * k + 1], cu[2 * k + 2], sh, &pr, &qr, &nr);
  const DpoPair o = engine_dpo_pair(&p, pc, qc, nc, pr, qr, nr);
  float* coef = ptr<float>(p.coef);
  const float cc = (float)(p.per_pair * o.g_chosen), cr = (float)(p.per_pair * o.g_rejected);
  for (uint32_t t = cu[2 * k] + threadIdx.x; t < cu[2 * k + 2]; t += blockDim.x) {
    coef[t] = mask[t] ? (t < cu[2 * k + 1] ? cc : cr) : 0.0f;
  }
  if (threadIdx.x == 0) {
    double* out = ptr<double>(p.pair_out) + (size_t)k * ENGINE_DPO_STATS;
    out[0] = p.per_pair * o.loss;
    out[1] = o.reward_chosen;
    out[2] = o.reward_rejected;
    out[3] = o.reward_chosen > o.reward_rejected ? 1.0 : 0.0;
  }
}
