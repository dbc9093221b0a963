// Log-probabilities of the target tokens under softmax(z·inv_temp), the
// optional entropy (forward), and the gradient written over the logits in
// place (backward): the GPU twins of src/backend/cpu/logprob.rs, DESIGN.md
// §4.1. One block per row; logits read once per pass; all math in fp32.
// Logits are bf16 or fp32 (the params' `fp32`): every kernel is a template
// over the element type, chosen per launch; the arithmetic is the same.
//
// Two versions of each kernel:
// - logprob_fwd / logprob_bwd (the fast ones, bottom of the file): each row
//   is split into a scalar head up to its first 16-byte boundary (rows start
//   at row·vocab, so the head differs per row when vocab is odd), 16-byte
//   vectors (8 bf16 or 4 fp32) read 4 at a time per thread, and a scalar
//   tail;
//   exponentials as 2^(d·log2 e) with one ex2.approx (as __expf), where the
//   reference calls the accurate expf.
// - logprob_fwd_reference / logprob_bwd_reference: scalar accesses,
//   columns i, i + blockDim, …, natural-base expf; the simple twins the fast
//   ones are tested against.
// Both are deterministic: each thread folds a fixed set of columns in a fixed
// order into running softmax statistics, then the block merges them in a
// fixed tree (shuffles within each warp, then warp 0 over the warps).
#include <float.h>

#include "common.cuh"
#include "logprob.h"
#include "vec.cuh"

#define LOGPROB_IGNORE 0xFFFFFFFFu

// A logit as fp32, and a gradient stored as a logit (bf16: rounded to
// nearest even, as to_bf).
__device__ __forceinline__ float load_f(const bf16* z, uint32_t i) { return to_f(z[i]); }
__device__ __forceinline__ float load_f(const float* z, uint32_t i) { return z[i]; }
__device__ __forceinline__ void store_f(bf16* z, uint32_t i, float v) { z[i] = to_bf(v); }
__device__ __forceinline__ void store_f(float* z, uint32_t i, float v) { z[i] = v; }

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
// Every s is the rounded product (__fmul_rn: never contracted into an FMA),
// as the CPU computes it, so a one-token vocabulary gives logp exactly 0.
// `scratch` holds 32 entries.
template <bool ENT, typename T>
__device__ SoftmaxStats row_stats(const T* z, uint32_t vocab, float inv_temp, SoftmaxStats* scratch) {
  SoftmaxStats st = stats_empty();
  for (uint32_t i = threadIdx.x; i < vocab; i += blockDim.x) stats_push<ENT>(st, __fmul_rn(load_f(z, i), inv_temp));
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

template <typename T>
__device__ void fwd_row_reference(const LogprobFwdParams& p, SoftmaxStats* scratch) {
  const uint32_t row = blockIdx.x;
  const T* z = ptr<const T>(p.logits) + (size_t)row * p.vocab;
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
    logp = __fmul_rn(load_f(z, y), p.inv_temp) - lse;
  } else {
    logp = nan_f();  // a target outside the vocabulary: NaN
  }
  ptr<float>(p.logp)[row] = logp;
}

extern "C" __global__ void __launch_bounds__(ENGINE_ROW_THREADS) logprob_fwd_reference(LogprobFwdParams p) {
  __shared__ SoftmaxStats scratch[32];
  if (blockIdx.x >= p.rows) return;
  if (p.fp32) {
    fwd_row_reference<float>(p, scratch);
  } else {
    fwd_row_reference<bf16>(p, scratch);
  }
}

// dz = −T⁻¹·p·(c + e·(s − (lse − H))) + c·T⁻¹·onehot(y), as the CPU writes it
// (∂H/∂s_j = −p_j (s_j − Σ p s), Σ p s = lse − H). Every branch below
// depends on the row alone, so the block takes it together.
template <typename T>
__device__ void bwd_row_reference(const LogprobBwdParams& p) {
  const uint32_t row = blockIdx.x;
  T* z = ptr<T>(p.logits) + (size_t)row * p.vocab;
  const uint32_t y = ptr<const uint32_t>(p.targets)[row];
  if (y != LOGPROB_IGNORE && y >= p.vocab) {
    for (uint32_t i = threadIdx.x; i < p.vocab; i += blockDim.x) store_f(z, i, nan_f());
    return;
  }
  const float inv_temp = p.inv_temp;
  const float lse = ptr<const float>(p.lse)[row];
  const float c = y == LOGPROB_IGNORE ? 0.0f : ptr<const float>(p.coef)[row];
  const float e = p.ent_coef ? ptr<const float>(p.ent_coef)[row] : 0.0f;
  if (c == 0.0f && e == 0.0f) {
    for (uint32_t i = threadIdx.x; i < p.vocab; i += blockDim.x) store_f(z, i, 0.0f);
    return;
  }
  const float onehot = c * inv_temp;
  if (e == 0.0f) {
    for (uint32_t i = threadIdx.x; i < p.vocab; i += blockDim.x) {
      float d = -onehot * expf(__fmul_rn(load_f(z, i), inv_temp) - lse);
      if (i == y) d += onehot;
      store_f(z, i, d);
    }
  } else {
    const float mean_s = lse - ptr<const float>(p.entropy)[row];
    for (uint32_t i = threadIdx.x; i < p.vocab; i += blockDim.x) {
      const float s = __fmul_rn(load_f(z, i), inv_temp);
      float d = -inv_temp * expf(s - lse) * (c + e * (s - mean_s));
      if (i == y) d += onehot;
      store_f(z, i, d);
    }
  }
}

