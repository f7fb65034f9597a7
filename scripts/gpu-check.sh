#!/usr/bin/env bash
# The device check: on a machine with an NVIDIA GPU, in one command,
#   1. builds the kernels for that GPU only (GHOSTGRAD_CUDA_ARCHS from nvidia-smi's compute capability);
#   2. runs every interpreter-backed test binary with GHOSTGRAD_TEST_CUDA=1: each launch the tests
#      make is executed on the GPU too, from the interpreter's memory state, and compared buffer
#      by buffer (bitwise for FMA kernels, within 2^-12 of the buffer's magnitude for mma kernels;
#      src/runtime/mirror.rs) — the same test bodies, the GPU added beside the interpreter;
#   3. runs benches/gpu_model.rs at its benchmark shapes with GHOSTGRAD_GPU_TIMING=1: every kernel
#      timed with CUDA events next to its modeled H100/A100 time;
#   4. times the cuBLAS-backed torch baseline (torch.bmm Gram form, scripts/gpu_check_torch.py)
#      when torch is importable;
#   5. writes one report (default target/gpu-check/report.md) and prints what it could not do.
# Budget: < 8 minutes on one H100 (each step has its own timeout; a step that times out is
# reported, the others still run).
#
# Usage: bash scripts/gpu-check.sh [--interp | --dry-run] [--out FILE] [--tests "a b c"]
#                                  [--skip-tests] [--skip-bench] [--skip-torch]
#   --interp   no GPU: the CPU part only (the modeled tables at smoke shapes, the torch script on
#              the CPU at a tiny shape, the report); runs in CI from scripts/test.sh (< 1 minute
#              once the test build exists).
#   --dry-run  parse arguments, detect the GPU, print the commands and write the report skeleton
#              without running anything.
# Env: PYTHON (default .toolchain/venv/bin/python, else python3), GPU_CHECK_TEST_TIMEOUT (s, 240),
#      GPU_CHECK_BENCH_TIMEOUT (s, 150), GPU_CHECK_BIN_DIR (prebuilt test executables to run
#      when the GPU machine has no cargo: the output of `cargo test --no-run` built elsewhere with
#      GHOSTGRAD_CUDA_ARCHS set to that GPU).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

mode=gpu
out="target/gpu-check/report.md"
tests="gpu_interp inrun_kernels layers projection projection_embedding projection_model projection_moments dvemb gpt2_model inrun_autodiff"
skip_tests=0 skip_bench=0 skip_torch=0
while [ $# -gt 0 ]; do
  case "$1" in
    --interp) mode=interp ;;
    --dry-run) mode=dry ;;
    --out) out="${2:?--out needs a file}"; shift ;;
    --tests) tests="${2:?--tests needs a list}"; shift ;;
    --skip-tests) skip_tests=1 ;;
    --skip-bench) skip_bench=1 ;;
    --skip-torch) skip_torch=1 ;;
    -h|--help) sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu-check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$(dirname "$out")"
work="$(cd "$(dirname "$out")" && pwd)"
python="${PYTHON:-}"
[ -z "$python" ] && { [ -x .toolchain/venv/bin/python ] && python=.toolchain/venv/bin/python || python=python3; }
test_timeout="${GPU_CHECK_TEST_TIMEOUT:-240}"
bench_timeout="${GPU_CHECK_BENCH_TIMEOUT:-150}"
missing=()   # what could not be done, printed at the end and written to the report
steps=()     # one line per step for the report

gpu_name="" cc="" arch=""
if command -v nvidia-smi >/dev/null 2>&1 && q="$(nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader 2>/dev/null | head -1)" && [ -n "$q" ]; then
  gpu_name="$q"
  cc="$(echo "$q" | awk -F', ' '{print $2}')"
  arch="${cc/./}"
fi
if [ "$mode" = gpu ] && [ -z "$arch" ]; then
  echo "gpu-check: no NVIDIA GPU found (nvidia-smi missing or silent); running the CPU part (--interp) instead" >&2
  missing+=("no GPU on this machine: no device tests, no CUDA timings (ran the --interp part)")
  mode=interp
fi
[ "$mode" = dry ] && missing+=("dry run: nothing was run ($([ -n "$gpu_name" ] && echo "GPU found: $gpu_name" || echo "no GPU found"))")
[ "$mode" = interp ] && [ -z "${missing[*]-}" ] && missing+=("--interp: no GPU used, so no GPU-vs-interpreter comparison and no CUDA event timings; GPU timings below are modeled")

have_cargo=1; command -v cargo >/dev/null 2>&1 || have_cargo=0
if [ "$mode" = gpu ]; then
  export GHOSTGRAD_CUDA_ARCHS="$arch"
  export GHOSTGRAD_REQUIRE_KERNELS=1
fi

run_step() {  # name, timeout, command...
  local name="$1" limit="$2"; shift 2
  echo "+ [$name] $*" >&2
  if [ "$mode" = dry ]; then steps+=("| $name | not run (dry run) | \`$*\` |"); return 0; fi
  local t0=$SECONDS
  timeout "$limit" "$@" > "$work/$name.log" 2>&1
  local rc=$?
  local dt=$((SECONDS - t0))
  if [ $rc -eq 0 ]; then steps+=("| $name | ok (${dt} s) | \`$*\` |")
  elif [ $rc -eq 124 ]; then steps+=("| $name | TIMED OUT after ${limit} s | \`$*\` |"); missing+=("$name timed out after ${limit} s (log $work/$name.log)")
  else steps+=("| $name | FAILED rc=$rc (${dt} s) | \`$*\` |"); missing+=("$name failed (rc=$rc, log $work/$name.log)"); fi
  return $rc
}

