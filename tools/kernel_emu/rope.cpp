// Runs kernels/rope.cu (rope8, the fast kernel, and rope, the simple one) on
// the CPU, one OS thread per CUDA thread, on cases that tests/kernel_emu.rs
// writes: each case once over q and k in one launch and once as two
// launches (in place), so the test can compare the fused launch with the
// separate ones bit for bit and both with the CPU's rotation; then the fused
// q/k/v product's rows split into q, k, v (rotated, as the launcher's
// qkv_split), split without rotation (Qwen3's path), split with k and v
// into tables of rows (a decode step's KV cache write), and q, k, v joined
// back into rows (rotated back, as qkv_join).
//
// Input (little-endian), from stdin: u32 cases; per case: u32 tokens,
// q_heads, k_heads, head_dim, max_pos, inverse, k_offset (elements of
// padding before k and before the fused rows, so that they are not 16-byte
// aligned); u32 pos[tokens]; f32 cos[max_pos·head_dim/2], sin[…]; f32
// q[tokens·q_heads·head_dim], k[tokens·k_heads·head_dim], v[same as k],
// q_norm[head_dim], k_norm[head_dim] (bf16 values); f32 eps.
// Output per case and kernel (rope8, then rope): "Q <bits>" per q element and
// "K <bits>" per k element (as f32) from the fused launch, then the same
// from the two launches; "S" per element of the split's q, k, v; "N" the
// same for the unrotated split; "M" the same for the split with q and k
// normalised per head, then rotated; "T" per element of q and of the k and v
// tables (rows tokens + 3) of that split into tables, then "b <bad>" (its row
// flag); "J" per element of the joined rows. Then "B <bad>" (the position
// flag of all launches).
#include "../../kernels/rope.cu"

#include "launch.h"

// A tensor of `heads` heads read from src and written to dst with row strides.
static RopeTensor tensor(const uint16_t* src, uint16_t* dst, uint32_t heads, uint32_t src_ld, uint32_t dst_ld,
                         uint32_t rotate) {
  RopeTensor t = {};
  t.src = (dptr)src;
  t.dst = (dptr)dst;
  t.heads = heads;
  t.src_ld = src_ld;
  t.dst_ld = dst_ld;
  t.rotate = rotate;
  return t;
}

