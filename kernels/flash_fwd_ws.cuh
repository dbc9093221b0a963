// The Hopper forward, warp-specialised: TMA, mbarriers and wgmma (sm_90a).
// Included by flash_attention.cu inside its anonymous namespace, after
// fwd_wgmma: it uses that file's wgmma helpers, online softmax and epilogue.
//
// The grid is persistent (a block per SM, or fewer): a block walks work
// items, each ENGINE_FLASH_FWD_TILE (128) query rows of one head, with
// three warpgroups (FlashAttention-3's structure):
//   warpgroup 0, the producer: one thread loads each item's Q tile (once the
//     consumers are done with the item before's: mbarriers q_full, q_empty),
//     then its K and V tiles of WS_KT keys into a ring of WS_STAGES buffers
//     shared by all items, by TMA. Each buffer has two mbarriers: `full` (its bytes have landed:
//     the producer arms it with the byte count, the TMA completes it) and
//     `empty` (every consumer thread is done reading it: 256 arrivals).
//   warpgroups 1 and 2, the consumers: 64 query rows each. S = Q·Kᵀ with
//     both operands from shared memory (wgmma_ss), O += P·V with P from
//     registers, and fwd_wgmma's online softmax and pipelining: S_j is
//     issued with P_{j−1}·V_{j−1}, K_j released once S_j is done, V_{j−1}
//     once its product is. The two consumers take turns to issue their
//     products (FlashAttention-3's ping-pong: named barriers 1 and 2), so
//     one's softmax runs while the other's products keep the tensor cores
//     busy; consumer 0 goes first.
// So the loads run ahead of the products on their own warps (into the next
// item while the consumers finish one), and no consumer thread spends an
// instruction on addresses or copies.
//
// Tiles sit in shared memory as the TMA writes them with the 128-byte
// swizzle: a tile of R rows × D columns is D/64 column blocks of R rows ×
// 128 bytes, and the 16-byte chunk c of row r lies at chunk c ^ (r % 8). The
// swizzle is of address bits, so every block starts on a 1024-byte
// boundary. That is wgmma's 128-byte-swizzle canonical layout (PTX ISA,
// "Shared Memory Matrix Layout"): K-major for Q and K (stride byte offset
// 1024 between groups of 8 rows; leading byte offset unused; a k-step of 16
// columns is 32 bytes further into the same block), MN-major for V (stride
// 1024 between groups of 8 keys, leading byte offset R·128 between column
// blocks).
//
// Rows of Q, K, V past the sequence are the next sequence's (or, past the
// last token, the TMA's zeros): their scores are masked and their rows
// never stored. Both consumers run every key step of the block (the first
// one's rows see only part of the last), so each empty barrier sees all
// 256 consumer threads on every use.
//
// A wait that lasts about 4 s gives up and tells the block (a flag in
// shared memory): every thread then stops waiting, arriving and loading,
// and the consumers write NaN. A bug then shows as NaN in the tests, not as
// a hung GPU.

#ifdef ENGINE_FLASH_WGMMA_BODY
constexpr int WS_KT = ENGINE_FLASH_WS_KEYS, WS_STAGES = ENGINE_FLASH_WS_STAGES;
constexpr uint32_t WS_CONSUMERS = ENGINE_FLASH_WS_THREADS - 128;
static_assert(WS_CONSUMERS == 256 && ENGINE_FLASH_FWD_TILE == 128, "two consumer warpgroups of 64 rows");
static_assert(WS_KT == 64 || WS_KT == 128, "S = Q·Kᵀ is one wgmma_ss (m64n64k16 or m64n128k16) per k-step");
// Registers per thread after the split (setmaxnreg): the producer needs few,
// the consumers hold S and O in fp32 and P twice in bf16 (at head_dim 128 and
// 128 keys: 64 + 64 + 32 + 32). 128·24 + 256·240 fits the SM's 64K.
constexpr uint32_t WS_PRODUCER_REGS = 24, WS_CONSUMER_REGS = 240;

// Bytes of a tile of `rows` rows (D/64 column blocks of rows·128 bytes).
template <int D>
constexpr uint32_t ws_tile(int rows) {
  return (uint32_t)rows * D * 2;
}

