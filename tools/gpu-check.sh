#!/usr/bin/env bash
# The GPU check of DESIGN.md §7, in two halves, so that nothing compiles on
# the (scarce) GPU machine:
#
#   tools/gpu-check.sh bundle [DIR]   on any x86-64 machine (no GPU): builds
#       `engine` and the one CUDA test binary (tests/cuda) with
#       --features cuda, strips them, and packs them with the ptxas report into
#       DIR (default gpu-bundle/, ignored by git). Carry DIR to the GPU machine.
#   tools/gpu-check.sh run [DIR] [OUT] [--no-bench] [--no-torch] [--no-train]
#       on the GPU machine: finds the driver (and cuBLASLt) libraries, runs
#       every CUDA test with ENGINE_REQUIRE_CUDA=1, then the kernel benchmarks
#       (cuda-tests --ignored bench_kernels, tests/cuda/bench.rs) into
#       OUT/bench.jsonl, then the same ops in PyTorch
#       (tools/gpu_bench_torch.py) into OUT/torch.jsonl, then one training
#       step, `generate` and the lm_head + loss path of a Qwen2-0.5B-shaped
#       model in the engine (cuda-tests --ignored bench_train_step, then
#       bench_generate, then bench_lm_head, each under its own timeout) into
#       OUT/train.jsonl and in HF transformers
#       (tools/gpu_bench_train_torch.py) into OUT/train_torch.jsonl; writes
#       OUT/report.md and OUT/report.json after each section, and prints a
#       short table last. Every section runs under a timeout; the whole run
#       ends within 4 minutes (GPU_CHECK_BUDGET_S, default 225 s, plus up to
#       5 s). ENGINE_BENCH_SKIP=attention,gemm,... skips benchmark sections in
#       both; "train" in it skips the train-step section, as --no-train does
#       (--no-torch skips only the PyTorch kernel benchmarks).
#   tools/gpu-check.sh report [DIR] [OUT]   rewrites OUT/report.md and
#       OUT/report.json from the files a run left in OUT; runs nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cmd="${1:-}"

bundle() {
  local dir="${1:-$ROOT/gpu-bundle}"
  cd "$ROOT"
  # shellcheck disable=SC1091
  source tools/setup-cuda.sh >/dev/null
  cargo build --release --features cuda --bin engine
  local test_bin
  test_bin="$(cargo test --release --features cuda --test cuda --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "cuda" and m.get("executable"):
        print(m["executable"])')"
  [[ -x "$test_bin" ]] || { echo "gpu-check: the CUDA test binary was not built" >&2; exit 1; }
  rm -rf "$dir"
  mkdir -p "$dir/bin"
  cp target/release/engine "$dir/bin/engine"
  cp "$test_bin" "$dir/bin/cuda-tests"
  # The PyTorch side of the benchmarks (run prefers the tree's copy).
  cp tools/gpu_bench_torch.py "$dir/gpu_bench_torch.py"
  cp tools/gpu_bench_train_torch.py "$dir/gpu_bench_train_torch.py"
  strip "$dir/bin/engine" "$dir/bin/cuda-tests"
  # Compressed: the bundle and the source tree travel together under 64 MiB,
  # and every fatbin is in both binaries. `run` unpacks them.
  gzip -9 "$dir/bin/engine" "$dir/bin/cuda-tests"
  local report
  report="$(ls -t target/release/build/engine-*/out/ptxas-report.txt | head -1)"
  cp "$report" "$dir/ptxas-report.txt"
  git rev-parse HEAD > "$dir/commit" 2>/dev/null || echo unknown > "$dir/commit"
  du -sh "$dir"
  echo "bundle: $dir (carry it to the GPU machine; then: tools/gpu-check.sh run $dir OUT)"
}

# Folders holding libcuda / libcublasLt on a GPU machine, for LD_LIBRARY_PATH.
lib_dirs() {
  local d
  for lib in libcuda.so.1 libcublasLt.so; do
    d="$(ldconfig -p 2>/dev/null | awk -v l="$lib" '$1 ~ "^"l {print $NF; exit}')"
    [[ -n "$d" ]] && dirname "$d"
  done
  [[ -d /usr/local/cuda/lib64 ]] && echo /usr/local/cuda/lib64
  timeout 30 python3 - <<'PY' 2>/dev/null || true
import glob, os
try:
    import torch
    base = os.path.dirname(os.path.dirname(torch.__file__))
    for d in sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib")) + glob.glob(os.path.join(base, "nvidia", "*", "*", "lib"))):
        print(d)
except Exception:
    pass
PY
}

