// The Hopper forward on wgmma (sm_90a). Included by flash_attention.cu
// inside its anonymous namespace, after flash_wgmma.cuh.
//
// The first step of the Hopper path: the forward with its two products on
// wgmma, one warpgroup (the block's 4 warps) per 64 query rows.
//   S = Q·Kᵀ: D/16 wgmma m64n64k16, Q's fragments in registers (loaded once
//     with ldmatrix, as mma.sync's A: wgmma takes a warpgroup's A from
//     registers in that layout, warp w holding rows 16w..16w + 16), K from
//     shared memory;
//   O += P·V: 4 wgmma m64nDk16, P packed to bf16 in registers, V from
//     shared memory as a transposed (MN-major) operand.
// The accumulators of both come back in mma.sync's C layout per warp, so the
// masking, online softmax and epilogue are the mma.sync forward's. K and V
// tiles are staged with cp.async, double-buffered, in wgmma's canonical
// layout without swizzle: 8 × 16-byte core matrices of 128 contiguous bytes,
// a group of 8 keys' D/8 core matrices side by side (cm_off). The softmax
// of a step overlaps the products (fwd_wgmma). TMA, swizzled layouts and
// warp specialisation are flash_fwd_ws.cuh's.

#ifdef ENGINE_FLASH_WGMMA_BODY
// Dynamic shared memory of fwd_wgmma: q (rows padded, for ldmatrix), then
// two buffers of K and V tiles.
template <int D>
constexpr uint32_t wg_fwd_smem() {
  return TILE * ld<D>() * 2 + 2 * 2 * WG_KT * D * 2;
}

