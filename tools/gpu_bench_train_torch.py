#!/usr/bin/env python3
"""The PyTorch + transformers side of the GPU check's train-step comparison (DESIGN.md §7, §8).

Times one whole training step of a randomly initialised Qwen2-0.5B-shaped
model in HF transformers on the same card, batch and FLOP count as the
engine's `bench_train_step` (tests/cuda), so that tools/gpu-check.sh can put
the two side by side:

    python3 tools/gpu_bench_train_torch.py OUT.jsonl

Writes one JSON object per (step kind, variant) and line to OUT.jsonl,
flushed as it goes, with the keys the engine writes too:

    {"kernel": "train_sft_step" | "train_grpo_update", "shape": "qwen2-0.5b 16x1024",
     "ms", "tokens", "tokens_per_s", "tflops", "mfu", "peak_mem_gib",
     "source": "torch", "impl"}

(plus n, ms_min, ms_max, flops, loss), then one row for transformers'
`generate` on the same model in bf16 ("generate_b64": 64 prompts of 128
random tokens, 256 new tokens each with min_new_tokens = max_new_tokens and no
EOS, sampling at temperature 1 with top-k and top-p off, KV cache on; "ms" the
wall time of the whole call, "decode_step_ms" = (time of 256 − time of 1) /
255, as the engine's `bench_generate` measures them), or {"kernel", "shape", "impl",
"error", "source"} where a variant fails (an OOM, say): one failure is a
row, not the end of the run.

The model: Qwen2 with hidden 896, 24 layers, 14 query / 2 KV heads of 64,
intermediate 4864, vocab 151936, tied embeddings, rope_theta 1e6, rms eps
1e-6, q/k/v biases, HF's random init (seed 0), attn_implementation="sdpa".
The batch: 16 sequences of 1024 random token ids, no padding, causal.

    train_sft_step     forward, masked mean cross-entropy on the next token
                       (log-softmax of the logits in fp32, the last position
                       masked), backward, grad-norm clip at 1.0, AdamW step,
                       zero grads
    train_grpo_update  a no-grad forward for the old log-probs of the targets
                       (gather of an fp32 log_softmax), then a forward with
                       grad, ratio = exp(logp - old_logp), PPO-clip loss
                       (eps 0.2) with random per-sequence advantages, token
                       mean, backward, clip, AdamW step, zero grads

Variants (one row each, told apart by "impl"):
    bf16       model.to(bfloat16), torch.optim.AdamW(fused=True)
    autocast   fp32 weights + torch.autocast(bfloat16), AdamW(fused=True)
               (what HF Trainer with bf16=True does)

FLOPs, as the engine counts them: N_mm = L(d·q + 2·d·kv + q·d + 3·d·i) + V·d
(the lm_head once); causal attention forward per token and layer 2·q·S.
SFT step = tokens·(6·N_mm + 6·L·q·S); GRPO update = tokens·(8·N_mm + 8·L·q·S)
(one more forward). MFU = TFLOP/s / 989.4 (H100/H200 SXM dense bf16).

Timing: 2 warm-up steps, then 5 steps, each between torch.cuda.synchronize()
calls on the host's clock; ms is their median. peak_mem_gib is
torch.cuda.max_memory_allocated() over the warm-up and timed steps, reset
before them (weights, gradients, optimizer state and activations; not the
allocator's cache nor the CUDA context).

Without a CUDA device (or without torch) it prints `skip
gpu_bench_train_torch: ...` and exits 0 having written nothing. `--device cpu
--tiny` runs the same code on a tiny model on the CPU, to check the script
(not a benchmark). Environment: ENGINE_BENCH_SKIP (containing "train": do
nothing), TORCH_TRAIN_BUDGET_S (no variant starts after it, default 50).
"""

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import time
import traceback

PEAK_TFLOPS = 989.4  # H100/H200 SXM, dense bf16

