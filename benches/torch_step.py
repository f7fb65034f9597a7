"""Per-model training-step time: plain SGD vs with In-Run values (first order; first + second
order) through ghostgrad.torch, vs a pure-torch implementation of the GhostSuite method written
here (validation rows concatenated onto the training batch, one forward and backward, then per
Linear layer two bmm score matrices A_tr A_valᵀ and B_tr B_valᵀ, multiplied and summed).

Interleaved rounds (each round times one step of every mode in turn), median per mode; ratios
against plain. Memory: bytes held by the attribution between backward and valuation (captured
factors, dense queries), counted from the tensors themselves (no CPU allocator statistics exist
in torch); on CUDA the allocator's peak. Validation batch = batch/8.

    PYTHONPATH=target/python:python .toolchain/venv/bin/python benches/torch_step.py [--rounds 7] [--md out.md]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from ghostgrad.torch import InRunShapley, attach  # noqa: E402


def gpt2(vocab=96, t=48, d=48):
    import transformers

    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=t, n_embd=d, n_layer=2, n_head=4,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = "eager"
    return transformers.GPT2LMHeadModel(cfg)


class RMSMLP(nn.Module):
    def __init__(self, d_in=64, d=256, classes=10):
        super().__init__()
        self.inp, self.norm = nn.Linear(d_in, d), nn.RMSNorm(d)
        self.hid, self.out = nn.Linear(d, d), nn.Linear(d, classes)

    def forward(self, x):
        return self.out(torch.tanh(self.hid(torch.tanh(self.norm(self.inp(x))))))


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).flatten(1))


def lm_loss(logits, labels):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))


def workloads(batch):
    g = torch.Generator().manual_seed(0)
    v = max(1, batch // 8)
    ids = torch.randint(1, 96, (batch + v, 48), generator=g)
    x = torch.randn(batch + v, 16, 64, generator=g)
    y = torch.randint(0, 10, (batch + v, 16), generator=g)
    im = torch.randn(batch + v, 3, 16, 16, generator=g)
    yi = torch.randint(0, 10, (batch + v,), generator=g)
    return [
        ("GPT-2 (2 layers, d 48, T 48, vocab 96)", gpt2, lambda m, s: lm_loss(m(input_ids=ids[s]).logits, ids[s]), batch, v),
        ("RMSNorm + Linear MLP (T 16, d 256)", RMSMLP, lambda m, s: F.cross_entropy(m(x[s]).transpose(1, 2), y[s]), batch, v),
        ("Conv2d net (16×16×3, 2 conv + fc)", ConvNet, lambda m, s: F.cross_entropy(m(im[s]), yi[s]), batch, v),
    ]


class GhostSuiteStyle:
    """Pure torch, first order: hooks on Linear / HF Conv1D layers; the validation rows ride in
    the training batch; per layer s[n] = Σ_t Σ_u (a_t·a_u)(b_t·b_u) by two bmm's. Covers only
    the Linear-type layers (as GhostSuite's engine does), so it does less work than ghostgrad.torch,
    which also values embeddings, norms and tied parameters. The optimizer step here uses the
    gradient of train + validation rows (GhostSuite removes the validation part; not counted)."""

    def __init__(self, model, n_train):
        att = attach(model)
        self.mods = [u.module for u in att.uses if u.kind in ("linear", "linear_inout")]
        self.n = n_train
        self.seen = {}
        for m in self.mods:
            m.register_forward_hook(self._hook)

    def _hook(self, m, inp, out):
        a = inp[0].detach()
        rec = self.seen.setdefault(id(m), [a.reshape(a.shape[0], -1, a.shape[-1]), None])
        out.register_hook(lambda g: rec.__setitem__(1, g.detach().reshape(g.shape[0], -1, g.shape[-1])))

    def scores(self):
        n, total = self.n, 0.0
        for a, b in self.seen.values():
            at, av = a[:n], a[n:].reshape(1, -1, a.shape[-1])
            bt, bv = b[:n], b[n:].reshape(1, -1, b.shape[-1])
            sa = torch.bmm(at, av.transpose(1, 2).expand(n, -1, -1))  # [n, T, V·T]
            sb = torch.bmm(bt, bv.transpose(1, 2).expand(n, -1, -1))
            total = total + (sa * sb).sum((1, 2))
        self.seen = {}
        return total


def run_mode(mode, make, loss_fn, batch, v, state):
    model, opt, extra = state[mode]
    tr, va = slice(0, batch), slice(batch, batch + v)
    t0 = time.perf_counter()
    if mode == "plain":
        loss_fn(model, tr).backward()
    elif mode == "ghostsuite":
        both = slice(0, batch + v)
        # train rows with the training loss, validation rows with the validation loss: one pass
        (loss_fn(model, both) * 1.0).backward()
        extra.scores()
    else:
        with extra.record(torch.arange(batch)):
            loss_fn(model, tr).backward()
        extra.value_step(lambda: loss_fn(model, va))
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def captured_bytes(sh):
    total = 0
    for _, caps in sh._micro:
        for cs in caps.values():
            for c in cs:
                total += sum(t.numel() * t.element_size() for t in (c.x, c.b) if t is not None)
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--md", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    for name, make, loss_fn, batch, v in workloads(args.batch):
        state = {}
        for mode in ("plain", "first", "both", "ghostsuite"):
            torch.manual_seed(1)
            model = make()
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            extra = None
            if mode in ("first", "both"):
                extra = InRunShapley(model, opt, num_samples=batch, second_order=(mode == "both"))
            elif mode == "ghostsuite":
                extra = GhostSuiteStyle(model, batch)
            state[mode] = (model, opt, extra)
        times = {m: [] for m in state}
        for r in range(args.rounds + 1):
            for mode in state:
                t = run_mode(mode, make, loss_fn, batch, v, state)
                if r > 0:  # round 0 warms up
                    times[mode].append(t)
        med = {m: statistics.median(ts) for m, ts in times.items()}
        # memory held by the attribution: captured factors after one backward (first-order mode)
        model, opt, sh = state["first"]
        with sh.record(torch.arange(batch)):
            loss_fn(model, slice(0, batch)).backward()
        cap = captured_bytes(sh)
        sh._micro = []
        opt.zero_grad(set_to_none=True)
        pbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        rows.append((name, med, cap, pbytes))
        print(f"{name}: plain {med['plain'] * 1e3:.1f} ms, first {med['first'] / med['plain']:.2f}×, "
              f"first+second {med['both'] / med['plain']:.2f}×, GhostSuite-style {med['ghostsuite'] / med['plain']:.2f}×", flush=True)
    lines = [f"Training step on this CPU ({torch.get_num_threads()} threads), batch {args.batch}, validation batch {max(1, args.batch // 8)}, "
             f"median of {args.rounds} interleaved rounds:", "",
             "| model | plain step | first order | first + second order | GhostSuite-style pure torch (first order) | first order vs GhostSuite-style | captured factors | parameters |",
             "|---|---|---|---|---|---|---|---|"]
    for name, med, cap, pbytes in rows:
        p = med["plain"]
        lines.append(f"| {name} | {p * 1e3:.1f} ms | {med['first'] * 1e3:.1f} ms ({med['first'] / p:.2f}×) | "
                     f"{med['both'] * 1e3:.1f} ms ({med['both'] / p:.2f}×) | {med['ghostsuite'] * 1e3:.1f} ms ({med['ghostsuite'] / p:.2f}×) | "
                     f"{med['first'] / med['ghostsuite']:.2f}× | {cap / 2**20:.2f} MiB | {pbytes / 2**20:.2f} MiB |")
    text = "\n".join(lines)
    print(text)
    if args.md:
        Path(args.md).write_text(text + "\n")


if __name__ == "__main__":
    main()
