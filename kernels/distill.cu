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
// The split kernels at the end of this file do the same per row with the
// row pair held in registers by several blocks (one read of each row); the
// row kernels serve rows whose student and teacher sit at different 16-byte
// phases, and are the simple version the split kernels are tested against.
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

// The split kernels' scratch holds these at 24-byte steps (kernels/include/distill.h).
static_assert(sizeof(Stats) == 24 && alignof(Stats) == 8, "Stats is 4 floats and a double");

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

// Entry points: name, the kernel's body, its mode, its block size.
#define ENGINE_DISTILL_ENTRY(name, fn, MODE, THREADS) \
  extern "C" __global__ void __launch_bounds__(THREADS) name(DistillParams p) { fn<MODE>(p); }
ENGINE_DISTILL_ENTRY(distill_forward, distill_row, DISTILL_FORWARD, ENGINE_ROW_THREADS)
ENGINE_DISTILL_ENTRY(distill_reverse, distill_row, DISTILL_REVERSE, ENGINE_ROW_THREADS)
ENGINE_DISTILL_ENTRY(distill_jsd, distill_row, DISTILL_JSD, ENGINE_ROW_THREADS)

// ---- the split kernels: a row pair held in registers by several blocks -------
//
// Why: the row kernels above read each row pair twice from HBM (608 KB at
// Qwen's vocabulary, and the blocks in flight hold more than L2): 10 bytes
// move per element against the 6 that must (two bf16 reads, one write),
// which capped them at 60% of copy bandwidth (run 6). Here a row is cut into
// `chunks` runs of blockDim·SPLIT_VECS 16-byte vectors; the block that takes
// a run loads its part of both rows into registers once, and every later
// pass works on those registers. The blocks of a row exchange what a pass
// needs from the whole row through global memory (`scratch`):
//
//   round 1: each block's softmax statistics; every block waits for all of
//            its row's and merges them in chunk order (so the bits do not
//            depend on which block came first);
//   round 2: forward KL, each block's part of D (the last block to arrive
//            sums them in chunk order); JSD, each block's parts of D and of
//            Σ p_s·u, which every block waits for before its gradient.
//
// No deadlock: a block takes its (row, chunk) by an atomic ticket, in the
// order blocks start, and waits only for blocks of its own row, whose tickets
// are at most chunks − 1 above its own. If every resident block were waiting
// and row r (the lowest waiting) still missed a block, every ticket handed
// out would be in row r, so fewer than `chunks` blocks would be resident: the
// host launches these kernels only where `chunks` blocks fit on the GPU at
// once (one per SM). No hang either: a wait gives up after some seconds, poisons
// the row's counter and sets the error word, and that row's loss and dz come
// out NaN.

constexpr uint32_t SPLIT_POISON = 0x80000000u;

// What a block keeps in shared memory. The CPU emulation runs a row's blocks
// at the same time, so it gives each block its own copy (ENGINE_KERNEL_EMU).
struct SplitShared {
  Stats stats[33];
  double sums[33];
  Stats row;        // round 1's result, merged over the row's chunks
  double total[2];  // round 2's (JSD): D and Σ p_s·u
  uint32_t ticket;
  int ok;  // no wait of this block gave up
};

__device__ __forceinline__ uint32_t load_volatile(const uint32_t* p) {
#ifdef ENGINE_KERNEL_EMU
  return __atomic_load_n(p, __ATOMIC_ACQUIRE);
#else
  return *reinterpret_cast<const volatile uint32_t*>(p);
#endif
}

// Thread 0 only: counts this block in (after its part was written: the fence
// makes that visible first) and returns the count before it.
__device__ __forceinline__ uint32_t split_arrive(uint32_t* counter) {
  __threadfence();
  return atomicAdd(counter, 1u);
}

// Thread 0 only: waits until the row's counter reaches `target` blocks, for
// 2^25 polls (seconds: each poll is an L2 round trip and a short sleep).
// False, with the counter poisoned and the error word set, if
// it gave up or the counter was poisoned already.
__device__ __forceinline__ bool split_wait(uint32_t* counter, uint32_t target, uint32_t* error) {
  for (uint32_t spin = 0; spin < (1u << 25); ++spin) {
    const uint32_t v = load_volatile(counter);
    if (v & SPLIT_POISON) break;
    if (v >= target) {
      __threadfence();  // the parts written before the arrivals are read after this
      return true;
    }
    __nanosleep(64);
  }
  atomicOr(counter, SPLIT_POISON);
  atomicOr(error, 1u);
  return false;
}