FULL = dict(
    name="qwen2-0.5b",
    hidden=896,
    layers=24,
    heads=14,
    kv_heads=2,
    head_dim=64,
    inter=4864,
    vocab=151936,
    batch=16,
    seq=1024,
)
TINY = dict(
    name="tiny",
    hidden=64,
    layers=2,
    heads=4,
    kv_heads=2,
    head_dim=16,
    inter=160,
    vocab=1000,
    batch=2,
    seq=64,
)
KERNELS = {"sft": "train_sft_step", "grpo": "train_grpo_update"}
VARIANTS = {
    "bf16": "bf16 weights, AdamW fused",
    "autocast": "fp32 weights + autocast bf16, AdamW fused",
}
PPO_EPS = 0.2
GEN = dict(batch=64, prompt=128, new=256)
GEN_TINY = dict(batch=4, prompt=8, new=6)


def flop_counts(c):
    """(N_mm, SFT step FLOPs, GRPO update FLOPs), as DESIGN.md §8 and the engine count them."""
    d, L, i, V, S = c["hidden"], c["layers"], c["inter"], c["vocab"], c["seq"]
    q = c["heads"] * c["head_dim"]
    kv = c["kv_heads"] * c["head_dim"]
    n_mm = L * (d * q + 2 * d * kv + q * d + 3 * d * i) + V * d
    tokens = c["batch"] * S
    sft = tokens * (6 * n_mm + 6 * L * q * S)
    grpo = tokens * (8 * n_mm + 8 * L * q * S)
    return n_mm, float(sft), float(grpo)


def build_model(torch, transformers, c, dev):
    cfg = transformers.Qwen2Config(
        vocab_size=c["vocab"],
        hidden_size=c["hidden"],
        intermediate_size=c["inter"],
        num_hidden_layers=c["layers"],
        num_attention_heads=c["heads"],
        num_key_value_heads=c["kv_heads"],
        max_position_embeddings=max(32768, c["seq"]),
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        use_cache=False,
        use_sliding_window=False,
        attention_dropout=0.0,
    )
    torch.manual_seed(0)
    # Built straight on the device: HF's init of 0.5B parameters on the CPU takes seconds.
    with torch.device(dev):
        try:
            model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
        except TypeError:  # an older transformers without the keyword
            cfg._attn_implementation = "sdpa"
            model = transformers.AutoModelForCausalLM.from_config(cfg)
    model.train()
    attn = getattr(model.config, "_attn_implementation", None)
    if attn != "sdpa":
        raise RuntimeError(f"attn_implementation is {attn!r}, not 'sdpa'")
    head_dim = getattr(model.config, "head_dim", None) or c["hidden"] // c["heads"]
    if head_dim != c["head_dim"]:
        raise RuntimeError(f"head_dim {head_dim}, want {c['head_dim']}")
    attn0 = model.model.layers[0].self_attn
    if attn0.q_proj.bias is None or attn0.o_proj.bias is not None:
        raise RuntimeError("expected q/k/v biases and no o_proj bias (Qwen2)")
    if model.lm_head.weight is not model.model.embed_tokens.weight:
        raise RuntimeError("the lm_head is not tied to the embeddings")
    return model


def batch(torch, c, dev):
    g = torch.Generator(device="cpu").manual_seed(1)
    B, S, V = c["batch"], c["seq"], c["vocab"]
    ids = torch.randint(0, V, (B, S), generator=g)
    # Next-token targets; the last position has none (masked).
    targets = torch.roll(ids, -1, dims=1)
    mask = torch.ones(B, S)
    mask[:, -1] = 0
    labels = targets.clone()
    labels[:, -1] = -100  # cross_entropy's ignore_index
    adv = torch.randn(B, 1, generator=g)  # one advantage per sequence, as GRPO's group-normalised rewards
    return {k: v.to(dev) for k, v in dict(ids=ids, targets=targets, mask=mask, labels=labels, adv=adv).items()}


