// Distillation (DESIGN.md §4.6): per row, the divergence between the
// student's and the teacher's softmax(z·inv_temp) into loss[row], and its
// gradient times weight[row] written over the student's logits in place: the
// GPU twin of distill_row in src/backend/cpu/distill.rs, with the same
// per-element arithmetic in fp32 (sums of the divergence in fp64).
//
// One block per row; three kernels, one per mode. Pass 1 reads both rows
// once and folds them into running softmax statistics (online max/sum), and
// for the reverse KL also Σ e^(s−max)·(s − t), so that its value is known
// after this pass. The forward and the reverse KL then need one more pass,
// which writes the gradient (and, forward, sums the value as the CPU does);
// the JSD needs its value and Σ p_s·u before any gradient: three passes.
//
// Order: each thread visits a fixed set of elements in a fixed order (a
// scalar head up to the first 16-byte boundary, 8-element vectors
// v = tid, tid + blockDim, …, a scalar tail) and the block merges the
// threads' partials in a fixed tree (warp shuffles, then warp 0 over the
// warps): the same inputs at the same addresses give the same bits.
#include <float.h>

#include "common.cuh"
#include "distill.h"
#include "vec.cuh"

// ---- the row walk -----------------------------------------------------------

// Calls op.run<N>(zs, zt) on this thread's share of the row pair, N = 8 for
// an aligned vector and 1 for a scalar head or tail element; zs and zt hold
// the raw logits in fp32. With WRITE, op leaves dz in zs and it is stored
// over the student's logits (each element read and written by one thread).
// head: elements before the 16-byte vectors (n: all scalar). With LAST_FIRST the
// thread walks its vectors last to first: a pass after the first starts
// where the previous one ended, on the part of the row pair most likely
// still in L2 (a row pair is 608 KB at Qwen's vocabulary, and the blocks in
// flight hold more than L2), and so reads less from HBM.
template <bool WRITE, bool LAST_FIRST, typename Op>
__device__ __forceinline__ void for_row(bf16* zs, const bf16* zt, uint32_t n, uint32_t head, Op& op) {
  const uint32_t tid = threadIdx.x, step = blockDim.x;
  for (uint32_t i = tid; i < head; i += step) {
    float s[1] = {to_f(zs[i])};
    const float t[1] = {to_f(zt[i])};
    op.template run<1>(s, t);
    if (WRITE) zs[i] = to_bf(s[0]);
  }
  const uint32_t nv = (n - head) / 8;
  bf16* vs = zs + head;
  const bf16* vt = zt + head;
  // This thread's vectors are v = tid + k·step for k < count.
  const uint32_t count = tid < nv ? (nv - 1 - tid) / step + 1 : 0;
#pragma unroll 2
  for (uint32_t k = 0; k < count; ++k) {
    const uint32_t v = tid + (LAST_FIRST ? count - 1 - k : k) * step;
    const uint4 a = ld16(vs + 8 * (size_t)v), b = ld16(vt + 8 * (size_t)v);
    float s[8], t[8];
    unpack8(a, s);
    unpack8(b, t);
    op.template run<8>(s, t);
    if (WRITE) st16(vs + 8 * (size_t)v, pack8(s));
  }
  for (uint32_t i = head + 8 * nv + tid; i < n; i += step) {
    float s[1] = {to_f(zs[i])};
    const float t[1] = {to_f(zt[i])};
    op.template run<1>(s, t);
    if (WRITE) zs[i] = to_bf(s[0]);
  }
}

// The scalar head: up to the first 16-byte boundary when both rows sit at
// the same offset mod 16, else the whole row.
__device__ __forceinline__ uint32_t row_head(const bf16* zs, const bf16* zt, uint32_t n) {
  const dptr a = (dptr)zs, b = (dptr)zt;
  return same_phase(a, b) ? bf16_head(a, n) : n;
}

// ---- pass 1: softmax statistics of both rows ---------------------------------

// Running statistics of x_s = z_s·inv_temp and x_t = z_t·inv_temp: maxima
// m, sums Σ e^(x−m), and (reverse KL) w = Σ e^(x_s−m_s)·(x_s − x_t). The
// empty set has m = −FLT_MAX (a rescale factor e^(m−x) is then 0, never NaN).
struct Stats {
  float ms, ss, mt, st;
  double w;
};

__device__ __forceinline__ Stats stats_empty() { return {-FLT_MAX, 0.0f, -FLT_MAX, 0.0f, 0.0}; }

