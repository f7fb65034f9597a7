"""In-Run values through ghostgrad's model-level kernels (``ghostgrad.model_dot`` for the first
order, ``ghostgrad.model_ghg`` for first + second order, ``ghostgrad.accumulate_values``), fed
with the captured training factors and the factored validation side of :mod:`.valfactors`.

Exact under the same conditions as the torch engine, plus: one learning rate for all covered
parameters (``model_ghg`` takes one ``η``); weight decay enters through the direction
``v = grad + 2λw`` of the JVP. Factors are handed over as f32 (bf16 / f16 kept) DLPack views.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .attach import Attached, Captured, Use, conv_patches
from .valfactors import ValUse


def _kind(gg, use: Use, x: torch.Tensor, b: torch.Tensor):
    has_bias = use.bias is not None
    if use.kind in ("linear", "conv"):
        return gg.Linear(d_in=int(x.shape[-1]), d_out=int(b.shape[-1]), bias=has_bias, layout="out_in")
    if use.kind == "linear_inout":
        return gg.Linear(d_in=int(x.shape[-1]), d_out=int(b.shape[-1]), bias=has_bias, layout="in_out")
    if use.kind == "embedding":
        return gg.Embedding(vocab=int(use.weight.tensor.shape[0]), d=int(b.shape[-1]))
    return gg.Norm(d=int(b.shape[-1]), bias=has_bias)


def _f(t):
    if t is None:
        return None
    if t.dtype in (torch.float64,):
        t = t.float()
    return t.contiguous()


def pair_uses(att: Attached, captured: dict[int, list[Captured]], vals: Sequence[ValUse]):
    """Pairs every captured training call of a use with a validation call of the same use (in
    call order; a tied parameter sums both sides, so the pairing does not change the value)."""
    by_use: dict[int, list[ValUse]] = {}
    for vu in vals:
        by_use.setdefault(vu.use, []).append(vu)
    pairs = []
    for ui, caps in sorted(captured.items()):
        vs = by_use.get(ui, [])
        if len(vs) != len(caps):
            raise NotImplementedError(
                f"module '{att.uses[ui].name}' ran {len(caps)} times in the training pass but {len(vs)} times in the "
                "validation pass; the ghostgrad engine pairs them one to one (use engine='torch')")
        pairs.extend(zip([ui] * len(caps), caps, vs))
    return pairs


def native_step(att: Attached, captured, vals: Sequence[ValUse], lr: float, second_order: bool):
    """``(first [N], second [N])`` f32 values (= −φ) for one micro-batch: ``first = lr·<Ĝ_n, g_val>``
    by ``model_dot``, ``second = −model_ghg(η = lr) − first`` (zeros without second order)."""
    import ghostgrad as gg

    dot_uses, ghg_uses = [], []
    for ui, cap, vu in pair_uses(att, captured, vals):
        use = att.uses[ui]
        key = use.weight.index
        cx, cb = cap.x, cap.b
        if use.kind == "conv":  # the training side keeps the raw input: unfold it here
            cx, cb = conv_patches(use.module, cx), cb.flatten(2).transpose(1, 2)
        kind = _kind(gg, use, cx, cb)
        x = cx if use.kind == "embedding" else _f(cx)
        train = gg.Factors(x=x, b=_f(cb), mask=cap.mask)
        vx = vu.x if use.kind == "embedding" else _f(vu.x)
        val = gg.Factors(x=vx, b=_f(vu.b), segments="single")
        dot_uses.append(gg.LayerUse(kind=kind, param=key, train=train, query=val, name=use.name))
        if second_order:
            ghg_uses.append(gg.GhgUse(kind=kind, param=key, train=train, val=val, b_dot=_f(vu.b_dot),
                                      x_dot=_f(vu.x_dot), name=use.name))
    first = gg.model_dot(dot_uses, scale=lr).out.reshape(-1)
    if not second_order:
        return first, torch.zeros_like(first)
    total = -gg.model_ghg(ghg_uses, lr).out.reshape(-1)
    return first, total - first
