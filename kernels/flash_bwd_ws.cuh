// The Hopper backward, warp-specialised: TMA, mbarriers and wgmma (sm_90a).
// Included by flash_attention.cu inside its anonymous namespace, after
// flash_fwd_ws.cuh (its TMA, mbarrier and named-barrier helpers) and
// flash_bwd_wgmma.cuh (whose one-pass backward it reorganises).
//
// A block takes a tile of WSB_KEYS (128) keys of one query head by ticket,
// as bwd_wgmma does, and walks the queries from the tile's first key to the
// sequence's end in steps of 64, with three warpgroups:
//   warpgroup 0, the producer:
//     warp 0 (one thread) loads the K and V tiles once, then each step's Q
//       and dO tiles by TMA into a ring of WSB_STAGES buffers (mbarriers
//       q_full: the bytes and warp 1's lse and delta are in; q_empty:
//       every consumer thread is done with the buffer);
//     warp 1 writes each step's lse·log2 e and delta beside its tiles;
//     warps 2 and 3, the dq writer: add each step's dq (the two consumers'
//       parts, in consumer order) to dq_accum in key-tile order, waiting
//       for the tile's turn on the (query step, head) semaphore as
//       bwd_wgmma does, but on their own warps: the consumers hand their
//       parts over in shared memory (mbarriers dq_full, dq_empty) and go on
//       to the next step while the writer waits for its turn and adds.
//   warpgroups 1 and 2, the consumers: keys 64w..64w + 64 of the tile each,
//     with bwd_wgmma's five products: Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ with both
//     operands from shared memory, dV += Pᵀ·dO and dK += dSᵀ·Q with P and
//     dS from registers, dQ = dS·K with dS through shared memory
//     (ldmatrix.trans); dK and dV stay in registers to the end.
// Tiles sit in shared memory as the TMA writes them (128-byte swizzle; see
// flash_fwd_ws.cuh): K-major for the products that reduce along head_dim
// (Sᵀ, dPᵀ: K, V as A, Q, dO as B), MN-major for those that reduce along
// queries or keys (dV, dK: dO, Q as B; dQ: K as B).
//
// Consumer 1's keys all lie after the first step's queries: it skips that
// step's products (its barriers still counted), and the writer takes only
// consumer 0's part there. Queries past the sequence (the TMA's rows of the
// next sequence, or zeros) and keys past it are masked by probs_and_ds.
//
// A wait that lasts about 4 s gives up as in the forward: dk, dv come out
// NaN, and the writer, still in turn, writes NaN into dq_accum and poisons
// the semaphore (so the key tiles after it write NaN too).

#ifdef ENGINE_FLASH_WGMMA_BODY
constexpr int WSB_KEYS = 2 * 64, WSB_STAGES = ENGINE_FLASH_WS_BWD_STAGES;
static_assert(WSB_KEYS == ENGINE_FLASH_WS_KEYS, "K and V load through the forward's tensor maps (boxes of 128 rows)");
// Row strides (elements) of a consumer's dS tile (bf16, [64 keys][64
// queries], as bwd_wgmma's) and of its dq part (fp32, [64 queries][D], rows
// padded by 8 floats against bank conflicts).
constexpr int WSB_DS_LD = WG_DS_LD;
template <int D>
constexpr int wsb_dq_ld() {
  return D + 8;
}
// Registers per thread after the split (setmaxnreg): at head_dim 128 the
// consumers hold dK and dV in fp32 throughout (64 + 64) beside Sᵀ and dPᵀ
// (32 + 32) and need the forward's 240 (at 232 ptxas serialises their
// wgmma), which leaves the producer warpgroup 24; at 64 they fit 232, and
// the producer gets 40. 128·40 + 256·232 fits the SM's 64K, and the 384
// threads' 168 at launch cover the rise: (168 − 40)·128 = (232 − 168)·256.
template <int D>
constexpr uint32_t wsb_producer_regs() {
  return D == 64 ? 40 : WS_PRODUCER_REGS;
}
template <int D>
constexpr uint32_t wsb_consumer_regs() {
  return D == 64 ? 232 : WS_CONSUMER_REGS;
}
static_assert((168 - wsb_producer_regs<64>()) * 128 == (wsb_consumer_regs<64>() - 168) * 256, "the split frees what it takes");
static_assert((168 - wsb_producer_regs<128>()) * 128 == (wsb_consumer_regs<128>() - 168) * 256, "the split frees what it takes");
// Named barriers: consumer w's 128 threads WSB_CONSUMER_BAR + w, the
// writer's 64 threads WSB_WRITER_BAR (barrier 0 is __syncthreads').
constexpr int WSB_CONSUMER_BAR = 1, WSB_WRITER_BAR = 3;