class Step:
    """One variant's model, optimizer and step functions."""

    def __init__(self, torch, model, autocast, dev):
        self.torch, self.model = torch, model
        self.F = torch.nn.functional
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, fused=True)
        if autocast:
            self.ctx = lambda: torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
        else:
            self.ctx = contextlib.nullcontext

    # The logits (bf16, 16k × 152k: 5 GB) live only inside these helpers, so
    # that only the fp32 log-softmax the backward needs outlives them.
    def _ce(self, b):
        logits = self.model(input_ids=b["ids"], use_cache=False).logits
        return self.F.cross_entropy(logits.float().view(-1, logits.shape[-1]), b["labels"].view(-1), ignore_index=-100)

    def _logp(self, b):
        logits = self.model(input_ids=b["ids"], use_cache=False).logits
        return self.torch.log_softmax(logits.float(), dim=-1).gather(-1, b["targets"].unsqueeze(-1)).squeeze(-1)

    def _finish(self, loss):
        loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()

    def sft(self, b):
        with self.ctx():
            loss = self._ce(b)
        return self._finish(loss)

    def grpo(self, b):
        torch = self.torch
        with torch.no_grad(), self.ctx():
            old = self._logp(b)
        with self.ctx():
            logp = self._logp(b)
            ratio = torch.exp(logp - old)
            adv = b["adv"]
            surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - PPO_EPS, 1 + PPO_EPS) * adv)
            mask = b["mask"]
            loss = -(surrogate * mask).sum() / mask.sum()
        return self._finish(loss)


