#!/usr/bin/env bash
# The GPU check of DESIGN.md §7, in two halves, so that nothing compiles on
# the (scarce) GPU machine:
#
#   tools/gpu-check.sh bundle [DIR]   on any x86-64 machine (no GPU): builds
#       `engine` and the one CUDA test binary (tests/cuda) with
#       --features cuda, strips them, and packs them with the ptxas report into
#       DIR (default gpu-bundle/, ignored by git). Carry DIR to the GPU machine.
#   tools/gpu-check.sh run [DIR] [OUT]   on the GPU machine: finds the driver
#       (and cuBLASLt) libraries, runs every CUDA test with
#       ENGINE_REQUIRE_CUDA=1, writes OUT/report.md and OUT/report.json after
#       each section, and prints a short table last. Ends within 4 minutes.
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
  python3 - <<'PY' 2>/dev/null || true
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

run() {
  local dir="${1:-$ROOT/gpu-bundle}" out="${2:-$ROOT/gpu-report}"
  mkdir -p "$out"
  local start=$SECONDS
  LD_LIBRARY_PATH="$(lib_dirs | awk '!seen[$0]++' | paste -sd:)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LD_LIBRARY_PATH
  local card
  card="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1 || true)"
  local cuda_ver
  cuda_ver="$(nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*' | head -1 || true)"
  local log="$out/tests.log"
  # Section 1: the CUDA tests, each kernel against the CPU reference.
  ENGINE_REQUIRE_CUDA=1 timeout 180 "$dir/bin/cuda-tests" --test-threads=1 --show-output >"$log" 2>&1 || true
  python3 - "$out" "$dir" "$card" "$cuda_ver" "$LD_LIBRARY_PATH" "$((SECONDS - start))" <<'PY'
import json, re, sys, datetime
out, bundle, card, cuda, ldpath, secs = sys.argv[1:]
log = open(f"{out}/tests.log", errors="replace").read()
tests = [{"test": m.group(1), "result": m.group(2)} for m in re.finditer(r"^test (\S+) \.\.\. (ok|FAILED|ignored)", log, re.M)]
printed = [l for l in log.splitlines() if not l.startswith("test ") and l.strip() and not l.startswith("running")]
commit = open(f"{bundle}/commit").read().strip()
rep = {"date": datetime.datetime.utcnow().isoformat(timespec="seconds") + "Z", "card": card, "cuda": cuda,
       "commit": commit, "ld_library_path": ldpath, "seconds": int(secs), "tests": tests,
       "passed": sum(t["result"] == "ok" for t in tests), "failed": sum(t["result"] == "FAILED" for t in tests),
       "benchmarks": "none yet (kernel benchmarks come with the CUDA backend)"}
json.dump(rep, open(f"{out}/report.json", "w"), indent=2)
md = [f"# GPU check {rep['date']}", "", f"- card: {card}", f"- {cuda}", f"- commit: {commit}",
      f"- libraries from: {ldpath}", "", "## Tests", "", "| test | result |", "|---|---|"]
md += [f"| {t['test']} | {t['result']} |" for t in tests]
md += ["", f"{rep['passed']} passed, {rep['failed']} failed", "", "## What the tests printed", "", "```"]
md += printed[-200:] + ["```", "", "## Benchmarks", "", rep["benchmarks"]]
open(f"{out}/report.md", "w").write("\n".join(md) + "\n")
print(f"\n{'test':60} result")
for t in tests:
    print(f"{t['test']:60} {t['result']}")
print(f"{rep['passed']} passed, {rep['failed']} failed")
PY
}

case "$cmd" in
  bundle) shift; bundle "$@" ;;
  run) shift; run "$@" ;;
  *) echo "usage: tools/gpu-check.sh bundle [DIR] | run [DIR] [OUT]" >&2; exit 2 ;;
esac