# Writes OUT/report.json and OUT/report.md from what the sections left in OUT
# (tests.log, sections.tsv, bench.jsonl / bench.log, torch.jsonl / torch.log,
# train.jsonl / train.log, train_torch.jsonl / train_torch.log);
# run after every section, so a run cut short still reports what it found.
# $1: what to print (tests: the tests table; final: the short summary and the
# benchmark table; none).
write_report() {
  python3 - "$1" "$out" "$dir" "$card" "$cuda_ver" "$LD_LIBRARY_PATH" "$((SECONDS - start))" <<'PY' || echo "gpu-check: the report writer failed" >&2
import datetime, json, math, os, re, sys
show, out, bundle, card, cuda, ldpath, secs = sys.argv[1:]

def read(name):
    try:
        return open(os.path.join(out, name), errors="replace").read()
    except OSError:
        return None

def jsonl(name):
    rows, text = [], read(name) or ""
    for line in text.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue  # a line cut short by a timeout
        if isinstance(r, dict) and "kernel" in r:
            rows.append(r)
    return rows

if os.environ.get("GPU_CHECK_REREPORT") == "1":
    # `gpu-check.sh report`: what the run found about the machine, from its report.json.
    try:
        old = json.load(open(f"{out}/report.json"))
        card, cuda, ldpath, secs = old.get("card", ""), old.get("cuda", ""), old.get("ld_library_path", ""), old.get("seconds", 0)
    except (OSError, ValueError):
        pass
card, cuda = card or "not found (nvidia-smi)", cuda or "CUDA version: not found (nvidia-smi)"
log = read("tests.log") or ""
tests = [{"test": m.group(1), "result": m.group(2)} for m in re.finditer(r"^test (\S+) \.\.\. (ok|FAILED|ignored)", log, re.M)]
# Section 1a: the failed (or unreported) tests rerun alone, each in its own process.
alone_log = read("tests_alone.log") or ""
alone = dict(re.findall(r"^test (\S+) \.\.\. (ok|FAILED|ignored)", alone_log, re.M))
seen_tests = {t["test"] for t in tests}
tests += [{"test": n, "result": "not reported"} for n in alone if n not in seen_tests]
for t in tests:
    t["alone"] = alone.get(t["test"], "")
printed = [l for l in log.splitlines() if not l.startswith("test ") and l.strip() and not l.startswith("running")]
try:
    commit = open(f"{bundle}/commit").read().strip()
except OSError:
    commit = "unknown"
sections = []
for line in (read("sections.tsv") or "").splitlines():
    f = line.split("\t")
    if len(f) >= 3:
        sections.append({"section": f[0], "status": f[1], "seconds": int(f[2]) if f[2].isdigit() else f[2], "note": f[3] if len(f) > 3 else ""})

eng_all, tor_all = jsonl("bench.jsonl"), jsonl("torch.jsonl")
eng = [r for r in eng_all if "error" not in r and "ms" in r]
tor = [r for r in tor_all if "error" not in r and "ms" in r]
errors = [dict(r, source=r.get("source", s)) for s, rs in (("engine", eng_all), ("torch", tor_all)) for r in rs if "error" in r]
meta = next((r for r in tor_all if r["kernel"] == "_meta"), None)
bench_log, torch_log = read("bench.log"), read("torch.log")
notes = []
for name, text in (("engine benchmark", bench_log), ("PyTorch benchmark", torch_log)):
    for l in (text or "").splitlines():
        m = re.search(r"skip (bench_kernels|gpu_bench_torch): .*", l)
        if m:
            notes.append(f"{name}: {m.group(0).strip()}")
            break

def copy_bw(rows):
    return next((r["gb_s"] for r in rows if r["kernel"] == "copy_dtod" and "gb_s" in r), None)

by_torch = {r["kernel"]: r for r in tor}
table = []
for r in eng:
    t = by_torch.get(r["kernel"])
    table.append({
        "kernel": r["kernel"], "shape": r.get("shape"), "ms": r["ms"], "gb_s": r.get("gb_s"), "tflops": r.get("tflops"),
        "copy_fraction": r.get("copy_fraction"), "syncs": r.get("syncs"), "host_ms": r.get("host_ms"),
        "torch_ms": t["ms"] if t else None, "torch_impl": t.get("impl") if t else None,
        # > 1: the engine is faster than PyTorch.
        "torch_over_engine": (t["ms"] / r["ms"]) if t and r["ms"] > 0 else None,
    })
seen = {r["kernel"] for r in eng}
torch_only = [r for r in tor if r["kernel"] not in seen]

bench = {
    "engine": eng, "torch": tor, "errors": errors, "notes": notes,
    "copy_gb_s": {"engine": copy_bw(eng), "torch": copy_bw(tor)},
    "torch_version": meta and meta.get("torch"), "torch_cuda": meta and meta.get("cuda"),
    "table": table, "torch_only": torch_only,
}
# The train step (SFT, GRPO update): the engine's rows and each PyTorch variant's.
PEAK_TFLOPS = 989.4  # H100/H200 SXM dense bf16, as both sides count MFU
tr_eng_all, tr_tor_all = jsonl("train.jsonl"), jsonl("train_torch.jsonl")
tr_meta = next((r for r in tr_tor_all if r["kernel"] == "_meta"), None)

def tr_ok(r):
    return "error" not in r and isinstance(r.get("ms"), (int, float)) and r["ms"] > 0 and not str(r["kernel"]).startswith("_")

def tr_fill(r):
    # Whatever a side left out and can be worked out from what it wrote.
    r = dict(r)
    ms = r["ms"]
    if r.get("tokens_per_s") is None and r.get("tokens"):
        r["tokens_per_s"] = r["tokens"] / (ms * 1e-3)
    if r.get("tflops") is None and r.get("flops"):
        r["tflops"] = r["flops"] / (ms * 1e-3) / 1e12
    if r.get("mfu") is None and r.get("tflops") is not None:
        r["mfu"] = r["tflops"] / PEAK_TFLOPS
    return r

tr_eng = [tr_fill(r) for r in tr_eng_all if tr_ok(r)]
tr_tor = [tr_fill(r) for r in tr_tor_all if tr_ok(r)]
tr_errors = [dict(r, source=r.get("source", s)) for s, rs in (("engine", tr_eng_all), ("torch", tr_tor_all)) for r in rs if "error" in r]
train_log, train_torch_log = read("train.log"), read("train_torch.log")
tr_notes = []
# train.log: each benchmark's output after a "== name (limit N s)" line.
for m in re.finditer(r"^== (\S+) .*?(?=^== |\Z)", train_log or "", re.M | re.S):
    if re.search(r"^running 0 tests", m.group(0), re.M):
        tr_notes.append(f"engine: cuda-tests has no test {m.group(1)} (not measured)")
for name, text, pat in (("engine", train_log, r"skip bench_train_step: .*"), ("PyTorch", train_torch_log, r"skip gpu_bench_train_torch: .*")):
    m = re.search(pat, text or "")
    if m:
        tr_notes.append(f"{name}: {m.group(0).strip()}")
tr_table = []
for k in dict.fromkeys(r["kernel"] for r in tr_eng + tr_tor):
    engs = [r for r in tr_eng if r["kernel"] == k]
    for r in engs:
        tr_table.append(dict(r, side="engine", torch_over_engine=None, vs_shape=None))
    for r in (r for r in tr_tor if r["kernel"] == k):
        # The engine's row of the same shape, else its only row for that step (its shape then noted).
        base = next((e for e in engs if e.get("shape") == r.get("shape")), engs[0] if len(engs) == 1 else None)
        tr_table.append(dict(r, side="torch", torch_over_engine=r["ms"] / base["ms"] if base else None,
                             vs_shape=base.get("shape") if base and base.get("shape") != r.get("shape") else None))
train = {"engine": tr_eng, "torch": tr_tor, "errors": tr_errors, "notes": tr_notes, "table": tr_table,
         "peak_tflops": PEAK_TFLOPS, "torch_version": tr_meta and tr_meta.get("torch"),
         "transformers_version": tr_meta and tr_meta.get("transformers")}

rep = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
       "card": card, "cuda": cuda, "commit": commit, "ld_library_path": ldpath, "seconds": int(secs),
       "sections": sections, "tests": tests,
       "passed": sum(t["result"] == "ok" for t in tests), "failed": sum(t["result"] == "FAILED" for t in tests),
       "benchmarks": bench, "train": train}