# 0: which kernel image set (CUDA 13 or CUDA 12) and architecture a context loads.
describe_txt="$work/describe.txt"
rm -f "$describe_txt"
if [ $have_cargo = 1 ]; then
  dctx=cuda; [ "$mode" = interp ] && dctx=interp
  run_step describe 300 cargo run --quiet --example describe -- "$dctx"
  [ -f "$work/describe.log" ] && grep -E '^(cuda|interp):' "$work/describe.log" > "$describe_txt"
  [ -s "$describe_txt" ] && echo "gpu-check: $(cat "$describe_txt")" >&2
else missing+=("describe: no cargo on this machine, the loaded image set is unknown"); fi

# 1 + 2: build for this GPU and run the test binaries with the GPU mirror on.
if [ "$mode" != interp ] && [ $skip_tests = 0 ]; then
  if [ $have_cargo = 1 ]; then
    targs=(); for t in $tests; do targs+=(--test "$t"); done
    run_step device-tests "$test_timeout" env GHOSTGRAD_TEST_CUDA=1 cargo test "${targs[@]}" --no-fail-fast
  elif [ -n "${GPU_CHECK_BIN_DIR:-}" ]; then
    for exe in "$GPU_CHECK_BIN_DIR"/*; do
      [ -x "$exe" ] && [ -f "$exe" ] || continue
      run_step "device-tests-$(basename "$exe")" "$test_timeout" env GHOSTGRAD_TEST_CUDA=1 "$exe"
    done
  else
    missing+=("device tests: no cargo on this machine and no GPU_CHECK_BIN_DIR of prebuilt test executables")
  fi
elif [ $skip_tests = 1 ]; then missing+=("device tests skipped (--skip-tests)"); fi

# 3: the modeled benchmark, with CUDA event timings of every launch on a GPU.
model_md="$work/gpu_model.md"
rm -f "$model_md"
if [ $skip_bench = 0 ]; then
  if [ $have_cargo = 0 ]; then missing+=("gpu_model bench: no cargo on this machine")
  elif [ "$mode" = interp ]; then
    run_step model-smoke 600 env GHOSTGRAD_GPU_MODEL_OUT="$model_md" cargo test --bench gpu_model
  else
    run_step model-timed "$bench_timeout" env GHOSTGRAD_GPU_TIMING=1 GHOSTGRAD_GPU_MODEL_OUT="$model_md" cargo test --bench gpu_model -- --bench
  fi
else missing+=("gpu_model bench skipped (--skip-bench)"); fi

# 4: the torch baseline.
torch_md="$work/torch_baseline.md"
rm -f "$torch_md"
if [ $skip_torch = 0 ]; then
  dev=cuda; [ "$mode" = interp ] && dev=cpu
  run_step torch-baseline 120 "$python" scripts/gpu_check_torch.py --device "$dev" --out "$torch_md"
  if [ -f "$torch_md" ] && grep -q "not run" "$torch_md"; then missing+=("torch baseline: $(head -1 "$torch_md")"); fi
else missing+=("torch baseline skipped (--skip-torch)"); fi

# 5: the report.
{
  echo "# ghostgrad device check"
  echo
  flag=""; [ "$mode" = interp ] && flag=" --interp"; [ "$mode" = dry ] && flag=" --dry-run"
  echo "Generated by \`bash scripts/gpu-check.sh$flag\` on $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)."
  echo "GPU: ${gpu_name:-none}; build archs: ${GHOSTGRAD_CUDA_ARCHS:-default}; mode: $mode."
  echo
  echo "Context (image set loaded): $(cat "$describe_txt" 2>/dev/null || echo "unknown (describe step did not run)")"
  echo
  echo "## Steps"
  echo
  echo "| step | result | command |"
  echo "|---|---|---|"
  printf '%s\n' "${steps[@]}"
  echo
  echo "## Could not do"
  echo
  if [ ${#missing[@]} -eq 0 ]; then echo "Nothing: every step ran."; else printf -- '- %s\n' "${missing[@]}"; fi
  if [ -f "$work/device-tests.log" ]; then
    echo
    echo "## Device tests (interpreter + GPU, every launch compared)"
    echo
    echo '```'
    grep -E '^test result:|^test .* FAILED|device check:' "$work/device-tests.log" | head -50
    echo '```'
  fi
  echo
  echo "## Kernels: modeled time$([ "$mode" = gpu ] && echo " and measured GPU time (CUDA events)")"
  echo
  if [ -f "$model_md" ]; then cat "$model_md"; else echo "(not produced)"; fi
  echo
  echo "## torch baseline (cuBLAS through torch.bmm)"
  echo
  if [ -f "$torch_md" ]; then cat "$torch_md"; else echo "(not produced)"; fi
} > "$out"

echo "gpu-check: wrote $out" >&2
if [ ${#missing[@]} -gt 0 ]; then
  echo "gpu-check: could not do:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
fi
# In --interp mode (CI) only a failing step is an error; a missing GPU is expected there.
for s in "${steps[@]}"; do case "$s" in *FAILED*|*"TIMED OUT"*) exit 1 ;; esac; done
if [ "$mode" = interp ] || [ "$mode" = dry ]; then
  [ -s "$out" ] || { echo "gpu-check: empty report" >&2; exit 1; }
fi
exit 0
