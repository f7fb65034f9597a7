#!/usr/bin/env bash
# Compiles every kernels/*.cu exactly as build.rs does, warnings as errors:
#   1. PTX for the interpreter: -ptx -arch=compute_80
#   2. fatbin: SASS for sm_75 80 86 89 90 100 120 + compute_75 PTX, with -Xptxas -v
# and prints ptxas' register / shared memory / spill lines per kernel and architecture.
# It also checks that every extern "C" kernel is present in every SASS image and that the
# interpreter PTX is free of opcodes the interpreter is not meant to see.
# Usage: kernels/check.sh [nvcc]   (default: $GHOSTGRAD_NVCC, /tmp/cudatc/nvidia/cu13/bin/nvcc, nvcc)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NVCC="${1:-${GHOSTGRAD_NVCC:-}}"
if [[ -z "$NVCC" ]]; then
  if [[ -x /tmp/cudatc/nvidia/cu13/bin/nvcc ]]; then NVCC=/tmp/cudatc/nvidia/cu13/bin/nvcc; else NVCC=nvcc; fi
fi
ARCHS="${GHOSTGRAD_CUDA_ARCHS:-75,80,86,89,90,100,120}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
status=0
gencode=()
IFS=',' read -ra arch_list <<< "$ARCHS"
for a in "${arch_list[@]}"; do gencode+=(-gencode "arch=compute_${a},code=sm_${a}"); done
gencode+=(-gencode "arch=compute_${arch_list[0]},code=compute_${arch_list[0]}")

for src in "$here"/*.cu; do
  name="$(basename "$src" .cu)"
  echo "=== $name.cu"
  if ! "$NVCC" -O3 -lineinfo --std=c++17 -ptx -arch=compute_80 -I"$here" -Werror all-warnings \
        "$src" -o "$out/$name.ptx" 2> "$out/$name.ptx.err"; then
    echo "PTX compile FAILED"; cat "$out/$name.ptx.err"; status=1; continue
  fi
  if [[ -s "$out/$name.ptx.err" ]]; then echo "PTX stderr:"; cat "$out/$name.ptx.err"; status=1; fi
  if ! "$NVCC" -O3 -lineinfo --std=c++17 -fatbin -Xptxas -v -I"$here" -Werror all-warnings \
        "${gencode[@]}" "$src" -o "$out/$name.fatbin" 2> "$out/$name.fatbin.err"; then
    echo "fatbin compile FAILED"; cat "$out/$name.fatbin.err"; status=1; continue
  fi
  # ptxas -v prints to stderr; anything else there is a warning.
  if grep -v -E '^ptxas info|^    [0-9]+ bytes stack frame' "$out/$name.fatbin.err" | grep -q .; then
    echo "fatbin stderr (not ptxas info):"
    grep -v -E '^ptxas info|^    [0-9]+ bytes stack frame' "$out/$name.fatbin.err"; status=1
  fi
  awk '
    /Compiling entry function/ { match($0, /'"'"'[^'"'"']+'"'"'/); fn=substr($0, RSTART+1, RLENGTH-2);
                                 match($0, /for '"'"'sm_[0-9a-z]+'"'"'/); arch=substr($0, RSTART+5, RLENGTH-6) }
    /bytes stack frame/ { spill=$0; sub(/^ +/, "", spill) }
    /Used [0-9]+ registers/ { line=$0; sub(/^ptxas info *: */, "", line);
                              printf "  %-24s %-7s %s | %s\n", fn, arch, line, spill }
  ' "$out/$name.fatbin.err"
  if grep -q -E 'spill (stores|loads)' "$out/$name.fatbin.err" && \
     grep -E '[1-9][0-9]* bytes spill' "$out/$name.fatbin.err" >/dev/null; then
    echo "  WARNING: spills present"; fi
  # Interpreter-facing PTX: no wmma / atomics / local memory / calls anywhere; mma.sync,
  # ldmatrix and cp.async only inside the tensor-core kernels (entry names containing _mma_).
  if grep -n -E '^\s*(@%p[0-9]+ )?(wmma|atom|red\.|call)|\.local' "$out/$name.ptx"; then
    echo "  ERROR: forbidden construct in PTX"; status=1; fi
  if ! awk '
    /^\.visible \.entry|^\.entry/ { match($0, /entry [A-Za-z0-9_]+/); fn=substr($0, RSTART+6, RLENGTH-6) }
    /^[ \t]*(@%p[0-9]+ )?(mma|ldmatrix|cp\.async)/ && fn !~ /_mma_/ { print FILENAME ":" NR ": " fn ": " $0; bad=1 }
    END { exit bad }' "$out/$name.ptx"; then
    echo "  ERROR: mma/ldmatrix/cp.async outside a tensor-core (_mma_) kernel"; status=1; fi
  # Every kernel in every SASS image.
  kernels=$(grep -E '^\.visible \.entry' "$out/$name.ptx" | sed -E 's/.*\.entry ([A-Za-z0-9_]+).*/\1/' | sort)
  for a in "${arch_list[@]}"; do
    have=$(grep -E "Compiling entry function '.*' for 'sm_${a}'" "$out/$name.fatbin.err" \
           | sed -E "s/.*function '([^']+)'.*/\1/" | sort)
    if [[ "$have" != "$kernels" ]]; then echo "  ERROR: sm_$a image lacks kernels"; status=1; fi
  done
  echo "  kernels: $(echo $kernels)"
done
if [[ $status -eq 0 ]]; then echo "check.sh: OK"; else echo "check.sh: FAILED"; fi
exit $status