tmp = f"{out}/report.json.tmp"
json.dump(rep, open(tmp, "w"), indent=2)
os.replace(tmp, f"{out}/report.json")

def num(x, fmt):
    return "-" if x is None else format(x, fmt)

def rate(r):
    if r.get("gb_s") is not None:
        return f"{r['gb_s']:.0f} GB/s"
    if r.get("tflops") is not None:
        return f"{r['tflops']:.1f} TFLOP/s"
    return "-"

def pct(x):
    return "-" if x is None else f"{100 * x:.0f}%"

def flag(r):
    if r.get("syncs"):
        return "waits"
    if r.get("host_ms") is not None and r["ms"] > 0 and r["host_ms"] >= 0.9 * r["ms"]:
        return "launch-bound?"
    return ""

md = [f"# GPU check {rep['date']}", "", f"- card: {card}", f"- {cuda}", f"- commit: {commit}",
      f"- libraries from: {ldpath}", f"- {rep['seconds']} s"]
if meta:
    md.append(f"- PyTorch {meta.get('torch')} (CUDA {meta.get('cuda')})")
md += ["", "## Sections", "", "| section | status | seconds | note |", "|---|---|---|---|"]
md += [f"| {s['section']} | {s['status']} | {s['seconds']} | {s['note']} |" for s in sections]
md += ["", "## Tests", "", "`alone`: a test that failed (or never reported: its process died) rerun by itself in a "
       "process of its own; ok alone means it failed as the collateral of an earlier test that broke the CUDA context.",
       "", "| test | result | alone |", "|---|---|---|"]
md += [f"| {t['test']} | {t['result']} | {t['alone']} |" for t in tests]
md += ["", f"{rep['passed']} passed, {rep['failed']} failed", ""]
md += ["## Benchmarks", ""]
cb = bench["copy_gb_s"]
md += [f"Copy bandwidth (1 GiB device-to-device, read + write): engine {num(cb['engine'], '.0f')} GB/s, "
       f"PyTorch {num(cb['torch'], '.0f')} GB/s. Memory-bound kernels count each buffer's reads and writes once; "
       "`% copy` is that rate over the engine's measured copy rate. `torch / engine` is PyTorch's time over the "
       "engine's (above 1: the engine is faster). `waits`: the call waits for the stream (its time includes the host's "
       "part); `launch-bound?`: issuing one call took the host about as long as the GPU took to run it.", ""]
if notes:
    md += [f"- {n}" for n in notes] + [""]
if table:
    md += ["| kernel | shape | ms | rate | % copy | torch ms | torch / engine | note |", "|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['kernel']} | {r['shape']} | {r['ms']:.4f} | {rate(r)} | {pct(r['copy_fraction'])} | "
           f"{num(r['torch_ms'], '.4f')} | {num(r['torch_over_engine'], '.2f')} | {flag(r)} |" for r in table]
else:
    md += ["No engine benchmark results."]
if torch_only:
    md += ["", "PyTorch only (no engine kernel of that name):", "", "| kernel | shape | ms | rate | % copy | impl |", "|---|---|---|---|---|---|"]
    md += [f"| {r['kernel']} | {r.get('shape')} | {r['ms']:.4f} | {rate(r)} | {pct(r.get('copy_fraction'))} | {r.get('impl', '')} |" for r in torch_only]
if tor:
    md += ["", "PyTorch implementations: " + "; ".join(f"{r['kernel']}: {r.get('impl', '')}" for r in tor if r["kernel"] in seen)]
if errors:
    md += ["", "### Errors", ""] + [f"- {e['source']}: {e['kernel']}: {e['error']}" for e in errors]

# Attention: every engine variant against PyTorch's FLASH, cuDNN and
# EFFICIENT backends, per shape and direction (engine rows
# `attention_{fwd,bwd}[_variant][suffix]`, PyTorch rows
# `attention_{fwd,bwd}[suffix][backend]`, matched by shape), so the
# dispatch's choice (FLASH_VARIANT, the Hopper forward) can be read off.
TORCH_BACKENDS = ("flash", "cudnn", "efficient")
att = {}
for r in eng:
    k = r["kernel"]
    for d in ("fwd", "bwd"):
        if k.startswith(f"attention_{d}") and r.get("tflops") is not None:
            rest = k[len(f"attention_{d}"):]
            variant = next((v for v in ("_fused", "_wgmma", "_ws") if rest.startswith(v)), "")
            att.setdefault((r["shape"], d), {})[variant.strip("_") or "dispatch"] = r["tflops"]
for r in tor:
    k = r["kernel"]
    for d in ("fwd", "bwd"):
        for b in TORCH_BACKENDS:
            if k.startswith(f"attention_{d}") and k.endswith(f"[{b}]") and r.get("tflops") is not None:
                att.setdefault((r["shape"], d), {})[f"torch {b}"] = r["tflops"]
