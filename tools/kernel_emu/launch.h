// What the kernel emulators share: the emulated thread indices, barriers
// and warp-exchange slots the shim declares, launchers with one OS thread per
// CUDA thread (blocks one at a time, or all at once for kernels whose blocks
// wait for each other), and readers for the little-endian input the Rust
// tests write (tests/kernel_emu.rs).
#pragma once
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <vector>

thread_local EmuDim3 threadIdx, blockIdx;
EmuDim3 blockDim, gridDim;
thread_local std::barrier<>* g_block;
thread_local std::barrier<>** g_warp;
thread_local uint64_t (*g_lane)[32];
thread_local void* g_arena;

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

// bf16 bits of x (rounded to nearest even) after `pad` zeros, and back.
static std::vector<uint16_t> to_bf(const std::vector<float>& x, size_t pad) {
  std::vector<uint16_t> r(pad + x.size(), 0);
  for (size_t i = 0; i < x.size(); ++i) r[pad + i] = __float2bfloat16_rn(x[i]).x;
  return r;
}
static std::vector<float> from_bf(const uint16_t* x, size_t n) {
  std::vector<float> r(n);
  for (size_t i = 0; i < n; ++i) r[i] = __bfloat162float(__nv_bfloat16{x[i]});
  return r;
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

// One emulated block: its barriers, lane slots and shared-memory arena.
struct EmuBlock {
  std::barrier<> block;
  std::barrier<>* warps[32] = {};
  uint64_t lanes[32][32] = {};
  alignas(64) unsigned char arena[65536] = {};
  explicit EmuBlock(unsigned threads) : block(threads) {
    for (unsigned w = 0; w < threads / 32; ++w) warps[w] = new std::barrier<>(32);
  }
  ~EmuBlock() {
    for (auto* w : warps) delete w;
  }
};

// Runs `kernel(p)` for blocks first..first + count at the same time, with
// `threads` threads each (a multiple of 32; the caller sets blockDim).
template <typename P>
static void run_blocks(void (*kernel)(P), const P& p, unsigned first, unsigned count, unsigned threads) {
  if (threads == 0 || threads % 32 != 0 || threads > 1024) {
    fprintf(stderr, "kernel_emu: %u threads (a multiple of 32 up to 1024)\n", threads);
    exit(2);
  }
  std::vector<std::unique_ptr<EmuBlock>> blocks;
  for (unsigned b = 0; b < count; ++b) blocks.push_back(std::make_unique<EmuBlock>(threads));
  std::vector<std::thread> ts;
  for (unsigned b = 0; b < count; ++b) {
    for (unsigned t = 0; t < threads; ++t) {
      ts.emplace_back([&, b, t] {
        EmuBlock& e = *blocks[b];
        threadIdx.x = t;
        blockIdx.x = first + b;
        g_block = &e.block;
        g_warp = e.warps;
        g_lane = e.lanes;
        g_arena = e.arena;
        kernel(p);
      });
    }
  }
  for (auto& t : ts) t.join();
}

// Runs `kernel(p)` for blocks 0..blocks, one block at a time.
template <typename P>
static void launch(void (*kernel)(P), const P& p, unsigned blocks, unsigned threads) {
  gridDim.x = blocks;
  blockDim.x = threads;
  for (unsigned b = 0; b < blocks; ++b) run_blocks(kernel, p, b, 1, threads);
}

// Runs `kernel(p)` for blocks 0..order.size() with at most `resident` of
// them running at once, started in `order` (a block starts when one has
// finished): a GPU with room for only `resident` blocks and a scheduler in
// an unhelpful order. Shared memory as launch_at_once.
template <typename P>
static void launch_limited(void (*kernel)(P), const P& p, const std::vector<unsigned>& order, unsigned threads,
                           unsigned resident) {
  gridDim.x = (unsigned)order.size();
  blockDim.x = threads;
  std::mutex mu;
  std::condition_variable cv;
  unsigned running = 0;
  size_t next = 0;  // the position in `order` that starts next
  std::vector<std::thread> starters;
  for (size_t i = 0; i < order.size(); ++i) {
    const unsigned b = order[i];
    starters.emplace_back([&, i, b] {
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return next == i && running < resident; });
        ++running;
        ++next;
      }
      cv.notify_all();
      run_blocks(kernel, p, b, 1, threads);
      {
        std::lock_guard<std::mutex> lock(mu);
        --running;
      }
      cv.notify_all();
    });
  }
  for (auto& t : starters) t.join();
}

// Runs `kernel(p)` for blocks 0..blocks all at the same time (the kernel
// must keep its shared memory in emu_block_shared, not in statics).
template <typename P>
static void launch_at_once(void (*kernel)(P), const P& p, unsigned blocks, unsigned threads) {
  gridDim.x = blocks;
  blockDim.x = threads;
  run_blocks(kernel, p, 0, blocks, threads);
}
