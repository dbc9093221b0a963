#!/usr/bin/env python3
"""Generate tests/fixtures/train/step.{safetensors,json}: one whole GRPO (GPPO
loss) optimizer step and one SFT step through the tiny Qwen3 checkpoint
tests/fixtures/qwen3, in float64, per DESIGN.md §4.2 / §4.4 / §4.8.

Run from the repository root (CPU, a few seconds):

    python tools/make_train_fixtures.py            # writes tests/fixtures/train/
    python tools/make_train_fixtures.py --out DIR

The float64 patches of tools/make_fixtures.py (RMSNorm, rope cos/sin and the
eager softmax kept in float64 for float64 models) are imported and installed,
so the reference is float64 end to end.

Data (seeded): 6 sequences, prompt A (4 tokens) with responses of 3, 7, 5
tokens and prompt B (6 tokens) with responses of 9, 4, 6 tokens; ids uniform
in [0, 400). Each sequence is run ALONE (batch 1, positions 0..L-1).
Position t of a sequence (length L, prompt P) predicts token t+1; positions
P-1 .. L-2 carry loss (mask 1), every other position (including the last of
each sequence) has mask 0.

Stored tensors (step.safetensors):
  input_ids      i64 [N]   the 6 sequences concatenated
  cu_seqlens     i64 [7]   sequence boundaries in input_ids
  n_prompt       i64 [6]   prompt length of each sequence
  micro_batches  i64 [4]   [0, 1, 4, 6]: sequence-index boundaries of 3 micro-batches
  advantages     f32 [6]   per-sequence advantage
  mask           f32 [N]   1 at loss positions
  old_logp       f32 [N]   f64 logp (T = 0.8) of the unmodified model + N(0, 0.15^2)
                           noise, at loss positions; 0 elsewhere
  logp_t08       f32 [N]   f64 logp (T = 0.8) of the unmodified model (masked, info)
  grpo_grad.<p>  f32       d GRPO loss / d p at the checkpoint weights
  sft_grad.<p>   f32       d SFT loss / d p at the checkpoint weights
  grpo_sgd3.<p>  f32       weights after 3 SGD steps p <- p - lr * grad on the GRPO loss
  sft_sgd3.<p>   f32       same on the SFT loss
  (for p = model.embed_tokens.weight the sgd3 entries are stored as ROWS only,
   to keep the folder under 3 MB: `grpo_sgd3_rows.model.embed_tokens.weight`
   [K, H] holds rows `embed_rows` (i64 [K], the distinct ids of input_ids,
   sorted); every other row of the embedding is exactly the checkpoint's,
   since its gradient is exactly zero.)

All computation is float64 from the float32 checkpoint (upcast); the stored
f32 inputs (advantages, old_logp) are upcast to f64 and used as stored, so a
consumer using the stored values reproduces the reference exactly.
The SGD losses list holds the loss at the weights BEFORE each of the 3 updates
(element 0 == grpo_loss / sft_loss); `*_loss_after_sgd3` is the loss at the
final weights. old_logp and advantages are FIXED during the 3 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import numpy as np
import safetensors
import safetensors.torch
import torch
import transformers
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (float64 patches)

SEED = 20240611
PROMPT_LENS = [4, 6]
RESP_LENS = [[3, 7, 5], [9, 4, 6]]
TOKEN_HI = 400
MICRO_BATCHES = [0, 1, 4, 6]
ADVANTAGES = [1.2, -0.7, 0.3, -1.5, 0.9, 0.0]
TEMPERATURE = 0.8
OLD_LOGP_NOISE_STD = 0.15
EPS_LOW, EPS_HIGH, DUAL_CLIP_C, BETA1, BETA2 = 0.2, 0.28, 10.0, 1.0, 1.0
LOG_RATIO_CLAMP = 20.0
LR = 0.5
SGD_STEPS = 3
EMBED = "model.embed_tokens.weight"


def make_data():
    g = torch.Generator().manual_seed(SEED)
    prompts = [torch.randint(0, TOKEN_HI, (p,), generator=g) for p in PROMPT_LENS]
    seqs, n_prompt = [], []
    for pi, lens in enumerate(RESP_LENS):
        for rl in lens:
            resp = torch.randint(0, TOKEN_HI, (rl,), generator=g)
            seqs.append(torch.cat([prompts[pi], resp]))
            n_prompt.append(PROMPT_LENS[pi])
    cu = [0]
    for s in seqs:
        cu.append(cu[-1] + len(s))
    input_ids = torch.cat(seqs).to(torch.int64)
    mask = torch.zeros(cu[-1], dtype=torch.float32)
    for i, P in enumerate(n_prompt):
        s, L = cu[i], cu[i + 1] - cu[i]
        mask[s + P - 1: s + L - 1] = 1.0
    return input_ids, torch.tensor(cu, dtype=torch.int64), torch.tensor(n_prompt, dtype=torch.int64), mask, g


def all_logp(model, input_ids, cu, temperature):
    """float64 [N]: logp of token t+1 at position t (0 at each sequence's last position)."""
    out = []
    for i in range(len(cu) - 1):
        s, e = int(cu[i]), int(cu[i + 1])
        ids = input_ids[s:e][None]
        pos = torch.arange(e - s, dtype=torch.int64)[None]
        logits = model(input_ids=ids, position_ids=pos).logits[0]
        assert logits.dtype == model.dtype
        lsm = torch.log_softmax(logits[:-1] / temperature, dim=-1)
        lp = lsm.gather(-1, ids[0, 1:, None])[:, 0]
        out.append(torch.cat([lp, lp.new_zeros(1)]))
    return torch.cat(out)


def gppo_token_loss(logp, old_logp, adv):
    lr = torch.clamp(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    r = torch.exp(lr)
    pg1 = -adv * r
    rd = r.detach()
    clipped = torch.where(
        r < 1 - EPS_LOW,
        BETA1 * (1 - EPS_LOW) / rd * r,
        torch.where(r > 1 + EPS_HIGH, BETA2 * (1 + EPS_HIGH) / rd * r, r),
    )
    pg2 = -adv * clipped
    L = torch.maximum(pg1, pg2)
    L = torch.where(adv < 0, torch.minimum(L, -DUAL_CLIP_C * adv), L)
    return L


class Step:
    def __init__(self, input_ids, cu, mask, old_logp, adv_tok):
        self.input_ids, self.cu = input_ids, cu
        self.m = mask.to(torch.float64)
        self.n = float(self.m.sum())
        self.old = old_logp.to(torch.float64)
        self.adv = adv_tok

    def grpo(self, model):
        logp = all_logp(model, self.input_ids, self.cu, TEMPERATURE)
        L = gppo_token_loss(logp, self.old, self.adv)
        return (L * self.m).sum() / self.n

    def sft(self, model):
        logp = all_logp(model, self.input_ids, self.cu, 1.0)
        return (-logp * self.m).sum() / self.n


def grads(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model)
    loss.backward()
    gs = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return loss.item(), gs


def sgd(model, loss_fn):
    losses = []
    for _ in range(SGD_STEPS):
        l, gs = grads(model, loss_fn)
        losses.append(l)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.sub_(LR * gs[n])
    with torch.no_grad():
        after = loss_fn(model).item()
    return losses, after, {n: p.detach().clone() for n, p in model.named_parameters()}


def load(d):
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    m = m.double()
    m.eval()
    mf.attach_f64_rope(m)
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/train")
    ap.add_argument("--model", default="tests/fixtures/qwen3")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    mf.install_f64_patches()

    input_ids, cu, n_prompt, mask, g = make_data()
    adv32 = torch.tensor(ADVANTAGES, dtype=torch.float32)
    lens = (cu[1:] - cu[:-1])
    adv_tok = torch.repeat_interleave(adv32.to(torch.float64), lens)

    model = load(args.model)
    n_params = sum(p.numel() for p in model.parameters())
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}

    # Sanity: unpatched HF f32 forward agrees with the patched f64 one.
    with torch.no_grad():
        lp64 = all_logp(model, input_ids, cu, TEMPERATURE)
        m32 = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager").eval()
        mf.PATCHES_ON = False
        lp32 = all_logp(m32, input_ids, cu, TEMPERATURE).double()
        mf.PATCHES_ON = True
        d = ((lp64 - lp32) * mask).abs().max().item()
        print(f"f64 vs HF f32 logp max |diff| = {d:.2e}")
        assert d < 1e-4

    noise = torch.randn(len(input_ids), generator=g, dtype=torch.float64) * OLD_LOGP_NOISE_STD
    old_logp = ((lp64 + noise) * mask.double()).to(torch.float32)
    step = Step(input_ids, cu, mask, old_logp, adv_tok)

    # Ratio / clip statistics (info).
    r = torch.exp(torch.clamp(lp64 - old_logp.double(), -20, 20))
    msk = mask.bool()
    stats = {
        "n_loss_tokens": int(mask.sum()),
        "ratio_min": r[msk].min().item(),
        "ratio_max": r[msk].max().item(),
        "n_below_1_minus_eps_low": int((r[msk] < 1 - EPS_LOW).sum()),
        "n_above_1_plus_eps_high": int((r[msk] > 1 + EPS_HIGH).sum()),
        "n_clip_active_low (A<0, r<1-eps_low)": int((msk & (adv_tok < 0) & (r < 1 - EPS_LOW)).sum()),
        "n_clip_active_high (A>0, r>1+eps_high)": int((msk & (adv_tok > 0) & (r > 1 + EPS_HIGH)).sum()),
        "n_dual_clip_active": 0,
    }
    print(stats)

    # Check the GPPO autograd against DESIGN.md §4.2's g column.
    lpv = lp64.clone().requires_grad_(True)
    L = gppo_token_loss(lpv, step.old, adv_tok)
    L.sum().backward()
    rr = r
    A = adv_tok
    gref = -rr * A
    gref = torch.where((A > 0) & (rr > 1 + EPS_HIGH), -BETA2 * (1 + EPS_HIGH) * A, gref)
    gref = torch.where((A < 0) & (rr < 1 - EPS_LOW), -BETA1 * (1 - EPS_LOW) * A, gref)
    dual = (A < 0) & (-DUAL_CLIP_C * A < torch.maximum(-A * rr, -A * torch.clamp(rr, 1 - EPS_LOW, 1 + EPS_HIGH)))
    gref = torch.where(dual, torch.zeros_like(gref), gref)
    gd = ((lpv.grad - gref) * mask).abs().max().item()
    stats["n_dual_clip_active"] = int((dual & msk).sum())
    print(f"GPPO dL/dlogp vs table: {gd:.2e}; dual-clip tokens: {int((dual & msk).sum())}")
    assert gd < 1e-12

    tensors = {
        "input_ids": input_ids,
        "cu_seqlens": cu,
        "n_prompt": n_prompt,
        "micro_batches": torch.tensor(MICRO_BATCHES, dtype=torch.int64),
        "advantages": adv32,
        "mask": mask,
        "old_logp": old_logp,
        "logp_t08": (lp64 * mask.double()).to(torch.float32),
    }
    embed_rows = torch.unique(input_ids)  # sorted
    tensors["embed_rows"] = embed_rows.to(torch.int64)

    results = {}
    for name, fn in (("grpo", step.grpo), ("sft", step.sft)):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(w0[n])
        loss, gs = grads(model, fn)
        # Finite-difference spot check on a few entries (SFT only: GPPO's
        # gradient is by design not the derivative of its forward value).
        for pn, idx in (("model.norm.weight", (3,)), ("model.layers.1.self_attn.q_proj.weight", (5, 7)),
                        ("lm_head.weight", (int(input_ids[5]), 2))):
            if name != "sft":
                break
            p = dict(model.named_parameters())[pn]
            h = 1e-6
            with torch.no_grad():
                p[idx] += h
                lp_ = fn(model).item()
                p[idx] -= 2 * h
                lm_ = fn(model).item()
                p[idx] += h
            fd = (lp_ - lm_) / (2 * h)
            an = gs[pn][idx].item()
            assert abs(fd - an) <= 1e-6 * max(1.0, abs(an)), (name, pn, fd, an)
        # Embedding rows outside input_ids get exactly zero gradient.
        other = torch.ones(gs[EMBED].shape[0], dtype=torch.bool)
        other[embed_rows] = False
        assert (gs[EMBED][other] == 0).all()
        for n, gr in gs.items():
            tensors[f"{name}_grad.{n}"] = gr.to(torch.float32).contiguous()
        losses, after, w3 = sgd(model, fn)
        assert losses[0] == loss
        assert torch.equal(w3[EMBED][other], w0[EMBED][other])
        for n, w in w3.items():
            if n == EMBED:
                tensors[f"{name}_sgd3_rows.{n}"] = w[embed_rows].to(torch.float32).contiguous()
            else:
                tensors[f"{name}_sgd3.{n}"] = w.to(torch.float32).contiguous()
        results[name] = (loss, losses, after)
        print(f"{name}: loss {loss!r}; sgd losses {losses}; after sgd3 {after!r}")

    os.makedirs(args.out, exist_ok=True)
    safetensors.torch.save_file(tensors, os.path.join(args.out, "step.safetensors"))
    meta = {
        "generator": "tools/make_train_fixtures.py",
        "model": args.model,
        "model_dtype_on_disk": "float32",
        "reference_dtype": "float64 (f64 patches of tools/make_fixtures.py installed)",
        "n_params": n_params,
        "seed": SEED,
        "prompt_lens": PROMPT_LENS,
        "response_lens": RESP_LENS,
        "token_id_range": [0, TOKEN_HI],
        "n_tokens": int(len(input_ids)),
        "n_loss_tokens": int(mask.sum()),
        "micro_batches": MICRO_BATCHES,
        "advantages": ADVANTAGES,
        "temperature": TEMPERATURE,
        "old_logp_noise_std": OLD_LOGP_NOISE_STD,
        "policy_loss": "gppo",
        "eps_low": EPS_LOW,
        "eps_high": EPS_HIGH,
        "dual_clip_c": DUAL_CLIP_C,
        "beta1": BETA1,
        "beta2": BETA2,
        "log_ratio_clamp": LOG_RATIO_CLAMP,
        "aggregation": "token-mean over the whole step (all micro-batches)",
        "sft_temperature": 1.0,
        "lr": LR,
        "sgd_steps": SGD_STEPS,
        "optimizer": "plain SGD p <- p - lr*grad, no momentum/weight decay; old_logp and advantages fixed",
        "grpo_loss": results["grpo"][0],
        "grpo_sgd_losses": results["grpo"][1],
        "grpo_loss_after_sgd3": results["grpo"][2],
        "sft_loss": results["sft"][0],
        "sft_sgd_losses": results["sft"][1],
        "sft_loss_after_sgd3": results["sft"][2],
        "sgd_losses_note": "loss at the weights before each update; element 0 equals the *_loss",
        "embed_sgd3_note": "sgd3 of model.embed_tokens.weight stored as *_sgd3_rows.* at rows embed_rows; "
                           "other rows equal the checkpoint exactly",
        "ratio_stats_at_start": stats,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
        },
    }
    with open(os.path.join(args.out, "step.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
