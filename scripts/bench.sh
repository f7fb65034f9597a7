#!/usr/bin/env bash
# Runs the CPU benchmarks (benches/ghost_dot.rs and benches/projection.rs, criterion, quick settings: 10 samples, short
# measurement) and regenerates BENCHMARKS.md from that run: criterion's estimates.json plus the
# peak-memory numbers the bench measures itself. Takes a few minutes on a 2-core machine.
# Env: GHOSTGRAD_BENCH_N (default 8), GHOSTGRAD_BENCH_T (default 32,128,512),
# GHOSTGRAD_BENCH_MEASURE_S (criterion measurement seconds per benchmark, default 1).
# Extra arguments go to criterion (e.g. a filter; the report then has gaps).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# Puts the markdown in $2 under the heading $1 of the report: replaces that section when it is
# there, else inserts it just before the modeled-GPU section.
splice_before_model() {
  python3 - "$GHOSTGRAD_BENCH_REPORT" "$1" "$2" <<'PY'
import sys
report, heading, body = sys.argv[1], sys.argv[2], open(sys.argv[3]).read()
text = open(report).read()
model = "## Modeled GPU metrics (PTX interpreter)"
if heading in text:
    pre, rest = text.split(heading, 1)
    nxt = rest.find("\n## ")
    text = pre + heading + "\n\n" + body + ("\n" + rest[nxt + 1:] if nxt >= 0 else "")
else:
    pre, rest = text.split(model, 1)
    text = pre + heading + "\n\n" + body + "\n" + model + rest
open(report, "w").write(text)
PY
}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target-bench}"
export GHOSTGRAD_BENCH_MEASURE_S="${GHOSTGRAD_BENCH_MEASURE_S:-1}"
export GHOSTGRAD_BENCH_REPORT="$root/BENCHMARKS.md"
export GHOSTGRAD_BENCH_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')"
cmd=(cargo bench --no-default-features --bench ghost_dot -- "$@")
export GHOSTGRAD_BENCH_CMD="bash scripts/bench.sh  (runs: CARGO_TARGET_DIR=target-bench GHOSTGRAD_BENCH_MEASURE_S=$GHOSTGRAD_BENCH_MEASURE_S ${cmd[*]})"
# Fresh criterion results only: stale estimates of an earlier run must not reach the report.
rm -rf "$CARGO_TARGET_DIR/criterion"
"${cmd[@]}"
echo "bench.sh: wrote $GHOSTGRAD_BENCH_REPORT"

# ghostgrad against the pure-torch implementations it replaces (benches/peers/peers.py, issue 15):
# the release cdylib through its C ABI (ctypes) and torch in one Python process, interleaved,
# 2 threads each, every result checked against a float64 reference before timing; its table is
# spliced into the report's "ghostgrad vs pure-torch peers (CPU)" section.
bash scripts/setup-python.sh
cargo build --release --no-default-features --lib
GHOSTGRAD_LIB="$CARGO_TARGET_DIR/release/libghostgrad.so" "${GHOSTGRAD_VENV:-$root/.toolchain/venv}/bin/python" \
  benches/peers/peers.py --out "$CARGO_TARGET_DIR/peers.md"
splice_before_model "## ghostgrad vs pure-torch peers (CPU)" "$CARGO_TARGET_DIR/peers.md"
echo "bench.sh: spliced the torch peers comparison into $GHOSTGRAD_BENCH_REPORT"

# Modeled GPU metrics: every kernel at benchmark shapes on the PTX interpreter (sampled CTAs),
# spliced into the report's "Modeled GPU metrics" section.
cargo bench --bench gpu_model
python3 - "$GHOSTGRAD_BENCH_REPORT" "$root/target/gpu_model.md" <<'PY'
import sys
report, model = sys.argv[1], sys.argv[2]
heading = "## Modeled GPU metrics (PTX interpreter)"
text = open(report).read()
head = text.split(heading)[0].rstrip() + "\n\n"
body = open(model).read().strip() + "\n"
cmd = "Command: `bash scripts/bench.sh` (runs `cargo bench --bench gpu_model`, which writes `target/gpu_model.md`).\n\n"
open(report, "w").write(head + heading + "\n\n" + cmd + body)
PY
echo "bench.sh: spliced the modeled GPU metrics into $GHOSTGRAD_BENCH_REPORT"

# LoGra projection vs the TRAK-style and LogIX-style baselines and the GEMM rate
# (benches/projection.rs writes target/projection_bench.md), spliced into the report's
# "LoGra projection vs baselines (CPU)" section (replaced if present, else appended).
cargo bench --no-default-features --bench projection
python3 - "$GHOSTGRAD_BENCH_REPORT" "$root/target/projection_bench.md" <<'PY'
import sys
report, section = sys.argv[1], sys.argv[2]
heading = "## LoGra projection vs baselines (CPU)"
text = open(report).read()
body = open(section).read().strip() + "\n"
cmd = "Command: `bash scripts/bench.sh` (runs `cargo bench --no-default-features --bench projection`, which writes `target/projection_bench.md`).\n\n"
new = heading + "\n\n" + cmd + body
if heading in text:
    start = text.index(heading)
    rest = text[start + len(heading):]
    end = rest.find("\n## ")
    text = text[:start] + new + ("" if end < 0 else "\n" + rest[end + 1:])