if att:
    md += ["", "### Attention variants", "",
           "TFLOP/s of each engine kernel (`dispatch`: what `attention_fwd`/`attention_bwd` ran; `fused`: the one-pass "
           "mma.sync backward; `wgmma`: the Hopper kernels; `ws`: the warp-specialised Hopper kernels) and of PyTorch's "
           "FLASH, cuDNN and EFFICIENT backends, and the ratio of each to FLASH and to cuDNN. Targets: mma.sync ≥ 0.9× "
           "FLASH, the Hopper path ≥ cuDNN.", "", "| shape | dir | variant | TFLOP/s | / FLASH | / cuDNN |",
           "|---|---|---|---|---|---|"]
    for (shape, d), v in sorted(att.items(), key=lambda x: (x[0][1], x[0][0])):
        fl, cd = v.get("torch flash"), v.get("torch cudnn")
        for name, t in sorted(v.items(), key=lambda x: -x[1]):
            md.append(f"| {shape} | {d} | {name} | {t:.0f} | {num(t / fl if fl else None, '.2f')} | "
                      f"{num(t / cd if cd else None, '.2f')} |")
    # The dispatch's choice at a glance: per direction, each variant (and
    # each PyTorch backend) against the dispatch's row, as the geometric mean
    # of the ratio over the shapes both have (the
    # Hopper kernels only on 9.0), with the count of shapes; no shape is
    # dropped for a variant that lacks it. The tests say which are correct:
    # a failed one is not a candidate.
    for d in ("fwd", "bwd"):
        rows = [v for (shape, dd), v in att.items() if dd == d]
        names = sorted({n for v in rows for n in v if n != "dispatch"})
        ranked = []
        for n in names:
            both = [v for v in rows if n in v and "dispatch" in v and v[n] > 0 and v["dispatch"] > 0]
            if both:
                ranked.append((math.exp(sum(math.log(v[n] / v["dispatch"]) for v in both) / len(both)), n, len(both)))
        if ranked:
            md.append(f"\n{d}: each against the dispatch's row on the shapes both have (geometric mean of the ratio; "
                      f"the dispatch has {sum('dispatch' in v for v in rows)} shapes): "
                      + ", ".join(f"{n} {g:.2f}× ({c} shape{'s' if c != 1 else ''})" for g, n, c in sorted(ranked, reverse=True)) + ".")

def kilo(x):
    return "-" if x is None else f"{x / 1e3:.1f}k"

md += ["", "## Train step", "",
       "One training step of a Qwen2-0.5B-shaped model (hidden 896, 24 layers, 14 query / 2 KV heads of 64, "
       "intermediate 4864, vocab 151936, tied embeddings, q/k/v biases), random weights, 16 sequences × 1024 random "
       "tokens, causal. `train_sft_step`: forward, masked mean cross-entropy, backward, grad-norm clip 1.0, AdamW; "
       "`train_grpo_update`: a no-grad forward for the old log-probs, then forward, PPO-clip loss (ε 0.2), backward, "
       "clip, AdamW. FLOPs: SFT tokens·(6·N_mm + 6·L·q·S), GRPO tokens·(8·N_mm + 8·L·q·S), with "
       "N_mm = L·(d·q + 2·d·kv + q·d + 3·d·i) + V·d; MFU = TFLOP/s / 989.4 (H100/H200 SXM dense bf16). "
       "`ms`: wall time per step after warm-up; `peak GiB`: the most device memory allocated over the steps "
       "(PyTorch: `torch.cuda.max_memory_allocated`). `torch / engine`: PyTorch's time over the engine's "
       "(above 1: the engine is faster)."
       + (f" PyTorch {tr_meta.get('torch')}, transformers {tr_meta.get('transformers')}." if tr_meta else ""), ""]
if tr_notes:
    md += [f"- {n}" for n in tr_notes] + [""]
if tr_table:
    md += ["| step | shape | side | impl | ms | tokens/s | TFLOP/s | MFU | peak GiB | torch / engine |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['kernel']} | {r.get('shape')} | {r['side']} | {r.get('impl', '')} | {r['ms']:.1f} | {kilo(r.get('tokens_per_s'))} | "
           f"{num(r.get('tflops'), '.1f')} | {pct(r.get('mfu'))} | {num(r.get('peak_mem_gib'), '.1f')} | "
           f"{num(r['torch_over_engine'], '.2f')}{' (engine: ' + r['vs_shape'] + ')' if r['vs_shape'] else ''} |" for r in tr_table]
    gen = [r for r in tr_table if r.get("decode_step_ms") is not None]
    if gen:
        md += ["", "`generate_b64`: 64 prompts × 128 random tokens, 256 new tokens each (no EOS), temperature 1; "
               "`generate_g8`: the same 64 sequences as 8 prompts × 8 samples (the engine holds a prompt's keys and "
               "values once for its samples; `KV` its cache). "
               "`ms` the whole call, tokens/s the new tokens. Decode step = (time of 256 new − time of 1) / 255; "
               "the engine's bound is the bytes a step moves (bf16 weights, the KV cache at the mean length, the "
               "logits written and sampled) over the copy bandwidth it measured (target: within 1.5× of it)."]
        md += [f"- {r['kernel']} {r['side']}: decode step {r['decode_step_ms']:.2f} ms"
               + (f", bound {r['decode_bound_ms']:.2f} ms ({r['decode_over_bound']:.2f}× the bound, copy {r.get('copy_gb_s', 0):.0f} GB/s)"
                  if r.get("decode_bound_ms") else "")
               + (f", prefill + first token {r['prefill_and_first_ms']:.1f} ms" if r.get("prefill_and_first_ms") else "")
               + (f", KV {r['kv_cache_gib']:.2f} GiB" if r.get("kv_cache_gib") is not None else "")
               + (f"; a step in the loop {r['decode_step_in_loop_ms']:.2f} ms, of which the host issues its forward in "
                  f"{r['decode_forward_issue_ms']:.2f} ms (if close to the step, it is bound by launches)"
                  if r.get("decode_forward_issue_ms") is not None else "")
               for r in gen]
    heads = [r for r in tr_table if str(r["kernel"]).startswith("lm_head_")]
    if heads:
        md += ["", "`lm_head_*`: the lm_head + loss path at 16,384 tokens × 896 → 151,936; TFLOP/s counts the useful "
               "6·n·v·d (forward, dh, dW) for every row, so the two-phase path's recomputed logits count against it; "
               "the yardstick is `lm_head_plain_gemms`, the same three products over the whole logits (target: ≥ 85% "
               "of its rate)."]
        md += [f"- {r['kernel']}: {r['ms']:.2f} ms, {num(r.get('tflops'), '.0f')} TFLOP/s, "
               f"{pct(r.get('gemm_fraction'))} of the plain products' rate, device memory {num(r.get('peak_mem_gib'), '.2f')} GiB "
               f"measured (in use after its calls, above before), logits {num(r.get('logits_gib'), '.2f')} GiB computed"
               for r in heads]
    if not tr_eng:
        md += ["", "Engine: not measured."]
    if not tr_tor:
        md += ["", "PyTorch: not measured."]
