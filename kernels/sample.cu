// Token sampling on the GPU: the twin of src/rollout/sampler.rs's `sample`,
// so a rollout's logits never leave the device; only a token and its
// log-probability per sequence come back (DESIGN.md §5, "sampling").
//
// One block per row. The arithmetic is the CPU's: scores s = z·(1/T) in
// double, exponentials and sums in double, the draw u from the row's stream
// (rng.h, the same function the CPU calls). Sums run in a different order
// than the CPU's sequential ones, so a token can differ only where u lands
// within a rounding error (~1e-16 relative) of a boundary of the CDF.
//
// No sort. Every filter keeps a prefix of the CPU's sort order (score
// descending, then id ascending), so each is a cut: a score σ and an id,
// keeping the tokens with a higher score and those with score σ up to that
// id. Scores are compared as order-preserving 32-bit keys of the fp32 logit
// (`ord`); the cut's score is found a byte of the key at a time, each byte
// from a 256-bucket histogram over the row (integer sums, so deterministic),
// and its id by a scan of the row in token order.
//   top-k: the largest σ with count(ord ≥ σ) ≥ k, found a byte at a time
//     from 256-bucket count histograms (4 passes); of the ties at σ, keep the
//     k − count(ord > σ) lowest ids.
//   top-p: the largest σ whose mass below (within the top-k set) is ≤ the
//     budget 1 − top_p, found a byte at a time from 256-bucket histograms of
//     the masses in fixed point (4 passes, deterministic); of the ties at σ,
//     drop as many highest ids as the budget still allows, never the row's
//     top token.
//   min-p: a threshold on the probability (a predicate, no cut needed).
#include <float.h>

#include "common.cuh"
#include "rng.h"
#include "sample.h"

#define NONE 0xFFFFFFFFu

// An order-preserving key of a float: a < b ⇔ ord(a) < ord(b) (−0 < +0, as
// Rust's total_cmp, which the CPU's sort uses).
__device__ __forceinline__ uint32_t ord_of(float f) {
  const uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float float_of(uint32_t o) {
  return __uint_as_float((o & 0x80000000u) ? (o & 0x7FFFFFFFu) : ~o);
}

// Reduction over the block in a fixed order (as common.cuh's block_sum), for
// any associative `op` with identity `id`; every thread gets the result.
// `sh` holds 33 values.
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, T* sh, Op op, T id) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T s = lane < warps ? sh[lane] : id;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s = op(s, __shfl_xor_sync(0xffffffffu, s, o));
    if (lane == 0) sh[32] = s;
  }
  __syncthreads();
  return sh[32];
}

struct Add {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
  __device__ uint32_t operator()(uint32_t a, uint32_t b) const { return a > b ? a : b; }
};
struct Min {
  __device__ uint32_t operator()(uint32_t a, uint32_t b) const { return a < b ? a : b; }
};

// Shared scratch of one block.
struct Smem {
  double d[33];
  uint32_t u[33];
  double scan_d[32];
  uint32_t scan_u[32];
  unsigned long long hist[256];  // top-p's radix histogram of masses
  unsigned long long pick[2];    // its chosen digit and the mass below it
};

// One row and what every pass over it needs.
struct Row {
  const bf16* z;
  uint32_t vocab;
  double inv_t;
  Smem* sh;

  __device__ float logit(uint32_t j) const { return to_f(z[j]); }
  __device__ uint32_t ord(uint32_t j) const { return ord_of(logit(j)); }
  // The score s = z/T, rounded as the CPU rounds it (one product in double).
  __device__ double score(uint32_t j) const { return __dmul_rn((double)logit(j), inv_t); }
  __device__ double score_of_ord(uint32_t o) const { return __dmul_rn((double)float_of(o), inv_t); }