class Runner:
    def __init__(self, torch, dev, c, out, warmup, steps, budget_s, tiny):
        self.torch, self.dev, self.c, self.out = torch, dev, c, out
        self.warmup, self.steps, self.budget_s, self.tiny = warmup, steps, budget_s, tiny
        self.cuda = dev.type == "cuda"
        self.start = time.monotonic()
        self.shape = f"{c['name']} {c['batch']}x{c['seq']}"
        self.tokens = c["batch"] * c["seq"]
        self.n_mm, sft, grpo = flop_counts(c)
        self.flops = {"train_sft_step": sft, "train_grpo_update": grpo}
        self.rows = self.errors = 0

    def write(self, row):
        if self.out:
            self.out.write(json.dumps(row) + "\n")
            self.out.flush()

    def error(self, kernel, impl, msg):
        self.errors += 1
        print(f"{kernel:18} {self.shape:20} ERROR {msg}  [{impl}]")
        self.write({"kernel": kernel, "shape": self.shape, "impl": impl, "error": msg, "source": "torch"})

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def free(self):
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    def time_kernel(self, kernel, impl, f, b):
        torch = self.torch
        self.free()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        t_start = time.monotonic()
        loss = None

        def one():
            nonlocal loss
            self.sync()
            t = time.perf_counter()
            loss = f(b)
            self.sync()
            return 1e3 * (time.perf_counter() - t)

        warm = [one() for _ in range(self.warmup)]
        n = self.steps
        if warm:
            # A slow card or variant: time fewer steps than asked rather than run out of time.
            left_ms = 1e3 * (self.budget_s + 15 - (time.monotonic() - self.start))
            n = max(1, min(n, int(left_ms / max(warm[-1], 1e-3))))
        timed = [one() for _ in range(n)]
        ms = statistics.median(timed)
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None
        flops = self.flops[kernel]
        tflops = flops / (ms * 1e-3) / 1e12
        row = {
            "kernel": kernel,
            "shape": self.shape,
            "ms": ms,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens / (ms * 1e-3),
            "tflops": tflops,
            "mfu": tflops / PEAK_TFLOPS,
            "peak_mem_gib": peak,
            "source": "torch",
            "impl": impl,
            "n": len(timed),
            "ms_min": min(timed),
            "ms_max": max(timed),
            "warmup_ms": warm,
            "flops": flops,
            "loss": float(loss.float().item()),
        }
        if self.tiny:
            row["tiny"] = True
        print(
            f"{kernel:18} {self.shape:20} {ms:9.1f} ms  {row['tokens_per_s']:9.0f} tok/s  {tflops:6.1f} TFLOP/s  "
            f"MFU {100 * row['mfu']:4.1f}%  peak {'-' if peak is None else f'{peak:.1f}'} GiB  "
            f"loss {row['loss']:.3f}  n={len(timed)} ({time.monotonic() - t_start:.1f} s)  [{impl}]"
        )
        self.write(row)
        self.rows += 1

    def variant(self, transformers, name, kernels):
        torch = self.torch
        impl = VARIANTS[name]
        if time.monotonic() - self.start > self.budget_s:
            for k in kernels:
                self.error(k, impl, f"skipped: out of time (TORCH_TRAIN_BUDGET_S={self.budget_s:g})")
            return
        t0 = time.monotonic()
        step = b = model = msg = None
        try:
            model = build_model(torch, transformers, self.c, self.dev)
            if name == "bf16":
                model.to(torch.bfloat16)
            step = Step(torch, model, name == "autocast", self.dev)
            b = batch(torch, self.c, self.dev)
            self.sync()
        except Exception as e:
            msg = f"setup: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            traceback.print_exc(limit=4)
        if msg:
            step = b = model = None
            self.free()
            for k in kernels:
                self.error(k, impl, msg)
            return
        nparams = sum(p.numel() for p in step.params)
        print(f"-- {name}: {nparams / 1e6:.1f} M parameters, set up in {time.monotonic() - t0:.1f} s")
        for k in kernels:
            if time.monotonic() - self.start > self.budget_s + 10:
                self.error(k, impl, f"skipped: out of time (TORCH_TRAIN_BUDGET_S={self.budget_s:g})")
                continue
            f = step.sft if k == "train_sft_step" else step.grpo
            msg = None
            try:
                self.time_kernel(k, impl, f, b)
            except Exception as e:  # an OOM, say: a row, and the next one still runs
                msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                traceback.print_exc(limit=4)
            if msg:
                step.opt.zero_grad(set_to_none=True)
                self.free()
                self.error(k, impl, msg)
        del step, b, model
        self.free()
        print(f"-- {name}: {time.monotonic() - t0:.1f} s")


