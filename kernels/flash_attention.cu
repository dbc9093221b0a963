// FlashAttention-2-style causal attention over packed sequences on bf16 tensor
// cores (DESIGN.md §5, issue 8 steps 1–2): head_dim 64 and 128, GQA, the
// semantics of kernels/attention.cu (the simple kernels, its reference).
//
// Products use mma.sync.m16n8k16 (bf16 in, fp32 accumulate). Every kernel
// comes in two variants, a template flag FAST (both are built; the host
// picks, the tests check both):
//   fast: fragments read from shared memory with ldmatrix.x4 (.trans where
//     the operand is needed transposed); the tiles of the inner loop double
//     buffered, the next one fetched with cp.async while this one is used;
//   simple: fragments read with 32-bit loads (two 16-bit loads for a
//     transposed pair), written straight from the fragment layouts below;
//     tiles loaded with plain 16-byte loads, one buffer; as a fallback.
// The PTX ISA's fragment layouts, with g = lane / 4 and t = lane % 4:
//   A (16×16, row-major):  a0 = A[g][2t..2t+1],   a1 = A[g+8][2t..2t+1],
//                          a2 = A[g][2t+8..2t+9], a3 = A[g+8][2t+8..2t+9]
//   B (16×8, B[k][n]):     b0 = B[2t..2t+1][g],   b1 = B[2t+8..2t+9][g]
//   C (16×8, fp32):        c0,c1 = C[g][2t..2t+1], c2,c3 = C[g+8][2t..2t+1]
// (the lower-indexed element in the low half of each 32-bit register). Two
// adjacent C tiles (16×16) hold exactly the A fragment of the same 16×16
// block, so probabilities go from the score accumulators to the next
// product without passing through shared memory.
//
// Each block runs 4 warps; each warp owns 16 rows of a 64-row tile (query
// rows in dq and the simple forward, key rows in dk/dv), or 32 rows (two
// 16-row m-tiles) of the fast forward's (and the fast d64 dq kernel's)
// 128-row query tile, and never shares them, so no reduction crosses warps. Tiles are staged in shared memory, rows padded by
// 8 elements (conflict-free fragment loads); rows past the sequence's end are
// zero-filled and their scores masked. fp32 online softmax in base 2 (scores
// pre-multiplied by scale·log2 e). Sums run in a fixed order (no atomics), so
// every run gives the same bits.
//
// The backward is two passes (dq; dk and dv), or, fused, one: the dk/dv
// kernel also makes dq and adds it up in key-tile order through a semaphore
// per (query step, head) (bwd_dkdv with DQ).
#include "common.cuh"
#include "flash_attention.h"

#define THREADS ENGINE_FLASH_THREADS
#define TILE ENGINE_FLASH_TILE
#define PAD ENGINE_FLASH_PAD
static_assert(THREADS == 128 && TILE == 64, "4 warps of 16 rows cover a tile");

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

namespace {

// Shared-memory row stride (elements) for head_dim D.
template <int D>
constexpr int ld() {
  return D + PAD;
}

// Dynamic shared memory (bytes) of each kernel: the host computes the same
// from the header's constants (src/backend/cuda/flash_attention.rs).
// Buffers of the inner loop's tiles.
template <bool FAST>
constexpr int nbuf() {
  return FAST ? 2 : 1;
}
// The forward's tiles: m-tiles of 16 query rows per warp, query rows per
// block, keys per step.
template <bool FAST>
constexpr int fwd_mt() {
  return FAST ? ENGINE_FLASH_FWD_TILE / 64 : 1;
}
template <bool FAST>
constexpr int fwd_rows() {
  return 64 * fwd_mt<FAST>();
}
template <int D, bool FAST>
constexpr int fwd_keys() {
  return !FAST ? TILE : D == 64 ? ENGINE_FLASH_FWD_KEYS_D64 : ENGINE_FLASH_FWD_KEYS_D128;
}
static_assert(fwd_rows<true>() == ENGINE_FLASH_FWD_TILE, "4 warps of 16·MT rows cover the fast forward's tile");
template <int D, bool FAST>
constexpr int fwd_smem() {
  return (fwd_rows<FAST>() + 2 * nbuf<FAST>() * fwd_keys<D, FAST>()) * ld<D>() * 2;  // q; k, v per buffer
}
// dq's tiles: m-tiles of 16 query rows per warp (two in the fast d64
// kernel, as the forward), keys per step.
static_assert(ENGINE_FLASH_DQ_TILE_D64 % 64 == 0 && ENGINE_FLASH_FWD_TILE % 64 == 0, "whole m-tiles per warp");
template <int D, bool FAST>
constexpr int dq_mt() {
  return FAST && D == 64 ? ENGINE_FLASH_DQ_TILE_D64 / 64 : 1;
}
template <int D, bool FAST>
constexpr int dq_keys() {
  return FAST && D == 64 ? ENGINE_FLASH_DQ_KEYS_D64 : TILE;
}
template <int D, bool FAST>
constexpr int dq_smem() {
  return (2 * 64 * dq_mt<D, FAST>() + 2 * nbuf<FAST>() * dq_keys<D, FAST>()) * ld<D>() * 2;  // q, dout; k, v per buffer
}
template <int D>
constexpr int dkdv_step() {
  return D == 64 ? ENGINE_FLASH_DKDV_STEP_D64 : ENGINE_FLASH_DKDV_STEP_D128;
}
// Row stride (elements) of the fused backward's dS tile: [TILE keys][BQ queries].
template <int D>
constexpr int ds_ld() {
  return dkdv_step<D>() + PAD;
}
template <int D, bool FAST, bool DQ = false>
constexpr int dkdv_smem() {
  // k, v; per buffer q, dout (bf16) and lse, delta (fp32); fused: dS (bf16)
  return (2 * TILE + nbuf<FAST>() * 2 * dkdv_step<D>()) * ld<D>() * 2 + nbuf<FAST>() * 2 * dkdv_step<D>() * 4 +
         (DQ ? TILE * ds_ld<D>() * 2 + 16 : 0);  // dS, then the turn's outcome and the ticket
}

// ENGINE_FLASH_EMU: tools/flash_attention_emu.cpp compiles this file for the
// host, with the two instructions below emulated, to run the kernels on a CPU.
__device__ __forceinline__ uint32_t dyn_smem_bytes() {
#ifdef ENGINE_FLASH_EMU
  return emu_dyn_smem_bytes();
#else
  uint32_t r;
  asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(r));
  return r;
#endif
}

