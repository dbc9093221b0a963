// Runs kernels/rope.cu (rope8, the fast kernel, and rope, the simple one) on
// the CPU, one OS thread per CUDA thread, on cases that tests/kernel_emu.rs
// writes: each case once over q and k in one launch (x2) and once as two
// launches, so the test can compare the fused launch with the separate ones
// bit for bit and both with the CPU's rotation.
//
// Input (little-endian), from stdin: u32 cases; per case: u32 tokens,
// q_heads, k_heads, head_dim, max_pos, inverse, k_offset (elements of
// padding before k, so that k is not 16-byte aligned); u32 pos[tokens];
// f32 cos[max_pos·head_dim/2], sin[…]; f32 q[tokens·q_heads·head_dim],
// k[tokens·k_heads·head_dim] (bf16 values).
// Output per case and kernel (rope8, then rope): "Q <bits>" per q element and
// "K <bits>" per k element (as f32) from the fused launch, then the same
// from the two launches; then "B <bad>" (the position flag of all launches).
#include "../../kernels/rope.cu"

#include "launch.h"

int main() {
  const uint32_t cases = get<uint32_t>();
  for (uint32_t c = 0; c < cases; ++c) {
    const uint32_t tokens = get<uint32_t>(), qh = get<uint32_t>(), kh = get<uint32_t>(), hd = get<uint32_t>(),
                   max_pos = get<uint32_t>(), inverse = get<uint32_t>(), k_off = get<uint32_t>();
    const std::vector<uint32_t> pos = get_n<uint32_t>(tokens);
    const std::vector<float> cos = get_n<float>((size_t)max_pos * hd / 2), sin = get_n<float>((size_t)max_pos * hd / 2);
    const size_t nq = (size_t)tokens * qh * hd, nk = (size_t)tokens * kh * hd;
    const std::vector<float> q = get_n<float>(nq), k = get_n<float>(nk);
    uint32_t bad = 0;
    for (auto kernel : {rope8, rope}) {
      const unsigned groups = kernel == rope8 ? (hd / 2 + 7) / 8 : hd / 2;
      RopeParams p = {};
      p.pos = (dptr)pos.data();
      p.cos = (dptr)cos.data();
      p.sin = (dptr)sin.data();
      p.bad = (dptr)&bad;
      p.tokens = tokens;
      p.head_dim = hd;
      p.max_pos = max_pos;
      p.inverse = inverse;
      // One launch over q and k.
      std::vector<uint16_t> qb = to_bf(q, 0), kb = to_bf(k, k_off);
      p.x = (dptr)qb.data();
      p.heads = qh;
      p.x2 = (dptr)(kb.data() + k_off);
      p.heads2 = kh;
      launch(kernel, p, (tokens * (qh + kh) * groups + 127) / 128, 128);
      put_floats("Q", from_bf(qb.data(), nq));
      put_floats("K", from_bf(kb.data() + k_off, nk));
      // Two launches.
      std::vector<uint16_t> q1 = to_bf(q, 0), k1 = to_bf(k, k_off);
      p.x2 = 0;
      p.heads2 = 0;
      p.x = (dptr)q1.data();
      p.heads = qh;
      launch(kernel, p, (tokens * qh * groups + 127) / 128, 128);
      p.x = (dptr)(k1.data() + k_off);
      p.heads = kh;
      launch(kernel, p, (tokens * kh * groups + 127) / 128, 128);
      put_floats("Q", from_bf(q1.data(), nq));
      put_floats("K", from_bf(k1.data() + k_off, nk));
    }
    printf("B %x\n", bad);
  }
  return 0;
}
