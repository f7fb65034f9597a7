"""Per-call overhead of the Python layer on ghost_dot: the public call (DLPack imports, checks,
output allocation) against the bare native call with the arrays already imported (≈ the Rust
API plus one PyO3 call), interleaved, median of each. Usage: python overhead.py [reps]."""

import sys
import time

import numpy as np
import torch

import ghostgrad as gg
from ghostgrad import _core, _native


def median_us(f, reps):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e6


def case(name, n, t, d_in, d_out, q, reps, fw):
    rng = np.random.default_rng(0)
    mk = (lambda a: torch.from_numpy(a)) if fw == "torch" else (lambda a: a)
    a, b = mk(rng.standard_normal((n, t, d_in), np.float32)), mk(rng.standard_normal((n, t, d_out), np.float32))
    aq, bq = mk(rng.standard_normal((1, q, d_in), np.float32)), mk(rng.standard_normal((1, q, d_out), np.float32))
    out = mk(np.empty((n, 1), np.float32))
    tr, qu = gg.Factors(a, b), gg.Factors(aq, bq)
    ctx = _core.host_context(None)
    arrs = [_native.Array(x, "x") for x in (a, b, aq, bq, out)]
    native = [((d_in, d_out, arrs[0], arrs[1], n, t, None), (arrs[2], arrs[3], q, ("uniform", q), None), False, 1)]
    full = lambda: gg.ghost_dot(tr, qu, out=out, form="gram")
    bare = lambda: ctx.ghost_dot_layers(native, arrs[4], 1.0, 0.0)
    full(), bare()
    fs, bs = [], []
    for _ in range(5):  # interleaved rounds
        fs.append(median_us(full, reps))
        bs.append(median_us(bare, reps))
    f, b_ = min(fs), min(bs)
    print(f"| {name} ({fw}) | {b_:.1f} µs | {f:.1f} µs | {f - b_:.1f} µs | {100 * (f - b_) / b_:.2f} % |")


if __name__ == "__main__":
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    print("| ghost_dot shape | native call (arrays imported) | public Python call | overhead | overhead / call |")
    print("|---|---|---|---|---|")
    for fw in ("numpy", "torch"):
        case("small N=4 T=8 64→64 Q=8", 4, 8, 64, 64, 8, reps, fw)
        case("GPT-2 MLP N=4 T=128 768→3072 Q=128", 4, 128, 768, 3072, 128, max(3, reps // 100), fw)
