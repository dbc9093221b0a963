// Forced-included (-include) before a kernel file when a tools/kernel_emu
// program builds it for the host: CUDA keywords become nothing, `__shared__` becomes `static`
// (one copy for the threads of the block in flight: `launch` runs blocks one
// at a time), and barriers and warp shuffles are emulated with one OS thread
// per CUDA thread. Kernels whose blocks wait for each other (`launch_at_once`
// runs all blocks together) take their shared memory from
// emu_block_shared<T>() instead, one copy per block.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <thread>

#define __device__
#define __global__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define ENGINE_KERNEL_EMU 1

struct EmuDim3 {
  unsigned x = 0, y = 0, z = 0;
};
extern thread_local EmuDim3 threadIdx, blockIdx;
extern EmuDim3 blockDim, gridDim;
struct uint4 {
  unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
using std::max;
using std::min;

// The block of the calling thread: its barrier, its warps' barriers, its
// lanes' exchange slots and its shared-memory arena.
extern thread_local std::barrier<>* g_block;
extern thread_local std::barrier<>** g_warp;
extern thread_local uint64_t (*g_lane)[32];
extern thread_local void* g_arena;

// The calling block's own T (the arena holds 64 KiB, zeroed at launch).
template <typename T>
T* emu_block_shared() {
  static_assert(sizeof(T) <= 65536 && alignof(T) <= 64, "the arena holds 64 KiB, 64-byte aligned");
  return static_cast<T*>(g_arena);
}

inline void __syncthreads() { g_block->arrive_and_wait(); }
// One slot for the block in flight (`launch` runs blocks one at a time).
inline std::atomic<int>& emu_or_slot() {
  static std::atomic<int> slot{0};
  return slot;
}
inline int __syncthreads_or(int v) {
  if (v) emu_or_slot() |= 1;
  __syncthreads();
  const int r = emu_or_slot().load();
  __syncthreads();
  if (threadIdx.x == 0) emu_or_slot() = 0;
  __syncthreads();
  return r;
}

// Every lane of the warp posts its value, then reads lane `src`'s.
template <typename T>
T emu_shfl(T v, unsigned src) {
  static_assert(sizeof(T) <= 8, "shuffles move up to 8 bytes");
  const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
  memcpy(&g_lane[w][l], &v, sizeof(T));
  g_warp[w]->arrive_and_wait();
  T r;
  memcpy(&r, &g_lane[w][src], sizeof(T));
  g_warp[w]->arrive_and_wait();
  return r;
}
template <typename T>
T __shfl_xor_sync(unsigned, T v, int mask) {
  return emu_shfl(v, (threadIdx.x % 32) ^ (unsigned)mask);
}
template <typename T>
T __shfl_down_sync(unsigned, T v, unsigned delta) {
  const unsigned l = threadIdx.x % 32;
  return emu_shfl(v, l + delta < 32 ? l + delta : l);
}
template <typename T>
T __shfl_up_sync(unsigned, T v, unsigned delta) {
  const unsigned l = threadIdx.x % 32;
  return emu_shfl(v, l >= delta ? l - delta : l);
}

inline uint32_t __float_as_uint(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
inline float __uint_as_float(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
inline float __int_as_float(int32_t i) {
  float f;
  memcpy(&f, &i, 4);
  return f;
}
inline double __dmul_rn(double a, double b) { return a * b; }
// A rounded product, never contracted into an FMA (the emulators build with
// -ffp-contract=off, so a plain product is one).
inline float __fmul_rn(float a, float b) { return a * b; }
// The GPU's rsqrtf is within 2 ulp of this; the tests that use it compare
// against the CPU with a tolerance.
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*p).fetch_add(v);
}
inline unsigned atomicAdd(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_add(v); }
inline unsigned atomicOr(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_or(v); }
inline unsigned atomicMax(unsigned* p, unsigned v) {
  std::atomic_ref<unsigned> a(*p);
  unsigned old = a.load();
  while (old < v && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
struct float4 {
  float x, y, z, w;
};
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __nanosleep(unsigned) { std::this_thread::yield(); }
template <typename T>
T __ldcg(const T* p) {
  return *p;
}
