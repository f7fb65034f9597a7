#!/usr/bin/env bash
# Creates the Python environment of the tests, benchmarks and demo in the git-ignored folder
# .toolchain/venv, from PyPI, with the pinned packages of python/requirements-dev.txt (torch and
# JAX run on the CPU here; their CUDA libraries come along but are not needed). Idempotent: a
# venv whose recorded requirements equal the file is left as it is.
# ghostgrad itself is not installed into the venv; scripts/build-python.sh installs the wheel of
# this checkout under target/python/, so several checkouts can share one venv.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${GHOSTGRAD_VENV:-$root/.toolchain/venv}"
req="$root/python/requirements-dev.txt"
stamp="$venv/.ghostgrad-requirements"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then
  echo "setup-python: venv present at $venv"
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 | grep -v "Running pip as the 'root' user" || true
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" 2>&1 \
  | grep -v "Running pip as the 'root' user" || true
"$venv/bin/python" -c "import numpy, torch, jax, pytest, transformers" || {
  echo "setup-python: the venv at $venv is incomplete" >&2; exit 1; }
cp "$req" "$stamp"
echo "setup-python: installed $(wc -l < "$req") requirement lines into $venv"
