#!/usr/bin/env python3
"""Time Hugging Face `generate` on CPU: the PyTorch baseline for rollout speed.

Run from anywhere (no files are read or written):

    python tools/bench_generate.py                 # threads = os.cpu_count()
    python tools/bench_generate.py --threads 2
    python tools/bench_generate.py --batch 1 16 64 --new-tokens 256 --repeats 3

Model: a ~10M-parameter LlamaForCausalLM built from a config with random
weights (torch.manual_seed(0) before construction, transformers' default
init), float32, untied embeddings:

    vocab 8000, hidden 256, 8 layers, 8 heads, 4 kv heads, head_dim 32,
    intermediate 768, rope_theta 10000, rms_norm_eps 1e-5

Workload per batch size B: B prompts of 32 random token ids (seeded), left
padding with an attention mask (all prompts have the same length, so the
padding is empty and the mask all ones), 256 new tokens
(min_new_tokens = max_new_tokens = 256, eos_token_id=None, so every row
generates exactly 256), ancestral sampling at temperature 1.0 (do_sample=True,
top_k=0, top_p=1.0), KV cache on (transformers' default DynamicCache),
attention implementation `--attn` (default sdpa).

Timing: torch.set_num_threads(--threads); per batch size one untimed warm-up
run, then --repeats timed runs (wall clock around `generate`); reports the
median, and per run the process's CPU seconds per wall second (about
--threads on an idle machine; lower means other work took the cores, so the
numbers are not clean). Throughput = B * 256 / median wall time (generated tokens per second;
prompt processing is included in the time). Prints a table and, last, one
JSON line with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

import transformers
from transformers import LlamaConfig, LlamaForCausalLM

CONFIG = dict(
    vocab_size=8000,
    hidden_size=256,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=32,
    intermediate_size=768,
    tie_word_embeddings=False,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    max_position_embeddings=1024,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def build_model(attn: str):
    cfg = LlamaConfig(**CONFIG)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.float32).eval()
    # Leave nothing in the checkpoint's generation defaults that could stop early.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def run_once(model, input_ids, attention_mask, new_tokens: int, seed: int) -> float:
    torch.manual_seed(seed)
    c0 = time.process_time()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids,
            attention_mask=attention_mask,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            eos_token_id=None,
            pad_token_id=0,
        )
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    assert out.shape == (input_ids.shape[0], input_ids.shape[1] + new_tokens), out.shape
    return dt, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    model = build_model(args.attn)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"load average {os.getloadavg()[0]:.2f}; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"threads {torch.get_num_threads()}, attn {args.attn}, params {n_params / 1e6:.2f}M, "
          f"prompt {args.prompt_len}, new tokens {args.new_tokens}")

    g = torch.Generator().manual_seed(1)
    rows = []
    print(f"{'batch':>5} {'median s':>9} {'runs s':>26} {'tok/s':>10} {'ms/step':>8} {'cpu/wall':>10}")
    for b in args.batch:
        ids = torch.randint(3, CONFIG["vocab_size"], (b, args.prompt_len), generator=g)
        # Left padding: all prompts have prompt_len tokens, so nothing is padded.
        lens = torch.full((b,), args.prompt_len)
        pos = torch.arange(args.prompt_len)[None, :]
        mask = (pos >= (args.prompt_len - lens)[:, None]).long()
        run_once(model, ids, mask, args.new_tokens, seed=100)  # warm-up
        runs = [run_once(model, ids, mask, args.new_tokens, seed=101 + r) for r in range(args.repeats)]
        times = [t for t, _ in runs]
        # CPU seconds / wall seconds of this process: about --threads when the
        # machine is otherwise idle, lower when other work competes for cores.
        busy = [c / t for t, c in runs]
        med = statistics.median(times)
        tps = b * args.new_tokens / med
        rows.append({"batch": b, "median_s": med, "times_s": times, "tokens_per_s": tps,
                     "ms_per_step": 1e3 * med / args.new_tokens, "cpu_per_wall": busy})
        txt = " ".join(f"{t:.3f}" for t in times)
        print(f"{b:>5} {med:>9.3f} {txt:>26} {tps:>10.1f} {1e3 * med / args.new_tokens:>8.2f} "
              f"{min(busy):>5.2f}-{max(busy):.2f}", flush=True)

    print(json.dumps({
        "bench": "hf_generate_cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "attn": args.attn,
        "params": n_params,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "sampling": {"temperature": 1.0, "top_k": 0, "top_p": 1.0},
        "repeats": args.repeats,
        "loadavg_end": list(os.getloadavg()),
        "results": rows,
    }))


if __name__ == "__main__":
    main()
