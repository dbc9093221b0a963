// Runs kernels/flash_attention.cu on the CPU, one OS thread per CUDA thread,
// against a float64 reference: a check of the kernels' indexing, masking,
// barriers and softmax on a machine without a GPU. What it cannot check is
// the hardware: mma.sync is emulated from the PTX ISA's fragment layout (the
// same layout the kernel assumes), so a misreading of that layout would pass
// here and fail on a GPU. The same holds for wgmma (the Hopper kernels),
// whose products run asynchronously here as on the GPU: operands read and
// accumulators written at the wait_group that retires them, accumulators
// NaN until then (see emu_wgmma_wait); and for the TMA and mbarriers of the
// warp-specialised kernels (emu_tma_load_3d): a load's bytes are NaN until
// a wait on its barrier completes the phase; and for the bulk copies to
// global memory of the warp-specialised backward (emu_bulk_to_global),
// which read their source only at their wait. wgmma and the bulk copies
// read shared memory through the async proxy's view (g_async_view), which
// a plain store reaches only at a fence.proxy.async.
//
//   tools/flash_attention_emu/run.sh
#include <array>
#include <barrier>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <shared_mutex>
#include <thread>
#include <vector>

#include "../../kernels/flash_attention.cu"

thread_local EmuDim3 threadIdx, blockIdx;
EmuDim3 blockDim, gridDim;
// The kernels declare it (extern __shared__) inside the file's anonymous namespace.
namespace {
alignas(1024) unsigned char smem[256 * 1024];
}

// Shared memory as the async proxy sees it (wgmma's operands, the bulk
// copies' sources): the TMA writes both views; a generic write (a plain
// store, cp.async) reaches this one only at a fence.proxy.async, and then
// generously: the first async read after any thread's fence copies every
// generic write so far. So a generic write that no fence follows before
// wgmma or a bulk copy reads it shows (stale bytes: the NaN of the block's
// start, or an older tile), as it may on the GPU.
static unsigned char g_async_view[sizeof smem];
static std::shared_mutex g_view_mu;
static bool g_fence_pending = false;  // under g_view_mu

void emu_fence_proxy_async() {
  std::unique_lock<std::shared_mutex> lk(g_view_mu);
  g_fence_pending = true;
}

static void view_refresh() {
  std::unique_lock<std::shared_mutex> lk(g_view_mu);
  if (g_fence_pending) {
    memcpy(g_async_view, smem, sizeof smem);
    g_fence_pending = false;
  }
}
static uint32_t g_dyn;
static std::barrier<>* g_block;
static std::barrier<>* g_wgbar[8];  // per warpgroup (128 threads)
static std::barrier<>* g_warp[32];
struct WarpX {
  const unsigned char* addr[32];
  float f[32];
  uint32_t a[32][4];
  uint32_t b[32][2];
};
static WarpX g_wx[32];

void __syncthreads() { g_block->arrive_and_wait(); }

float __shfl_xor_sync(unsigned, float v, int o) {
  const int w = threadIdx.x / 32, l = threadIdx.x % 32;
  g_wx[w].f[l] = v;
  g_warp[w]->arrive_and_wait();
  const float r = g_wx[w].f[l ^ o];
  g_warp[w]->arrive_and_wait();
  return r;
}

uint32_t emu_dyn_smem_bytes() { return g_dyn; }

// FLASH_EMU_JITTER=1: the asynchronous operations (wgmma waits, mbarrier
// arrivals and waits, TMA issues, named barriers) pause a random while
// (up to 0.3 ms, a third of the time) before they act, so that the threads
// interleave in orders the OS scheduler rarely picks: a race in a kernel's
// protocol then shows in more runs. Each thread draws from its own stream.
static bool g_jitter = false;
static void jitter() {
  if (!g_jitter) return;
  thread_local std::mt19937 rng(std::hash<std::thread::id>{}(std::this_thread::get_id()));
  if (rng() % 3 == 0) std::this_thread::sleep_for(std::chrono::microseconds(rng() % 300));
}

static float half_of(uint32_t reg, int hi) {
  return __bfloat162float(__nv_bfloat16{(uint16_t)(hi ? reg >> 16 : reg & 0xffffu)});
}

// cp.async as the worst case the PTX ISA allows: the destination holds
// garbage (NaN) from the issue until this thread's wait_group completes the
// copy; so a read before the wait, or a refill of a buffer still being read,
// shows in the results.
struct Pending {
  void* dst;
  const void* src;
  int group;
};
static thread_local std::vector<Pending> t_pending;
static thread_local int t_groups = 0;  // groups committed by this thread

void emu_cp_async(void* dst, const void* src) {
  if ((uintptr_t)dst % 16 != 0 || (uintptr_t)src % 16 != 0) {
    fprintf(stderr, "cp.async: misaligned address\n");
    abort();
  }
  memset(dst, 0xff, 16);
  t_pending.push_back({dst, src, t_groups});
}
void emu_cp_async_commit() { ++t_groups; }
void emu_cp_async_wait(int n) {
  std::vector<Pending> keep;
  for (const Pending& p : t_pending) {
    if (p.group < t_groups - n) {
      memcpy(p.dst, p.src, 16);
    } else {
      keep.push_back(p);
    }
  }
  t_pending.swap(keep);
}

// ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16, as in the PTX ISA.
void emu_ldsm(const void* p, bool trans, uint32_t (&r)[4]) {
  const int w = threadIdx.x / 32, l = threadIdx.x % 32;
  WarpX& x = g_wx[w];
  x.addr[l] = static_cast<const unsigned char*>(p);
  g_warp[w]->arrive_and_wait();
  const int g = l / 4, t = l % 4;
  for (int m = 0; m < 4; ++m) {
    // Element [row][col] of matrix m: the col-th bf16 at thread (8m + row)'s address.
    auto el = [&](int row, int col) {
      const unsigned char* a = x.addr[8 * m + row];
      if ((uintptr_t)a % 16 != 0) {
        fprintf(stderr, "ldmatrix: misaligned row address\n");
        abort();
      }
      uint16_t v;
      memcpy(&v, a + 2 * col, 2);
      return (uint32_t)v;
    };
    r[m] = trans ? el(2 * t, g) | el(2 * t + 1, g) << 16 : el(g, 2 * t) | el(g, 2 * t + 1) << 16;
  }
  g_warp[w]->arrive_and_wait();
}

