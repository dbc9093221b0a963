// Forced-included (-include) before kernels/flash_attention.cu when main.cpp
// builds it for the host: CUDA keywords become nothing, and the thread
// indices, barriers, shuffles and the mma instruction are emulated with one
// OS thread per CUDA thread (main.cpp).
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>

#define __device__
#define __global__
#define __host__
#define __forceinline__ inline
#define __shared__
#define __align__(x)
#define __launch_bounds__(...)
#define __grid_constant__
#define ENGINE_FLASH_EMU 1

struct EmuDim3 {
  unsigned x = 0, y = 0, z = 0;
};
extern thread_local EmuDim3 threadIdx, blockIdx;
extern EmuDim3 blockDim, gridDim;
struct uint4 {
  unsigned x, y, z, w;
};
struct float2 {
  float x, y;
};
struct float4 {
  float x, y, z, w;
};
inline float2 make_float2(float a, float b) { return {a, b}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
using std::max;
using std::min;
void __syncthreads();
float __shfl_xor_sync(unsigned mask, float v, int lane_mask);
uint32_t emu_dyn_smem_bytes();
void emu_cp_async(void* dst, const void* src);
void emu_cp_async_commit();
void emu_cp_async_wait(int n);
void emu_ldsm(const void* p, bool trans, uint32_t (&r)[4]);
void emu_mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1);
uint32_t emu_smem_offset(const void* p);
void emu_wgmma(float* d, int n, const uint32_t (&a)[4], uint64_t desc, bool trans_b);
void emu_wgmma_ss(float* d, int n, uint64_t a_desc, uint64_t b_desc);
void emu_wgmma_commit();
void emu_wgmma_wait(int n);
bool emu_mbar_wait(void* bar, unsigned parity);
void emu_mbar_init(void* bar, unsigned count);
void emu_mbar_arrive(void* bar);
void emu_mbar_arrive_expect_tx(void* bar, unsigned bytes);
void emu_tma_load_3d(void* dst, const void* map, int c0, int c1, int c2, void* bar);
void emu_bulk_to_global(float* dst, const float* src, unsigned bytes, bool add);
void emu_bulk_wait(bool read);
void emu_fence_proxy_async();
void emu_bar_sync(int id, int n);
void emu_bar_arrive(int id, int n);

// The fused backward's ordering: blocks run one after another here, so a
// turn is always already given; no cache to bypass.
inline void __threadfence() {}
inline void __nanosleep(unsigned) {}
template <typename T>
inline T __ldcg(const T* p) {
  return *p;
}
inline float __int_as_float(int x) {
  float f;
  memcpy(&f, &x, 4);
  return f;
}
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicOr(unsigned* p, unsigned v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicCAS(unsigned* p, unsigned expected, unsigned desired) {
  __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return expected;
}
