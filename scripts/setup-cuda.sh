#!/usr/bin/env bash
# Installs nvcc (CUDA 13.x) from PyPI wheels into the git-ignored folder .toolchain/cuda,
# where build.rs finds it. Idempotent: does nothing when nvcc is already there.
# Needs python3 with pip and access to PyPI; no GPU and no driver are needed to compile.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.toolchain/cuda"
nvcc="$dest/nvidia/cu13/bin/nvcc"
if [ -x "$nvcc" ] && "$nvcc" --version >/dev/null 2>&1; then
  echo "setup-cuda: nvcc present: $("$nvcc" --version | tail -n 1)"
  exit 0
fi
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
