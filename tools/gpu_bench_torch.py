#!/usr/bin/env python3
"""The PyTorch side of the GPU check's benchmarks (DESIGN.md §7, §8).

Times, in eager PyTorch on the same card and at the same shapes, the ops
that tests/cuda/bench.rs times in the engine, under the same kernel names, so
that tools/gpu-check.sh can put the two side by side:

    python3 tools/gpu_bench_torch.py OUT.jsonl [--skip gemm,attention]

Writes one JSON object per op and line to OUT.jsonl (kernel, shape, ms,
gb_s or tflops, copy_fraction, ...), flushed as it goes, and prints a
table. Bytes and flops are counted as the engine's benchmark counts them
(each buffer's reads and writes once, the least traffic the op can make), so
GB/s compare the times; the ratio that matters is the time. copy_fraction is
against this script's own 1 GiB device-to-device copy.

Needs only torch; no network. Without a CUDA device it prints why and exits
0 having written nothing. `--smoke-cpu` runs every op on the CPU at tiny
shapes with wall-clock timing, to check the script itself (not a benchmark).

Timing: a warm-up call, one timed call to size the loop, then n calls
between two CUDA events; before the loop the stream is kept busy with
device-to-device copies for as long as the host needs to queue the n calls,
so the events time the GPU's work rather than Python's dispatch (host_ms
says how long one call takes to issue). Environment: ENGINE_BENCH_SKIP (the
sections to skip, as for the engine), ENGINE_BENCH_TARGET_MS (GPU time per
loop, default 100), TORCH_BENCH_BUDGET_S (no section starts after it,
default 60).
"""

import argparse
import json
import math
import os
import sys
import time
import traceback

# The engine benchmark's shapes (tests/cuda/bench.rs): a Qwen2.5-0.5B-like layer.
FULL = dict(
    hidden=896,
    inter=4864,
    heads=14,
    kv_heads=2,
    head_dim=64,
    tokens=4096,
    seq=1024,
    vocab=151936,
    params=100_000_000,
    elems=100_000_000,
    copy_bytes=1 << 30,
    blocker_bytes=256 << 20,
    loss_rows=16384,
    loss_chunk=4096,
)
# --smoke-cpu: the same ops, tiny.
SMOKE = dict(
    hidden=64,
    inter=160,
    heads=4,
    kv_heads=2,
    head_dim=16,
    tokens=256,
    seq=64,
    vocab=1000,
    params=100_000,
    elems=100_000,
    copy_bytes=1 << 20,
    blocker_bytes=1 << 16,
    loss_rows=64,
    loss_chunk=16,
)
SECTIONS = ["copy", "elementwise", "cast", "rmsnorm", "rope", "swiglu", "embedding", "rows", "adamw", "gemm", "attention", "loss", "sample"]
MAX_N = 1000
# The longest head start (ms of copies) before a timed loop; loops are cut to
# what the host can queue in that time.
HEAD_START_MS = 50.0


def token_ids(n, vocab):
    """The engine benchmark's ids (the same xorshift), favouring small ids."""
    s = 0x2545F4914F6CDD1D
    mask = (1 << 64) - 1
    out = []
    for _ in range(n):
        s ^= (s << 13) & mask
        s ^= s >> 7
        s ^= (s << 17) & mask
        u = (s >> 11) / float(1 << 53)
        out.append(min(int(u * u * vocab), vocab - 1))
    return out