// c += A·B for one 16×8×16 step.
__device__ __forceinline__ void mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                    uint32_t b1) {
#ifdef ENGINE_FLASH_EMU
  emu_mma(c, a0, a1, a2, a3, b0, b1);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

// Two adjacent bf16 (p[0] low, p[1] high); p is 4-byte aligned.
__device__ __forceinline__ uint32_t ld2(const bf16* p) { return *reinterpret_cast<const uint32_t*>(p); }

// p[0] (low) and p[stride] (high): two elements of a column.
__device__ __forceinline__ uint32_t ld2_col(const bf16* p, int stride) {
  const uint32_t lo = *reinterpret_cast<const uint16_t*>(p);
  const uint32_t hi = *reinterpret_cast<const uint16_t*>(p + stride);
  return lo | (hi << 16);
}

// ldmatrix.x4: thread i gives the address of row i % 8 of 8×8 matrix i / 8
// (8 consecutive bf16, 16-byte aligned); r_m receives matrix m's elements
// [g][2t], [g][2t+1] (non-transposed) or [2t][g], [2t+1][g] (transposed).
__device__ __forceinline__ void ldsm_x4(const bf16* p, uint32_t (&r)[4]) {
#ifdef ENGINE_FLASH_EMU
  emu_ldsm(p, false, r);
#else
  const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
#endif
}
__device__ __forceinline__ void ldsm_x4_t(const bf16* p, uint32_t (&r)[4]) {
#ifdef ENGINE_FLASH_EMU
  emu_ldsm(p, true, r);
#else
  const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
#endif
}

// cp.async of 16 bytes global → shared (both 16-byte aligned), in the
// current group; commit closes the group; wait<N> waits until at most N of
// this thread's groups are pending. Other threads see the data after a
// __syncthreads that follows the wait.
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
#ifdef ENGINE_FLASH_EMU
  emu_cp_async(dst, src);
#else
  const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#ifdef ENGINE_FLASH_EMU
  emu_cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef ENGINE_FLASH_EMU
  emu_cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// lo, hi rounded to bf16, lo in the low half.
__device__ __forceinline__ uint32_t pack(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Rows 0..R of a tile into shared memory s (row stride ld<D>()), from global
// rows g + r·g_stride (D elements each); rows r >= n_valid are zero-filled and
// not read. 16-byte pieces: with ASYNC by cp.async (the caller commits and
// waits), else plain loads and stores. The caller synchronises.
template <int D, int R, bool ASYNC>
__device__ __forceinline__ void load_tile(bf16* s, const bf16* g, size_t g_stride, int n_valid) {
  constexpr int CH = D / 8;  // 16-byte chunks per row
  for (int i = threadIdx.x; i < R * CH; i += THREADS) {
    const int r = i / CH, c = i % CH;
    bf16* dst = s + r * ld<D>() + c * 8;
    if (r < n_valid) {
      const bf16* src = g + (size_t)r * g_stride + c * 8;
      if (ASYNC) {
        cp_async16(dst, src);
      } else {
        *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
      }
    } else {
      *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
    }
  }
}

// The four A registers of rows row0..row0+16, columns col0..col0+16 of a
// row-major shared tile.
template <int D, bool LDSM>
__device__ __forceinline__ void ld_a(const bf16* s, int row0, int col0, uint32_t (&a)[4]) {
  const int lane = threadIdx.x & 31;
  if (LDSM) {
    // Matrices: 0 rows 0–7 / cols 0–7 (a0), 1 rows 8–15 / cols 0–7 (a1),
    // 2 rows 0–7 / cols 8–15 (a2), 3 rows 8–15 / cols 8–15 (a3).
    const int m = lane >> 3, r = lane & 7;
    ldsm_x4(s + (row0 + r + 8 * (m & 1)) * ld<D>() + col0 + 8 * (m >> 1), a);
  } else {
    const int g = lane >> 2, t = lane & 3;
    const bf16* p = s + (row0 + g) * ld<D>() + col0 + 2 * t;
    a[0] = ld2(p);
    a[1] = ld2(p + 8 * ld<D>());
    a[2] = ld2(p + 8);
    a[3] = ld2(p + 8 * ld<D>() + 8);
  }
}

// c[i][j] += A_i · X^T over all D columns, for the 8-row groups j of X (rows
// x0 + 8j .. x0 + 8j + 8 of shared tile xs) and the MT m-tiles i of A (rows
// a0 + 16i .. a0 + 16i + 16 of shared tile as). That is, c[i][j] holds the
// dot products of A's rows with X's rows. Each B fragment (from X) is loaded
// once and feeds the MT m-tiles.
template <int D, int NJ, bool LDSM, int MT>
__device__ __forceinline__ void rows_dot_rows_m(const bf16* as, int a_row0, const bf16* xs, int x_row0,
                                                float (&c)[MT][NJ][4]) {
  static_assert(NJ % 2 == 0, "ldmatrix.x4 loads two column groups");
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a[MT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i) ld_a<D, LDSM>(as, a_row0 + 16 * i, kk * 16, a[i]);
    if (LDSM) {
      // b0, b1 of groups j, j + 1: matrices (rows of group j + m / 2,
      // columns kk·16 + 8·(m % 2) ...), non-transposed.
      const int m = lane >> 3, r = lane & 7;
#pragma unroll
      for (int j = 0; j < NJ; j += 2) {
        uint32_t b[4];
        ldsm_x4(xs + (x_row0 + (j + (m >> 1)) * 8 + r) * ld<D>() + kk * 16 + 8 * (m & 1), b);
#pragma unroll
        for (int i = 0; i < MT; ++i) {
          mma(c[i][j], a[i][0], a[i][1], a[i][2], a[i][3], b[0], b[1]);
          mma(c[i][j + 1], a[i][0], a[i][1], a[i][2], a[i][3], b[2], b[3]);
        }
      }
    } else {
#pragma unroll
      for (int j = 0; j < NJ; ++j) {
        const bf16* p = xs + (x_row0 + j * 8 + g) * ld<D>() + kk * 16 + 2 * t;
        const uint32_t b0 = ld2(p), b1 = ld2(p + 8);
#pragma unroll
        for (int i = 0; i < MT; ++i) mma(c[i][j], a[i][0], a[i][1], a[i][2], a[i][3], b0, b1);
      }
    }
  }
}

// rows_dot_rows_m for one m-tile.
template <int D, int NJ, bool LDSM>
__device__ __forceinline__ void rows_dot_rows(const bf16* as, int a_row0, const bf16* xs, int x_row0,
                                              float (&c)[NJ][4]) {
  rows_dot_rows_m<D, NJ, LDSM, 1>(as, a_row0, xs, x_row0, reinterpret_cast<float(&)[1][NJ][4]>(c));
}

// acc[i] += A_i · X for the MT m-tiles i: A_i is 16 × (16·NK), its
// fragments for k-step kk given by a(kk, i, regs); X the shared tile's rows
// 0..16·NK (D columns from xs, rows LDX elements apart: ld<D>() for a whole
// tile, a wider tile's stride for D of its columns); acc[i][n] = output
// columns 8n..8n+8. Each B fragment (from X) is loaded once and feeds the MT
// m-tiles.
template <int D, int NK, bool LDSM, int MT, int LDX = ld<D>(), typename A>
__device__ __forceinline__ void a_times_rows(A a_frag, const bf16* xs, float (&acc)[MT][D / 8][4]) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int kk = 0; kk < NK; ++kk) {
    uint32_t a[MT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i) a_frag(kk, i, a[i]);
    if (LDSM) {
      // b0, b1 of output groups n, n + 1: matrices (rows kk·16 + 8·(m % 2)
      // ..., columns of group n + m / 2), transposed.
      const int m = lane >> 3, r = lane & 7;
#pragma unroll
      for (int n = 0; n < D / 8; n += 2) {
        uint32_t b[4];
        ldsm_x4_t(xs + (kk * 16 + 8 * (m & 1) + r) * LDX + (n + (m >> 1)) * 8, b);
#pragma unroll
        for (int i = 0; i < MT; ++i) {
          mma(acc[i][n], a[i][0], a[i][1], a[i][2], a[i][3], b[0], b[1]);
          mma(acc[i][n + 1], a[i][0], a[i][1], a[i][2], a[i][3], b[2], b[3]);
        }
      }
    } else {
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const bf16* x = xs + (kk * 16 + 2 * t) * LDX + n * 8 + g;
        const uint32_t b0 = ld2_col(x, LDX), b1 = ld2_col(x + 8 * LDX, LDX);
#pragma unroll
        for (int i = 0; i < MT; ++i) mma(acc[i][n], a[i][0], a[i][1], a[i][2], a[i][3], b0, b1);
      }
    }
  }
}

