// RMSNorm, forward (with the fused residual add) beside its backward, fp32
// arithmetic. Two versions of each:
// - the simple ones (rmsnorm_fwd, rmsnorm_bwd + rmsnorm_dw_reduce): one
//   block per row (per 32 rows in the backward), scalar accesses; for tests,
//   and for rows wider than the fast kernels hold;
// - the fast ones: a row is held in registers by one warp (W = 1, rows up to
//   2048) or one block of 8 warps (W = 8, up to 8192), K groups of 8
//   elements per thread, 16-byte accesses when every row starts 16-byte
//   aligned (else scalar accesses of the same elements: the same bits), and
//   the weight gradient of dy · x · rstd in a fixed order: for rows of up
//   to 2048, fused into the dx pass (per-32-row shares in scratch, then
//   rmsnorm_dw_blocks); wider, a fixed-order column sum (colsum.cuh).
#include "colsum.cuh"
#include "common.cuh"
#include "rmsnorm.h"
#include "vec.cuh"

extern "C" __global__ void __launch_bounds__(ENGINE_ROW_THREADS) rmsnorm_fwd(RmsNormFwdParams p) {
  __shared__ float scratch[33];
  const uint32_t row = blockIdx.x;
  if (row >= p.rows) return;
  const size_t base = (size_t)row * p.dim;
  const bf16* x = ptr<const bf16>(p.x) + base;
  const bf16* r = p.residual ? ptr<const bf16>(p.residual) + base : nullptr;
  bf16* h = p.residual ? ptr<bf16>(p.h) + base : nullptr;
  const bf16* w = ptr<const bf16>(p.w);
  bf16* y = ptr<bf16>(p.y) + base;
  float ss = 0.0f;
  for (uint32_t i = threadIdx.x; i < p.dim; i += blockDim.x) {
    float v = to_f(x[i]);
    if (r) {
      // The sum is rounded to bf16 first: the normalised value is the stored h.
      const bf16 hv = to_bf(v + to_f(r[i]));
      h[i] = hv;
      v = to_f(hv);
    }
    ss += v * v;
  }
  const float rstd = rsqrtf(block_sum(ss, scratch) / (float)p.dim + p.eps);
  if (threadIdx.x == 0) ptr<float>(p.rstd)[row] = rstd;
  for (uint32_t i = threadIdx.x; i < p.dim; i += blockDim.x) {
    const float v = r ? to_f(h[i]) : to_f(x[i]);
    y[i] = to_bf(v * rstd * to_f(w[i]));
  }
}

// dx = rstd · (w∘dy − x̂ · mean(w∘dy∘x̂)), x̂ = x·rstd; dw += Σ_rows dy∘x̂.
// Block b handles rows [b·rows_per_block, …) and writes its dw share to
// dw_partial[b]; rmsnorm_dw_reduce then adds the shares into dw in order.
extern "C" __global__ void __launch_bounds__(ENGINE_ROW_THREADS) rmsnorm_bwd(RmsNormBwdParams p) {
  __shared__ float scratch[33];
  const bf16* w = ptr<const bf16>(p.w);
  float* part = ptr<float>(p.dw_partial) + (size_t)blockIdx.x * p.dim;
  for (uint32_t i = threadIdx.x; i < p.dim; i += blockDim.x) part[i] = 0.0f;
  const uint32_t r0 = blockIdx.x * p.rows_per_block;
  const uint32_t r1 = min(p.rows, r0 + p.rows_per_block);
  for (uint32_t row = r0; row < r1; ++row) {
    const size_t base = (size_t)row * p.dim;
    const bf16* x = ptr<const bf16>(p.x) + base;
    const bf16* dy = ptr<const bf16>(p.dy) + base;
    bf16* dx = ptr<bf16>(p.dx) + base;
    const float rstd = ptr<const float>(p.rstd)[row];
    float dot = 0.0f;
    for (uint32_t i = threadIdx.x; i < p.dim; i += blockDim.x) {
      const float xh = to_f(x[i]) * rstd;
      const float g = to_f(dy[i]);
      dot += g * to_f(w[i]) * xh;
      part[i] += g * xh;  // each thread owns its columns: no race
    }
    const float mean = block_sum(dot, scratch) / (float)p.dim;
    for (uint32_t i = threadIdx.x; i < p.dim; i += blockDim.x) {
      const float xh = to_f(x[i]) * rstd;
      float d = rstd * (to_f(dy[i]) * to_f(w[i]) - xh * mean);
      if (p.accumulate_dx) d += to_f(dx[i]);
      dx[i] = to_bf(d);
    }
  }
}

