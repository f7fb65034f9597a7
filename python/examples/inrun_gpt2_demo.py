"""The main job: In-Run Data Shapley inside the training of a small GPT-2 on real text.

Corpus: the docstrings of CPython's own standard library (read from the .py sources with `ast`,
nothing imported, nothing downloaded), as character-level documents. 10 % of the training
documents are corrupted (half with their characters shuffled, half replaced by random
characters). A GPT-2 (transformers' GPT2LMHeadModel, tiny config, from scratch) is trained by
plain SGD; at every step ghostgrad.torch values every training document against a fresh
validation minibatch (first order, and first + second order, MATH.md §2). The corrupted
documents should get the lowest values: the ROC AUC of "low value ⇒ corrupted" is printed
for both orders, with the most and least valuable documents, the overhead against the same
training without attribution (same seed, so the same trajectory: checked bitwise), and a plot.

    bash scripts/run-demo.sh            # = python python/examples/inrun_gpt2_demo.py
    bash scripts/run-demo.sh --epochs 6 --seed 1
"""
from __future__ import annotations

import argparse
import ast
import os
import random
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ghostgrad.torch import InRunShapley, causal_lm_token_mask

PAD = 0
CHARS = [chr(c) for c in range(32, 127)]  # printable ASCII; id 0 = padding
STOI = {c: i + 1 for i, c in enumerate(CHARS)}
VOCAB = len(CHARS) + 1


