"""The validation side of In-Run Data Shapley in factored form, for ghostgrad's model-level
kernels (``ghostgrad.model_ghg``): the validation pass's factors ``x_val``, ``b_val`` of every use
and their directional derivatives ``ẋ``, ``ḃ`` along a direction ``v`` of the parameters
(MATH.md §2), without forward-mode support in the model (the "double-backward" JVP):

    d/dε f(w + εv) = ∂/∂u <∂<f, u>/∂w, v>      (u a dummy of f's shape, zero)

so one backward of the validation loss with ``create_graph`` (giving ``b_val``), one backward of
``<f, u>`` over all factors at once, and one backward along ``v`` give every ``ẋ`` and ``ḃ``.
Then a parameter's block of ``H_val v`` is ``Σ_uses ḃᵀ x_val + b_valᵀ ẋ`` (the bias only in the
first half), which :func:`dense_from_factors` forms densely for the test against autograd.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from .attach import Attached, Use


@dataclass
class ValUse:
    """Validation factors of one use (all rows one segment): ``x [Q, d_x]`` (ids ``[Q]``),
    ``b [Q, d_b]``, and their derivatives along ``v`` (``x_dot`` None where the input does not
    move with the weights: ids, the model's input)."""

    use: int
    x: torch.Tensor
    b: torch.Tensor
    x_dot: Optional[torch.Tensor]
    b_dot: torch.Tensor


def _rows(t: torch.Tensor, kind: str, is_b: bool, n: int) -> torch.Tensor:
    if kind == "conv" and is_b:
        t = t.flatten(2).transpose(1, 2)
    if kind == "embedding" and not is_b:
        return t.reshape(-1)
    return t.reshape(-1, t.shape[-1])


def validation_factors(att: Attached, val_loss: Callable[[], torch.Tensor], v: Sequence[torch.Tensor]):
    """Runs ``val_loss()`` once and returns ``(loss, g_val, [ValUse])``: the loss, the dense
    validation gradient per parameter (detached), and every use's factors with their derivatives
    along ``v`` (one tensor per :attr:`Attached.params` entry)."""
    params = [p.tensor for p in att.params]
    att.start_differentiable()
    try:
        loss = val_loss()
    finally:
        att.stop()
    entries = [(ui, cap) for ui, caps in sorted(att.take().items()) for cap in caps]
    outs = [cap.output for _, cap in entries]
    grads = torch.autograd.grad(loss, outs + params, create_graph=True, allow_unused=True)
    b_val, g_val = grads[: len(outs)], grads[len(outs):]
    g_val = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, g_val)]
    # every factor that depends on the weights, and a zero dummy u of its shape
    fs, where = [], []
    for j, (ui, cap) in enumerate(entries):
        if cap.x.dtype.is_floating_point and cap.x.requires_grad:
            fs.append(cap.x)
            where.append((j, "x"))
        if b_val[j] is not None and b_val[j].requires_grad:
            fs.append(b_val[j])
            where.append((j, "b"))
    dots = {}
    if fs:
        us = [torch.zeros_like(f, requires_grad=True) for f in fs]
        g = torch.autograd.grad(fs, params, grad_outputs=us, create_graph=True, allow_unused=True)
        keep = [(gi, vi) for gi, vi in zip(g, v) if gi is not None and gi.requires_grad]
        if keep:
            d = torch.autograd.grad([k[0] for k in keep], us, grad_outputs=[k[1] for k in keep], allow_unused=True)
            dots = {w: di for w, di in zip(where, d) if di is not None}
    out = []
    for j, (ui, cap) in enumerate(entries):
        kind = att.uses[ui].kind
        b = b_val[j].detach() if b_val[j] is not None else torch.zeros_like(cap.output)
        bd = dots.get((j, "b"))
        bd = torch.zeros_like(b) if bd is None else bd.detach()
        xd = dots.get((j, "x"))
        if xd is None and cap.x.dtype.is_floating_point and cap.x.requires_grad:
            xd = torch.zeros_like(cap.x)
        out.append(ValUse(ui, _rows(cap.x.detach(), kind, False, 0), _rows(b, kind, True, 0),
                          None if xd is None else _rows(xd.detach(), kind, False, 0), _rows(bd, kind, True, 0)))
    return loss.detach(), g_val, out


def dense_from_factors(use: Use, x: torch.Tensor, b: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    """Adds the dense gradient ``Σ_rows`` of one use's factors to ``weight`` (in the parameter's
    layout) and ``bias`` (None: skip), in place."""
    if use.kind in ("linear", "conv"):
        weight.view(weight.shape[0], -1).add_(b.T @ x.to(b.dtype))
    elif use.kind == "linear_inout":
        weight.add_(x.to(b.dtype).T @ b)
    elif use.kind == "embedding":
        weight.index_add_(0, x, b)
    else:
        weight.add_((b * x.to(b.dtype)).sum(0).view_as(weight))
    if bias is not None:
        bias.add_(b.sum(0).view_as(bias))
