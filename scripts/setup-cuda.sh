#!/usr/bin/env bash
# Installs the two CUDA toolchains that build.rs compiles the kernels with, from PyPI wheels, into
# the git-ignored folder .toolchain/:
#   .toolchain/cuda    nvcc 13.x (CUDA 13 images: load on R580+ drivers)
#   .toolchain/cuda12  NVRTC 12.9 + ptxas 12.9 + the CUDA 12.9 headers (CUDA 12 images: R525+).
#                      PyPI ships no nvcc, fatbinary or nvlink for CUDA 12: build.rs compiles with
#                      NVRTC (dlopened) and assembles each architecture with ptxas.
# Idempotent: a toolchain that is already there (and runs) is left alone. Versions are pinned.
# Needs python3 with pip and access to PyPI; no GPU and no driver are needed to compile.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

pip_target() {
  local dest="$1"; shift
  mkdir -p "$dest"
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --no-deps \
    --target "$dest" "$@" 2>&1 | grep -v "Running pip as the 'root' user" || true
}

# --- CUDA 13: nvcc
dest="$root/.toolchain/cuda"
nvcc="$dest/nvidia/cu13/bin/nvcc"
if [ -x "$nvcc" ] && "$nvcc" --version >/dev/null 2>&1; then
  echo "setup-cuda: nvcc present: $("$nvcc" --version | tail -n 1)"
else
  mkdir -p "$dest"
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$dest" \
    "nvidia-cuda-nvcc>=13,<14" "nvidia-nvvm>=13,<14" "nvidia-cuda-crt>=13,<14" \
    "nvidia-cuda-runtime>=13,<14" "nvidia-cuda-cccl>=13,<14" 2>&1 | grep -v "Running pip as the 'root' user" || true
  if ! "$nvcc" --version >/dev/null 2>&1; then
    echo "setup-cuda: nvcc was not installed at $nvcc" >&2
    exit 1
  fi
  echo "setup-cuda: installed $("$nvcc" --version | tail -n 1) into $dest"
fi

# --- CUDA 12.9: NVRTC (libnvrtc.so.12 + builtins), ptxas and crt headers, cuda_fp16.h / cuda_bf16.h
dest12="$root/.toolchain/cuda12"
ptxas12="$dest12/nvidia/cuda_nvcc/bin/ptxas"
nvrtc12="$dest12/nvidia/cuda_nvrtc/lib/libnvrtc.so.12"
fp16_12="$dest12/nvidia/cuda_runtime/include/cuda_fp16.h"
if [ -x "$ptxas12" ] && "$ptxas12" --version >/dev/null 2>&1 && [ -f "$nvrtc12" ] && [ -f "$fp16_12" ]; then
  echo "setup-cuda: CUDA 12 tools present: $("$ptxas12" --version | tail -n 1)"
else
  pip_target "$dest12" \
    "nvidia-cuda-nvrtc-cu12==12.9.86" "nvidia-cuda-nvcc-cu12==12.9.86" "nvidia-cuda-runtime-cu12==12.9.79"
  if ! "$ptxas12" --version >/dev/null 2>&1 || [ ! -f "$nvrtc12" ] || [ ! -f "$fp16_12" ]; then
    echo "setup-cuda: CUDA 12 tools were not installed into $dest12 (ptxas, libnvrtc.so.12, headers)" >&2
    exit 1
  fi
  echo "setup-cuda: installed NVRTC 12.9 and $("$ptxas12" --version | tail -n 1) into $dest12"
fi
