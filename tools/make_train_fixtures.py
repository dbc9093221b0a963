#!/usr/bin/env python3
"""Generate tests/fixtures/train/step.{safetensors,json}: one whole GRPO (GPPO
loss) optimizer step and one SFT step through the tiny Qwen3 checkpoint
tests/fixtures/qwen3, in float64, per DESIGN.md §4.2 / §4.4 / §4.8; and
dpo.{safetensors,json} (§4.7) and distill.{safetensors,json} (§4.6), described
after the step case below.

Run from the repository root (CPU, under a minute):

    python tools/make_train_fixtures.py            # writes tests/fixtures/train/
    python tools/make_train_fixtures.py --out DIR
    python tools/make_train_fixtures.py --cases dpo,distill   # only those files

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

DPO (dpo.*, seed 20240612): 5 preference pairs, each a prompt (4, 6, 3, 5, 2
tokens) with a chosen (5, 3, 7, 4, 6 tokens) and a rejected (3, 6, 4, 8, 2)
completion, EOS (401) last in each completion; sequence 2k is pair k's chosen,
2k+1 its rejected, each run alone. Micro-batches as `engine train dpo` groups
pairs (in order, at most micro_batch_tokens = 40 tokens): pairs [0,2), [2,4),
[4,5) = 37, 39, 12 tokens. π = summed log-probs (T = 1) of the completion
tokens (mask as above); the reference is the starting model, its π computed
once and fixed; the sigmoid loss with label smoothing ε (TRL):
  L_k = −(1−ε) log σ(h_k) − ε log σ(−h_k),  h_k = β((π_c − ref_c) − (π_r − ref_r)),
β = 0.1, ε = 0.1, averaged over the 5 pairs (at the start h = 0, L = log 2).
Stored: input_ids, cu_seqlens, n_prompt, micro_batches (pair-index bounds),
mask, ref_seq_logp (f32 of the f64 reference π per sequence), embed_rows,
dpo_grad.<p>, dpo_sgd3.<p> (SGD lr 2.0).

Distillation (distill.*, seed 20240613): 5 sequences, prompts of 3, 5, 2, 6,
4 tokens and completions of 6, 7, 5, 9, 6 (EOS last); micro-batches as the
engine's `micro_batches` with 24 tokens: sequences [0,2), [2,4), [4,5) = 21,
22, 10 tokens. Teacher: the fixture model with N(0, 0.02²) noise added to
every tensor (same generator, after the data), rounded to f32 and stored:
teacher.<p>, and for the embedding only the rows embed_rows the data reads
(teacher_rows.<p>). Per completion token, student logits z_s (with grad),
teacher logits z_t (fixed), both divided by T before log-softmax:
  jsd (β = 0.5, T = 0.8): β·KL(p_t‖m) + (1−β)·KL(p_s‖m), m = β p_t + (1−β) p_s
  forward (T = 1.0):      KL(p_t‖p_s)
token-mean over the step's 33 completion tokens. Stored: jsd_grad.<p>,
jsd_sgd3.<p>, forward_grad.<p> (forward KL's sgd3 weights are not stored, to
keep the file small; its 3 SGD losses are in the json), SGD lr 0.5.

In dpo.* and distill.*, model.embed_tokens.weight's gradient and sgd3 weights
are stored as `*_grad_rows.*` / `*_sgd3_rows.*` at rows embed_rows (every
other row's gradient is exactly zero, asserted). Every loss is also checked
against central differences at a few entries.
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


def make_step(args):
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
    print("wrote", os.path.join(args.out, "step.*"))


# ---------------------------------------------------------------------------
# Shared by the DPO and distillation cases
# ---------------------------------------------------------------------------

EOS = 401  # eos_token_id of the fixture's config; the trainers end every completion with it


def versions():
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }


def pack_seqs(seqs):
    cu = [0]
    for s in seqs:
        cu.append(cu[-1] + len(s))
    return torch.cat(seqs).to(torch.int64), torch.tensor(cu, dtype=torch.int64)


def loss_mask(cu, n_prompt):
    """1 at positions P-1 .. L-2 of each sequence (they predict the completion's tokens)."""
    mask = torch.zeros(int(cu[-1]), dtype=torch.float64)
    for i, P in enumerate(n_prompt):
        s, e = int(cu[i]), int(cu[i + 1])
        mask[s + P - 1: e - 1] = 1.0
    return mask


def token_groups(sizes, budget):
    """Boundaries of consecutive items grouped into at most `budget` tokens (a
    longer item goes alone): the grouping of the engine's `micro_batches` and
    of `engine train dpo`'s pair groups."""
    bounds, tokens = [0], None
    for i, n in enumerate(sizes):
        if tokens is not None and tokens + n > budget:
            bounds.append(i)
            tokens = 0
        tokens = (tokens or 0) + n
    bounds.append(len(sizes))
    return bounds


def restore(model, w0):
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(w0[n])


def fd_check(model, fn, gs, entries, tol=1e-6):
    """Central differences of the loss against autograd at a few entries."""
    params = dict(model.named_parameters())
    for pn, idx in entries:
        p = params[pn]
        h = 1e-6
        with torch.no_grad():
            p[idx] += h
            lp_ = fn(model).item()
            p[idx] -= 2 * h
            lm_ = fn(model).item()
            p[idx] += h
        fd = (lp_ - lm_) / (2 * h)
        an = gs[pn][idx].item()
        assert abs(fd - an) <= tol * max(1.0, abs(an)), (pn, idx, fd, an)
        print(f"  fd {pn}{list(idx)}: autograd {an:+.6e}, central difference {fd:+.6e}")


def store_grads_and_sgd(tensors, name, model, fn, w0, embed_rows, lr, with_sgd3=True):
    """Gradients (and the weights after SGD_STEPS plain SGD steps) of `fn` at
    `w0`, into `tensors`; the embedding as the rows `embed_rows` only (every
    other row's gradient is exactly zero, checked here)."""
    restore(model, w0)
    loss, gs = grads(model, fn)
    other = torch.ones(gs[EMBED].shape[0], dtype=torch.bool)
    other[embed_rows] = False
    assert (gs[EMBED][other] == 0).all()
    for n, gr in gs.items():
        if n == EMBED:
            tensors[f"{name}_grad_rows.{n}"] = gr[embed_rows].to(torch.float32).contiguous()
        else:
            tensors[f"{name}_grad.{n}"] = gr.to(torch.float32).contiguous()
    losses = []
    for _ in range(SGD_STEPS):
        l, g = grads(model, fn)
        losses.append(l)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.sub_(lr * g[n])
    with torch.no_grad():
        after = fn(model).item()
    assert losses[0] == loss
    w3 = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert torch.equal(w3[EMBED][other], w0[EMBED][other])
    if with_sgd3:
        for n, w in w3.items():
            if n == EMBED:
                tensors[f"{name}_sgd3_rows.{n}"] = w[embed_rows].to(torch.float32).contiguous()
            else:
                tensors[f"{name}_sgd3.{n}"] = w.to(torch.float32).contiguous()
    restore(model, w0)
    print(f"{name}: loss {loss!r}; sgd losses {losses}; after sgd3 {after!r}")
    return loss, gs, losses, after


def write(args, stem, tensors, meta):
    path = os.path.join(args.out, f"{stem}.safetensors")
    safetensors.torch.save_file(tensors, path)
    with open(os.path.join(args.out, f"{stem}.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"wrote {args.out}/{stem}.* ({os.path.getsize(path)} bytes of tensors)")


# ---------------------------------------------------------------------------
# DPO (DESIGN.md §4.7): tests/fixtures/train/dpo.{safetensors,json}
# ---------------------------------------------------------------------------

DPO_SEED = 20240612
DPO_PROMPT_LENS = [4, 6, 3, 5, 2]
DPO_CHOSEN_LENS = [5, 3, 7, 4, 6]    # completion tokens, EOS included
DPO_REJECTED_LENS = [3, 6, 4, 8, 2]  # idem
DPO_BUDGET = 40                      # micro-batch token budget
DPO_MICRO = [0, 2, 4, 5]             # pair-index boundaries the budget gives (asserted)
DPO_BETA = 0.1
DPO_LABEL_SMOOTHING = 0.1
DPO_LR = 2.0


def make_dpo_data():
    g = torch.Generator().manual_seed(DPO_SEED)
    seqs, n_prompt = [], []
    for P, C, R in zip(DPO_PROMPT_LENS, DPO_CHOSEN_LENS, DPO_REJECTED_LENS):
        prompt = torch.randint(0, TOKEN_HI, (P,), generator=g)
        for n in (C, R):
            resp = torch.randint(0, TOKEN_HI, (n - 1,), generator=g)
            seqs.append(torch.cat([prompt, resp, torch.tensor([EOS])]))
            n_prompt.append(P)
    input_ids, cu = pack_seqs(seqs)
    return input_ids, cu, n_prompt


class Dpo:
    """The sigmoid DPO loss with label smoothing (TRL's), on summed response
    log-probs (T = 1), averaged over the step's pairs; sequences 2k / 2k+1
    are pair k's chosen / rejected."""

    def __init__(self, input_ids, cu, mask, ref_seq):
        self.input_ids, self.cu, self.m = input_ids, cu, mask
        self.ref = ref_seq

    def seq_logps(self, model):
        lp = all_logp(model, self.input_ids, self.cu, 1.0) * self.m
        return torch.stack([lp[int(self.cu[i]): int(self.cu[i + 1])].sum() for i in range(len(self.cu) - 1)])

    def __call__(self, model):
        d = self.seq_logps(model) - self.ref
        h = DPO_BETA * (d[0::2] - d[1::2])
        ls = DPO_LABEL_SMOOTHING
        L = -(1 - ls) * torch.nn.functional.logsigmoid(h) - ls * torch.nn.functional.logsigmoid(-h)
        return L.mean()


def make_dpo(args):
    input_ids, cu, n_prompt = make_dpo_data()
    n_pairs = len(DPO_PROMPT_LENS)
    lens = (cu[1:] - cu[:-1]).tolist()
    assert token_groups([lens[2 * k] + lens[2 * k + 1] for k in range(n_pairs)], DPO_BUDGET) == DPO_MICRO
    mask = loss_mask(cu, n_prompt)
    model = load(args.model)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    embed_rows = torch.unique(input_ids)
    # The reference: the starting model's summed log-probs, computed once.
    with torch.no_grad():
        ref = Dpo(input_ids, cu, mask, None).seq_logps(model)
    fn = Dpo(input_ids, cu, mask, ref)
    tensors = {
        "input_ids": input_ids,
        "cu_seqlens": cu,
        "n_prompt": torch.tensor(n_prompt, dtype=torch.int64),
        "micro_batches": torch.tensor(DPO_MICRO, dtype=torch.int64),
        "mask": mask.to(torch.float32),
        "ref_seq_logp": ref.to(torch.float32),
        "embed_rows": embed_rows.to(torch.int64),
    }
    loss, gs, losses, after = store_grads_and_sgd(tensors, "dpo", model, fn, w0, embed_rows, DPO_LR)
    assert abs(loss - np.log(2.0)) < 1e-15  # the policy is the reference at the start
    restore(model, w0)
    fd_check(model, fn, gs, [("model.norm.weight", (3,)), ("model.layers.1.self_attn.q_proj.weight", (5, 7)),
                             ("lm_head.weight", (int(input_ids[9]), 2))])
    # Margins h_k = β((π_c − ref_c) − (π_r − ref_r)) at the final weights (info).
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(tensors[f"dpo_sgd3.{n}"].double() if n != EMBED else p)
        d = fn.seq_logps(model) - ref
    restore(model, w0)
    meta = {
        "generator": "tools/make_train_fixtures.py",
        "model": args.model,
        "reference_dtype": "float64 (f64 patches of tools/make_fixtures.py installed)",
        "seed": DPO_SEED,
        "prompt_lens": DPO_PROMPT_LENS,
        "chosen_lens": DPO_CHOSEN_LENS,
        "rejected_lens": DPO_REJECTED_LENS,
        "eos": EOS,
        "token_id_range": [0, TOKEN_HI],
        "layout": "sequence 2k is pair k's chosen, 2k+1 its rejected (prompt + completion + EOS)",
        "n_tokens": int(len(input_ids)),
        "n_loss_tokens": int(mask.sum()),
        "micro_batch_tokens": DPO_BUDGET,
        "micro_batches": DPO_MICRO,
        "micro_batches_note": "pair-index boundaries: pairs grouped in order into at most micro_batch_tokens "
                              "tokens, as engine train dpo groups them",
        "loss_type": "sigmoid",
        "beta": DPO_BETA,
        "label_smoothing": DPO_LABEL_SMOOTHING,
        "temperature": 1.0,
        "aggregation": "mean over the step's pairs",
        "reference": "the starting model (its summed log-probs computed once, fixed during the SGD steps)",
        "lr": DPO_LR,
        "sgd_steps": SGD_STEPS,
        "optimizer": "plain SGD p <- p - lr*grad, no momentum/weight decay",
        "dpo_loss": loss,
        "dpo_sgd_losses": losses,
        "dpo_loss_after_sgd3": after,
        "margins_after_sgd3": (DPO_BETA * (d[0::2] - d[1::2])).tolist(),
        "sgd_losses_note": "loss at the weights before each update; element 0 equals dpo_loss",
        "embed_note": "model.embed_tokens.weight's gradient and sgd3 weights are stored as *_rows.* at rows "
                      "embed_rows; every other row's gradient is exactly zero",
        "versions": versions(),
    }
    write(args, "dpo", tensors, meta)


# ---------------------------------------------------------------------------
# Distillation (DESIGN.md §4.6): tests/fixtures/train/distill.{safetensors,json}
# ---------------------------------------------------------------------------

DIST_SEED = 20240613
DIST_PROMPT_LENS = [3, 5, 2, 6, 4]
DIST_COMPLETION_LENS = [6, 7, 5, 9, 6]  # EOS included
DIST_BUDGET = 24                        # micro-batch token budget
DIST_MICRO = [0, 2, 4, 5]               # sequence-index boundaries the budget gives (asserted)
TEACHER_NOISE_STD = 0.02
# (name, mode, JSD β, temperature, store the sgd3 weights)
DIST_CASES = [("jsd", "jsd", 0.5, 0.8, True), ("forward", "forward", None, 1.0, False)]
DIST_LR = 0.5


def make_distill_data():
    g = torch.Generator().manual_seed(DIST_SEED)
    seqs = []
    for P, C in zip(DIST_PROMPT_LENS, DIST_COMPLETION_LENS):
        prompt = torch.randint(0, TOKEN_HI, (P,), generator=g)
        resp = torch.randint(0, TOKEN_HI, (C - 1,), generator=g)
        seqs.append(torch.cat([prompt, resp, torch.tensor([EOS])]))
    input_ids, cu = pack_seqs(seqs)
    return input_ids, cu, list(DIST_PROMPT_LENS), g


def all_logits(model, input_ids, cu):
    """[N, V]: the logits of every position, each sequence run alone."""
    out = []
    for i in range(len(cu) - 1):
        s, e = int(cu[i]), int(cu[i + 1])
        pos = torch.arange(e - s, dtype=torch.int64)[None]
        out.append(model(input_ids=input_ids[s:e][None], position_ids=pos).logits[0])
    return torch.cat(out)


def divergence(zs, zt, mode, beta, T):
    """Per row: DESIGN.md §4.6 at temperature T (both logits divided by T)."""
    ls = torch.log_softmax(zs / T, dim=-1)
    lt = torch.log_softmax(zt / T, dim=-1)
    ps, pt = ls.exp(), lt.exp()
    if mode == "forward":  # KL(p_t ‖ p_s)
        return (pt * (lt - ls)).sum(-1)
    assert mode == "jsd" and 0 < beta < 1
    # m = β p_t + (1−β) p_s;  β KL(p_t ‖ m) + (1−β) KL(p_s ‖ m)
    lm = torch.logsumexp(torch.stack([lt + np.log(beta), ls + np.log(1 - beta)]), dim=0)
    return beta * (pt * (lt - lm)).sum(-1) + (1 - beta) * (ps * (ls - lm)).sum(-1)


class Distill:
    def __init__(self, input_ids, cu, mask, teacher_logits, mode, beta, T):
        self.input_ids, self.cu, self.m = input_ids, cu, mask
        self.zt = teacher_logits
        self.mode, self.beta, self.T = mode, beta, T

    def __call__(self, model):
        zs = all_logits(model, self.input_ids, self.cu)
        D = divergence(zs, self.zt, self.mode, self.beta, self.T)
        return (D * self.m).sum() / self.m.sum()


def make_distill(args):
    input_ids, cu, n_prompt, g = make_distill_data()
    lens = (cu[1:] - cu[:-1]).tolist()
    assert token_groups(lens, DIST_BUDGET) == DIST_MICRO
    mask = loss_mask(cu, n_prompt)
    model = load(args.model)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    embed_rows = torch.unique(input_ids)
    tensors = {
        "input_ids": input_ids,
        "cu_seqlens": cu,
        "n_prompt": torch.tensor(n_prompt, dtype=torch.int64),
        "micro_batches": torch.tensor(DIST_MICRO, dtype=torch.int64),
        "mask": mask.to(torch.float32),
        "embed_rows": embed_rows.to(torch.int64),
    }
    # The teacher: every tensor plus N(0, 0.02²) noise, rounded to f32 (what is
    # stored is exactly what both sides run).
    teacher = load(args.model)
    with torch.no_grad():
        for n, p in teacher.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64) * TEACHER_NOISE_STD
            p.copy_((p + noise).to(torch.float32).to(torch.float64))
            if n == EMBED:
                # Only the rows of the data's ids are ever read.
                tensors[f"teacher_rows.{n}"] = p[embed_rows].to(torch.float32).contiguous()
            else:
                tensors[f"teacher.{n}"] = p.to(torch.float32).contiguous()
        zt = all_logits(teacher, input_ids, cu)
    del teacher
    meta_cases = {}
    for name, mode, beta, T, with_sgd3 in DIST_CASES:
        fn = Distill(input_ids, cu, mask, zt, mode, beta, T)
        loss, gs, losses, after = store_grads_and_sgd(tensors, name, model, fn, w0, embed_rows, DIST_LR, with_sgd3)
        fd_check(model, fn, gs, [("model.norm.weight", (3,)), ("model.layers.1.self_attn.q_proj.weight", (5, 7)),
                                 ("lm_head.weight", (int(input_ids[7]), 2))])
        meta_cases[name] = {"mode": mode, "beta": beta, "temperature": T, "sgd3_weights_stored": with_sgd3}
        meta_cases[name].update({"loss": loss, "sgd_losses": losses, "loss_after_sgd3": after})
    meta = {
        "generator": "tools/make_train_fixtures.py",
        "model": args.model,
        "reference_dtype": "float64 (f64 patches of tools/make_fixtures.py installed)",
        "seed": DIST_SEED,
        "prompt_lens": DIST_PROMPT_LENS,
        "completion_lens": DIST_COMPLETION_LENS,
        "eos": EOS,
        "token_id_range": [0, TOKEN_HI],
        "n_tokens": int(len(input_ids)),
        "n_loss_tokens": int(mask.sum()),
        "micro_batch_tokens": DIST_BUDGET,
        "micro_batches": DIST_MICRO,
        "micro_batches_note": "sequence-index boundaries: sequences grouped in order into at most "
                              "micro_batch_tokens tokens (the engine's micro_batches)",
        "teacher": "the fixture model with N(0, teacher_noise_std^2) noise added to every tensor (seeded, after "
                   "the data), rounded to f32: teacher.<p>, and teacher_rows.<embed> at rows embed_rows (no "
                   "other embedding row is read)",
        "teacher_noise_std": TEACHER_NOISE_STD,
        "cases": meta_cases,
        "aggregation": "token-mean over the step's completion tokens (all micro-batches)",
        "lr": DIST_LR,
        "sgd_steps": SGD_STEPS,
        "optimizer": "plain SGD p <- p - lr*grad, no momentum/weight decay; the teacher fixed",
        "sgd_losses_note": "loss at the weights before each update; element 0 equals the case's loss",
        "embed_note": "model.embed_tokens.weight's gradient and sgd3 weights are stored as *_rows.* at rows "
                      "embed_rows; every other row's gradient is exactly zero",
        "versions": versions(),
    }
    write(args, "distill", tensors, meta)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/train")
    ap.add_argument("--model", default="tests/fixtures/qwen3")
    ap.add_argument("--cases", default="step,dpo,distill",
                    help="comma-separated subset of step, dpo, distill (each writes its own files)")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    mf.install_f64_patches()
    makers = {"step": make_step, "dpo": make_dpo, "distill": make_distill}
    cases = [c for c in args.cases.split(",") if c]
    for c in cases:
        if c not in makers:
            raise SystemExit(f"unknown case {c!r} (step, dpo, distill)")
    os.makedirs(args.out, exist_ok=True)
    for c in cases:
        makers[c](args)


if __name__ == "__main__":
    main()