// acc[i] += P_i · X for the MT m-tiles i: P_i is 16 × (16·NK) in C layout
// (p[i][j] = columns 8j..8j+8), packed to bf16 A fragments on the fly.
template <int D, int NK, bool LDSM, int MT>
__device__ __forceinline__ void c_times_rows_m(const float (&p)[MT][2 * NK][4], const bf16* xs,
                                               float (&acc)[MT][D / 8][4]) {
  a_times_rows<D, NK, LDSM, MT>(
      [&](int kk, int i, uint32_t(&a)[4]) {
        a[0] = pack(p[i][2 * kk][0], p[i][2 * kk][1]);
        a[1] = pack(p[i][2 * kk][2], p[i][2 * kk][3]);
        a[2] = pack(p[i][2 * kk + 1][0], p[i][2 * kk + 1][1]);
        a[3] = pack(p[i][2 * kk + 1][2], p[i][2 * kk + 1][3]);
      },
      xs, acc);
}

// The A fragments of rows c0..c0+16, columns r0..r0+16 of the transpose of
// a row-major shared tile s (row stride lds): A[c][r] = s[r][c].
template <bool LDSM>
__device__ __forceinline__ void ld_a_t(const bf16* s, int lds, int r0, int c0, uint32_t (&a)[4]) {
  const int lane = threadIdx.x & 31;
  if (LDSM) {
    // Matrix m: stored rows r0 + 8·(m / 2) .., columns c0 + 8·(m % 2) ..,
    // transposed, gives a0 (A rows 0–7, cols 0–7), a1 (rows 8–15), a2
    // (cols 8–15), a3.
    const int m = lane >> 3, r = lane & 7;
    ldsm_x4_t(s + (r0 + r + 8 * (m >> 1)) * lds + c0 + 8 * (m & 1), a);
  } else {
    const int g = lane >> 2, t = lane & 3;
    const bf16* p = s + (r0 + 2 * t) * lds + c0 + g;
    a[0] = ld2_col(p, lds);
    a[1] = ld2_col(p + 8, lds);
    a[2] = ld2_col(p + 8 * lds, lds);
    a[3] = ld2_col(p + 8 * lds + 8, lds);
  }
}

// c_times_rows_m for one m-tile.
template <int D, int NK, bool LDSM>
__device__ __forceinline__ void c_times_rows(const float (&p)[2 * NK][4], const bf16* xs, float (&acc)[D / 8][4]) {
  c_times_rows_m<D, NK, LDSM, 1>(reinterpret_cast<const float(&)[1][2 * NK][4]>(p), xs,
                                 reinterpret_cast<float(&)[1][D / 8][4]>(acc));
}

// Calls put(i, offset, x0, x1) for this thread's share of rows (row0 + g,
// row0 + g + 8) of a 16 × D C-layout accumulator: i = 0, 1 for the two rows,
// x0, x1 the elements at columns 2t + 8n, 2t + 8n + 1, offset that pair's
// element offset (row · stride + column), for rows below n_valid only.
template <int D, typename Put>
__device__ __forceinline__ void for_rows(size_t stride, int row0, int n_valid, const float (&acc)[D / 8][4], Put put) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = row0 + g + 8 * i;
    if (r < n_valid) {
#pragma unroll
      for (int n = 0; n < D / 8; ++n) put(i, (size_t)r * stride + 2 * t + n * 8, acc[n][2 * i], acc[n][2 * i + 1]);
    }
  }
}

// The accumulator's rows as bf16, row i times mul[i]. dst: the global row of
// tile row 0; stride in elements.
template <int D>
__device__ __forceinline__ void store_rows(bf16* dst, size_t stride, int row0, int n_valid, const float (&acc)[D / 8][4],
                                           const float (&mul)[2]) {
  for_rows<D>(stride, row0, n_valid, acc, [&](int i, size_t at, float x0, float x1) {
    *reinterpret_cast<uint32_t*>(dst + at) = pack(x0 * mul[i], x1 * mul[i]);
  });
}

// store_rows in fp32, unscaled.
template <int D>
__device__ __forceinline__ void store_rows_f32(float* dst, size_t stride, int row0, int n_valid,
                                               const float (&acc)[D / 8][4]) {
  for_rows<D>(stride, row0, n_valid, acc,
              [&](int, size_t at, float x0, float x1) { *reinterpret_cast<float2*>(dst + at) = make_float2(x0, x1); });
}

// The tile a block works on: sequence start, length, tile start (relative).
struct Tile {
  uint32_t start;
  int len;
  int t0;
};

// Entry i of the tile table, for tiles of `rows` tokens.
__device__ __forceinline__ Tile tile_of(const uint32_t* blocks, const uint32_t* cu, uint32_t i, int rows = TILE) {
  const uint32_t seq = blocks[2 * i], idx = blocks[2 * i + 1];
  Tile tl;
  tl.start = cu[seq];
  tl.len = (int)(cu[seq + 1] - cu[seq]);
  tl.t0 = (int)idx * rows;
  return tl;
}

// What the forward kernels (mma.sync and wgmma) share, per 16-row m-tile.

// One key step of the online softmax for the m-tile whose rows start at
// query row0 (rows row0 + g, + 8 of this thread): scores s (keys k0 + 8j +
// 2t (+ 1)) scaled to base 2 by sl2, masked to −inf after the row (or past
// the sequence's end) where `mask`, then the running max m and sum l (this
// thread's part) updated, and s turned into 2^(s − max); c[r] is the factor
// the row's output accumulated so far must be scaled by (rescale_rows).
// MASK: 2 takes `mask` as given; 0 and 1 fix it at compile time (a kernel
// that branches on it keeps the mask's arithmetic out of its unmasked steps).
template <int NJ, int MASK = 2>
__device__ __forceinline__ void softmax_scores(float (&s)[NJ][4], float (&m)[2], float (&l)[2], float (&c)[2],
                                               int row0, int k0, int len, bool mask, float sl2) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const bool masked = MASK == 2 ? mask : MASK == 1;
#pragma unroll
  for (int j = 0; j < NJ; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int row = row0 + g + 8 * (e >> 1), col = k0 + j * 8 + 2 * t + (e & 1);
      s[j][e] = (masked && (col > row || col >= len)) ? -INFINITY : s[j][e] * sl2;
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = m[r];
#pragma unroll
    for (int j = 0; j < NJ; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    // A row with no key yet (only a padding row can be) keeps m = −inf:
    // use 0 so no exp argument is inf − inf.
    const float mu = mx == -INFINITY ? 0.0f : mx;
    c[r] = exp2f(m[r] - mu);  // 0 while m = −inf, else in (0, 1]
    m[r] = mx;
    l[r] *= c[r];
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
      s[j][2 * r] = exp2f(s[j][2 * r] - mu);
      s[j][2 * r + 1] = exp2f(s[j][2 * r + 1] - mu);
      l[r] += s[j][2 * r] + s[j][2 * r + 1];
    }
  }
}

// o's rows (this thread's rows g, g + 8) scaled by c.
template <int D>
__device__ __forceinline__ void rescale_rows(float (&o)[D / 8][4], const float (&c)[2]) {
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    o[n][0] *= c[0];
    o[n][1] *= c[0];
    o[n][2] *= c[1];
    o[n][3] *= c[1];
  }
}

// softmax_scores, then o rescaled at once (the mma.sync forward).
template <int D, int NJ>
__device__ __forceinline__ void softmax_step(float (&s)[NJ][4], float (&m)[2], float (&l)[2], float (&o)[D / 8][4],
                                             int row0, int k0, int len, bool mask, float sl2) {
  float c[2];
  softmax_scores(s, m, l, c, row0, k0, len, mask, sl2);
  rescale_rows<D>(o, c);
}

