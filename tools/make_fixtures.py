#!/usr/bin/env python3
"""Generate the reference fixtures in tests/fixtures/ (DESIGN.md §6).

Run from the repository root:

    python tools/make_fixtures.py            # writes tests/fixtures/
    python tools/make_fixtures.py --out DIR  # writes somewhere else

CPU only, a few seconds. Everything is seeded, so re-running with
the pinned versions below rewrites the same bytes (except the date in
manifest.json). The fixtures were generated with:

    python        3.11.7
    torch         2.15.0 (+cu132 wheel, run on CPU)
    transformers  5.24.0
    tokenizers    0.23.3
    safetensors   0.8.0
    numpy         2.4.6

Setup: `pip install torch==2.15.0 transformers==5.24.0 tokenizers==0.23.3
safetensors numpy` (the PyPI torch wheel is a CUDA build and pulls in the
nvidia-* runtime wheels just to import; the CPU wheel from
download.pytorch.org/whl/cpu works the same). No network access is needed at
run time: every model is built from a config with random weights.

After writing, the script checks each folder: reloaded with
AutoModelForCausalLM the weights are bitwise the in-memory ones and the saved
config (legacy for llama) gives bitwise the same logits as the original one;
the f64 reference agrees with plain HF f32/f64 to ~1e-7; HF's packed path
matches the per-sequence reference; the stored loss is the masked mean of the
stored log-probs; a few gradient entries match central finite differences.

A different torch/transformers changes the checkpoints' config.json /
generation_config.json bookkeeping and, in the last bits, the references; the
script records the versions it actually ran with in manifest.json.

What it writes
--------------
tokenizer: a tiny byte-level BPE (400 tokens) trained here on the inline corpus
below, plus two added special tokens `<|endoftext|>` (400) and `<|im_end|>`
(401). The same tokenizer.json / tokenizer_config.json go into every model
folder.

Three tiny random models, saved with `save_pretrained` (safetensors):

  llama/  LlamaForCausalLM, GQA 5:1, head_dim 16, Llama-3 rope scaling, f32,
          sharded (several model-0000x-of-0000n.safetensors + index). Its
          config.json is rewritten into the LEGACY hub form (`rope_theta` and
          `rope_scaling` at top level, `torch_dtype`, no `rope_parameters`,
          no `dtype`). generation_config eos_token_id: int.
  qwen2/  Qwen2ForCausalLM, q/k/v biases, tied embeddings, saved in bfloat16,
          single file; config as transformers writes it, except that
          `sliding_window: 4096` is put back (transformers nulls it when
          use_sliding_window is false; Qwen2.5 hub configs carry 4096).
          generation_config eos_token_id: list of two ids.
  qwen3/  Qwen3ForCausalLM, q_norm/k_norm, head_dim 32 != hidden/heads, f32,
          single file, config in the NEW form (`rope_parameters`, `dtype`).
          generation_config eos_token_id: int (<|im_end|>).

Weights: every matrix ~ N(0, 0.1), every RMSNorm weight ~ U(0.8, 1.2), every
bias ~ N(0, 0.1) (so norm and bias gradients are non-trivial).

References, `<name>.ref.safetensors` next to each folder, computed in float64
from the weights exactly as saved (qwen2: the bf16 checkpoint upcast to f64),
with attn_implementation="eager":

  input_ids     i64 [2,24]  row 0: sequences of 10, 14; row 1: 7, 9, 8
  position_ids  i64 [2,24]  0.. restarting at every sequence start
  labels        i64 [2,24]  next token of the same sequence; -100 at the last
                            token of each sequence and at its first 3 positions
  logprobs      f64 [2,24]  log softmax(logits_t)[next token]; 0 at last token
  logprobs_t07  f64 [2,24]  same with log_softmax(logits_t / 0.7)
  top2_gap      f64 [2,24]  top-1 minus top-2 logit, every position
  loss          f64 []      masked mean CE: sum of -logprob where label != -100
                            divided by their count (28)
  grad.<name>   f32         d loss / d parameter (f64, then cast), for every
                            entry of model.named_parameters()

Each sequence is run ALONE (batch 1, positions 0..L-1); the packed layout is
only how the inputs are stored. The script also checks that HF's own packed
path (position_ids restarting, no attention mask) gives the same log-probs.

`<name>.score.json`: 3 texts with their tokens (add_special_tokens=False) and
float64 log p(tokens[i+1] | tokens[..=i]).

float64 caveat: HF's Llama/Qwen modules compute RMSNorm, the rotary cos/sin
(and inv_freq) and the eager softmax in float32 even when the model is float64.
For a true float64 reference this script patches those three places to stay in
float64 when their input is float64 (nothing changes for f32/bf16); the rope
inv_freq is recomputed in f64 (default and llama3 rules) and checked against
HF's f32 values. The patched f64 model agrees with unpatched HF to ~1e-7
relative (printed at the end of a run).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import json
import math
import os
import platform
import shutil
import sys

import torch

import safetensors
import safetensors.torch
import tokenizers
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.models.llama import modeling_llama
from transformers.models.qwen2 import modeling_qwen2
from transformers.models.qwen3 import modeling_qwen3

PINNED = {"torch": "2.15.0", "transformers": "5.24.0"}

# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------

CORPUS = [
    "The river ran slowly past the old mill, and the children who lived in the "
    "village would sit on the stone wall every evening to watch the water turn "
    "orange in the light of the setting sun. Nobody remembered who had built the "
    "mill, but everyone agreed that it had been there for a very long time.",
    "When the train arrived at the station, the platform was already crowded with "
    "people carrying bags, boxes and umbrellas. A small dog barked at the pigeons, "
    "and a man in a grey coat read his newspaper as if nothing else in the world "
    "could possibly interest him.",
    "Learning to write clear sentences takes practice. Start with a simple idea, "
    "say it plainly, and then check whether each word is doing useful work. If a "
    "sentence still reads well after you remove a word, the word was probably not "
    "needed in the first place.",
    "Question: What is the sum of the first ten positive integers? Answer: The sum "
    "is 1 + 2 + 3 + 4 + 5 + 6 + 7 + 8 + 9 + 10 = 55, because n(n+1)/2 = 10*11/2 = 55. "
    "So the answer is \\boxed{55}.",
    "Let x be a real number such that 3x + 7 = 22. Subtracting 7 from both sides "
    "gives 3x = 15, and dividing by 3 gives x = 5. We can check: 3*5 + 7 = 15 + 7 = 22. "
    "Therefore x = 5 and the final answer is \\boxed{5}.",
    "The area of a circle with radius r is A = \\pi r^2. For r = 4 we get "
    "A = 16\\pi, which is about 50.27. The circumference is C = 2\\pi r = 8\\pi. "
    "If f(x) = x^2 - 4x + 4 = (x - 2)^2, then f(x) >= 0 for every x, with equality "
    "only at x = 2.",
    "Compute 12*7: we have 12*7 = 84. Compute 144/12 = 12 and 2^10 = 1024. "
    "The derivative of sin(x) is cos(x), and the integral of 2x dx is x^2 + C. "
    "A prime number has exactly two divisors: 2, 3, 5, 7, 11, 13, 17, 19, 23, 29.",
    "In the morning she made coffee, opened the window and listened to the birds. "
    "It was going to be a warm day, so she decided to walk to work instead of "
    "taking the bus. On the way she counted seventeen red cars and three blue ones.",
]

BPE_VOCAB = 400
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_end|>"]


def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    assert tok.get_vocab_size(with_added_tokens=False) == BPE_VOCAB, tok.get_vocab_size()
    # Added after training, as in Qwen's tokenizer.json: they live in
    # "added_tokens" with ids after the BPE vocabulary.
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def save_tokenizer(tok: Tokenizer, tmp_dir: str) -> dict:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_end|>"],
        model_max_length=512,
    )
    os.makedirs(tmp_dir, exist_ok=True)
    fast.save_pretrained(tmp_dir)
    # transformers 5 writes its own backend name here; the portable class name
    # loads in transformers 4.x and 5.x alike.
    p = os.path.join(tmp_dir, "tokenizer_config.json")
    with open(p) as f:
        c = json.load(f)
    c["tokenizer_class"] = "PreTrainedTokenizerFast"
    write_json(p, c)
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    return ids


def copy_tokenizer(tmp_dir: str, dst: str) -> None:
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(tmp_dir, f), os.path.join(dst, f))


# ---------------------------------------------------------------------------
# float64 precision patches (no-ops unless the input is float64)
# ---------------------------------------------------------------------------

_MODS = (modeling_llama, modeling_qwen2, modeling_qwen3)
_RMS = (modeling_llama.LlamaRMSNorm, modeling_qwen2.Qwen2RMSNorm, modeling_qwen3.Qwen3RMSNorm)
_ROPE = (
    modeling_llama.LlamaRotaryEmbedding,
    modeling_qwen2.Qwen2RotaryEmbedding,
    modeling_qwen3.Qwen3RotaryEmbedding,
)
_ORIG = {}
PATCHES_ON = True


def _rms_forward_f64(orig):
    def forward(self, hidden_states):
        if PATCHES_ON and hidden_states.dtype == torch.float64:
            var = hidden_states.pow(2).mean(-1, keepdim=True)
            return self.weight * (hidden_states * torch.rsqrt(var + self.variance_epsilon))
        return orig(self, hidden_states)

    return forward


def _rope_forward_f64(orig):
    def forward(self, x, position_ids):
        if PATCHES_ON and x.dtype == torch.float64:
            inv = self._inv_freq_f64  # set by attach_f64_rope; AttributeError if missing
            freqs = position_ids[..., None].to(torch.float64) * inv.to(x.device)
            emb = torch.cat((freqs, freqs), dim=-1)
            return emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling
        return orig(self, x, position_ids)

    return forward


def _eager_f64(orig, repeat_kv):
    def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        if not (PATCHES_ON and query.dtype == torch.float64):
            return orig(module, query, key, value, attention_mask, scaling, dropout=dropout, **kwargs)
        k = repeat_kv(key, module.num_key_value_groups)
        v = repeat_kv(value, module.num_key_value_groups)
        w = torch.matmul(query, k.transpose(2, 3)) * scaling
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:
                w = w.masked_fill(~attention_mask, float("-inf"))
            else:
                w = w + attention_mask
        w = torch.softmax(w, dim=-1)  # stays float64
        out = torch.matmul(w, v).transpose(1, 2).contiguous()
        return out, w

    return eager_attention_forward


def install_f64_patches() -> None:
    for cls in _RMS:
        _ORIG[cls] = cls.forward
        cls.forward = _rms_forward_f64(cls.forward)
    for cls in _ROPE:
        _ORIG[cls] = cls.forward
        cls.forward = _rope_forward_f64(cls.forward)
    for mod in _MODS:
        mod.eager_attention_forward = _eager_f64(mod.eager_attention_forward, mod.repeat_kv)


def inv_freq_f64(cfg) -> torch.Tensor:
    rp = cfg.rope_parameters
    base = float(rp["rope_theta"])
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    inv = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    kind = rp.get("rope_type", "default")
    if kind == "default":
        return inv
    if kind != "llama3":
        raise ValueError(f"rope_type {kind} not handled")
    factor = float(rp["factor"])
    lo, hi = float(rp["low_freq_factor"]), float(rp["high_freq_factor"])
    old = float(rp["original_max_position_embeddings"])
    lo_wl, hi_wl = old / lo, old / hi
    wl = 2 * math.pi / inv
    out = torch.where(wl > lo_wl, inv / factor, inv)
    smooth = (old / wl - lo) / (hi - lo)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wl < hi_wl) & ~(wl > lo_wl)
    return torch.where(medium, smoothed, out)


def attach_f64_rope(model) -> None:
    for m in model.modules():
        if isinstance(m, _ROPE):
            inv = inv_freq_f64(model.config)
            hf = m.original_inv_freq.to(torch.float64)
            err = ((inv - hf).abs() / inv.abs()).max().item()
            assert err < 1e-6, f"f64 inv_freq disagrees with HF's: {err}"
            m._inv_freq_f64 = inv


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


def randomize(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(0.8 + 0.4 * torch.rand(p.shape, generator=g, dtype=torch.float64))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=torch.float64))
            else:
                assert p.dim() == 2, name
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=torch.float64))


def write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def make_llama(out: str, ids: dict):
    cfg = LlamaConfig(
        vocab_size=1007,
        hidden_size=80,
        num_attention_heads=5,
        num_key_value_heads=1,
        head_dim=16,
        intermediate_size=176,
        num_hidden_layers=2,
        rms_norm_eps=1e-5,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        max_position_embeddings=512,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        initializer_range=0.1,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"],
    )
    model = LlamaForCausalLM(cfg).to(torch.float32)
    randomize(model, 1001)
    d = os.path.join(out, "llama")
    model.save_pretrained(d, max_shard_size="200KB")
    GenerationConfig(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"]).save_pretrained(d)

    # Rewrite config.json into the legacy form hub checkpoints carry.
    p = os.path.join(d, "config.json")
    with open(p) as f:
        c = json.load(f)
    rp = c.pop("rope_parameters")
    c.pop("dtype", None)
    c.pop("torch_dtype", None)
    c["rope_theta"] = float(rp["rope_theta"])
    c["rope_scaling"] = {
        "factor": float(rp["factor"]),
        "low_freq_factor": float(rp["low_freq_factor"]),
        "high_freq_factor": float(rp["high_freq_factor"]),
        "original_max_position_embeddings": int(rp["original_max_position_embeddings"]),
        "rope_type": "llama3",
        "type": "llama3",
    }
    c["torch_dtype"] = "float32"
    write_json(p, c)
    return model, d, {"architecture": "LlamaForCausalLM", "config_form": "legacy", "dtype": "float32",
                      "tied": False, "sharded": True}


def make_qwen2(out: str, ids: dict):
    cfg = Qwen2Config(
        vocab_size=1000,
        hidden_size=96,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=224,
        num_hidden_layers=2,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        max_position_embeddings=512,
        tie_word_embeddings=True,
        use_sliding_window=False,
        sliding_window=4096,
        max_window_layers=2,
        initializer_range=0.1,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
    )
    model = Qwen2ForCausalLM(cfg).to(torch.float32)
    randomize(model, 2002)
    model = model.to(torch.bfloat16)
    d = os.path.join(out, "qwen2")
    model.save_pretrained(d)
    GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
    ).save_pretrained(d)
    p = os.path.join(d, "config.json")
    with open(p) as f:
        c = json.load(f)
    if c.get("sliding_window") is None:
        c["sliding_window"] = 4096  # as Qwen2.5 hub configs carry it
        write_json(p, c)
    return model, d, {"architecture": "Qwen2ForCausalLM", "config_form": _form(d), "dtype": "bfloat16",
                      "tied": True, "sharded": False}


def make_qwen3(out: str, ids: dict):
    cfg = Qwen3Config(
        vocab_size=777,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=160,
        num_hidden_layers=2,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        max_position_embeddings=512,
        tie_word_embeddings=False,
        initializer_range=0.1,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
    )
    model = Qwen3ForCausalLM(cfg).to(torch.float32)
    randomize(model, 3003)
    d = os.path.join(out, "qwen3")
    model.save_pretrained(d)
    GenerationConfig(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"]).save_pretrained(d)
    p = os.path.join(d, "config.json")
    with open(p) as f:
        c = json.load(f)
    if "rope_parameters" not in c or "dtype" not in c:  # older transformers: force the new form
        theta = c.pop("rope_theta", 1000000.0)
        c.pop("rope_scaling", None)
        c["rope_parameters"] = {"rope_type": "default", "rope_theta": float(theta)}
        c["dtype"] = c.pop("torch_dtype", "float32")
        write_json(p, c)
    return model, d, {"architecture": "Qwen3ForCausalLM", "config_form": "new", "dtype": "float32",
                      "tied": False, "sharded": False}


def _form(d: str) -> str:
    with open(os.path.join(d, "config.json")) as f:
        c = json.load(f)
    return "new" if "rope_parameters" in c else "legacy"


# ---------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------

ROWS = [[10, 14], [7, 9, 8]]
T = 24
N_PROMPT = 3


def packed_batch(vocab: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (len(ROWS), T), generator=g, dtype=torch.int64)
    position_ids = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    seqs = []
    for r, lens in enumerate(ROWS):
        assert sum(lens) == T
        s = 0
        for L in lens:
            position_ids[r, s:s + L] = torch.arange(L)
            for t in range(N_PROMPT, L - 1):
                labels[r, s + t] = input_ids[r, s + t + 1]
            seqs.append((r, s, L))
            s += L
    return input_ids, position_ids, labels, seqs


def load_f64(d: str, dtype):
    m = AutoModelForCausalLM.from_pretrained(d, dtype=dtype, attn_implementation="eager")
    m = m.double()
    m.eval()
    attach_f64_rope(m)
    return m


def compute_reference(model, input_ids, position_ids, labels, seqs):
    model.zero_grad(set_to_none=True)
    lp = torch.zeros(input_ids.shape, dtype=torch.float64)
    lp07 = torch.zeros_like(lp)
    gap = torch.zeros_like(lp)
    total = None
    count = int((labels != -100).sum())
    for r, s, L in seqs:
        ids = input_ids[r:r + 1, s:s + L]
        pos = torch.arange(L, dtype=torch.int64)[None]
        assert torch.equal(pos[0], position_ids[r, s:s + L])
        logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0]
        assert logits.dtype == torch.float64
        logp = torch.log_softmax(logits, dim=-1)
        tgt = ids[0, 1:]
        tok_lp = logp[:-1].gather(1, tgt[:, None])[:, 0]
        lab = labels[r, s:s + L - 1]
        mask = lab != -100
        assert torch.equal(lab[mask], tgt[mask])
        assert labels[r, s + L - 1] == -100
        part = -(tok_lp[mask]).sum()
        total = part if total is None else total + part
        with torch.no_grad():
            lp[r, s:s + L - 1] = tok_lp
            lp07[r, s:s + L - 1] = torch.log_softmax(logits[:-1] / 0.7, dim=-1).gather(1, tgt[:, None])[:, 0]
            top2 = logits.topk(2, dim=-1).values
            gap[r, s:s + L] = top2[:, 0] - top2[:, 1]
    loss = total / count
    loss.backward()
    ref = {
        "input_ids": input_ids.contiguous(),
        "position_ids": position_ids.contiguous(),
        "labels": labels.contiguous(),
        "logprobs": lp,
        "logprobs_t07": lp07,
        "top2_gap": gap,
        "loss": loss.detach().clone().reshape(()),
    }
    n = 0
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        ref["grad." + name] = p.grad.detach().to(torch.float32).contiguous()
        n += 1
    return ref, n


SCORE_TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river.",
    "12*7 = 84, so the answer is \\boxed{84}.",
    "On a quiet morning the children walked past the old mill, "
    "and later they found that x = 5.",
]


def compute_scores(model, hf_tok, tok: Tokenizer):
    out = []
    for text in SCORE_TEXTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert ids == hf_tok(text, add_special_tokens=False)["input_ids"], text
        x = torch.tensor([ids], dtype=torch.int64)
        with torch.no_grad():
            logits = model(input_ids=x, position_ids=torch.arange(len(ids))[None], use_cache=False).logits[0]
            logp = torch.log_softmax(logits, dim=-1)[:-1].gather(1, x[0, 1:, None])[:, 0]
        lps = [float(v) for v in logp.tolist()]
        out.append({"text": text, "tokens": ids, "logprobs": lps, "sum_logprob": float(sum(lps))})
    return out


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def check_model(name: str, d: str, load_dtype, mem_model, ref, seqs):
    global PATCHES_ON
    # 1. reload as saved (AutoModel): the weights are bitwise the in-memory ones, and the
    #    saved config (legacy form for llama) gives the same logits as the config the model
    #    was built from (both run in f32 with the same attention implementation).
    m = AutoModelForCausalLM.from_pretrained(d, dtype=load_dtype, attn_implementation="eager").eval()
    mem_sd = mem_model.state_dict()
    for k, v in m.state_dict().items():
        assert torch.equal(v, mem_sd[k]) and v.dtype == mem_sd[k].dtype, k
    fresh = type(mem_model)(copy.deepcopy(mem_model.config)).float().eval()
    fresh.load_state_dict({k: v.float() for k, v in mem_sd.items()})
    fresh.set_attn_implementation("eager")
    m32r = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    x = ref["input_ids"][:1, :10]
    with torch.no_grad():
        a = m32r(input_ids=x).logits
        b = fresh(input_ids=x).logits
    diff = float((a - b).abs().max())
    print(f"  [{name}] weights as saved == in memory; logits(saved config) vs logits(original config): "
          f"max|d| = {diff:.3g}")
    assert diff == 0.0, diff
    rs = m.config.rope_parameters
    print(f"  [{name}] loaded rope_parameters = {dict(rs)}")
    # 2. patched f64 vs unpatched f64 vs f32 (precision of the reference).
    m64 = load_f64(d, load_dtype)
    m32 = AutoModelForCausalLM.from_pretrained(d, dtype=load_dtype, attn_implementation="eager").float().eval()
    r, s, L = seqs[-1]
    ids = ref["input_ids"][r:r + 1, s:s + L]
    with torch.no_grad():
        l64 = m64(input_ids=ids, use_cache=False).logits
        PATCHES_ON = False
        l64u = m64(input_ids=ids, use_cache=False).logits
        PATCHES_ON = True
        l32 = m32(input_ids=ids, use_cache=False).logits
    print(f"  [{name}] logits rel err: HF-f64(unpatched) {rel(l64u, l64):.2e}, HF-f32 {rel(l32, l64):.2e}")
    assert rel(l64u, l64) < 1e-5 and rel(l32, l64) < 1e-5
    # 3. HF's packed path (position_ids restarting, no mask) gives the same log-probs.
    with torch.no_grad():
        lg = m64(input_ids=ref["input_ids"], position_ids=ref["position_ids"], use_cache=False).logits
        lp = torch.log_softmax(lg, -1)[:, :-1].gather(2, ref["input_ids"][:, 1:, None])[..., 0]
    # 4. the stored loss is the masked mean of the stored log-probs, and a few gradient
    #    entries match central finite differences of that loss (float64).
    lab = ref["labels"]
    assert abs(float(-ref["logprobs"][lab != -100].sum() / (lab != -100).sum()) - float(ref["loss"])) < 1e-12

    def loss_of(model):
        tot, cnt = 0.0, int((lab != -100).sum())
        for r, s, L in seqs:
            ids = ref["input_ids"][r:r + 1, s:s + L]
            lg = model(input_ids=ids, position_ids=torch.arange(L)[None], use_cache=False).logits[0]
            lp = torch.log_softmax(lg, -1)[:-1].gather(1, ids[0, 1:, None])[:, 0]
            tot += float(-lp[lab[r, s:s + L - 1] != -100].sum())
        return tot / cnt

    params = dict(m64.named_parameters())
    worst = 0.0
    with torch.no_grad():
        for pname in [n for n in params if n.endswith("norm.weight") or n.endswith(".bias")][:3] + \
                     ["model.embed_tokens.weight", "model.layers.1.self_attn.k_proj.weight"]:
            p = params[pname]
            g = ref["grad." + pname]
            idx = tuple(int(i) for i in torch.nonzero(g.abs() == g.abs().max())[0])
            h = 1e-5
            old_v = p[idx].item()
            p[idx] = old_v + h
            lp_ = loss_of(m64)
            p[idx] = old_v - h
            lm_ = loss_of(m64)
            p[idx] = old_v
            fd = (lp_ - lm_) / (2 * h)
            worst = max(worst, abs(fd - float(g[idx])) / abs(float(g[idx])))
    print(f"  [{name}] finite-difference check of 5 gradient entries: max rel err {worst:.1e}")
    assert worst < 1e-5, worst
    mask = torch.zeros_like(ref["logprobs"], dtype=torch.bool)
    for r, s, L in seqs:
        mask[r, s:s + L - 1] = True
    d_packed = float((lp - ref["logprobs"][:, :-1])[mask[:, :-1]].abs().max())
    print(f"  [{name}] HF packed path vs per-sequence reference: max|dlogprob| = {d_packed:.2e}")
    assert d_packed < 1e-10, d_packed


# ---------------------------------------------------------------------------


def sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join("tests", "fixtures"))
    args = ap.parse_args()
    out = args.out

    for k, v in PINNED.items():
        have = {"torch": torch.__version__, "transformers": transformers.__version__}[k]
        if not have.startswith(v):
            print(f"warning: fixtures were pinned with {k} {v}, running {have}", file=sys.stderr)

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    install_f64_patches()

    for sub in ("llama", "qwen2", "qwen3"):
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    os.makedirs(out, exist_ok=True)

    tok = build_tokenizer()
    tmp_tok = os.path.join(out, ".tokenizer_tmp")
    shutil.rmtree(tmp_tok, ignore_errors=True)
    ids = save_tokenizer(tok, tmp_tok)
    hf_tok = AutoTokenizer.from_pretrained(tmp_tok)
    print(f"tokenizer: vocab {tok.get_vocab_size(with_added_tokens=True)} "
          f"({BPE_VOCAB} BPE + {len(SPECIAL_TOKENS)} special), special ids {ids}")

    manifest = {
        "generator": "tools/make_fixtures.py",
        "date": datetime.date.today().isoformat(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "safetensors": safetensors.__version__,
        },
        "tokenizer": {
            "vocab_size": tok.get_vocab_size(with_added_tokens=True),
            "bpe_vocab_size": BPE_VOCAB,
            "special_tokens": ids,
        },
        "reference": {
            "rows": ROWS,
            "masked_prompt_positions": N_PROMPT,
            "label_count": None,
            "precision": "float64 (RMSNorm, rope and eager softmax kept in float64; see script docstring)",
        },
        "models": {},
    }

    builders = [
        ("llama", make_llama, torch.float32, 11),
        ("qwen2", make_qwen2, torch.bfloat16, 22),
        ("qwen3", make_qwen3, torch.float32, 33),
    ]
    for name, build, load_dtype, seed in builders:
        print(f"== {name}")
        mem_model, d, info = build(out, ids)
        copy_tokenizer(tmp_tok, d)
        cfg = mem_model.config
        input_ids, position_ids, labels, seqs = packed_batch(cfg.vocab_size, seed)
        manifest["reference"]["label_count"] = int((labels != -100).sum())

        m64 = load_f64(d, load_dtype)
        ref, n_grads = compute_reference(m64, input_ids, position_ids, labels, seqs)
        ref_path = os.path.join(out, f"{name}.ref.safetensors")
        # No metadata: safetensors writes a metadata map in hash order, which would
        # make the file differ between runs. Versions are in manifest.json.
        safetensors.torch.save_file(ref, ref_path)
        print(f"  loss {ref['loss'].item():.10f}, {n_grads} gradients, "
              f"labels {int((labels != -100).sum())}")

        m64.zero_grad(set_to_none=True)
        scores = compute_scores(m64, hf_tok, tok)
        with open(os.path.join(out, f"{name}.score.json"), "w") as f:
            json.dump(scores, f, indent=1)
            f.write("\n")
        print("  score lengths", [len(s["tokens"]) for s in scores])

        check_model(name, d, load_dtype, mem_model, ref, seqs)

        info.update({
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
            "intermediate_size": cfg.intermediate_size,
            "rope": dict(m64.config.rope_parameters),
            "num_parameters": sum(p.numel() for p in m64.parameters()),
            "files": sorted(os.listdir(d)),
        })
        manifest["models"][name] = info

    shutil.rmtree(tmp_tok, ignore_errors=True)
    write_json(os.path.join(out, "manifest.json"), manifest)

    total = 0
    for root, _, files in sorted(os.walk(out)):
        for f in sorted(files):
            p = os.path.join(root, f)
            total += os.path.getsize(p)
            print(f"  {os.path.relpath(p, out):48s} {os.path.getsize(p):>9d}  {sha(p)}")
    print(f"total {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