class Bench:
    def __init__(self, torch, dev, cfg, out, skip, target_ms, budget_s, smoke):
        self.torch, self.dev, self.c, self.out = torch, dev, cfg, out
        self.skip, self.target_ms, self.budget_s, self.smoke = skip, target_ms, budget_s, smoke
        self.start = time.monotonic()
        self.copy_gb_s = None
        self.rows = 0
        self.errors = 0
        self.cuda = dev.type == "cuda"
        nb = cfg["blocker_bytes"]
        self.blk = (torch.zeros(nb, dtype=torch.uint8, device=dev), torch.zeros(nb, dtype=torch.uint8, device=dev))
        self.blocker_ms = 0.0
        if self.cuda:
            self.blk[1].copy_(self.blk[0])
            e0, e1 = self.event(), self.event()
            e0.record()
            for _ in range(5):
                self.blk[1].copy_(self.blk[0])
            e1.record()
            e1.synchronize()
            self.blocker_ms = e0.elapsed_time(e1) / 5

    def event(self):
        return self.torch.cuda.Event(enable_timing=True)

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def time(self, f, syncs=False, max_n=MAX_N):
        """(ms per call, calls timed, host ms per call)."""
        f()
        self.sync()
        if not self.cuda:
            t = time.perf_counter()
            f()
            one = (time.perf_counter() - t) * 1e3
            n = max(1, min(max_n, 20, math.ceil(self.target_ms / max(one, 1e-4))))
            t = time.perf_counter()
            for _ in range(n):
                f()
            ms = (time.perf_counter() - t) * 1e3 / n
            return ms, n, ms
        e0, e1 = self.event(), self.event()
        t = time.perf_counter()
        e0.record()
        f()
        host_ms = (time.perf_counter() - t) * 1e3
        e1.record()
        e1.synchronize()
        one = e0.elapsed_time(e1)
        n = max(1, min(max_n, math.ceil(self.target_ms / max(one, 1e-4))))
        if not syncs:
            # Queue no more calls than the head start covers (with a margin).
            n = min(n, max(3, int(HEAD_START_MS / max(1.5 * host_ms, 1e-4))))
            need = min(HEAD_START_MS, 1.5 * n * host_ms)
            blockers = math.ceil(need / max(self.blocker_ms, 1e-3)) + 1
            for _ in range(blockers):
                self.blk[1].copy_(self.blk[0])
        t = time.perf_counter()
        e0.record()
        for _ in range(n):
            f()
        e1.record()
        host_ms = min(host_ms, (time.perf_counter() - t) * 1e3 / n)
        e1.synchronize()
        ms = e0.elapsed_time(e1) / n
        self.sync()
        return ms, n, host_ms

    def run(self, kernel, shape, f, nbytes=None, flops=None, syncs=False, max_n=MAX_N, impl=""):
        try:
            ms, n, host_ms = self.time(f, syncs, max_n)
        except Exception as e:  # one op failing (an unsupported backend) is a row, not the end
            self.errors += 1
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            print(f"{kernel:24} {shape:28} ERROR {msg}")
            self.write({"kernel": kernel, "shape": shape, "error": msg, "impl": impl, "source": "torch"})
            return None
        row = {"kernel": kernel, "shape": shape, "ms": ms}
        if nbytes is not None:
            gb_s = nbytes / (ms * 1e-3) / 1e9
            frac = gb_s / self.copy_gb_s if self.copy_gb_s else None
            row.update(gb_s=gb_s, copy_fraction=frac, bytes=nbytes)
            rate = f"{gb_s:9.1f} GB/s " + (f"{100 * frac:5.1f}%" if frac else "     -")
        else:
            tf = flops / (ms * 1e-3) / 1e12
            row.update(tflops=tf, copy_fraction=None, flops=flops)
            rate = f"{tf:9.1f} TFLOP/s      "
        row.update(n=n, host_ms=host_ms, syncs=syncs, impl=impl, source="torch")
        if self.smoke:
            row["smoke"] = True
        note = " (waits for the stream)" if syncs else (" (launch-bound?)" if host_ms >= 0.9 * ms else "")
        print(f"{kernel:24} {shape:28} {ms:10.4f} ms {rate} n={n}{note}  [{impl}]")
        self.write(row)
        self.rows += 1
        return ms

    def write(self, row):
        if self.out:
            self.out.write(json.dumps(row) + "\n")
            self.out.flush()

    def section(self, name, f):
        if name in self.skip:
            print(f"-- {name}: skipped")
            return
        if time.monotonic() - self.start > self.budget_s:
            print(f"-- {name}: skipped, past the budget of {self.budget_s} s (TORCH_BENCH_BUDGET_S)")
            self.write({"kernel": name, "section": name, "error": "skipped: out of time", "source": "torch"})
            return
        t = time.monotonic()
        print(f"-- {name}")
        try:
            f(self)
        except Exception as e:
            self.errors += 1
            print(f"-- {name}: ERROR {type(e).__name__}: {e}")
            traceback.print_exc(limit=3)
            self.write({"kernel": name, "section": name, "error": f"{type(e).__name__}: {e}", "source": "torch"})
        if self.cuda:
            self.torch.cuda.empty_cache()
        print(f"-- {name}: {time.monotonic() - t:.1f} s")


def bf16(n):
    return 2.0 * n


# Each section builds its tensors, times its ops, and lets them go.


