#!/usr/bin/env bash
# The README's main job: ghost dot-products of a GPT-2 MLP layer through ghostgrad, on the GPU
# when one is present (kernels embedded by nvcc, installed into .toolchain/ from PyPI) and on the
# CPU otherwise, checked against the naive materialize-then-dot method. Extra args go to the demo.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup-cuda.sh || echo "run-demo: no CUDA compiler; the demo runs on the CPU backend"
exec cargo run --release --example ghost_dot_demo -- "$@"
