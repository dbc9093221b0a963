// The wgmma building blocks of the Hopper kernels (sm_90a): descriptors,
// the products (register or shared-memory A), fences, waits, and the
// fragment moves between them. Included by flash_attention.cu inside its
// anonymous namespace, before the kernels that use them (flash_fwd_wgmma.cuh,
// flash_bwd_wgmma.cuh, flash_fwd_ws.cuh). Under the emulator
// (tools/flash_attention_emu) each instruction is a call into it.
//
// Descriptors: which of a descriptor's two offsets (the ISA's "leading" and
// "stride" byte offsets) runs along which direction is the one point of the
// ISA this code could not be checked against without a GPU: p.wgmma_desc
// bit 0 swaps the pair of K-major operands (here K), bit 1 of MN-major ones
// (V), so that a GPU test can try all four; ENGINE_FLASH_WGMMA_DESC is the
// reading the emulator takes (leading = along K, stride = along M/N, for
// either major order: the ISA's words, and CUTLASS's make_gmma_desc for
// layouts without swizzle, as a review against its source found).

#if defined(ENGINE_FLASH_EMU) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define ENGINE_FLASH_WGMMA_BODY 1
#endif
#if !defined(ENGINE_FLASH_EMU) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define ENGINE_FLASH_WGMMA_ASM 1
#endif

#ifdef ENGINE_FLASH_WGMMA_BODY
constexpr int WG_KT = 64;  // keys per step

// Byte offset of key r's 16-byte chunk c (head-dim elements 8c..8c + 8) in
// a K or V tile.
template <int D>
__device__ __forceinline__ uint32_t cm_off(int r, int c) {
  return (uint32_t)((r >> 3) * (D / 8) * 128 + c * 128 + (r & 7) * 16);
}

// Rows 0..WG_KT of a K or V tile into the canonical layout at s, by cp.async
// (the caller commits and waits); rows r >= n_valid zero-filled.
template <int D>
__device__ __forceinline__ void load_tile_cm(unsigned char* s, const bf16* g, size_t g_stride, int n_valid) {
  constexpr int CH = D / 8;
  for (int i = threadIdx.x; i < WG_KT * CH; i += THREADS) {
    const int r = i / CH, c = i % CH;
    unsigned char* dst = s + cm_off<D>(r, c);
    if (r < n_valid) {
      cp_async16(dst, g + (size_t)r * g_stride + c * 8);
    } else {
      *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
    }
  }
}

// The shared-memory address (state space offset) of p.
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
#ifdef ENGINE_FLASH_EMU
  return emu_smem_offset(p);
#else
  return (uint32_t)__cvta_generic_to_shared(p);
#endif
}

// A shared-memory matrix descriptor, no swizzle, base offset 0.
__device__ __forceinline__ uint64_t wg_desc(uint32_t addr, uint32_t lead, uint32_t stride) {
  return (uint64_t)((addr >> 4) & 0x3FFFu) | (uint64_t)((lead >> 4) & 0x3FFFu) << 16 |
         (uint64_t)((stride >> 4) & 0x3FFFu) << 32;
}

// d += A·B, m64nNk16, bf16 in, fp32 accumulators: A (64 × 16) from this
// warpgroup's registers (mma.sync's A fragment per warp), B (16 × N) from
// shared memory through desc, K-major, or MN-major with TRANS.
template <int N, bool TRANS>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t desc) {
#ifdef ENGINE_FLASH_EMU
  emu_wgmma(&d[0][0], N, a, desc, TRANS);
#else
  // On the GPU each shape is an asm specialisation below; a shape without
  // one must not compile to nothing.
  static_assert(N != N, "wgmma_rs: no asm specialisation for this shape");
#endif
}

// The asm operands of 8 accumulator column groups d[j0..j0 + 8] (32 floats,
// in the order wgmma numbers its D registers).
#define WG_ACC4(d, j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
#define WG_ACC32(d, j0)                                                                                      \
  WG_ACC4(d, j0), WG_ACC4(d, j0 + 1), WG_ACC4(d, j0 + 2), WG_ACC4(d, j0 + 3), WG_ACC4(d, j0 + 4), WG_ACC4(d, j0 + 5), \
      WG_ACC4(d, j0 + 6), WG_ACC4(d, j0 + 7)

// d += A·B, m64n64k16, bf16 in, fp32 accumulators, A (64 × 16) and B
// (16 × 64) both from shared memory through descriptors, both K-major: the
// Hopper backward's Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ at head_dim 128, where K and V
// as register fragments (64 registers) would not fit beside dK, dV, S, dP.
__device__ __forceinline__ void wgmma_ss(float (&d)[8][4], uint64_t a_desc, uint64_t b_desc) {
#ifdef ENGINE_FLASH_EMU
  emu_wgmma_ss(&d[0][0], 64, a_desc, b_desc);
#endif
#ifdef ENGINE_FLASH_WGMMA_ASM
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, "
      "%32, %33, p, 1, 1, 0, 0;\n}\n"
      : WG_ACC32(d, 0)
      : "l"(a_desc), "l"(b_desc), "r"(1));
