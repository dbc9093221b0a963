// Decode attention grouped by kv head (GQA): one query per sequence against a
// KV cache, the fast path of Gpu::attention_decode for head_dim 64 or 128 and
// up to 8 query heads per kv head. Same parameters and semantics as
// attention_decode in kernels/attention.cu (the simple kernel, which stays the
// reference and the path for every other shape): sequence b attends to its
// positions 0..len at the cache rows its plan entry gives; query head h reads kv head
// h / (n_heads / n_kv_heads); fp32 math, output rounded to bf16.
//
// Why it is faster than the simple kernel:
//   - one block per (sequence b, kv head g) serves all `group` query heads of
//     g, so each key and value row is read from memory once, not group times;
//   - the 4 warps of the block walk disjoint keys, and within a warp the 32
//     lanes split head_dim (E = head_dim / 32 elements each, one 4- or 8-byte
//     load per row), so a warp reads a whole key row in one coalesced access
//     and every lane does useful work on every key (no thread loops over all
//     keys serially);
//   - q for the group stays in registers; scores are finished with warp
//     shuffles, the online softmax state (running max m, sum l, accumulator)
//     stays in registers, and shared memory is touched once, to merge the
//     4 warps at the end.
//
// Splits (flash-decoding): with few (sequence, kv head) pairs, say 64
// sequences × 2 kv heads on a 132-SM GPU, one block per pair leaves most of
// the GPU idle while each block walks thousands of keys. The host then
// splits each sequence's keys into runs of p.split_keys, one block each
// (block = ((b·n_kv_heads + g)·n_splits + s)), which write their partial
// state (unnormalised sums, max, sum of exponentials) to p.partial;
// attention_decode_combine merges a pair's splits in split order.
//
// Key schedule: warp w takes the chunks of KEYS consecutive keys starting at
// start + (w + WARPS·i)·KEYS, i = 0, 1, ... (start: the split's first key); it loads a whole chunk's K and V rows
// before using them (KEYS loads of each in flight per lane) and rescales its
// running state once per chunk. Determinism: which warp takes which key and
// every sum's order depend only on the inputs (the plan and the split); the xor butterfly
// leaves the same bits in every lane (each step adds the same two numbers,
// commutatively); the warps are merged in the fixed order 0, 1, 2, 3, the
// splits in the order 0, 1, ...; no atomics. So the same inputs give the
// same bits on every run.
#include "attention.h"
#include "common.cuh"
#include "decode_plan.cuh"