// What the block's threads share besides the tiles: the abort flag, the
// dq writer's outcome of its last turn, the block's tile, and whether a
// writer thread's wait gave up (so that all poison the step alike).
struct WsbShared {
  uint32_t abort, turn_ok, start, h;
  int len, k0;
  uint32_t writer_bad, pad;
};
static_assert(sizeof(WsbShared) == 32, "ws_bwd_smem counts 32 bytes");

// Dynamic shared memory: slack up to a 1024-byte boundary, K and V (128
// keys), the ring of Q, dO tiles and of lse, delta (64 floats each), the
// consumers' dS tiles and dq parts, the mbarriers (kv_full, q_full and
// q_empty per stage, dq_full, dq_empty), and WsbShared.
template <int D>
constexpr uint32_t ws_bwd_smem() {
  return 1024 + 2 * ws_tile<D>(WSB_KEYS) + WSB_STAGES * (2 * ws_tile<D>(64) + 2 * 64 * 4) + 2 * 64 * WSB_DS_LD * 2 +
         2 * 64 * wsb_dq_ld<D>() * 4 + 8 * (3 + 2 * WSB_STAGES) + 32;
}

// `bytes` of fp32 from shared memory at src to global memory at dst by the
// TMA's bulk copy, adding to what is there (in L2) where `add`; this
// thread's copies are read after bulk_commit_wait_read and done (read and
// written) after bulk_wait_all. Both
// addresses and the size are multiples of 16 bytes.
__device__ __forceinline__ void bulk_to_global(float* dst, const float* src, uint32_t bytes, bool add) {
#ifdef ENGINE_FLASH_EMU
  emu_bulk_to_global(dst, src, bytes, add);
#else
  if (add) {
    asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst),
                 "r"(smem_u32(src)), "r"(bytes)
                 : "memory");
  } else {
    asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(dst), "r"(smem_u32(src)),
                 "r"(bytes)
                 : "memory");
  }
#endif
}
// Closes this thread's bulk copies into a group and waits until their
// sources are read (the shared memory may be rewritten).
__device__ __forceinline__ void bulk_commit_wait_read() {
#ifdef ENGINE_FLASH_EMU
  emu_bulk_wait(true);
#else
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
  asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
#endif
}
// Waits until this thread's committed bulk copies are complete: their
// writes to global memory done (and visible to this thread).
__device__ __forceinline__ void bulk_wait_all() {
#ifdef ENGINE_FLASH_EMU
  emu_bulk_wait(false);
#else
  asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
#endif
}
// Orders this thread's generic-proxy accesses to global memory (and the
// acquire of a turn before them) before its later async-proxy ones (a bulk
// reduce-add into rows another block's bulk copies wrote).
__device__ __forceinline__ void fence_proxy_async_global() {
#ifdef ENGINE_FLASH_WGMMA_ASM
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
#endif
}

