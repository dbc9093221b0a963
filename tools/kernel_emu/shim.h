// Forced-included (-include) before a kernel file when sample.cpp or
// policy.cpp builds it for the host: CUDA keywords become nothing, `__shared__` becomes `static`
// (one copy for the threads of the block in flight; blocks run one at a
// time), and barriers and warp shuffles are emulated with one OS thread per
// CUDA thread.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <barrier>

#define __device__
#define __global__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(x)

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

extern std::barrier<>* g_block;
extern std::barrier<>* g_warp[32];
extern uint64_t g_lane[32][32];

inline void __syncthreads() { g_block->arrive_and_wait(); }

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
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*p).fetch_add(v);
}
