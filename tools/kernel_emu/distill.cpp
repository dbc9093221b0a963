// Runs kernels/distill.cu (forward KL, reverse KL, JSD; value and dz in
// place) on the CPU, one OS thread per CUDA thread, on cases that
// tests/kernel_emu.rs writes, and prints each row's divergence and dz for
// the test to compare with the CPU's distill_row.
//
// Input (little-endian), from stdin: u32 cases; per case: u32 threads, mode
// (0 forward, 1 reverse, 2 jsd), rows, vocab; f32 inv_temp, beta, log_beta,
// log_1m_beta; u16 student[rows·vocab], teacher[rows·vocab] (bf16 bits);
// f32 weight[rows]. Output: "L <bits>" per row's divergence, then
// "Z <bits>" per element of dz (bf16 bits), in hex.
#include "../../kernels/distill.cu"

#include "launch.h"

int main() {
  const uint32_t cases = get<uint32_t>();
  for (uint32_t c = 0; c < cases; ++c) {
    const uint32_t threads = get<uint32_t>(), mode = get<uint32_t>();
    DistillParams p = {};
    p.rows = get<uint32_t>();
    p.vocab = get<uint32_t>();
    p.inv_temp = get<float>();
    p.beta = get<float>();
    p.log_beta = get<float>();
    p.log_1m_beta = get<float>();
    const size_t n = (size_t)p.rows * p.vocab;
    // Rows start at row·vocab: with an odd vocab the 16-byte phase, and so
    // the kernel's scalar head, differs from row to row.
    std::vector<uint16_t> student = get_n<uint16_t>(n), teacher = get_n<uint16_t>(n);
    std::vector<float> weight = get_n<float>(p.rows), loss(p.rows, NAN);
    alignas(16) static uint16_t zs[1 << 22], zt[1 << 22];
    if (n > (1u << 22)) {
      fprintf(stderr, "distill emu: case too large\n");
      return 2;
    }
    memcpy(zs, student.data(), 2 * n);
    memcpy(zt, teacher.data(), 2 * n);
    p.student = (dptr)zs;
    p.teacher = (dptr)zt;
    p.weight = (dptr)weight.data();
    p.loss = (dptr)loss.data();
    void (*k)(DistillParams) = mode == 0 ? distill_forward : mode == 1 ? distill_reverse : distill_jsd;
    launch(k, p, p.rows, threads);
    put_floats("L", loss);
    for (size_t i = 0; i < n; ++i) printf("Z %x\n", zs[i]);
  }
  return 0;
}