template <int D>
__device__ __forceinline__ void bwd_ws(const FlashBwdWsParams& pw) {
  extern __shared__ __align__(16) unsigned char smem[];
  const FlashBwdParams& p = pw.b;
  constexpr int NJ = 64 / 8, DS_LD = WSB_DS_LD, DQ_LD = wsb_dq_ld<D>();
  constexpr uint32_t KVT = ws_tile<D>(WSB_KEYS), QT = ws_tile<D>(64);
  if (blockDim.x != ENGINE_FLASH_WS_THREADS || dyn_smem_bytes() < ws_bwd_smem<D>()) return;
  unsigned char* k_s = smem + ((1024 - (smem_u32(smem) & 1023)) & 1023);
  unsigned char* v_s = k_s + KVT;
  unsigned char* qdo_s = v_s + KVT;  // stage s: Q at qdo_s + 2·s·QT, dO after it
  float* f_s = reinterpret_cast<float*>(qdo_s + 2 * WSB_STAGES * QT);  // stage s: lse at f_s + 128·s, delta after
  bf16* ds_s = reinterpret_cast<bf16*>(f_s + 2 * 64 * WSB_STAGES);     // consumer w's at ds_s + w·64·DS_LD
  float* dq_s = reinterpret_cast<float*>(ds_s + 2 * 64 * DS_LD);        // consumer w's at dq_s + w·64·DQ_LD
  uint64_t* kv_full = reinterpret_cast<uint64_t*>(dq_s + 2 * 64 * DQ_LD);
  uint64_t* q_full = kv_full + 1;
  uint64_t* q_empty = q_full + WSB_STAGES;
  uint64_t* dq_full = q_empty + WSB_STAGES;
  uint64_t* dq_empty = dq_full + 1;
  volatile WsbShared* sh = reinterpret_cast<volatile WsbShared*>(dq_empty + 1);
  volatile uint32_t* abort = &sh->abort;
  uint32_t* counters = ptr<uint32_t>(p.dq_sem) + (size_t)p.tokens * p.n_heads;  // the ticket counter, the error word
  if (threadIdx.x == 0) {
    *abort = 0;
    sh->writer_bad = 0;
    // The block's tile by ticket (a head past the last: none).
    const uint32_t ticket = atomicAdd(counters, 1u);
    const uint32_t bx = ticket % p.n_blocks, by = ticket / p.n_blocks;
    const Tile tl = tile_of(ptr<const uint32_t>(p.blocks), ptr<const uint32_t>(p.cu_seqlens),
                            by < p.n_heads ? p.n_blocks - 1 - bx : 0, WSB_KEYS);
    sh->start = tl.start;
    sh->len = tl.len;
    sh->k0 = tl.t0;
    sh->h = by;
    mbar_init(kv_full, 1);
    for (int s = 0; s < WSB_STAGES; ++s) {
      mbar_init(q_full + s, 1 + 32);  // the TMA thread's arrival (with the bytes), warp 1's 32
      mbar_init(q_empty + s, WS_CONSUMERS);
    }
    mbar_init(dq_full, WS_CONSUMERS);
    mbar_init(dq_empty, 64);
    mbar_init_fence();
  }
  __syncthreads();  // the last block-wide barrier: the warpgroups part here
  if (sh->h >= p.n_heads) return;
  // The producer's roles read the tile from shared memory where they use it
  // (24 registers leave no room to hold it).
  bool ok = true;
  if (threadIdx.x < 128) {
    setmaxnreg_dec<wsb_producer_regs<D>()>();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (warp == 0) {
      if (lane != 0) return;
      tma_prefetch(&pw.tq);
      tma_prefetch(&pw.tk);
      tma_prefetch(&pw.tv);
      tma_prefetch(&pw.tdo);
      const uint32_t h = sh->h, kvh = h / (p.n_heads / p.n_kv_heads);
      const int row0 = (int)sh->start + sh->k0, n_steps = (sh->len - sh->k0 + 63) / 64;
      mbar_arrive_expect_tx(kv_full, 2 * KVT);
      tma_tile<D>(k_s, &pw.tk, WSB_KEYS, kvh, row0, kv_full);
      tma_tile<D>(v_s, &pw.tv, WSB_KEYS, kvh, row0, kv_full);
      for (int i = 0; i < n_steps; ++i) {
        const int s = i % WSB_STAGES, row = row0 + 64 * i;
        ok = mbar_wait(q_empty + s, ((i / WSB_STAGES) & 1) ^ 1, ok, abort);
        if (ok) {
          mbar_arrive_expect_tx(q_full + s, 2 * QT);
          tma_tile<D>(qdo_s + 2 * s * QT, &pw.tq, 64, h, row, q_full + s);
          tma_tile<D>(qdo_s + (2 * s + 1) * QT, &pw.tdo, 64, h, row, q_full + s);
        }
      }
      return;
    }
    if (warp == 1) {
      for (int i = 0, q0 = sh->k0; q0 < sh->len; ++i, q0 += 64) {
        const int s = i % WSB_STAGES;
        ok = mbar_wait(q_empty + s, ((i / WSB_STAGES) & 1) ^ 1, ok, abort);
        if (!ok) break;
        load_lse_delta<64>(p, f_s + 2 * 64 * s, sh->start, q0, sh->len, sh->h, lane, 32);
        mbar_arrive(q_full + s);
      }
      return;
    }
    // The dq writer (warps 2 and 3): per step, thread r adds row r of
    // consumer 1's part to consumer 0's in shared memory and sends the sum
    // to dq_accum by the TMA's bulk copy (the first key tile) or bulk
    // reduce-add (the others: the add happens in L2, so no thread holds a
    // row), in turn.
    // Its state is kept small (the producer has 24 registers): the row,
    // the semaphore and the queries left advance by a step each time.
    const int wt = threadIdx.x - 64;
    const uint32_t turn = (uint32_t)(sh->k0 / WSB_KEYS);
    const size_t step = (size_t)64 * p.n_heads;  // (token, head) rows per step
    const size_t first = (size_t)(sh->start + sh->k0) * p.n_heads + sh->h;  // the first query's (token, head) row
    float* row = ptr<float>(p.dq_accum) + (first + (size_t)wt * p.n_heads) * D;
    uint32_t* sem = ptr<uint32_t>(p.dq_sem) + first;
    uint32_t* error = counters + 1;
    int left = sh->len - sh->k0;  // queries from this step's first to the sequence's end
    for (int i = 0; left > 0; ++i, left -= 64, row += step * D, sem += step) {
      const int n_rows = min(64, left);
      ok = mbar_wait<false>(dq_full, i & 1, ok, abort);
      if (wt == 0) sh->turn_ok = wait_turn_here(sem, turn, error, i == 0 || sh->turn_ok);
      // Thread r adds row r of consumer 1's part (none at step 0) to
      // consumer 0's, then sends it.
      float* sum = dq_s + wt * DQ_LD;
      if (wt < n_rows && (i > 0 || !ok)) {
#pragma unroll 1
        for (int c = 0; c < D; c += 4) {
          float4* a = reinterpret_cast<float4*>(sum + c);
          const float4 b = *reinterpret_cast<const float4*>(sum + 64 * DQ_LD + c);
          *a = ok ? make_float4(a->x + b.x, a->y + b.y, a->z + b.z, a->w + b.w) : make_float4(NAN, NAN, NAN, NAN);
        }
        fence_proxy_async();  // these stores visible to the bulk copy's read
      }
      if (!ok) sh->writer_bad = 1;  // every writer thread poisons alike (read after the barrier)
      bar_sync(WSB_WRITER_BAR, 64);  // the turn is known
      const bool poison = sh->writer_bad || !sh->turn_ok;
      if (wt < n_rows) {
        fence_proxy_async_global();  // the turn's acquire before the reduce-add's access
        // A poisoned row is copied as it stands (NaN, or a part without the
        // tiles before it: the error word is set, so dq comes out NaN).
        bulk_to_global(row, sum, D * 4, turn != 0 && !poison);
        bulk_commit_wait_read();  // the shared source is read: the consumers may rewrite it
      }
      if (ok) mbar_arrive(dq_empty);  // the consumers may write the next step's parts
      if (wt < n_rows) bulk_wait_all();  // the row's sum is in dq_accum
      bar_sync(WSB_WRITER_BAR, 64);      // every row of the step is
      if (wt == 0) {
        if (poison) {
          atomicOr(sem, SEM_POISON);
          atomicOr(error, 1u);
        } else {
          __threadfence();  // the additions visible device-wide before the turn moves
          atomicCAS(sem, turn, turn + 1);
        }
      }
    }
    return;
  }
  setmaxnreg_inc<wsb_consumer_regs<D>()>();
  const uint32_t start = sh->start, h = sh->h, kvh = h / (p.n_heads / p.n_kv_heads);
  const int k0 = sh->k0, len = sh->len, n_steps = (len - k0 + 63) / 64;
  const int cw = threadIdx.x / 128 - 1;               // which consumer
  const int warp = (threadIdx.x >> 5) & 3, r0 = 16 * warp;  // this warp's keys r0.. of the consumer's 64
  const int kc0 = k0 + 64 * cw;                        // the consumer's first key
  // The consumer's K and V rows: 64·cw.. of every head_dim block.
  const uint32_t k_addr = smem_u32(k_s) + 64 * cw * 128, v_addr = smem_u32(v_s) + 64 * cw * 128;
  bf16* ds_c = ds_s + cw * 64 * DS_LD;
  float* dq_c = dq_s + cw * 64 * DQ_LD;
  auto arrive = [&](uint64_t* bar) {
    if (ok) mbar_arrive(bar);
  };
  float dk[D / 8][4], dv[D / 8][4];
  zero_acc(dk);
  zero_acc(dv);
  ok = mbar_wait(kv_full, 0, ok, abort);
  for (int i = 0; i < n_steps; ++i) {
    const int s = i % WSB_STAGES, q0 = k0 + 64 * i;
    ok = mbar_wait(q_full + s, (i / WSB_STAGES) & 1, ok, abort);
    if (cw == 1 && i == 0) {
      // Every key of this consumer lies after every query of the step.
      arrive(q_empty + s);
      ok = mbar_wait(dq_empty, 1, ok, abort);
      arrive(dq_full);
      continue;
    }
    const uint32_t q_addr = smem_u32(qdo_s + 2 * s * QT), do_addr = q_addr + QT;
    const float* lse_s = f_s + 2 * 64 * s;
    const float* dl_s = lse_s + 64;
    // Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ (rows: the warp's keys; columns: the step's
    // queries): k-step kk is 16 columns of head_dim block kk / 4, 32·(kk % 4)
    // bytes into each row.
    float st[NJ][4], dp[NJ][4];
    zero_acc(st);
    zero_acc(dp);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t at = (kk % 4) * 32;
      const uint32_t kb = (kk / 4) * WSB_KEYS * 128 + at, qb = (kk / 4) * 64 * 128 + at;
      wgmma_ss(st, wg_desc_sw128(k_addr + kb, 16, 1024), wg_desc_sw128(q_addr + qb, 16, 1024));
      wgmma_ss(dp, wg_desc_sw128(v_addr + kb, 16, 1024), wg_desc_sw128(do_addr + qb, 16, 1024));
    }
    wgmma_commit();
    wgmma_wait<0>();
    uint32_t pa[NJ / 2][4], dsa[NJ / 2][4];
    p_ds_frags(st, dp, kc0 + r0, q0, len, p.scale, lse_s, dl_s, ds_c, DS_LD, r0, pa, dsa);
    fence_acc(dv);
    fence_acc(dk);
    // dV += Pᵀ·dO, dK += dSᵀ·Q: k-step kk is the step's queries 16kk..,
    // rows 16kk.. of every head_dim block of the dO and Q tiles.
    auto dv_dk = [&] {
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < NJ / 2; ++kk) {
        wgmma_rs<D, true>(dv, pa[kk], wg_desc_sw128(do_addr + kk * 16 * 128, 64 * 128, 1024));
        wgmma_rs<D, true>(dk, dsa[kk], wg_desc_sw128(q_addr + kk * 16 * 128, 64 * 128, 1024));
      }
      wgmma_commit();
    };
    if constexpr (D == 128) {
      // At head_dim 128, dV and dK finish before dQ starts (registers, as
      // in bwd_wgmma); then the stage's Q, dO, lse and delta are free.
      dv_dk();
      wgmma_wait<0>();
      fence_acc(dv);
      fence_acc(dk);
      arrive(q_empty + s);
    }
    bar_sync(WSB_CONSUMER_BAR + cw, 128);  // dS stored by every warp of this consumer
    // dQ = dS·K: A = dS (rows: the warp's 16 queries; columns: the
    // consumer's 64 keys), B = the consumer's K rows, MN-major; 64 columns
    // of head_dim at a time (at 128, half the accumulators), each into the
    // consumer's buffer once the writer has read the last step's.
    uint32_t da[64 / 16][4];
