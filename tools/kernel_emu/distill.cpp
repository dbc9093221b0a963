// Runs kernels/distill.cu (forward KL, reverse KL, JSD; value and dz in
// place) on the CPU, one OS thread per CUDA thread, on cases that
// tests/kernel_emu.rs writes, and prints each row's divergence and dz for
// the test to compare with the CPU's distill_row.
//
// Input (little-endian), from stdin: u32 cases; per case: u32 threads, mode
// (0 forward, 1 reverse, 2 jsd: the row kernels; 3, 4, 5: the split kernels,
// all of a case's blocks run at once; 6, 7, 8: the split kernels with only
// a row's worth of blocks resident, started in the order that would stall a
// grid mapped by block index: block index c·rows + r for chunk c of row r,
// all first chunks first), rows, vocab; f32 inv_temp, beta, log_beta,
// log_1m_beta; u16 student[rows·vocab], teacher[rows·vocab] (bf16 bits);
// f32 weight[rows]. Output: "L <bits>" per row's divergence, then
// "Z <bits>" per element of dz (bf16 bits), in hex; split kernels first
// "C <chunks>", the blocks per row.
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
    if (mode < 3) {
      void (*k)(DistillParams) = mode == 0 ? distill_forward : mode == 1 ? distill_reverse : distill_jsd;
      launch(k, p, p.rows, threads);
    } else {
      // As the host (src/backend/cuda/distill.rs) sizes them.
      const uint32_t per_chunk = threads * ENGINE_DISTILL_SPLIT_VECS;
      p.chunks = std::max(1u, (p.vocab / 8 + per_chunk - 1) / per_chunk);
      const size_t parts_word = (2 + (size_t)p.rows + 1) & ~(size_t)1;
      // As on the GPU, only the counters are zero; the parts start as NaN bits.
      std::vector<uint64_t> scratch((parts_word + (size_t)p.rows * p.chunks * 10) / 2 + 1, ~0ull);
      memset(scratch.data(), 0, 4 * (2 + (size_t)p.rows));
      p.scratch = (dptr)scratch.data();
      const uint32_t m = mode % 3;
      void (*k)(DistillParams) = m == 0 ? distill_split_forward : m == 1 ? distill_split_reverse : distill_split_jsd;
      if (mode < 6) {
        launch_at_once(k, p, p.rows * p.chunks, threads);
      } else {
        std::vector<unsigned> order;
        for (uint32_t c = 0; c < p.chunks; ++c) {
          for (uint32_t r = 0; r < p.rows; ++r) order.push_back(r * p.chunks + c);
        }
        launch_limited(k, p, order, threads, p.chunks);
      }
      if (((const uint32_t*)scratch.data())[1] != 0) fprintf(stderr, "distill emu: a wait gave up\n");
      printf("C %x\n", p.chunks);
    }
    put_floats("L", loss);
    for (size_t i = 0; i < n; ++i) printf("Z %x\n", zs[i]);
  }
  return 0;
}
