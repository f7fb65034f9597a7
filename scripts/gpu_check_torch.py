"""The cuBLAS-backed peer baseline of the device check (scripts/gpu-check.sh): the Gram form of the
ghost dot-product as a framework writes it, two batched GEMMs and a Hadamard reduction,

    s[n] = sum_{t,u} (A_n Aq^T)_{t,u} (B_n Bq^T)_{t,u}      (MATH.md §1, one query segment)

with torch.bmm in bf16 (tensor cores through cuBLAS, f32 accumulation), timed with CUDA events
(2 warm-ups, median of 5) at the shapes of benches/gpu_model.rs and MATH.md §7. Writes a markdown
table. Without a GPU (`--device cpu`, the CI run of gpu-check.sh --interp) it runs the same code
at tiny shapes on the CPU, checks the result against float64, and reports no timings.
"""

import argparse
import statistics
import sys
import time

# (name, N, T, Q, d_in, d_out): the gpu_model rows, then MATH.md §7's GPT-2 row (T = Q = 1024).
SHAPES = [
    ("GPT-2 MLP c_fc (bench)", 16, 512, 512, 768, 3072),
    ("GPT-2 MLP c_proj (bench)", 16, 512, 512, 3072, 768),
    ("GPT-2 MLP c_fc (MATH §7)", 16, 1024, 1024, 768, 3072),
    ("GPT-2 MLP c_proj (MATH §7)", 16, 1024, 1024, 3072, 768),
]
TINY = [("tiny", 2, 7, 5, 6, 9)]


def gram_form(torch, a, b, aq, bq):
    """s[n] = sum((A_n Aq^T) * (B_n Bq^T)) with two torch.bmm calls (score tensors in f32)."""
    n = a.shape[0]
    sa = torch.bmm(a, aq.t().unsqueeze(0).expand(n, -1, -1)).float()
    sb = torch.bmm(b, bq.t().unsqueeze(0).expand(n, -1, -1)).float()
    return (sa * sb).sum(dim=(1, 2))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--out", required=True, help="markdown file to write")
    args = p.parse_args()
    try:
        import torch
    except ImportError as e:
        open(args.out, "w").write(f"torch baseline not run: torch is not importable ({e}).\n")
        print(f"gpu_check_torch: torch not importable: {e}", file=sys.stderr)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        open(args.out, "w").write("torch baseline not run: torch.cuda.is_available() is False.\n")
        print("gpu_check_torch: no CUDA device visible to torch", file=sys.stderr)
        return 0
    dev = torch.device(args.device)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    rows = []
    g = torch.Generator(device="cpu").manual_seed(0)
    for name, n, t, q, di, do in SHAPES if args.device == "cuda" else TINY:
        a = torch.randn(n, t, di, generator=g).to(dev, dtype)
        b = torch.randn(n, t, do, generator=g).to(dev, dtype)
        aq = torch.randn(q, di, generator=g).to(dev, dtype)
        bq = torch.randn(q, do, generator=g).to(dev, dtype)
        s = gram_form(torch, a, b, aq, bq)
        ref = gram_form(torch, a.double().cpu(), b.double().cpu(), aq.double().cpu(), bq.double().cpu())
        rel = float(((s.double().cpu() - ref).abs().max() / ref.abs().max()).item())
        flops = 2.0 * n * t * q * (di + do)
        if args.device == "cuda":
            times = []
            for rep in range(7):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                gram_form(torch, a, b, aq, bq)
                end.record()
                end.synchronize()
                if rep >= 2:
                    times.append(start.elapsed_time(end) * 1e-3)
            tm = statistics.median(times)
            rows.append(f"| {name} | N={n} T={t} Q={q} {di}→{do} | {tm * 1e6:.1f} µs | {flops / tm / 1e12:.1f} TFLOP/s | {rel:.1e} |")
        else:
            t0 = time.perf_counter()
            gram_form(torch, a, b, aq, bq)
            rows.append(f"| {name} | N={n} T={t} Q={q} {di}→{do} | CPU (no GPU timing) {1e6 * (time.perf_counter() - t0):.0f} µs | - | {rel:.1e} |")
            if rel > 1e-4:
                print(f"gpu_check_torch: Gram form differs from float64 by {rel:e}", file=sys.stderr)
                return 1
    head = (
        f"torch {torch.__version__}, device {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}, "
        f"inputs {str(dtype).replace('torch.', '')}; Gram form by two torch.bmm + Hadamard sum (writes two [N, T, Q] "
        "score tensors, which the fused kernel never does); CUDA events, median of 5 after 2 warm-ups; "
        "rel. error = max |s − s_f64| / max |s_f64| on the same inputs.\n\n"
        "| shape | dims | time | rate | rel. error vs f64 |\n|---|---|---|---|---|\n"
    )
    open(args.out, "w").write(head + "\n".join(rows) + "\n")
    print(f"gpu_check_torch: wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