// Dynamic shared memory: slack up to a 1024-byte boundary, Q (both
// consumers' 64 rows), the K and V rings, then the mbarriers (q_full,
// q_empty, and k_full, k_empty, v_full, v_empty per stage) and the abort
// flag (8 bytes).
template <int D>
constexpr uint32_t ws_fwd_smem() {
  return 1024 + ws_tile<D>(128) + 2 * WS_STAGES * ws_tile<D>(WS_KT) + 8 * (3 + 4 * WS_STAGES);
}

// A shared-memory matrix descriptor with the 128-byte swizzle (mode 1 in
// bits 62–63; base offset 0: every block is 1024-byte aligned).
__device__ __forceinline__ uint64_t wg_desc_sw128(uint32_t addr, uint32_t lead, uint32_t stride) {
  return wg_desc(addr, lead, stride) | (1ull << 62);
}

__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
#ifdef ENGINE_FLASH_EMU
  emu_mbar_init(bar, count);
#else
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count) : "memory");
#endif
}

// The inits visible to the TMA's completions (the async proxy); the block
// barrier after it makes them visible to the other threads.
__device__ __forceinline__ void mbar_init_fence() {
#ifndef ENGINE_FLASH_EMU
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
#ifdef ENGINE_FLASH_EMU
  emu_mbar_arrive(bar);
#else
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
#endif
}

// This thread's arrival, and `bytes` more for the phase to wait for.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
#ifdef ENGINE_FLASH_EMU
  emu_mbar_arrive_expect_tx(bar, bytes);
#else
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes)
               : "memory");
#endif
}

// Waits until the phase of parity `parity` has completed (the phase before
// the first, parity 1, counts as completed). False without waiting if `ok`
// is already false or another thread of the block gave up (*abort set);
// false, setting *abort, if it gives up itself after about 4 s. A thread
// that got false stops arriving on mbarriers and issuing loads, so no
// phase completes on a partial count and the block ends (with NaN out).
// TIMED false: no timer of its own, for a waiter that is never the only
// one (the backward's dq writer waits for the consumers, whose own waits
// are timed): it gives up only once another thread has.
template <bool TIMED = true>
__device__ __forceinline__ bool mbar_wait(uint64_t* bar, uint32_t parity, bool ok, volatile uint32_t* abort) {
  if (!ok || *abort) return false;
#ifdef ENGINE_FLASH_EMU
  return emu_mbar_wait(bar, parity);
#else
  // The timer's low 32 bits: they wrap every 4.29 s, past the 4 s limit,
  // so the difference is right (and the wait needs 2 registers fewer).
  uint32_t t0 = 0;
  for (uint32_t spin = 0;; ++spin) {
    uint32_t done;
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_u32(bar)), "r"(parity)
        : "memory");
    if (done) return true;
    if ((spin & 1023) == 0) {
      if (*abort) return false;
      if (!TIMED) continue;
      uint32_t t;
      asm volatile("mov.u32 %0, %%globaltimer_lo;\n" : "=r"(t));
      if (spin == 0) {
        t0 = t;
      } else if (t - t0 > 4000000000u) {
        *abort = 1;
        return false;
      }
    }
  }
#endif
}

// The box of `map` at coordinates (c0 along head_dim, c1 the head, c2 the
// token) into shared memory at dst, completing its bytes on bar.
__device__ __forceinline__ void tma_load(void* dst, const EngineTmap* map, int c0, int c1, int c2, uint64_t* bar) {
#ifdef ENGINE_FLASH_EMU
  emu_tma_load_3d(dst, map, c0, c1, c2, bar);
#else
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(
          smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(smem_u32(bar))
      : "memory");
#endif
}