extern "C" __global__ void __launch_bounds__(ENGINE_ROW_THREADS) logprob_bwd_reference(LogprobBwdParams p) {
  if (blockIdx.x >= p.rows) return;
  if (p.fp32) {
    bwd_row_reference<float>(p);
  } else {
    bwd_row_reference<bf16>(p);
  }
}

// ---- the fast kernels ----------------------------------------------------------

#define LOGPROB_LOG2E 1.4426950408889634f
// 16-byte vectors each thread loads before using any (64 bytes in flight).
#define LOGPROB_UNROLL 4
// Blocks per SM the register budget must allow (64 registers per thread).
#define LOGPROB_MIN_BLOCKS 4

// 2^x in one MUFU instruction (relative error ~2^-22; results below 2^-126
// flush to 0, which only drops terms under 1e-38 of the row's maximum).
__device__ __forceinline__ float exp2_fast(float x) {
#ifdef ENGINE_KERNEL_EMU
  return exp2f(x);  // tools/kernel_emu: within the instruction's 2^-22
#else
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
#endif
}

// Σ a[k] in a fixed pairwise tree, N a power of two.
template <int N>
__device__ __forceinline__ float tree_sum(const float* a) {
  if constexpr (N == 1) {
    return a[0];
  } else {
    return tree_sum<N / 2>(a) + tree_sum<N / 2>(a + N / 2);
  }
}

// e^d as 2^(d·log2 e) in one MUFU instruction (what __expf does). d = 0
// gives exactly 1, so a row's maximum term is exact, as in expf.
__device__ __forceinline__ float exp_fast(float d) { return exp2_fast(d * LOGPROB_LOG2E); }

// stats_merge with exp_fast.
template <bool ENT>
__device__ __forceinline__ SoftmaxStats stats_merge_fast(SoftmaxStats a, SoftmaxStats b) {
  const float m = fmaxf(a.m, b.m);
  const float ca = exp_fast(a.m - m), cb = exp_fast(b.m - m);
  SoftmaxStats r;
  r.m = m;
  r.sum = a.sum * ca + b.sum * cb;
  r.wsum = ENT ? ca * (a.wsum + (a.m - m) * a.sum) + cb * (b.wsum + (b.m - m) * b.sum) : 0.0f;
  return r;
}

template <bool ENT>
__device__ __forceinline__ SoftmaxStats warp_merge_fast(SoftmaxStats st) {
  // Lane 0 ends with lanes 0..31 merged in a fixed tree.
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    SoftmaxStats other;
    other.m = __shfl_down_sync(0xffffffffu, st.m, o);
    other.sum = __shfl_down_sync(0xffffffffu, st.sum, o);
    other.wsum = ENT ? __shfl_down_sync(0xffffffffu, st.wsum, o) : 0.0f;
    st = stats_merge_fast<ENT>(st, other);
  }
  return st;
}

// Folds N values z (raw logits in fp32) into the statistics of s = z·inv:
// their maximum first (at most one rescale per group), then the N terms
// e^(s − m) (and e^(s − m)·(s − m)) summed in a fixed pairwise tree and added
// to the running sums.
template <bool ENT>
struct FoldFast {
  float inv;
  SoftmaxStats st;
  template <int N>
  __device__ __forceinline__ void run(float* z, uint32_t) {
    float x[N];
    float gm = -FLT_MAX;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      x[k] = __fmul_rn(z[k], inv);
      gm = fmaxf(gm, x[k]);
    }
    if (gm > st.m) {
      const float c = exp_fast(st.m - gm);
      if (ENT) st.wsum = c * (st.wsum + (st.m - gm) * st.sum);
      st.sum *= c;
      st.m = gm;
    }
    float e[N], w[N];
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float d = x[k] - st.m;
      e[k] = exp_fast(d);
      if (ENT) w[k] = e[k] * d;
    }
    st.sum += tree_sum<N>(e);
    if (ENT) st.wsum += tree_sum<N>(w);
  }
};