  // Σ over the row of f(j) (double or uint32_t), fixed order.
  template <typename T, typename F>
  __device__ T sum(F f) const {
    T acc = T(0);
    for (uint32_t j = threadIdx.x; j < vocab; j += blockDim.x) acc += f(j);
    if constexpr (sizeof(T) == 8) {
      return block_reduce(acc, sh->d, Add(), 0.0);
    } else {
      return block_reduce(acc, sh->u, Add(), 0u);
    }
  }
  // The largest f(j) over the row (f returns 0 for "nothing").
  template <typename F>
  __device__ uint32_t max(F f) const {
    uint32_t acc = 0;
    for (uint32_t j = threadIdx.x; j < vocab; j += blockDim.x) {
      const uint32_t v = f(j);
      acc = v > acc ? v : acc;
    }
    return block_reduce(acc, sh->u, Max(), 0u);
  }
  // The smallest f(j) over the row (f returns NONE for "nothing").
  template <typename F>
  __device__ uint32_t min(F f) const {
    uint32_t acc = NONE;
    for (uint32_t j = threadIdx.x; j < vocab; j += blockDim.x) {
      const uint32_t v = f(j);
      acc = v < acc ? v : acc;
    }
    return block_reduce(acc, sh->u, Min(), NONE);
  }

  // The first j, in token order, at which the running sum of w (≥ 0, double
  // or uint32_t) exceeds `target`; NONE if it never does. Each thread sums a
  // contiguous chunk of the row, an exclusive scan of the chunk sums (fixed
  // order) finds the chunk where the sum crosses, and its thread walks it.
  template <typename T, typename W>
  __device__ uint32_t first_crossing(W w, T target) const {
    T* scan = nullptr;
    if constexpr (sizeof(T) == 8) {
      scan = sh->scan_d;
    } else {
      scan = sh->scan_u;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = (blockDim.x + 31) >> 5;
    const uint32_t chunk = (vocab + blockDim.x - 1) / blockDim.x;
    const uint32_t j0 = ::min(vocab, threadIdx.x * chunk), j1 = ::min(vocab, j0 + chunk);
    T own = T(0);
    for (uint32_t j = j0; j < j1; ++j) own += w(j);
    // Inclusive scan of the chunk sums: within each warp, then over warps.
    T x = own;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const T y = __shfl_up_sync(0xffffffffu, x, o);
      if (lane >= o) x += y;
    }
    __syncthreads();
    if (lane == 31) scan[warp] = x;
    __syncthreads();
    if (warp == 0) {
      T s = lane < warps ? scan[lane] : T(0);
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const T y = __shfl_up_sync(0xffffffffu, s, o);
        if (lane >= o) s += y;
      }
      if (lane < warps) scan[lane] = s;
    }
    __syncthreads();
    T excl = __shfl_up_sync(0xffffffffu, x, 1);
    if (lane == 0) excl = T(0);
    const T before = (warp > 0 ? scan[warp - 1] : T(0)) + excl;
    const uint32_t first = block_reduce(before + own > target ? threadIdx.x : NONE, sh->u, Min(), NONE);
    if (first == NONE) return NONE;
    __syncthreads();  // every thread has read block_reduce's result slot
    if (threadIdx.x == first) {
      // The walk re-adds in token order; should its rounding not cross
      // (a boundary within an ulp), the chunk's last weighted token is taken.
      // Only a weighted token is ever taken: the scan's and this thread's
      // sums may round apart, so `before` alone can already exceed target,
      // and the chunk's first tokens may weigh nothing (filtered out). A
      // chunk with no weight at all gives NONE, and the caller's fallback.
      T run = before;
      uint32_t last = NONE;
      for (uint32_t j = j0; j < j1; ++j) {
        const T wj = w(j);
        run += wj;
        if (wj > T(0)) {
          last = j;
          if (run > target) break;
        }
      }
      sh->u[32] = last;
    }
    __syncthreads();
    const uint32_t hit = sh->u[32];
    __syncthreads();
    return hit;
  }
};

// A prefix of the sort order: tokens with ord > score, and with ord == score
// up to id (inclusive).
struct Cut {
  uint32_t score, id;
  __device__ bool keeps(uint32_t o, uint32_t j) const { return o > score || (o == score && j <= id); }
};

