/* Parameters of kernels/flash_attention.cu: FlashAttention-2-style causal
 * attention on bf16 tensor cores (mma.sync m16n8k16, fp32 accumulators) for
 * head_dim 64 and 128, forward and deterministic backward. Same layouts and
 * semantics as attention.h (the simple kernels, the reference):
 *   q, out, dout, dq: bf16 [tokens, n_heads, head_dim]
 *   k, v, dk, dv:     bf16 [tokens, n_kv_heads, head_dim]
 *   lse, delta:       fp32 [tokens, n_heads]
 *   cu_seqlens:       u32 [n_seqs + 1]
 * Every bf16 buffer starts on a 16-byte boundary (the host checks it).
 *
 * Work is cut into tiles of ENGINE_FLASH_TILE tokens of one sequence
 * (ENGINE_FLASH_FWD_TILE for the fast forward's queries, and
 * ENGINE_FLASH_DQ_TILE_D64 for the fast dq kernel's at head_dim 64):
 * `blocks` (u32 [2 * n_blocks], built by the host) lists the tiles as pairs
 * (sequence, tile index within the sequence), longest-running first for the
 * forward and dq (tile index descending; dk/dv walk it backwards, tile
 * index ascending). blockIdx.x picks the pair, blockIdx.y the query head
 * (the fused backward takes both from a ticket, in the same order). */
#pragma once
#include "params.h"

/* Threads per block of every flash kernel (4 warps, 16 tile rows each; 32
 * in the fast forward). */
#define ENGINE_FLASH_THREADS 128
/* Tokens per tile: query rows of a dq block (and of the simple forward's),
 * keys of a dk/dv block, and keys per step of dq's loop (and the simple
 * forward's). */
#define ENGINE_FLASH_TILE 64
/* The fast forward's query rows per block: each warp owns 32 rows (two
 * 16-row m-tiles), so each K and V fragment read from shared memory feeds
 * two mma instead of one, and each K/V tile is loaded once per 128 queries. */
#define ENGINE_FLASH_FWD_TILE 128
/* The fast forward's keys per step, by head_dim (register budget). */
#define ENGINE_FLASH_FWD_KEYS_D64 64
#define ENGINE_FLASH_FWD_KEYS_D128 32
/* The fast dq kernel's query rows per block and keys per step at head_dim
 * 64 (two m-tiles per warp, as the forward); at 128 it keeps
 * ENGINE_FLASH_TILE and one m-tile (register budget). */
#define ENGINE_FLASH_DQ_TILE_D64 128
#define ENGINE_FLASH_DQ_KEYS_D64 64
/* bf16 elements of padding after each shared-memory row (bank conflicts). */
#define ENGINE_FLASH_PAD 8
/* Queries per step of the dk/dv loop, by head_dim (register budget). */
#define ENGINE_FLASH_DKDV_STEP_D64 64
#define ENGINE_FLASH_DKDV_STEP_D128 32
/* Rows (token, head) per block of flash_attention_delta (one warp a row). */
#define ENGINE_FLASH_DELTA_ROWS 4

/* The wgmma forward's descriptor reading the emulator passes with (the
 * ISA's words taken literally). */
#define ENGINE_FLASH_WGMMA_DESC 0

/* flash_attention_fwd_d{64,128}: out and lse. Grid (n_blocks, n_heads).
 * flash_attention_fwd_wgmma_d{64,128} (sm_90a): the same on wgmma, tiles of
 * ENGINE_FLASH_TILE queries. */
typedef struct FlashFwdParams {
  dptr q;
  dptr k;
  dptr v;
  dptr out;
  dptr lse;
  dptr cu_seqlens;
  dptr blocks;
  uint32_t n_blocks;
  uint32_t n_heads;
  uint32_t n_kv_heads;
  float scale;
  /* flash_attention_fwd_wgmma_d*: bit 0 swaps the leading and stride byte
   * offsets of the descriptors of K-major operands (K), bit 1 of MN-major
   * ones (V); see the kernel. */
  uint32_t wgmma_desc;
} FlashFwdParams;

/* A TMA tensor map: CUtensorMap's 128 opaque bytes, made on the host by
 * cuTensorMapEncodeTiled (the emulator keeps its own fields in them).
 * Aligned as CUDA 13's cuda.h aligns CUtensorMap (128; the TMA needs 64). */
typedef struct __attribute__((aligned(128))) EngineTmap {
  uint64_t opaque[16];
} EngineTmap;

/* The warp-specialised Hopper forward (sm_90a): ENGINE_FLASH_WS_THREADS
 * threads a block, one producer warpgroup (TMA) and two consumer
 * warpgroups of 64 query rows each, so a block takes ENGINE_FLASH_FWD_TILE
 * query rows; keys in steps of ENGINE_FLASH_WS_KEYS through
 * ENGINE_FLASH_WS_STAGES buffers of K and of V. */