// mma.sync.m16n8k16.row.col f32.bf16.bf16.f32, fragments as in the PTX ISA.
void emu_mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
  const int w = threadIdx.x / 32, l = threadIdx.x % 32;
  WarpX& x = g_wx[w];
  x.a[l][0] = a0;
  x.a[l][1] = a1;
  x.a[l][2] = a2;
  x.a[l][3] = a3;
  x.b[l][0] = b0;
  x.b[l][1] = b1;
  g_warp[w]->arrive_and_wait();
  // A[r][k]: lane (r % 8)·4 + (k % 8)/2, register (r >= 8) + 2·(k >= 8), half k % 2.
  auto A = [&](int r, int k) { return half_of(x.a[(r % 8) * 4 + (k % 8) / 2][(r >= 8) + 2 * (k >= 8)], k % 2); };
  // B[k][n]: lane n·4 + (k % 8)/2, register (k >= 8), half k % 2.
  auto B = [&](int k, int n) { return half_of(x.b[n * 4 + (k % 8) / 2][k >= 8], k % 2); };
  const int g = l / 4, t = l % 4;
  for (int e = 0; e < 4; ++e) {
    const int row = g + 8 * (e / 2), col = 2 * t + e % 2;
    float s = 0.0f;
    for (int k = 0; k < 16; ++k) s += A(row, k) * B(k, col);
    c[e] += s;
  }
  g_warp[w]->arrive_and_wait();
}

uint32_t emu_smem_offset(const void* p) { return (uint32_t)(static_cast<const unsigned char*>(p) - smem); }

// wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16, as the PTX ISA
// describes it: the warpgroup is the block's 4 warps (the wgmma kernels'
// blocks are one warpgroup); warp w's D fragment holds rows 16w + g (+ 8),
// columns 8j + 2t (+ 1) in d[4j..4j + 4]. A from registers (warp w's
// fragment holds rows 16w..16w + 16 in mma.sync's A layout) or, as B, from
// shared memory through a descriptor without swizzle: core matrices of 8
// rows × 16 bytes (128 contiguous bytes) whose rows run along M or N
// (K-major: 8 elements of K in a row) or along K (MN-major, trans: 8
// elements of M or N in a row); core matrices lie `leading` bytes apart
// along K and `stride` bytes apart along M or N (the ISA's words taken
// literally). With the 128-byte swizzle (mode 1: the warp-specialised
// forward) the canonical layouts of the PTX ISA: K-major, row mn at (mn / 8)
// · stride + (mn % 8) · 128 and its 16 k-elements contiguous from the start
// address (leading unused); MN-major, element (k, mn) at (mn / 64) · leading
// + (k / 8) · stride + (k % 8) · 128 + (mn % 64) · 2; then the 16-byte chunk
// bits (4–6) of the address XORed with bits 7–9. A read outside the dynamic
// shared memory aborts.
static uint32_t g_wg_a[512][4];

// Element (mn, k) of an operand in shared memory through desc.
static float desc_elem(uint64_t desc, int mn, int k, bool trans, const char* what) {
  const uint64_t mode = desc >> 62;
  if ((mode != 0 && mode != 1) || ((desc >> 49) & 7) != 0) {
    fprintf(stderr, "wgmma: only descriptors without swizzle or with the 128-byte one, base offset 0, are emulated\n");
    abort();
  }
  const uint32_t start = (uint32_t)(desc & 0x3fff) << 4, lead = (uint32_t)((desc >> 16) & 0x3fff) << 4,
                 stride = (uint32_t)((desc >> 32) & 0x3fff) << 4;
  uint32_t at;
  if (mode == 0) {
    at = start + (k / 8) * lead + (mn / 8) * stride + (trans ? (k % 8) * 16 + (mn % 8) * 2 : (mn % 8) * 16 + (k % 8) * 2);
  } else if (!trans) {
    if (start % 128 + 32 > 128) {
      fprintf(stderr, "wgmma: a K-major k-step crosses a 128-byte row of the swizzle atom\n");
      abort();
    }
    at = start + (mn / 8) * stride + (mn % 8) * 128 + k * 2;
    at ^= ((at >> 7) & 7) << 4;
  } else {
    at = start + (mn / 64) * lead + (k / 8) * stride + (k % 8) * 128 + (mn % 64) * 2;
    at ^= ((at >> 7) & 7) << 4;
  }
  if (at + 2 > g_dyn) {
    fprintf(stderr, "wgmma: %s element (mn %d, k %d) at byte %u, past the %u bytes of shared memory\n", what, mn, k,
            at, g_dyn);
    abort();
  }
  uint16_t v;
  memcpy(&v, g_async_view + at, 2);
  return __bfloat162float(__nv_bfloat16{v});
}

// d += A·B over the warpgroup; A(row, k) and B(k, col) read the operands.
template <typename FA, typename FB>
static void wgmma_product(float* d, int n, FA A, FB B) {
  const int tid = threadIdx.x;
  if (blockDim.x % 128 != 0) {
    fprintf(stderr, "wgmma: a block of whole warpgroups\n");
    abort();
  }
  std::barrier<>* wgb = g_wgbar[tid / 128];
  wgb->arrive_and_wait();  // every thread's A registers are in g_wg_a
  const int w = tid % 128 / 32, l = tid % 32, g = l / 4, t = l % 4;
  std::shared_lock<std::shared_mutex> view(g_view_mu);
  for (int j = 0; j < n / 8; ++j) {
    for (int e = 0; e < 4; ++e) {
      const int row = 16 * w + g + 8 * (e / 2), col = 8 * j + 2 * t + e % 2;
      float s = 0.0f;
      for (int k = 0; k < 16; ++k) s += A(row, k) * B(k, col);
      d[4 * j + e] += s;
    }
  }
  view.unlock();
  wgb->arrive_and_wait();
}

