// 16-byte access helpers for the memory-bound kernels: eight bf16 (or four
// fp32) per load or store, and the split of a range into a scalar head (up
// to the first 16-byte boundary), whole 16-byte vectors, and a scalar tail.
// Callers pass views at any element offset, so a bf16 pointer is only known
// to be 2-byte aligned: every kernel checks alignment at run time and falls
// back to scalar accesses, with the same arithmetic in the same order.
#pragma once
#include "common.cuh"

// Elements of T from p up to its next 16-byte boundary, at most n (p is
// aligned to sizeof(T)).
template <typename T>
__device__ __forceinline__ uint32_t vec_head(dptr p, uint32_t n) {
  const uint32_t h = ((16u - (uint32_t)(p & 15u)) & 15u) / (uint32_t)sizeof(T);
  return h < n ? h : n;
}

// vec_head of a bf16 address (p even).
__device__ __forceinline__ uint32_t bf16_head(dptr p, uint32_t n) { return vec_head<bf16>(p, n); }

// True when bf16 pointers a and b sit at the same offset mod 16 (so one head
// aligns both) and are 2-byte aligned.
__device__ __forceinline__ bool same_phase(dptr a, dptr b) { return ((a ^ b) & 15u) == 0 && (a & 1u) == 0; }

__device__ __forceinline__ float lo_bf(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float hi_bf(uint32_t w) { return __uint_as_float(w & 0xFFFF0000u); }

// Eight bf16 (16 bytes) to fp32, element k of the vector in f[k].
__device__ __forceinline__ void unpack8(uint4 v, float f[8]) {
  f[0] = lo_bf(v.x), f[1] = hi_bf(v.x), f[2] = lo_bf(v.y), f[3] = hi_bf(v.y);
  f[4] = lo_bf(v.z), f[5] = hi_bf(v.z), f[6] = lo_bf(v.w), f[7] = hi_bf(v.w);
}

__device__ __forceinline__ uint32_t bits(bf16 x) { return (uint32_t)__bfloat16_as_ushort(x); }

// Two fp32 rounded to bf16 (to_bf, round to nearest even), a in the low half.
__device__ __forceinline__ uint32_t pack2(float a, float b) { return bits(to_bf(a)) | (bits(to_bf(b)) << 16); }

__device__ __forceinline__ uint4 pack8(const float f[8]) {
  return make_uint4(pack2(f[0], f[1]), pack2(f[2], f[3]), pack2(f[4], f[5]), pack2(f[6], f[7]));
}

#ifdef ENGINE_KERNEL_EMU
// Under tools/kernel_emu: a misaligned 16-byte access aborts (on the host it
// would quietly work; on a GPU it faults).
__device__ __forceinline__ void check16(const void* p) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
    fprintf(stderr, "a 16-byte access at a misaligned address\n");
    abort();
  }
}
#else
__device__ __forceinline__ void check16(const void*) {}
#endif
__device__ __forceinline__ uint4 ld16(const void* p) {
  check16(p);
  return *reinterpret_cast<const uint4*>(p);
}
__device__ __forceinline__ void st16(void* p, uint4 v) {
  check16(p);
  *reinterpret_cast<uint4*>(p) = v;
}

// Eight bf16 of row `row` from column j0 (16-byte load when vec; else scalar
// loads, 0 past `cols`), as one uint4 either way.
__device__ __forceinline__ uint4 load_row8(const bf16* row, uint32_t j0, uint32_t cols, bool vec) {
  if (vec) return ld16(row + j0);
  uint32_t w[4] = {0, 0, 0, 0};
  const unsigned short* u = reinterpret_cast<const unsigned short*>(row);
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    if (j0 + e < cols) w[e / 2] |= (uint32_t)u[j0 + e] << (16 * (e % 2));
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// Stores the 8 bf16 of v at row + e0 (all of them when vec; else those < dim).
__device__ __forceinline__ void store_row8(bf16* row, uint32_t e0, uint32_t dim, bool vec, uint4 v) {
  if (vec) {
    st16(row + e0, v);
    return;
  }
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
  unsigned short* u = reinterpret_cast<unsigned short*>(row);
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    if (e0 + e < dim) u[e0 + e] = (unsigned short)(w[e / 2] >> (16 * (e % 2)));
  }
}

// This thread's first index and the grid's stride, in 64 bits.
__device__ __forceinline__ size_t grid_first() { return (size_t)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ size_t grid_stride() { return (size_t)gridDim.x * blockDim.x; }

// Calls op.one(i) for i in [0, head) and [head + 8·nv, n), and op.eight(i)
// for the 16-byte aligned groups i = head + 8·v, v < nv = (n − head) / 8.
// head = n makes everything scalar. Grid-stride: any grid covers all of n.
template <typename Op>
__device__ __forceinline__ void for_each_8(const Op& op, uint32_t n, uint32_t head) {
  const size_t first = grid_first(), stride = grid_stride();
  for (size_t i = first; i < head; i += stride) op.one(i);
  const size_t nv = (size_t)(n - head) / 8;
  for (size_t v = first; v < nv; v += stride) op.eight(head + 8 * v);
  for (size_t i = head + 8 * nv + first; i < n; i += stride) op.one(i);
}
