#!/usr/bin/env python3
"""The bf16 half of DESIGN.md §6's rule for the CUDA model: what PyTorch gets
for the same batch when the model runs in bfloat16.

For each fixture model (tests/fixtures/{llama,qwen2,qwen3}, written by
tools/make_fixtures.py) this loads the committed folder with
`dtype=torch.bfloat16`, runs the batch of `<name>.ref.safetensors` (same
sequences, same positions, same labels) as plain transformers does (bf16
weights and activations, SDPA attention, logits upcast to fp32 for the
log-softmax and the loss, as transformers' causal-LM loss does), and writes
`<name>.bf16.safetensors`:

  logprobs   f64 [2,24]  log p(next token), 0 at each sequence's last token
  loss       f64 []      masked mean cross-entropy over the labels
  grad.<p>   f32         every parameter's gradient (bf16, widened)

The CUDA model test (tests/cuda/model.rs) compares both its own error and
this file's error against the float64 reference: the engine's may be at most
twice PyTorch's, and never above 2e-2.

Run from the repository root: python3 tools/make_bf16_fixtures.py
(CPU only; needs torch, transformers, safetensors.)
"""

import os
import sys

import safetensors.torch
import torch
from transformers import AutoModelForCausalLM

FIXTURES = os.path.join("tests", "fixtures")
FAMILIES = ("llama", "qwen2", "qwen3")


def sequences(labels: torch.Tensor, position_ids: torch.Tensor):
    """(row, start, length) of each packed sequence: positions restart at 0."""
    out = []
    for r in range(position_ids.shape[0]):
        starts = [t for t in range(position_ids.shape[1]) if position_ids[r, t] == 0]
        ends = starts[1:] + [position_ids.shape[1]]
        out += [(r, s, e - s) for s, e in zip(starts, ends)]
    return out


def run(name: str) -> None:
    ref = safetensors.torch.load_file(os.path.join(FIXTURES, f"{name}.ref.safetensors"))
    input_ids, position_ids, labels = ref["input_ids"], ref["position_ids"], ref["labels"]
    model = AutoModelForCausalLM.from_pretrained(
        os.path.join(FIXTURES, name), dtype=torch.bfloat16, attn_implementation="sdpa"
    )
    model.train(False)
    model.zero_grad(set_to_none=True)
    lp = torch.zeros(input_ids.shape, dtype=torch.float64)
    total, count = None, int((labels != -100).sum())
    for r, s, length in sequences(labels, position_ids):
        ids = input_ids[r:r + 1, s:s + length]
        pos = position_ids[r:r + 1, s:s + length]
        logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0]
        assert logits.dtype == torch.bfloat16
        logp = torch.log_softmax(logits.float(), dim=-1)
        tgt = ids[0, 1:]
        tok_lp = logp[:-1].gather(1, tgt[:, None])[:, 0]
        mask = labels[r, s:s + length - 1] != -100
        part = -(tok_lp[mask]).sum()
        total = part if total is None else total + part
        with torch.no_grad():
            lp[r, s:s + length - 1] = tok_lp.double()
    loss = total / count
    loss.backward()
    out = {"logprobs": lp, "loss": loss.detach().double().reshape(())}
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.bfloat16, pname
        out["grad." + pname] = p.grad.detach().float().contiguous()
    err = (lp - ref["logprobs"]).norm() / ref["logprobs"].norm()
    print(f"{name}: bf16 loss {loss.item():.6f} vs {ref['loss'].item():.6f}; logprobs rel err {err:.2e}")
    safetensors.torch.save_file(out, os.path.join(FIXTURES, f"{name}.bf16.safetensors"))


def main() -> None:
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    for name in FAMILIES:
        run(name)


if __name__ == "__main__":
    sys.exit(main())