// The id of the r-th (1-based) token in token order with ord == σ inside `c`.
__device__ uint32_t rth_tie(const Row& row, Cut c, uint32_t sigma, uint32_t r) {
  const uint32_t j = row.first_crossing<uint32_t>(
      [&](uint32_t j) -> uint32_t {
        const uint32_t o = row.ord(j);
        return (o == sigma && c.keeps(o, j)) ? 1u : 0u;
      },
      r - 1);
  return j;  // exists: the caller counted at least r such tokens
}

// The top-k cut: the k tokens first in the sort order (0 < k < vocab).
// One level of a radix search over the keys, a byte at a time from the top:
// sh->hist[b] = Σ weight(j) over the tokens whose key has byte b at this
// level and the bytes of `prefix` above it (and that `keep` keeps). Integer
// weights: exact sums in any order, so atomics leave it deterministic. Each
// thread adds a run of tokens in one bucket before one atomic: at the first
// level most of a row shares 2–4 buckets, and atomics on one address
// serialise.
template <typename K, typename W>
__device__ void radix_histogram(const Row& row, int level, uint32_t prefix, K keep, W weight) {
  Smem* sh = row.sh;
  const int shift = 24 - 8 * level;
  for (uint32_t i = threadIdx.x; i < 256; i += blockDim.x) sh->hist[i] = 0;
  __syncthreads();
  uint32_t cur = NONE;
  unsigned long long run = 0;
  for (uint32_t j = threadIdx.x; j < row.vocab; j += blockDim.x) {
    const uint32_t o = row.ord(j);
    const bool in_range = level == 0 || (o >> (shift + 8)) == (prefix >> (shift + 8));
    if (!in_range || !keep(o, j)) continue;
    const uint32_t bucket = (o >> shift) & 255u;
    if (bucket != cur) {
      if (cur != NONE) atomicAdd(&sh->hist[cur], run);
      cur = bucket;
      run = 0;
    }
    run += weight(j);
  }
  if (cur != NONE) atomicAdd(&sh->hist[cur], run);
  __syncthreads();
}

// Shares thread 0's choice at one radix level with the block.
__device__ __forceinline__ void radix_share(Smem* sh, uint32_t* prefix, unsigned long long* base, int level) {
  __syncthreads();
  *prefix |= (uint32_t)sh->pick[0] << (24 - 8 * level);
  *base = sh->pick[1];
  __syncthreads();  // pick and hist are rewritten by the next level
}

// The top-k cut: the k tokens first in the sort order (0 < k < vocab). Its
// score σ is the largest with count(ord ≥ σ) ≥ k, found a byte at a time
// from count histograms (4 passes); of the ties at σ, the k − count(ord > σ)
// lowest ids are kept.
__device__ Cut top_k_cut(const Row& row, uint32_t k) {
  Smem* sh = row.sh;
  uint32_t prefix = 0;
  unsigned long long above = 0;  // tokens with a key above prefix's range
  for (int level = 0; level < 4; ++level) {
    radix_histogram(row, level, prefix, [](uint32_t, uint32_t) { return true; },
                    [](uint32_t) -> unsigned long long { return 1; });
    if (threadIdx.x == 0) {
      // The largest byte d with above + Σ_{i ≥ d} hist[i] ≥ k (it exists:
      // the tokens in range and above number at least k).
      unsigned long long acc = above;
      uint32_t d = 255;
      while (d > 0 && acc + sh->hist[d] < k) acc += sh->hist[d--];
      sh->pick[0] = d;
      sh->pick[1] = acc;  // the tokens above byte d: count(ord > σ) once all 4 are chosen
    }
    radix_share(sh, &prefix, &above, level);
  }
  const Cut all = {0u, NONE};
  return {prefix, rth_tie(row, all, prefix, k - (uint32_t)above)};
}

