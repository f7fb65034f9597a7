#!/usr/bin/env bash
# The test command of the README: installs the CUDA compiler into .toolchain/ (from PyPI),
# builds every kernel (a missing nvcc is an error here, never a silent skip), runs the whole
# workspace test suite (CPU backends, the C ABI, and every CUDA kernel executed by the PTX
# interpreter), then checks the no-toolchain path. Prints a one-line summary at the end.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup-cuda.sh || exit 1
export GHOSTGRAD_REQUIRE_KERNELS=1
mkdir -p target
log="target/test-log.txt"
: > "$log"
status=0

run() {
  echo "+ $*" | tee -a "$log"
  "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then status=1; echo "FAILED ($rc): $*" | tee -a "$log"; fi
}

run cargo test --workspace --all-targets --no-fail-fast
# The CUDA 12 image set's PTX (NVRTC 12.9) through the ghost-dot family's interpreter tests,
# against the same f64 reference as nvcc's PTX.
run env GHOSTGRAD_INTERP_IMAGES=cuda12 cargo test --test gpu_interp --test kernel_images
# The device check's CPU part (argument parsing, modeled tables, torch script, report) so it cannot rot.
run bash scripts/gpu-check.sh --interp --out target/gpu-check/report-interp.md
# Without any CUDA toolchain the crate builds and its CPU path works ...
run env -u GHOSTGRAD_REQUIRE_KERNELS GHOSTGRAD_NO_CUDA=1 cargo test --no-default-features --test no_kernels
# ... but when kernels are required, the build must fail instead of skipping them.
echo "+ GHOSTGRAD_NO_CUDA=1 GHOSTGRAD_REQUIRE_KERNELS=1 cargo build --no-default-features (must fail)" | tee -a "$log"
if GHOSTGRAD_NO_CUDA=1 GHOSTGRAD_REQUIRE_KERNELS=1 cargo build --no-default-features >/dev/null 2>&1; then
  echo "FAILED: the build succeeded without kernels although GHOSTGRAD_REQUIRE_KERNELS=1" | tee -a "$log"
  status=1
else
  echo "ok: the build refused to skip the kernels" | tee -a "$log"
fi
# ... and so must a build that can make the CUDA 13 set but not the CUDA 12 one.
echo "+ GHOSTGRAD_CUDA12_HOME=/nonexistent GHOSTGRAD_REQUIRE_KERNELS=1 cargo build --no-default-features (must fail)" | tee -a "$log"
if GHOSTGRAD_CUDA12_HOME=/nonexistent GHOSTGRAD_REQUIRE_KERNELS=1 cargo build --no-default-features >"$log.cuda12" 2>&1; then
  echo "FAILED: the build succeeded without the CUDA 12 set although GHOSTGRAD_REQUIRE_KERNELS=1" | tee -a "$log"
  status=1
elif grep -q "CUDA 12 image set cannot be built" "$log.cuda12"; then
  echo "ok: the build refused to skip the CUDA 12 set" | tee -a "$log"
else
  echo "FAILED: the build failed for another reason:" | tee -a "$log"; tail -n 20 "$log.cuda12" | tee -a "$log"
  status=1
fi

# The Python package: the shared venv, this checkout's wheel (dev profile: reuses the test
# build above) under target/python, then its pytest suite (its summary line is counted below).
py_start=$SECONDS
run bash scripts/setup-python.sh
run env GHOSTGRAD_PY_PROFILE=dev bash scripts/build-python.sh
run env PYTHONPATH="$root/target/python" .toolchain/venv/bin/python -m pytest -q -p no:cacheprovider python/tests
echo "python: wheel + tests took $((SECONDS - py_start)) s" | tee -a "$log"

# cargo's "test result:" lines and pytest's "N passed, M failed, K skipped in T s" line.
read -r passed failed ignored < <(grep -E '^test result:|^=* ?[0-9]+ (passed|failed)' "$log" | tr -d '=,' | awk '
  { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^(ignored|skipped)/) g += $i } }
  END { print p+0, f+0, g+0 }')
echo
echo "summary: ${passed} passed, ${failed} failed, ${ignored} skipped"
if [ "$failed" != "0" ] || [ "$ignored" != "0" ] || [ "$passed" = "0" ]; then status=1; fi
exit $status
