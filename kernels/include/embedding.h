/* Parameters of kernels/embedding.cu. */
#pragma once
#include "params.h"

/* out[t] = table[ids[t]], rows of dim. An id ≥ vocab reads nothing: its row
 * of out is written with zeros and *error is set to 1 (never cleared by a
 * kernel; the host reads and resets it).
 * table: bf16[vocab, dim]; ids: u32[tokens]; out: bf16[tokens, dim]; error: u32[1]. */
typedef struct EmbeddingFwdParams {
  dptr table;
  dptr ids;
  dptr out;
  dptr error;
  uint32_t tokens;
  uint32_t vocab;
  uint32_t dim;
} EmbeddingFwdParams;

/* embedding_bwd_reference: dtable[ids[t]] += dout[t], one thread per column.
 * Each distinct id is summed once, in fp32, starting from the stored row and
 * adding its tokens in token order, then rounded to bf16 once. O(tokens²):
 * the obviously correct version, for tests. Ids ≥ vocab are skipped and set
 * *error. dout: bf16[tokens, dim]; ids: u32[tokens]; dtable: bf16[vocab, dim]. */
typedef struct EmbeddingBwdParams {
  dptr dout;
  dptr ids;
  dptr dtable;
  dptr error;
  uint32_t tokens;
  uint32_t vocab;
  uint32_t dim;
} EmbeddingBwdParams;

/* embedding_bwd_sorted: the same sums from a host-built plan, u32:
 *   plan[0 .. tokens)                          order: token indices stably sorted by id
 *   plan[tokens .. tokens+segments+1)          starts: segment s is order[starts[s] .. starts[s+1])
 *   plan[tokens+segments+1 .. tokens+2·segments+1)  seg_ids: the id of segment s
 * Block (s, y) handles segment s, columns y·blockDim + threadIdx.
 * An index out of range (a bad plan) is skipped and sets *error.
 * embedding_fwd8 is the gather with one thread per 8 columns of a row
 * (embedding_fwd, one thread per element, is the simple version). */
typedef struct EmbeddingBwdSortedParams {
  dptr dout;
  dptr plan;
  dptr dtable;
  dptr error;
  uint32_t tokens;
  uint32_t vocab;
  uint32_t dim;
  uint32_t segments;
} EmbeddingBwdSortedParams;
