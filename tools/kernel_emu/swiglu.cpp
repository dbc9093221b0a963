// Runs kernels/swiglu.cu on the CPU, one OS thread per CUDA thread, on cases
// that tests/kernel_emu.rs writes: each case once on the pair layout (gate
// and up as the two halves of each row of one [rows, 2·cols] buffer, as the
// model's MLP lays them out) and once on flat gate and up buffers holding
// the same values, so the test can compare the two bit for bit and both with
// the CPU's SwiGLU.
//
// Input (little-endian), from stdin: u32 cases; per case: u32 rows, cols,
// off (elements of padding before the pair buffers, so that they are not
// 16-byte aligned); f32 gu[rows·2·cols], dout[rows·cols] (bf16 values).
// Output per case: "O <bits>" per out element and "G <bits>" per dgu element
// (as f32) from the pair layout, then the same from the flat buffers (dgu
// assembled row by row: dg, then du).
#include "../../kernels/swiglu.cu"

#include "launch.h"

int main() {
  const uint32_t cases = get<uint32_t>();
  for (uint32_t c = 0; c < cases; ++c) {
    const uint32_t rows = get<uint32_t>(), cols = get<uint32_t>(), off = get<uint32_t>();
    const size_t n = (size_t)rows * cols;
    const std::vector<float> gu = get_n<float>(2 * n), dout = get_n<float>(n);
    const unsigned blocks = (unsigned)((n / 8 + 127) / 128 + 1);
    // The pair layout, at `off` elements past a 16-byte boundary.
    std::vector<uint16_t> gub = to_bf(gu, off), db = to_bf(dout, off), ob(off + n, 0xffff), dgub(off + 2 * n, 0xffff);
    SwiGluFwdParams f = {};
    f.g = (dptr)(gub.data() + off);
    f.u = (dptr)(gub.data() + off + cols);
    f.out = (dptr)(ob.data() + off);
    f.n = (uint32_t)n;
    f.cols = cols;
    f.ld = 2 * cols;
    launch(swiglu_fwd, f, blocks, 128);
    SwiGluBwdParams b = {};
    b.dout = (dptr)(db.data() + off);
    b.g = f.g;
    b.u = f.u;
    b.dg = (dptr)(dgub.data() + off);
    b.du = (dptr)(dgub.data() + off + cols);
    b.n = (uint32_t)n;
    b.cols = cols;
    b.ld = 2 * cols;
    launch(swiglu_bwd, b, blocks, 128);
    put_floats("O", from_bf(ob.data() + off, n));
    put_floats("G", from_bf(dgub.data() + off, 2 * n));
    // Flat gate and up (aligned), the same values.
    std::vector<float> g(n), u(n);
    for (size_t r = 0; r < rows; ++r) {
      for (size_t k = 0; k < cols; ++k) {
        g[r * cols + k] = gu[r * 2 * cols + k];
        u[r * cols + k] = gu[r * 2 * cols + cols + k];
      }
    }
    std::vector<uint16_t> gb = to_bf(g, 0), ubf = to_bf(u, 0), d2 = to_bf(dout, 0), o2(n, 0xffff), dg(n, 0xffff),
                          du(n, 0xffff);
    f = {};
    f.g = (dptr)gb.data();
    f.u = (dptr)ubf.data();
    f.out = (dptr)o2.data();
    f.n = f.cols = f.ld = (uint32_t)n;
    launch(swiglu_fwd, f, blocks, 128);
    b = {};
    b.dout = (dptr)d2.data();
    b.g = f.g;
    b.u = f.u;
    b.dg = (dptr)dg.data();
    b.du = (dptr)du.data();
    b.n = b.cols = b.ld = (uint32_t)n;
    launch(swiglu_bwd, b, blocks, 128);
    put_floats("O", from_bf(o2.data(), n));
    std::vector<float> dgu_flat(2 * n);
    const std::vector<float> dgf = from_bf(dg.data(), n), duf = from_bf(du.data(), n);
    for (size_t r = 0; r < rows; ++r) {
      for (size_t k = 0; k < cols; ++k) {
        dgu_flat[r * 2 * cols + k] = dgf[r * cols + k];
        dgu_flat[r * 2 * cols + cols + k] = duf[r * cols + k];
      }
    }
    put_floats("G", dgu_flat);
  }
  return 0;
}