else:
    md += ["No train-step results (not measured)."]
if tr_errors:
    md += ["", "### Train step errors", ""] + [f"- {e['source']}: {e['kernel']}{' (' + e['impl'] + ')' if e.get('impl') else ''}: {e['error']}" for e in tr_errors]
md += ["", "## What the tests printed", "", "```"] + printed[-200:] + ["```"]
for name, text in (("engine benchmark", bench_log), ("PyTorch benchmark", torch_log),
                   ("engine train step", train_log), ("PyTorch train step", train_torch_log)):
    if text is not None:
        md += ["", f"## What the {name} printed (last 80 lines)", "", "```"] + text.splitlines()[-80:] + ["```"]
tmp = f"{out}/report.md.tmp"
open(tmp, "w").write("\n".join(md) + "\n")
os.replace(tmp, f"{out}/report.md")

if show == "tests":
    print(f"\n{'test':60} result")
    for t in tests:
        print(f"{t['test']:60} {t['result']}")
    print(f"{rep['passed']} passed, {rep['failed']} failed")
elif show == "final":
    print(f"\n== GPU check: {card or 'no card found'}; {rep['seconds']} s; report in {out}/report.md")
    for s in sections:
        print(f"   {s['section']:11} {s['status']:10} {str(s['seconds']):>4} s  {s['note']}")
    failed = [t["test"] for t in tests if t["result"] == "FAILED"]
    print(f"   tests: {rep['passed']} passed, {rep['failed']} failed" + (f" ({', '.join(failed[:8])})" if failed else ""))
    still = [t["test"] for t in tests if t["alone"] == "FAILED"]
    if any(t["alone"] for t in tests):
        print(f"   rerun alone: {len(still)} still fail" + (f" ({', '.join(still[:8])})" if still else " (the others were collateral)"))
    for e in errors:
        print(f"   error: {e['source']}: {e['kernel']}: {str(e['error'])[:100]}")
    for e in tr_errors:
        print(f"   error: {e['source']}: {e['kernel']}{' (' + e['impl'] + ')' if e.get('impl') else ''}: {str(e['error'])[:100]}")
    for n in tr_notes:
        print(f"   {n}")
    if table or torch_only:
        print(f"   copy: engine {num(cb['engine'], '.0f')} GB/s, torch {num(cb['torch'], '.0f')} GB/s")
        print(f"\n{'kernel':22} {'ms':>9} {'rate':>14} {'%copy':>6} {'torch ms':>9} {'torch/eng':>9}")
        for r in table:
            print(f"{r['kernel']:22} {r['ms']:9.4f} {rate(r):>14} {pct(r['copy_fraction']):>6} "
                  f"{num(r['torch_ms'], '9.4f'):>9} {num(r['torch_over_engine'], '9.2f'):>9} {flag(r)}")
        for r in torch_only:
            print(f"{r['kernel']:22} {'-':>9} {'':>14} {'':>6} {r['ms']:9.4f} {'-':>9} {rate(r)}")
    else:
        print("   no benchmark results")
    if tr_table:
        print(f"\n{'train step':18} {'side':6} {'ms':>8} {'tok/s':>8} {'TFLOP/s':>7} {'MFU':>4} {'GiB':>5} {'torch/eng':>9}  impl")
        for r in tr_table:
            print(f"{r['kernel']:18} {r['side']:6} {r['ms']:8.1f} {kilo(r.get('tokens_per_s')):>8} {num(r.get('tflops'), '7.1f'):>7} "
                  f"{pct(r.get('mfu')):>4} {num(r.get('peak_mem_gib'), '5.1f'):>5} {num(r['torch_over_engine'], '9.2f'):>9}  {r.get('impl', '')}")
    else:
        print("   no train-step results")
PY
}

# Appends one line to OUT/sections.tsv: section, status, seconds, note.
section_done() {
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >>"$out/sections.tsv"
}

# The status of a section from its exit code.
status_of() {
  case "$1" in
    0) echo ok ;;
    124 | 137) echo timeout ;;
    *) echo "failed($1)" ;;
  esac
}