// dw[i] += Σ_b dw_partial[b][i], b in order. One thread per column.
extern "C" __global__ void rmsnorm_dw_reduce(RmsNormBwdParams p) {
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.dim) return;
  const uint32_t blocks = (p.rows + p.rows_per_block - 1) / p.rows_per_block;
  float s = 0.0f;
  for (uint32_t b = 0; b < blocks; ++b) s += ptr<const float>(p.dw_partial)[(size_t)b * p.dim + i];
  bf16* dw = ptr<bf16>(p.dw);
  dw[i] = to_bf(to_f(dw[i]) + s);
}

// ---- The fast kernels ----

// Group k of thread t of a row: elements 8·(t + k·32W) … + 7.
template <int W>
__device__ __forceinline__ uint32_t group_start(uint32_t t, int k) {
  return 8u * (t + (uint32_t)k * 32u * W);
}


// Σ over the row's threads (a warp, or the block's 8 warps): the warp's
// butterfly (every lane gets the same bits), then the 8 warp sums in order.
template <int W>
__device__ __forceinline__ float row_sum(float v, float* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (W == 1) return v;
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < W; ++i) s += red[i];
  return s;
}

// The fast forward: rows of up to 32·W·K·8 elements (the launcher checks).
// W = 1: 8 rows per block, one per warp; W = 8: one row per block.
template <int W, int K>
__device__ __forceinline__ void rmsnorm_fwd_rows(const RmsNormFwdParams& p) {
  __shared__ float red[8];
  const uint32_t row = blockIdx.x * (8 / W) + (threadIdx.x >> 5) / W;
  const uint32_t t = threadIdx.x % (32 * W);
  if (row >= p.rows) return;  // a whole warp (W = 1) or the whole block (W = 8)
  const uint32_t dim = p.dim;
  const bool res = p.residual != 0;
  const bool vec = dim % 8 == 0 && ((p.x | p.w | p.y | (res ? (p.residual | p.h) : 0)) & 15u) == 0;
  const size_t base = (size_t)row * dim;
  const bf16* x = ptr<const bf16>(p.x) + base;
  uint4 hv[K];  // the normalised row (h, or x), as bf16
  float ss = 0.0f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const uint32_t e0 = group_start<W>(t, k);
    hv[k] = make_uint4(0, 0, 0, 0);
    if (e0 < dim) hv[k] = load_row8(x, e0, dim, vec);
  }
  if (res) {
    const bf16* r = ptr<const bf16>(p.residual) + base;
    uint4 rv[K];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const uint32_t e0 = group_start<W>(t, k);
      rv[k] = make_uint4(0, 0, 0, 0);
      if (e0 < dim) rv[k] = load_row8(r, e0, dim, vec);
    }
    bf16* h = ptr<bf16>(p.h) + base;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      // The sum is rounded to bf16 first: the normalised value is the stored h.
      float a[8], b[8];
      unpack8(hv[k], a);
      unpack8(rv[k], b);
#pragma unroll
      for (int e = 0; e < 8; ++e) a[e] += b[e];
      hv[k] = pack8(a);
      const uint32_t e0 = group_start<W>(t, k);
      if (e0 < dim) store_row8(h, e0, dim, vec, hv[k]);
    }
  }
#pragma unroll
  for (int k = 0; k < K; ++k) {
    float a[8];
    unpack8(hv[k], a);  // 0 past the row's end
#pragma unroll
    for (int e = 0; e < 8; ++e) ss += a[e] * a[e];
  }
  const float rstd = rsqrtf(row_sum<W>(ss, red) / (float)dim + p.eps);
  if (t == 0) ptr<float>(p.rstd)[row] = rstd;
  const bf16* w = ptr<const bf16>(p.w);
  bf16* y = ptr<bf16>(p.y) + base;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const uint32_t e0 = group_start<W>(t, k);
    if (e0 >= dim) continue;
    float a[8], b[8];
    unpack8(hv[k], a);
    unpack8(load_row8(w, e0, dim, vec), b);