// This warpgroup's registers per thread lowered / raised to N (every thread
// of the warpgroup executes it).
template <uint32_t N>
__device__ __forceinline__ void setmaxnreg_dec() {
#ifndef ENGINE_FLASH_EMU
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <uint32_t N>
__device__ __forceinline__ void setmaxnreg_inc() {
#ifndef ENGINE_FLASH_EMU
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

// Named barriers over the two consumer warpgroups (barrier 0 is
// __syncthreads'): bar_sync waits until `n` threads have arrived at barrier
// `id`, itself included; bar_arrive counts this thread and goes on.
constexpr int WS_TURN_BAR = 1;  // consumer w's turn: barrier WS_TURN_BAR + w
__device__ __forceinline__ void bar_sync(int id, int n) {
#ifdef ENGINE_FLASH_EMU
  emu_bar_sync(id, n);
#else
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory");
#endif
}
__device__ __forceinline__ void bar_arrive(int id, int n) {
#ifdef ENGINE_FLASH_EMU
  emu_bar_arrive(id, n);
#else
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(n) : "memory");
#endif
}

__device__ __forceinline__ void tma_prefetch(const EngineTmap* map) {
#ifndef ENGINE_FLASH_EMU
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
#endif
}

// Rows row .. row + rows of one head of `map` (every head_dim block) into
// the tile at dst.
template <int D>
__device__ __forceinline__ void tma_tile(unsigned char* dst, const EngineTmap* map, int rows, uint32_t head, int row,
                                         uint64_t* bar) {
#pragma unroll
  for (int c = 0; c < D / 64; ++c) tma_load(dst + c * rows * 128, map, c * 64, (int)head, row, bar);
}

template <int D>
__device__ __forceinline__ void fwd_ws(const FlashWsParams& pw) {
  extern __shared__ __align__(16) unsigned char smem[];
  const FlashFwdParams& p = pw.f;
  constexpr int KT = WS_KT, NJ = KT / 8;
  constexpr uint32_t QW = ws_tile<D>(64), KV = ws_tile<D>(KT);
  const uint32_t n_items = p.n_blocks * p.n_heads;
  if (blockDim.x != ENGINE_FLASH_WS_THREADS || dyn_smem_bytes() < ws_fwd_smem<D>()) return;
  if (blockIdx.x >= n_items || blockIdx.y != 0) return;
  unsigned char* q_s = smem + ((1024 - (smem_u32(smem) & 1023)) & 1023);  // consumer w's Q at q_s + w·QW
  unsigned char* k_s = q_s + 2 * QW;                                         // K stage s at k_s + s·KV
  unsigned char* v_s = k_s + WS_STAGES * KV;                                 // V stage s at v_s + s·KV
  uint64_t* q_full = reinterpret_cast<uint64_t*>(v_s + WS_STAGES * KV);
  uint64_t* q_empty = q_full + 1;
  uint64_t* k_full = q_empty + 1;
  uint64_t* k_empty = k_full + WS_STAGES;
  uint64_t* v_full = k_empty + WS_STAGES;
  uint64_t* v_empty = v_full + WS_STAGES;
  volatile uint32_t* abort = reinterpret_cast<volatile uint32_t*>(v_empty + WS_STAGES);
  if (threadIdx.x == 0) {
    *abort = 0;
    mbar_init(q_full, 1);
    mbar_init(q_empty, WS_CONSUMERS);
    for (int s = 0; s < WS_STAGES; ++s) {
      mbar_init(k_full + s, 1);
      mbar_init(v_full + s, 1);
      mbar_init(k_empty + s, WS_CONSUMERS);
      mbar_init(v_empty + s, WS_CONSUMERS);
    }
    mbar_init_fence();
  }
  __syncthreads();  // the last block-wide barrier: the warpgroups part here
  // The block's work items, in the order every warpgroup walks them: item
  // i is (tile i / n_heads of the table, head i % n_heads), so the longest
  // tiles of every head come first; block b takes b, b + gridDim.x, ...
  struct Item {
    Tile tl;
    uint32_t h;
    int n_kt;  // key steps
  };
  auto item = [&](uint32_t i) {
    Item it;
    it.tl = tile_of(ptr<const uint32_t>(p.blocks), ptr<const uint32_t>(p.cu_seqlens), i / p.n_heads,
                    ENGINE_FLASH_FWD_TILE);
    it.h = i % p.n_heads;
    it.n_kt = (min(it.tl.t0 + ENGINE_FLASH_FWD_TILE, it.tl.len) + KT - 1) / KT;
    return it;
  };
  const uint32_t group = p.n_heads / p.n_kv_heads;
  bool ok = true;
  if (threadIdx.x < 128) {
    setmaxnreg_dec<WS_PRODUCER_REGS>();
    if (threadIdx.x != 0) return;
    tma_prefetch(&pw.tq);
    tma_prefetch(&pw.tk);
    tma_prefetch(&pw.tv);
    // Load u of a K or V stage waits for the consumers' release of load
    // u − 1 (the first load's wait passes at once); `n` counts the K (and
    // V) tiles loaded so far, over all items.
    uint32_t n = 0, k = 0;
    for (uint32_t i = blockIdx.x; i < n_items; i += gridDim.x, ++k) {
      const Item w = item(i);
      const int q0 = w.tl.t0;
      // Q once the consumers are done with the item before's (every S of
      // it retired). Consumer 1's Q only where it has rows (its rows are
      // never stored otherwise, so what its buffer holds does not matter):
      // a load saved, and no box wholly past the tensor's last token.
      ok = mbar_wait(q_empty, (k & 1) ^ 1, ok, abort);
      const int n_q = q0 + 64 < w.tl.len ? 2 : 1;
      if (ok) {
        mbar_arrive_expect_tx(q_full, n_q * QW);
        for (int c = 0; c < n_q; ++c) {
          tma_tile<D>(q_s + c * QW, &pw.tq, 64, w.h, (int)w.tl.start + q0 + 64 * c, q_full);
        }
      }
      for (int j = 0; j < w.n_kt; ++j, ++n) {
        const int s = n % WS_STAGES, row = (int)w.tl.start + j * KT;
        const uint32_t parity = ((n / WS_STAGES) & 1) ^ 1;
        ok = mbar_wait(k_empty + s, parity, ok, abort);
        if (ok) {
          mbar_arrive_expect_tx(k_full + s, KV);
          tma_tile<D>(k_s + s * KV, &pw.tk, KT, w.h / group, row, k_full + s);
        }
        ok = mbar_wait(v_empty + s, parity, ok, abort);
        if (ok) {
          mbar_arrive_expect_tx(v_full + s, KV);
          tma_tile<D>(v_s + s * KV, &pw.tv, KT, w.h / group, row, v_full + s);
        }
      }
    }
    return;
  }
  setmaxnreg_inc<WS_CONSUMER_REGS>();
  const int cw = threadIdx.x / 128 - 1;  // which consumer
  const int r0 = 64 * cw + 16 * ((threadIdx.x >> 5) & 3);  // this warp's first row in the block's tile
  const size_t q_stride = (size_t)p.n_heads * D;
  const float sl2 = p.scale * LOG2E;
  const uint32_t q_addr = smem_u32(q_s + cw * QW), k_addr = smem_u32(k_s), v_addr = smem_u32(v_s);
  float o[D / 8][4], m[2], l[2];
  // S = Q·Kᵀ of K tile n into s (issued, not waited for): k-step kk is 16
  // columns of head_dim block kk / 4, 32·(kk % 4) bytes into each row.
  float s[NJ][4];
  auto issue_s = [&](uint32_t n) {
    zero_acc(s);
    wgmma_fence();
    const uint32_t kb = k_addr + (n % WS_STAGES) * KV;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t at = (kk % 4) * 32;
      wgmma_ss(s, wg_desc_sw128(q_addr + (kk / 4) * 64 * 128 + at, 16, 1024),
               wg_desc_sw128(kb + (kk / 4) * KT * 128 + at, 16, 1024));
    }
    wgmma_commit();
  };
  // O += P·V of V tile n, P as A fragments (issued, not waited for): k-step
  // kk is keys 16kk..16kk + 16, rows 16kk.. of every head_dim block.
  uint32_t pa[KT / 16][4];
  auto issue_pv = [&](uint32_t n) {
    fence_frag(pa);
    fence_acc(o);
    wgmma_fence();
    const uint32_t vb = v_addr + (n % WS_STAGES) * KV;
#pragma unroll
    for (int kk = 0; kk < KT / 16; ++kk) wgmma_rs<D, true>(o, pa[kk], wg_desc_sw128(vb + kk * 16 * 128, KT * 128, 1024));
    wgmma_commit();
  };
  // S of key step j (done) → P in pn, as fwd_wgmma; the factor for O in c.
  uint32_t pn[KT / 16][4];
  float c[2];
  auto softmax = [&](const Item& w, int j) {
    fence_acc(s);
    const int k0 = j * KT;
    // Only the diagonal step and a sequence's last need the mask: the
    // others skip its arithmetic (a branch, not a per-element test).
    if (k0 + KT > w.tl.t0 + 64 * cw || k0 + KT > w.tl.len) {
      softmax_scores<NJ, 1>(s, m, l, c, w.tl.t0 + r0, k0, w.tl.len, true, sl2);
    } else {
      softmax_scores<NJ, 0>(s, m, l, c, w.tl.t0 + r0, k0, w.tl.len, false, sl2);
    }
    c_to_a(s, pn);
  };
  auto take_p = [&] { copy_frags(pn, pa); };
  // Turns: for each item each consumer issues n_kt + 1 batches of products
  // (key steps 0 .. n_kt − 1, then the last P·V), each after its own turn
  // comes and before handing the turn to the other. Consumer 1 hands
  // consumer 0 its first turn; consumer 0 takes one turn more at the end
  // (consumer 1's last hand-over), so both barriers end balanced.
  const int own = WS_TURN_BAR + cw, other = WS_TURN_BAR + 1 - cw;
  if (cw == 1) bar_arrive(other, 2 * 128);
  uint32_t n = 0, k = 0;  // K/V tiles consumed before this item; items done
  auto arrive = [&](uint64_t* bar) {
    if (ok) mbar_arrive(bar);
  };
  for (uint32_t i = blockIdx.x; i < n_items; i += gridDim.x, ++k) {
    const Item w = item(i);
#pragma unroll
    for (int d = 0; d < D / 8; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.0f;
    ok = mbar_wait(q_full, k & 1, ok, abort);
    for (int j = 0; j < w.n_kt; ++j) {
      const uint32_t nj = n + j;
      ok = mbar_wait(k_full + nj % WS_STAGES, (nj / WS_STAGES) & 1, ok, abort);
      if (j > 0) ok = mbar_wait(v_full + (nj - 1) % WS_STAGES, ((nj - 1) / WS_STAGES) & 1, ok, abort);
      bar_sync(own, 2 * 128);
      issue_s(nj);
      if (j > 0) {
        issue_pv(nj - 1);
        bar_arrive(other, 2 * 128);
        wgmma_wait<1>();  // S_j
        arrive(k_empty + nj % WS_STAGES);
        // The item's last S is done: its Q may be replaced by the next's.
        if (j == w.n_kt - 1) arrive(q_empty);
        softmax(w, j);
        wgmma_wait<0>();  // P_{j−1}·V_{j−1}
        arrive(v_empty + (nj - 1) % WS_STAGES);
        fence_acc(o);
        fence_frag(pa);
        rescale_rows<D>(o, c);
      } else {
        bar_arrive(other, 2 * 128);
        wgmma_wait<0>();
        arrive(k_empty + nj % WS_STAGES);
        if (w.n_kt == 1) arrive(q_empty);
        softmax(w, j);  // O is still zero: no factor to apply
      }
      take_p();
    }
    const uint32_t last = n + w.n_kt - 1;
    ok = mbar_wait(v_full + last % WS_STAGES, (last / WS_STAGES) & 1, ok, abort);
    bar_sync(own, 2 * 128);
    issue_pv(last);
    bar_arrive(other, 2 * 128);
    wgmma_wait<0>();
    arrive(v_empty + last % WS_STAGES);
    fence_acc(o);
    ok = ok && !*abort;
    if (!ok) l[0] = l[1] = NAN;  // a wait gave up: out and lse NaN, not silently wrong
    const int q0 = w.tl.t0;
    const size_t q_row0 = (size_t)(w.tl.start + q0) * q_stride + (size_t)w.h * D;
    finish_rows<D>(p, o, m, l, q_row0, q_stride, r0, w.tl.len - q0, w.tl.start, q0 + r0, w.tl.len, w.h);
    n += w.n_kt;
  }
  if (cw == 0) bar_sync(own, 2 * 128);
}
#else
template <int D>
__device__ __forceinline__ void fwd_ws(const FlashWsParams&) {}
#endif