// out and lse for the tile's 64 query rows of head blockIdx.y, as fwd (one
// m-tile per warp), the products on wgmma. Compiled for sm_90a only (an
// empty body elsewhere; the host launches it on compute capability 9.0).
//
// The products of two key steps overlap the softmax (FlashAttention-3's
// pipelining within a warpgroup): step j issues S_j = Q·K_jᵀ and O += P_{j−1}·
// V_{j−1} together, turns S_j into P_j while both run (once S_j is done),
// then scales O by step j's factor once P_{j−1}·V_{j−1} is done. So K and
// V run on different schedules: buffer j % 2 of K holds K_j, read at step
// j; buffer j % 2 of V holds V_j, read at step j + 1. At the top of step j
// (after a barrier: every product of step j − 1 is done) K_{j+1} and V_j
// are fetched into the buffers whose last readers, S_{j−1} and
// P_{j−2}·V_{j−2}, both ran at step j − 1.
template <int D>
__device__ __forceinline__ void fwd_wgmma(const FlashFwdParams& p) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int LD = ld<D>();
  constexpr int KT = WG_KT, NJ = KT / 8;
  constexpr uint32_t KV = KT * D * 2;  // bytes of a K or V tile
  if (blockDim.x != THREADS || dyn_smem_bytes() < wg_fwd_smem<D>()) return;
  if (blockIdx.x >= p.n_blocks || blockIdx.y >= p.n_heads) return;
  bf16* q_s = reinterpret_cast<bf16*>(smem);
  unsigned char* k_s = smem + TILE * LD * 2;  // K buffer b at k_s + b·KV
  unsigned char* v_s = k_s + 2 * KV;          // V buffer b at v_s + b·KV
  const Tile tl = tile_of(ptr<const uint32_t>(p.blocks), ptr<const uint32_t>(p.cu_seqlens), blockIdx.x, TILE);
  const uint32_t h = blockIdx.y, kvh = h / (p.n_heads / p.n_kv_heads);
  const size_t q_stride = (size_t)p.n_heads * D, kv_stride = (size_t)p.n_kv_heads * D;
  const int q0 = tl.t0, len = tl.len;
  const bf16* kg = ptr<const bf16>(p.k) + (size_t)tl.start * kv_stride + (size_t)kvh * D;
  const bf16* vg = ptr<const bf16>(p.v) + (size_t)tl.start * kv_stride + (size_t)kvh * D;
  const size_t q_row0 = (size_t)(tl.start + q0) * q_stride + (size_t)h * D;
  const int kend = min(q0 + TILE, len);
  const int n_kt = (kend + KT - 1) / KT;
  // Step j's fetch (one cp.async group): K_{j+1} if there is one, and V_j.
  auto fetch = [&](int j) {
    if (j + 1 < n_kt) {
      const int k1 = (j + 1) * KT;
      load_tile_cm<D>(k_s + ((j + 1) & 1) * KV, kg + (size_t)k1 * kv_stride, kv_stride, len - k1);
    }
    load_tile_cm<D>(v_s + (j & 1) * KV, vg + (size_t)j * KT * kv_stride, kv_stride, len - j * KT);
    cp_async_commit();
  };
  const int warp = threadIdx.x >> 5;
  const int r0 = warp * 16;
  // Byte offsets between core matrices: K (B of S, K-major: the reduction
  // runs along head_dim) steps 128 along head_dim and D·16 along keys; V (B
  // of P·V, MN-major: the reduction runs along keys) D·16 along keys and
  // 128 along head_dim. Descriptor fields (leading, stride) by p.wgmma_desc.
  const uint32_t kl = (p.wgmma_desc & 1) ? D * 16 : 128, ks = (p.wgmma_desc & 1) ? 128 : D * 16;
  const uint32_t vl = (p.wgmma_desc & 2) ? 128 : D * 16, vs = (p.wgmma_desc & 2) ? D * 16 : 128;
  const float sl2 = p.scale * LOG2E;
  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  load_tile<D, TILE, false>(q_s, ptr<const bf16>(p.q) + q_row0, q_stride, len - q0);
  load_tile_cm<D>(k_s, kg, kv_stride, len);  // K_0, a group of its own
  cp_async_commit();
  __syncthreads();  // q is in shared memory
  uint32_t qa[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) ld_a<D, true>(q_s, r0, kk * 16, qa[kk]);
  fence_frag(qa);
  const uint32_t k_addr = smem_u32(k_s), v_addr = smem_u32(v_s);
  // S = Q·K_jᵀ into s (issued, not waited for).
  float s[NJ][4];
  auto issue_s = [&](int j) {
    zero_acc(s);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      wgmma_rs<KT, false>(s, qa[kk], wg_desc(k_addr + (j & 1) * KV + 256 * kk, kl, ks));
    wgmma_commit();
  };
  // O += P·V_j, P as A fragments (issued, not waited for).
  uint32_t pa[KT / 16][4];
  auto issue_pv = [&](int j) {
    fence_frag(pa);
    fence_acc(o);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < KT / 16; ++kk)
      wgmma_rs<D, true>(o, pa[kk], wg_desc(v_addr + (j & 1) * KV + kk * 2 * D * 16, vl, vs));
    wgmma_commit();
  };
  // S_j (done) → P_j in pn (pa may still be read by P_{j−1}·V_{j−1}: the
  // A registers of a wgmma in flight must not be written); the factor for O
  // in c.
  uint32_t pn[KT / 16][4];
  float c[2];
  auto softmax = [&](int j) {
    fence_acc(s);
    const int k0 = j * KT;
    const bool mask = k0 + KT > q0 || k0 + KT > len;
    softmax_scores(s, m, l, c, q0 + r0, k0, len, mask, sl2);
    // Keys 16kk..16kk + 16 are column groups 2kk, 2kk + 1.
    c_to_a(s, pn);
  };
  auto take_p = [&] { copy_frags(pn, pa); };
  for (int j = 0; j < n_kt; ++j) {
    __syncthreads();  // every product of step j − 1 is done: its buffers may be refilled
    fetch(j);
    cp_async_wait<1>();  // K_j (and V_{j−1}) have landed
    fence_proxy_async();
    __syncthreads();  // ... for every thread, and visible to wgmma
    issue_s(j);
    if (j > 0) {
      issue_pv(j - 1);
      wgmma_wait<1>();  // S_j
      softmax(j);
      wgmma_wait<0>();  // P_{j−1}·V_{j−1}
      fence_acc(o);
      fence_frag(pa);
      rescale_rows<D>(o, c);
    } else {
      wgmma_wait<0>();
      softmax(j);  // O is still zero: no factor to apply
    }
    take_p();
  }
  cp_async_wait<0>();  // V_{last}
  fence_proxy_async();
  __syncthreads();
  issue_pv(n_kt - 1);
  wgmma_wait<0>();
  fence_acc(o);
  finish_rows<D>(p, o, m, l, q_row0, q_stride, r0, len - q0, tl.start, q0 + r0, len, h);
}
#else
template <int D>
__device__ __forceinline__ void fwd_wgmma(const FlashFwdParams&) {}
#endif

template <int D, bool>
__device__ __forceinline__ void fwd_wgmma_entry(const FlashFwdParams& p) {
  fwd_wgmma<D>(p);
}