#pragma unroll
    for (int e = 0; e < 8; ++e) a[e] = a[e] * rstd * b[e];
    store_row8(y, e0, dim, vec, pack8(a));
  }
}

// The fast backward's dx: dot and dx as rmsnorm_bwd computes them, the row
// (dy, x) in registers, w read twice (it stays in L1/L2).
template <int W, int K>
__device__ __forceinline__ void rmsnorm_dx_rows(const RmsNormBwdParams& p) {
  __shared__ float red[8];
  const uint32_t row = blockIdx.x * (8 / W) + (threadIdx.x >> 5) / W;
  const uint32_t t = threadIdx.x % (32 * W);
  if (row >= p.rows) return;  // a whole warp (W = 1) or the whole block (W = 8)
  const uint32_t dim = p.dim;
  const bool vec = dim % 8 == 0 && ((p.dy | p.x | p.w | p.dx) & 15u) == 0;
  const size_t base = (size_t)row * dim;
  const bf16* x = ptr<const bf16>(p.x) + base;
  const bf16* dy = ptr<const bf16>(p.dy) + base;
  const bf16* w = ptr<const bf16>(p.w);
  bf16* dx = ptr<bf16>(p.dx) + base;
  const float rstd = ptr<const float>(p.rstd)[row];
  uint4 xv[K], gv[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const uint32_t e0 = group_start<W>(t, k);
    xv[k] = gv[k] = make_uint4(0, 0, 0, 0);
    if (e0 < dim) {
      xv[k] = load_row8(x, e0, dim, vec);
      gv[k] = load_row8(dy, e0, dim, vec);
    }
  }
  float dot = 0.0f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const uint32_t e0 = group_start<W>(t, k);
    if (e0 >= dim) continue;
    float a[8], g[8], ww[8];
    unpack8(xv[k], a);
    unpack8(gv[k], g);
    unpack8(load_row8(w, e0, dim, vec), ww);
#pragma unroll
    for (int e = 0; e < 8; ++e) dot += g[e] * ww[e] * (a[e] * rstd);
  }
  const float mean = row_sum<W>(dot, red) / (float)dim;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const uint32_t e0 = group_start<W>(t, k);
    if (e0 >= dim) continue;
    float a[8], g[8], ww[8], old[8];
    unpack8(xv[k], a);
    unpack8(gv[k], g);
    unpack8(load_row8(w, e0, dim, vec), ww);
    if (p.accumulate_dx) unpack8(load_row8(dx, e0, dim, vec), old);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float xh = a[e] * rstd;
      float d = rstd * (g[e] * ww[e] - xh * mean);
      if (p.accumulate_dx) d += old[e];
      a[e] = d;
    }
    store_row8(dx, e0, dim, vec, pack8(a));
  }
}

#define RMSNORM_ROWS(W, K)                                                                                      \
  extern "C" __global__ void __launch_bounds__(256) rmsnorm_fwd_w##W##_k##K(RmsNormFwdParams p) {               \
    rmsnorm_fwd_rows<W, K>(p);                                                                                  \
  }                                                                                                             \
  extern "C" __global__ void __launch_bounds__(256) rmsnorm_dx_w##W##_k##K(RmsNormBwdParams p) {                \
    rmsnorm_dx_rows<W, K>(p);                                                                                   \
  }
RMSNORM_ROWS(1, 1)
RMSNORM_ROWS(1, 2)
RMSNORM_ROWS(1, 4)
RMSNORM_ROWS(1, 8)
RMSNORM_ROWS(8, 2)
RMSNORM_ROWS(8, 4)

