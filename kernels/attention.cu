// Simple causal attention over packed sequences (forward beside backward) and
// decode attention against a KV cache. Not fast: this is the reference the
// flash kernel is tested against (DESIGN.md §5), written to be read. The
// semantics are src/backend/cpu/attention.rs's, whose loops these follow.
//
// Every kernel runs THREADS threads per block and walks its keys (or, for
// dk/dv, its queries) in chunks of THREADS:
//   1. one thread per key computes what that key needs (its score: a dot
//      product over head_dim, in order) into shared memory;
//   2. __syncthreads;
//   3. every thread walks the chunk's keys in order and accumulates the
//      elements d = tid, tid + THREADS, ... of its output row, kept in a
//      small fp32 register array (head_dim <= MAX_D, so DPT elements each);
//   4. __syncthreads before the next chunk overwrites the shared arrays.
// fp32 arithmetic throughout; no atomics; every sum runs in a fixed order, so
// the same inputs give the same bits on every run.
#include "attention.h"
#include "common.cuh"
#include "decode_plan.cuh"

#define THREADS ENGINE_ATTN_THREADS
#define MAX_D ENGINE_ATTN_MAX_HEAD_DIM
// Output elements per thread.
#define DPT (MAX_D / THREADS)
static_assert(MAX_D % THREADS == 0, "head_dim elements split evenly over the threads");

__device__ __forceinline__ float as_f(float x) { return x; }
__device__ __forceinline__ float as_f(bf16 x) { return to_f(x); }

// Σ_d a[d]·b[d], d = 0, 1, ..., n−1 in order (as the CPU's dot up to its lane split).
template <typename A, typename B>
__device__ __forceinline__ float dot(const A* a, const B* b, uint32_t n) {
  float s = 0.0f;
  for (uint32_t d = 0; d < n; ++d) s += as_f(a[d]) * as_f(b[d]);
  return s;
}

// What the host checks too; every kernel returns at once (before any
// __syncthreads, uniformly for the block) if it fails: the kernels assume
// THREADS threads per block, shared arrays of MAX_D and a whole group size.
__device__ __forceinline__ bool shape_ok(uint32_t n_heads, uint32_t n_kv_heads, uint32_t head_dim) {
  return blockDim.x == THREADS && n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0 && head_dim > 0 &&
         head_dim <= MAX_D;
}

