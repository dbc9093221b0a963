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

/* attention_decode: one query per sequence against a KV cache of rows.
 * q, out: [batch, n_heads, head_dim]; k_cache, v_cache:
 * [n_rows, n_kv_heads, head_dim]; plan: u32 [batch][ENGINE_DECODE_PLAN_WORDS]
 * = (prefix_row, prefix_len, own_row, len) per sequence: sequence b attends
 * to its positions 0..len, position j at cache row prefix_row + j when
 * j < prefix_len (a prompt's keys, shared by its samples), else at row
 * own_row + j - prefix_len (DecodeSeq in src/backend/decode_plan.rs).
 *
 * The grouped kernel (attention_decode_gqa, kernels/decode_attention.cu) may
 * split each sequence's keys into n_splits runs of split_keys keys (split
 * s: keys s·split_keys ..), one block each, when there are too few
 * (sequence, kv head) pairs to fill the GPU: each block then writes its
 * partial softmax state to `partial` (fp32, per (sequence b, kv head g,
 * split s) at ((b·n_kv_heads + g)·n_splits + s)·group·(head_dim + 2): the
 * group's unnormalised sums [group][head_dim], then their max [group] and
 * sum of exponentials [group]), and attention_decode_combine (one block per
 * (sequence, kv head)) merges the splits in order into out. With n_splits
 * = 1 the grouped kernel writes out itself and partial is unused; the
 * simple kernel ignores all three. */
#define ENGINE_DECODE_PLAN_WORDS 4
typedef struct AttnDecodeParams {
  dptr q;
  dptr k_cache;
  dptr v_cache;
  dptr plan;
  dptr out;
  uint32_t batch;
  uint32_t n_rows;
  uint32_t n_heads;
  uint32_t n_kv_heads;
  uint32_t head_dim;
  float scale;
  dptr partial;
  uint32_t split_keys;
  uint32_t n_splits;
} AttnDecodeParams;
