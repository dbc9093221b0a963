#!/usr/bin/env bash
# The GPU check of DESIGN.md §7, in two halves, so that nothing compiles on
# the (scarce) GPU machine:
#
#   tools/gpu-check.sh bundle [DIR]   on any x86-64 machine (no GPU): builds
#       `engine` and the one CUDA test binary (tests/cuda) with
#       --features cuda, strips them, and packs them with the ptxas report into
#       DIR (default gpu-bundle/, ignored by git). Carry DIR to the GPU machine.
#   tools/gpu-check.sh run [DIR] [OUT] [--no-bench] [--no-torch]   on the GPU
#       machine: finds the driver (and cuBLASLt) libraries, runs every CUDA
#       test with ENGINE_REQUIRE_CUDA=1, then the kernel benchmarks
#       (cuda-tests --ignored bench_kernels, tests/cuda/bench.rs) into
#       OUT/bench.jsonl, then the same ops in PyTorch
#       (tools/gpu_bench_torch.py) into OUT/torch.jsonl; writes OUT/report.md
#       and OUT/report.json after each section, and prints a short table
#       last. Every section runs under a timeout; the whole run ends within
#       4 minutes (GPU_CHECK_BUDGET_S, default 225 s, plus up to 5 s).
#       ENGINE_BENCH_SKIP=attention,gemm,... skips benchmark sections in both.
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
  strip "$dir/bin/engine" "$dir/bin/cuda-tests"
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
# (tests.log, sections.tsv, bench.jsonl / bench.log, torch.jsonl / torch.log);
# run after every section, so a run cut short still reports what it found.
# $1: what to print (tests: the tests table; final: the short summary and the
# benchmark table; none).
write_report() {
  python3 - "$1" "$out" "$dir" "$card" "$cuda_ver" "$LD_LIBRARY_PATH" "$((SECONDS - start))" <<'PY' || echo "gpu-check: the report writer failed" >&2
import datetime, json, os, re, sys
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
rep = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
       "card": card, "cuda": cuda, "commit": commit, "ld_library_path": ldpath, "seconds": int(secs),
       "sections": sections, "tests": tests,
       "passed": sum(t["result"] == "ok" for t in tests), "failed": sum(t["result"] == "FAILED" for t in tests),
       "benchmarks": bench}
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
md += ["", "## Tests", "", "| test | result |", "|---|---|"]
md += [f"| {t['test']} | {t['result']} |" for t in tests]
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
md += ["", "## What the tests printed", "", "```"] + printed[-200:] + ["```"]
for name, text in (("engine benchmark", bench_log), ("PyTorch benchmark", torch_log)):
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
        print(f"   {s['section']:8} {s['status']:10} {str(s['seconds']):>4} s  {s['note']}")
    failed = [t["test"] for t in tests if t["result"] == "FAILED"]
    print(f"   tests: {rep['passed']} passed, {rep['failed']} failed" + (f" ({', '.join(failed[:8])})" if failed else ""))
    for e in errors:
        print(f"   error: {e['source']}: {e['kernel']}: {str(e['error'])[:100]}")
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
  local bench=1 torch=1 pos=()
  while (($#)); do
    case "$1" in
      --no-bench) bench=0 ;;
      --no-torch) torch=0 ;;
      -*) echo "gpu-check run: unknown flag $1 (flags: --no-bench --no-torch)" >&2; exit 2 ;;
      *) pos+=("$1") ;;
    esac
    shift
  done
  dir="${pos[0]:-$ROOT/gpu-bundle}" out="${pos[1]:-$ROOT/gpu-report}"
  dir="$(cd "$dir" && pwd)"
  mkdir -p "$out"
  out="$(cd "$out" && pwd)"
  rm -f "$out/sections.tsv" "$out/bench.jsonl" "$out/torch.jsonl" "$out/bench.log" "$out/torch.log"
  start=$SECONDS
  # The whole run ends within 4 minutes: every section gets what is left of
  # this budget, less what the later sections need at least, less the 5 s
  # that `timeout -k` may add.
  local budget="${GPU_CHECK_BUDGET_S:-225}" min_bench=40 min_torch=40
  ((bench)) || min_bench=0
  ((torch)) || min_torch=0
  LD_LIBRARY_PATH="$(lib_dirs | awk '!seen[$0]++' | paste -sd:)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LD_LIBRARY_PATH
  card="$(timeout 15 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1 || true)"
  cuda_ver="$(timeout 15 nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*' | head -1 || true)"
  local t rc t0

  # Section 1: the CUDA tests, each kernel against the CPU reference.
  t=$((budget - (SECONDS - start) - min_bench - min_torch - 5))
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

  # Section 2: the kernel benchmarks (tests/cuda/bench.rs).
  if ((bench)); then
    t=$((budget - (SECONDS - start) - min_torch - 5))
    t=$((t > 120 ? 120 : t))
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
    t=$((budget - (SECONDS - start) - 5))
    t=$((t > 90 ? 90 : t))
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
  *) echo "usage: tools/gpu-check.sh bundle [DIR] | run [DIR] [OUT] [--no-bench] [--no-torch] | report [DIR] [OUT]" >&2; exit 2 ;;
esac
