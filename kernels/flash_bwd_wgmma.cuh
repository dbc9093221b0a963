// The Hopper backward on wgmma (sm_90a). Included by flash_attention.cu
// inside its anonymous namespace, after flash_wgmma.cuh.
//
// bwd_dkdv's one-pass backward (DQ) with its five products on wgmma, one
// warpgroup per tile of 64 keys (warp w: keys 16w..16w + 16), query steps of
// 64. B always comes from shared memory; A from registers except where said:
//   Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ   A: K, V fragments (loaded once) at head_dim 64;
//                             at 128 K, V tiles from shared memory (wgmma_ss:
//                             their 64 registers would not fit beside dK, dV,
//                             S, dP); B: the step's Q, dO tiles, K-major (the
//                             reduction runs along d);
//   dV += Pᵀ·dO, dK += dSᵀ·Q  A: P, dS packed from the accumulators; B: dO, Q
//                             tiles, MN-major (the reduction runs along queries);
//   dQ = dS·K                 A: dS from shared memory by ldmatrix.trans, as
//                             the mma.sync kernel; B: the K tile, MN-major.
// Q, dO, K, V tiles sit in the canonical layout of fwd_wgmma (cm_off); dS
// stays in bwd_dkdv's padded layout. The masking, tickets, ordered dq
// additions and stores are bwd_dkdv's. p.wgmma_desc as in fwd_wgmma: bit 0
// swaps the pair of the K-major operands, bit 1 of the MN-major ones.

#ifdef ENGINE_FLASH_WGMMA_BODY
// Row stride (elements) of the dS tile: [TILE keys][TILE queries], padded.
constexpr int WG_DS_LD = TILE + PAD;

// Dynamic shared memory: K, V; per buffer Q, dO (canonical) and lse, delta
// (fp32); dS (padded rows); the turn's outcome and the ticket.
template <int D>
constexpr uint32_t wg_bwd_smem() {
  return 2 * TILE * D * 2 + 2 * 2 * TILE * D * 2 + 2 * 2 * TILE * 4 + TILE * WG_DS_LD * 2 + 16;
}

// The four A registers of rows row0..row0 + 16, head-dim columns
// col0..col0 + 16 of a canonical tile (ld_a's ldmatrix with cm_off rows).
template <int D>
__device__ __forceinline__ void ld_a_cm(const unsigned char* s, int row0, int col0, uint32_t (&a)[4]) {
  const int lane = threadIdx.x & 31, m = lane >> 3, r = lane & 7;
  ldsm_x4(reinterpret_cast<const bf16*>(s + cm_off<D>(row0 + r + 8 * (m & 1), (col0 >> 3) + (m >> 1))), a);
}

// The step's retired Sᵀ and dPᵀ (rows: the warp's keys key0 + …) → P and dS
// packed as the A fragments of dV's and dK's products (pa, dsa), and dS into
// the tile at ds_s (row stride lds) for dQ's: the part of a step every
// one-pass wgmma backward shares.
template <int NJ>
__device__ __forceinline__ void p_ds_frags(float (&s)[NJ][4], float (&dp)[NJ][4], int key0, int q0, int len,
                                           float scale, const float* lse_s, const float* dl_s, bf16* ds_s, int lds,
                                           int r0, uint32_t (&pa)[NJ / 2][4], uint32_t (&dsa)[NJ / 2][4]) {
  fence_acc(s);
  fence_acc(dp);
  probs_and_ds(s, dp, key0, q0, len, scale, lse_s, dl_s);
  c_to_a(s, pa);
  c_to_a(dp, dsa);
  store_ds(ds_s, lds, r0, dp);
  fence_frag(pa);
  fence_frag(dsa);
}