// The statistics of the union of two disjoint sets.
template <bool REV>
__device__ __forceinline__ Stats stats_merge(const Stats& a, const Stats& b) {
  Stats r;
  r.ms = fmaxf(a.ms, b.ms);
  const float as = expf(a.ms - r.ms), bs = expf(b.ms - r.ms);
  r.ss = a.ss * as + b.ss * bs;
  r.w = REV ? a.w * as + b.w * bs : 0.0;
  r.mt = fmaxf(a.mt, b.mt);
  r.st = a.st * expf(a.mt - r.mt) + b.st * expf(b.mt - r.mt);
  return r;
}

template <bool REV>
struct StatsOp {
  float inv;
  Stats a;
  // Each group of N: its maxima first (one rescale per group at most), then its terms.
  template <int N>
  __device__ __forceinline__ void run(float (&zs)[N], const float (&zt)[N]) {
    float xs[N], xt[N];
    float ms = -FLT_MAX, mt = -FLT_MAX;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      xs[k] = zs[k] * inv;
      xt[k] = zt[k] * inv;
      ms = fmaxf(ms, xs[k]);
      mt = fmaxf(mt, xt[k]);
    }
    if (ms > a.ms) {
      const float c = expf(a.ms - ms);
      a.ss *= c;
      if (REV) a.w *= c;
      a.ms = ms;
    }
    if (mt > a.mt) {
      a.st *= expf(a.mt - mt);
      a.mt = mt;
    }
    float ss = 0.0f, st = 0.0f, w = 0.0f;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float es = expf(xs[k] - a.ms);
      ss += es;
      st += expf(xt[k] - a.mt);
      if (REV) w += es * (xs[k] - xt[k]);
    }
    a.ss += ss;
    a.st += st;
    if (REV) a.w += (double)w;
  }
};

template <bool REV>
__device__ __forceinline__ Stats warp_merge(Stats a) {
  // Lane 0 ends with lanes 0..31 merged in a fixed tree; the other lanes'
  // values are not used.
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Stats b;
    b.ms = __shfl_down_sync(0xffffffffu, a.ms, o);
    b.ss = __shfl_down_sync(0xffffffffu, a.ss, o);
    b.mt = __shfl_down_sync(0xffffffffu, a.mt, o);
    b.st = __shfl_down_sync(0xffffffffu, a.st, o);
    b.w = REV ? __shfl_down_sync(0xffffffffu, a.w, o) : 0.0;
    a = stats_merge<REV>(a, b);
  }
  return a;
}

// The row's statistics, in every thread. `scratch` holds 33 entries.
template <bool REV>
__device__ __forceinline__ Stats block_stats(Stats a, Stats* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
  a = warp_merge<REV>(a);
  if (lane == 0) scratch[warp] = a;
  __syncthreads();
  if (warp == 0) {
    a = lane < warps ? scratch[lane] : stats_empty();
    a = warp_merge<REV>(a);
    if (lane == 0) scratch[32] = a;
  }
  __syncthreads();
  return scratch[32];
}

// ---- the per-element terms, as distill_row writes them -----------------------

// Forward KL: D = Σ p_t (t − s), dz = scale·(p_s − p_t).
struct ForwardGrad {
  float inv, ls, lt, scale;
  bool zero;
  double value;
  template <int N>
  __device__ __forceinline__ void run(float (&zs)[N], const float (&zt)[N]) {
    float v = 0.0f;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float s = zs[k] * inv - ls, t = zt[k] * inv - lt;
      const float es = expf(s), et = expf(t);
      v += et * (t - s);
      zs[k] = zero ? 0.0f : scale * (es - et);
    }
    value += (double)v;
  }
};

// Reverse KL: D = Σ p_s (s − t) (from pass 1), dz = scale·p_s·(s − t − D).
struct ReverseGrad {
  float inv, ls, lt, scale, d;
  bool zero;
  template <int N>
  __device__ __forceinline__ void run(float (&zs)[N], const float (&zt)[N]) {
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float s = zs[k] * inv - ls, t = zt[k] * inv - lt;
      zs[k] = zero ? 0.0f : scale * expf(s) * (s - t - d);
    }
  }
};

// log(e^x + e^y), as the CPU's log_add_exp.
__device__ __forceinline__ float log_add_exp(float x, float y) {
  return fmaxf(x, y) + logf(1.0f + expf(-fabsf(x - y)));
}