// The m-tile's out rows (o over the row sums; tile rows r0.., n_valid of
// them, tile row 0 at out_row0, stride q_stride) and lse (base e) of its
// rows row0 + g (+ 8) below len.
template <int D>
__device__ __forceinline__ void finish_rows(const FlashFwdParams& p, const float (&o)[D / 8][4], const float (&m)[2],
                                            float (&l)[2], size_t out_row0, size_t q_stride, int r0, int n_valid,
                                            uint32_t start, int row0, int len, uint32_t h) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    inv[r] = 1.0f / l[r];
  }
  store_rows<D>(ptr<bf16>(p.out) + out_row0, q_stride, r0, n_valid, o, inv);
  if (t == 0) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = row0 + g + 8 * r;
      if (row < len) ptr<float>(p.lse)[(size_t)(start + row) * p.n_heads + h] = m[r] * LN2 + logf(l[r]);
    }
  }
}

// out and lse for the tile's QT query rows of head blockIdx.y: warp w owns
// rows 16·MT·w .. 16·MT·(w + 1) (MT m-tiles of 16), and walks the keys in
// steps of KT, online softmax in registers.
template <int D, bool FAST>
__device__ __forceinline__ void fwd(const FlashFwdParams& p) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int LD = ld<D>();
  constexpr int MT = fwd_mt<FAST>();       // m-tiles per warp
  constexpr int QT = fwd_rows<FAST>();     // query rows per block
  constexpr int KT = fwd_keys<D, FAST>();  // keys per step
  constexpr int NJ = KT / 8;               // key column groups of a score tile
  static_assert(KT % 16 == 0 && QT == 4 * 16 * MT, "tile shapes");
  if (blockDim.x != THREADS || dyn_smem_bytes() < (uint32_t)fwd_smem<D, FAST>()) return;
  if (blockIdx.x >= p.n_blocks || blockIdx.y >= p.n_heads) return;
  bf16* q_s = reinterpret_cast<bf16*>(smem);
  bf16* kv_s = q_s + QT * LD;  // buffer b: k at kv_s + b·2·KT·LD, v after it
  const Tile tl = tile_of(ptr<const uint32_t>(p.blocks), ptr<const uint32_t>(p.cu_seqlens), blockIdx.x, QT);
  const uint32_t h = blockIdx.y, kvh = h / (p.n_heads / p.n_kv_heads);
  const size_t q_stride = (size_t)p.n_heads * D, kv_stride = (size_t)p.n_kv_heads * D;
  const int q0 = tl.t0, len = tl.len;
  const bf16* kg = ptr<const bf16>(p.k) + (size_t)tl.start * kv_stride + (size_t)kvh * D;
  const bf16* vg = ptr<const bf16>(p.v) + (size_t)tl.start * kv_stride + (size_t)kvh * D;
  const size_t q_row0 = (size_t)(tl.start + q0) * q_stride + (size_t)h * D;  // tile row 0 of q and out
  load_tile<D, QT, false>(q_s, ptr<const bf16>(p.q) + q_row0, q_stride, len - q0);
  // Key step kt into buffer kt % nbuf (async and committed as one group if FAST).
  auto load_kv = [&](int kt) {
    bf16* k_b = kv_s + (kt % nbuf<FAST>()) * 2 * KT * LD;
    const int k0 = kt * KT;
    load_tile<D, KT, FAST>(k_b, kg + (size_t)k0 * kv_stride, kv_stride, len - k0);
    load_tile<D, KT, FAST>(k_b + KT * LD, vg + (size_t)k0 * kv_stride, kv_stride, len - k0);
    if (FAST) cp_async_commit();
  };

  const int warp = threadIdx.x >> 5;
  const int r0 = warp * 16 * MT;  // the warp's first row in the tile; m-tile i starts at r0 + 16i
  const float sl2 = p.scale * LOG2E;
  float o[MT][D / 8][4];
  float m[MT][2], l[MT][2];  // running max (base-2 units) of rows g, g + 8; this thread's part of Σ 2^(x − m)
#pragma unroll
  for (int i = 0; i < MT; ++i) {
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[i][n][0] = o[i][n][1] = o[i][n][2] = o[i][n][3] = 0.0f;
    m[i][0] = m[i][1] = -INFINITY;
    l[i][0] = l[i][1] = 0.0f;
  }
  const int kend = min(q0 + QT, len);  // keys 0..kend
  const int n_kt = (kend + KT - 1) / KT;
  if (FAST) load_kv(0);
  for (int kt = 0; kt < n_kt; ++kt) {
    const int k0 = kt * KT;
    if (FAST) {
      // Fetch the next step's tiles into the other buffer (its last readers
      // passed the barrier that ended the previous step), then wait for this one.
      if (kt + 1 < n_kt) {
        load_kv(kt + 1);
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
    } else {
      load_kv(kt);
    }
    __syncthreads();  // this step's tiles (and, on the first, q) are in shared memory
    // A warp whose rows all lie before this step's first key has nothing to
    // add (every score masked: the max stays, the rescale is 1, every
    // probability 0), so it skips the step; the skip is uniform over the warp.
    if (k0 <= q0 + r0 + 16 * MT - 1) {
      const bf16* k_s = kv_s + (kt % nbuf<FAST>()) * 2 * KT * LD;
      const bf16* v_s = k_s + KT * LD;
      float s[MT][NJ][4];
#pragma unroll
      for (int i = 0; i < MT; ++i) {
#pragma unroll
        for (int j = 0; j < NJ; ++j) s[i][j][0] = s[i][j][1] = s[i][j][2] = s[i][j][3] = 0.0f;
      }
      rows_dot_rows_m<D, NJ, FAST, MT>(q_s, r0, k_s, 0, s);
      const bool mask = k0 + KT > q0 || k0 + KT > len;  // the diagonal steps (and the sequence's tail)
#pragma unroll
      for (int i = 0; i < MT; ++i) softmax_step<D>(s[i], m[i], l[i], o[i], q0 + r0 + 16 * i, k0, len, mask, sl2);
      c_times_rows_m<D, KT / 16, FAST, MT>(s, v_s, o);
    }
    __syncthreads();  // every read of this step's buffer is done before it is refilled
  }
#pragma unroll
  for (int i = 0; i < MT; ++i) {
    finish_rows<D>(p, o[i], m[i], l[i], q_row0, q_stride, r0 + 16 * i, len - q0, tl.start, q0 + r0 + 16 * i, len, h);
  }
}

