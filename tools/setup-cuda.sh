#!/usr/bin/env bash
# Installs what `cargo build --features cuda` needs on a machine without a
# GPU or a CUDA toolkit: nvcc and the CUDA headers from PyPI (pinned to CUDA
# 13.0, so the cubins load on a 13.0 driver; DESIGN.md §6) into .cuda/ in the
# repository (ignored by git), and libclang for bindgen. Idempotent: a second
# run installs nothing. Prints the variables to export; `source` it to have
# them set:  source tools/setup-cuda.sh
# Sourced, it leaves the caller's shell options as they were (a `set -e`
# here would stay in an interactive shell and end it at the next failing
# command) and returns rather than exits on failure.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.cuda"
PINS=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-nvvm==13.0.88
  nvidia-cuda-cccl==13.0.85)
STAMP="$DEST/.installed"
if [[ ! -f "$STAMP" ]] || [[ "$(cat "$STAMP")" != "${PINS[*]}" ]]; then
  rm -rf "$DEST"
  if ! python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$DEST" "${PINS[@]}"; then
    echo "setup-cuda: pip could not install ${PINS[*]}" >&2
    return 1 2>/dev/null || exit 1
  fi
  echo "${PINS[*]}" > "$STAMP"
fi
CUDA_HOME="$DEST/nvidia/cu13"
if [[ ! -x "$CUDA_HOME/bin/nvcc" ]]; then
  echo "setup-cuda: $CUDA_HOME/bin/nvcc missing after the install" >&2
  return 1 2>/dev/null || exit 1
fi
# nvcc finds cicc, ptxas and its headers relative to itself; the PyPI wheels
# keep nvvm (cicc, libdevice) beside bin/ under the same root.
if ! ldconfig -p 2>/dev/null | grep -q 'libclang\(-[0-9.]*\)\?\.so'; then
  if command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >/dev/null) ||
      echo "setup-cuda: could not install libclang-dev (bindgen needs libclang)" >&2
  else
    echo "setup-cuda: install libclang (bindgen needs it)" >&2
  fi
fi
export CUDA_HOME NVCC="$CUDA_HOME/bin/nvcc"
echo "export CUDA_HOME=$CUDA_HOME"
echo "export NVCC=$NVCC"
