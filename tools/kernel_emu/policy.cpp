// Runs kernels/policy.cu (the policy losses' per-token coefficient pass) on
// the CPU, one OS thread per CUDA thread, on cases that tests/kernel_emu.rs
// writes (every variant, KL estimator, aggregation, TIS, entropy and NLL
// term, a fully masked sequence), and prints the coefficients and the
// per-sequence sums for the test to compare with src/loss/policy.rs.
//
// Input (little-endian), from stdin: u32 cases; per case: u32 threads;
// PolicyParams' numbers (15 f64: eps_low … l_max), then u32 kind, kl_kind,
// agg, has_dual, has_floor, has_tis, tokens, seqs, and u32 flags has_ref,
// has_sampler, has_entropy, want_ent_coef; f32 logp, old_logp, [ref_logp],
// [sampler_logp], [entropy] (tokens each); u8 mask[tokens]; u32
// cu_seqlens[seqs + 1]; f32 advantages[seqs], rewards[seqs].
// Output: "C <bits>" per token's coef, "E <bits>" per token's ent_coef (if
// asked), "S <bits> × ENGINE_POLICY_STATS" per sequence, in hex.
#include "../../kernels/policy.cu"

#include "launch.h"

int main() {
  const uint32_t cases = get<uint32_t>();
  for (uint32_t c = 0; c < cases; ++c) {
    const uint32_t threads = get<uint32_t>();
    PolicyParams p = {};
    double* nums[] = {&p.eps_low,  &p.eps_high,     &p.dual_clip, &p.beta1,         &p.beta2,
                      &p.cispo_floor, &p.cispo_cap, &p.kl_coef,   &p.entropy_coef,  &p.tis_cap,
                      &p.nll_k,    &p.correct_score, &p.step_tokens, &p.step_seqs, &p.l_max};
    for (double* x : nums) *x = get<double>();
    uint32_t* ints[] = {&p.kind, &p.kl_kind, &p.agg, &p.has_dual, &p.has_floor, &p.has_tis, &p.tokens, &p.seqs};
    for (uint32_t* x : ints) *x = get<uint32_t>();
    const uint32_t has_ref = get<uint32_t>(), has_sampler = get<uint32_t>(), has_entropy = get<uint32_t>(),
                   want_ent = get<uint32_t>();
    const size_t n = p.tokens;
    std::vector<float> logp = get_n<float>(n), old = get_n<float>(n);
    std::vector<float> ref = has_ref ? get_n<float>(n) : std::vector<float>();
    std::vector<float> sampler = has_sampler ? get_n<float>(n) : std::vector<float>();
    std::vector<float> entropy = has_entropy ? get_n<float>(n) : std::vector<float>();
    std::vector<uint8_t> mask = get_n<uint8_t>(n);
    std::vector<uint32_t> cu = get_n<uint32_t>(p.seqs + 1);
    std::vector<float> adv = get_n<float>(p.seqs), rew = get_n<float>(p.seqs);
    std::vector<float> coef(n, NAN), ent_coef(n, NAN);
    std::vector<double> seq_out((size_t)p.seqs * ENGINE_POLICY_STATS, NAN);
    p.logp = (dptr)logp.data();
    p.old_logp = (dptr)old.data();
    p.ref_logp = has_ref ? (dptr)ref.data() : 0;
    p.sampler_logp = has_sampler ? (dptr)sampler.data() : 0;
    p.entropy = has_entropy ? (dptr)entropy.data() : 0;
    p.mask = (dptr)mask.data();
    p.cu_seqlens = (dptr)cu.data();
    p.advantages = (dptr)adv.data();
    p.rewards = (dptr)rew.data();
    p.coef = (dptr)coef.data();
    p.ent_coef = want_ent ? (dptr)ent_coef.data() : 0;
    p.seq_out = (dptr)seq_out.data();
    launch(policy_coefs, p, p.seqs, threads);
    put_floats("C", coef);
    if (want_ent) put_floats("E", ent_coef);
    for (uint32_t s = 0; s < p.seqs; ++s) put_doubles("S", &seq_out[(size_t)s * ENGINE_POLICY_STATS], ENGINE_POLICY_STATS);
  }
  return 0;
}