// dq = Σ_j ds_ij·k_j for the tile's QT query rows of head blockIdx.y, with
// p_ij = 2^(x_ij − lse_i·log2 e), ds_ij = p_ij·(dout_i·v_j − delta_i)·scale.
// Warp w owns rows 16·MT·w .. 16·MT·(w + 1) (MT m-tiles of 16) and walks the
// keys in steps of KT, as the forward does.
template <int D, bool FAST>
__device__ __forceinline__ void bwd_dq(const FlashBwdParams& p) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int LD = ld<D>();
  constexpr int MT = dq_mt<D, FAST>();    // m-tiles per warp
  constexpr int QT = 64 * MT;             // query rows per block
  constexpr int KT = dq_keys<D, FAST>();  // keys per step
  constexpr int NJ = KT / 8;
  static_assert(KT % 16 == 0, "tile shapes");
  if (blockDim.x != THREADS || dyn_smem_bytes() < (uint32_t)dq_smem<D, FAST>()) return;
  if (blockIdx.x >= p.n_blocks || blockIdx.y >= p.n_heads) return;
  bf16* q_s = reinterpret_cast<bf16*>(smem);
  bf16* do_s = q_s + QT * LD;
  bf16* kv_s = do_s + QT * LD;  // buffer b: k at kv_s + b·2·KT·LD, v after it
  const Tile tl = tile_of(ptr<const uint32_t>(p.blocks), ptr<const uint32_t>(p.cu_seqlens), blockIdx.x, QT);
  const uint32_t h = blockIdx.y, kvh = h / (p.n_heads / p.n_kv_heads);
  const size_t q_stride = (size_t)p.n_heads * D, kv_stride = (size_t)p.n_kv_heads * D;
  const int q0 = tl.t0, len = tl.len;
  const bf16* kg = ptr<const bf16>(p.k) + (size_t)tl.start * kv_stride + (size_t)kvh * D;
  const bf16* vg = ptr<const bf16>(p.v) + (size_t)tl.start * kv_stride + (size_t)kvh * D;
  const size_t q_row0 = (size_t)(tl.start + q0) * q_stride + (size_t)h * D;
  load_tile<D, QT, false>(q_s, ptr<const bf16>(p.q) + q_row0, q_stride, len - q0);
  load_tile<D, QT, false>(do_s, ptr<const bf16>(p.dout) + q_row0, q_stride, len - q0);
  auto load_kv = [&](int kt) {  // as in the forward
    bf16* k_b = kv_s + (kt % nbuf<FAST>()) * 2 * KT * LD;
    const int k0 = kt * KT;
    load_tile<D, KT, FAST>(k_b, kg + (size_t)k0 * kv_stride, kv_stride, len - k0);
    load_tile<D, KT, FAST>(k_b + KT * LD, vg + (size_t)k0 * kv_stride, kv_stride, len - k0);
    if (FAST) cp_async_commit();
  };

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int r0 = warp * 16 * MT;  // the warp's first row in the tile; m-tile i starts at r0 + 16i
  const float sl2 = p.scale * LOG2E;
  float lse2[MT][2], dl[MT][2];  // lse·log2 e and delta of rows g, g + 8 of each m-tile
#pragma unroll
  for (int i = 0; i < MT; ++i) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = q0 + r0 + 16 * i + g + 8 * r;
      const size_t at = (size_t)(tl.start + row) * p.n_heads + h;
      lse2[i][r] = row < len ? ptr<const float>(p.lse)[at] * LOG2E : 0.0f;
      dl[i][r] = row < len ? ptr<const float>(p.delta)[at] : 0.0f;
    }
  }
  float acc[MT][D / 8][4];
#pragma unroll
  for (int i = 0; i < MT; ++i) {
#pragma unroll
    for (int n = 0; n < D / 8; ++n) acc[i][n][0] = acc[i][n][1] = acc[i][n][2] = acc[i][n][3] = 0.0f;
  }
  const int kend = min(q0 + QT, len);
  const int n_kt = (kend + KT - 1) / KT;
  if (FAST) load_kv(0);
  for (int kt = 0; kt < n_kt; ++kt) {
    const int k0 = kt * KT;
    if (FAST) {
      if (kt + 1 < n_kt) {
        load_kv(kt + 1);
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
    } else {
      load_kv(kt);
    }
    __syncthreads();
    // A warp whose rows all lie before this step's first key has nothing to
    // add (every p_ij is 0, so every ds_ij): it skips the step (uniformly).
    if (k0 <= q0 + r0 + 16 * MT - 1) {
      const bf16* k_s = kv_s + (kt % nbuf<FAST>()) * 2 * KT * LD;
      const bf16* v_s = k_s + KT * LD;
      float s[MT][NJ][4], dp[MT][NJ][4];
#pragma unroll
      for (int i = 0; i < MT; ++i) {
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
          s[i][j][0] = s[i][j][1] = s[i][j][2] = s[i][j][3] = 0.0f;
          dp[i][j][0] = dp[i][j][1] = dp[i][j][2] = dp[i][j][3] = 0.0f;
        }
      }
      rows_dot_rows_m<D, NJ, FAST, MT>(q_s, r0, k_s, 0, s);
      rows_dot_rows_m<D, NJ, FAST, MT>(do_s, r0, v_s, 0, dp);
#pragma unroll
      for (int i = 0; i < MT; ++i) {
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int r = e >> 1;
            const int row = q0 + r0 + 16 * i + g + 8 * r, col = k0 + j * 8 + 2 * t + (e & 1);
            const bool off = col > row || col >= len || row >= len;
            const float pij = off ? 0.0f : exp2f(s[i][j][e] * sl2 - lse2[i][r]);
            s[i][j][e] = pij * (dp[i][j][e] - dl[i][r]) * p.scale;  // ds
          }
        }
      }
      c_times_rows_m<D, KT / 16, FAST, MT>(s, k_s, acc);
    }
    __syncthreads();  // every read of this step's buffer is done before it is refilled
  }
  const float one[2] = {1.0f, 1.0f};
#pragma unroll
  for (int i = 0; i < MT; ++i) store_rows<D>(ptr<bf16>(p.dq) + q_row0, q_stride, r0 + 16 * i, len - q0, acc[i], one);
}

// The fused backward's ordered dq additions (DQ below). dq_sem holds, per
// (query step, head), how many key tiles have added theirs, with
// SEM_POISON set once any wait on it gave up; after the tokens·n_heads
// counters come the launch's ticket counter and its error word.
constexpr uint32_t SEM_POISON = 0x80000000u;

// The launch's error word in dq_sem (after the counters and the ticket).
__device__ __forceinline__ uint32_t* dq_error_word(const FlashBwdParams& p) {
  return ptr<uint32_t>(p.dq_sem) + (size_t)p.tokens * p.n_heads + 1;
}

// The calling thread's part of wait_turn (the dq writer of the
// warp-specialised backward calls it alone): waits unless `ok` is already
// false; the outcome, after poisoning the counter where it is false.
__device__ __forceinline__ bool wait_turn_here(uint32_t* sem, uint32_t turn, uint32_t* error, bool ok_before) {
  bool ok = false;
  if (ok_before) {
    for (uint32_t spin = 0; spin < (1u << 25); ++spin) {
      const uint32_t v = *reinterpret_cast<const volatile uint32_t*>(sem);
      if (v == turn) {
        ok = true;
        break;
      }
      if (v & SEM_POISON) break;
      __nanosleep(64);
    }
  }
  if (!ok) {
    atomicOr(sem, SEM_POISON);
    atomicOr(error, 1u);
  }
  __threadfence();  // what the previous tiles wrote before their release is seen after it
  return ok;
}

// Thread 0 waits until *sem == turn (the key tiles before this one have
// added theirs), at most 2²⁵ polls 64 ns of sleep apart (the sleep is a hint:
// 2 s to about 15 s in all); then every thread may read what they
// wrote. False (and the counter poisoned, the error word set, so that the
// tiles after this one fail at once and dq comes out NaN) if it gave up, or
// if an earlier wait of this block or on this counter did. ok_s: a shared
// int for the outcome, carried from step to step.
__device__ __forceinline__ bool wait_turn(uint32_t* sem, uint32_t turn, uint32_t* error, int* ok_s) {
  if (threadIdx.x == 0) *ok_s = wait_turn_here(sem, turn, error, *ok_s != 0);
  __syncthreads();
  return *reinterpret_cast<volatile int*>(ok_s) != 0;
}

// Hands the turn to the next key tile once every thread's additions are
// done: thread 0's fence after the barrier makes them visible device-wide
// (cumulatively) before the counter moves; a compare-and-swap, so that a
// poisoned counter never moves back.
__device__ __forceinline__ void pass_turn(uint32_t* sem, uint32_t turn) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    atomicCAS(sem, turn, turn + 1);
  }
}