def bench_generate(r, transformers):
    """transformers' `generate` on the bf16 model: tokens/s, decode step, peak memory."""
    torch, c = r.torch, r.c
    g = GEN_TINY if r.tiny else GEN
    kernel = "generate_b64"
    shape = f"{c['name']} {g['batch']}x({g['prompt']}+{g['new']})"
    impl = "transformers generate, bf16, sdpa, DynamicCache, do_sample T=1"
    if time.monotonic() - r.start > r.budget_s + 10:
        r.error(kernel, impl, f"skipped: out of time (TORCH_TRAIN_BUDGET_S={r.budget_s:g})")
        return
    model = None
    try:
        model = build_model(torch, transformers, c, r.dev).to(torch.bfloat16).eval()
        model.config.use_cache = True
        gen = torch.Generator(device="cpu").manual_seed(2)
        ids = torch.randint(0, c["vocab"], (g["batch"], g["prompt"]), generator=gen).to(r.dev)
        mask = torch.ones_like(ids)

        def run(new):
            r.sync()
            t = time.perf_counter()
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                     top_p=1.0, max_new_tokens=new, min_new_tokens=new, eos_token_id=None,
                                     pad_token_id=0)
            r.sync()
            assert out.shape == (g["batch"], g["prompt"] + new), out.shape
            return time.perf_counter() - t

        run(min(8, g["new"]))  # warm-up
        r.free()
        if r.cuda:
            torch.cuda.reset_peak_memory_stats()
        t1 = run(1)
        t_all = run(g["new"])
        peak = torch.cuda.max_memory_allocated() / 2**30 if r.cuda else None
        tokens = g["batch"] * g["new"]
        row = {"kernel": kernel, "shape": shape, "ms": t_all * 1e3, "tokens": tokens, "tokens_per_s": tokens / t_all,
               "peak_mem_gib": peak, "decode_step_ms": (t_all - t1) / (g["new"] - 1) * 1e3,
               "prefill_and_first_ms": t1 * 1e3, "source": "torch", "impl": impl}
        print(f"{kernel:18} {shape:20} {t_all * 1e3:9.1f} ms  {tokens / t_all:9.0f} tok/s  "
              f"decode step {row['decode_step_ms']:.2f} ms  [{impl}]")
        r.write(row)
        r.rows += 1
    except Exception as e:
        traceback.print_exc(limit=4)
        r.error(kernel, impl, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    del model
    r.free()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", help="JSON-lines output file (default: print only)")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --tiny: checks the script)")
    ap.add_argument("--tiny", action="store_true", help="a tiny model and batch: checks the script, measures nothing")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="of " + ",".join(VARIANTS))
    ap.add_argument("--kernels", default=",".join(KERNELS), help="of " + ",".join(KERNELS))
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--budget-s", type=float, default=float(os.environ.get("TORCH_TRAIN_BUDGET_S", "50")))
    a = ap.parse_args()
    t0 = time.monotonic()
    skip = {s.strip().lower() for s in os.environ.get("ENGINE_BENCH_SKIP", "").split(",") if s.strip()}
    if "train" in skip:
        print("skip gpu_bench_train_torch: ENGINE_BENCH_SKIP contains train")
        return 0
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    kernels = [KERNELS[k.strip()] for k in a.kernels.split(",") if k.strip()]
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v} (of {', '.join(VARIANTS)})")
    try:
        import torch
    except Exception as e:
        print(f"skip gpu_bench_train_torch: cannot import torch ({e})")
        return 0
    dev = torch.device(a.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            print(f"skip gpu_bench_train_torch: torch {torch.__version__} sees no CUDA device (torch.version.cuda={torch.version.cuda})")
            return 0
        dev = torch.device("cuda", 0)
        card = torch.cuda.get_device_name(0)
    else:
        card = f"{dev.type} (not a benchmark)"
    c = TINY if a.tiny else FULL
    out = open(a.out, "w") if a.out else None
    r = Runner(torch, dev, c, out, a.warmup, a.steps, a.budget_s, a.tiny)
    try:
        import transformers
    except Exception as e:
        print(f"gpu_bench_train_torch: cannot import transformers ({e})")
        for k in kernels:
            for v in variants:
                r.error(k, VARIANTS[v], f"cannot import transformers: {e}")
        return 0
    print(
        f"gpu_bench_train_torch: torch {torch.__version__} (CUDA {torch.version.cuda}), transformers "
        f"{transformers.__version__} on {card}; imports {time.monotonic() - t0:.1f} s"
    )
    _, sft, grpo = flop_counts(c)
    print(
        f"{r.shape}: {r.tokens} tokens, N_mm {r.n_mm / 1e6:.1f} M, SFT step {sft / 1e12:.2f} TFLOP, "
        f"GRPO update {grpo / 1e12:.2f} TFLOP; warm-up {a.warmup}, timed {a.steps}, budget {a.budget_s:g} s"
    )
    r.write(
        {
            "kernel": "_meta",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "transformers": transformers.__version__,
            "card": card,
            "source": "torch",
        }
    )
    for v in variants:
        r.variant(transformers, v, kernels)
    if "generate" not in skip:
        bench_generate(r, transformers)
    print(f"gpu_bench_train_torch: {r.rows} rows, {r.errors} errors, {time.monotonic() - t0:.1f} s" + (f", written to {a.out}" if a.out else ""))
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
