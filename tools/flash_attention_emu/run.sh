#!/usr/bin/env bash
# Builds and runs the CPU emulation of kernels/flash_attention.cu (main.cpp).
# Pass any argument for the quick cases only.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${TMPDIR:-/tmp}/flash_attention_emu"
g++ -std=c++20 -O2 -fno-strict-aliasing -Wno-psabi -pthread -include "$here/shim.h" -I "$here" -I "$here/../../kernels/include" \
  -o "$out" "$here/main.cpp"
"$out" "$@"