// Eight fp32 to bf16 (round to nearest even, as to_bf), one cvt per pair.
__device__ __forceinline__ uint32_t pack2_rn(float a, float b) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);  // a in the low half
  return *reinterpret_cast<const uint32_t*>(&h);
}

__device__ __forceinline__ uint4 pack8_rn(const float* f) {
  return make_uint4(pack2_rn(f[0], f[1]), pack2_rn(f[2], f[3]), pack2_rn(f[4], f[5]), pack2_rn(f[6], f[7]));
}

// A 16-byte vector of logits: VecOf<T>::N elements, unpacked to fp32 and
// packed back (bf16 rounded to nearest even, as to_bf).
template <typename T>
struct VecOf;
template <>
struct VecOf<bf16> {
  static constexpr int N = 8;
  __device__ static __forceinline__ void unpack(uint4 v, float* f) { unpack8(v, f); }
  __device__ static __forceinline__ uint4 pack(const float* f) { return pack8_rn(f); }
};
template <>
struct VecOf<float> {
  static constexpr int N = 4;
  __device__ static __forceinline__ void unpack(uint4 v, float* f) {
    f[0] = __uint_as_float(v.x), f[1] = __uint_as_float(v.y), f[2] = __uint_as_float(v.z), f[3] = __uint_as_float(v.w);
  }
  __device__ static __forceinline__ uint4 pack(const float* f) {
    return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
  }
};


// Calls op.run<N>(z, first) on this thread's share of the row, z the raw
// logits in fp32, N = VecOf<T>::N for a 16-byte vector (8 bf16, 4 fp32) and
// 1 for a head or tail element; z[k] is the row's element first + k. The
// vectors' loads are issued LOGPROB_UNROLL at a time (all of a group's loads
// before any use). With WRITE, op leaves dz in z and it is stored over the
// row (each element read and written by one thread).
// Order per thread: head element i = tid (< N), vectors tid, tid + step, …
// in order (loaded in groups of LOGPROB_UNROLL while whole groups remain,
// then one at a time), tail.
template <bool WRITE, typename T, typename Op>
__device__ __forceinline__ void walk_row(T* z, uint32_t n, Op& op) {
  constexpr int N = VecOf<T>::N;
  const uint32_t tid = threadIdx.x, step = blockDim.x;
  const uint32_t head = vec_head<T>((dptr)z, n);
  for (uint32_t i = tid; i < head; i += step) {
    float f[1] = {load_f(z, i)};
    op.template run<1>(f, i);
    if (WRITE) store_f(z, i, f[0]);
  }
  const uint32_t nv = (n - head) / N;
  uint4* v = reinterpret_cast<uint4*>(z + head);
  if (nv) check16(v);  // (a row shorter than its head has no vectors)
  uint32_t j = tid;
  for (; j + (LOGPROB_UNROLL - 1) * step < nv; j += LOGPROB_UNROLL * step) {
    uint4 a[LOGPROB_UNROLL];
#pragma unroll
    for (int u = 0; u < LOGPROB_UNROLL; ++u) a[u] = v[j + u * step];
#pragma unroll
    for (int u = 0; u < LOGPROB_UNROLL; ++u) {
      float f[N];
      VecOf<T>::unpack(a[u], f);
      op.template run<N>(f, head + N * (j + u * step));
      if (WRITE) v[j + u * step] = VecOf<T>::pack(f);
    }
  }
  for (; j < nv; j += step) {
    float f[N];
    VecOf<T>::unpack(v[j], f);
    op.template run<N>(f, head + N * j);
    if (WRITE) v[j] = VecOf<T>::pack(f);
  }
  for (uint32_t i = head + N * nv + tid; i < n; i += step) {
    float f[1] = {load_f(z, i)};
    op.template run<1>(f, i);
    if (WRITE) store_f(z, i, f[0]);
  }
}

// Writes `value` over the row (head, 16-byte vectors, tail; no reads).
template <typename T>
__device__ __forceinline__ void fill_row(T* z, uint32_t n, float value) {
  constexpr int N = VecOf<T>::N;
  const uint32_t tid = threadIdx.x, step = blockDim.x;
  const uint32_t head = vec_head<T>((dptr)z, n);
  for (uint32_t i = tid; i < head; i += step) store_f(z, i, value);
  const uint32_t nv = (n - head) / N;
  uint4* v = reinterpret_cast<uint4*>(z + head);
  float f[N];
#pragma unroll
  for (int k = 0; k < N; ++k) f[k] = value;
  const uint4 w = VecOf<T>::pack(f);
  for (uint32_t j = tid; j < nv; j += step) v[j] = w;
  for (uint32_t i = head + N * nv + tid; i < n; i += step) store_f(z, i, value);
}

