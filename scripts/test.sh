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

read -r passed failed ignored < <(grep -E '^test result:' "$log" | awk '
  { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i } }
  END { print p+0, f+0, g+0 }')
echo
echo "summary: ${passed} passed, ${failed} failed, ${ignored} skipped"
if [ "$failed" != "0" ] || [ "$ignored" != "0" ] || [ "$passed" = "0" ]; then status=1; fi
exit $status
