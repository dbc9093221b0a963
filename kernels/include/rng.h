/* The sampler's random stream, one definition for the GPU sampler
 * (kernels/sample.cu) and for a host build of the same arithmetic
 * (tools/kernel_emu/sample.cpp, run by tests/kernel_emu.rs), which CI
 * compares with the CPU sampler's (src/rollout/sampler.rs, `Stream`), so the
 * CPU and the GPU draw the same numbers for a seed (DESIGN.md §6).
 *
 * A stream is a 64-bit key made from (seed, prompt, sample); draw `step` of
 * it is a pure function of (key, step): a counter-based generator, so a
 * sequence's draws never depend on what else is in the batch. The mixing
 * function is SplitMix64's finaliser (a bijection of 64 bits). */
#pragma once
#include <stdint.h>

#if defined(__CUDACC__)
#define ENGINE_HD __host__ __device__ __forceinline__
#else
#define ENGINE_HD static inline
#endif

ENGINE_HD uint64_t engine_mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/* The key of the stream of sample `sample` of prompt `prompt` under `seed`. */
ENGINE_HD uint64_t engine_stream_key(uint64_t seed, uint64_t prompt, uint64_t sample) {
  return engine_mix64(engine_mix64(engine_mix64(seed) ^ prompt) ^ (sample * 0xD6E8FEB86659FD93ull));
}

/* Draw `step` of stream `key`: a uniform number in [0, 1) with 53 random
 * bits (exact in a double: the top 53 bits of the mix times 2^-53). */
ENGINE_HD double engine_uniform(uint64_t key, uint64_t step) {
  return (double)(engine_mix64(key ^ engine_mix64(step)) >> 11) * 0x1.0p-53;
}