// The sequence holding token t: tokens [*start, *end). Finds the first
// boundary above t, as the CPU's partition_point, so empty sequences are
// skipped. False if cu_seqlens (n_seqs + 1 entries) does not cover t; the
// host validates cu_seqlens before every launch, so that means a bug.
__device__ bool seq_bounds(const uint32_t* cu, uint32_t n_seqs, uint32_t t, uint32_t* start, uint32_t* end) {
  uint32_t lo = 0, hi = n_seqs + 1;  // search cu[0 ..= n_seqs]
  while (lo < hi) {
    const uint32_t mid = lo + (hi - lo) / 2;
    if (cu[mid] <= t) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  // lo: the first index with cu[lo] > t.
  if (lo == 0 || lo > n_seqs) return false;
  *start = cu[lo - 1];
  *end = cu[lo];
  return *start <= t && t < *end;
}

// Element i of this thread's share of a head_dim row.
__device__ __forceinline__ uint32_t elem(int i) { return threadIdx.x + (uint32_t)i * THREADS; }

// Writes this thread's share of a bf16 row of head_dim.
__device__ __forceinline__ void store_row(bf16* row, const float (&acc)[DPT], uint32_t head_dim) {
#pragma unroll
  for (int i = 0; i < DPT; ++i) {
    if (elem(i) < head_dim) row[elem(i)] = to_bf(acc[i]);
  }
}

// Loads a bf16 row of head_dim into shared fp32 (the caller synchronises).
__device__ __forceinline__ void load_row(float* dst, const bf16* row, uint32_t head_dim) {
  for (uint32_t d = threadIdx.x; d < head_dim; d += THREADS) dst[d] = to_f(row[d]);
}

// Where key j's row starts (elements from the first key's): packed tokens
// one after another (the forward), or a sequence's cache rows (decode).
struct Strided {
  size_t stride;
  __device__ __forceinline__ size_t operator()(uint32_t j) const { return (size_t)j * stride; }
};
struct CacheRows {
  DecodeRows rows;
  size_t kv_row;
  __device__ __forceinline__ size_t operator()(uint32_t j) const { return (size_t)rows.row(j) * kv_row; }
};

// Softmax-weighted sum of n_keys >= 1 value rows for the query q_s (fp32, in
// shared memory), online over chunks of THREADS keys: m is the running max of
// the scaled scores, l the running Σ exp(score − m), acc the running
// Σ exp(score − m)·v; when the max grows, l and acc are rescaled, so every
// exp argument is <= 0. Key j's row starts at k + rows(j) (v likewise).
// On return acc[i] holds out[elem(i)] (divided by l) and the result is the
// logsumexp of the scaled scores. s_s, p_s: THREADS floats of shared scratch.
// Every thread of the block calls it (it synchronises). The forward and
// decode share it, so a decode step computes what the forward computes.
template <typename Rows>
__device__ float attend_row(const float* q_s, const bf16* k, const bf16* v, Rows rows, uint32_t n_keys,
                            uint32_t head_dim, float scale, float* s_s, float* p_s, float (&acc)[DPT]) {
  const uint32_t tid = threadIdx.x;
  float m = -INFINITY;
  float l = 0.0f;
#pragma unroll
  for (int i = 0; i < DPT; ++i) acc[i] = 0.0f;
  for (uint32_t j0 = 0; j0 < n_keys; j0 += THREADS) {
    const uint32_t n = min((uint32_t)THREADS, n_keys - j0);
    if (tid < n) s_s[tid] = dot(q_s, k + rows(j0 + tid), head_dim) * scale;
    __syncthreads();
    // The new max: every thread computes the same value, in the same order.
    float m_new = m;
    for (uint32_t j = 0; j < n; ++j) m_new = fmaxf(m_new, s_s[j]);
    if (tid < n) p_s[tid] = expf(s_s[tid] - m_new);
    __syncthreads();
    const float c = expf(m - m_new);  // 0 on the first chunk (m = −inf), else in (0, 1]
    l *= c;
#pragma unroll
    for (int i = 0; i < DPT; ++i) acc[i] *= c;
    for (uint32_t j = 0; j < n; ++j) {
      const float pj = p_s[j];
      const bf16* vj = v + rows(j0 + j);
      l += pj;
#pragma unroll
      for (int i = 0; i < DPT; ++i) {
        if (elem(i) < head_dim) acc[i] += pj * to_f(vj[elem(i)]);
      }
    }
    m = m_new;
    __syncthreads();  // s_s and p_s are rewritten by the next chunk
  }
  const float inv_l = 1.0f / l;
#pragma unroll
  for (int i = 0; i < DPT; ++i) acc[i] *= inv_l;
  return m + logf(l);
}

// out, lse for one (token t, query head h) per block: row = t·n_heads + h.
extern "C" __global__ void __launch_bounds__(THREADS) attention_fwd(AttnFwdParams p) {
  __shared__ float q_s[MAX_D];
  __shared__ float s_s[THREADS];
  __shared__ float p_s[THREADS];
  if (!shape_ok(p.n_heads, p.n_kv_heads, p.head_dim)) return;
  const uint32_t row = blockIdx.x;
  if (row >= p.tokens * p.n_heads) return;
  const uint32_t t = row / p.n_heads, h = row % p.n_heads;
  const uint32_t g = h / (p.n_heads / p.n_kv_heads);  // kv head
  const uint32_t hd = p.head_dim;
  const size_t q_off = (size_t)row * hd;
  bf16* out = ptr<bf16>(p.out) + q_off;
  float* lse = ptr<float>(p.lse) + row;
  uint32_t start, end;
  if (!seq_bounds(ptr<const uint32_t>(p.cu_seqlens), p.n_seqs, t, &start, &end)) {
    for (uint32_t d = threadIdx.x; d < hd; d += THREADS) out[d] = to_bf(nan_f());
    if (threadIdx.x == 0) *lse = nan_f();
    return;
  }
  load_row(q_s, ptr<const bf16>(p.q) + q_off, hd);
  __syncthreads();
  const size_t kv_row = (size_t)p.n_kv_heads * hd;
  const size_t kv_off = (size_t)start * kv_row + (size_t)g * hd;  // key `start`, kv head g
  float acc[DPT];
  const float l = attend_row(q_s, ptr<const bf16>(p.k) + kv_off, ptr<const bf16>(p.v) + kv_off,
                             Strided{kv_row}, t - start + 1, hd, p.scale, s_s, p_s, acc);
  store_row(out, acc, hd);
  if (threadIdx.x == 0) *lse = l;
}

// Backward, with p_ij = exp(scale·q_i·k_j − lse_i) and D_i = dout_i·out_i:
//   ds_ij = p_ij·(dout_i·v_j − D_i)·scale,
//   dq_i = Σ_j ds_ij·k_j,   dk_j = Σ_i ds_ij·q_i,   dv_j = Σ_i p_ij·dout_i,
// the sums over dk_j and dv_j also running over the query heads of j's group.
// Two kernels, so that each output row has one owner (no atomics).

// dq for one (query token t, query head h) per block: row = t·n_heads + h;
// sums over the keys start..=t in order.
extern "C" __global__ void __launch_bounds__(THREADS) attention_bwd_dq(AttnBwdParams p) {
  __shared__ float q_s[MAX_D];
  __shared__ float do_s[MAX_D];
  __shared__ float ds_s[THREADS];
  if (!shape_ok(p.n_heads, p.n_kv_heads, p.head_dim)) return;
  const uint32_t row = blockIdx.x;
  if (row >= p.tokens * p.n_heads) return;
  const uint32_t t = row / p.n_heads, h = row % p.n_heads;
  const uint32_t g = h / (p.n_heads / p.n_kv_heads);
  const uint32_t hd = p.head_dim;
  const uint32_t tid = threadIdx.x;
  const size_t q_off = (size_t)row * hd;
  bf16* dq = ptr<bf16>(p.dq) + q_off;
  uint32_t start, end;
  if (!seq_bounds(ptr<const uint32_t>(p.cu_seqlens), p.n_seqs, t, &start, &end)) {
    for (uint32_t d = tid; d < hd; d += THREADS) dq[d] = to_bf(nan_f());
    return;
  }
  load_row(q_s, ptr<const bf16>(p.q) + q_off, hd);
  load_row(do_s, ptr<const bf16>(p.dout) + q_off, hd);
  __syncthreads();
  // Every thread computes the same D, in the same order.
  const float D = dot(do_s, ptr<const bf16>(p.out) + q_off, hd);
  const float lse = ptr<const float>(p.lse)[row];
  const bf16* k = ptr<const bf16>(p.k);
  const bf16* v = ptr<const bf16>(p.v);
  const size_t kv_row = (size_t)p.n_kv_heads * hd;
  const size_t kv_off = (size_t)start * kv_row + (size_t)g * hd;  // key `start`, kv head g
  const uint32_t n_keys = t - start + 1;
  float acc[DPT];
#pragma unroll
  for (int i = 0; i < DPT; ++i) acc[i] = 0.0f;
  for (uint32_t j0 = 0; j0 < n_keys; j0 += THREADS) {
    const uint32_t n = min((uint32_t)THREADS, n_keys - j0);
    if (tid < n) {
      const size_t off = kv_off + (size_t)(j0 + tid) * kv_row;
      const float pij = expf(dot(q_s, k + off, hd) * p.scale - lse);
      ds_s[tid] = pij * (dot(do_s, v + off, hd) - D) * p.scale;
    }
    __syncthreads();
    for (uint32_t j = 0; j < n; ++j) {
      const float ds = ds_s[j];
      const bf16* kj = k + kv_off + (size_t)(j0 + j) * kv_row;
#pragma unroll
      for (int i = 0; i < DPT; ++i) {
        if (elem(i) < hd) acc[i] += ds * to_f(kj[elem(i)]);
      }
    }
    __syncthreads();  // ds_s is rewritten by the next chunk
  }
  store_row(dq, acc, hd);
}

// dk, dv for one (key token j, kv head g) per block: row = j·n_kv_heads + g.
// Sums over the pairs (query i, head r of the group) with j <= i < end of
// j's sequence, i ascending, then r ascending (the CPU's order); pair number
// e = (i − j)·group + r.
extern "C" __global__ void __launch_bounds__(THREADS) attention_bwd_dkdv(AttnBwdParams p) {
  __shared__ float k_s[MAX_D];
  __shared__ float v_s[MAX_D];
  __shared__ float p_s[THREADS];
  __shared__ float ds_s[THREADS];
  if (!shape_ok(p.n_heads, p.n_kv_heads, p.head_dim)) return;
  const uint32_t row = blockIdx.x;
  if (row >= p.tokens * p.n_kv_heads) return;
  const uint32_t j = row / p.n_kv_heads, g = row % p.n_kv_heads;
  const uint32_t group = p.n_heads / p.n_kv_heads;
  const uint32_t hd = p.head_dim;
  const uint32_t tid = threadIdx.x;
  const size_t kv_off = (size_t)row * hd;
  bf16* dk = ptr<bf16>(p.dk) + kv_off;
  bf16* dv = ptr<bf16>(p.dv) + kv_off;
  uint32_t start, end;
  if (!seq_bounds(ptr<const uint32_t>(p.cu_seqlens), p.n_seqs, j, &start, &end)) {
    for (uint32_t d = tid; d < hd; d += THREADS) {
      dk[d] = to_bf(nan_f());
      dv[d] = to_bf(nan_f());
    }
    return;
  }
  load_row(k_s, ptr<const bf16>(p.k) + kv_off, hd);
  load_row(v_s, ptr<const bf16>(p.v) + kv_off, hd);
  __syncthreads();
  const bf16* q = ptr<const bf16>(p.q);
  const bf16* out = ptr<const bf16>(p.out);
  const bf16* dout = ptr<const bf16>(p.dout);
  const float* lse = ptr<const float>(p.lse);
  // (end − j)·group <= tokens·n_heads < 2^31 (checked by the host).
  const uint32_t n_pairs = (end - j) * group;
  float acc_k[DPT], acc_v[DPT];
#pragma unroll
  for (int i = 0; i < DPT; ++i) acc_k[i] = acc_v[i] = 0.0f;
  for (uint32_t e0 = 0; e0 < n_pairs; e0 += THREADS) {
    const uint32_t n = min((uint32_t)THREADS, n_pairs - e0);
    if (tid < n) {
      const uint32_t e = e0 + tid;
      const size_t qrow = (size_t)(j + e / group) * p.n_heads + (size_t)g * group + e % group;
      const size_t off = qrow * hd;
      const float pij = expf(dot(q + off, k_s, hd) * p.scale - lse[qrow]);
      const float D = dot(dout + off, out + off, hd);
      p_s[tid] = pij;
      ds_s[tid] = pij * (dot(dout + off, v_s, hd) - D) * p.scale;
    }
    __syncthreads();
    for (uint32_t e1 = 0; e1 < n; ++e1) {
      const uint32_t e = e0 + e1;
      const size_t off = ((size_t)(j + e / group) * p.n_heads + (size_t)g * group + e % group) * hd;
      const float pij = p_s[e1], ds = ds_s[e1];
#pragma unroll
      for (int i = 0; i < DPT; ++i) {
        if (elem(i) < hd) {
          acc_v[i] += pij * to_f(dout[off + elem(i)]);
          acc_k[i] += ds * to_f(q[off + elem(i)]);
        }
      }
    }
    __syncthreads();  // p_s and ds_s are rewritten by the next chunk
  }
  store_row(dk, acc_k, hd);
  store_row(dv, acc_v, hd);
}

// out for one (sequence b, query head h) per block: row = b·n_heads + h,
// against sequence b's positions in the cache (its plan entry).
extern "C" __global__ void __launch_bounds__(THREADS) attention_decode(AttnDecodeParams p) {
  __shared__ float q_s[MAX_D];
  __shared__ float s_s[THREADS];
  __shared__ float p_s[THREADS];
  if (!shape_ok(p.n_heads, p.n_kv_heads, p.head_dim)) return;
  const uint32_t row = blockIdx.x;
  if (row >= p.batch * p.n_heads) return;
  const uint32_t b = row / p.n_heads, h = row % p.n_heads;
  const uint32_t g = h / (p.n_heads / p.n_kv_heads);
  const uint32_t hd = p.head_dim;
  const size_t q_off = (size_t)row * hd;
  bf16* out = ptr<bf16>(p.out) + q_off;
  DecodeRows rows;
  if (!decode_rows(p, b, &rows)) {  // the host checks this first
    for (uint32_t d = threadIdx.x; d < hd; d += THREADS) out[d] = to_bf(nan_f());
    return;
  }
  load_row(q_s, ptr<const bf16>(p.q) + q_off, hd);
  __syncthreads();
  const size_t kv_row = (size_t)p.n_kv_heads * hd;
  const size_t head = (size_t)g * hd;  // kv head g's elements of a cache row
  float acc[DPT];
  attend_row(q_s, ptr<const bf16>(p.k_cache) + head, ptr<const bf16>(p.v_cache) + head, CacheRows{rows, kv_row},
             rows.len, hd, p.scale, s_s, p_s, acc);
  store_row(out, acc, hd);
}
