#!/usr/bin/env bash
# The README's main job: In-Run Data Shapley (first + second order, MATH.md §2) inside the training
# of a small GPT-2 (transformers' GPT2LMHeadModel, tiny config, from scratch) on real text — the
# docstrings of CPython's own standard library, read from its .py files, nothing downloaded — with
# 10 % of the training documents corrupted, through ghostgrad.torch. Prints the ROC AUC of finding
# the corrupted documents (first order; first + second order), the most and least valuable
# documents, the overhead against the same training without attribution, and writes
# target/inrun_gpt2_values.png. Sets up its own Python environment (.toolchain/venv, from PyPI,
# by scripts/setup-python.sh) and builds this checkout's ghostgrad package into target/python.
# Runs on a CUDA device when torch sees one, else on the CPU. Extra args go to the demo
# (e.g. --seed 1, --epochs 6, --corruption mixed, --device cpu; --help lists them).
# The Rust MLP demo of earlier releases: cargo run --release --example inrun_shapley_demo
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup-python.sh
venv="${GHOSTGRAD_VENV:-$root/.toolchain/venv}"
pythonpath="$root/python"
if [ -f scripts/build-python.sh ]; then
  bash scripts/build-python.sh
  pythonpath="$root/target/python:$pythonpath"
fi
PYTHONPATH="$pythonpath${PYTHONPATH:+:$PYTHONPATH}" exec "$venv/bin/python" python/examples/inrun_gpt2_demo.py "$@"