// JSD: with log m = log(β e^t + (1−β) e^s), the value's term
// β p_t (t − log m) + (1−β) p_s (s − log m) and u = (1−β)(s − log m) = ∂D/∂p_s.
struct JsdTerms {
  float inv, ls, lt, b, lb, l1b;
  __device__ __forceinline__ void at(float zs, float zt, float& v, float& u, float& ps) const {
    const float s = zs * inv - ls, t = zt * inv - lt;
    const float lm = log_add_exp(t + lb, s + l1b);
    ps = expf(s);
    const float pt = expf(t);
    v = b * pt * (t - lm) + (1.0f - b) * ps * (s - lm);
    u = (1.0f - b) * (s - lm);
  }
};

// Pass 2 of the JSD: D and Σ p_s·u.
struct JsdSums {
  JsdTerms j;
  double value, mean_u;
  template <int N>
  __device__ __forceinline__ void run(float (&zs)[N], const float (&zt)[N]) {
    float v = 0.0f, m = 0.0f;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      float vk, u, ps;
      j.at(zs[k], zt[k], vk, u, ps);
      v += vk;
      m += ps * u;
    }
    value += (double)v;
    mean_u += (double)m;
  }
};

// Pass 3 of the JSD: dz = scale·p_s·(u − Σ p_s·u).
struct JsdGrad {
  JsdTerms j;
  float scale, mean_u;
  bool zero;
  template <int N>
  __device__ __forceinline__ void run(float (&zs)[N], const float (&zt)[N]) {
#pragma unroll
    for (int k = 0; k < N; ++k) {
      float v, u, ps;
      j.at(zs[k], zt[k], v, u, ps);
      zs[k] = zero ? 0.0f : scale * ps * (u - mean_u);
    }
  }
};

// ---- the kernels ---------------------------------------------------------------

enum { DISTILL_FORWARD, DISTILL_REVERSE, DISTILL_JSD };

template <int MODE>
__device__ __forceinline__ void distill_row(const DistillParams& p) {
  constexpr bool REV = MODE == DISTILL_REVERSE;
  __shared__ Stats stats_scratch[33];
  __shared__ double sum_scratch[33];
  const uint32_t row = blockIdx.x;
  if (row >= p.rows) return;
  const uint32_t n = p.vocab;
  bf16* zs = ptr<bf16>(p.student) + (size_t)row * n;
  const bf16* zt = ptr<const bf16>(p.teacher) + (size_t)row * n;
  const uint32_t head = row_head(zs, zt, n);
  const float inv = p.inv_temp;
  const float weight = ptr<const float>(p.weight)[row];
  // A weight of 0 zeroes the row (as the CPU's fill), whatever dz would be.
  const bool zero = weight == 0.0f;
  const float scale = weight * inv;

  StatsOp<REV> so{inv, stats_empty()};
  for_row<false, false>(zs, zt, n, head, so);
  const Stats st = block_stats<REV>(so.a, stats_scratch);
  const float ls = st.ms + logf(st.ss), lt = st.mt + logf(st.st);

  double value;
  if (MODE == DISTILL_FORWARD) {
    ForwardGrad g{inv, ls, lt, scale, zero, 0.0};
    for_row<true, true>(zs, zt, n, head, g);
    value = block_sum<double>(g.value, sum_scratch);
  } else if (MODE == DISTILL_REVERSE) {
    // D = Σ p_s (x_s − x_t) − ls + lt, p_s = e^(x_s − m_s) / Σ e^(x_s − m_s).
    value = st.w / (double)st.ss - (double)ls + (double)lt;
    ReverseGrad g{inv, ls, lt, scale, (float)value, zero};
    for_row<true, true>(zs, zt, n, head, g);
  } else {
    const JsdTerms j{inv, ls, lt, p.beta, p.log_beta, p.log_1m_beta};
    JsdSums s{j, 0.0, 0.0};
    for_row<false, true>(zs, zt, n, head, s);
    value = block_sum<double>(s.value, sum_scratch);
    const double mean_u = block_sum<double>(s.mean_u, sum_scratch);
    JsdGrad g{j, scale, (float)mean_u, zero};
    for_row<true, false>(zs, zt, n, head, g);
  }
  if (threadIdx.x == 0) ptr<float>(p.loss)[row] = (float)value;
}

extern "C" __global__ void __launch_bounds__(ENGINE_ROW_THREADS) distill_forward(DistillParams p) {
  distill_row<DISTILL_FORWARD>(p);
}

extern "C" __global__ void __launch_bounds__(ENGINE_ROW_THREADS) distill_reverse(DistillParams p) {
  distill_row<DISTILL_REVERSE>(p);
}

extern "C" __global__ void __launch_bounds__(ENGINE_ROW_THREADS) distill_jsd(DistillParams p) {
  distill_row<DISTILL_JSD>(p);
}