run() {
  local bench=1 torch=1 train=1 pos=()
  while (($#)); do
    case "$1" in
      --no-bench) bench=0 ;;
      --no-torch) torch=0 ;;
      --no-train) train=0 ;;
      -*) echo "gpu-check run: unknown flag $1 (flags: --no-bench --no-torch --no-train)" >&2; exit 2 ;;
      *) pos+=("$1") ;;
    esac
    shift
  done
  local train_why="--no-train"
  local skip_list="${ENGINE_BENCH_SKIP:-}"
  skip_list="${skip_list// /}"
  if [[ ",${skip_list,,}," == *",train,"* ]]; then
    train=0 train_why="ENGINE_BENCH_SKIP"
  fi
  dir="${pos[0]:-$ROOT/gpu-bundle}" out="${pos[1]:-$ROOT/gpu-report}"
  dir="$(cd "$dir" && pwd)"
  local gz
  for gz in "$dir"/bin/*.gz; do
    [[ -e "$gz" ]] && gunzip -f "$gz"
  done
  mkdir -p "$out"
  out="$(cd "$out" && pwd)"
  rm -f "$out/sections.tsv" "$out/tests_alone.log" "$out/bench.jsonl" "$out/torch.jsonl" "$out/bench.log" "$out/torch.log" \
    "$out/train.jsonl" "$out/train.log" "$out/train_torch.jsonl" "$out/train_torch.log"
  start=$SECONDS
  # The whole run ends within 4 minutes: every section gets what is left of
  # this budget, less what the later sections need at least, less the 5 s
  # that `timeout -k` may add. Typical times on an H100: tests 2 s, bench 5 s,
  # torch 14 s, the PyTorch train step about 30 s.
  local budget="${GPU_CHECK_BUDGET_S:-225}" min_bench=30 min_torch=30 min_train=25 min_train_torch=45
  ((bench)) || min_bench=0
  ((torch)) || min_torch=0
  ((train)) || min_train=0 min_train_torch=0
  LD_LIBRARY_PATH="$(lib_dirs | awk '!seen[$0]++' | paste -sd:)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LD_LIBRARY_PATH
  # The test binary was built elsewhere: point it at this tree's fixtures.
  export ENGINE_FIXTURES="${ENGINE_FIXTURES:-$ROOT/tests/fixtures}"
  card="$(timeout 15 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1 || true)"
  cuda_ver="$(timeout 15 nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*' | head -1 || true)"
  local t rc t0

  # Section 1: the CUDA tests, each kernel against the CPU reference.
  t=$((budget - (SECONDS - start) - min_bench - min_torch - min_train - min_train_torch - 5))
  t=$((t > 180 ? 180 : t))
  t0=$SECONDS rc=0
  if ((t >= 15)); then
    ENGINE_REQUIRE_CUDA=1 timeout -k 5 "$t" "$dir/bin/cuda-tests" --test-threads=1 --show-output >"$out/tests.log" 2>&1 || rc=$?
    section_done tests "$(status_of $rc)" $((SECONDS - t0)) "limit ${t} s"
  else
    : >"$out/tests.log"
    section_done tests "not run" 0 "no time left"
  fi
  write_report tests

  # Section 1a: every test that failed in that run, or never reported (the
  # process died), again alone in a process of its own (at most 60 s in
  # all). A kernel that breaks the CUDA context fails every later test of
  # its process; alone, those pass, and the report's `alone` column tells
  # the culprit from the collateral. If a Hopper test (wgmma, the
  # warp-specialised forward) still fails alone, the benchmarks skip the
  # Hopper rows ("hopper" in ENGINE_BENCH_SKIP), so that they cannot break
  # the other rows.
  : >"$out/tests_alone.log"
  t=$((budget - (SECONDS - start) - min_bench - min_torch - min_train - min_train_torch - 5))
  t=$((t > 60 ? 60 : t))
  t0=$SECONDS
  local redo=() name hopper_bad
  if ((t >= 10)) && [[ -s "$out/tests.log" ]]; then
    mapfile -t redo < <(timeout 30 python3 - "$out/tests.log" "$dir/bin/cuda-tests" <<'PY' 2>/dev/null
import re, subprocess, sys
done = dict(re.findall(r"^test (\S+) \.\.\. (ok|FAILED|ignored)", open(sys.argv[1]).read(), re.M))
listed = subprocess.run([sys.argv[2], "--list"], capture_output=True, text=True, timeout=20).stdout.splitlines()
for name in (l[: -len(": test")] for l in listed if l.endswith(": test")):
    if done.get(name) not in ("ok", "ignored"):
        print(name)
PY
    )
    local one="$out/tests_alone.one" left rc1
    hopper_bad=""
    for name in "${redo[@]}"; do
      left=$((t - (SECONDS - t0) - 2))
      ((left >= 5)) || break
      rc1=0
      ENGINE_REQUIRE_CUDA=1 timeout -k 2 $((left < 20 ? left : 20)) "$dir/bin/cuda-tests" \
        --exact "$name" --test-threads=1 --show-output >"$one" 2>&1 || rc1=$?
      # A test that hung or whose process died leaves no result: a failure.
      if ! grep -qE "^test $name \.\.\. (ok|FAILED|ignored)" "$one"; then
        printf '\ntest %s ... FAILED\n(no result: exit code %s, the test hung or its process died)\n' "$name" "$rc1" >>"$one"
      fi
      cat "$one" >>"$out/tests_alone.log"
      # A Hopper failure: a Hopper test, a panic message naming a Hopper
      # kernel (the flash tests loop over every variant), or a flash test
      # that died (the unmeasured Hopper kernels are the likeliest cause).
      if grep -qE "^test $name \.\.\. FAILED" "$one" &&
        { [[ "$name" =~ (wgmma|_ws_|hopper) ]] || sed -n '/panicked at/,$p' "$one" | grep -qE 'Hopper|wgmma|ws [fb]wd' ||
          { ((rc1 != 0 && rc1 != 101)) && [[ "$name" == *flash* ]]; }; }; then
        hopper_bad="${hopper_bad:-$name}"
      fi
    done
    rm -f "$one"
    if [[ -n "$hopper_bad" ]]; then
      export ENGINE_BENCH_SKIP="${ENGINE_BENCH_SKIP:+$ENGINE_BENCH_SKIP,}hopper"
    fi
    section_done alone ok $((SECONDS - t0)) "${#redo[@]} test(s) to rerun alone${hopper_bad:+; Hopper rows skipped in the benchmarks ($hopper_bad)}"
  else
    section_done alone "not run" 0 "nothing to rerun, or no time left"
  fi
  write_report tests

  # Section 1b: the engine binary itself on the GPU: `engine score --device
  # cuda` on the qwen2 fixture's scored sequences, against their float64
  # log-probabilities (the note gives the largest difference), `engine
  # generate` and `engine eval` (below). Its files
  # stay in a temporary folder: only the section line comes back.
  local cli_tmp
  cli_tmp="$(mktemp -d)"
  t0=$SECONDS rc=0
  python3 -c 'import json,sys
for l in json.load(open(sys.argv[1])): print(json.dumps({"tokens": l["tokens"]}))' \
    "$ENGINE_FIXTURES/qwen2.score.json" >"$cli_tmp/in.jsonl" 2>"$cli_tmp/log" || rc=$?
  ((rc == 0)) && { timeout -k 5 60 "$dir/bin/engine" score --model "$ENGINE_FIXTURES/qwen2" --input "$cli_tmp/in.jsonl" \
    --output "$cli_tmp/out.jsonl" --device cuda >>"$cli_tmp/log" 2>&1 || rc=$?; }
  local cli_note
  if ((rc == 0)); then
    cli_note="$(python3 -c 'import json,sys
want=[x for l in json.load(open(sys.argv[1])) for x in l["logprobs"]]
got=[x for l in open(sys.argv[2]) for x in json.loads(l)["logprobs"]]
assert len(got)==len(want), (len(got), len(want))
print("engine score --device cuda: %d log-probs, max |diff| vs float64 %.2e" % (len(got), max(abs(a-b) for a,b in zip(got,want))))' \
      "$ENGINE_FIXTURES/qwen2.score.json" "$cli_tmp/out.jsonl" 2>&1 | tail -1)"
  else
    cli_note="$(tail -1 "$cli_tmp/log" | tr '\t' ' ')"
  fi
  # `engine generate --device cuda`, greedy, 2 prompts × 4 samples (the
  # prompt's keys shared), against the same command on the CPU: how many
  # samples have the CPU's tokens (bf16 may break a near-tie, so this is a
  # count, not a pass/fail).
  if ((rc == 0)); then
    printf '%s\n' '{"prompt": "What is 2 plus 3?"}' '{"prompt": "Count: one, two,"}' >"$cli_tmp/prompts.jsonl"
    for d in cpu cuda; do
      timeout -k 5 60 "$dir/bin/engine" generate --model "$ENGINE_FIXTURES/qwen3" --prompts "$cli_tmp/prompts.jsonl" \
        --output "$cli_tmp/gen_$d.jsonl" --n 4 --max-new-tokens 32 --temperature 0 --device "$d" >>"$cli_tmp/log" 2>&1 || rc=$?
    done
    if ((rc == 0)); then
      cli_note="$cli_note; $(python3 -c 'import json,sys
a=[json.loads(l)["tokens"] for l in open(sys.argv[1])]
b=[json.loads(l)["tokens"] for l in open(sys.argv[2])]
print("engine generate --device cuda: %d of %d greedy samples equal to the CPU'"'"'s" % (sum(x==y for x,y in zip(a,b)), len(b)))' \
        "$cli_tmp/gen_cpu.jsonl" "$cli_tmp/gen_cuda.jsonl" 2>&1 | tail -1)"
    else
      cli_note="$cli_note; generate: $(tail -1 "$cli_tmp/log" | tr '\t' ' ')"
    fi
  fi
  # `engine eval --device cuda`: 3 math problems × 4 greedy samples of up to
  # 24 tokens on the qwen3 fixture (random weights: the answers are wrong;
  # what is checked is that it runs and writes a whole report), under its
  # own timeout, whatever score and generate did.
  local eval_rc=0
  printf '%s\n' '{"prompt": "What is 2 + 3?", "answer": "5"}' '{"prompt": "12*7 =", "answer": 84}' \
    '{"prompt": "Half of 10 is", "answer": "5"}' >"$cli_tmp/eval.jsonl"
  timeout -k 5 30 "$dir/bin/engine" eval --model "$ENGINE_FIXTURES/qwen3" --data "$cli_tmp/eval.jsonl" \
    --output "$cli_tmp/eval_cuda.json" --n 4 --k 2 --max-new-tokens 24 --temperature 0 --device cuda \
    >>"$cli_tmp/log" 2>&1 || eval_rc=$?
  if ((eval_rc == 0)); then
    local eval_note
    eval_note="$(python3 -c 'import json,sys
r=json.load(open(sys.argv[1]))
assert (r["prompts"], r["n"], r["k"]) == (3, 4, 2), (r["prompts"], r["n"], r["k"])
assert all(len(l["answers"]) == 4 for l in r["per_line"]), "a line without its 4 answers"
print("engine eval --device cuda: %d prompts x %d, pass@1 %.2f, pass@2 %.2f, maj@2 %.2f" % (r["prompts"], r["n"], r["pass@1"], r["pass@2"], r["maj@2"]))' \
      "$cli_tmp/eval_cuda.json" 2>&1)" || eval_rc=1
    cli_note="$cli_note; $(tail -1 <<<"$eval_note")"
  else
    cli_note="$cli_note; eval: $(status_of $eval_rc): $(tail -1 "$cli_tmp/log" | tr '\t' ' ')"
  fi
  ((rc != 0)) || rc=$eval_rc
  section_done cli "$(status_of $rc)" $((SECONDS - t0)) "$cli_note"
  rm -rf "$cli_tmp"
  write_report tests

  # Section 2: the kernel benchmarks (tests/cuda/bench.rs).
  if ((bench)); then
    t=$((budget - (SECONDS - start) - min_torch - min_train - min_train_torch - 5))
    t=$((t > 90 ? 90 : t))
    t0=$SECONDS rc=0
    if ((t >= 15)); then
      echo "gpu-check: kernel benchmarks (limit ${t} s)"
      ENGINE_BENCH_OUT="$out/bench.jsonl" ENGINE_BENCH_BUDGET_S="$((t > 45 ? t - 30 : t / 2))" \
        timeout -k 5 "$t" "$dir/bin/cuda-tests" --ignored bench_kernels --test-threads=1 --nocapture \
        >"$out/bench.log" 2>&1 || rc=$?
      if ((rc == 0)) && grep -q 'skip bench_kernels:' "$out/bench.log"; then
        section_done bench "no GPU" $((SECONDS - t0)) "$(grep -o 'skip bench_kernels:.*' "$out/bench.log" | head -1)"
      else
        section_done bench "$(status_of $rc)" $((SECONDS - t0)) "limit ${t} s"
      fi
    else
      section_done bench "not run" 0 "no time left"
    fi
  else
    section_done bench skipped 0 "--no-bench"
  fi
  write_report none

  # Section 3: the same ops in PyTorch on the same card.
  if ((torch)); then
    local script="$ROOT/tools/gpu_bench_torch.py"
    [[ -f "$script" ]] || script="$dir/gpu_bench_torch.py"
    t=$((budget - (SECONDS - start) - min_train - min_train_torch - 5))
    t=$((t > 75 ? 75 : t))
    t0=$SECONDS rc=0
    if ((t >= 15)); then
      echo "gpu-check: PyTorch benchmarks (limit ${t} s)"
      TORCH_BENCH_BUDGET_S="$((t > 45 ? t - 35 : t / 3))" \
        timeout -k 5 "$t" python3 "$script" "$out/torch.jsonl" >"$out/torch.log" 2>&1 || rc=$?
      if ((rc == 0)) && grep -q '^skip gpu_bench_torch:' "$out/torch.log"; then
        section_done torch "no GPU" $((SECONDS - t0)) "$(grep -o '^skip gpu_bench_torch:.*' "$out/torch.log" | head -1)"
      else
        section_done torch "$(status_of $rc)" $((SECONDS - t0)) "limit ${t} s"
      fi
    else
      section_done torch "not run" 0 "no time left"
    fi
  else
    section_done torch skipped 0 "--no-torch"
  fi
  write_report none

  # Section 4: one training step (SFT, GRPO update), `generate` and the
  # lm_head + loss path of a Qwen2-0.5B-shaped model, first in the engine
  # (three benchmarks, each under its own timeout), then in HF transformers
  # on the same card.
  if ((train)); then
    t=$((budget - (SECONDS - start) - min_train_torch - 5))
    t=$((t > 90 ? 90 : t))
    t0=$SECONDS rc=0
    if ((t >= 15)); then
      # Each benchmark under its own timeout, in turn, appending to
      # train.log (a "== name" line before each), so a slow one cannot cut
      # the others. `left` is the section's time left less the 5 s that this
      # call's `timeout -k` may add; a later benchmark is kept 20 s (15 s and
      # its own 5). bench_train_step first, with all of it but 2 × 20 s (when
      # there is that much: 45 s of a 90 s section); bench_generate what is
      # left but 20 s, at most 40 s; bench_lm_head what is left, at most 40 s.
      echo "gpu-check: engine train step, generate, lm_head (limit ${t} s in all)"
      local bname blimit brc left notes=()
      : >"$out/train.log"
      for bname in bench_train_step bench_generate bench_lm_head; do
        left=$((t - (SECONDS - t0) - 5))
        case "$bname" in
          bench_train_step) blimit=$((left >= 55 ? left - 40 : left)) ;;
          bench_generate) blimit=$((left >= 35 ? left - 20 : left)); blimit=$((blimit > 40 ? 40 : blimit)) ;;
          *) blimit=$((left > 40 ? 40 : left)) ;;
        esac
        if ((blimit < 5)); then
          notes+=("$bname not run (no time left)")
          ((rc != 0)) || rc=124
          continue
        fi
        echo "== $bname (limit ${blimit} s)" >>"$out/train.log"
        brc=0
        ENGINE_BENCH_OUT="$out/train.jsonl" ENGINE_BENCH_BUDGET_S="$((blimit > 45 ? blimit - 30 : blimit / 2))" \
          timeout -k 5 "$blimit" "$dir/bin/cuda-tests" --ignored "$bname" --test-threads=1 --nocapture \
          >>"$out/train.log" 2>&1 || brc=$?
        notes+=("$bname $(status_of $brc) (limit ${blimit} s)")
        ((rc != 0)) || rc=$brc
      done
      local joined
      joined="$(printf '%s; ' "${notes[@]}")"
      if ((rc == 0)) && grep -q '^running 0 tests' "$out/train.log"; then
        section_done train missing $((SECONDS - t0)) "cuda-tests lacks a benchmark: ${joined%; }"
      elif ((rc == 0)) && grep -q 'skip bench_train_step:' "$out/train.log"; then
        section_done train "no GPU" $((SECONDS - t0)) "$(grep -o 'skip bench_train_step:.*' "$out/train.log" | head -1)"
      else
        section_done train "$(status_of $rc)" $((SECONDS - t0)) "limit ${t} s: ${joined%; }"
      fi
    else
      section_done train "not run" 0 "no time left"
    fi
    write_report none

    local tscript="$ROOT/tools/gpu_bench_train_torch.py"
    [[ -f "$tscript" ]] || tscript="$dir/gpu_bench_train_torch.py"
    t=$((budget - (SECONDS - start) - 5))
    t=$((t > 90 ? 90 : t))
    t0=$SECONDS rc=0
    if [[ ! -f "$tscript" ]]; then
      section_done train-torch missing 0 "no gpu_bench_train_torch.py in the tree or the bundle"
    elif ((t >= 15)); then
      echo "gpu-check: PyTorch train step (limit ${t} s)"
      TORCH_TRAIN_BUDGET_S="$((t > 45 ? t - 30 : t / 3))" \
        timeout -k 5 "$t" python3 "$tscript" "$out/train_torch.jsonl" >"$out/train_torch.log" 2>&1 || rc=$?
      if ((rc == 0)) && grep -q '^skip gpu_bench_train_torch:' "$out/train_torch.log"; then
        section_done train-torch skipped $((SECONDS - t0)) "$(grep -o '^skip gpu_bench_train_torch:.*' "$out/train_torch.log" | head -1)"
      else
        section_done train-torch "$(status_of $rc)" $((SECONDS - t0)) "limit ${t} s"
      fi
    else
      section_done train-torch "not run" 0 "no time left"
    fi
  else
    section_done train skipped 0 "$train_why"
    section_done train-torch skipped 0 "$train_why"
  fi
  write_report final
}

# Rewrites OUT/report.md and OUT/report.json from the files a run left in OUT
# (after a run cut short, or a change to the report's layout). Runs nothing.
rereport() {
  dir="${1:-$ROOT/gpu-bundle}" out="${2:-$ROOT/gpu-report}"
  [[ -d "$out" ]] || { echo "gpu-check report: no folder $out" >&2; exit 1; }
  start=$SECONDS card="" cuda_ver="" LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"
  GPU_CHECK_REREPORT=1 write_report final
}

case "$cmd" in
  bundle) shift; bundle "$@" ;;
  run) shift; run "$@" ;;
  report) shift; rereport "$@" ;;
  *) echo "usage: tools/gpu-check.sh bundle [DIR] | run [DIR] [OUT] [--no-bench] [--no-torch] [--no-train] | report [DIR] [OUT]" >&2; exit 2 ;;
esac