// wgmma runs asynchronously, as the PTX ISA allows: an issued product reads
// its operands (A through the kernel's own register array, shared memory
// through the descriptors) and writes its accumulators only when the
// wait_group that retires its group runs, and from issue to then the
// accumulators hold NaN. So a kernel that reads an accumulator before its
// wait, rewrites an A fragment, or refills a tile while a product still
// reads it gets wrong results here, as it could on the GPU.
struct WgOp {
  float* d;
  int n;
  const uint32_t* a;  // register A, or nullptr: A from a_desc
  uint64_t a_desc, b_desc;
  bool trans_b;
  int group;
};
struct WgAcc {
  float* d;
  std::vector<float> value;  // the accumulators as the retired products left them
  int pending;
};
static thread_local std::vector<WgOp> t_wg_ops;
static thread_local std::vector<WgAcc> t_wg_accs;
static thread_local int t_wg_groups = 0;  // groups committed by this thread

static void wg_issue(WgOp op) {
  auto acc = std::find_if(t_wg_accs.begin(), t_wg_accs.end(), [&](const WgAcc& x) { return x.d == op.d; });
  if (acc == t_wg_accs.end()) {
    t_wg_accs.push_back({op.d, std::vector<float>(op.d, op.d + op.n / 2), 1});
    std::fill(op.d, op.d + op.n / 2, NAN);
  } else {
    ++acc->pending;
  }
  op.group = t_wg_groups;  // the group the next commit closes
  t_wg_ops.push_back(op);
}

void emu_wgmma(float* d, int n, const uint32_t (&a)[4], uint64_t desc, bool trans_b) {
  wg_issue({d, n, a, 0, desc, trans_b, 0});
}

void emu_wgmma_ss(float* d, int n, uint64_t a_desc, uint64_t b_desc) {
  wg_issue({d, n, nullptr, a_desc, b_desc, false, 0});
}

void emu_wgmma_commit() { ++t_wg_groups; }

// Retires every committed group but the newest n, products in issue order
// (all 128 threads arrive here together, with the same products pending).
void emu_wgmma_wait(int n) {
  jitter();
  view_refresh();
  std::vector<WgOp> keep;
  for (const WgOp& op : t_wg_ops) {
    if (op.group >= t_wg_groups - n) {
      keep.push_back(op);
      continue;
    }
    auto acc = std::find_if(t_wg_accs.begin(), t_wg_accs.end(), [&](const WgAcc& x) { return x.d == op.d; });
    if (op.a) {
      for (int i = 0; i < 4; ++i) g_wg_a[threadIdx.x][i] = op.a[i];
    }
    const int wg0 = threadIdx.x / 128 * 128;
    wgmma_product(
        acc->value.data(), op.n,
        [&](int row, int k) {
          if (!op.a) return desc_elem(op.a_desc, row, k, false, "A");
          const int w = row / 16, r = row % 16;
          return half_of(g_wg_a[wg0 + 32 * w + (r % 8) * 4 + (k % 8) / 2][(r >= 8) + 2 * (k >= 8)], k % 2);
        },
        [&](int k, int col) { return desc_elem(op.b_desc, col, k, op.trans_b, "B"); });
    if (--acc->pending == 0) {
      std::copy(acc->value.begin(), acc->value.end(), op.d);
      t_wg_accs.erase(acc);
    }
  }
  t_wg_ops.swap(keep);
}

// mbarriers, as the PTX ISA describes them: a phase completes when its
// pending arrivals reach zero and its transaction count (bytes the TMA
// still owes) is zero; a wait for parity p returns once the phase of parity
// p has completed (the phase before the first, parity 1, counts as done). A
// TMA load fills its destination with NaN at issue and copies its bytes
// only when a thread waits on its barrier with every arrival in, so a read
// of a buffer before its wait, or a refill before the readers' release,
// shows in the results. A wait that lasts 20 s aborts (a deadlock).
struct EmuMbar {
  unsigned count = 0, pending = 0, phase = 0;
  long tx = 0;
  std::vector<std::function<void()>> loads;  // this phase's TMA copies, not yet done
};
static std::mutex g_mbar_mu;
static std::condition_variable g_mbar_cv;
static std::map<uint32_t, EmuMbar> g_mbars;  // by shared-memory offset

static EmuMbar& mbar_at(void* bar) {
  const uint32_t off = emu_smem_offset(bar);
  if (off % 8 != 0 || off + 8 > g_dyn) {
    fprintf(stderr, "mbarrier: at byte %u, misaligned or past the %u bytes of shared memory\n", off, g_dyn);
    abort();
  }
  return g_mbars[off];
}

static void mbar_try_complete(EmuMbar& b) {
  if (b.pending == 0 && b.tx == 0) {
    ++b.phase;
    b.pending = b.count;
    g_mbar_cv.notify_all();
  }
}

void emu_mbar_init(void* bar, unsigned count) {
  std::lock_guard<std::mutex> lk(g_mbar_mu);
  EmuMbar& b = mbar_at(bar);
  b = EmuMbar{};
  b.count = b.pending = count;
}

static void mbar_arrive_locked(EmuMbar& b) {
  if (b.pending == 0 || b.count == 0) {
    fprintf(stderr, "mbarrier: an arrival past the count (or on a barrier never initialised)\n");
    abort();
  }
  --b.pending;
  mbar_try_complete(b);
  // Every arrival in but bytes still owed: a waiter runs the TMA's copies
  // (the last arrival may come after the loads were issued).
  if (b.pending == 0) g_mbar_cv.notify_all();
}

void emu_mbar_arrive(void* bar) {
  jitter();
  std::lock_guard<std::mutex> lk(g_mbar_mu);
  mbar_arrive_locked(mbar_at(bar));
}

void emu_mbar_arrive_expect_tx(void* bar, unsigned bytes) {
  jitter();
  std::lock_guard<std::mutex> lk(g_mbar_mu);
  EmuMbar& b = mbar_at(bar);
  b.tx += bytes;
  mbar_arrive_locked(b);
}

