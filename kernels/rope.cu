// Rotary position embedding (HF rotate-half layout), in place. The backward
// is the same kernel with `inverse` set: the rotation by the opposite angle
// is the transpose of the forward's. One thread per rotated pair
// (token, head, frequency): each element is read and written by one thread.
#include "common.cuh"
#include "rope.h"

extern "C" __global__ void rope(RopeParams p) {
  const uint32_t half = p.head_dim / 2;
  if (half == 0 || p.heads == 0) return;
  // tokens · heads · half ≤ 2^31 (the launcher checks x fits 32-bit counts).
  const uint32_t pairs = p.tokens * p.heads * half;
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= pairs) return;
  const uint32_t f = i % half;        // frequency
  const uint32_t th = i / half;       // token · heads + head
  const uint32_t token = th / p.heads;  // < tokens since i < pairs
  const uint32_t pos = ptr<const uint32_t>(p.pos)[token];
  if (pos >= p.max_pos) {
    atomicMax(ptr<unsigned int>(p.bad), pos < 0xFFFFFFFFu ? pos + 1u : 0xFFFFFFFFu);
    return;
  }
  const size_t t = (size_t)pos * half + f;  // < max_pos · half
  const float c = ptr<const float>(p.cos)[t];
  const float sn = ptr<const float>(p.sin)[t];
  const float s = p.inverse ? -sn : sn;
  bf16* x = ptr<bf16>(p.x) + (size_t)th * p.head_dim;  // this head's vector
  const float a = to_f(x[f]);
  const float b = to_f(x[f + half]);  // f + half < head_dim
  x[f] = to_bf(a * c - b * s);
  x[f + half] = to_bf(b * c + a * s);
}
