// Log-probabilities of the target tokens under softmax(z·inv_temp), the
// optional entropy (forward), and the gradient written over the logits in
// place (backward): the GPU twins of src/backend/cpu/logprob.rs, DESIGN.md
// §4.1. One block per row; bf16 logits read once per pass; all math in fp32.
// Each thread folds its columns (i, i + blockDim, …, in order) into running
// softmax statistics, then the block merges them in a fixed tree (shuffles
// within each warp, then warp 0 over the warps): deterministic.
#include <float.h>

#include "common.cuh"
#include "logprob.h"

#define LOGPROB_IGNORE 0xFFFFFFFFu

// Running softmax statistics of values s: m a running maximum, sum = Σ e^(s−m),
// wsum = Σ e^(s−m)·(s−m) (kept only with the entropy). Then
// lse = m + log(sum) and H = lse − Σ p·s = log(sum) − wsum/sum.
// The empty set has m = −FLT_MAX (not −inf: the rescale factor e^(m−x) is 0
// and (m − x)·sum is 0·finite, never inf·0). Logits are assumed finite.
struct SoftmaxStats {
  float m, sum, wsum;
};

__device__ __forceinline__ SoftmaxStats stats_empty() { return {-FLT_MAX, 0.0f, 0.0f}; }

// Adds one value x to the statistics (the online max/sum update).
template <bool ENT>
__device__ __forceinline__ void stats_push(SoftmaxStats& st, float x) {
  if (x > st.m) {
    const float c = expf(st.m - x);  // moves the old terms to the new maximum
    if (ENT) st.wsum = c * (st.wsum + (st.m - x) * st.sum);
    st.sum *= c;
    st.m = x;
  }
  const float d = x - st.m;
  const float e = expf(d);
  st.sum += e;
  if (ENT) st.wsum += e * d;
}

// The statistics of the union of two disjoint sets.
template <bool ENT>
__device__ __forceinline__ SoftmaxStats stats_merge(SoftmaxStats a, SoftmaxStats b) {
  const float m = fmaxf(a.m, b.m);
  const float ca = expf(a.m - m), cb = expf(b.m - m);
  SoftmaxStats r;
  r.m = m;
  r.sum = a.sum * ca + b.sum * cb;
  r.wsum = ENT ? ca * (a.wsum + (a.m - m) * a.sum) + cb * (b.wsum + (b.m - m) * b.sum) : 0.0f;
  return r;
}

template <bool ENT>
__device__ __forceinline__ SoftmaxStats warp_merge(SoftmaxStats st) {
  // Lane 0 ends with lanes 0..31 merged in a fixed tree; the other lanes'
  // values are not used.
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    SoftmaxStats other;
    other.m = __shfl_down_sync(0xffffffffu, st.m, o);
    other.sum = __shfl_down_sync(0xffffffffu, st.sum, o);
    other.wsum = ENT ? __shfl_down_sync(0xffffffffu, st.wsum, o) : 0.0f;
    st = stats_merge<ENT>(st, other);
  }
  return st;
}

// The statistics of s = z[i]·inv_temp over the row, valid in thread 0 only.
// `scratch` holds 32 entries.
template <bool ENT>
__device__ SoftmaxStats row_stats(const bf16* z, uint32_t vocab, float inv_temp, SoftmaxStats* scratch) {
  SoftmaxStats st = stats_empty();
  for (uint32_t i = threadIdx.x; i < vocab; i += blockDim.x) stats_push<ENT>(st, to_f(z[i]) * inv_temp);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
  st = warp_merge<ENT>(st);
  if (lane == 0) scratch[warp] = st;
  __syncthreads();
  if (warp == 0) {
    st = lane < warps ? scratch[lane] : stats_empty();
    st = warp_merge<ENT>(st);
  }
  return st;
}

extern "C" __global__ void __launch_bounds__(ENGINE_ROW_THREADS) logprob_fwd(LogprobFwdParams p) {
  __shared__ SoftmaxStats scratch[32];
  const uint32_t row = blockIdx.x;
  if (row >= p.rows) return;
  const bf16* z = ptr<const bf16>(p.logits) + (size_t)row * p.vocab;
  const SoftmaxStats st = p.entropy ? row_stats<true>(z, p.vocab, p.inv_temp, scratch)
                                    : row_stats<false>(z, p.vocab, p.inv_temp, scratch);
  if (threadIdx.x != 0) return;
  const float log_sum = logf(st.sum);
  const float lse = st.m + log_sum;
  ptr<float>(p.lse)[row] = lse;
  if (p.entropy) ptr<float>(p.entropy)[row] = log_sum - st.wsum / st.sum;
  const uint32_t y = ptr<const uint32_t>(p.targets)[row];
  float logp;
  if (y == LOGPROB_IGNORE) {
    logp = 0.0f;
  } else if (y < p.vocab) {
    logp = to_f(z[y]) * p.inv_temp - lse;
  } else {
    logp = __int_as_float(0x7fc00000);  // a target outside the vocabulary: NaN
  }
  ptr<float>(p.logp)[row] = logp;
}

// dz = −T⁻¹·p·(c + e·(s − (lse − H))) + c·T⁻¹·onehot(y), as the CPU writes it
// (∂H/∂s_j = −p_j (s_j − Σ p s), Σ p s = lse − H). Every branch below
// depends on the row alone, so the block takes it together.
extern "C" __global__ void __launch_bounds__(ENGINE_ROW_THREADS) logprob_bwd(LogprobBwdParams p) {
  const uint32_t row = blockIdx.x;
  if (row >= p.rows) return;
  bf16* z = ptr<bf16>(p.logits) + (size_t)row * p.vocab;
  const uint32_t y = ptr<const uint32_t>(p.targets)[row];
  if (y != LOGPROB_IGNORE && y >= p.vocab) {
    const bf16 nan = to_bf(__int_as_float(0x7fc00000));
    for (uint32_t i = threadIdx.x; i < p.vocab; i += blockDim.x) z[i] = nan;
    return;
  }
  const float inv_temp = p.inv_temp;
  const float lse = ptr<const float>(p.lse)[row];
  const float c = y == LOGPROB_IGNORE ? 0.0f : ptr<const float>(p.coef)[row];
  const float e = p.ent_coef ? ptr<const float>(p.ent_coef)[row] : 0.0f;
  if (c == 0.0f && e == 0.0f) {
    for (uint32_t i = threadIdx.x; i < p.vocab; i += blockDim.x) z[i] = to_bf(0.0f);
    return;
  }
  const float onehot = c * inv_temp;
  if (e == 0.0f) {
    for (uint32_t i = threadIdx.x; i < p.vocab; i += blockDim.x) {
      float d = -onehot * expf(to_f(z[i]) * inv_temp - lse);
      if (i == y) d += onehot;
      z[i] = to_bf(d);
    }
  } else {
    const float mean_s = lse - ptr<const float>(p.entropy)[row];
    for (uint32_t i = threadIdx.x; i < p.vocab; i += blockDim.x) {
      const float s = to_f(z[i]) * inv_temp;
      float d = -inv_temp * expf(s - lse) * (c + e * (s - mean_s));
      if (i == y) d += onehot;
      z[i] = to_bf(d);
    }
  }
}
