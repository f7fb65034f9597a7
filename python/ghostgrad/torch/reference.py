"""The float64 reference of :mod:`ghostgrad.torch.inrun`, from materialized per-sample gradients
(``torch.func``: ``vmap`` of ``grad``) and an explicit Hessian-vector product (``torch.func.jvp``
of ``grad``: forward-over-reverse, an independent method from the double-backward HVP the layer
uses). Slow and memory-hungry by design; for tests and small checks only.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.func import functional_call, grad, jvp, vmap


def per_sample_grads(model: torch.nn.Module, names: Sequence[str], sample_loss: Callable, inputs: Sequence[torch.Tensor],
                     vectorize: bool = True) -> dict[str, torch.Tensor]:
    """``{name: [N, *shape]}``: the gradient of ``sample_loss(model_fn, *row_n)`` for every row n of
    ``inputs`` (each sliced along dim 0 and given back with a batch dim of 1), w.r.t. the named
    parameters; the other parameters and buffers are held fixed. ``model_fn(*args)`` calls the
    model functionally."""
    named = dict(model.named_parameters())
    params = {k: named[k].detach() for k in names}
    frozen = {k: v.detach() for k, v in named.items() if k not in params}
    frozen.update(dict(model.named_buffers()))

    def loss_of(p, *row):
        def model_fn(*args, **kw):
            return functional_call(model, {**frozen, **p}, args, kw)

        return sample_loss(model_fn, *[r.unsqueeze(0) for r in row])

    g = grad(loss_of)
    if vectorize:
        return vmap(g, in_dims=(None,) + (0,) * len(inputs), randomness="same")(params, *inputs)
    rows = [g(params, *[x[i] for x in inputs]) for i in range(inputs[0].shape[0])]
    return {k: torch.stack([r[k] for r in rows]) for k in names}


def val_grad_and_hvp(model: torch.nn.Module, names: Sequence[str], val_loss: Callable, u: dict[str, torch.Tensor]):
    """``(g, H u)`` of ``val_loss(model_fn)`` w.r.t. the named parameters at the model's weights,
    ``H u`` by ``jvp(grad(val_loss), (w,), (u,))``."""
    named = dict(model.named_parameters())
    params = {k: named[k].detach() for k in names}
    frozen = {k: v.detach() for k, v in named.items() if k not in params}
    frozen.update(dict(model.named_buffers()))

    def loss_of(p):
        return val_loss(lambda *a, **kw: functional_call(model, {**frozen, **p}, a, kw))

    gfun = grad(loss_of)
    g, hu = jvp(gfun, (params,), ({k: u[k] for k in names},))
    return g, hu


def inrun_values(per_sample: dict[str, torch.Tensor], g: dict[str, torch.Tensor], hu: dict[str, torch.Tensor],
                 lr: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """First- and second-order In-Run values ``[N]`` each (= −φ of MATH.md §2: the share of the
    validation loss's decrease): ``Σ_p lr_p·<G_n^p, g^p>`` and ``−Σ_p lr_p·½<G_n^p, (H u)^p>``."""
    first = sum(lr[k] * (per_sample[k].flatten(1) @ g[k].flatten()) for k in per_sample)
    second = sum(-0.5 * lr[k] * (per_sample[k].flatten(1) @ hu[k].flatten()) for k in per_sample)
    return first, second