// Names apart from attention.cu's macros (THREADS, MAX_D, DPT): the CPU
// emulation (tools/kernel_emu/decode.cpp) builds both files together.
namespace decode_gqa {

constexpr int WARPS = 4;
constexpr int BLOCK = 32 * WARPS;  // threads per block
constexpr int MAX_GROUP = 8;       // query heads per kv head (the launcher checks)
constexpr int D_MAX = 128;         // head_dim 64 or 128 (the launcher checks)
constexpr int KEYS = 4;            // keys a warp takes per step
static_assert(BLOCK == ENGINE_ATTN_THREADS, "the launcher runs ENGINE_ATTN_THREADS threads per block");

// Shared floats the merge needs: each warp's accumulators [WARPS][group][D],
// then its running max and sum [WARPS][group] each.
constexpr int SMEM_FLOATS = WARPS * MAX_GROUP * D_MAX + 2 * WARPS * MAX_GROUP;


// E consecutive bf16 (E = 2 or 4: 4 or 8 bytes), loaded in one access. The
// launcher only takes caches whose base address is aligned to this (and the
// kernel checks it), and every row starts a multiple of head_dim elements in.
template <int E>
struct alignas(2 * E) Bf16s {
  uint32_t w[E / 2];
};

// The E bf16 at p as fp32, element 2i in the low half of word i (little-endian).
template <int E>
__device__ __forceinline__ void load_bf16s(const bf16* p, float (&f)[E]) {
  const Bf16s<E> v = *reinterpret_cast<const Bf16s<E>*>(p);
#pragma unroll
  for (int i = 0; i < E / 2; ++i) {
    f[2 * i] = __uint_as_float(v.w[i] << 16);
    f[2 * i + 1] = __uint_as_float(v.w[i] & 0xffff0000u);
  }
}

// Σ over the warp's 32 lanes; every lane gets the same bits.
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// The block's work for G query heads h0 .. h0 + G of kv head g and sequence b
// (its plan entry `rows` already checked), over keys start .. end
// (start < end <= rows.len): out if `part` is null, else the partial state
// at `part` (the layout of AttnDecodeParams::partial). Lane `lane` owns
// elements lane·E .. lane·E + E of every head_dim row. smem: SMEM_FLOATS floats.
template <int D, int G>
__device__ __forceinline__ void attend_group(const AttnDecodeParams& p, uint32_t b, uint32_t g,
                                             const DecodeRows& rows, uint32_t start, uint32_t end, float* part,
                                             float* smem) {
  constexpr int E = D / 32;
  static_assert(D % 32 == 0 && (E == 2 || E == 4) && G >= 1 && G <= MAX_GROUP && D <= D_MAX, "supported shapes");
  const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const uint32_t h0 = g * G;

  // This lane's share of q for each head of the group.
  float q[G][E];
  const bf16* qp = ptr<const bf16>(p.q) + ((size_t)b * p.n_heads + h0) * D + lane * E;
#pragma unroll
  for (int r = 0; r < G; ++r) {
#pragma unroll
    for (int e = 0; e < E; ++e) q[r][e] = to_f(qp[r * D + e]);
  }

  // Position j, kv head g, this lane's elements: head + rows.row(j)·kv_row.
  const size_t kv_row = (size_t)p.n_kv_heads * D;
  const size_t head = (size_t)g * D + lane * E;
  const bf16* kp = ptr<const bf16>(p.k_cache) + head;
  const bf16* vp = ptr<const bf16>(p.v_cache) + head;

  // Online softmax per head over this warp's keys: m the running max of the
  // scaled scores, l the running Σ exp(score − m), acc the running
  // Σ exp(score − m)·v (this lane's elements). m, l are the same in every lane.
  float m[G], l[G], acc[G][E];
#pragma unroll
  for (int r = 0; r < G; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int e = 0; e < E; ++e) acc[r][e] = 0.0f;
  }

  // The loop bound is the same for every lane of a warp, so the shuffles
  // below always run with the whole warp. j0 < end: key j0 is valid, so every
  // chunk has at least one finite score and m_new is finite.
  for (uint32_t j0 = start + warp * KEYS; j0 < end; j0 += WARPS * KEYS) {
    // All of the chunk's loads first, so they are in flight together. Keys
    // past end are not read (past len they may lie past the cache's end).
    float kf[KEYS][E], vf[KEYS][E];
#pragma unroll
    for (int i = 0; i < KEYS; ++i) {
      if (j0 + i < end) {
        const size_t at = (size_t)rows.row(j0 + i) * kv_row;
        load_bf16s<E>(kp + at, kf[i]);
        load_bf16s<E>(vp + at, vf[i]);
      } else {
#pragma unroll
        for (int e = 0; e < E; ++e) kf[i][e] = vf[i][e] = 0.0f;
      }
    }
    // Scores: this lane's partial dot product, summed over the warp.
    float s[G][KEYS];
#pragma unroll
    for (int r = 0; r < G; ++r) {
#pragma unroll
      for (int i = 0; i < KEYS; ++i) {
        float d = 0.0f;
#pragma unroll
        for (int e = 0; e < E; ++e) d += q[r][e] * kf[i][e];
        d = warp_sum(d);
        s[r][i] = j0 + i < end ? d * p.scale : -INFINITY;  // exp(−inf − m_new) = 0: no weight
      }
    }
    // One rescale per chunk and head: c = exp(m − m_new) is 0 on the first
    // chunk (m = −inf), else in (0, 1]; every exp argument is <= 0.
#pragma unroll
    for (int r = 0; r < G; ++r) {
      float m_new = m[r];
#pragma unroll
      for (int i = 0; i < KEYS; ++i) m_new = fmaxf(m_new, s[r][i]);
      const float c = expf(m[r] - m_new);
      l[r] *= c;
#pragma unroll
      for (int e = 0; e < E; ++e) acc[r][e] *= c;
#pragma unroll
      for (int i = 0; i < KEYS; ++i) {
        const float pr = expf(s[r][i] - m_new);
        l[r] += pr;
#pragma unroll
        for (int e = 0; e < E; ++e) acc[r][e] += pr * vf[i][e];
      }
      m[r] = m_new;
    }
  }

