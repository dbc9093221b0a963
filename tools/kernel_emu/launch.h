// What the kernel emulators share: the emulated thread indices, barriers
// and warp-exchange slots the shim declares, a launcher that runs a kernel's
// blocks one at a time with one OS thread per CUDA thread, and readers for
// the little-endian input the Rust tests write (tests/kernel_emu.rs).
#pragma once
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

thread_local EmuDim3 threadIdx, blockIdx;
EmuDim3 blockDim, gridDim;
std::barrier<>* g_block;
std::barrier<>* g_warp[32];
uint64_t g_lane[32][32];

template <typename T>
static T get() {
  T v;
  if (fread(&v, sizeof(T), 1, stdin) != 1) {
    fprintf(stderr, "kernel_emu: input ended early\n");
    exit(2);
  }
  return v;
}
template <typename T>
static std::vector<T> get_n(size_t n) {
  std::vector<T> v(n);
  if (n && fread(v.data(), sizeof(T), n, stdin) != n) {
    fprintf(stderr, "kernel_emu: input ended early\n");
    exit(2);
  }
  return v;
}

// One output line per float: "TAG <bits>" (hex), as the Rust tests read them.
static void put_floats(const char* tag, const std::vector<float>& v) {
  for (float x : v) {
    uint32_t b;
    memcpy(&b, &x, 4);
    printf("%s %x\n", tag, b);
  }
}

// One output line of doubles: "TAG <bits> <bits> …" (hex).
static void put_doubles(const char* tag, const double* v, size_t n) {
  printf("%s", tag);
  for (size_t i = 0; i < n; ++i) {
    uint64_t b;
    memcpy(&b, &v[i], 8);
    printf(" %llx", (unsigned long long)b);
  }
  printf("\n");
}

// Runs `kernel(p)` for blocks 0..blocks with `threads` threads each (a
// multiple of 32).
template <typename P>
static void launch(void (*kernel)(P), const P& p, unsigned blocks, unsigned threads) {
  if (threads == 0 || threads % 32 != 0 || threads > 1024) {
    fprintf(stderr, "kernel_emu: %u threads (a multiple of 32 up to 1024)\n", threads);
    exit(2);
  }
  blockDim.x = threads;
  gridDim.x = blocks;
  for (unsigned b = 0; b < blocks; ++b) {
    std::barrier<> block(threads);
    g_block = &block;
    for (unsigned w = 0; w < threads / 32; ++w) g_warp[w] = new std::barrier<>(32);
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < threads; ++t) {
      ts.emplace_back([&, t] {
        threadIdx.x = t;
        blockIdx.x = b;
        kernel(p);
      });
    }
    for (auto& t : ts) t.join();
    for (unsigned w = 0; w < threads / 32; ++w) delete g_warp[w];
  }
}