// log Σ exp(s) over the tokens `keep` keeps, whose maximum score is smax
// (the row's top token is always kept): the CPU's `lse` of a kept set.
template <typename K>
__device__ double kept_lse(const Row& row, double smax, K keep) {
  const double t = row.sum<double>([&](uint32_t j) -> double { return keep(j) ? exp(row.score(j) - smax) : 0.0; });
  return smax + log(t);
}

// Probability p ∈ [0, 1] in fixed point (units of 2^-62, truncated): sums of
// these are exact integers whatever their order, so the radix histograms
// below are deterministic with atomics; they differ from the double sums by
// under vocab·2^-62 (≈ 3e-14), which moves a decision only at that distance
// from the budget.
__device__ __forceinline__ unsigned long long fixed_mass(double p) { return (unsigned long long)(p * 0x1p62); }

// The largest σ with below(σ) ≤ budget (below(0) = 0 qualifies), below(σ)
// the mass under softmax over c1 (log-normaliser l1) of c1's tokens with
// ord < σ: σ's 4 bytes from the top, each from a 256-bucket histogram of the
// masses of the tokens that share the bytes found so far (4 passes over the
// row, where a bisection on σ would take 32). See radix_histogram.
__device__ uint32_t top_p_sigma(const Row& row, Cut c1, double l1, double budget) {
  Smem* sh = row.sh;
  const unsigned long long limit = fixed_mass(budget < 1.0 ? budget : 1.0);
  uint32_t prefix = 0;          // the bytes found so far, in place
  unsigned long long base = 0;  // the mass of c1's tokens with ord below prefix's range
  for (int level = 0; level < 4; ++level) {
    radix_histogram(row, level, prefix, [&](uint32_t o, uint32_t j) { return c1.keeps(o, j); },
                    [&](uint32_t j) { return fixed_mass(exp(row.score(j) - l1)); });
    if (threadIdx.x == 0) {
      // The largest byte d with base + Σ_{i<d} hist[i] ≤ limit (d = 0 always does).
      unsigned long long acc = base;
      uint32_t d = 0;
      while (d < 255 && acc + sh->hist[d] <= limit) acc += sh->hist[d++];
      sh->pick[0] = d;
      sh->pick[1] = acc;
    }
    radix_share(sh, &prefix, &base, level);
  }
  return prefix;
}

// The top-p cut inside c1: drop the longest tail of the sort order whose mass
// under softmax over c1 is ≤ budget, never the top token.
__device__ Cut top_p_cut(const Row& row, Cut c1, double smax, double budget) {
  const double l1 = kept_lse(row, smax, [&](uint32_t j) { return c1.keeps(row.ord(j), j); });
  // Mass of c1's tokens with ord < σ.
  auto below = [&](uint32_t sigma) {
    return row.sum<double>([&](uint32_t j) -> double {
      const uint32_t o = row.ord(j);
      return (o < sigma && c1.keeps(o, j)) ? exp(row.score(j) - l1) : 0.0;
    });
  };
  const uint32_t lo = top_p_sigma(row, c1, l1, budget);
  // The partly dropped score: the highest kept score at or under lo.
  const uint32_t tau = row.max([&](uint32_t j) -> uint32_t {
    const uint32_t o = row.ord(j);
    return (o <= lo && c1.keeps(o, j)) ? o : 0u;
  });
  const uint32_t g = row.sum<uint32_t>([&](uint32_t j) -> uint32_t {
    const uint32_t o = row.ord(j);
    return (o == tau && c1.keeps(o, j)) ? 1u : 0u;
  });
  const double m_low = below(tau);
  const double p_tau = exp(row.score_of_ord(tau) - l1);
  // Ties are dropped highest id first while the tail stays within budget.
  uint32_t n = g;
  if (p_tau > 0.0) {
    // room < 0 where the tail below is already over the budget in double
    // (σ was chosen in fixed point, a few 1e-14 away): drop none of the ties.
    const double room = (budget - m_low) / p_tau;
    n = !(room > 0.0) ? 0u : (room >= (double)g ? g : (uint32_t)floor(room));
    // At most one step each way: floor(room) is within an ulp of the count.
    if (n > 0 && m_low + n * p_tau > budget) --n;
    if (n < g && m_low + (n + 1) * p_tau <= budget) ++n;
  }
  if (n >= g) n = g - 1;  // the top token, and the group's first, stay
  return {tau, rth_tie(row, c1, tau, g - n)};
}