// One of the row's partial statistics, written by another SM: read past L1.
__device__ __forceinline__ Stats load_part(const Stats* p) {
  return {__ldcg(&p->ms), __ldcg(&p->ss), __ldcg(&p->mt), __ldcg(&p->st), __ldcg(&p->w)};
}

// Per-thread maxima of x = z·inv over what the thread holds, so that the
// statistics pass (StatsOp started at these maxima) never rescales.
struct MaxOp {
  float inv, ms, mt;
  template <int N>
  __device__ __forceinline__ void run(float (&zs)[N], const float (&zt)[N]) {
#pragma unroll
    for (int k = 0; k < N; ++k) {
      ms = fmaxf(ms, zs[k] * inv);
      mt = fmaxf(mt, zt[k] * inv);
    }
  }
};

// A thread's share of a chunk, in registers: vectors v = first + k·blockDim
// (k < SPLIT_VECS) of the row's aligned vectors, those below `end`, and at
// most one scalar element (the row's head in chunk 0, its tail in the last
// chunk), at index `one` (or none: −1).
struct Held {
  uint4 s[ENGINE_DISTILL_SPLIT_VECS], t[ENGINE_DISTILL_SPLIT_VECS];
  float s1, t1;
  int one;
  uint32_t first, end;

  __device__ __forceinline__ bool has(int k) const { return first + k * blockDim.x < end; }

  __device__ __forceinline__ void load(const bf16* vs, const bf16* vt, const bf16* zs, const bf16* zt) {
#pragma unroll
    for (int k = 0; k < ENGINE_DISTILL_SPLIT_VECS; ++k) {
      if (has(k)) {
        const size_t v = first + k * blockDim.x;
        s[k] = ld16(vs + 8 * v);
        t[k] = ld16(vt + 8 * v);
      }
    }
    s1 = one >= 0 ? to_f(zs[one]) : 0.0f;
    t1 = one >= 0 ? to_f(zt[one]) : 0.0f;
  }

  // op.run on every element held, in a fixed order; with WRITE, what op
  // leaves in zs is stored over the student's logits (vs: its vectors).
  template <bool WRITE, typename Op>
  __device__ __forceinline__ void each(Op& op, bf16* vs, bf16* zs) const {
#pragma unroll
    for (int k = 0; k < ENGINE_DISTILL_SPLIT_VECS; ++k) {
      if (has(k)) {
        float a[8], b[8];
        unpack8(s[k], a);
        unpack8(t[k], b);
        op.template run<8>(a, b);
        if (WRITE) st16(vs + 8 * (size_t)(first + k * blockDim.x), pack8(a));
      }
    }
    if (one >= 0) {
      float a[1] = {s1};
      const float b[1] = {t1};
      op.template run<1>(a, b);
      if (WRITE) zs[one] = to_bf(a[0]);
    }
  }
};

