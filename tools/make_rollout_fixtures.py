#!/usr/bin/env python3
"""Generate the rollout fixtures in tests/fixtures/rollout/ (DESIGN.md §6).

Run from the repository root, after tools/make_fixtures.py has written the
tiny models in tests/fixtures/{llama,qwen2,qwen3}/ (this script only reads
them):

    python tools/make_rollout_fixtures.py             # writes tests/fixtures/rollout/
    python tools/make_rollout_fixtures.py --out DIR   # writes somewhere else

CPU only, about half a minute. Everything is seeded and the script runs torch
on one thread with deterministic algorithms, so re-running with the versions
pinned in tools/make_fixtures.py (torch 2.15.0, transformers 5.24.0) rewrites
the same bytes. Versions actually used are recorded in manifest.json.

What it writes
--------------
greedy.json   a JSON array, one entry per (model, prompt): 3 models x 4 prompts.

    {"model": "llama" | "qwen2" | "qwen3",
     "prompt":     [token ids],   random ids in [0, 400), lengths 1, 5, 9, 17
                                  (the same 4 prompts for every model, seed 1234)
     "tokens_f32": [64 ids],      HF generate, model loaded in float32
                                  (attn_implementation="eager", eval mode),
                                  do_sample=False, min_new_tokens=max_new_tokens=64,
                                  eos_token_id=None, pad_token_id=0, one prompt
                                  at a time, no padding
     "tokens_f64": [64 ids],      our own greedy loop in float64: at every step a
                                  full forward (no KV cache) over prompt+generated,
                                  argmax of the last position's logits
     "gap":        [64 floats],   float64 loop: top-1 minus top-2 logit per step
     "logprob":    [64 floats]}   float64 loop: log_softmax(z)[chosen token]

    The float64 model is the float32 checkpoint upcast (qwen2: its bf16
    checkpoint, upcast exactly) with the float64 patches of
    tools/make_fixtures.py installed: HF keeps RMSNorm, rope cos/sin and the
    eager softmax in float32 even for a float64 model; the patches keep them in
    float64, so "gap" and "logprob" are true float64 numbers.
    Greedy comparisons stop, without blame, at the first step whose gap is
    under 1e-3 (DESIGN.md §6). manifest.json records, per entry, the first
    index where tokens_f32 and tokens_f64 differ (null: never) and the
    minimum gap.

    The script checks that generate's processed scores are all finite, i.e.
    that no EOS was masked by min_new_tokens (the checkpoints'
    generation_config.json carry eos ids; eos_token_id=None must override
    them), and that a plain float32 loop (full forward, argmax) reproduces
    tokens_f32 up to the first near-tie.

chat_qwen/    tokenizer.json (a copy of tests/fixtures/qwen2/tokenizer.json)
              + tokenizer_config.json = qwen2's tokenizer_config.json plus
              "chat_template": the Qwen2.5-Instruct template (tools branch,
              <|im_start|>/<|im_end|>, default system message "You are Qwen,
              created by Alibaba Cloud. You are a helpful assistant.").
chat_llama3/  tokenizer.json (a copy of tests/fixtures/llama/tokenizer.json),
              chat_template.jinja (the Meta-Llama-3-Instruct template: bos_token,
              <|start_header_id|>role<|end_header_id|>\\n\\n content|trim
              <|eot_id|>) and a tokenizer_config.json with bos_token
              "<|begin_of_text|>", eos_token "<|eot_id|>".

    The tiny BPE vocabulary has neither <|im_start|> nor the Llama-3 header
    tokens (only <|endoftext|> 400 and <|im_end|> 401); the fixtures are about
    rendering text, not ids. Loading chat_llama3 with AutoTokenizer adds
    <|begin_of_text|> / <|eot_id|> as new special tokens (ids 402, 403) in
    memory; nothing is written back.

chat.json     a JSON array of {"template_dir": "chat_qwen" | "chat_llama3",
              "messages": [{"role", "content"}...], "text": rendered string},
              rendered with AutoTokenizer.from_pretrained(folder)
              .apply_chat_template(messages, tokenize=False,
              add_generation_prompt=True). The script also renders every case
              with plain jinja2 (trim_blocks, lstrip_blocks, as transformers
              does) and checks it gives the same text.

manifest.json versions, prompts, the per-entry agreement summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys

import torch

import jinja2
import jinja2.sandbox
import tokenizers
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (f64 patches, pinned versions)

MODELS = ("llama", "qwen2", "qwen3")
PROMPT_LENGTHS = (1, 5, 9, 17)
PROMPT_VOCAB = 400
PROMPT_SEED = 1234
NEW_TOKENS = 64
NEAR_TIE = 1e-3

# ---------------------------------------------------------------------------
# Chat templates
# ---------------------------------------------------------------------------

# Qwen2.5-Instruct (Qwen/Qwen2.5-*-Instruct tokenizer_config.json "chat_template").
QWEN25_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    "{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
    "            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

# Meta-Llama-3-8B-Instruct (one line in the hub's tokenizer_config.json).
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

CONVERSATIONS = [
    ("single_user", [{"role": "user", "content": "What is 2 + 3?"}]),
    ("system_user", [
        {"role": "system", "content": "You are a terse math tutor."},
        {"role": "user", "content": "Compute 12*7."},
    ]),
    ("multi_turn", [
        {"role": "user", "content": "Let x be a real number such that 3x + 7 = 22."},
        {"role": "assistant", "content": "Subtracting 7 gives 3x = 15, so x = 5."},
        {"role": "user", "content": "Check it, and put the answer in \\boxed{}."},
    ]),
    ("system_multi_turn", [
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": "Who built the mill?"},
        {"role": "assistant", "content": "Nobody remembers."},
        {"role": "user", "content": "Why not?"},
    ]),
    ("whitespace", [
        {"role": "user", "content": "  \n\tleading and trailing whitespace  \n\n"},
    ]),
    ("whitespace_multi_turn", [
        {"role": "system", "content": "\n  system with spaces  "},
        {"role": "user", "content": " hi "},
        {"role": "assistant", "content": "\n\nanswer\n"},
        {"role": "user", "content": "again\n"},
    ]),
    ("unicode", [
        {"role": "user", "content": "Ünïcödé: 数学 ∑_{k=1}^{n} k = n(n+1)/2 — ok? 🙂 café naïve Ω≈π"},
    ]),
    ("empty_user", [{"role": "user", "content": ""}]),
]


def chat_folders(out: str, fixtures: str) -> dict:
    """Write chat_qwen/ and chat_llama3/; return {dir name: folder}."""
    qdir = os.path.join(out, "chat_qwen")
    ldir = os.path.join(out, "chat_llama3")
    for d in (qdir, ldir):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)

    shutil.copyfile(os.path.join(fixtures, "qwen2", "tokenizer.json"), os.path.join(qdir, "tokenizer.json"))
    with open(os.path.join(fixtures, "qwen2", "tokenizer_config.json")) as f:
        qcfg = json.load(f)
    qcfg["chat_template"] = QWEN25_TEMPLATE
    mf.write_json(os.path.join(qdir, "tokenizer_config.json"), qcfg)

    shutil.copyfile(os.path.join(fixtures, "llama", "tokenizer.json"), os.path.join(ldir, "tokenizer.json"))
    with open(os.path.join(ldir, "chat_template.jinja"), "w", encoding="utf-8") as f:
        f.write(LLAMA3_TEMPLATE)
    lcfg = {
        "backend": "tokenizers",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "model_max_length": 512,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    mf.write_json(os.path.join(ldir, "tokenizer_config.json"), lcfg)
    return {"chat_qwen": qdir, "chat_llama3": ldir}


def plain_jinja(template: str, messages, bos_token: str | None) -> str:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    kw = {"messages": messages, "add_generation_prompt": True, "tools": None}
    if bos_token is not None:
        kw["bos_token"] = bos_token
    return env.from_string(template).render(**kw)


def make_chat(out: str, fixtures: str) -> list:
    folders = chat_folders(out, fixtures)
    entries = []
    for name, folder in folders.items():
        tok = AutoTokenizer.from_pretrained(folder)
        tmpl = QWEN25_TEMPLATE if name == "chat_qwen" else LLAMA3_TEMPLATE
        assert tok.chat_template == tmpl, f"{name}: AutoTokenizer did not pick up the template"
        bos = tok.bos_token
        if name == "chat_llama3":
            assert bos == "<|begin_of_text|>", bos
        for _, messages in CONVERSATIONS:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            assert isinstance(text, str)
            again = plain_jinja(tmpl, messages, bos)
            assert text == again, (name, messages, text, again)
            entries.append({"template_dir": name, "messages": messages, "text": text})
        # Sanity of the two templates' shapes.
        first = [e["text"] for e in entries if e["template_dir"] == name][0]
        if name == "chat_qwen":
            assert first == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                             "assistant.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
                             "<|im_start|>assistant\n"), first
        else:
            assert first == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2 + 3?"
                             "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"), first
        # The tools branch renders (not stored: the brief's cases are plain chats).
        tool = {"type": "function", "function": {"name": "add", "description": "add two ints",
                                                 "parameters": {"type": "object", "properties": {}}}}
        if name == "chat_qwen":
            t = tok.apply_chat_template(CONVERSATIONS[0][1], tools=[tool], tokenize=False,
                                        add_generation_prompt=True)
            assert "# Tools" in t and '"name": "add"' in t, t
    return entries


# ---------------------------------------------------------------------------
# Greedy
# ---------------------------------------------------------------------------


def make_prompts() -> list:
    g = torch.Generator().manual_seed(PROMPT_SEED)
    return [torch.randint(0, PROMPT_VOCAB, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]


@torch.no_grad()
def generate_f32(model, prompt: list) -> list:
    ids = torch.tensor([prompt], dtype=torch.int64)
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        eos_token_id=None,
        pad_token_id=0,
        output_scores=True,
        return_dict_in_generate=True,
    )
    seq = out.sequences[0, len(prompt):].tolist()
    assert len(seq) == NEW_TOKENS, len(seq)
    assert out.sequences[0, :len(prompt)].tolist() == prompt
    for s in out.scores:
        assert torch.isfinite(s).all(), "generate masked some logits (EOS?)"
    return seq


@torch.no_grad()
def greedy_loop(model, prompt: list):
    ids = list(prompt)
    toks, gaps, lps = [], [], []
    for _ in range(NEW_TOKENS):
        x = torch.tensor([ids], dtype=torch.int64)
        z = model(input_ids=x, use_cache=False).logits[0, -1]
        top = torch.topk(z, 2)
        t = int(top.indices[0])
        assert t == int(torch.argmax(z))
        toks.append(t)
        gaps.append(float(top.values[0] - top.values[1]))
        lps.append(float(torch.log_softmax(z, dim=-1)[t]))
        ids.append(t)
    return toks, gaps, lps


def first_mismatch(a: list, b: list):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None


def make_greedy(fixtures: str, prompts: list):
    entries, summary = [], []
    for name in MODELS:
        d = os.path.join(fixtures, name)
        m32 = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
        m64 = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
        m64 = m64.double().eval()
        mf.attach_f64_rope(m64)
        for p in prompts:
            t32 = generate_f32(m32, p)
            t64, gap, lp = greedy_loop(m64, p)
            assert all(x.dtype == torch.float64 for x in m64.parameters())
            mm = first_mismatch(t32, t64)
            # Near-tie index in the f64 reference (the comparison stops there).
            tie = next((i for i, g in enumerate(gap) if g < NEAR_TIE), None)
            # A plain f32 loop must agree with generate (at least until a near-tie).
            own32, _, _ = greedy_loop(m32, p)
            mm_own = first_mismatch(own32, t32)
            assert mm_own is None or (tie is not None and mm_own >= tie), (name, p, mm_own, tie)
            if mm is not None:
                assert tie is not None and mm >= tie, f"{name}: f32/f64 differ at {mm} with no near-tie before"
            entries.append({"model": name, "prompt": p, "tokens_f32": t32, "tokens_f64": t64,
                            "gap": gap, "logprob": lp})
            summary.append({"model": name, "prompt_len": len(p), "first_mismatch_f32_f64": mm,
                            "first_near_tie": tie, "min_gap": min(gap),
                            "min_gap_at": gap.index(min(gap))})
            print(f"  {name:6s} L={len(p):2d}  f32==f64: {'all 64' if mm is None else f'differ at {mm}'}"
                  f"  min gap {min(gap):.3e} (step {gap.index(min(gap))})"
                  f"  first gap<1e-3: {tie}")
    return entries, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join("tests", "fixtures", "rollout"))
    ap.add_argument("--fixtures", default=os.path.join("tests", "fixtures"),
                    help="folder holding llama/ qwen2/ qwen3/ (read only)")
    args = ap.parse_args()

    for k, v in mf.PINNED.items():
        have = {"torch": torch.__version__, "transformers": transformers.__version__}[k]
        if not have.startswith(v):
            print(f"warning: fixtures were pinned with {k} {v}, running {have}", file=sys.stderr)

    torch.set_num_threads(1)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    mf.install_f64_patches()
    os.makedirs(args.out, exist_ok=True)

    prompts = make_prompts()
    print("greedy:")
    greedy, summary = make_greedy(args.fixtures, prompts)
    with open(os.path.join(args.out, "greedy.json"), "w") as f:
        json.dump(greedy, f)
        f.write("\n")

    print("chat:")
    chat = make_chat(args.out, args.fixtures)
    with open(os.path.join(args.out, "chat.json"), "w", encoding="utf-8") as f:
        json.dump(chat, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"  {len(chat)} rendered conversations")

    manifest = {
        "generator": "tools/make_rollout_fixtures.py",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "jinja2": jinja2.__version__,
        },
        "greedy": {
            "prompt_seed": PROMPT_SEED,
            "prompt_lengths": list(PROMPT_LENGTHS),
            "prompt_vocab": PROMPT_VOCAB,
            "new_tokens": NEW_TOKENS,
            "near_tie": NEAR_TIE,
            "precision_f64": "float64 (RMSNorm, rope and eager softmax kept in float64; see make_fixtures.py)",
            "entries": summary,
        },
        "chat": {"conversations": [n for n, _ in CONVERSATIONS], "template_dirs": ["chat_qwen", "chat_llama3"]},
    }
    mf.write_json(os.path.join(args.out, "manifest.json"), manifest)

    for root, _, files in sorted(os.walk(args.out)):
        for fn in sorted(files):
            p = os.path.join(root, fn)
            print(f"  {os.path.relpath(p, args.out):36s} {os.path.getsize(p):>8d}  {mf.sha(p)}")


if __name__ == "__main__":
    main()
