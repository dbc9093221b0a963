// Runs the decode-attention kernels on the CPU, one OS thread per CUDA
// thread: kernels/decode_attention.cu's attention_decode_gqa (the fast,
// GQA-grouped kernel; twice, so the test can check it gives the same bits;
// then with each sequence's keys split into runs, merged by
// attention_decode_combine)
// and kernels/attention.cu's attention_decode (the simple reference), on
// cases that tests/kernel_emu.rs writes, for the test to compare with the
// CPU's attention_decode.
//
// Input (little-endian), from stdin: u32 cases; per case: u32 batch, n_rows,
// n_heads, n_kv_heads, head_dim, split_keys; f32 scale; u32 plan[batch·4] (prefix_row,
// prefix_len, own_row, len per sequence); u16 q[batch·n_heads·head_dim],
// k_cache and v_cache [n_rows·n_kv_heads·head_dim] (bf16 bits).
// Output, per case: four lines "F <bits>…" (fast, first run), "G <bits>…"
// (fast, second run), "P <bits>…" (fast, keys split in runs of split_keys),
// "S <bits>…" (simple), each out's batch·n_heads·head_dim bf16 in hex.
#include "../../kernels/attention.cu"
#include "../../kernels/decode_attention.cu"

#include "launch.h"

static void print(const char* tag, const std::vector<uint16_t>& out) {
  printf("%s", tag);
  for (uint16_t v : out) printf(" %x", v);
  printf("\n");
}

// One case's parameters and the buffers they point into.
struct Case {
  AttnDecodeParams p = {};
  std::vector<uint32_t> plan;
  uint32_t split_keys = 0;
  std::vector<uint16_t> q, k, v;
};

int main() {
  // All of the input first, then the output: the test writes all of stdin
  // before it reads stdout, so printing earlier could fill the pipe and block.
  std::vector<Case> cases(get<uint32_t>());
  for (Case& c : cases) {
    AttnDecodeParams& p = c.p;
    p.batch = get<uint32_t>();
    p.n_rows = get<uint32_t>();
    p.n_heads = get<uint32_t>();
    p.n_kv_heads = get<uint32_t>();
    p.head_dim = get<uint32_t>();
    c.split_keys = get<uint32_t>();
    p.scale = get<float>();
    c.plan = get_n<uint32_t>((size_t)p.batch * ENGINE_DECODE_PLAN_WORDS);
    const size_t cache_len = (size_t)p.n_rows * p.n_kv_heads * p.head_dim;
    c.q = get_n<uint16_t>((size_t)p.batch * p.n_heads * p.head_dim);
    c.k = get_n<uint16_t>(cache_len);
    c.v = get_n<uint16_t>(cache_len);
    p.q = (dptr)c.q.data();
    p.k_cache = (dptr)c.k.data();
    p.v_cache = (dptr)c.v.data();
    p.plan = (dptr)c.plan.data();
  }
  for (Case& c : cases) {
    AttnDecodeParams& p = c.p;
    // Each run starts from a buffer of a bf16 value no kernel writes (0xdead,
    // a large negative number), so an element left unwritten shows.
    auto run = [&](void (*kernel)(AttnDecodeParams), unsigned blocks, const char* tag) {
      std::vector<uint16_t> out(c.q.size(), 0xdead);
      p.out = (dptr)out.data();
      launch(kernel, p, blocks, ENGINE_ATTN_THREADS);
      print(tag, out);
    };
    p.n_splits = 1;
    run(attention_decode_gqa, p.batch * p.n_kv_heads, "F");
    run(attention_decode_gqa, p.batch * p.n_kv_heads, "G");
    {
      // Splits covering the longest sequence; the partial states start as
      // NaN, so a state never written shows.
      uint32_t longest = 0;
      for (uint32_t b = 0; b < p.batch; ++b) longest = std::max(longest, c.plan[b * ENGINE_DECODE_PLAN_WORDS + 3]);
      p.split_keys = c.split_keys;
      p.n_splits = (longest + c.split_keys - 1) / c.split_keys;
      const size_t group = p.n_heads / p.n_kv_heads;
      std::vector<float> partial((size_t)p.batch * p.n_kv_heads * p.n_splits * group * (p.head_dim + 2), NAN);
      std::vector<uint16_t> out(c.q.size(), 0xdead);
      p.partial = (dptr)partial.data();
      p.out = (dptr)out.data();
      launch(attention_decode_gqa, p, p.batch * p.n_kv_heads * p.n_splits, ENGINE_ATTN_THREADS);
      launch(attention_decode_combine, p, p.batch * p.n_kv_heads, ENGINE_ATTN_THREADS);
      print("P", out);
      p.n_splits = 1;
    }
    run(attention_decode, p.batch * p.n_heads, "S");
  }
  return 0;
}
