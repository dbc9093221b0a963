// Runs kernels/sample.cu on the CPU, one OS thread per CUDA thread, on cases
// that tests/kernel_emu.rs writes (random logit rows, ties included, every
// filter) and prints each row's token and log-probability, and the rng.h
// stream keys and draws, for the test to compare with the CPU sampler's.
// What it cannot check is the hardware (the double-precision exp and log of
// the device's math library may differ from the host's by an ulp).
//
// Input (little-endian), from stdin:
//   u32 n; n × (u64 seed, prompt, sample, step)
//   u32 cases; per case: u32 threads; SampleParams' settings (f64 inv_temp,
//   top_p_budget, min_p; u32 rows, vocab, top_k, greedy, filtered,
//   use_top_p); u16 logits[rows·vocab] (bf16 bits); u64 draws[2·rows]
// Output, to stdout: "K <key> <u bits>" per stream draw, then
// "T <token> <logprob bits>" per row, in hex.
#include "../../kernels/sample.cu"

#include "launch.h"

int main() {
  const uint32_t n = get<uint32_t>();
  for (uint32_t i = 0; i < n; ++i) {
    const uint64_t seed = get<uint64_t>(), prompt = get<uint64_t>(), sample = get<uint64_t>(), step = get<uint64_t>();
    const uint64_t key = engine_stream_key(seed, prompt, sample);
    const double u = engine_uniform(key, step);
    uint64_t bits;
    memcpy(&bits, &u, 8);
    printf("K %llx %llx\n", (unsigned long long)key, (unsigned long long)bits);
  }
  const uint32_t cases = get<uint32_t>();
  for (uint32_t c = 0; c < cases; ++c) {
    const uint32_t threads = get<uint32_t>();
    SampleParams p = {};
    p.inv_temp = get<double>();
    p.top_p_budget = get<double>();
    p.min_p = get<double>();
    p.rows = get<uint32_t>();
    p.vocab = get<uint32_t>();
    p.top_k = get<uint32_t>();
    p.greedy = get<uint32_t>();
    p.filtered = get<uint32_t>();
    p.use_top_p = get<uint32_t>();
    std::vector<uint16_t> logits = get_n<uint16_t>((size_t)p.rows * p.vocab);
    std::vector<uint64_t> draws = get_n<uint64_t>(2 * (size_t)p.rows);
    std::vector<uint32_t> tokens(p.rows, 0xFFFFFFFFu);
    std::vector<float> logprobs(p.rows, NAN);
    p.logits = (dptr)logits.data();
    p.draws = (dptr)draws.data();
    p.tokens = (dptr)tokens.data();
    p.logprobs = (dptr)logprobs.data();
    launch(sample_rows, p, p.rows, threads);
    for (uint32_t r = 0; r < p.rows; ++r) {
      uint32_t bits;
      memcpy(&bits, &logprobs[r], 4);
      printf("T %x %x\n", tokens[r], bits);
    }
  }
  return 0;
}