template <bool ENT, typename T>
__device__ __forceinline__ void fwd_row(const LogprobFwdParams& p, SoftmaxStats* scratch) {
  const uint32_t row = blockIdx.x;
  const uint32_t n = p.vocab;
  T* z = ptr<T>(p.logits) + (size_t)row * n;  // only read
  // Thread 0 fetches the target's logit now, not after the reduction.
  uint32_t y = 0;
  float zy = 0.0f;
  if (threadIdx.x == 0) {
    y = ptr<const uint32_t>(p.targets)[row];
    if (y < n) zy = load_f(z, y);
  }
  FoldFast<ENT> f{p.inv_temp, stats_empty()};
  walk_row<false>(z, n, f);
  SoftmaxStats st = warp_merge_fast<ENT>(f.st);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
  if (lane == 0) scratch[warp] = st;
  __syncthreads();
  if (warp != 0) return;
  st = warp_merge_fast<ENT>(lane < warps ? scratch[lane] : stats_empty());
  if (lane != 0) return;
  const float log_sum = logf(st.sum);
  const float lse = st.m + log_sum;
  ptr<float>(p.lse)[row] = lse;
  if (ENT) ptr<float>(p.entropy)[row] = log_sum - st.wsum / st.sum;
  float logp;
  if (y == LOGPROB_IGNORE) {
    logp = 0.0f;
  } else if (y < n) {
    logp = __fmul_rn(zy, p.inv_temp) - lse;
  } else {
    logp = nan_f();  // a target outside the vocabulary: NaN
  }
  ptr<float>(p.logp)[row] = logp;
}

extern "C" __global__ void __launch_bounds__(ENGINE_ROW_THREADS, LOGPROB_MIN_BLOCKS) logprob_fwd(LogprobFwdParams p) {
  __shared__ SoftmaxStats scratch[32];
  if (blockIdx.x >= p.rows) return;
  if (p.fp32) {
    if (p.entropy) {
      fwd_row<true, float>(p, scratch);
    } else {
      fwd_row<false, float>(p, scratch);
    }
  } else if (p.entropy) {
    fwd_row<true, bf16>(p, scratch);
  } else {
    fwd_row<false, bf16>(p, scratch);
  }
}

// dz as logprob_bwd_reference writes it, with s = z·inv and
// p = exp_fast(s − lse): −(c·inv)·p (ENT false) or −inv·p·(c + e·(s − mean_s)),
// plus onehot = c·inv at y.
template <bool ENT>
struct GradFast {
  float inv, lse, c, e, mean_s, onehot;
  uint32_t y;
  template <int N>
  __device__ __forceinline__ void run(float* z, uint32_t first) {
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float s = __fmul_rn(z[k], inv);
      const float q = exp_fast(s - lse);
      z[k] = ENT ? -inv * q * (c + e * (s - mean_s)) : -onehot * q;
    }
    const uint32_t off = y - first;  // the one-hot entry, rarely in this group
    if (off < (uint32_t)N) {
#pragma unroll
      for (int k = 0; k < N; ++k)
        if ((uint32_t)k == off) z[k] += onehot;
    }
  }
};

template <typename T>
__device__ __forceinline__ void bwd_row(const LogprobBwdParams& p) {
  const uint32_t row = blockIdx.x;
  const uint32_t n = p.vocab;
  T* z = ptr<T>(p.logits) + (size_t)row * n;
  // The row's scalars, loaded together (coef even where y is IGNORE).
  const uint32_t y = ptr<const uint32_t>(p.targets)[row];
  const float lse = ptr<const float>(p.lse)[row];
  const float coef = ptr<const float>(p.coef)[row];
  const float e = p.ent_coef ? ptr<const float>(p.ent_coef)[row] : 0.0f;
  const float h = p.ent_coef ? ptr<const float>(p.entropy)[row] : 0.0f;
  if (y != LOGPROB_IGNORE && y >= n) {
    fill_row(z, n, nan_f());
    return;
  }
  const float inv = p.inv_temp;
  const float c = y == LOGPROB_IGNORE ? 0.0f : coef;
  if (c == 0.0f && e == 0.0f) {
    fill_row(z, n, 0.0f);
    return;
  }
  const float onehot = c * inv;
  if (e == 0.0f) {
    GradFast<false> g{inv, lse, c, 0.0f, 0.0f, onehot, y};
    walk_row<true>(z, n, g);
  } else {
    const float mean_s = lse - h;
    GradFast<true> g{inv, lse, c, e, mean_s, onehot, y};
    walk_row<true>(z, n, g);
  }
}

extern "C" __global__ void __launch_bounds__(ENGINE_ROW_THREADS, LOGPROB_MIN_BLOCKS) logprob_bwd(LogprobBwdParams p) {
  if (blockIdx.x >= p.rows) return;
  if (p.fp32) {
    bwd_row<float>(p);
  } else {
    bwd_row<bf16>(p);
  }
}
