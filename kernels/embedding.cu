// Token embedding: the gather (forward) and a deterministic scatter-add
// (backward). Every id is checked against vocab: an id outside the table
// reads and writes nothing of the table and sets the error flag, which the
// host reads back (src/backend/cuda/embedding.rs).
#include "common.cuh"
#include "embedding.h"
#include "vec.cuh"

__device__ __forceinline__ void raise_error(dptr error) { atomicOr(ptr<unsigned int>(error), 1u); }

// The simple gather (for tests): one thread per element of out,
// t = i / dim, j = i % dim.
extern "C" __global__ void embedding_fwd(EmbeddingFwdParams p) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  const size_t total = (size_t)p.tokens * p.dim;
  if (i >= total) return;
  const size_t t = i / p.dim, j = i % p.dim;
  const uint32_t id = ptr<const uint32_t>(p.ids)[t];
  bf16* out = ptr<bf16>(p.out);
  if (id >= p.vocab) {
    out[i] = to_bf(0.0f);
    if (j == 0) raise_error(p.error);
    return;
  }
  out[i] = ptr<const bf16>(p.table)[(size_t)id * p.dim + j];
}

// The fast gather: one thread per 8 columns j0 … j0+7 of a row of out, a
// 16-byte copy when dim % 8 = 0 and table and out are 16-byte aligned,
// scalar copies of the same columns otherwise.
extern "C" __global__ void embedding_fwd8(EmbeddingFwdParams p) {
  const uint32_t groups = (p.dim + 7) / 8;  // per row; tokens · groups ≤ tokens · dim < 2^32
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.tokens * groups) return;
  const uint32_t t = i / groups, j0 = 8 * (i % groups);
  const uint32_t id = ptr<const uint32_t>(p.ids)[t];
  bf16* out = ptr<bf16>(p.out) + (size_t)t * p.dim;
  const bool vec = p.dim % 8 == 0 && ((p.table | p.out) & 15u) == 0;
  if (id >= p.vocab) {
    if (vec) {
      st16(out + j0, make_uint4(0, 0, 0, 0));
    } else {
      for (uint32_t j = j0; j < j0 + 8 && j < p.dim; ++j) out[j] = to_bf(0.0f);
    }
    if (j0 == 0) raise_error(p.error);
    return;
  }
  const bf16* row = ptr<const bf16>(p.table) + (size_t)id * p.dim;
  if (vec) {
    st16(out + j0, ld16(row + j0));
  } else {
    for (uint32_t j = j0; j < j0 + 8 && j < p.dim; ++j) out[j] = row[j];
  }
}

// The reference backward: one thread per column j, which it owns in every
// row of dtable (no two threads write the same element). For each token t in
// order whose id first occurs at t, the thread sums, in fp32, the stored
// value and dout[u][j] of every token u ≥ t with that id, in token order, and
// stores the bf16 rounding once. O(tokens²) id reads: for tests.
extern "C" __global__ void embedding_bwd_reference(EmbeddingBwdParams p) {
  const uint32_t j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= p.dim) return;
  const uint32_t* ids = ptr<const uint32_t>(p.ids);
  const bf16* dout = ptr<const bf16>(p.dout);
  bf16* dtable = ptr<bf16>(p.dtable);
  for (uint32_t t = 0; t < p.tokens; ++t) {
    const uint32_t id = ids[t];
    if (id >= p.vocab) {
      if (j == 0) raise_error(p.error);
      continue;
    }
    bool first = true;
    for (uint32_t u = 0; u < t; ++u) {
      if (ids[u] == id) {
        first = false;
        break;
      }
    }
    if (!first) continue;  // summed already, at the id's first token
    const size_t at = (size_t)id * p.dim + j;
    float acc = to_f(dtable[at]);
    for (uint32_t u = t; u < p.tokens; ++u) {
      if (ids[u] == id) acc += to_f(dout[(size_t)u * p.dim + j]);
    }
    dtable[at] = to_bf(acc);
  }
}

// The fast backward: block (s, y) owns segment s (one distinct id) and
// columns y·blockDim.x + threadIdx.x; each thread sums its column over the
// segment's tokens in token order (the plan's sort is stable), in fp32,
// starting from the stored value. Distinct segments have distinct ids, so
// no two threads write the same element; the result equals the reference's.
extern "C" __global__ void embedding_bwd_sorted(EmbeddingBwdSortedParams p) {
  const uint32_t s = blockIdx.x;
  const uint32_t j = blockIdx.y * blockDim.x + threadIdx.x;
  if (s >= p.segments || j >= p.dim) return;
  const uint32_t* order = ptr<const uint32_t>(p.plan);
  const uint32_t* starts = order + p.tokens;
  const uint32_t* seg_ids = starts + (size_t)p.segments + 1;
  const uint32_t id = seg_ids[s];
  const uint32_t k0 = starts[s], k1 = starts[s + 1];
  if (id >= p.vocab || k0 > k1 || k1 > p.tokens) {
    if (j == 0) raise_error(p.error);
    return;
  }
  const bf16* dout = ptr<const bf16>(p.dout);
  bf16* dtable = ptr<bf16>(p.dtable);
  const size_t at = (size_t)id * p.dim + j;
  float acc = to_f(dtable[at]);
  for (uint32_t k = k0; k < k1; ++k) {
    const uint32_t t = order[k];
    if (t >= p.tokens) {
      if (j == 0) raise_error(p.error);
      continue;
    }
    acc += to_f(dout[(size_t)t * p.dim + j]);
  }
  dtable[at] = to_bf(acc);
}
