#!/usr/bin/env python3
"""PyTorch CPU yardstick for the engine's CPU training step (DESIGN.md §8).

Times one full forward + backward of a ~10M-parameter Llama in float32 on the
CPU: batch 4 x 256 tokens (4 rows, one 256-token sequence per row, random
tokens, seed 0), loss = masked mean cross-entropy over every token that has a
next token (labels shifted by one, -100 at the last position of each row:
4 x 255 = 1020 tokens). No optimizer step. The model shape must match the Rust
benchmark exactly:

    vocab 8000, hidden 256, 8 layers, 8 heads, 4 kv heads, head_dim 32,
    intermediate 768 (SwiGLU), untied embeddings, rope_theta 10000,
    rms_norm_eps 1e-5

Run from the repository root:

    python tools/bench_vs_torch.py --threads 2
    python tools/bench_vs_torch.py --threads 16 --attn sdpa

Prints, per attention implementation (sdpa, then eager), median and min ms per
step, and a final JSON line (`{"bench": "torch_cpu_llama10m", ...}`) that
scripts can parse. Versions used when this was written: torch 2.15.0,
transformers 5.24.0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

BATCH = 4
SEQ = 256

SHAPE = dict(
    vocab_size=8000,
    hidden_size=256,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=32,
    intermediate_size=768,
    tie_word_embeddings=False,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    rms_norm_eps=1e-5,
    max_position_embeddings=SEQ,
    attention_bias=False,
    mlp_bias=False,
)


def build(attn: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(**SHAPE)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    model.set_attn_implementation(attn)
    model.train()
    return model


def matmul_flops(model: LlamaForCausalLM) -> float:
    """Approximate FLOPs of one forward+backward: 6 * (matmul params) * tokens
    plus the attention products (QK^T and PV, causal half counted as full)."""
    c = model.config
    tokens = BATCH * SEQ
    n_mm = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed_tokens" not in n)
    attn = 2 * 2 * BATCH * c.num_attention_heads * SEQ * SEQ * c.head_dim * c.num_hidden_layers
    return 6.0 * n_mm * tokens + 3.0 * attn


def step(model, input_ids, labels) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=input_ids, use_cache=False).logits
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    loss.backward()
    return loss.detach()


def bench(attn: str, warmup: int, steps: int) -> dict:
    model = build(attn)
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, SHAPE["vocab_size"], (BATCH, SEQ), generator=g, dtype=torch.int64)
    labels = torch.full_like(input_ids, -100)
    labels[:, :-1] = input_ids[:, 1:]
    n_params = sum(p.numel() for p in model.parameters())

    for _ in range(warmup):
        loss = step(model, input_ids, labels)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step(model, input_ids, labels)
        times.append((time.perf_counter() - t0) * 1e3)
    med, mn = statistics.median(times), min(times)
    flops = matmul_flops(model)
    res = {
        "attn": attn,
        "median_ms": round(med, 2),
        "min_ms": round(mn, 2),
        "tokens_per_s": round(BATCH * SEQ / (med / 1e3), 1),
        "approx_gflops_per_s": round(flops / (med / 1e3) / 1e9, 2),
        "loss": round(float(loss), 6),
        "params": n_params,
    }
    print(f"[{attn:5s}] params {n_params:,}  median {med:8.2f} ms  min {mn:8.2f} ms  "
          f"{res['tokens_per_s']:9.1f} tok/s  ~{res['approx_gflops_per_s']:.1f} GFLOP/s  loss {float(loss):.4f}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description="PyTorch CPU fwd+bwd yardstick (~10M Llama, 4x256 tokens)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--attn", default="sdpa,eager", help="comma-separated: sdpa, eager")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
          f"cpu {platform.processor() or platform.machine()}, batch {BATCH}x{SEQ}, "
          f"warmup {args.warmup}, timed {args.steps}")
    results = [bench(a.strip(), args.warmup, args.steps) for a in args.attn.split(",") if a.strip()]
    print(json.dumps({
        "bench": "torch_cpu_llama10m",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "batch": BATCH,
        "seq": SEQ,
        "shape": {k: v for k, v in SHAPE.items() if k != "rope_parameters"} | {"rope_theta": 10000.0},
        "results": results,
    }))


if __name__ == "__main__":
    main()