// ---- The fused backward: dx and the weight gradient's shares in one pass ----
// Rows of up to 2048 (one warp per row, K ≤ 8 groups of 8 per lane). Block b
// owns rows [32b, 32b + 32): warp w rows 32b + 4w … + 3, in row order, each
// as rmsnorm_dx_rows<1, K> computes dx, while the lane adds dy·x̂ of its
// columns into q (registers); the block then adds the 8 warps' q in warp
// order and writes dw_partial[b]. rmsnorm_dw_blocks adds the shares into dw
// (the order of kernels/include/rmsnorm.h). dy and x are read once.
#define BWD_ROWS ENGINE_RMSNORM_BWD_ROWS
#define BWD_WARP_ROWS ENGINE_RMSNORM_BWD_WARP_ROWS
#define BWD_WARPS (BWD_ROWS / BWD_WARP_ROWS)
#define BWD_THREADS (32 * BWD_WARPS)
#define BWD_GROUP ENGINE_RMSNORM_BWD_GROUP
static_assert(BWD_WARPS == 8 && BWD_THREADS == 256 && BWD_THREADS == ENGINE_ROW_THREADS, "the share combine maps one thread per column of a group");
static_assert(8 * 32 * 8 == ENGINE_RMSNORM_BWD_MAX_DIM, "K ≤ 8 groups of 8 per lane");

// Row `row`'s x and dy for this lane's K groups (0 past the row's end), and rstd.
template <int K>
__device__ __forceinline__ void bwd_load(const RmsNormBwdParams& p, uint32_t row, uint32_t lane, bool vec,
                                         uint4 (&xv)[K], uint4 (&gv)[K], float& rstd) {
  const size_t base = (size_t)row * p.dim;
  const bf16* x = ptr<const bf16>(p.x) + base;
  const bf16* dy = ptr<const bf16>(p.dy) + base;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const uint32_t e0 = group_start<1>(lane, k);
    xv[k] = gv[k] = make_uint4(0, 0, 0, 0);
    if (e0 < p.dim) {
      xv[k] = load_row8(x, e0, p.dim, vec);
      gv[k] = load_row8(dy, e0, p.dim, vec);
    }
  }
  rstd = ptr<const float>(p.rstd)[row];
}

// dx of row `row` (the arithmetic of rmsnorm_dx_rows<1, K>), and
// q[k][e] = fma(dy, x·rstd, q[k][e]) for the lane's columns.
template <int K>
__device__ __forceinline__ void bwd_row(const RmsNormBwdParams& p, uint32_t row, uint32_t lane, bool vec,
                                        const uint4 (&xv)[K], const uint4 (&gv)[K], float rstd, float (&q)[K][8]) {
  const uint32_t dim = p.dim;
  const bf16* w = ptr<const bf16>(p.w);
  bf16* dx = ptr<bf16>(p.dx) + (size_t)row * dim;
  float dot = 0.0f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const uint32_t e0 = group_start<1>(lane, k);
    if (e0 >= dim) continue;
    float a[8], g[8], ww[8];
    unpack8(xv[k], a);
    unpack8(gv[k], g);
    unpack8(load_row8(w, e0, dim, vec), ww);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      dot += g[e] * ww[e] * (a[e] * rstd);
      q[k][e] = __fmaf_rn(g[e], __fmul_rn(a[e], rstd), q[k][e]);
    }
  }
  const float mean = row_sum<1>(dot, nullptr) / (float)dim;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const uint32_t e0 = group_start<1>(lane, k);
    if (e0 >= dim) continue;
    float a[8], g[8], ww[8], old[8];
    unpack8(xv[k], a);
    unpack8(gv[k], g);
    unpack8(load_row8(w, e0, dim, vec), ww);
    if (p.accumulate_dx) unpack8(load_row8(dx, e0, dim, vec), old);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float xh = a[e] * rstd;
      float d = rstd * (g[e] * ww[e] - xh * mean);
      if (p.accumulate_dx) d += old[e];
      a[e] = d;
    }
    store_row8(dx, e0, dim, vec, pack8(a));
  }
}

