#!/usr/bin/env bash
# The README's main job: In-Run Data Shapley (first + second order, MATH.md §2) inside a real SGD
# training run — digits data shipped in smartcore, 10 % of the training labels flipped — through
# ghostgrad: on the GPU when one is present (kernels embedded by nvcc, installed into .toolchain/
# from PyPI), on the CPU otherwise. Prints the ROC AUC for finding the flipped labels, the most and
# least valuable samples, the overhead against the same training without attribution, and writes
# target/inrun_values.svg. Extra args go to the demo (e.g. --seed 1, --dataset wine, --device cpu).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup-cuda.sh || echo "run-demo: no CUDA compiler; the demo runs on the CPU backend"
exec cargo run --release --example inrun_shapley_demo -- "$@"
