"""ghostgrad.torch In-Run Data Shapley against per-sample gradients materialized with torch.func
(vmap of grad, float64) and an explicit Hessian-vector product (jvp of grad)."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ghostgrad.torch import (InRunShapley, UncoveredParameterError, UnsupportedOptimizerError, attach,
                             causal_lm_token_mask)
from ghostgrad.torch.reference import inrun_values, per_sample_grads, val_grad_and_hvp

transformers = pytest.importorskip("transformers")


def tiny_gpt2(seed=0, vocab=97, dtype=torch.float64):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True)
    cfg._attn_implementation = "eager"
    m = transformers.GPT2LMHeadModel(cfg).to(dtype)
    with torch.no_grad():  # non-trivial norm parameters
        for mod in m.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.weight.add_(0.3 * torch.randn_like(mod.weight))
                mod.bias.add_(0.1 * torch.randn_like(mod.bias))
    return m


class RMSMLP(nn.Module):
    """Per-token model: Linear → RMSNorm → tanh → one square weight applied three times (one module
    called twice, a second module tied to it) → Linear."""

    def __init__(self, d_in=7, d=12, classes=5):
        super().__init__()
        self.inp = nn.Linear(d_in, d)
        self.norm = nn.RMSNorm(d, eps=1e-5)
        self.mid = nn.Linear(d, d, bias=False)
        self.mid2 = nn.Linear(d, d, bias=False)
        self.mid2.weight = self.mid.weight  # tied through a second module
        self.out = nn.Linear(d, classes)

    def forward(self, x):
        h = torch.tanh(self.norm(self.inp(x)))
        h = torch.tanh(self.mid(h))
        h = torch.tanh(self.mid(h))  # the same module twice: two captures of one use
        h = torch.tanh(self.mid2(h))
        return self.out(h)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 3, (2, 3), stride=2, bias=False)
        self.c3 = nn.Conv1d(3, 3, 2)
        self.fc = nn.Linear(3 * 2, 4)

    def forward(self, x):
        h = torch.tanh(self.c1(x))
        h = torch.tanh(self.c2(h))  # [N, 3, 3, 3]
        h = torch.tanh(self.c3(h.flatten(2)[:, :, :3]))  # [N, 3, 2]
        return self.fc(h.flatten(1))


def lm_loss(logits, labels):
    """HuggingFace's causal-LM loss (mean over the labelled next tokens) in the logits' dtype
    (HF's own upcasts to float32, which would limit a float64 comparison to ~1e-7)."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


def check_close(got, want, rtol):
    err = (got - want).abs().max() / want.abs().max()
    assert err < rtol, f"relative error {err:.3e}"


def poison_masked(shapley):
    """NaN into every masked row of the captured factors: masked rows must never be read."""
    for _, captured in shapley._micro:
        for caps in captured.values():
            for cap in caps:
                if cap.mask is None:
                    continue
                drop = ~cap.mask  # clones: the captured x may share memory with the caller's input
                cap.b = cap.b.clone()
                cap.b[drop] = float("nan")
                cap.x = cap.x.clone()
                cap.x[drop] = float("nan") if cap.x.dtype.is_floating_point else 10 ** 6  # an id outside the table


def test_gpt2_padding_accumulation_matches_torch_func():
    model = tiny_gpt2()
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names  # tied to transformer.wte.weight: one parameter
    att = attach(model)
    wte = [p for p in att.params if p.name == "transformer.wte.weight"][0]
    assert sorted(u.name for u in wte.uses) == ["lm_head", "transformer.wte"]
    assert {u.kind for u in att.uses} == {"embedding", "linear", "linear_inout", "norm"}
    lr = 0.3
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(1)
    n, t = 6, 11
    ids = torch.randint(0, 97, (n, t), generator=g)
    lengths = torch.tensor([11, 7, 9, 3, 11, 5])
    attn = (torch.arange(t)[None, :] < lengths[:, None]).long()
    labels = torch.where(attn.bool(), ids, torch.full_like(ids, -100))
    val = torch.randint(0, 97, (3, 9), generator=g)
    micro = [slice(0, 4), slice(4, 6)]
    k_tok = [int((labels[s][:, 1:] != -100).sum()) for s in micro]

    shapley = InRunShapley(model, opt, num_samples=20)
    gids = torch.tensor([3, 17, 5, 0, 9, 3 + 1])
    for j, s in enumerate(micro):
        with shapley.record(gids[s], token_mask=causal_lm_token_mask(labels[s], attn[s])):
            logits = model(input_ids=ids[s], attention_mask=attn[s]).logits
            (lm_loss(logits, labels[s]) / len(micro)).backward()  # mean over the micro-batch's tokens
    poison_masked(shapley)
    val_loss = lambda: lm_loss(model(input_ids=val).logits, val)
    step = shapley.value_step(val_loss)
    assert torch.isfinite(step).all()

    # reference: per-sample share of the back-propagated loss, float64
    def sample_loss(fn, x, y, a, c):
        logits = fn(input_ids=x, attention_mask=a).logits
        return c.squeeze() * F.cross_entropy(logits[0, :-1], y[0, 1:], ignore_index=-100, reduction="sum")

    scale = torch.cat([torch.full((s.stop - s.start,), 1.0 / (len(micro) * k), dtype=torch.float64) for s, k in zip(micro, k_tok)]).double()
    G = per_sample_grads(model, names, sample_loss, [ids, labels, attn, scale])
    u = {k: lr * p.grad for k, p in model.named_parameters()}
    gv, hu = val_grad_and_hvp(model, names, lambda fn: lm_loss(fn(input_ids=val).logits, val), u)
    first, second = inrun_values(G, gv, hu, {k: lr for k in names})
    # the per-sample grads sum to p.grad
    for k, p in model.named_parameters():
        check_close(G[k].sum(0), p.grad, 1e-10)
    check_close(step[:, 0], first, 1e-9)
    check_close(step[:, 1], second, 1e-9)
    assert second.abs().max() > 1e-3 * first.abs().max()  # the second-order term is not negligible here
    want = torch.zeros(20, dtype=torch.float64).index_add_(0, gids, first)
    check_close(shapley.values_first, want, 1e-9)  # id 3 appears once, 4 once: accumulated by id


def test_rmsnorm_linear_tied_nan_padding_matches_torch_func():
    torch.manual_seed(2)
    model = RMSMLP().double()
    with torch.no_grad():
        model.norm.weight.add_(0.5 * torch.randn_like(model.norm.weight))
    att = attach(model)
    assert len(att.params[[p.name for p in att.params].index("mid.weight")].uses) == 2
    lr = 0.7
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    n, t = 5, 6
    x = torch.randn(n, t, 7, dtype=torch.float64)
    y = torch.randint(0, 5, (n, t))
    mask = torch.rand(n, t) > 0.3
    mask[:, 0] = True
    xv, yv = torch.randn(4, 7, dtype=torch.float64), torch.randint(0, 5, (4,))

    shapley = InRunShapley(model, opt, num_samples=n)
    with shapley.record(torch.arange(n), token_mask=mask):
        tok = F.cross_entropy(model(x).transpose(1, 2), y, reduction="none")
        (tok * mask).sum().backward()
    poison_masked(shapley)
    assert len(shapley._micro[0][1][[u.name for u in att.uses].index("mid")]) == 2
    step = shapley.value_step(lambda: F.cross_entropy(model(xv), yv))
    assert torch.isfinite(step).all()

    names = [k for k, _ in model.named_parameters()]

    def sample_loss(fn, xn, yn, mn):
        return (F.cross_entropy(fn(xn).transpose(1, 2), yn, reduction="none") * mn).sum()

    G = per_sample_grads(model, names, sample_loss, [x, y, mask.double()])
    u = {k: lr * p.grad for k, p in model.named_parameters()}
    gv, hu = val_grad_and_hvp(model, names, lambda fn: F.cross_entropy(fn(xv), yv), u)
    first, second = inrun_values(G, gv, hu, {k: lr for k in names})
    check_close(step[:, 0], first, 1e-10)
    check_close(step[:, 1], second, 1e-10)


def test_conv_weight_decay_param_groups_float32():
    torch.manual_seed(3)
    model = ConvNet()
    ref = copy.deepcopy(model).double()
    groups = [{"params": [model.c1.weight, model.c1.bias, model.fc.weight], "lr": 0.2, "weight_decay": 0.05},
              {"params": [model.c2.weight, model.c3.weight, model.c3.bias, model.fc.bias], "lr": 0.5}]
    opt = torch.optim.SGD(groups, lr=0.1)
    x = torch.randn(7, 2, 6, 7)
    y = torch.randint(0, 4, (7,))
    xv, yv = torch.randn(3, 2, 6, 7), torch.randint(0, 4, (3,))
    shapley = InRunShapley(model, opt, num_samples=7)
    with shapley.record(torch.arange(7)):
        F.cross_entropy(model(x), y).backward()
    step = shapley.value_step(lambda: F.cross_entropy(model(xv), yv))

    names = [k for k, _ in ref.named_parameters()]
    lrs = {"c1.weight": 0.2, "c1.bias": 0.2, "fc.weight": 0.2}
    wd = {k: (0.05 if k in lrs else 0.0) for k in names}
    lrs = {k: lrs.get(k, 0.5) for k in names}
    G = per_sample_grads(ref, names, lambda fn, xn, yn: F.cross_entropy(fn(xn), yn, reduction="sum") / 7, [x.double(), y])
    grad = {k: G[k].sum(0) for k in names}
    p64 = dict(ref.named_parameters())
    u = {k: lrs[k] * (grad[k] + 2 * wd[k] * p64[k].detach()) for k in names}
    gv, hu = val_grad_and_hvp(ref, names, lambda fn: F.cross_entropy(fn(xv.double()), yv), u)
    first, second = inrun_values(G, gv, hu, lrs)
    check_close(step[:, 0], first, 2e-4)
    check_close(step[:, 1], second, 2e-3)


def test_uncovered_parameter_raises_and_ignore_opts_out():
    class WithScale(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.temperature = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return self.lin(x) / self.temperature

    with pytest.raises(UncoveredParameterError, match="'temperature'"):
        attach(WithScale())
    att = attach(WithScale(), ignore=["temperature"])
    assert [p.name for p in att.params] == ["lin.weight", "lin.bias"]
    with pytest.raises(ValueError, match="no parameter named 'nope'"):
        attach(WithScale(), ignore=["nope"])


def test_optimizers_other_than_plain_sgd_are_refused():
    m = nn.Linear(3, 2)
    with pytest.raises(UnsupportedOptimizerError, match="Adam"):
        InRunShapley(m, torch.optim.Adam(m.parameters()), num_samples=3)
    with pytest.raises(UnsupportedOptimizerError, match="momentum"):
        InRunShapley(m, torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), num_samples=3)
    with pytest.raises(ValueError, match=r"ids: values must lie in \[0, 3\)"):
        with InRunShapley(m, torch.optim.SGD(m.parameters(), lr=0.1), num_samples=3).record([0, 3]):
            pass


def test_attaching_changes_no_training_result_bitwise():
    def run(with_values):
        model = tiny_gpt2(seed=4, dtype=torch.float32)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        shapley = InRunShapley(model, opt, num_samples=8) if with_values else None
        g = torch.Generator().manual_seed(5)
        losses = []
        for _ in range(2):
            ids = torch.randint(0, 97, (4, 10), generator=g)
            ctx = shapley.record(torch.arange(4)) if with_values else torch.enable_grad()
            with ctx:
                loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
            if with_values:
                shapley.value_step(lambda: model(input_ids=ids[:2], labels=ids[:2]).loss)
            opt.step()
            opt.zero_grad()
            losses.append(loss.detach())
        return torch.stack(losses), [p.detach().clone() for p in model.parameters()]

    la, pa = run(False)
    lb, pb = run(True)
    assert torch.equal(la, lb)
    assert all(torch.equal(a, b) for a, b in zip(pa, pb))


@pytest.mark.parametrize("which", ["gpt2", "conv"])
def test_validation_factors_and_their_jvp_give_g_val_and_hvp(which):
    """The factored validation side (for ghostgrad.model_ghg): Σ_uses b_valᵀx_val is the
    validation gradient and Σ_uses ḃᵀx_val + b_valᵀẋ (bias only in the first) is H_val v, against
    autograd's gradient and torch.func's jvp-of-grad HVP, float64."""
    from ghostgrad.torch.attach import attach as attach_
    from ghostgrad.torch.valfactors import dense_from_factors, validation_factors

    torch.manual_seed(6)
    if which == "gpt2":
        model = tiny_gpt2(seed=6)
        val = torch.randint(0, 97, (3, 9))
        loss_of = lambda fn: lm_loss(fn(input_ids=val).logits, val)
    else:
        model = ConvNet().double()
        xv, yv = torch.randn(3, 2, 6, 7, dtype=torch.float64), torch.randint(0, 4, (3,))
        loss_of = lambda fn: F.cross_entropy(fn(xv), yv)
    att = attach_(model)
    v = [torch.randn_like(p.tensor) for p in att.params]
    loss, g_val, vals = validation_factors(att, lambda: loss_of(model), v)
    g_f = [torch.zeros_like(p.tensor) for p in att.params]
    h_f = [torch.zeros_like(p.tensor) for p in att.params]
    for vu in vals:
        use = att.uses[vu.use]
        bi = use.bias.index if use.bias is not None else None
        dense_from_factors(use, vu.x, vu.b, g_f[use.weight.index], None if bi is None else g_f[bi])
        dense_from_factors(use, vu.x, vu.b_dot, h_f[use.weight.index], None if bi is None else h_f[bi])
        if vu.x_dot is not None:
            dense_from_factors(use, vu.x_dot, vu.b, h_f[use.weight.index], None)
    names = [p.name for p in att.params]
    g_ref, hv_ref = val_grad_and_hvp(model, names, loss_of, dict(zip(names, v)))
    for i, k in enumerate(names):
        check_close(g_f[i], g_ref[k], 1e-10)
        check_close(g_val[i], g_ref[k], 1e-10)
        check_close(h_f[i], hv_ref[k], 1e-9)


def _native_built():
    try:
        import ghostgrad._native  # noqa: F401  (the PyO3 module of issue 12, built by scripts/build-python.sh)
        return True
    except Exception:
        return False


@pytest.mark.skipif(not _native_built(), reason="ghostgrad's native module is not built (scripts/build-python.sh)")
@pytest.mark.parametrize("which", ["gpt2", "rms"])
def test_ghostgrad_engine_matches_torch_engine(which):
    """engine='ghostgrad' (model_dot + model_ghg on the factored validation side) against the
    torch engine, which the tests above check against torch.func; f32 factors."""
    vals = {}
    for engine in ("torch", "ghostgrad"):
        torch.manual_seed(7)
        if which == "gpt2":
            model = tiny_gpt2(seed=7)
            ids = torch.randint(0, 97, (5, 10))
            attn = (torch.arange(10)[None] < torch.tensor([10, 6, 8, 3, 10])[:, None]).long()
            labels = torch.where(attn.bool(), ids, -100)
            val = torch.randint(0, 97, (2, 8))
            train_loss = lambda: lm_loss(model(input_ids=ids, attention_mask=attn).logits, labels)
            val_loss = lambda: lm_loss(model(input_ids=val).logits, val)
            mask = causal_lm_token_mask(labels, attn)
        else:
            model = RMSMLP().double()
            x, y = torch.randn(5, 4, 7, dtype=torch.float64), torch.randint(0, 5, (5, 4))
            xv, yv = torch.randn(3, 7, dtype=torch.float64), torch.randint(0, 5, (3,))
            train_loss = lambda: F.cross_entropy(model(x).transpose(1, 2), y)
            val_loss = lambda: F.cross_entropy(model(xv), yv)
            mask = None
        opt = torch.optim.SGD(model.parameters(), lr=0.4, weight_decay=0.01)
        sh = InRunShapley(model, opt, num_samples=5, engine=engine)
        with sh.record(torch.arange(5), token_mask=mask):
            train_loss().backward()
        vals[engine] = sh.value_step(val_loss)
    check_close(vals["ghostgrad"][:, 0], vals["torch"][:, 0], 1e-4)
    check_close(vals["ghostgrad"][:, 1], vals["torch"][:, 1], 1e-3)


@pytest.mark.parametrize("form", ["gram", "dense", "auto"])
def test_first_order_only_gram_and_dense_forms_match_torch_func(form):
    """second_order=False: the Gram form (validation rows captured in the validation pass) and
    the dense-query form give the reference's first-order values; masked rows NaN-poisoned."""
    torch.manual_seed(8)
    model = RMSMLP().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    n, t = 6, 5
    x, y = torch.randn(n, t, 7, dtype=torch.float64), torch.randint(0, 5, (n, t))
    mask = torch.rand(n, t) > 0.3
    xv, yv = torch.randn(2, 3, 7, dtype=torch.float64), torch.randint(0, 5, (2, 3))
    sh = InRunShapley(model, opt, num_samples=n, second_order=False, first_order_form=form)
    with sh.record(torch.arange(n), token_mask=mask):
        (F.cross_entropy(model(x).transpose(1, 2), y, reduction="none") * mask).sum().backward()
    poison_masked(sh)
    step = sh.value_step(lambda: F.cross_entropy(model(xv).transpose(1, 2), yv))
    gram = sh._gram_queries({p.index: p.tensor for p in sh.attached.params})
    if form == "gram":
        assert len(gram) == 3  # inp, mid (two modules, one tied weight), out: all in the Gram form
    names = [k for k, _ in model.named_parameters()]
    G = per_sample_grads(model, names, lambda fn, xn, yn, mn: (F.cross_entropy(fn(xn).transpose(1, 2), yn, reduction="none") * mn).sum(),
                         [x, y, mask.double()])
    gv, _ = val_grad_and_hvp(model, names, lambda fn: F.cross_entropy(fn(xv).transpose(1, 2), yv), {k: torch.zeros_like(G[k][0]) for k in names})
    first, _ = inrun_values(G, gv, gv, {k: 0.3 for k in names})
    check_close(step[:, 0], first, 1e-10)
    assert (step[:, 1] == 0).all()
