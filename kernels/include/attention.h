/* Parameters of kernels/attention.cu: the simple causal attention (the
 * reference the flash kernel is tested against; DESIGN.md §5), its backward,
 * and decode attention against a KV cache. Semantics are those of
 * src/backend/cpu/attention.rs.
 *
 * Layouts (row-major, bf16 unless noted):
 *   q, out, dout, dq: [tokens, n_heads, head_dim]
 *   k, v, dk, dv:     [tokens, n_kv_heads, head_dim]
 *   lse:              fp32 [tokens, n_heads], natural-log logsumexp of scale·q·k
 *   cu_seqlens:       u32 [n_seqs + 1], 0 = cu_seqlens[0] <= ... <= cu_seqlens[n_seqs] = tokens
 * Query head h reads kv head h / (n_heads / n_kv_heads). A token attends to
 * itself and the earlier tokens of its own sequence. */
#pragma once
#include "params.h"

/* Threads per block of every attention kernel. */
#define ENGINE_ATTN_THREADS 128
/* The largest head_dim the kernels take (each thread keeps
 * ENGINE_ATTN_MAX_HEAD_DIM / ENGINE_ATTN_THREADS fp32 accumulators). */
#define ENGINE_ATTN_MAX_HEAD_DIM 256

/* attention_fwd: out and lse. One block per (token, query head). */
typedef struct AttnFwdParams {
  dptr q;
  dptr k;
  dptr v;
  dptr out;
  dptr lse;
  dptr cu_seqlens;
  uint32_t tokens;
  uint32_t n_seqs;
  uint32_t n_heads;
  uint32_t n_kv_heads;
  uint32_t head_dim;
  float scale;
} AttnFwdParams;

/* attention_bwd_dq (one block per (token, query head)) and attention_bwd_dkdv
 * (one block per (token, kv head)): overwrite dq, dk, dv from dout and the
 * forward's out and lse. */
typedef struct AttnBwdParams {
  dptr q;
  dptr k;
  dptr v;
  dptr out;
  dptr lse;
  dptr dout;
  dptr dq;
  dptr dk;
  dptr dv;
  dptr cu_seqlens;
  uint32_t tokens;
  uint32_t n_seqs;
  uint32_t n_heads;
  uint32_t n_kv_heads;
  uint32_t head_dim;
  float scale;
} AttnBwdParams;

/* attention_decode: one query per sequence against a KV cache.
 * q, out: [batch, n_heads, head_dim]; k_cache, v_cache:
 * [n_slots, capacity, n_kv_heads, head_dim]; slots, lens: u32 [batch].
 * Sequence b reads positions 0..lens[b] of slot slots[b]. One block per
 * (sequence, query head). */
typedef struct AttnDecodeParams {
  dptr q;
  dptr k_cache;
  dptr v_cache;
  dptr slots;
  dptr lens;
  dptr out;
  uint32_t batch;
  uint32_t n_slots;
  uint32_t capacity;
  uint32_t n_heads;
  uint32_t n_kv_heads;
  uint32_t head_dim;
  float scale;
} AttnDecodeParams;