// store_rows_f32, but adding to what is there unless `first`, read past L1
// (another SM wrote it); NaN instead where `poison`.
template <int D>
__device__ __forceinline__ void add_rows_f32(float* dst, size_t stride, int row0, int n_valid,
                                             const float (&acc)[D / 8][4], bool first, bool poison) {
  for_rows<D>(stride, row0, n_valid, acc, [&](int, size_t at, float x0, float x1) {
    float2 v = make_float2(x0, x1);
    if (!first) {
      const float2 old = __ldcg(reinterpret_cast<const float2*>(dst + at));
      v = make_float2(old.x + v.x, old.y + v.y);
    }
    if (poison) v = make_float2(nan_f(), nan_f());
    *reinterpret_cast<float2*>(dst + at) = v;
  });
}

// What the dk/dv kernels (mma.sync and wgmma) share.

// lse·log2 e and delta of a step's BQ queries q0.. of head h into f_b (lse
// first, delta after); 0 past the sequence's end. Thread `first` of `n`
// takes queries first, first + n, ... (the block's THREADS by default).
template <int BQ>
__device__ __forceinline__ void load_lse_delta(const FlashBwdParams& p, float* f_b, uint32_t start, int q0, int len,
                                               uint32_t h, int first = -1, int n = THREADS) {
  for (int j = first < 0 ? (int)threadIdx.x : first; j < BQ; j += n) {
    const bool in = q0 + j < len;
    const size_t row = (size_t)(start + q0 + j) * p.n_heads + h;
    f_b[j] = in ? ptr<const float>(p.lse)[row] * LOG2E : 0.0f;
    f_b[BQ + j] = in ? ptr<const float>(p.delta)[row] : 0.0f;
  }
}

// From the transposed scores s and dP (rows: the warp's keys key0 + g
// (+ 8); columns: the step's queries q0 + 8j + 2t (+ 1)): p_ij =
// 2^(s·scale·log2 e − lse_i·log2 e) into s and ds_ij = p_ij·(dP_ij −
// delta_i)·scale into dp; 0 where the key is after the query or the query
// past the end (a key past the end is past every query).
template <int NJ>
__device__ __forceinline__ void probs_and_ds(float (&s)[NJ][4], float (&dp)[NJ][4], int key0, int q0, int len,
                                             float scale, const float* lse_s, const float* dl_s) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const float sl2 = scale * LOG2E;
#pragma unroll
  for (int j = 0; j < NJ; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = key0 + g + 8 * (e >> 1), qc = j * 8 + 2 * t + (e & 1), qi = q0 + qc;
      const bool off = key > qi || qi >= len;
      const float pij = off ? 0.0f : exp2f(s[j][e] * sl2 - lse_s[qc]);
      s[j][e] = pij;
      dp[j][e] = pij * (dp[j][e] - dl_s[qc]) * scale;
    }
  }
}

// The warp's rows r0.. of dSᵀ (bf16) into the step's dS tile (row stride lds).
template <int NJ>
__device__ __forceinline__ void store_ds(bf16* ds_s, int lds, int r0, const float (&ds)[NJ][4]) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int j = 0; j < NJ; ++j) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      *reinterpret_cast<uint32_t*>(ds_s + (r0 + g + 8 * hf) * lds + j * 8 + 2 * t) = pack(ds[j][2 * hf], ds[j][2 * hf + 1]);
    }
  }
}

// Adds the warp's part of the step's dq, 16 rows × DC columns (queries
// q0 + row0 .., columns col0 .. of head_dim D), to dq_accum in key-tile
// order: waits for key tile k0 / TILE's turn on the (query step, head)
// semaphore, adds (or writes, for the first key tile), passes the turn.
template <int D, int DC>
__device__ __forceinline__ void add_dq_in_turn(const FlashBwdParams& p, const float (&dq)[DC / 8][4], uint32_t start,
                                               int q0, int k0, int len, uint32_t h, int row0, int col0, int* flag_s) {
  const size_t q_stride = (size_t)p.n_heads * D;
  uint32_t* sem = ptr<uint32_t>(p.dq_sem) + (size_t)(start + q0) * p.n_heads + h;
  const uint32_t turn = (uint32_t)(k0 / TILE);
  uint32_t* error = dq_error_word(p);
  const bool ok = wait_turn(sem, turn, error, flag_s);
  float* rows = ptr<float>(p.dq_accum) + (size_t)(start + q0) * q_stride + (size_t)h * D + col0;
  add_rows_f32<DC>(rows, q_stride, row0, len - q0, dq, turn == 0, !ok);
  pass_turn(sem, turn);
}

// The warp's keys r0.. of dk, dv: bf16 into dk, dv without GQA, else fp32
// into head h's parts.
template <int D>
__device__ __forceinline__ void store_dkdv(const FlashBwdParams& p, const float (&dk)[D / 8][4],
                                           const float (&dv)[D / 8][4], uint32_t start, int k0, int len, uint32_t h,
                                           uint32_t kvh, int r0) {
  const size_t q_stride = (size_t)p.n_heads * D, kv_stride = (size_t)p.n_kv_heads * D;
  if (p.n_heads == p.n_kv_heads) {
    const float one[2] = {1.0f, 1.0f};
    const size_t kv_row0 = (size_t)(start + k0) * kv_stride + (size_t)kvh * D;
    store_rows<D>(ptr<bf16>(p.dk) + kv_row0, kv_stride, r0, len - k0, dk, one);
    store_rows<D>(ptr<bf16>(p.dv) + kv_row0, kv_stride, r0, len - k0, dv, one);
  } else {
    const size_t part_row0 = (size_t)(start + k0) * q_stride + (size_t)h * D;
    store_rows_f32<D>(ptr<float>(p.dk_part) + part_row0, q_stride, r0, len - k0, dk);
    store_rows_f32<D>(ptr<float>(p.dv_part) + part_row0, q_stride, r0, len - k0, dv);
  }
}