def s_copy(b):
    torch, dev, c = b.torch, b.dev, b.c
    nb = c["copy_bytes"]
    src = torch.zeros(nb, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    name = "1GiB" if nb == 1 << 30 else f"{nb}B"
    ms = b.run("copy_dtod", name, lambda: dst.copy_(src), nbytes=2.0 * nb, impl="Tensor.copy_ (uint8)")
    if ms:
        b.copy_gb_s = 2.0 * nb / (ms * 1e-3) / 1e9
    del src, dst
    n = nb // 2
    src = torch.zeros(n, dtype=torch.bfloat16, device=dev)
    dst = torch.empty_like(src)
    b.run("copy_bf16", name, lambda: dst.copy_(src), nbytes=4.0 * n, impl="Tensor.copy_ (bf16)")


def rand(b, *shape, dtype=None):
    return b.torch.rand(*shape, device=b.dev, dtype=dtype or b.torch.bfloat16) * 2 - 1


def s_elementwise(b):
    torch = b.torch
    n = b.c["elems"]
    shape = f"{n}"
    x, y = rand(b, n), rand(b, n)
    b.run("fill_bf16", shape, lambda: x.fill_(0.5), nbytes=bf16(n), impl="fill_")
    b.run("add_assign_bf16", shape, lambda: x.add_(y), nbytes=3 * bf16(n), impl="add_")
    b.run("scale_bf16", shape, lambda: x.mul_(1.0), nbytes=2 * bf16(n), impl="mul_")
    # The engine reads its sum back (a wait on the stream); so does .item().
    b.run(
        "sum_squares",
        shape,
        lambda: torch.linalg.vector_norm(y, dtype=torch.float32).item(),
        nbytes=bf16(n),
        syncs=True,
        impl="linalg.vector_norm(fp32).item()",
    )


def s_cast(b):
    torch = b.torch
    n = b.c["elems"]
    src32 = rand(b, n, dtype=torch.float32)
    dst16 = torch.empty(n, dtype=torch.bfloat16, device=b.dev)
    b.run("cast_f32_bf16", f"{n}", lambda: dst16.copy_(src32), nbytes=6.0 * n, impl="copy_")
    del src32
    dst32 = torch.empty(n, dtype=torch.float32, device=b.dev)
    b.run("cast_bf16_f32", f"{n}", lambda: dst32.copy_(dst16), nbytes=6.0 * n, impl="copy_")


def rms(torch, h, w, eps=1e-6):
    """HF's Qwen2RMSNorm: fp32 statistics, x·rsqrt(mean(x²)+eps), then ·w in bf16."""
    h32 = h.float()
    return w * (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + eps)).to(h.dtype)