template <int MODE>
__device__ __forceinline__ void distill_split(const DistillParams& p) {
  constexpr bool REV = MODE == DISTILL_REVERSE;
#ifdef ENGINE_KERNEL_EMU
  SplitShared& sh = *emu_block_shared<SplitShared>();
#else
  __shared__ SplitShared sh;
#endif
  uint32_t* words = ptr<uint32_t>(p.scratch);
  uint32_t* error = words + 1;
  const size_t parts_word = (2 + (size_t)p.rows + 1) & ~(size_t)1;
  Stats* parts = reinterpret_cast<Stats*>(words + parts_word);
  double* part_sums = reinterpret_cast<double*>(parts + (size_t)p.rows * p.chunks);
  const uint32_t chunks = p.chunks, tid = threadIdx.x;
  if (threadIdx.x == 0) {
    sh.ticket = atomicAdd(words, 1u);
    sh.ok = 1;
  }
  __syncthreads();
  const uint32_t row = sh.ticket / chunks, c = sh.ticket % chunks;
  if (row >= p.rows) return;
  uint32_t* counter = words + 2 + row;

  const uint32_t n = p.vocab;
  bf16* zs = ptr<bf16>(p.student) + (size_t)row * n;
  const bf16* zt = ptr<const bf16>(p.teacher) + (size_t)row * n;
  // The host launches these kernels only for rows at the same phase; if
  // that was wrong, the block holds nothing and its row comes out NaN.
  const bool aligned = same_phase((dptr)zs, (dptr)zt);
  const uint32_t head = aligned ? bf16_head((dptr)zs, n) : 0;
  const uint32_t nv = aligned ? (n - head) / 8 : 0, tail = aligned ? n - head - 8 * nv : 0;
  const uint32_t per_chunk = blockDim.x * ENGINE_DISTILL_SPLIT_VECS;
  Held h;
  h.first = c * per_chunk + tid;
  h.end = min(nv, (c + 1) * per_chunk);
  h.one = -1;
  if (c == 0 && tid < head) h.one = (int)tid;
  const uint32_t tail_tid = c == 0 ? head : 0;  // chunk 0 may also be the last
  if (c == chunks - 1 && tid >= tail_tid && tid - tail_tid < tail) h.one = (int)(head + 8 * nv + tid - tail_tid);
  bf16* vs = zs + head;
  h.load(vs, zt + head, zs, zt);

  const float inv = p.inv_temp;
  const float weight = ptr<const float>(p.weight)[row];
  const bool zero = weight == 0.0f;
  const float scale = weight * inv;

  // Round 1: the row's statistics.
  MaxOp mo{inv, -FLT_MAX, -FLT_MAX};
  h.each<false>(mo, vs, zs);
  StatsOp<REV> so{inv, {mo.ms, 0.0f, mo.mt, 0.0f, 0.0}};
  h.each<false>(so, vs, zs);
  const Stats mine = block_stats<REV>(so.a, sh.stats);
  if (tid == 0) {
    parts[(size_t)row * chunks + c] = mine;
    split_arrive(counter);
    bool ok = aligned && split_wait(counter, chunks, error);
    Stats st = stats_empty();
    for (uint32_t j = 0; j < chunks; ++j) st = stats_merge<REV>(st, load_part(parts + (size_t)row * chunks + j));
    if (!ok) st.ms = st.mt = nan_f();
    sh.row = st;
    sh.ok = ok;
  }
  __syncthreads();
  const Stats st = sh.row;
  const float ls = st.ms + logf(st.ss), lt = st.mt + logf(st.st);
  double* my_sums = part_sums + 2 * ((size_t)row * chunks + c);
  float* loss = ptr<float>(p.loss) + row;

  if (MODE == DISTILL_FORWARD) {
    ForwardGrad g{inv, ls, lt, scale, zero, 0.0};
    h.each<true>(g, vs, zs);
    const double v = block_sum<double>(g.value, sh.sums);
    if (tid == 0) {
      my_sums[0] = v;
      const uint32_t before = split_arrive(counter);
      if ((before & ~SPLIT_POISON) == 2 * chunks - 1) {  // the last of the row: D in chunk order
        __threadfence();
        double d = 0.0;
        for (uint32_t j = 0; j < chunks; ++j) d += __ldcg(part_sums + 2 * ((size_t)row * chunks + j));
        *loss = (before & SPLIT_POISON) || !sh.ok ? nan_f() : (float)d;
      }
    }
  } else if (MODE == DISTILL_REVERSE) {
    const double d = st.w / (double)st.ss - (double)ls + (double)lt;
    ReverseGrad g{inv, ls, lt, scale, (float)d, zero};
    h.each<true>(g, vs, zs);
    if (tid == 0 && c == 0) *loss = (float)d;
  } else {
    const JsdTerms j{inv, ls, lt, p.beta, p.log_beta, p.log_1m_beta};
    JsdSums s{j, 0.0, 0.0};
    h.each<false>(s, vs, zs);
    const double v = block_sum<double>(s.value, sh.sums);
    const double m = block_sum<double>(s.mean_u, sh.sums);
    if (tid == 0) {
      my_sums[0] = v;
      my_sums[1] = m;
      split_arrive(counter);
      const bool ok = sh.ok && split_wait(counter, 2 * chunks, error);
      double d = 0.0, mu = 0.0;
      for (uint32_t k = 0; k < chunks; ++k) {
        d += __ldcg(part_sums + 2 * ((size_t)row * chunks + k));
        mu += __ldcg(part_sums + 2 * ((size_t)row * chunks + k) + 1);
      }
      sh.total[0] = ok ? d : (double)nan_f();
      sh.total[1] = ok ? mu : (double)nan_f();
    }
    __syncthreads();
    JsdGrad g{j, scale, (float)sh.total[1], zero};
    h.each<true>(g, vs, zs);
    if (tid == 0 && c == 0) *loss = (float)sh.total[0];
  }
}

ENGINE_DISTILL_ENTRY(distill_split_forward, distill_split, DISTILL_FORWARD, ENGINE_DISTILL_SPLIT_THREADS)
ENGINE_DISTILL_ENTRY(distill_split_reverse, distill_split, DISTILL_REVERSE, ENGINE_DISTILL_SPLIT_THREADS)
ENGINE_DISTILL_ENTRY(distill_split_jsd, distill_split, DISTILL_JSD, ENGINE_DISTILL_SPLIT_THREADS)
