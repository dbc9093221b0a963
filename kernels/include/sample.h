/* Parameters of kernels/sample.cu: one token per row of logits, drawn as the
 * CPU sampler draws it (src/rollout/sampler.rs, `sample`), the row's uniform
 * number coming from its random stream (rng.h). One block of
 * ENGINE_SAMPLE_THREADS per row.
 *
 * With greedy set: the first maximum of the row, and logprob = z[t] − lse(z).
 * Otherwise s = z·inv_temp (in double, as the CPU) and, when `filtered` is 0,
 * the inverse CDF of softmax(s) in token order at u; when `filtered` is 1,
 * top-k (top_k > 0), then top-p (use_top_p: drop the longest low tail whose
 * mass is ≤ top_p_budget = 1 − top_p), then min-p (min_p > 0), each on the
 * set the previous one kept, ties in the score broken by the lower id first
 * (the CPU's sort order), and the inverse CDF of the renormalised kept set in
 * token order. logprob is always that of the untruncated softmax(s).
 *
 * logits: bf16 [rows, vocab]; draws: u64 [rows, 2] (stream key, step);
 * tokens: u32 [rows]; logprobs: fp32 [rows]. */
#pragma once
#include "params.h"

#define ENGINE_SAMPLE_THREADS 256

typedef struct SampleParams {
  double inv_temp;
  double top_p_budget;
  double min_p;
  dptr logits;
  dptr draws;
  dptr tokens;
  dptr logprobs;
  uint32_t rows;
  uint32_t vocab;
  uint32_t top_k;
  uint32_t greedy;
  uint32_t filtered;
  uint32_t use_top_p;
} SampleParams;

/* rng_uniform: out[i] = engine_uniform(draws[2i], draws[2i+1]) for i < n
 * (tests compare these with the CPU streams, bit for bit).
 * draws: u64 [n, 2]; out: f64 [n]. */
typedef struct RngParams {
  dptr draws;
  dptr out;
  uint32_t n;
} RngParams;