// The part of dk, dv that query head h = blockIdx.y gives the tile's 64 keys
// (of kv head h / group), over the queries from the tile's first key to the
// sequence's end in steps of BQ, ascending:
//   dv_j += Σ_i p_ij·dout_i,   dk_j += Σ_i ds_ij·q_i.
// Without GQA (group 1) that is dk, dv itself, written as bf16; with GQA
// it is written in fp32 to dk_part, dv_part ([tokens, n_heads, head_dim]),
// and flash_attention_dkdv_sum adds the group's parts in head order.
// Tiles are taken in the reverse of the table's order (most work first).
//
// DQ (the fused backward): also dq, in the same pass. Each step's dS goes
// through shared memory so that each warp takes 16 of the step's queries
// over all 64 keys, dq_i += Σ_j ds_ij·k_j, for D / CW of the columns (BQ =
// 64 at head_dim 64: warp w has queries 16w.., every column; BQ = 32 at
// 128: warp w has queries 16·(w % 2).., columns 64·(w / 2).., so that its
// dq is 32 registers, as at 64); the block adds that to dq_accum (fp32
// [tokens, n_heads, head_dim]) in key-tile order: the semaphore of (query
// step, head), dq_sem[step's first token·n_heads + h], counts the key
// tiles that have added (every key tile k0 ≤ q0 visits step q0: k0 and the
// steps are multiples of BQ), so the sums run in the same order on every
// run. The first key tile writes rather than adds, so
// dq_accum needs no clearing (dq_sem does). Key tile j waits for tile j − 1
// of the same sequence and head, which has a lower block index (the table
// reversed is in ascending tile order) and so started first.
template <int D, bool FAST, bool DQ = false>
__device__ __forceinline__ void bwd_dkdv(const FlashBwdParams& p) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int LD = ld<D>();
  constexpr int BQ = dkdv_step<D>();
  constexpr int NJ = BQ / 8;
  // The fused dq: QW warps across the step's queries (16 each), CW across
  // head_dim (DC columns each).
  constexpr int QW = DQ ? BQ / 16 : 4, CW = 4 / QW, DC = D / CW;
  static_assert(!DQ || (BQ % 16 == 0 && QW * CW == 4 && DC % 16 == 0), "the fused dq's warps cover the step");
  if (blockDim.x != THREADS || dyn_smem_bytes() < (uint32_t)dkdv_smem<D, FAST, DQ>()) {
    // A bad launch: with DQ, set the error word, so that dq comes out NaN
    // rather than unwritten sums.
    if (DQ && threadIdx.x == 0) atomicOr(dq_error_word(p), 1u);
    return;
  }
  if (blockIdx.x >= p.n_blocks || blockIdx.y >= p.n_heads) return;
  bf16* k_s = reinterpret_cast<bf16*>(smem);
  bf16* v_s = k_s + TILE * LD;
  bf16* qdo_s = v_s + TILE * LD;  // buffer b: q at qdo_s + b·2·BQ·LD, dout after it
  // buffer b: lse·log2 e of the step's queries at f_s + b·2·BQ, delta after it
  float* f_s = reinterpret_cast<float*>(qdo_s + nbuf<FAST>() * 2 * BQ * LD);
  bf16* ds_s = reinterpret_cast<bf16*>(f_s + nbuf<FAST>() * 2 * BQ);  // DQ: [TILE keys][BQ queries], then 2 ints
  // DQ: the turn's outcome and the block's ticket, in shared memory after dS.
  int* flag_s = reinterpret_cast<int*>(ds_s + TILE * ds_ld<D>());
  // Which (tile, head) this block takes: its grid position, or with DQ its
  // ticket, the order in which blocks started (same mapping), so that the
  // block a tile waits for (the key tile before it, same sequence and head,
  // a lower ticket) has started and will finish whatever the scheduler does.
  uint32_t bx = blockIdx.x, by = blockIdx.y;
  if (DQ) {
    uint32_t* counters = ptr<uint32_t>(p.dq_sem) + (size_t)p.tokens * p.n_heads;
    if (threadIdx.x == 0) {
      flag_s[0] = 1;  // no wait has failed yet
      flag_s[1] = (int)atomicAdd(counters, 1u);
    }
    __syncthreads();
    const uint32_t ticket = (uint32_t)flag_s[1];
    bx = ticket % p.n_blocks;
    by = ticket / p.n_blocks;
  }
  const Tile tl = tile_of(ptr<const uint32_t>(p.blocks), ptr<const uint32_t>(p.cu_seqlens), p.n_blocks - 1 - bx);
  const uint32_t h = by, group = p.n_heads / p.n_kv_heads, kvh = h / group;
  const size_t q_stride = (size_t)p.n_heads * D, kv_stride = (size_t)p.n_kv_heads * D;
  const int k0 = tl.t0, len = tl.len;
  const size_t kv_row0 = (size_t)(tl.start + k0) * kv_stride + (size_t)kvh * D;
  load_tile<D, TILE, false>(k_s, ptr<const bf16>(p.k) + kv_row0, kv_stride, len - k0);
  load_tile<D, TILE, false>(v_s, ptr<const bf16>(p.v) + kv_row0, kv_stride, len - k0);
  // Query step i (queries k0 + i·BQ ...) into buffer i % nbuf.
  auto load_q = [&](int i) {
    const int b = i % nbuf<FAST>(), q0 = k0 + i * BQ;
    const size_t q_row0 = (size_t)(tl.start + q0) * q_stride + (size_t)h * D;
    bf16* q_b = qdo_s + b * 2 * BQ * LD;
    load_tile<D, BQ, FAST>(q_b, ptr<const bf16>(p.q) + q_row0, q_stride, len - q0);
    load_tile<D, BQ, FAST>(q_b + BQ * LD, ptr<const bf16>(p.dout) + q_row0, q_stride, len - q0);
    load_lse_delta<BQ>(p, f_s + b * 2 * BQ, tl.start, q0, len, h);
    if (FAST) cp_async_commit();
  };

  const int warp = threadIdx.x >> 5;
  const int r0 = warp * 16;  // the warp's first key in the tile
  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    dk[n][0] = dk[n][1] = dk[n][2] = dk[n][3] = 0.0f;
    dv[n][0] = dv[n][1] = dv[n][2] = dv[n][3] = 0.0f;
  }
  const int n_steps = (len - k0 + BQ - 1) / BQ;
  if (FAST) load_q(0);
  for (int i = 0; i < n_steps; ++i) {
    const int q0 = k0 + i * BQ;
    if (FAST) {
      if (i + 1 < n_steps) {
        load_q(i + 1);
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
    } else {
      load_q(i);
    }
    __syncthreads();  // this step's tiles (and, on the first, k and v) are in shared memory
    const int b = i % nbuf<FAST>();
    const bf16* q_s = qdo_s + b * 2 * BQ * LD;
    const bf16* do_s = q_s + BQ * LD;
    const float* lse_s = f_s + b * 2 * BQ;
    const float* dl_s = lse_s + BQ;
    float s[NJ][4], dp[NJ][4];  // transposed: rows are the warp's keys, columns the step's queries
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
      s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
      dp[j][0] = dp[j][1] = dp[j][2] = dp[j][3] = 0.0f;
    }
    rows_dot_rows<D, NJ, FAST>(k_s, r0, q_s, 0, s);
    rows_dot_rows<D, NJ, FAST>(v_s, r0, do_s, 0, dp);
    probs_and_ds(s, dp, k0 + r0, q0, len, p.scale, lse_s, dl_s);
    c_times_rows<D, BQ / 16, FAST>(s, do_s, dv);
    c_times_rows<D, BQ / 16, FAST>(dp, q_s, dk);
    if (DQ) {
      constexpr int DS_LD = ds_ld<D>();
      store_ds(ds_s, DS_LD, r0, dp);
      __syncthreads();  // dS in shared memory
      const int qw = warp % QW, cw = warp / QW;
      float dq[1][DC / 8][4];
#pragma unroll
      for (int n = 0; n < DC / 8; ++n) dq[0][n][0] = dq[0][n][1] = dq[0][n][2] = dq[0][n][3] = 0.0f;
      // A = dSᵀ rows 16·qw .. (queries), columns the 64 keys; X = k's
      // columns DC·cw ...
      a_times_rows<DC, TILE / 16, FAST, 1, LD>(
          [&](int kk, int, uint32_t(&a)[4]) { ld_a_t<FAST>(ds_s, DS_LD, kk * 16, qw * 16, a); }, k_s + DC * cw, dq);
      add_dq_in_turn<D, DC>(p, dq[0], tl.start, q0, k0, len, h, 16 * qw, DC * cw, flag_s);
    }
    __syncthreads();  // every read of this step's buffer is done before it is refilled
  }
  store_dkdv<D>(p, dk, dv, tl.start, k0, len, h, kvh, r0);
}

// bwd_dkdv with the fused dq.
template <int D, bool FAST>
__device__ __forceinline__ void bwd_fused(const FlashBwdParams& p) {
  bwd_dkdv<D, FAST, true>(p);
}