  // Merge the warps' states through shared memory. A warp that had no keys
  // (end <= its first key) has m = −inf, l = 0, acc = 0 and adds nothing;
  // warp 0 always has key `start`, so the block's max is finite.
  float* acc_s = smem;                            // [WARPS][G][D]
  float* m_s = smem + WARPS * MAX_GROUP * D_MAX;  // [WARPS][G]
  float* l_s = m_s + WARPS * MAX_GROUP;           // [WARPS][G]
#pragma unroll
  for (int r = 0; r < G; ++r) {
#pragma unroll
    for (int e = 0; e < E; ++e) acc_s[(warp * G + r) * D + lane * E + e] = acc[r][e];
    if (lane == 0) {
      m_s[warp * G + r] = m[r];
      l_s[warp * G + r] = l[r];
    }
  }
  __syncthreads();
  // Output element i of the group's G rows (contiguous in out: heads h0 ..
  // h0 + G of sequence b), warps summed in the fixed order 0 .. WARPS − 1;
  // or, for a split, the unnormalised sum and (once per row) the max and sum.
  bf16* out = ptr<bf16>(p.out) + ((size_t)b * p.n_heads + h0) * D;
  for (uint32_t i = threadIdx.x; i < (uint32_t)(G * D); i += BLOCK) {
    const uint32_t r = i / D, d = i % D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) mx = fmaxf(mx, m_s[w * G + r]);
    float sum = 0.0f, o = 0.0f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) {
      const float c = expf(m_s[w * G + r] - mx);  // 0 for a warp without keys
      sum += l_s[w * G + r] * c;
      o += acc_s[(w * G + r) * D + d] * c;
    }
    if (part == nullptr) {
      out[i] = to_bf(o / sum);
    } else {
      part[i] = o;
      if (d == 0) {
        part[G * D + r] = mx;
        part[G * D + G + r] = sum;
      }
    }
  }
}

// The group size as a template parameter: registers for exactly G heads.
template <int D>
__device__ __forceinline__ void by_group(const AttnDecodeParams& p, uint32_t group, uint32_t b, uint32_t g,
                                         const DecodeRows& rows, uint32_t start, uint32_t end, float* part,
                                         float* smem) {
  switch (group) {
    case 1: attend_group<D, 1>(p, b, g, rows, start, end, part, smem); break;
    case 2: attend_group<D, 2>(p, b, g, rows, start, end, part, smem); break;
    case 3: attend_group<D, 3>(p, b, g, rows, start, end, part, smem); break;
    case 4: attend_group<D, 4>(p, b, g, rows, start, end, part, smem); break;
    case 5: attend_group<D, 5>(p, b, g, rows, start, end, part, smem); break;
    case 6: attend_group<D, 6>(p, b, g, rows, start, end, part, smem); break;
    case 7: attend_group<D, 7>(p, b, g, rows, start, end, part, smem); break;
    case 8: attend_group<D, 8>(p, b, g, rows, start, end, part, smem); break;
    default: break;  // not launched (checked before)
  }
}

}  // namespace decode_gqa

