// A decoding sequence's entry of AttnDecodeParams::plan (kernels/include/
// attention.h; DecodeSeq in src/backend/decode_plan.rs): where in the KV
// cache its positions lie. Both decode kernels read it the same way.
#pragma once
#include "attention.h"
#include "common.cuh"

struct DecodeRows {
  uint32_t prefix_row, prefix_len, own_row, len;

  // The cache row of position j < len: the shared prefix, then the own run.
  __device__ __forceinline__ uint32_t row(uint32_t j) const {
    return j < prefix_len ? prefix_row + j : own_row + (j - prefix_len);
  }
};

// Sequence b's entry; false if it has no position or a row outside the
// cache's n_rows (the host checks every entry first, so that means a bug).
__device__ __forceinline__ bool decode_rows(const AttnDecodeParams& p, uint32_t b, DecodeRows* r) {
  const uint32_t* w = ptr<const uint32_t>(p.plan) + (size_t)b * ENGINE_DECODE_PLAN_WORDS;
  *r = DecodeRows{w[0], w[1], w[2], w[3]};
  return r->len >= 1 && r->prefix_len <= r->len && (uint64_t)r->prefix_row + r->prefix_len <= p.n_rows &&
         (uint64_t)r->own_row + (r->len - r->prefix_len) <= p.n_rows;
}