def s_rmsnorm(b):
    torch, c = b.torch, b.c
    rows, dim = c["tokens"], c["hidden"]
    n = rows * dim
    shape = f"{rows}x{dim}"
    x, r, w = rand(b, rows, dim), rand(b, rows, dim), rand(b, dim)

    def fwd():
        h = x + r
        return rms(torch, h, w)

    nb = 4 * bf16(n) + bf16(dim) + 4.0 * rows
    b.run("rmsnorm_fwd", shape, fwd, nbytes=nb, impl="x+r, HF RMSNorm (fp32 stats)")
    h = (x + r).requires_grad_()
    wl = w.clone().requires_grad_()
    y = rms(torch, h, wl)
    dy = rand(b, rows, dim)
    blocks = -(-rows // 32)
    nb = 3 * bf16(n) + bf16(dim) + 4.0 * rows + 8.0 * blocks * dim + 2 * bf16(dim)
    b.run(
        "rmsnorm_bwd",
        shape,
        lambda: torch.autograd.grad(y, (h, wl), dy, retain_graph=True),
        nbytes=nb,
        impl="autograd.grad",
    )


def s_rope(b):
    torch, c = b.torch, b.c
    T, H, D, seq = c["tokens"], c["heads"], c["head_dim"], c["seq"]
    half = D // 2
    n = T * H * D
    shape = f"{T}x{H}x{D}"
    inv = 1.0 / (1_000_000.0 ** (torch.arange(0, half, device=b.dev, dtype=torch.float32) * 2 / D))
    pos = (torch.arange(T, device=b.dev) % seq).float()
    freqs = torch.outer(pos, inv)
    emb = torch.cat((freqs, freqs), -1)
    # As HF: the tables in the activations' dtype, one row per token.
    cos, sin = emb.cos().to(torch.bfloat16)[:, None, :], emb.sin().to(torch.bfloat16)[:, None, :]
    x = rand(b, T, H, D)

    def rot(x):
        x1, x2 = x[..., :half], x[..., half:]
        return x * cos + torch.cat((-x2, x1), -1) * sin

    nb = 2 * bf16(n) + 4.0 * T + 2 * 4.0 * T * half
    b.run("rope_fwd", shape, lambda: rot(x), nbytes=nb, impl="HF rotate_half by slicing")
    xl = x.clone().requires_grad_()
    y = rot(xl)
    dy = rand(b, T, H, D)
    b.run("rope_bwd", shape, lambda: torch.autograd.grad(y, (xl,), dy, retain_graph=True), nbytes=nb, impl="autograd.grad")


def s_swiglu(b):
    torch, c = b.torch, b.c
    F = torch.nn.functional
    T, I = c["tokens"], c["inter"]
    n = T * I
    shape = f"{T}x{I}"
    g, u = rand(b, T, I), rand(b, T, I)
    b.run("swiglu_fwd", shape, lambda: F.silu(g) * u, nbytes=3 * bf16(n), impl="silu(g)*u")
    gl, ul = g.clone().requires_grad_(), u.clone().requires_grad_()
    out = F.silu(gl) * ul
    dout = rand(b, T, I)
    b.run(
        "swiglu_bwd",
        shape,
        lambda: torch.autograd.grad(out, (gl, ul), dout, retain_graph=True),
        nbytes=5 * bf16(n),
        impl="autograd.grad",
    )


def s_embedding(b):
    torch, c = b.torch, b.c
    F = torch.nn.functional
    T, dim, V = c["tokens"], c["hidden"], c["vocab"]
    shape = f"{T}x{dim} of {V}"
    ids_l = token_ids(T, V)
    distinct = len(set(ids_l))
    ids = torch.tensor(ids_l, device=b.dev, dtype=torch.long)
    table = rand(b, V, dim)
    nb = 4.0 * T + 2 * bf16(T * dim)
    b.run("embedding_fwd", shape, lambda: F.embedding(ids, table), nbytes=nb, impl="F.embedding")
    del table
    dtable = torch.zeros(V, dim, dtype=torch.bfloat16, device=b.dev)
    dout = rand(b, T, dim)
    nb = bf16(T * dim) + 4.0 * (T + 2 * distinct + 1) + 2 * bf16(distinct * dim)
    b.run("embedding_bwd", shape, lambda: dtable.index_add_(0, ids, dout), nbytes=nb, impl="index_add_")


def s_rows(b):
    torch, c = b.torch, b.c
    T = c["tokens"]
    width = c["kv_heads"] * c["head_dim"]
    src = rand(b, T, width)
    cache = torch.zeros(2 * T, width, dtype=torch.bfloat16, device=b.dev)
    src_rows = torch.arange(T, device=b.dev)
    dst_rows = (torch.arange(T, device=b.dev) * 2 + 1) % (2 * T)
    nb = 2 * bf16(T * width) + 8.0 * T
    b.run(
        "copy_rows",
        f"{T} rows of {width}",
        lambda: cache.index_copy_(0, dst_rows, src.index_select(0, src_rows)),
        nbytes=nb,
        impl="index_select + index_copy_",
    )
    H = c["hidden"]
    dy = rand(b, T, H)
    db = torch.zeros(H, dtype=torch.bfloat16, device=b.dev)
    b.run("bias_grad", f"{T}x{H}", lambda: db.add_(dy.sum(0)), nbytes=bf16(T * H) + 2 * bf16(H), impl="sum(0) + add_")


def s_adamw(b):
    torch = b.torch
    n = b.c["params"]
    for kernel, kw in [("adamw", dict(fused=True)), ("adamw_foreach", dict(foreach=True))]:
        p = torch.nn.Parameter(rand(b, n, dtype=torch.float32))
        p.grad = rand(b, n, dtype=torch.float32)
        opt = torch.optim.AdamW([p], lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, **kw)
        # p, m, v read and written, the gradient read: fp32 all (the engine's
        # gradient is bf16 and it writes a bf16 copy: also 28 bytes).
        b.run(kernel, f"{n}", opt.step, nbytes=28.0 * n, impl=f"optim.AdamW({', '.join(f'{k}=True' for k in kw)}) fp32")
        del opt, p


def s_gemm(b):
    torch, c = b.torch, b.c
    F = torch.nn.functional
    m = c["tokens"]
    q = c["heads"] * c["head_dim"]
    kv = c["kv_heads"] * c["head_dim"]
    H, I = c["hidden"], c["inter"]
    for name, n, k, bias in [("q", q, H, True), ("kv", kv, H, True), ("o", H, q, False), ("gate_up", I, H, False), ("down", H, I, False)]:
        shape = f"m{m} n{n} k{k}"
        flops = 2.0 * m * n * k
        x, w, dy = rand(b, m, k), rand(b, n, k), rand(b, m, n)
        bv = rand(b, n) if bias else None
        y = torch.empty(m, n, dtype=torch.bfloat16, device=b.dev)
        dx = torch.empty(m, k, dtype=torch.bfloat16, device=b.dev)
        dw = torch.zeros(n, k, dtype=torch.bfloat16, device=b.dev)
        b.run(f"gemm_{name}_fwd", shape, lambda: F.linear(x, w, bv), flops=flops, impl="F.linear")
        b.run(f"gemm_{name}_dx", shape, lambda: torch.matmul(dy, w, out=dx), flops=flops, impl="matmul")
        b.run(f"gemm_{name}_dw", shape, lambda: dw.addmm_(dy.t(), x), flops=flops, impl="addmm_ (dw +=)")
        del x, w, dy, bv, y, dx, dw


# (suffix, tokens, seq, heads, kv heads, head dim): the layer's shape, then
# issue 8's and DESIGN.md §8's 16k-token yardsticks (heads of 128 and of 64
# at sequence lengths 1k, 2k, 4k, 8k); the same list as tests/cuda/bench.rs.
def attention_shapes(c):
    return [
        ("", c["tokens"], c["seq"], c["heads"], c["kv_heads"], c["head_dim"]),
        ("_d128_s1k", 16384, 1024, 16, 16, 128),
        ("_d128_s2k", 16384, 2048, 16, 16, 128),
        ("_d128_s4k", 16384, 4096, 16, 16, 128),
        ("_d128_s8k", 16384, 8192, 16, 16, 128),
        ("_d64_s1k", 16384, 1024, 16, 16, 64),
        ("_d64_s2k", 16384, 2048, 16, 16, 64),
        ("_d64_s4k", 16384, 4096, 16, 16, 64),
        ("_d64_s8k", 16384, 8192, 16, 16, 64),
    ]


def s_attention(b):
    shapes = attention_shapes(b.c)
    if not b.cuda:
        shapes = shapes[:1]  # the CPU smoke run: the small shape only
    for suffix, T, S, H, KV, D in shapes:
        attention_at(b, suffix, T, S, H, KV, D)


def attention_at(b, suffix, T, S, H, KV, D):
    torch = b.torch
    F = torch.nn.functional
    B = T // S
    shape = f"{B}x{S} h{H}/{KV} d{D} causal"
    fwd_flops = 4.0 * B * H * D * S * S / 2
    bwd_flops = 2.5 * fwd_flops
    q, k, v, dout = rand(b, B, H, S, D), rand(b, B, KV, S, D), rand(b, B, KV, S, D), rand(b, B, H, S, D)
    kr, vr = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backends = [
            ("", None),
            ("[flash]", SDPBackend.FLASH_ATTENTION),
            ("[cudnn]", getattr(SDPBackend, "CUDNN_ATTENTION", None)),
            ("[efficient]", SDPBackend.EFFICIENT_ATTENTION),
        ]
    except ImportError:
        sdpa_kernel = None
        backends = [("", None)]
    import contextlib

    for tag, be in backends:
        if tag and (be is None or not b.cuda):
            continue
        ctx = (lambda: sdpa_kernel(be)) if be is not None else contextlib.nullcontext

        # GQA as the engine has it; where the backend refuses it, k and v repeated per query head.
        def attn(q_, k_, v_, gqa):
            with ctx():
                if gqa:
                    return F.scaled_dot_product_attention(q_, k_, v_, is_causal=True, enable_gqa=True)
                return F.scaled_dot_product_attention(q_, k_, v_, is_causal=True)

        gqa = True
        try:
            attn(q, k, v, True)
        except Exception:
            gqa = False
        kk, vv = (k, v) if gqa else (kr, vr)
        impl = f"SDPA{tag or ' (default backend)'}, " + ("enable_gqa" if gqa else "k/v repeated")
        b.run(f"attention_fwd{suffix}{tag}", shape, lambda: attn(q, kk, vv, gqa), flops=fwd_flops, max_n=50, impl=impl)
        ql, kl, vl = (t.clone().requires_grad_() for t in (q, kk, vv))
        try:
            out = attn(ql, kl, vl, gqa)
        except Exception as e:
            print(f"attention_bwd{suffix}{tag}: forward with grad failed: {e}")
            continue
        b.run(
            f"attention_bwd{suffix}{tag}",
            shape,
            lambda: torch.autograd.grad(out, (ql, kl, vl), dout, retain_graph=True),
            flops=bwd_flops,
            max_n=50,
            impl=impl,
        )
        del out, ql, kl, vl
    del q, k, v, dout, kr, vr


def s_loss(b):
    """The loss kernels at 16k tokens x the vocabulary, T = 0.7 (tests/cuda/bench.rs's `loss`).

    Eager PyTorch as a trainer writes it, over chunks of `loss_chunk` rows (the
    fp32 temporaries of all 16k rows at once, 10 GB each, would not fit beside
    each other); the shape is the whole batch. Bytes as the engine counts them.
    """
    torch, c = b.torch, b.c
    F = torch.nn.functional
    R, V, C = c["loss_rows"], c["vocab"], c["loss_chunk"]
    shape = f"{R}x{V}"
    inv_t = 1.0 / 0.7
    logits, per_row = bf16(R * V), 4.0 * R
    spans = [(r0, min(r0 + C, R)) for r0 in range(0, R, C)]
    chunked = f", chunks of {C} rows"
    z = rand(b, R, V)
    y = torch.tensor(token_ids(R, V), device=b.dev, dtype=torch.long)
    logp, lse, ent = (torch.empty(R, dtype=torch.float32, device=b.dev) for _ in range(3))

    def fwd(entropy):
        def f():
            for r0, r1 in spans:
                s = z[r0:r1].float() * inv_t
                lp = torch.log_softmax(s, -1)
                logp[r0:r1] = lp.gather(-1, y[r0:r1, None]).squeeze(-1)
                lse[r0:r1] = torch.logsumexp(s, -1)
                if entropy:
                    ent[r0:r1] = -(lp.exp() * lp).sum(-1)

        return f

    impl = "log_softmax(z.float()/T).gather + logsumexp"
    b.run("logprob_fwd", shape, fwd(False), nbytes=logits + 3 * per_row, impl=impl + chunked)
    b.run("logprob_fwd_entropy", shape, fwd(True), nbytes=logits + 4 * per_row, impl=impl + " + -(p*logp).sum" + chunked)
    coef = rand(b, R, dtype=torch.float32)

    def bwd():
        # dz = coef*(onehot(y) - softmax(z/T))/T from the saved lse, written over z.
        for r0, r1 in spans:
            zc = z[r0:r1]
            p = torch.exp(zc.float() * inv_t - lse[r0:r1, None])
            g = torch.zeros_like(p).scatter_(-1, y[r0:r1, None], 1.0) - p
            zc.copy_(g * (coef[r0:r1, None] * inv_t))

    b.run("logprob_bwd", shape, bwd, nbytes=2 * logits + 3 * per_row, impl="(onehot - exp(z/T - lse))*coef/T, copy_ into z" + chunked)
    del z, coef
    if b.cuda:
        torch.cuda.empty_cache()
    zs, zt = rand(b, R, V), rand(b, R, V)
    w = rand(b, R, dtype=torch.float32)
    dl = torch.empty(R, dtype=torch.float32, device=b.dev)

    def distill(mode):
        # The divergence per row and w * its gradient, written over the student's logits.
        def f():
            for r0, r1 in spans:
                s = zs[r0:r1].float().requires_grad_()
                ls = torch.log_softmax(s * inv_t, -1)
                lt = torch.log_softmax(zt[r0:r1].float() * inv_t, -1)
                if mode == "forward":  # KL(p_t || p_s)
                    d = F.kl_div(ls, lt, reduction="none", log_target=True).sum(-1)
                elif mode == "reverse":  # KL(p_s || p_t)
                    d = F.kl_div(lt, ls, reduction="none", log_target=True).sum(-1)
                else:  # JSD, beta 0.5: beta KL(p_t || m) + (1 - beta) KL(p_s || m), m the mixture
                    lm = torch.logaddexp(lt + math.log(0.5), ls + math.log(0.5))
                    d = 0.5 * F.kl_div(lm, lt, reduction="none", log_target=True).sum(-1) + 0.5 * F.kl_div(
                        lm, ls, reduction="none", log_target=True
                    ).sum(-1)
                (g,) = torch.autograd.grad(d, s, w[r0:r1])
                dl[r0:r1] = d.detach()
                zs[r0:r1].copy_(g)

        return f

    nb = 3 * logits + 2 * per_row
    grad = " + autograd.grad, copy_ into z_s" + chunked
    b.run("distill_forward", shape, distill("forward"), nbytes=nb, impl="F.kl_div(log_softmax)" + grad)
    b.run("distill_reverse", shape, distill("reverse"), nbytes=nb, impl="F.kl_div(log_softmax), reversed" + grad)
    b.run("distill_jsd", shape, distill("jsd"), nbytes=nb, impl="logaddexp mixture, two F.kl_div (beta 0.5)" + grad)
    del zs, zt
    if b.cuda:
        torch.cuda.empty_cache()
    coefficient_passes(b)


def coefficient_passes(b):
    """The per-token coefficient passes at the loss rows' token count (tests/cuda/bench.rs's `coefficient_passes`).

    policy_coefs_ppo: PPO-clip (eps 0.2, dual clip 3, token mean) on 16
    sequences, the first eighth of each masked, with the statistics a trainer
    logs (clip fractions, ratio mean), as eager tensor ops; dpo_coefs: DPO
    (sigmoid, beta 0.1) on 16 pairs, the first eighth of each sequence
    masked: sequence sums by index_add_, then each token's coefficient.
    Nothing is read back (the engine's rows read nothing back either).
    """
    torch = b.torch
    F = torch.nn.functional
    n = b.c["loss_rows"]
    logp, old = rand(b, n, dtype=torch.float32), rand(b, n, dtype=torch.float32)
    coef = torch.empty(n, dtype=torch.float32, device=b.dev)
    per_token = 13.0 * n

    def layout(seqs):
        length = n // seqs
        pos = torch.arange(n, device=b.dev)
        return pos // length, (pos % length >= length // 8).float()

    seqs = 16
    seq_id, mask = layout(seqs)
    adv = rand(b, seqs, dtype=torch.float32)
    eps, dual = 0.2, 3.0
    stats = torch.empty(4, dtype=torch.float32, device=b.dev)

    def ppo():
        a = adv[seq_id]
        r = (logp - old).clamp(-20, 20).exp()
        s1, s2 = -a * r, -a * r.clamp(1 - eps, 1 + eps)
        clipped = torch.maximum(s1, s2)
        dual_on = (a < 0) & (clipped > -a * dual)
        loss = torch.where(dual_on, -a * dual, clipped)
        # The gradient with respect to logp flows through the unclipped branch only.
        live = (s1 >= s2) & ~dual_on
        w = mask / mask.sum()
        coef.copy_(torch.where(live, -a * r, torch.zeros_like(r)) * w)
        stats[0] = (loss * w).sum()
        stats[1] = ((r < 1 - eps) & (a < 0) & ~dual_on).float().mul(w).sum()
        stats[2] = ((r > 1 + eps) & (a > 0)).float().mul(w).sum()
        stats[3] = (r * w).sum()

    bytes_ppo = per_token + 4.0 * (seqs + 1) + 8.0 * seqs + 8.0 * 12 * seqs
    b.run("policy_coefs_ppo", f"{seqs}x{n // seqs}", ppo, nbytes=bytes_ppo, impl="eager PPO-clip + dual clip, token mean, clip stats")

    pairs, beta = 16, 0.1
    seq_id, mask = layout(2 * pairs)
    sums = torch.empty(2 * pairs, dtype=torch.float32, device=b.dev)
    out = torch.empty(pairs, dtype=torch.float32, device=b.dev)

    def dpo():
        sums.zero_().index_add_(0, seq_id, (logp - old) * mask)
        x = beta * (sums[0::2] - sums[1::2])
        out.copy_(-F.logsigmoid(x) / pairs)
        g = -beta * torch.sigmoid(-x) / pairs
        coef.copy_(torch.stack((g, -g), 1).reshape(-1)[seq_id] * mask)

    bytes_dpo = per_token + 4.0 * (2 * pairs + 1) + 32.0 * pairs
    b.run("dpo_coefs", f"{pairs} pairs x2x{n // (2 * pairs)}", dpo, nbytes=bytes_dpo, impl="eager: index_add_ sums, logsigmoid, per-token gather")


def s_sample(b):
    """One token per row for a decode step at batch 64 over the vocabulary (tests/cuda/bench.rs's `sample`).

    As transformers' sampling does it in eager PyTorch: softmax(z/T) and
    torch.multinomial; top-k by torch.topk and top-p by a full sort, cumsum and
    scatter, then the log-probability of the drawn token. Bytes as the engine
    counts them (the bf16 logits read once).
    """
    torch = b.torch
    R, V = 64, b.c["vocab"]
    shape = f"{R}x{V}"
    z = rand(b, R, V)
    nbytes = bf16(R * V) + 24.0 * R

    def draw(top_k=0, top_p=1.0):
        def f():
            s = z.float()
            logp_full = torch.log_softmax(s, -1)
            if top_k:
                kth = torch.topk(s, top_k, -1).values[:, -1:]
                s = s.masked_fill(s < kth, float("-inf"))
            if top_p < 1.0:
                srt, idx = torch.sort(s, -1, descending=False)
                cum = torch.softmax(srt, -1).cumsum(-1)
                drop = cum <= 1 - top_p
                drop[:, -1] = False
                s = s.masked_fill(drop.scatter(-1, idx, drop), float("-inf"))
            tok = torch.multinomial(torch.softmax(s, -1), 1)
            return logp_full.gather(-1, tok)

        return f

    b.run("sample_t1", shape, draw(), nbytes=nbytes, impl="softmax + multinomial")
    b.run("sample_topk50", shape, draw(top_k=50), nbytes=nbytes, impl="topk mask + softmax + multinomial")
    b.run("sample_topp095", shape, draw(top_p=0.95), nbytes=nbytes, impl="sort + cumsum + scatter mask + multinomial")


FUNCS = {
    "copy": s_copy,
    "elementwise": s_elementwise,
    "cast": s_cast,
    "rmsnorm": s_rmsnorm,
    "rope": s_rope,
    "swiglu": s_swiglu,
    "embedding": s_embedding,
    "rows": s_rows,
    "adamw": s_adamw,
    "gemm": s_gemm,
    "attention": s_attention,
    "loss": s_loss,
    "sample": s_sample,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", help="JSON-lines output file (default: print only)")
    ap.add_argument("--skip", default=os.environ.get("ENGINE_BENCH_SKIP", ""), help="sections to skip: " + ",".join(SECTIONS))
    ap.add_argument("--target-ms", type=float, default=float(os.environ.get("ENGINE_BENCH_TARGET_MS", "100")))
    ap.add_argument("--budget-s", type=float, default=float(os.environ.get("TORCH_BENCH_BUDGET_S", "60")))
    ap.add_argument("--smoke-cpu", action="store_true", help="tiny shapes on the CPU: checks this script, measures nothing")
    a = ap.parse_args()
    skip = {s.strip().lower() for s in a.skip.split(",") if s.strip()}
    t0 = time.monotonic()
    try:
        import torch
    except Exception as e:
        print(f"skip gpu_bench_torch: cannot import torch ({e})")
        return 0
    if a.smoke_cpu:
        dev, cfg = torch.device("cpu"), SMOKE
        card = "CPU (smoke run, not a benchmark)"
    else:
        if not torch.cuda.is_available():
            print(f"skip gpu_bench_torch: torch {torch.__version__} sees no CUDA device (torch.version.cuda={torch.version.cuda})")
            return 0
        dev, cfg = torch.device("cuda", 0), FULL
        card = torch.cuda.get_device_name(0)
    print(f"gpu_bench_torch: torch {torch.__version__} (CUDA {torch.version.cuda}) on {card}, import {time.monotonic() - t0:.1f} s")
    torch.manual_seed(0)
    out = open(a.out, "w") if a.out else None
    b = Bench(torch, dev, cfg, out, skip, a.target_ms, a.budget_s, a.smoke_cpu)
    if b.cuda:
        print(f"head-start copy of {cfg['blocker_bytes'] >> 20} MiB takes {b.blocker_ms:.3f} ms")
        b.write({"kernel": "_meta", "torch": torch.__version__, "cuda": torch.version.cuda, "card": card, "source": "torch"})
    for name in SECTIONS:
        b.section(name, FUNCS[name])
    print(f"gpu_bench_torch: {b.rows} rows, {b.errors} errors, {time.monotonic() - t0:.1f} s" + (f", written to {a.out}" if a.out else ""))
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