// out (or a split's partial state) for the group = n_heads / n_kv_heads query
// heads of one (sequence b, kv head g) per block: block = (b·n_kv_heads + g)
// ·n_splits + split, BLOCK threads.
extern "C" __global__ void __launch_bounds__(decode_gqa::BLOCK) attention_decode_gqa(AttnDecodeParams p) {
  using namespace decode_gqa;
  __shared__ float smem[SMEM_FLOATS];
  if (p.n_splits == 0 || p.n_kv_heads == 0) return;  // no block is this launch's (the host never sends it)
  const uint64_t unit = blockIdx.x / p.n_splits, split = blockIdx.x % p.n_splits;
  if (unit >= (uint64_t)p.batch * p.n_kv_heads) return;
  const uint32_t b = (uint32_t)(unit / p.n_kv_heads), g = (uint32_t)(unit % p.n_kv_heads);
  const uint32_t group = p.n_heads / p.n_kv_heads;
  const uint32_t hd = p.head_dim;
  // This split's partial state (null without splits).
  float* part = p.n_splits == 1 || p.partial == 0
                    ? nullptr
                    : ptr<float>(p.partial) + (unit * p.n_splits + split) * group * (hd + 2);
  // What the host checks too; on failure the block returns at once, uniformly
  // (before any barrier), leaving out as it was, as the simple kernel does,
  // but a split's state NaN, so that the combine does not read stale scratch.
  if (blockDim.x != BLOCK || p.n_heads % p.n_kv_heads != 0 || group == 0 || group > MAX_GROUP ||
      (hd != 64 && hd != 128) || (p.n_splits > 1 && (p.split_keys == 0 || part == nullptr))) {
    if (part != nullptr) {
      for (uint32_t i = threadIdx.x; i < group * (hd + 2); i += blockDim.x) part[i] = nan_f();
    }
    return;
  }
  DecodeRows rows;
  const bool rows_ok = decode_rows(p, b, &rows);
  // The caches are read E = hd / 32 bf16 (hd / 16 bytes) at a time.
  const bool aligned = ((p.k_cache | p.v_cache) & (dptr)(hd / 16 - 1)) == 0;
  // The split's keys: all of them without splits, else split·split_keys ..
  // (the splits must cover the sequence).
  const uint64_t start = p.n_splits == 1 ? 0 : split * p.split_keys;
  const uint64_t end = p.n_splits == 1 ? rows.len : min((uint64_t)rows.len, start + p.split_keys);
  const bool covered = p.n_splits == 1 || (uint64_t)p.n_splits * p.split_keys >= rows.len;
  if (!rows_ok || !aligned || !covered) {  // the host checks this first
    if (part == nullptr) {
      bf16* out = ptr<bf16>(p.out) + ((size_t)b * p.n_heads + (size_t)g * group) * hd;
      for (uint32_t i = threadIdx.x; i < group * hd; i += BLOCK) out[i] = to_bf(nan_f());
    } else {
      for (uint32_t i = threadIdx.x; i < group * (hd + 2); i += BLOCK) part[i] = nan_f();
    }
    return;
  }
  if (start >= end) {  // a split past this sequence's end: adds nothing
    for (uint32_t i = threadIdx.x; i < group * (hd + 2); i += BLOCK) {
      part[i] = i >= group * hd && i < group * (hd + 1) ? -INFINITY : 0.0f;  // sums 0, max −inf, sum 0
    }
    return;
  }
  if (hd == 64) {
    by_group<64>(p, group, b, g, rows, (uint32_t)start, (uint32_t)end, part, smem);
  } else {
    by_group<128>(p, group, b, g, rows, (uint32_t)start, (uint32_t)end, part, smem);
  }
}

// out for one (sequence b, kv head g) per block (block = b·n_kv_heads + g):
// the group's rows merged from the n_splits partial states of
// attention_decode_gqa, in split order (deterministic): with M the largest
// max, out = Σ_s acc_s·e^(m_s − M) / Σ_s l_s·e^(m_s − M). Split 0 always
// holds key 0, so M is finite; an empty split (m = −inf) adds 0.
extern "C" __global__ void __launch_bounds__(decode_gqa::BLOCK) attention_decode_combine(AttnDecodeParams p) {
  if (p.n_kv_heads == 0 || p.n_heads % p.n_kv_heads != 0 || p.n_splits == 0) return;
  const uint32_t group = p.n_heads / p.n_kv_heads, hd = p.head_dim;
  const uint64_t unit = blockIdx.x;
  if (unit >= (uint64_t)p.batch * p.n_kv_heads) return;
  const size_t stride = (size_t)group * (hd + 2);  // floats per split
  const float* part = ptr<const float>(p.partial) + unit * p.n_splits * stride;
  // Rows b·n_heads + g·group .. of out start at unit·group·hd.
  bf16* out = ptr<bf16>(p.out) + unit * group * hd;
  for (uint32_t i = threadIdx.x; i < group * hd; i += blockDim.x) {
    const uint32_t r = i / hd;
    float mx = -INFINITY;
    for (uint32_t s = 0; s < p.n_splits; ++s) mx = fmaxf(mx, part[s * stride + group * hd + r]);
    float sum = 0.0f, o = 0.0f;
    for (uint32_t s = 0; s < p.n_splits; ++s) {
      const float* ps = part + s * stride;
      const float c = expf(ps[group * hd + r] - mx);
      sum += ps[group * hd + group + r] * c;
      o += ps[i] * c;
    }
    out[i] = to_bf(o / sum);
  }
}