bool emu_mbar_wait(void* bar, unsigned parity) {
  jitter();
  std::unique_lock<std::mutex> lk(g_mbar_mu);
  EmuMbar& b = mbar_at(bar);
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while ((b.phase & 1) == parity) {
    if (b.pending == 0 && !b.loads.empty()) {
      for (auto& f : b.loads) f();  // each subtracts its bytes from tx
      b.loads.clear();
      mbar_try_complete(b);
      continue;
    }
    if (g_mbar_cv.wait_until(lk, give_up) == std::cv_status::timeout) {
      fprintf(stderr,
              "mbarrier at byte %u: thread %u's wait for parity %u never completed (deadlock; phase %u, %u of %u "
              "arrivals pending, %ld bytes)\n",
              emu_smem_offset(bar), threadIdx.x, parity, b.phase, b.pending, b.count, b.tx);
      abort();
    }
  }
  return true;
}

// The emulator's tensor map in EngineTmap's bytes: base, dims[3], strides of
// dims 1 and 2 (bytes), box[3], swizzle (128 or 0). bf16 elements.
enum { TM_BASE = 0, TM_DIM = 1, TM_STRIDE = 4, TM_BOX = 6, TM_SWIZZLE = 9 };
static EngineTmap emu_tmap(const void* base, uint64_t d0, uint64_t d1, uint64_t d2, uint64_t stride1,
                           uint64_t stride2, uint64_t b0, uint64_t b1, uint64_t b2) {
  EngineTmap m{};
  m.opaque[TM_BASE] = (uint64_t)(uintptr_t)base;
  m.opaque[TM_DIM] = d0;
  m.opaque[TM_DIM + 1] = d1;
  m.opaque[TM_DIM + 2] = d2;
  m.opaque[TM_STRIDE] = stride1;
  m.opaque[TM_STRIDE + 1] = stride2;
  m.opaque[TM_BOX] = b0;
  m.opaque[TM_BOX + 1] = b1;
  m.opaque[TM_BOX + 2] = b2;
  m.opaque[TM_SWIZZLE] = 128;
  return m;
}

// cp.async.bulk.tensor.3d into shared memory at dst: the box's elements in
// order (dim 0 fastest), 128-byte swizzled (the 16-byte chunk bits 4–6 of
// each address XORed with bits 7–9), zeros out of bounds.
void emu_tma_load_3d(void* dst, const void* map_p, int c0, int c1, int c2, void* bar) {
  jitter();
  // A copy of the map: the kernel's parameters (where it lives) end with
  // the issuing thread, which may be before the copy runs.
  const EngineTmap map = *static_cast<const EngineTmap*>(map_p);
  const uint64_t* w = map.opaque;
  const uint32_t off = emu_smem_offset(dst);
  const uint32_t bytes = (uint32_t)(w[TM_BOX] * w[TM_BOX + 1] * w[TM_BOX + 2] * 2);
  if (w[TM_SWIZZLE] != 128 || w[TM_BOX] * 2 != 128 || off % 1024 != 0 || off + bytes > g_dyn) {
    fprintf(stderr, "tma: the box must be 128-byte rows, swizzled, at a 1024-byte boundary inside shared memory\n");
    abort();
  }
  {
    std::unique_lock<std::shared_mutex> view(g_view_mu);
    memset(smem + off, 0xff, bytes);
    memset(g_async_view + off, 0xff, bytes);
  }
  auto copy = [map, off, bytes, c0, c1, c2, bar] {
    std::unique_lock<std::shared_mutex> view(g_view_mu);
    const uint64_t* w = map.opaque;
    const unsigned char* base = reinterpret_cast<const unsigned char*>((uintptr_t)w[TM_BASE]);
    uint32_t i = 0;
    for (uint64_t z = 0; z < w[TM_BOX + 2]; ++z) {
      for (uint64_t y = 0; y < w[TM_BOX + 1]; ++y) {
        for (uint64_t x = 0; x < w[TM_BOX]; ++x, i += 2) {
          const int64_t g0 = c0 + (int64_t)x, g1 = c1 + (int64_t)y, g2 = c2 + (int64_t)z;
          uint16_t v = 0;
          if (g0 >= 0 && g1 >= 0 && g2 >= 0 && (uint64_t)g0 < w[TM_DIM] && (uint64_t)g1 < w[TM_DIM + 1] &&
              (uint64_t)g2 < w[TM_DIM + 2]) {
            memcpy(&v, base + g2 * w[TM_STRIDE + 1] + g1 * w[TM_STRIDE] + g0 * 2, 2);
          }
          uint32_t at = off + i;
          at ^= ((at >> 7) & 7) << 4;
          memcpy(smem + at, &v, 2);
          memcpy(g_async_view + at, &v, 2);
        }
      }
    }
    g_mbars[emu_smem_offset(bar)].tx -= bytes;
  };
  std::lock_guard<std::mutex> lk(g_mbar_mu);
  mbar_at(bar).loads.push_back(copy);
  g_mbar_cv.notify_all();  // a thread may be waiting on this barrier with every arrival in
}

// cp.async.bulk / cp.reduce.async.bulk .add.f32 from shared to global
// memory, as the worst case the PTX ISA allows: the source is read and the
// destination written (or added to) only at this thread's wait, so a
// source rewritten before the wait, or a destination read before it, shows.
struct BulkOp {
  float* dst;
  const float* src;
  unsigned n;
  bool add;
};
static thread_local std::vector<BulkOp> t_bulk;

void emu_bulk_to_global(float* dst, const float* src, unsigned bytes, bool add) {
  const uint32_t off = emu_smem_offset(src);
  if ((uintptr_t)dst % 16 != 0 || off % 16 != 0 || bytes % 16 != 0 || off + bytes > g_dyn) {
    fprintf(stderr, "bulk copy: misaligned, or its source past the %u bytes of shared memory\n", g_dyn);
    abort();
  }
  t_bulk.push_back({dst, src, bytes / 4, add});
}

