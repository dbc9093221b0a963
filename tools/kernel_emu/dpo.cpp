// Runs kernels/dpo.cu (DPO's coefficient pass) on the CPU, one OS thread per
// CUDA thread, on cases that tests/kernel_emu.rs writes, and prints the
// coefficients and per-pair rows for the test to compare with dpo_loss.
//
// Input (little-endian), from stdin: u32 cases; per case: u32 threads;
// f64 beta, label_smoothing, per_pair; u32 loss_type, tokens, pairs; f32
// logp[tokens], ref_logp[tokens]; u8 mask[tokens]; u32 cu_seqlens[2·pairs+1].
// Output: "C <bits>" per token, then "P <bits> × 4" per pair, in hex.
#include "../../kernels/dpo.cu"

#include "launch.h"

int main() {
  const uint32_t cases = get<uint32_t>();
  for (uint32_t c = 0; c < cases; ++c) {
    const uint32_t threads = get<uint32_t>();
    DpoParams p = {};
    p.beta = get<double>();
    p.label_smoothing = get<double>();
    p.per_pair = get<double>();
    p.loss_type = get<uint32_t>();
    p.tokens = get<uint32_t>();
    p.pairs = get<uint32_t>();
    const size_t n = p.tokens;
    std::vector<float> logp = get_n<float>(n), ref = get_n<float>(n), coef(n, NAN);
    std::vector<uint8_t> mask = get_n<uint8_t>(n);
    std::vector<uint32_t> cu = get_n<uint32_t>(2 * (size_t)p.pairs + 1);
    std::vector<double> out(4 * (size_t)p.pairs, NAN);
    p.logp = (dptr)logp.data();
    p.ref_logp = (dptr)ref.data();
    p.mask = (dptr)mask.data();
    p.cu_seqlens = (dptr)cu.data();
    p.coef = (dptr)coef.data();
    p.pair_out = (dptr)out.data();
    launch(dpo_coefs, p, p.pairs, threads);
    put_floats("C", coef);
    for (uint32_t k = 0; k < p.pairs; ++k) put_doubles("P", &out[4 * (size_t)k], 4);
  }
  return 0;
}
