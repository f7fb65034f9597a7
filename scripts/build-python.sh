#!/usr/bin/env bash
# Builds this checkout's ghostgrad wheel with maturin (from the shared venv .toolchain/venv,
# created by scripts/setup-python.sh) and installs it, without dependencies, under
# target/python/ — never into the shared venv. Run the tests with PYTHONPATH=target/python.
# The wheel embeds the CUDA kernels: the ghostgrad crate's build.rs finds nvcc in .toolchain/cuda
# (scripts/setup-cuda.sh) exactly as for a cargo build. GHOSTGRAD_PY_PROFILE=dev builds the dev
# profile (what scripts/test.sh does: it reuses the test build's artifacts); default release.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${GHOSTGRAD_VENV:-$root/.toolchain/venv}"
profile="${GHOSTGRAD_PY_PROFILE:-release}"
bash scripts/setup-python.sh
wheels="target/wheels-python"
rm -rf "$wheels"
"$venv/bin/maturin" build --quiet --manifest-path python/Cargo.toml --profile "$profile" \
  --interpreter "$venv/bin/python" --out "$wheels"
wheel="$(ls "$wheels"/ghostgrad-*.whl | head -n 1)"
rm -rf target/python
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-index \
  --target target/python "$wheel" 2>&1 | grep -v "Running pip as the 'root' user" || true
PYTHONPATH=target/python "$venv/bin/python" -c "import ghostgrad; assert ghostgrad.KERNELS_BUILT or not '${GHOSTGRAD_REQUIRE_KERNELS:-}', 'wheel built without kernels'; print('build-python: installed', '$wheel', 'into target/python')"