// The Hopper kernels (sm_90a; empty bodies elsewhere), in files of their own:
// the wgmma building blocks, the forward, the one-pass backward, and the
// warp-specialised forward.
#include "flash_wgmma.cuh"
#include "flash_fwd_wgmma.cuh"
#include "flash_bwd_wgmma.cuh"
#include "flash_fwd_ws.cuh"
#include "flash_bwd_ws.cuh"

}  // namespace

// Entry points: flash_attention_{fwd,bwd_dq,bwd_dkdv}_d{64,128} are the fast
// variant, the same names with _simple the simple one.
#define ENGINE_FLASH_ENTRY(name, fn, P, D, FAST) \
  extern "C" __global__ void __launch_bounds__(THREADS) name(P p) { fn<D, FAST>(p); }
ENGINE_FLASH_ENTRY(flash_attention_fwd_d64, fwd, FlashFwdParams, 64, true)
ENGINE_FLASH_ENTRY(flash_attention_fwd_d128, fwd, FlashFwdParams, 128, true)
ENGINE_FLASH_ENTRY(flash_attention_bwd_dq_d64, bwd_dq, FlashBwdParams, 64, true)
ENGINE_FLASH_ENTRY(flash_attention_bwd_dq_d128, bwd_dq, FlashBwdParams, 128, true)
ENGINE_FLASH_ENTRY(flash_attention_bwd_dkdv_d64, bwd_dkdv, FlashBwdParams, 64, true)
ENGINE_FLASH_ENTRY(flash_attention_bwd_dkdv_d128, bwd_dkdv, FlashBwdParams, 128, true)
ENGINE_FLASH_ENTRY(flash_attention_fwd_d64_simple, fwd, FlashFwdParams, 64, false)
ENGINE_FLASH_ENTRY(flash_attention_fwd_d128_simple, fwd, FlashFwdParams, 128, false)
ENGINE_FLASH_ENTRY(flash_attention_bwd_dq_d64_simple, bwd_dq, FlashBwdParams, 64, false)
ENGINE_FLASH_ENTRY(flash_attention_bwd_dq_d128_simple, bwd_dq, FlashBwdParams, 128, false)
ENGINE_FLASH_ENTRY(flash_attention_bwd_dkdv_d64_simple, bwd_dkdv, FlashBwdParams, 64, false)
ENGINE_FLASH_ENTRY(flash_attention_bwd_dkdv_d128_simple, bwd_dkdv, FlashBwdParams, 128, false)
// The fused backward (dk, dv and dq in one pass; fast variant).
ENGINE_FLASH_ENTRY(flash_attention_bwd_fused_d64, bwd_fused, FlashBwdParams, 64, true)
ENGINE_FLASH_ENTRY(flash_attention_bwd_fused_d128, bwd_fused, FlashBwdParams, 128, true)
// The Hopper forward (wgmma; sm_90a, empty elsewhere).
ENGINE_FLASH_ENTRY(flash_attention_fwd_wgmma_d64, fwd_wgmma_entry, FlashFwdParams, 64, true)
ENGINE_FLASH_ENTRY(flash_attention_fwd_wgmma_d128, fwd_wgmma_entry, FlashFwdParams, 128, true)
// The Hopper one-pass backward (wgmma; sm_90a, empty elsewhere).
ENGINE_FLASH_ENTRY(flash_attention_bwd_wgmma_d64, bwd_wgmma_entry, FlashBwdParams, 64, true)
ENGINE_FLASH_ENTRY(flash_attention_bwd_wgmma_d128, bwd_wgmma_entry, FlashBwdParams, 128, true)
// The warp-specialised Hopper forward (TMA, mbarriers, wgmma; sm_90a, empty
// elsewhere). Its tensor maps must stay in parameter space (__grid_constant__):
// the TMA reads them by address.
#define ENGINE_FLASH_WS_ENTRY(name, D)                                                     \
  extern "C" __global__ void __launch_bounds__(ENGINE_FLASH_WS_THREADS, 1) name(const __grid_constant__ FlashWsParams p) { \
    fwd_ws<D>(p);                                                                          \
  }
ENGINE_FLASH_WS_ENTRY(flash_attention_fwd_ws_d64, 64)
ENGINE_FLASH_WS_ENTRY(flash_attention_fwd_ws_d128, 128)
// The warp-specialised Hopper backward (as the forward; sm_90a, empty elsewhere).
#define ENGINE_FLASH_WS_BWD_ENTRY(name, D)                                                   \
  extern "C" __global__ void __launch_bounds__(ENGINE_FLASH_WS_THREADS, 1) name(const __grid_constant__ FlashBwdWsParams p) { \
    bwd_ws<D>(p);                                                                            \
  }
ENGINE_FLASH_WS_BWD_ENTRY(flash_attention_bwd_ws_d64, 64)
ENGINE_FLASH_WS_BWD_ENTRY(flash_attention_bwd_ws_d128, 128)

// dq (bf16) = dq_accum (fp32), after the fused backward: one thread an
// element; all NaN if any ordered addition gave up (its error word).
extern "C" __global__ void __launch_bounds__(256) flash_attention_dq_from_accum(FlashBwdParams p) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (size_t)p.tokens * p.n_heads * p.head_dim) return;
  const uint32_t error = *dq_error_word(p);
  ptr<bf16>(p.dq)[i] = to_bf(error ? nan_f() : ptr<const float>(p.dq_accum)[i]);
}

// dk, dv (bf16) = Σ_r dk_part, dv_part of query heads g·group + r, r = 0, 1,
// ... in order, for every (token, kv head g, d): one thread an element.
extern "C" __global__ void __launch_bounds__(256) flash_attention_dkdv_sum(FlashBwdParams p) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  const size_t n = (size_t)p.tokens * p.n_kv_heads * p.head_dim;
  if (i >= n) return;
  const uint32_t group = p.n_heads / p.n_kv_heads;
  const size_t d = i % p.head_dim, tg = i / p.head_dim;  // tg = token·n_kv_heads + g
  // Row of query head g·group of the token: token·n_heads + g·group = tg·group.
  const size_t base = tg * group * p.head_dim + d;
  float sk = 0.0f, sv = 0.0f;
  for (uint32_t r = 0; r < group; ++r) {
    sk += ptr<const float>(p.dk_part)[base + (size_t)r * p.head_dim];
    sv += ptr<const float>(p.dv_part)[base + (size_t)r * p.head_dim];
  }
  ptr<bf16>(p.dk)[i] = to_bf(sk);
  ptr<bf16>(p.dv)[i] = to_bf(sv);
}

// delta[row] = Σ_d dout[row, d]·out[row, d] for rows (token, head), one warp
// each: lane sums d = lane, lane + 32, ... in order, then a fixed shuffle tree.
extern "C" __global__ void __launch_bounds__(32 * ENGINE_FLASH_DELTA_ROWS) flash_attention_delta(FlashBwdParams p) {
  const uint32_t lane = threadIdx.x & 31;
  const size_t row = (size_t)blockIdx.x * ENGINE_FLASH_DELTA_ROWS + (threadIdx.x >> 5);
  if (row >= (size_t)p.tokens * p.n_heads) return;
  const bf16* o = ptr<const bf16>(p.out) + row * p.head_dim;
  const bf16* d = ptr<const bf16>(p.dout) + row * p.head_dim;
  float s = 0.0f;
  for (uint32_t i = lane; i < p.head_dim; i += 32) s += to_f(o[i]) * to_f(d[i]);
#pragma unroll
  for (int k = 16; k > 0; k >>= 1) s += __shfl_xor_sync(0xffffffffu, s, k);
  if (lane == 0) ptr<float>(p.delta)[row] = s;
}