// PF: the next row's loads are issued before the current row's arithmetic.
template <int K, bool PF>
__device__ __forceinline__ void rmsnorm_bwd_rows(const RmsNormBwdParams& p) {
  __shared__ float4 sh[BWD_WARPS][2 * 32];  // one group of 256 columns per warp
  const uint32_t warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const uint32_t dim = p.dim;
  const bool vec = dim % 8 == 0 && ((p.dy | p.x | p.w | p.dx) & 15u) == 0;
  const uint32_t r0 = blockIdx.x * BWD_ROWS + warp * BWD_WARP_ROWS;
  float q[K][8];
#pragma unroll
  for (int k = 0; k < K; ++k) {
#pragma unroll
    for (int e = 0; e < 8; ++e) q[k][e] = 0.0f;
  }
  uint4 xv[K], gv[K];
  float rstd = 0.0f;
  if (PF && r0 < p.rows) bwd_load<K>(p, r0, lane, vec, xv, gv, rstd);
#pragma unroll
  for (int i = 0; i < BWD_WARP_ROWS; ++i) {
    const uint32_t row = r0 + i;
    if (row >= p.rows) break;  // the whole warp
    if (PF) {
      uint4 xn[K], gn[K];
      float rn = 0.0f;
      const bool next = i + 1 < BWD_WARP_ROWS && row + 1 < p.rows;
      if (next) bwd_load<K>(p, row + 1, lane, vec, xn, gn, rn);
      bwd_row<K>(p, row, lane, vec, xv, gv, rstd, q);
      if (next) {
#pragma unroll
        for (int k = 0; k < K; ++k) xv[k] = xn[k], gv[k] = gn[k];
        rstd = rn;
      }
    } else {
      bwd_load<K>(p, row, lane, vec, xv, gv, rstd);
      bwd_row<K>(p, row, lane, vec, xv, gv, rstd, q);
    }
  }
  // share b, column c = Σ_w q_w(c) in warp order from 0; one group of 256
  // columns at a time, thread t owning column 256k + t.
  float* part = ptr<float>(p.dw_partial) + (size_t)blockIdx.x * dim;
  const float* col = reinterpret_cast<const float*>(&sh[0][0]) + threadIdx.x;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    if (k > 0) __syncthreads();  // the previous group is read
    sh[warp][2 * lane] = make_float4(q[k][0], q[k][1], q[k][2], q[k][3]);
    sh[warp][2 * lane + 1] = make_float4(q[k][4], q[k][5], q[k][6], q[k][7]);
    __syncthreads();
    const uint32_t c = 256u * k + threadIdx.x;
    if (c < dim) {
      float s = 0.0f;
#pragma unroll
      for (int w = 0; w < BWD_WARPS; ++w) s = __fadd_rn(s, col[w * 256]);
      part[c] = s;
    }
  }
}

#define RMSNORM_BWD(K, PF)                                                                                      \
  extern "C" __global__ void __launch_bounds__(BWD_THREADS) rmsnorm_bwd_k##K(RmsNormBwdParams p) {             \
    rmsnorm_bwd_rows<K, PF>(p);                                                                                 \
  }
RMSNORM_BWD(1, true)
RMSNORM_BWD(2, true)
RMSNORM_BWD(4, true)
RMSNORM_BWD(8, false)

// dw[j] = bf16(dw[j] + group 0 + group 1 + …), group g = shares
// dw_partial[16g … 16g + 15] added in order from 0. A block per 32 columns
// (lanes: 128-byte reads), warp w sums group g0 + w, warp 0 adds the 8
// group sums in order.
extern "C" __global__ void __launch_bounds__(256) rmsnorm_dw_blocks(RmsNormBwdParams p) {
  __shared__ float sh[8][32];
  const uint32_t warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const uint32_t c = blockIdx.x * 32 + lane;
  const bool ok = c < p.dim;
  const uint32_t blocks = p.rows / BWD_ROWS + (p.rows % BWD_ROWS != 0);
  const uint32_t groups = blocks / BWD_GROUP + (blocks % BWD_GROUP != 0);
  const float* part = ptr<const float>(p.dw_partial);
  bf16* dw = ptr<bf16>(p.dw);
  float acc = warp == 0 && ok ? to_f(dw[c]) : 0.0f;
  for (uint32_t g0 = 0; g0 < groups; g0 += 8) {  // the same trips for the whole block
    const uint32_t g = g0 + warp;
    float s = 0.0f;
    if (ok && g < groups) {
      const uint32_t b0 = g * BWD_GROUP;
      float v[BWD_GROUP];
#pragma unroll
      for (int i = 0; i < BWD_GROUP; ++i) v[i] = b0 + i < blocks ? part[(size_t)(b0 + i) * p.dim + c] : 0.0f;
#pragma unroll
      for (int i = 0; i < BWD_GROUP; ++i) s = __fadd_rn(s, v[i]);  // + 0 past the last share: no change
    }
    sh[warp][lane] = s;
    __syncthreads();
    if (warp == 0) {
      const uint32_t n = min(8u, groups - g0);
      for (uint32_t i = 0; i < n; ++i) acc = __fadd_rn(acc, sh[i][lane]);
    }
    __syncthreads();
  }
  if (warp == 0 && ok) dw[c] = to_bf(acc);
}