else:
    text = text.rstrip() + "\n\n" + new
open(report, "w").write(text)
PY
echo "bench.sh: spliced the LoGra projection benchmarks into $GHOSTGRAD_BENCH_REPORT"

# In-Run Data Shapley inside training (examples/inrun_shapley_demo.rs, CPU backend): ROC AUC for
# the flipped labels and the overhead against plain training, seeds 0-2, spliced into the report's
# "In-Run Data Shapley demo" section.
demo_out="$CARGO_TARGET_DIR/inrun_demo.txt"
: > "$demo_out"
cargo build --release --example inrun_shapley_demo
for seed in 0 1 2; do
  echo "=== seed $seed" >> "$demo_out"
  "$CARGO_TARGET_DIR/release/examples/inrun_shapley_demo" --device cpu --seed "$seed" --repeats 5 --plot "$CARGO_TARGET_DIR/inrun_values_$seed.svg" 2>/dev/null >> "$demo_out"
done
python3 - "$demo_out" "$demo_out.md" <<'PY'
import re, sys
demo = sys.argv[1]
rows, cfg = [], ""
for block in open(demo).read().split("=== seed ")[1:]:
    seed = block.split("\n", 1)[0].strip()
    auc = re.search(r"first order ([0-9.]+), first \+ second order ([0-9.]+)", block)
    ov = re.search(r"overhead: ([0-9.]+)x wall clock \(([0-9.]+) s attributed training vs ([0-9.]+) s plain", block)
    parts = re.search(r"JVP \(the framework's part\) [0-9.]+ s = ([0-9.]+)x plain, ghostgrad .*? [0-9.]+ s = ([0-9.]+)x plain", block)
    cfg = next(l for l in block.splitlines() if l.startswith("digits:"))
    rows.append(f"| {seed} | {auc[1]} | **{auc[2]}** | {ov[1]}× ({ov[2]} s vs {ov[3]} s) | {parts[1]}× | {parts[2]}× |")
body = (f"Command: `bash scripts/bench.sh` (runs `inrun_shapley_demo --device cpu --seed S --repeats 5`). "
        f"Configuration: {re.sub(r'^seed [0-9]+, ', '', cfg.split(': ', 1)[1])}. Overhead = attributed training / plain training, "
        "fastest of 5 alternating runs each; split into the validation minibatch's forward + JVP "
        "(the framework's work) and ghostgrad's calls (uploads, ghg, accumulate_values). Goals: AUC ≥ 0.9, overhead ≤ 1.3×.\n\n"
        "| seed | AUC first order | AUC first + second order | overhead | validation pass + JVP | ghostgrad |\n|---|---|---|---|---|---|\n"
        + "\n".join(rows) + "\n")
open(sys.argv[2], "w").write(body)
PY
splice_before_model "## In-Run Data Shapley demo: flipped-label AUC and overhead (CPU)" "$demo_out.md"
echo "bench.sh: spliced the In-Run demo results into $GHOSTGRAD_BENCH_REPORT"

# Data value embedding (benches/dvemb.rs): the per-step reverse sweep (memory-bound) against the
# blocked form (compute-bound) on the fast CPU path, plus the modeled H100 comparison of the two
# GPU plans; the tables it prints are spliced into the report's "Data value embedding" section.
dvemb_out="$CARGO_TARGET_DIR/dvemb_bench.txt"
cargo bench --bench dvemb > "$dvemb_out"
python3 - "$dvemb_out" "$dvemb_out.md" <<'PY'
import sys
out = sys.argv[1]
lines = open(out).read().splitlines()
keep, on = [], False
for l in lines:
    if l.startswith("| k |") or l.startswith("Modeled H100") or l.startswith("| algorithm |"):
        on = True
    if on and not (l.startswith("|") or l.startswith("Modeled H100")):
        on = False
        keep.append("")
    if on:
        keep.append(l)
body = ("Command: `bash scripts/bench.sh` (runs `cargo bench --bench dvemb`). Rates count the per-step "
        "recursion's 4·R·k² flops, so they compare the algorithms as speed; the blocked form executes a "
        "few % more. CPU timings on the shared 2-core machine (compare with the GEMM rate at the top of this file); the H100 rows are a model from the "
        "interpreter's counters, not a measurement.\n\n" + "\n".join(keep).strip() + "\n")
open(sys.argv[2], "w").write(body)
PY
splice_before_model "## Data value embedding: per step vs blocked" "$dvemb_out.md"
echo "bench.sh: spliced the DVEmb benchmarks into $GHOSTGRAD_BENCH_REPORT"