extern "C" __global__ void __launch_bounds__(ENGINE_SAMPLE_THREADS) sample_rows(SampleParams p) {
  __shared__ Smem sh;
  const uint32_t r = blockIdx.x;
  if (r >= p.rows) return;
  const Row row = {ptr<const bf16>(p.logits) + (size_t)r * p.vocab, p.vocab, p.inv_temp, &sh};
  const uint64_t* draw = ptr<const uint64_t>(p.draws) + 2 * (size_t)r;
  const double u = engine_uniform(draw[0], draw[1]);
  const uint32_t top = row.max([&](uint32_t j) { return row.ord(j); });
  uint32_t token;
  double logprob;

  if (p.greedy) {
    // The first maximum (as torch.argmax and the CPU's `v > best`, for which
    // −0 and +0 are equal: the key of z + 0, which is +0 for both), log-prob
    // under softmax(z).
    auto key = [&](uint32_t j) { return ord_of(row.logit(j) + 0.0f); };
    const uint32_t gtop = row.max(key);
    token = row.min([&](uint32_t j) { return key(j) == gtop ? j : NONE; });
    const double zmax = (double)float_of(gtop);
    const double t = row.sum<double>([&](uint32_t j) -> double { return exp((double)row.logit(j) - zmax); });
    logprob = (double)row.logit(token) - (zmax + log(t));
  } else {
    const double smax = row.score_of_ord(top);
    const double total = row.sum<double>([&](uint32_t j) -> double { return exp(row.score(j) - smax); });
    if (!p.filtered) {
      // One exp per token: the inverse CDF of e = exp(s − max) in token order.
      token = row.first_crossing<double>([&](uint32_t j) -> double { return exp(row.score(j) - smax); },
                                         __dmul_rn(u, total));
      if (token == NONE) token = p.vocab - 1;
      logprob = row.score(token) - smax - log(total);
    } else {
      Cut c = {0u, NONE};
      if (p.top_k > 0 && p.top_k < p.vocab) c = top_k_cut(row, p.top_k);
      if (p.use_top_p) c = top_p_cut(row, c, smax, p.top_p_budget);
      // min-p: keep probabilities ≥ min_p · p(top), under softmax over the cut.
      double threshold = -1.0, l2 = 0.0;
      if (p.min_p > 0.0) {
        l2 = kept_lse(row, smax, [&](uint32_t j) { return c.keeps(row.ord(j), j); });
        threshold = p.min_p * exp(smax - l2);
      }
      auto keep = [&](uint32_t j) {
        const uint32_t o = row.ord(j);
        return c.keeps(o, j) && (threshold < 0.0 || exp(row.score(j) - l2) >= threshold);
      };
      const double l3 = kept_lse(row, smax, keep);
      auto weight = [&](uint32_t j) -> double { return keep(j) ? exp(row.score(j) - l3) : 0.0; };
      const double mass = row.sum<double>(weight);
      token = row.first_crossing<double>(weight, __dmul_rn(u, mass));
      if (token == NONE) token = row.max([&](uint32_t j) -> uint32_t { return keep(j) ? j : 0u; });
      logprob = row.score(token) - (smax + log(total));
    }
  }
  if (threadIdx.x == 0) {
    ptr<uint32_t>(p.tokens)[r] = token;
    ptr<float>(p.logprobs)[r] = (float)logprob;
  }
}

extern "C" __global__ void rng_uniform(RngParams p) {
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.n) return;
  const uint64_t* d = ptr<const uint64_t>(p.draws);
  ptr<double>(p.out)[i] = engine_uniform(d[2 * i], d[2 * i + 1]);
}
