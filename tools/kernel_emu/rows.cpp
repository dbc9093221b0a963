// Runs kernels/rows.cu's copy_rows on the CPU, one OS thread per CUDA
// thread, on cases that tests/kernel_emu.rs writes: once over two pairs of
// buffers in one launch (src2, dst2) and once as two launches, so the test
// can compare both with each other and with the CPU's copy_rows, bit for bit.
//
// Input (little-endian), from stdin: u32 cases; per case: u32 width,
// src_count, dst_count, n, unique, offset (elements before the second pair's
// buffers, so that they are at another phase than the first's); u16
// src[src_count·width], src2[…], dst[dst_count·width], dst2[…]; u32
// src_rows[n], dst_rows[n].
// Output per case: "D <bits>" per element of dst then of dst2 from the one
// launch, the same from the two launches, then "B <bad>".
#include "../../kernels/rows.cu"

#include "launch.h"

int main() {
  const uint32_t cases = get<uint32_t>();
  for (uint32_t c = 0; c < cases; ++c) {
    const uint32_t width = get<uint32_t>(), src_count = get<uint32_t>(), dst_count = get<uint32_t>(),
                   n = get<uint32_t>(), unique = get<uint32_t>(), off = get<uint32_t>();
    const size_t ns = (size_t)src_count * width, nd = (size_t)dst_count * width;
    const std::vector<uint16_t> src = get_n<uint16_t>(ns), src2 = get_n<uint16_t>(ns), dst = get_n<uint16_t>(nd),
                                dst2 = get_n<uint16_t>(nd);
    const std::vector<uint32_t> src_rows = get_n<uint32_t>(n), dst_rows = get_n<uint32_t>(n);
    // The second pair `off` elements into its allocations.
    auto padded = [&](const std::vector<uint16_t>& v) {
      std::vector<uint16_t> r(off + v.size() + 8, 0);
      std::copy(v.begin(), v.end(), r.begin() + off);
      return r;
    };
    uint32_t bad = 0;
    auto put = [&](const uint16_t* v, size_t count) {
      for (size_t i = 0; i < count; ++i) printf("D %x\n", v[i]);
    };
    CopyRowsParams p = {};
    p.src_rows = (dptr)src_rows.data();
    p.dst_rows = (dptr)dst_rows.data();
    p.bad = (dptr)&bad;
    p.n = n;
    p.width = width;
    p.src_count = src_count;
    p.dst_count = dst_count;
    p.unique = unique;
    {
      std::vector<uint16_t> d1 = dst, s2 = padded(src2), d2 = padded(dst2);
      p.src = (dptr)src.data();
      p.dst = (dptr)d1.data();
      p.src2 = (dptr)(s2.data() + off);
      p.dst2 = (dptr)(d2.data() + off);
      launch(copy_rows, p, 2 * n, 256);
      put(d1.data(), nd);
      put(d2.data() + off, nd);
    }
    {
      std::vector<uint16_t> d1 = dst, s2 = padded(src2), d2 = padded(dst2);
      p.src2 = p.dst2 = 0;
      p.src = (dptr)src.data();
      p.dst = (dptr)d1.data();
      launch(copy_rows, p, n, 256);
      p.src = (dptr)(s2.data() + off);
      p.dst = (dptr)(d2.data() + off);
      launch(copy_rows, p, n, 256);
      put(d1.data(), nd);
      put(d2.data() + off, nd);
    }
    printf("B %x\n", bad);
  }
  return 0;
}