#define ENGINE_FLASH_WS_THREADS 384
#define ENGINE_FLASH_WS_KEYS 128
#define ENGINE_FLASH_WS_STAGES 2

/* flash_attention_fwd_ws_d{64,128}: out and lse, as flash_attention_fwd,
 * over tiles of ENGINE_FLASH_FWD_TILE queries. Persistent: grid (g, 1) for
 * any g ≥ 1 (the host takes one block per SM); block b takes the work
 * items b, b + g, ... of the n_blocks · n_heads items (tile i / n_heads of
 * the table, head i % n_heads).
 * tq, tk, tv: 3-d tensor maps of q, k, v (dims head_dim, heads, tokens;
 * boxes of 64 × 1 × rows elements, rows 64 for q and ENGINE_FLASH_WS_KEYS
 * for k and v; bf16, 128-byte swizzle, zeros out of bounds). */
typedef struct FlashWsParams {
  EngineTmap tq;
  EngineTmap tk;
  EngineTmap tv;
  FlashFwdParams f;
} FlashWsParams;

/* The backward, three kernels in order:
 *   flash_attention_delta: delta[row] = Σ_d dout[row, d]·out[row, d];
 *     grid ceil(tokens·n_heads / ENGINE_FLASH_DELTA_ROWS);
 *   flash_attention_bwd_dq_d{64,128}: dq; grid (n_blocks, n_heads);
 *   flash_attention_bwd_dkdv_d{64,128}: each query head's part of dk, dv;
 *     grid (n_blocks, n_heads); without GQA (n_heads == n_kv_heads) the
 *     parts are dk, dv, else they go to dk_part, dv_part (fp32 [tokens,
 *     n_heads, head_dim]) and
 *   flash_attention_dkdv_sum: dk, dv = the sums of the parts over each kv
 *     head's query heads in head order; grid ceil(tokens·n_kv_heads·head_dim
 *     / 256), 256 threads.
 * No atomics: every output row has one owner and sums in a fixed order.
 *
 * The fused backward (head_dim 64), instead of dq and dk/dv:
 *   flash_attention_bwd_fused_d64: dk, dv (or their parts) as the dk/dv
 *     kernel, and dq accumulated in fp32 into dq_accum ([tokens, n_heads,
 *     head_dim]) in key-tile order, ordered by dq_sem (u32 [tokens·n_heads],
 *     zero before the launch); grid (n_blocks, n_heads);
 *   flash_attention_dq_from_accum: dq = dq_accum in bf16; grid
 *     ceil(tokens·n_heads·head_dim / 256), 256 threads.
 * flash_attention_bwd_wgmma_d{64,128} (sm_90a) in place of the fused kernel:
 * the same on wgmma, at both head dims. */
typedef struct FlashBwdParams {
  dptr q;
  dptr k;
  dptr v;
  dptr out;
  dptr lse;
  dptr dout;
  dptr delta;
  dptr dq;
  dptr dk;
  dptr dv;
  dptr dk_part;
  dptr dv_part;
  dptr dq_accum;
  dptr dq_sem;
  dptr cu_seqlens;
  dptr blocks;
  uint32_t tokens;
  uint32_t n_blocks;
  uint32_t n_heads;
  uint32_t n_kv_heads;
  uint32_t head_dim;
  float scale;
  /* flash_attention_bwd_wgmma_d*: as FlashFwdParams' wgmma_desc. */
  uint32_t wgmma_desc;
} FlashBwdParams;

/* The warp-specialised Hopper backward (sm_90a),
 * flash_attention_bwd_ws_d{64,128}, in place of the fused kernel (the same
 * outputs: dk, dv or their parts, dq_accum in key-tile order by dq_sem):
 * ENGINE_FLASH_WS_THREADS threads a block, a producer warpgroup (TMA loads;
 * the dq writer) and two consumer warpgroups of 64 keys each, so a block
 * takes ENGINE_FLASH_WS_KEYS keys: grid (n_blocks, n_heads) over the table
 * of ENGINE_FLASH_WS_KEYS-token tiles (each block takes its tile by ticket,
 * as the fused kernel). tq, tdo: 3-d tensor maps of q and dout as the
 * forward's tq (boxes of 64 rows); tk, tv as the forward's (boxes of
 * ENGINE_FLASH_WS_KEYS rows). Q and dO go through ENGINE_FLASH_WS_BWD_STAGES
 * buffers. */
#define ENGINE_FLASH_WS_BWD_STAGES 2
typedef struct FlashBwdWsParams {
  EngineTmap tq;
  EngineTmap tk;
  EngineTmap tv;
  EngineTmap tdo;
  FlashBwdParams b;
} FlashBwdWsParams;