int main() {
  const uint32_t cases = get<uint32_t>();
  for (uint32_t c = 0; c < cases; ++c) {
    const uint32_t tokens = get<uint32_t>(), qh = get<uint32_t>(), kh = get<uint32_t>(), hd = get<uint32_t>(),
                   max_pos = get<uint32_t>(), inverse = get<uint32_t>(), k_off = get<uint32_t>();
    const std::vector<uint32_t> pos = get_n<uint32_t>(tokens);
    const std::vector<float> cos = get_n<float>((size_t)max_pos * hd / 2), sin = get_n<float>((size_t)max_pos * hd / 2);
    const size_t nq = (size_t)tokens * qh * hd, nk = (size_t)tokens * kh * hd;
    const std::vector<float> q = get_n<float>(nq), k = get_n<float>(nk), v = get_n<float>(nk);
    const std::vector<uint16_t> qn = to_bf(get_n<float>(hd), 0), kn = to_bf(get_n<float>(hd), 0);
    const float eps = get<float>();
    const uint32_t qw = qh * hd, kw = kh * hd, row = qw + 2 * kw;
    // The fused rows [tokens, row] (q, k, v in each), after k_off elements.
    std::vector<float> rows((size_t)tokens * row);
    for (uint32_t t = 0; t < tokens; ++t)
      for (uint32_t j = 0; j < row; ++j)
        rows[(size_t)t * row + j] = j < qw        ? q[(size_t)t * qw + j]
                                    : j < qw + kw ? k[(size_t)t * kw + j - qw]
                                                  : v[(size_t)t * kw + j - qw - kw];
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
      const auto go = [&](uint32_t heads) { launch(kernel, p, (tokens * heads * groups + 127) / 128, 128); };
      // One launch over q and k, in place.
      std::vector<uint16_t> qb = to_bf(q, 0), kb = to_bf(k, k_off);
      p.t[0] = tensor(qb.data(), qb.data(), qh, qw, qw, 1);
      p.t[1] = tensor(kb.data() + k_off, kb.data() + k_off, kh, kw, kw, 1);
      go(qh + kh);
      put_floats("Q", from_bf(qb.data(), nq));
      put_floats("K", from_bf(kb.data() + k_off, nk));
      // Two launches.
      std::vector<uint16_t> q1 = to_bf(q, 0), k1 = to_bf(k, k_off);
      p.t[1] = RopeTensor{};
      p.t[0] = tensor(q1.data(), q1.data(), qh, qw, qw, 1);
      go(qh);
      p.t[0] = tensor(k1.data() + k_off, k1.data() + k_off, kh, kw, kw, 1);
      go(kh);
      put_floats("Q", from_bf(q1.data(), nq));
      put_floats("K", from_bf(k1.data() + k_off, nk));
      // The fused rows split (forward rotation), then without rotation.
      const std::vector<uint16_t> fused = to_bf(rows, k_off);
      const uint16_t* f = fused.data() + k_off;
      for (uint32_t rotate : {1u, 0u}) {
        std::vector<uint16_t> qs(nq), ks(nk), vs(nk);
        p.inverse = 0;
        p.t[0] = tensor(f, qs.data(), qh, row, qw, rotate);
        p.t[1] = tensor(f + qw, ks.data(), kh, row, kw, rotate);
        p.t[2] = tensor(f + qw + kw, vs.data(), kh, row, kw, 0);
        go(qh + 2 * kh);
        const char* tag = rotate ? "S" : "N";
        put_floats(tag, from_bf(qs.data(), nq));
        put_floats(tag, from_bf(ks.data(), nk));
        put_floats(tag, from_bf(vs.data(), nk));
      }
      // The split with Qwen3's norms, then the rotation.
      {
        std::vector<uint16_t> qs(nq), ks(nk), vs(nk);
        p.inverse = 0;
        p.eps = eps;
        p.t[0] = tensor(f, qs.data(), qh, row, qw, 1);
        p.t[1] = tensor(f + qw, ks.data(), kh, row, kw, 1);
        p.t[2] = tensor(f + qw + kw, vs.data(), kh, row, kw, 0);
        p.t[0].norm_w = (dptr)qn.data();
        p.t[1].norm_w = (dptr)kn.data();
        go(qh + 2 * kh);
        put_floats("M", from_bf(qs.data(), nq));
        put_floats("M", from_bf(ks.data(), nk));
        put_floats("M", from_bf(vs.data(), nk));
        p.t[0].norm_w = p.t[1].norm_w = 0;
      }
      // The split with k and v into tables of rows, as a decode step writes
      // its KV cache: token t to row R − 1 − t of R = tokens + 3, except the
      // last token's row, outside the tables (skipped and flagged).
      {
        const uint32_t R = tokens + 3;
        std::vector<uint32_t> dst_rows(tokens);
        for (uint32_t t = 0; t < tokens; ++t) dst_rows[t] = R - 1 - t;
        dst_rows[tokens - 1] = R + 7;
        std::vector<uint16_t> qt(nq), kt((size_t)R * kw, 0), vt((size_t)R * kw, 0);
        uint32_t bad_rows = 0;
        p.bad = (dptr)&bad_rows;
        p.inverse = 0;
        p.t[0] = tensor(f, qt.data(), qh, row, qw, 1);
        p.t[1] = tensor(f + qw, kt.data(), kh, row, kw, 1);
        p.t[2] = tensor(f + qw + kw, vt.data(), kh, row, kw, 0);
        for (int i = 1; i < 3; ++i) {
          p.t[i].dst_rows = (dptr)dst_rows.data();
          p.t[i].dst_limit = R;
        }
        p.t[0].norm_w = (dptr)qn.data();  // as a Qwen3 decode step
        p.t[1].norm_w = (dptr)kn.data();
        go(qh + 2 * kh);
        put_floats("T", from_bf(qt.data(), nq));
        put_floats("T", from_bf(kt.data(), kt.size()));
        put_floats("T", from_bf(vt.data(), vt.size()));
        printf("b %x\n", bad_rows);
        p.bad = (dptr)&bad;
      }
      // q, k, v joined into rows (rotated back).
      const std::vector<uint16_t> qj = to_bf(q, 0), kj = to_bf(k, 0), vj = to_bf(v, 0);
      std::vector<uint16_t> joined(k_off + (size_t)tokens * row);
      uint16_t* d = joined.data() + k_off;
      p.inverse = 1;
      p.t[0] = tensor(qj.data(), d, qh, qw, row, 1);
      p.t[1] = tensor(kj.data(), d + qw, kh, kw, row, 1);
      p.t[2] = tensor(vj.data(), d + qw + kw, kh, kw, row, 0);
      go(qh + 2 * kh);
      put_floats("J", from_bf(d, (size_t)tokens * row));
    }
    printf("B %x\n", bad);
  }
  return 0;
}