def stdlib_docstrings(min_len: int, max_len: int) -> list[str]:
    """Paragraphs of the docstrings in the standard library's .py files (sorted walk, so the
    same Python version gives the same corpus), whitespace collapsed, printable ASCII only."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, seen = [], set()
    for path in sorted(root.glob("*.py")):
        if any(part in ("test", "tests", "idlelib", "site-packages", "lib2to3") for part in path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            for para in doc.split("\n\n"):
                text = " ".join(para.split())
                if len(text) < min_len or not all(c in STOI for c in text) or text in seen:
                    continue
                if sum(c.isalpha() for c in text) < 0.6 * len(text):  # skip code-like snippets
                    continue
                seen.add(text)
                docs.append(text[:max_len])
    return docs


def corrupt(text: str, rng: random.Random, kind: str) -> str:
    if kind == "shuffle":
        chars = list(text)
        rng.shuffle(chars)
        return "".join(chars)
    return "".join(rng.choice(CHARS) for _ in text)


def encode(texts: list[str], t: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(texts), t), PAD, dtype=torch.long)
    attn = torch.zeros((len(texts), t), dtype=torch.long)
    for i, s in enumerate(texts):
        row = [STOI[c] for c in s[:t]]
        ids[i, : len(row)] = torch.tensor(row)
        attn[i, : len(row)] = 1
    return ids, attn


def lm_loss(logits, labels):
    """Mean next-token cross-entropy over the labelled tokens (HuggingFace's reduction)."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100)


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney)."""
    s = scores.double()
    pos, neg = s[positive], s[~positive]
    greater = (pos[:, None] > neg[None, :]).double().sum() + 0.5 * (pos[:, None] == neg[None, :]).double().sum()
    return float(greater / (pos.numel() * neg.numel()))


def make_model(args, device):
    import transformers

    torch.manual_seed(args.seed)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=args.seq, n_embd=args.d, n_layer=args.layers, n_head=args.heads,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=PAD, eos_token_id=PAD)
    cfg._attn_implementation = "eager"  # double backward (the HVP) through plain ops
    return transformers.GPT2LMHeadModel(cfg).to(device)


def train(args, data, device, attribute: bool, desc: str):
    """One training run; with `attribute`, In-Run values of every training document."""
    ids, attn, labels, vids, vattn, vlabels = data
    model = make_model(args, device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    shapley = InRunShapley(model, opt, num_samples=ids.shape[0], engine=args.engine) if attribute else None
    order = torch.Generator().manual_seed(args.seed + 1)
    val_pick = torch.Generator().manual_seed(args.seed + 2)
    steps = args.epochs * (ids.shape[0] // args.batch)
    t_attr = 0.0
    losses = []
    bar = tqdm(total=steps, desc=desc, unit="step", leave=False, dynamic_ncols=True)
    start = time.perf_counter()
    for _ in range(args.epochs):
        perm = torch.randperm(ids.shape[0], generator=order)
        for s in range(ids.shape[0] // args.batch):
            rows = perm[s * args.batch:(s + 1) * args.batch]
            x, a, y = ids[rows].to(device), attn[rows].to(device), labels[rows].to(device)
            vrows = torch.randint(0, vids.shape[0], (args.val_batch,), generator=val_pick)
            if attribute:
                with shapley.record(rows, token_mask=causal_lm_token_mask(y, a)):
                    loss = lm_loss(model(input_ids=x, attention_mask=a).logits, y)
                    loss.backward()
                t0 = time.perf_counter()
                vx, va, vy = vids[vrows].to(device), vattn[vrows].to(device), vlabels[vrows].to(device)
                shapley.value_step(lambda: lm_loss(model(input_ids=vx, attention_mask=va).logits, vy))
                t_attr += time.perf_counter() - t0
            else:
                loss = lm_loss(model(input_ids=x, attention_mask=a).logits, y)
                loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    total = time.perf_counter() - start
    final = [p.detach().cpu().clone() for p in model.parameters()]
    return dict(model=model, shapley=shapley, time=total, t_attr=t_attr, losses=losses, params=final)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-docs", type=int, default=320)
    ap.add_argument("--val-docs", type=int, default=100)
    ap.add_argument("--corrupt", type=float, default=0.10)
    ap.add_argument("--corruption", choices=["random", "shuffle", "mixed"], default="random",
                    help="random characters, shuffled characters, or half of each")
    ap.add_argument("--seq", type=int, default=40, help="characters per document (longer ones are cut)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--val-batch", type=int, default=4, help="validation documents per step (≤ batch/8)")
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    ap.add_argument("--engine", choices=["ghostgrad", "torch"], default="ghostgrad",
                    help="ghostgrad: values by ghostgrad's model_dot / model_ghg kernels; torch: the pure-torch engine")
    ap.add_argument("--repeats", type=int, default=1, help="plain runs to time (the fastest is the baseline)")
    ap.add_argument("--plot", default="target/inrun_gpt2_values.png")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    docs = stdlib_docstrings(min_len=args.seq // 2, max_len=args.seq)
    rng = random.Random(args.seed)
    rng.shuffle(docs)
    need = args.train_docs + args.val_docs
    if len(docs) < need:
        raise SystemExit(f"only {len(docs)} docstring paragraphs found in the standard library; ask for fewer documents")
    train_docs, val_docs = docs[: args.train_docs], docs[args.train_docs:need]
    bad = sorted(rng.sample(range(args.train_docs), int(round(args.corrupt * args.train_docs))))
    is_bad = torch.zeros(args.train_docs, dtype=torch.bool)
    is_bad[bad] = True
    texts = list(train_docs)
    for j, i in enumerate(bad):
        kind = args.corruption if args.corruption != "mixed" else ("shuffle" if j % 2 == 0 else "random")
        texts[i] = corrupt(texts[i], rng, kind)
    ids, attn = encode(texts, args.seq)
    vids, vattn = encode(val_docs, args.seq)
    labels = torch.where(attn.bool(), ids, torch.full_like(ids, -100))
    vlabels = torch.where(vattn.bool(), vids, torch.full_like(vids, -100))
    data = (ids, attn, labels, vids, vattn, vlabels)
    print(f"corpus: {len(docs)} docstring paragraphs of {sysconfig.get_paths()['stdlib']} (Python {sysconfig.get_python_version()}); "
          f"{args.train_docs} training documents ({len(bad)} corrupted: {args.corruption} characters), {args.val_docs} validation")
    print(f"model: GPT2LMHeadModel n_layer={args.layers} n_embd={args.d} n_head={args.heads} vocab={VOCAB} T={args.seq}, "
          f"SGD lr={args.lr}, batch {args.batch}, validation minibatch {args.val_batch}/step, {args.epochs} epochs, device {device}")

    # plain, attributed (and with --repeats 2, plain again: the fastest plain run is the baseline)
    plain = train(args, data, device, False, "plain")
    attributed = train(args, data, device, True, "with In-Run values")
    base = plain["time"]
    for r in range(1, args.repeats):
        base = min(base, train(args, data, device, False, f"plain (again, {r})")["time"])
    same = all(torch.equal(a, b) for a, b in zip(plain["params"], attributed["params"]))
    sh = attributed["shapley"]
    first, both = sh.values_first.cpu(), sh.values.cpu()
    auc1, auc2 = roc_auc(-first, is_bad), roc_auc(-both, is_bad)
    print(f"\ntraining loss {attributed['losses'][0]:.3f} → {sum(attributed['losses'][-10:]) / 10:.3f} (mean of the last 10 steps)")
    print(f"ROC AUC, low value ⇒ corrupted:  first order {auc1:.3f}   first + second order {auc2:.3f}")
    print(f"ROC AUC, the other way (high value ⇒ corrupted): first order {1 - auc1:.3f}   first + second order {1 - auc2:.3f}")
    over = attributed["time"] / base
    print(f"time: plain {base:.1f} s, with values {attributed['time']:.1f} s: overhead {over:.2f}× "
          f"(validation pass + HVP + ghostgrad.torch valuation {attributed['t_attr'] / base:.2f}×); "
          f"final parameters bitwise equal to the plain run: {same}")
    order = torch.argsort(both)
    show = lambda i: f"{both[i]:+.3e} {'CORRUPTED' if is_bad[i] else 'clean    '} {texts[i][:70]!r}"
    print("\nleast valuable training documents:")
    for i in order[:6].tolist():
        print("  " + show(i))
    print("most valuable training documents:")
    for i in order.flip(0)[:6].tolist():
        print("  " + show(i))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for ax, vals, name, auc in ((axes[0], first, "first order", auc1), (axes[1], both, "first + second order", auc2)):
            lo, hi = float(vals.min()), float(vals.max())
            bins = torch.linspace(lo, hi, 40).tolist()
            ax.hist(vals[~is_bad].tolist(), bins=bins, alpha=0.7, label="clean")
            ax.hist(vals[is_bad].tolist(), bins=bins, alpha=0.7, label="corrupted")
            ax.set_title(f"In-Run value, {name} (AUC {auc:.3f})")
            ax.set_xlabel("accumulated value")
            ax.legend()
        fig.tight_layout()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=110)
        print(f"\nplot: {args.plot}")
    except ImportError:
        print("\n(matplotlib missing: no plot)")


if __name__ == "__main__":
    main()