#endif
}

// The same at N = 128 (m64n128k16): the warp-specialised forward's S = Q·Kᵀ
// over 128 keys.
__device__ __forceinline__ void wgmma_ss(float (&d)[16][4], uint64_t a_desc, uint64_t b_desc) {
#ifdef ENGINE_FLASH_EMU
  emu_wgmma_ss(&d[0][0], 128, a_desc, b_desc);
#endif
#ifdef ENGINE_FLASH_WGMMA_ASM
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, "
      "%64, %65, p, 1, 1, 0, 0;\n}\n"
      : WG_ACC32(d, 0), WG_ACC32(d, 8)
      : "l"(a_desc), "l"(b_desc), "r"(1));
#endif
}

#ifdef ENGINE_FLASH_WGMMA_ASM
template <>
__device__ __forceinline__ void wgmma_rs<64, false>(float (&d)[64 / 8][4], const uint32_t (&a)[4],
                                                        uint64_t desc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, "
      "{%32,%33,%34,%35}, %36, p, 1, 1, 0;\n}\n"
      : WG_ACC32(d, 0)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}

template <>
__device__ __forceinline__ void wgmma_rs<64, true>(float (&d)[64 / 8][4], const uint32_t (&a)[4],
                                                        uint64_t desc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, "
      "{%32,%33,%34,%35}, %36, p, 1, 1, 1;\n}\n"
      : WG_ACC32(d, 0)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}

template <>
__device__ __forceinline__ void wgmma_rs<128, true>(float (&d)[128 / 8][4], const uint32_t (&a)[4],
                                                        uint64_t desc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, "
      "{%64,%65,%66,%67}, %68, p, 1, 1, 1;\n}\n"
      : WG_ACC32(d, 0), WG_ACC32(d, 8)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}
#endif

__device__ __forceinline__ void wgmma_fence() {
#ifdef ENGINE_FLASH_WGMMA_ASM
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#ifdef ENGINE_FLASH_EMU
  emu_wgmma_commit();
#endif
#ifdef ENGINE_FLASH_WGMMA_ASM
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
// Waits until at most N of this warpgroup's committed wgmma groups are pending.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#ifdef ENGINE_FLASH_EMU
  emu_wgmma_wait(N);
#endif
#ifdef ENGINE_FLASH_WGMMA_ASM
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
__device__ __forceinline__ void wgmma_wait_all() { wgmma_wait<0>(); }
// Shared memory this thread wrote through the generic proxy (cp.async, plain
// stores) becomes visible to wgmma's reads after this and a barrier.
__device__ __forceinline__ void fence_proxy_async() {
#ifdef ENGINE_FLASH_EMU
  emu_fence_proxy_async();
#endif
#ifdef ENGINE_FLASH_WGMMA_ASM
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// Pins the accumulators' reads and writes to this point (the compiler does
// not know wgmma writes them asynchronously until the wait).
template <int N>
__device__ __forceinline__ void fence_acc(float (&d)[N][4]) {
#ifdef ENGINE_FLASH_WGMMA_ASM
#pragma unroll
  for (int j = 0; j < N; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[j][e])::"memory");
  }
#endif
}

// The same for A fragments in registers (as CUTLASS fences its register A).
template <int N>
__device__ __forceinline__ void fence_frag(uint32_t (&a)[N][4]) {
#ifdef ENGINE_FLASH_WGMMA_ASM
#pragma unroll
  for (int j = 0; j < N; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(a[j][e])::"memory");
  }
#endif
}

// Accumulators zeroed for a product that starts them (pinned, as fence_acc).
template <int N>
__device__ __forceinline__ void zero_acc(float (&d)[N][4]) {
#pragma unroll
  for (int j = 0; j < N; ++j) d[j][0] = d[j][1] = d[j][2] = d[j][3] = 0.0f;
  fence_acc(d);
}

// A fragments copied (the next step's P into the registers its product reads).
template <int N>
__device__ __forceinline__ void copy_frags(const uint32_t (&from)[N][4], uint32_t (&to)[N][4]) {
#pragma unroll
  for (int j = 0; j < N; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) to[j][e] = from[j][e];
  }
}

// Accumulators in C layout (column groups 2kk, 2kk + 1) as the A fragments
// of k-step kk, bf16.
template <int NJ>
__device__ __forceinline__ void c_to_a(const float (&c)[NJ][4], uint32_t (&a)[NJ / 2][4]) {
#pragma unroll
  for (int kk = 0; kk < NJ / 2; ++kk) {
    a[kk][0] = pack(c[2 * kk][0], c[2 * kk][1]);
    a[kk][1] = pack(c[2 * kk][2], c[2 * kk][3]);
    a[kk][2] = pack(c[2 * kk + 1][0], c[2 * kk + 1][1]);
    a[kk][3] = pack(c[2 * kk + 1][2], c[2 * kk + 1][3]);
  }
}
#endif