// dy · (x · rstd) of one row for the 8 columns j0 … j0+7 (colsum.cuh).
struct DwRows {
  struct Raw {
    uint4 g, x;
    float rstd;
  };
  const bf16 *dy, *x;
  const float* rstd;
  uint32_t dim, j0;
  bool vec;
  __device__ Raw load(uint32_t r) const {
    const size_t base = (size_t)r * dim;
    return Raw{load_row8(dy + base, j0, dim, vec), load_row8(x + base, j0, dim, vec), rstd[r]};
  }
  __device__ void add(const Raw& v, float c[8]) const {
    float g[8], a[8];
    unpack8(v.g, g);
    unpack8(v.x, a);
#pragma unroll
    for (int e = 0; e < 8; ++e) c[e] += g[e] * (a[e] * v.rstd);
  }
};

__device__ __forceinline__ DwRows dw_rows(const RmsNormBwdParams& p, uint32_t j0) {
  return DwRows{ptr<const bf16>(p.dy), ptr<const bf16>(p.x), ptr<const float>(p.rstd), p.dim, j0,
                p.dim % 8 == 0 && ((p.dy | p.x) & 15u) == 0};
}

// dw = bf16(dw + Σ_r dy·x·rstd) in the ENGINE_COLSUM order, block x owning
// columns 8x … 8x+7. gridDim.y = 1: the block walks every span and writes
// dw. gridDim.y > 1: block (x, s) writes span s's sums to dw_partial[s]
// (rows of dim), and rmsnorm_dw_spans adds them into dw in span order (the
// same bits).
extern "C" __global__ void __launch_bounds__(ENGINE_COLSUM_CHUNKS) rmsnorm_dw_colsum(RmsNormBwdParams p) {
  __shared__ float sh[COLSUM_SMEM];
  const uint32_t j0 = blockIdx.x * 8;
  if (j0 >= p.dim) return;  // the whole block leaves together
  const uint32_t t = threadIdx.x;
  const DwRows src = dw_rows(p, j0);
  const bool mine = t < 8 && j0 + t < p.dim;
  if (gridDim.y > 1) {
    const float sum = colsum_span(src, p.rows, blockIdx.y, sh);
    if (mine) ptr<float>(p.dw_partial)[(size_t)blockIdx.y * p.dim + j0 + t] = sum;
    return;
  }
  bf16* dw = ptr<bf16>(p.dw);
  float acc = mine ? to_f(dw[j0 + t]) : 0.0f;
  const uint32_t span = ENGINE_COLSUM_CHUNK * ENGINE_COLSUM_CHUNKS;
  const uint32_t spans = p.rows / span + (p.rows % span != 0);
  for (uint32_t s = 0; s < spans; ++s) {
    const float sum = colsum_span(src, p.rows, s, sh);
    if (t < 8) acc += sum;
  }
  if (mine) dw[j0 + t] = to_bf(acc);
}

// dw[i] = bf16(dw[i] + span 0 + span 1 + …) from dw_partial, in order.
extern "C" __global__ void rmsnorm_dw_spans(RmsNormBwdParams p) {
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.dim) return;
  const uint32_t span = ENGINE_COLSUM_CHUNK * ENGINE_COLSUM_CHUNKS;
  const uint32_t spans = p.rows / span + (p.rows % span != 0);
  bf16* dw = ptr<bf16>(p.dw);
  float acc = to_f(dw[i]);
  for (uint32_t s = 0; s < spans; ++s) acc += ptr<const float>(p.dw_partial)[(size_t)s * p.dim + i];
  dw[i] = to_bf(acc);
}