#pragma unroll
    for (int kk = 0; kk < 64 / 16; ++kk) ld_a_t<true>(ds_c, DS_LD, kk * 16, warp * 16, da[kk]);
    bar_sync(WSB_CONSUMER_BAR + cw, 128);  // dS read by every warp: the next step may rewrite it
    ok = mbar_wait(dq_empty, (i & 1) ^ 1, ok, abort);
#pragma unroll
    for (int c = 0; c < D / 64; ++c) {
      float dq[64 / 8][4];
      zero_acc(dq);
      fence_frag(da);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 64 / 16; ++kk) {
        wgmma_rs<64, true>(dq, da[kk], wg_desc_sw128(k_addr + c * WSB_KEYS * 128 + kk * 16 * 128, WSB_KEYS * 128, 1024));
      }
      wgmma_commit();
      if constexpr (D == 64) {
        // At head_dim 64, dV and dK run while dQ is handed over.
        dv_dk();
        wgmma_wait<1>();
      } else {
        wgmma_wait<0>();
      }
      fence_acc(dq);
      const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
      for (int n = 0; n < 64 / 8; ++n) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          *reinterpret_cast<float2*>(dq_c + (r0 + g + 8 * hf) * DQ_LD + 64 * c + 8 * n + 2 * t) =
              make_float2(dq[n][2 * hf], dq[n][2 * hf + 1]);
        }
      }
    }
    fence_proxy_async();  // the part's stores visible to the bulk copy's read (the async proxy)
    arrive(dq_full);
    if constexpr (D == 64) {
      wgmma_wait<0>();
      fence_acc(dv);
      fence_acc(dk);
      arrive(q_empty + s);
    }
  }
  ok = ok && !*abort;
  if (!ok) {  // a wait gave up: dk, dv NaN, not silently wrong
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = NAN;
    }
  }
  store_dkdv<D>(p, dk, dv, start, kc0, len, h, kvh, r0);
}
#else
template <int D>
__device__ __forceinline__ void bwd_ws(const FlashBwdWsParams&) {}
#endif