template <int D>
__device__ __forceinline__ void bwd_wgmma(const FlashBwdParams& p) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int BQ = TILE, NJ = BQ / 8;
  constexpr uint32_t T_BYTES = TILE * D * 2;  // a canonical tile
  constexpr int DS_LD = WG_DS_LD;
  constexpr bool KV_REGS = D == 64;  // K, V as A fragments in registers (else wgmma_ss)
  if (blockDim.x != THREADS || dyn_smem_bytes() < wg_bwd_smem<D>()) return;
  unsigned char* k_s = smem;
  unsigned char* v_s = k_s + T_BYTES;
  unsigned char* qdo_s = v_s + T_BYTES;  // buffer b: Q at qdo_s + 2·b·T_BYTES, dO after it
  float* f_s = reinterpret_cast<float*>(qdo_s + 4 * T_BYTES);  // buffer b: lse·log2 e at f_s + 2·b·BQ, delta after
  bf16* ds_s = reinterpret_cast<bf16*>(f_s + 4 * BQ);
  int* flag_s = reinterpret_cast<int*>(ds_s + TILE * DS_LD);
  uint32_t* counters = ptr<uint32_t>(p.dq_sem) + (size_t)p.tokens * p.n_heads;
  if (threadIdx.x == 0) {
    flag_s[0] = 1;
    flag_s[1] = (int)atomicAdd(counters, 1u);
  }
  __syncthreads();
  const uint32_t ticket = (uint32_t)flag_s[1];
  const uint32_t bx = ticket % p.n_blocks, by = ticket / p.n_blocks;
  if (by >= p.n_heads) return;
  const Tile tl = tile_of(ptr<const uint32_t>(p.blocks), ptr<const uint32_t>(p.cu_seqlens), p.n_blocks - 1 - bx);
  const uint32_t h = by, group = p.n_heads / p.n_kv_heads, kvh = h / group;
  const size_t q_stride = (size_t)p.n_heads * D, kv_stride = (size_t)p.n_kv_heads * D;
  const int k0 = tl.t0, len = tl.len;
  const size_t kv_row0 = (size_t)(tl.start + k0) * kv_stride + (size_t)kvh * D;
  load_tile_cm<D>(k_s, ptr<const bf16>(p.k) + kv_row0, kv_stride, len - k0);
  load_tile_cm<D>(v_s, ptr<const bf16>(p.v) + kv_row0, kv_stride, len - k0);
  cp_async_commit();
  auto load_q = [&](int i) {
    const int b = i & 1, q0 = k0 + i * BQ;
    const size_t q_row0 = (size_t)(tl.start + q0) * q_stride + (size_t)h * D;
    unsigned char* q_b = qdo_s + 2 * b * T_BYTES;
    load_tile_cm<D>(q_b, ptr<const bf16>(p.q) + q_row0, q_stride, len - q0);
    load_tile_cm<D>(q_b + T_BYTES, ptr<const bf16>(p.dout) + q_row0, q_stride, len - q0);
    load_lse_delta<BQ>(p, f_s + 2 * b * BQ, tl.start, q0, len, h);
    cp_async_commit();
  };
  const int warp = threadIdx.x >> 5;
  const int r0 = warp * 16;
  const uint32_t kl = (p.wgmma_desc & 1) ? D * 16 : 128, ks = (p.wgmma_desc & 1) ? 128 : D * 16;  // K-major
  const uint32_t ml = (p.wgmma_desc & 2) ? 128 : D * 16, ms = (p.wgmma_desc & 2) ? D * 16 : 128;  // MN-major
  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    dk[n][0] = dk[n][1] = dk[n][2] = dk[n][3] = 0.0f;
    dv[n][0] = dv[n][1] = dv[n][2] = dv[n][3] = 0.0f;
  }
  const int n_steps = (len - k0 + BQ - 1) / BQ;
  load_q(0);
  cp_async_wait<1>();  // k and v
  __syncthreads();
  uint32_t ka[KV_REGS ? D / 16 : 1][4], va[KV_REGS ? D / 16 : 1][4];
  if constexpr (KV_REGS) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      ld_a_cm<D>(k_s, r0, 16 * kk, ka[kk]);
      ld_a_cm<D>(v_s, r0, 16 * kk, va[kk]);
    }
    fence_frag(ka);
    fence_frag(va);
  }
  const uint32_t k_addr = smem_u32(k_s), v_addr = smem_u32(v_s);
  for (int i = 0; i < n_steps; ++i) {
    const int q0 = k0 + i * BQ;
    if (i + 1 < n_steps) {
      load_q(i + 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    fence_proxy_async();
    __syncthreads();  // this step's tiles are in shared memory, visible to wgmma
    const int b = i & 1;
    const uint32_t q_addr = smem_u32(qdo_s + 2 * b * T_BYTES), do_addr = q_addr + T_BYTES;
    const float* lse_s = f_s + 2 * b * BQ;
    const float* dl_s = lse_s + BQ;
    float s[NJ][4], dp[NJ][4];  // transposed: rows are the warp's keys, columns the step's queries
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
      s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
      dp[j][0] = dp[j][1] = dp[j][2] = dp[j][3] = 0.0f;
    }
    fence_acc(s);
    fence_acc(dp);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint64_t qd = wg_desc(q_addr + 256 * kk, kl, ks), dod = wg_desc(do_addr + 256 * kk, kl, ks);
      if constexpr (KV_REGS) {
        wgmma_rs<BQ, false>(s, ka[kk], qd);
        wgmma_rs<BQ, false>(dp, va[kk], dod);
      } else {
        // K and V tiles as K-major A: the same canonical layout as Q, dO.
        wgmma_ss(s, wg_desc(k_addr + 256 * kk, kl, ks), qd);
        wgmma_ss(dp, wg_desc(v_addr + 256 * kk, kl, ks), dod);
      }
    }
    wgmma_commit();
    wgmma_wait_all();
    uint32_t pa[NJ / 2][4], dsa[NJ / 2][4];
    p_ds_frags(s, dp, k0 + r0, q0, len, p.scale, lse_s, dl_s, ds_s, DS_LD, r0, pa, dsa);  // dS in bwd_dkdv's layout
    fence_acc(dv);
    fence_acc(dk);
    // dV += Pᵀ·dO, dK += dSᵀ·Q.
    auto dv_dk = [&] {
#pragma unroll
      for (int kk = 0; kk < NJ / 2; ++kk) {
        wgmma_rs<D, true>(dv, pa[kk], wg_desc(do_addr + kk * 2 * D * 16, ml, ms));
        wgmma_rs<D, true>(dk, dsa[kk], wg_desc(q_addr + kk * 2 * D * 16, ml, ms));
      }
      wgmma_commit();
    };
    if constexpr (!KV_REGS) {
      // At head_dim 128, dV and dK finish before dQ starts: the P and dS
      // fragments they read (32 registers) would not fit beside dQ's
      // accumulators (ptxas serialises every wgmma of the kernel otherwise).
      wgmma_fence();
      dv_dk();
      wgmma_wait<0>();
    }
    __syncthreads();  // dS in shared memory
    // dQ = dS·K: A = dS (rows: the warp's 16 queries; columns: the tile's 64 keys), B = K.
    float dq[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;
    uint32_t da[TILE / 16][4];
#pragma unroll
    for (int kk = 0; kk < TILE / 16; ++kk) ld_a_t<true>(ds_s, DS_LD, kk * 16, warp * 16, da[kk]);
    fence_frag(da);
    fence_acc(dq);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < TILE / 16; ++kk) wgmma_rs<D, true>(dq, da[kk], wg_desc(k_addr + kk * 2 * D * 16, ml, ms));
    wgmma_commit();
    if constexpr (KV_REGS) {
      // At head_dim 64, dV and dK go after dQ, and run while dQ's ordered
      // addition waits for its turn and adds.
      dv_dk();
      wgmma_wait<1>();
    } else {
      wgmma_wait<0>();
    }
    fence_acc(dq);
    add_dq_in_turn<D, D>(p, dq, tl.start, q0, k0, len, h, (threadIdx.x >> 5) * 16, 0, flag_s);
    wgmma_wait<0>();
    fence_acc(dv);
    fence_acc(dk);
    __syncthreads();  // every read of this step's buffers is done before they are refilled
  }
  store_dkdv<D>(p, dk, dv, tl.start, k0, len, h, kvh, r0);
}
#else
template <int D>
__device__ __forceinline__ void bwd_wgmma(const FlashBwdParams&) {}
#endif

template <int D, bool>
__device__ __forceinline__ void bwd_wgmma_entry(const FlashBwdParams& p) {
  bwd_wgmma<D>(p);
}