// read: cp.async.bulk.wait_group.read (the sources read); else the full
// wait_group. The copies run at the first wait that covers them: the
// sources are read as late as the PTX ISA allows.
void emu_bulk_wait(bool read) {
  (void)read;
  // Under jitter, a longer pause: a thread that frees the source before
  // this wait then lets its readers' next writes land first.
  if (g_jitter && !t_bulk.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  view_refresh();
  std::shared_lock<std::shared_mutex> view(g_view_mu);
  for (const BulkOp& b : t_bulk) {
    const unsigned char* src = g_async_view + emu_smem_offset(b.src);
    for (unsigned i = 0; i < b.n; ++i) {
      float x;
      memcpy(&x, src + 4 * i, 4);
      b.dst[i] = b.add ? b.dst[i] + x : x;
    }
  }
  t_bulk.clear();
}

// Named barriers (bar.sync / bar.arrive with a thread count): a generation
// completes when `n` threads have arrived, waiting (sync) or not (arrive).
// A barrier left with arrivals at the end of a block aborts the run (launch).
struct EmuNamedBar {
  int arrived = 0;
  unsigned generation = 0;
};
static EmuNamedBar g_named[16];

static void named_arrive_locked(EmuNamedBar& b, int n) {
  if (++b.arrived == n) {
    b.arrived = 0;
    ++b.generation;
    g_mbar_cv.notify_all();
  }
}

void emu_bar_arrive(int id, int n) {
  jitter();
  std::lock_guard<std::mutex> lk(g_mbar_mu);
  named_arrive_locked(g_named[id], n);
}

void emu_bar_sync(int id, int n) {
  jitter();
  std::unique_lock<std::mutex> lk(g_mbar_mu);
  EmuNamedBar& b = g_named[id];
  const unsigned gen = b.generation;
  named_arrive_locked(b, n);
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (b.generation == gen) {
    if (g_mbar_cv.wait_until(lk, give_up) == std::cv_status::timeout) {
      fprintf(stderr, "bar.sync %d: never completed (deadlock)\n", id);
      abort();
    }
  }
}

// Runs kernel k over the grid, `threads` threads a block, blocks one by one.
template <typename P>
static void launch(void (*k)(P), const P& p, unsigned gx, unsigned gy, unsigned threads, uint32_t dyn) {
  blockDim.x = threads;
  gridDim.x = gx;
  gridDim.y = gy;
  g_dyn = dyn;
  std::barrier<> block(threads);
  std::vector<std::barrier<>*> warps;
  for (unsigned w = 0; w < threads / 32; ++w) {
    warps.push_back(new std::barrier<>(32));
    g_warp[w] = warps.back();
  }
  for (unsigned w = 0; w < threads / 128; ++w) {
    warps.push_back(new std::barrier<>(128));
    g_wgbar[w] = warps.back();
  }
  g_block = &block;
  std::vector<std::thread> ts;
  for (unsigned tid = 0; tid < threads; ++tid) {
    ts.emplace_back([&, tid] {
      threadIdx.x = tid;
      for (unsigned y = 0; y < gy; ++y) {
        for (unsigned x = 0; x < gx; ++x) {
          blockIdx.x = x;
          blockIdx.y = y;
          if (tid == 0) {  // NaN-filled shared memory, in both views
            memset(smem, 0xff, sizeof smem);
            memset(g_async_view, 0xff, sizeof smem);
            g_fence_pending = false;
          }
          block.arrive_and_wait();
          k(p);
          if (!t_pending.empty()) {
            fprintf(stderr, "cp.async: a copy was never waited for\n");
            abort();
          }
          if (!t_bulk.empty()) {
            fprintf(stderr, "bulk copy: a copy was never waited for\n");
            abort();
          }
          if (!t_wg_ops.empty()) {
            fprintf(stderr, "wgmma: a product was never waited for\n");
            abort();
          }
          block.arrive_and_wait();
          if (tid == 0) {
            for (const EmuNamedBar& b : g_named) {
              if (b.arrived != 0) {
                fprintf(stderr, "bar.arrive: a named barrier ends the block with arrivals no wait met\n");
                abort();
              }
            }
          }
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  for (auto* w : warps) delete w;
}

static std::vector<uint16_t> to_bf(const std::vector<float>& x) {
  std::vector<uint16_t> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = __float2bfloat16_rn(x[i]).x;
  return r;
}
static std::vector<float> from_bf(const std::vector<uint16_t>& x) {
  std::vector<float> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = __bfloat162float(__nv_bfloat16{x[i]});
  return r;
}
static double rel(const std::vector<float>& a, const std::vector<double>& b) {
  double n = 0, d = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    n += (a[i] - b[i]) * (a[i] - b[i]);
    d += b[i] * b[i];
  }
  return std::sqrt(n / std::max(d, 1e-30));
}

static uint64_t dp(const void* p) { return (uint64_t)(uintptr_t)p; }

// fused: the fast kernels with the one-pass backward.
static int run_case(bool fast, std::vector<uint32_t> lens, uint32_t H, uint32_t KV, int D, float q_mul,
                    unsigned seed, bool fused = false) {
  std::vector<uint32_t> cu{0};
  for (auto l : lens) cu.push_back(cu.back() + l);
  const uint32_t T = cu.back(), G = H / KV;
  const float scale = 1.0f / std::sqrt((float)D);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1, 1);
  auto rnd = [&](size_t n, float mul) {
    std::vector<float> v(n);
    for (auto& x : v) x = __bfloat162float(__float2bfloat16_rn(u(rng))) * mul;
    return v;
  };
  auto q = rnd((size_t)T * H * D, q_mul), k = rnd((size_t)T * KV * D, 1), v = rnd((size_t)T * KV * D, 1),
       dout = rnd((size_t)T * H * D, 1);
  // float64 reference.
  std::vector<double> out((size_t)T * H * D, 0), lse((size_t)T * H, 0);
  std::vector<double> dq(q.size(), 0), dk(k.size(), 0), dv(v.size(), 0);
  std::vector<float> out_bf(out.size()), lse_f(lse.size());
  for (size_t s = 0; s + 1 < cu.size(); ++s) {
    for (uint32_t h = 0; h < H; ++h) {
      const uint32_t g = h / G;
      for (uint32_t i = cu[s]; i < cu[s + 1]; ++i) {
        std::vector<double> sc;
        double m = -INFINITY;
        for (uint32_t j = cu[s]; j <= i; ++j) {
          double d = 0;
          for (int e = 0; e < D; ++e) d += (double)q[((size_t)i * H + h) * D + e] * k[((size_t)j * KV + g) * D + e];
          sc.push_back(d * scale);
          m = std::max(m, d * scale);
        }
        double l = 0;
        for (auto x : sc) l += std::exp(x - m);
        const double ls = m + std::log(l);
        lse[(size_t)i * H + h] = ls;
        lse_f[(size_t)i * H + h] = (float)ls;
        for (uint32_t j = cu[s]; j <= i; ++j) {
          const double pj = std::exp(sc[j - cu[s]] - ls);
          for (int e = 0; e < D; ++e) out[((size_t)i * H + h) * D + e] += pj * v[((size_t)j * KV + g) * D + e];
        }
        for (int e = 0; e < D; ++e) {
          const size_t o = ((size_t)i * H + h) * D + e;
          out_bf[o] = __bfloat162float(__float2bfloat16_rn((float)out[o]));
        }
        // Backward of this row from out_bf and the float lse (what the kernels get).
        double Dl = 0;
        for (int e = 0; e < D; ++e) Dl += (double)dout[((size_t)i * H + h) * D + e] * out_bf[((size_t)i * H + h) * D + e];
        for (uint32_t j = cu[s]; j <= i; ++j) {
          const double pj = std::exp(sc[j - cu[s]] - (double)lse_f[(size_t)i * H + h]);
          double dpj = 0;
          for (int e = 0; e < D; ++e) dpj += (double)dout[((size_t)i * H + h) * D + e] * v[((size_t)j * KV + g) * D + e];
          const double ds = pj * (dpj - Dl) * scale;
          for (int e = 0; e < D; ++e) {
            dq[((size_t)i * H + h) * D + e] += ds * k[((size_t)j * KV + g) * D + e];
            dk[((size_t)j * KV + g) * D + e] += ds * q[((size_t)i * H + h) * D + e];
            dv[((size_t)j * KV + g) * D + e] += pj * dout[((size_t)i * H + h) * D + e];
          }
        }
      }
    }
  }
  // The tile tables (tiles of `rows` tokens), as src/backend/cuda/flash_attention.rs builds them.
  auto tiles = [&](uint32_t rows) {
    std::vector<std::pair<uint32_t, uint32_t>> tl;
    for (uint32_t s = 0; s + 1 < cu.size(); ++s)
      for (uint32_t i = 0; i * rows < cu[s + 1] - cu[s]; ++i) tl.push_back({s, i});
    std::stable_sort(tl.begin(), tl.end(), [](auto a, auto b) { return a.second > b.second; });
    std::vector<uint32_t> table;
    for (auto [s, i] : tl) {
      table.push_back(s);
      table.push_back(i);
    }
    return table;
  };
  const uint32_t fwd_rows = fast ? ENGINE_FLASH_FWD_TILE : TILE;
  const uint32_t dq_rows = fast && D == 64 ? ENGINE_FLASH_DQ_TILE_D64 : TILE;
  const std::vector<uint32_t> table = tiles(TILE), fwd_table = tiles(fwd_rows), dq_table = tiles(dq_rows);
  const uint32_t nb = table.size() / 2, nb_fwd = fwd_table.size() / 2, nb_dq = dq_table.size() / 2;
  auto qb = to_bf(q), kb = to_bf(k), vb = to_bf(v), dob = to_bf(dout), ob_in = to_bf(out_bf);
  std::vector<uint16_t> ob(out.size(), 0xffff), dqb(q.size(), 0xffff), dkb(k.size(), 0xffff), dvb(v.size(), 0xffff);
  std::vector<float> lse_k(lse.size(), NAN), delta(lse.size(), NAN);
  FlashFwdParams fp{dp(qb.data()), dp(kb.data()), dp(vb.data()), dp(ob.data()), dp(lse_k.data()), dp(cu.data()),
                    dp(fwd_table.data()), nb_fwd, H, KV, scale};
  std::vector<float> dk_part(G > 1 ? q.size() : 0, NAN), dv_part(G > 1 ? q.size() : 0, NAN);
  FlashBwdParams bp{};
  bp.q = dp(qb.data());
  bp.k = dp(kb.data());
  bp.v = dp(vb.data());
  bp.out = dp(ob_in.data());
  bp.lse = dp(lse_f.data());
  bp.dout = dp(dob.data());
  bp.delta = dp(delta.data());
  bp.dq = dp(dqb.data());
  bp.dk = dp(dkb.data());
  bp.dv = dp(dvb.data());
  bp.dk_part = G > 1 ? dp(dk_part.data()) : 0;
  bp.dv_part = G > 1 ? dp(dv_part.data()) : 0;
  bp.cu_seqlens = dp(cu.data());
  bp.blocks = dp(table.data());
  bp.tokens = T;
  bp.n_blocks = nb;
  bp.n_heads = H;
  bp.n_kv_heads = KV;
  bp.head_dim = D;
  bp.scale = scale;
  const int row = (D + PAD) * 2;
  const int step = D == 64 ? ENGINE_FLASH_DKDV_STEP_D64 : ENGINE_FLASH_DKDV_STEP_D128;
  const int nbuf = fast ? 2 : 1;  // buffers of the inner loop's tiles
  const int fwd_keys = !fast ? TILE : D == 64 ? ENGINE_FLASH_FWD_KEYS_D64 : ENGINE_FLASH_FWD_KEYS_D128;
  const int dq_keys = fast && D == 64 ? ENGINE_FLASH_DQ_KEYS_D64 : TILE;
  const uint32_t s_fwd = (fwd_rows + 2 * nbuf * fwd_keys) * row, s_dq = (2 * dq_rows + 2 * nbuf * dq_keys) * row,
                 s_dkdv = (2 * TILE + nbuf * 2 * step) * row + nbuf * 2 * step * 4;
  auto fwd = D == 64 ? (fast ? flash_attention_fwd_d64 : flash_attention_fwd_d64_simple)
                     : (fast ? flash_attention_fwd_d128 : flash_attention_fwd_d128_simple);
  auto k_dq = D == 64 ? (fast ? flash_attention_bwd_dq_d64 : flash_attention_bwd_dq_d64_simple)
                    : (fast ? flash_attention_bwd_dq_d128 : flash_attention_bwd_dq_d128_simple);
  auto k_dkdv = D == 64 ? (fast ? flash_attention_bwd_dkdv_d64 : flash_attention_bwd_dkdv_d64_simple)
                      : (fast ? flash_attention_bwd_dkdv_d128 : flash_attention_bwd_dkdv_d128_simple);
  launch(fwd, fp, nb_fwd, H, THREADS, s_fwd);
  // The wgmma forward (on a GPU sm_90a only) on the 64-row table, beside.
  double e_wg_out = 0, e_wg_lse = 0, e_ws_out = 0, e_ws_lse = 0;
  if (fast && !fused) {
    std::vector<uint16_t> ob_wg(out.size(), 0xffff);
    std::vector<float> lse_wg(lse.size(), NAN);
    FlashFwdParams wp = fp;
    wp.out = dp(ob_wg.data());
    wp.lse = dp(lse_wg.data());
    wp.blocks = dp(table.data());
    wp.n_blocks = nb;
    wp.wgmma_desc = ENGINE_FLASH_WGMMA_DESC;
    launch(D == 64 ? flash_attention_fwd_wgmma_d64 : flash_attention_fwd_wgmma_d128, wp, nb, H, THREADS,
           D == 64 ? wg_fwd_smem<64>() : wg_fwd_smem<128>());
    e_wg_out = rel(from_bf(ob_wg), out);
    e_wg_lse = rel(lse_wg, lse);
    // The warp-specialised forward (TMA) on the 128-row table.
    std::vector<uint16_t> ob_ws(out.size(), 0xffff);
    std::vector<float> lse_ws(lse.size(), NAN);
    FlashWsParams ws{};
    ws.f = fp;
    ws.f.out = dp(ob_ws.data());
    ws.f.lse = dp(lse_ws.data());
    ws.tq = emu_tmap(qb.data(), D, H, T, D * 2, (uint64_t)H * D * 2, 64, 1, 64);
    ws.tk = emu_tmap(kb.data(), D, KV, T, D * 2, (uint64_t)KV * D * 2, 64, 1, ENGINE_FLASH_WS_KEYS);
    ws.tv = emu_tmap(vb.data(), D, KV, T, D * 2, (uint64_t)KV * D * 2, 64, 1, ENGINE_FLASH_WS_KEYS);
    // Persistent: 3 blocks (or fewer), so that blocks take several items.
    launch(D == 64 ? flash_attention_fwd_ws_d64 : flash_attention_fwd_ws_d128, ws, std::min(nb_fwd * H, 3u), 1,
           ENGINE_FLASH_WS_THREADS, D == 64 ? ws_fwd_smem<64>() : ws_fwd_smem<128>());
    e_ws_out = rel(from_bf(ob_ws), out);
    e_ws_lse = rel(lse_ws, lse);
  }
  launch(flash_attention_delta, bp, (T * H + 3) / 4, 1, 128, 0);
  FlashBwdParams bp_dq = bp;
  bp_dq.blocks = dp(dq_table.data());
  bp_dq.n_blocks = nb_dq;
  if (!fused) launch(k_dq, bp_dq, nb_dq, H, THREADS, s_dq);
  std::vector<float> dq_accum(q.size(), NAN);
  std::vector<uint32_t> dq_sem((size_t)T * H + 2, 0);  // turns, then the ticket counter and the error word
  if (fused) {
    bp.dq_accum = dp(dq_accum.data());
    bp.dq_sem = dp(dq_sem.data());
    const uint32_t step = D == 64 ? ENGINE_FLASH_DKDV_STEP_D64 : ENGINE_FLASH_DKDV_STEP_D128;
    const uint32_t s_fused = s_dkdv + TILE * (step + PAD) * 2 + 16;
    launch(D == 64 ? flash_attention_bwd_fused_d64 : flash_attention_bwd_fused_d128, bp, nb, H, THREADS, s_fused);
    launch(flash_attention_dq_from_accum, bp, (T * H * D + 255) / 256, 1, 256, 0);
  } else {
    launch(k_dkdv, bp, nb, H, THREADS, s_dkdv);
  }
  if (G > 1) launch(flash_attention_dkdv_sum, bp, (T * KV * D + 255) / 256, 1, 256, 0);
  // The Hopper one-pass backwards (on a GPU sm_90a only) on fresh outputs:
  // `run` launches the kernel with the params it is given; then dq from its
  // sums, and with GQA dk, dv from their parts. Errors of dq, dk, dv.
  auto hopper_bwd = [&](auto run) {
    std::vector<uint16_t> dq2(q.size(), 0xffff), dk2(k.size(), 0xffff), dv2(v.size(), 0xffff);
    std::vector<float> acc2(q.size(), NAN), dkp2(G > 1 ? q.size() : 0, NAN), dvp2(G > 1 ? q.size() : 0, NAN);
    std::vector<uint32_t> sem2((size_t)T * H + 2, 0);
    FlashBwdParams wp = bp;
    wp.dq = dp(dq2.data());
    wp.dk = dp(dk2.data());
    wp.dv = dp(dv2.data());
    wp.dk_part = G > 1 ? dp(dkp2.data()) : 0;
    wp.dv_part = G > 1 ? dp(dvp2.data()) : 0;
    wp.dq_accum = dp(acc2.data());
    wp.dq_sem = dp(sem2.data());
    wp.wgmma_desc = ENGINE_FLASH_WGMMA_DESC;
    run(wp);
    launch(flash_attention_dq_from_accum, wp, (T * H * D + 255) / 256, 1, 256, 0);
    if (G > 1) launch(flash_attention_dkdv_sum, wp, (T * KV * D + 255) / 256, 1, 256, 0);
    return std::array<double, 3>{rel(from_bf(dq2), dq), rel(from_bf(dk2), dk), rel(from_bf(dv2), dv)};
  };
  // The wgmma one-pass backward beside the fused one at head_dim 64 and the
  // fast two-pass one at 128.
  std::array<double, 3> e_wg{0, 0, 0}, e_wsb{0, 0, 0};
  const bool wg_bwd = fused ? D == 64 : fast && D == 128;
  if (wg_bwd) {
    e_wg = hopper_bwd([&](const FlashBwdParams& wp) {
      launch(D == 64 ? flash_attention_bwd_wgmma_d64 : flash_attention_bwd_wgmma_d128, wp, nb, H, THREADS,
             D == 64 ? wg_bwd_smem<64>() : wg_bwd_smem<128>());
    });
  }
  // The warp-specialised backward (TMA) on the table of 128-key tiles.
  const bool ws_bwd = fast && !fused;
  if (ws_bwd) {
    const std::vector<uint32_t> ws_table = tiles(ENGINE_FLASH_WS_KEYS);
    e_wsb = hopper_bwd([&](const FlashBwdParams& wp) {
      FlashBwdWsParams wb{};
      wb.b = wp;
      wb.b.blocks = dp(ws_table.data());
      wb.b.n_blocks = ws_table.size() / 2;
      wb.tq = emu_tmap(qb.data(), D, H, T, D * 2, (uint64_t)H * D * 2, 64, 1, 64);
      wb.tdo = emu_tmap(dob.data(), D, H, T, D * 2, (uint64_t)H * D * 2, 64, 1, 64);
      wb.tk = emu_tmap(kb.data(), D, KV, T, D * 2, (uint64_t)KV * D * 2, 64, 1, ENGINE_FLASH_WS_KEYS);
      wb.tv = emu_tmap(vb.data(), D, KV, T, D * 2, (uint64_t)KV * D * 2, 64, 1, ENGINE_FLASH_WS_KEYS);
      launch(D == 64 ? flash_attention_bwd_ws_d64 : flash_attention_bwd_ws_d128, wb, wb.b.n_blocks, H,
             ENGINE_FLASH_WS_THREADS, D == 64 ? ws_bwd_smem<64>() : ws_bwd_smem<128>());
    });
  }
  const double e_out = rel(from_bf(ob), out), e_lse = rel(lse_k, lse), e_dq = rel(from_bf(dqb), dq),
               e_dk = rel(from_bf(dkb), dk), e_dv = rel(from_bf(dvb), dv);
  const bool ok = e_out < 1e-2 && e_lse < 1e-5 && e_dq < 1e-2 && e_dk < 1e-2 && e_dv < 1e-2 && e_wg_out < 1e-2 &&
                  e_wg_lse < 1e-5 && e_ws_out < 1e-2 && e_ws_lse < 1e-5 && e_wg[0] < 1e-2 && e_wg[1] < 1e-2 && e_wg[2] < 1e-2 && e_wsb[0] < 1e-2 && e_wsb[1] < 1e-2 &&
                  e_wsb[2] < 1e-2;
  printf("%s %s d%d h%u/%u tiles %u (fwd %u) lens", ok ? "ok  " : "FAIL", fused ? "fused " : fast ? "fast  " : "simple", D,
         H, KV, nb, nb_fwd);
  for (auto l : lens) printf(" %u", l);
  printf(": out %.2e lse %.2e dq %.2e dk %.2e dv %.2e", e_out, e_lse, e_dq, e_dk, e_dv);
  if (fast && !fused) {
    printf("; wgmma fwd out %.2e lse %.2e; ws fwd out %.2e lse %.2e", e_wg_out, e_wg_lse, e_ws_out, e_ws_lse);
  }
  if (wg_bwd) printf("; wgmma bwd dq %.2e dk %.2e dv %.2e", e_wg[0], e_wg[1], e_wg[2]);
  if (ws_bwd) printf("; ws bwd dq %.2e dk %.2e dv %.2e", e_wsb[0], e_wsb[1], e_wsb[2]);
  printf("\n");
  return ok ? 0 : 1;
}

int main(int argc, char** argv) {
  int bad = 0;
  g_jitter = getenv("FLASH_EMU_JITTER") && *getenv("FLASH_EMU_JITTER") == '1';
  const bool quick = argc > 1;
  for (bool fast : {true, false}) {
    bad += run_case(fast, {1, 7, 63, 65, 130}, 4, 2, 64, 2.0f, 1);
    bad += run_case(fast, {65, 0, 1, 64, 256}, 3, 1, 128, 2.0f, 2);
    if (!quick) {
      bad += run_case(fast, {200, 7}, 2, 2, 64, 8.0f, 3);
      bad += run_case(fast, {129, 63}, 5, 1, 128, 8.0f, 4);
      bad += run_case(fast, {3, 64, 129, 1, 200}, 7, 1, 128, 2.0f, 5);
      bad += run_case(fast, {513}, 2, 1, 64, 4.0f, 6);
      bad += run_case(fast, {100, 37}, 2, 2, 128, 4.0f, 7);  // d128 without GQA: dk, dv straight to bf16
    }
  }
  // GQA 7:1 on the fast kernels in the quick run too (seven heads' dK, dV summed
  // into one KV head), with a 1-token sequence and a partial tile.
  bad += run_case(true, {1, 65}, 7, 1, 64, 2.0f, 8);
  // The one-pass backward: GQA, several sequences, partial tiles; at head_dim
  // 128 its steps are 32 queries and each warp adds half of dq's columns.
  bad += run_case(true, {1, 7, 63, 65, 130}, 4, 2, 64, 2.0f, 1, true);
  bad += run_case(true, {1, 33, 120}, 2, 1, 128, 2.0f, 9, true);
  if (!quick) {
    bad += run_case(true, {200, 7}, 2, 2, 64, 8.0f, 3, true);
    bad += run_case(true, {513}, 7, 1, 64, 4.0f, 6, true);
    bad += run_case(true, {129, 63}, 5, 1, 128, 8.0f, 4, true);
    bad += run_case(true, {100, 37}, 2, 2, 128, 4.0f, 7, true);  // without GQA: dk, dv straight to bf16
  }
  printf("%s\n", bad ? "FAILED" : "all ok");
  return bad;
}
