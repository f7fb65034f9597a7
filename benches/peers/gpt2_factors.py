"""Factors of every Conv1D layer of a small HuggingFace GPT-2, captured from one training step.

A randomly initialized ``GPT2LMHeadModel`` (no download: 4 layers, n_embd 256, 4 heads, GPT-2's
vocabulary size) runs one forward + backward of the summed token loss of N training sequences of
T tokens, and once more for a validation batch. Forward hooks keep each Conv1D's input
``x`` [rows, d_in] and a tensor hook on its output keeps ``b = ∂loss/∂y`` [rows, d_out]
(per-sample gradients of a summed loss: G_n = Σ_t b_{n,t} x_{n,t}ᵀ, MATH.md §0). The weight of
an HF Conv1D is stored [d_in, d_out]; the math of a linear layer d_in → d_out is the same.
"""

import torch


def capture(n=8, t=128, n_val=8, n_layer=4, n_embd=256, seed=0):
    """Returns (names, layers): layers[l] = (a [n, t, d_in], b [n, t, d_out], aq [n_val·t, d_in],
    bq [n_val·t, d_out]) f32 contiguous, in model order (16 Conv1D layers for n_layer = 4)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=4, n_positions=max(t, 128), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).float()
    model.train()
    mods = [(name, m) for name, m in model.named_modules() if isinstance(m, Conv1D)]
    store = {}

    def hook(name):
        def f(mod, inp, out):
            store.setdefault(name, {})["x"] = inp[0].detach()
            out.register_hook(lambda g: store[name].__setitem__("b", g.detach()))
        return f

    handles = [m.register_forward_hook(hook(name)) for name, m in mods]

    def step(batch):
        ids = torch.randint(0, cfg.vocab_size, (batch, t))
        model.zero_grad()
        logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
        loss.backward()
        return {name: (store[name]["x"].contiguous(), store[name]["b"].contiguous()) for name, _ in mods}

    train = step(n)
    val = step(n_val)
    for h in handles:
        h.remove()
    layers = []
    for name, _ in mods:
        a, b = train[name]
        aq, bq = val[name]
        layers.append((a.reshape(n, t, -1).contiguous(), b.reshape(n, t, -1).contiguous(), aq.reshape(-1, aq.shape[-1]).contiguous(), bq.reshape(-1, bq.shape[-1]).contiguous()))
    return [name for name, _ in mods], layers
