// Runs kernels/logprob.cu on the CPU, one OS thread per CUDA thread, on cases
// that tests/kernel_emu.rs writes: the fast kernels (logprob_fwd, then
// logprob_bwd over the logits in place) and the scalar reference kernels, on
// bf16 or fp32 logits at an element offset (so that rows start at every
// 16-byte phase and the head, vector and tail paths all run).
//
// Input (little-endian), from stdin: u32 cases; per case: u32 rows, vocab,
// off (elements of padding before the logits), fp32 (0: bf16 logits),
// entropy (0: no entropy, no entropy term); f32 inv_temp; f32 logits
// [rows·vocab] (bf16 values when fp32 is 0); u32 targets[rows]; f32
// coef[rows], ent_coef[rows].
// Output per case, fast kernels then reference kernels: "L <bits>" per logp,
// "S <bits>" per lse, "H <bits>" per entropy (when asked), "D <bits>" per dz
// element (as f32).
#include "../../kernels/logprob.cu"

#include "launch.h"

// One kernel pair on a fresh copy of the logits; prints its results.
template <typename T>
static void run_case(bool fast, const std::vector<T>& logits0, size_t off, uint32_t rows, uint32_t vocab,
                     bool fp32, bool entropy, float inv_temp, std::vector<uint32_t>& targets,
                     std::vector<float>& coef, std::vector<float>& ent_coef) {
  std::vector<T> z = logits0;
  std::vector<float> logp(rows, -1.0f), lse(rows, -1.0f), ent(rows, -1.0f);
  LogprobFwdParams f = {};
  f.logits = (dptr)(z.data() + off);
  f.targets = (dptr)targets.data();
  f.logp = (dptr)logp.data();
  f.lse = (dptr)lse.data();
  f.entropy = entropy ? (dptr)ent.data() : 0;
  f.rows = rows;
  f.vocab = vocab;
  f.inv_temp = inv_temp;
  f.fp32 = fp32;
  launch(fast ? logprob_fwd : logprob_fwd_reference, f, rows, ENGINE_ROW_THREADS);
  LogprobBwdParams b = {};
  b.logits = f.logits;
  b.targets = f.targets;
  b.lse = f.lse;
  b.coef = (dptr)coef.data();
  b.ent_coef = entropy ? (dptr)ent_coef.data() : 0;
  b.entropy = entropy ? (dptr)ent.data() : 0;
  b.rows = rows;
  b.vocab = vocab;
  b.inv_temp = inv_temp;
  b.fp32 = fp32;
  launch(fast ? logprob_bwd : logprob_bwd_reference, b, rows, ENGINE_ROW_THREADS);
  put_floats("L", logp);
  put_floats("S", lse);
  if (entropy) put_floats("H", ent);
  std::vector<float> dz(z.size() - off);
  if constexpr (sizeof(T) == 2) {
    dz = from_bf(z.data() + off, dz.size());
  } else {
    for (size_t i = 0; i < dz.size(); ++i) dz[i] = z[off + i];
  }
  put_floats("D", dz);
}

int main() {
  const uint32_t cases = get<uint32_t>();
  for (uint32_t c = 0; c < cases; ++c) {
    const uint32_t rows = get<uint32_t>(), vocab = get<uint32_t>(), off = get<uint32_t>();
    const bool fp32 = get<uint32_t>() != 0, entropy = get<uint32_t>() != 0;
    const float inv_temp = get<float>();
    const size_t n = (size_t)rows * vocab;
    const std::vector<float> logits = get_n<float>(n);
    std::vector<uint32_t> targets = get_n<uint32_t>(rows);
    std::vector<float> coef = get_n<float>(rows), ent_coef = get_n<float>(rows);
    for (bool fast : {true, false}) {
      if (fp32) {
        // 16-byte aligned storage, the logits `off` floats past its start.
        std::vector<float> z(off + n, 0.0f);
        std::copy(logits.begin(), logits.end(), z.begin() + off);
        run_case(fast, z, off, rows, vocab, true, entropy, inv_temp, targets, coef, ent_coef);
      } else {
        run_case(fast, to_bf(logits, off), off, rows, vocab, false, entropy, inv_temp, targets, coef, ent_coef);
      }
    }
  }
}
