"""Attaching to a PyTorch model: which module owns every trainable parameter, and hooks that
capture the factors of its per-sample gradients during an ordinary forward and backward.

Per use of a parameter (MATH.md §0), per token row, the hooks keep ``x`` and
``b = ∂L/∂(module output)`` of the loss ``L`` the caller back-propagates:

=====================  ===============================  ==============================  =========
module                 ``x`` (per row)                  ``b`` (per row)                 kind
=====================  ===============================  ==============================  =========
``nn.Linear``          input ``[.., d_in]``             ``[.., d_out]``                 linear (W ``[d_out, d_in]``)
HF ``Conv1D``          input ``[.., d_in]``             ``[.., d_out]``                 linear_inout (W ``[d_in, d_out]``)
``nn.Conv1d/2d``       the input (``F.unfold`` patches  ``grad_out [N, C_out, ..]``       conv (W viewed ``[C_out, -1]``)
                       for the validation side)
``nn.Embedding``       token ids                        ``[.., d]``                     embedding (table ``[vocab, d]``)
``nn.LayerNorm``,      ``x̂`` (normalized input, before  ``[.., d]``                     norm (γ, β ``[d]``)
``nn.RMSNorm``         γ and β, recomputed from the
                       input with the module's eps)
=====================  ===============================  ==============================  =========

Rows are ``[N, T]``: ``N`` samples (the first dimension of the module's input), ``T`` tokens
(every other leading dimension, or ``H_out·W_out`` patches of a convolution). A parameter that
several modules use (GPT-2's ``wte`` and ``lm_head``, a block reused across depth) is found by
identity and becomes one :class:`Param` with several :class:`Use`\\ s. A trainable parameter that
no supported module owns is an :class:`UncoveredParameterError` naming it, unless the caller
lists it in ``ignore`` (then it is treated as frozen by the attribution).

The hooks read and never write: attaching changes no training result (tested bitwise).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # HuggingFace's Conv1D (GPT-2): y = x W + b with W [d_in, d_out].
    from transformers.pytorch_utils import Conv1D as _HFConv1D
except Exception:  # pragma: no cover - transformers is optional
    _HFConv1D = None

_RMSNorm = getattr(nn, "RMSNorm", None)


class UncoveredParameterError(ValueError):
    """A trainable parameter that no supported module owns (and that is not in ``ignore``)."""


class UnsupportedModuleError(ValueError):
    """A module configuration whose per-sample gradient is not a plain factor product."""


@dataclass
class Param:
    """One trainable parameter (tied uses share it). ``index`` is its position in
    :attr:`Attached.params`; ``name`` the first name ``named_parameters`` gives it."""

    index: int
    name: str
    tensor: nn.Parameter
    uses: list = field(default_factory=list)


@dataclass
class Use:
    """One module's use of a weight (and its bias, if any)."""

    name: str  # module name, as ``named_modules`` spells it
    module: nn.Module
    kind: str  # "linear" | "linear_inout" | "conv" | "embedding" | "norm"
    weight: Param
    bias: Optional[Param]


@dataclass
class Captured:
    """Factors of one use for one micro-batch: ``x [N, T, *]`` (ids ``[N, T]`` for an
    embedding), ``b [N, T, d_out]`` of the back-propagated loss, ``mask [N, T]`` bool or None."""

    x: torch.Tensor
    b: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None
    output: Optional[torch.Tensor] = None  # differentiable capture only: the module's output


def _kind(module: nn.Module) -> Optional[str]:
    if isinstance(module, nn.Linear):
        return "linear"
    if _HFConv1D is not None and isinstance(module, _HFConv1D):
        return "linear_inout"
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return "conv"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, nn.LayerNorm) or (_RMSNorm is not None and isinstance(module, _RMSNorm)):
        return "norm"
    return None


def _check_module(name: str, module: nn.Module, kind: str) -> None:
    if kind == "conv":
        if module.groups != 1:
            raise UnsupportedModuleError(f"module '{name}': grouped convolution (groups={module.groups}) is not supported")
        if module.padding_mode != "zeros":
            raise UnsupportedModuleError(f"module '{name}': padding_mode={module.padding_mode!r} is not supported (only 'zeros')")
        if isinstance(module.padding, str):
            raise UnsupportedModuleError(f"module '{name}': padding={module.padding!r} is not supported (give explicit sizes)")
    if kind == "embedding":
        if module.max_norm is not None:
            raise UnsupportedModuleError(f"module '{name}': Embedding(max_norm=...) rewrites the table in the forward pass")
        if module.scale_grad_by_freq or module.sparse:
            raise UnsupportedModuleError(f"module '{name}': Embedding with scale_grad_by_freq or sparse gradients is not supported")


class Attached:
    """The parameters and uses of a model, and (between :meth:`start` and :meth:`stop`) hooks
    capturing their factors. Built by :func:`attach`."""

    def __init__(self, model: nn.Module, ignore: Iterable[str] = ()):
        self.model = model
        ignore = set(ignore)
        names = {}
        for pname, p in model.named_parameters():  # remove_duplicate: first name of a tied tensor
            names.setdefault(id(p), pname)
        unknown = ignore - set(names.values()) - {n for n, _ in model.named_parameters(remove_duplicate=False)}
        if unknown:
            raise ValueError(f"ignore: no parameter named {sorted(unknown)[0]!r} in the model")
        self.params: list[Param] = []
        by_id: dict[int, Param] = {}

        def param(p: Optional[nn.Parameter]) -> Optional[Param]:
            if p is None or not p.requires_grad or names.get(id(p)) in ignore:
                return None
            if id(p) not in by_id:
                by_id[id(p)] = Param(len(self.params), names[id(p)], p)
                self.params.append(by_id[id(p)])
            return by_id[id(p)]

        self.uses: list[Use] = []
        for mname, module in model.named_modules(remove_duplicate=False):
            kind = _kind(module)
            if kind is None:
                continue
            w = param(getattr(module, "weight", None))
            b = param(getattr(module, "bias", None))
            if w is None and b is None:
                continue
            _check_module(mname, module, kind)
            if w is None:
                raise UnsupportedModuleError(f"module '{mname}': a trainable bias with a frozen weight is not supported; freeze both or neither")
            use = Use(mname, module, kind, w, b)
            self.uses.append(use)
            w.uses.append(use)
            if b is not None:
                b.uses.append(use)
        for pname, p in model.named_parameters():
            if p.requires_grad and pname not in ignore and id(p) not in by_id:
                owner = pname.rsplit(".", 1)[0] if "." in pname else ""
                mod = model.get_submodule(owner) if owner else model
                raise UncoveredParameterError(
                    f"model parameter '{pname}' (in {type(mod).__name__} '{owner}') belongs to no supported module "
                    f"(Linear, HF Conv1D, Conv1d/2d, Embedding, LayerNorm, RMSNorm); pass ignore=['{pname}'] to treat it as frozen"
                )
        self._uses_by_module: dict[int, list[Use]] = {}
        for u in self.uses:
            self._uses_by_module.setdefault(id(u.module), []).append(u)
        self._handles: list = []
        self.captured: dict[int, list[Captured]] = {}  # use index -> one entry per forward call
        self.token_mask: Optional[torch.Tensor] = None
        self._use_index = {id(u): i for i, u in enumerate(self.uses)}

    # ------------------------------------------------------------------ hooks
    def start(self, token_mask: Optional[torch.Tensor] = None, batch_size: Optional[int] = None) -> None:
        """Capture the factors of the next forward/backward (one micro-batch). ``token_mask``
        ``[N, T]`` (nonzero = the token counts) applies to every use whose rows are ``[N, T]``.
        With ``batch_size`` N, a module called on a batch of one whose output is broadcast over
        the batch (GPT-2's ``wpe(position_ids [1, T])``) gets its output expanded to N rows (a
        view, same values), so that its output gradient is per sample."""
        self.token_mask = None if token_mask is None else token_mask.bool()
        self.batch_size = batch_size
        self.differentiable = False
        if not self._handles:
            seen = set()
            for u in self.uses:
                if id(u.module) in seen:
                    continue
                seen.add(id(u.module))
                self._handles.append(u.module.register_forward_hook(self._forward_hook))

    def start_differentiable(self) -> None:
        """Capture inputs and outputs with their graph (no output-gradient hooks): for the
        validation pass, whose factors are differentiated again (see :mod:`.valfactors`)."""
        self.start(None, None)
        self.differentiable = True

    def stop(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def detach(self) -> None:
        """Removes the hooks and drops everything captured."""
        self.stop()
        self.captured = {}

    def take(self) -> dict[int, list[Captured]]:
        """Returns the factors captured so far and forgets them."""
        out, self.captured = self.captured, {}
        return out

    def _mask_for(self, n: int, t: int, device) -> Optional[torch.Tensor]:
        m = self.token_mask
        if m is None or t == 1 and m.shape[-1] != 1:
            return None
        if tuple(m.shape) != (n, t):
            raise ValueError(f"token_mask has shape {tuple(m.shape)} but a hooked module sees [N, T] = [{n}, {t}] rows")
        return m.to(device)

    def _forward_hook(self, module, inputs, output):
        if not torch.is_grad_enabled() or not isinstance(output, torch.Tensor) or not output.requires_grad:
            return None
        x = inputs[0]
        n_batch = getattr(self, "batch_size", None)
        if n_batch and n_batch > 1 and x.dim() > 1 and x.shape[0] == 1 and \
                self._uses_by_module[id(module)][0].kind in ("embedding", "linear", "linear_inout"):
            output = output.expand(n_batch, *output.shape[1:])
            x = x.expand(n_batch, *x.shape[1:]).contiguous()
        for use in self._uses_by_module[id(module)]:
            idx = self._use_index[id(use)]
            cap = _capture_input(use, x, keep_graph=self.differentiable)
            n, t = cap.x.shape[0], (cap.x.shape[1] if use.kind != "conv" or self.differentiable else -1)
            if use.kind != "conv":
                cap.mask = self._mask_for(n, t, x.device)
            if use.kind == "embedding" and module.padding_idx is not None:
                keep = cap.x != module.padding_idx  # torch gives the padding row no gradient
                cap.mask = keep if cap.mask is None else cap.mask & keep
            self.captured.setdefault(idx, []).append(cap)
            out_shape = (n, t, -1)
            if self.differentiable:
                cap.output = output
                continue

            def grad_hook(g, cap=cap, kind=use.kind, out_shape=out_shape):
                g = g.detach()
                cap.b = g if kind == "conv" else g.reshape(out_shape)  # conv: [N, C_out, *spatial]
                return None

            output.register_hook(grad_hook)
        return output


def _capture_input(use: Use, x: torch.Tensor, keep_graph: bool = False) -> Captured:
    m = use.module
    x = x if keep_graph else x.detach()
    if use.kind in ("linear", "linear_inout"):
        return Captured(x.reshape(x.shape[0], -1, x.shape[-1]) if x.dim() > 1 else x.reshape(1, 1, -1))
    if use.kind == "embedding":
        return Captured(x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(1, -1))
    if use.kind == "conv":
        if x.dim() == m.weight.dim() - 1:  # unbatched input
            x = x.unsqueeze(0)
        # training side: the raw input (the torch engine convolves it with the query kernel,
        # far cheaper than im2col); the differentiable validation side: unfolded patches
        return Captured(conv_patches(m, x) if keep_graph else x)
    # norms: x̂ over normalized_shape, recomputed with the module's eps (f32 or wider)
    shape = tuple(m.normalized_shape)
    dims = tuple(range(-len(shape), 0))
    xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
    eps = m.eps if m.eps is not None else torch.finfo(x.dtype).eps
    if isinstance(m, nn.LayerNorm):
        mean = xf.mean(dims, keepdim=True)
        var = xf.var(dims, unbiased=False, keepdim=True)
        xhat = (xf - mean) * torch.rsqrt(var + eps)
    else:
        xhat = xf * torch.rsqrt(xf.pow(2).mean(dims, keepdim=True) + eps)
    d = math.prod(shape)
    lead = xhat.shape[: xhat.dim() - len(shape)]
    xhat = xhat.reshape(*lead, d)
    return Captured(xhat.reshape(xhat.shape[0], -1, d) if xhat.dim() > 1 else xhat.reshape(1, 1, d))


def conv_patches(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``F.unfold`` patches of a Conv1d/2d input, ``[N, H_out·W_out, C_in·k_h·k_w]``."""
    if isinstance(m, nn.Conv1d):
        p = F.unfold(x.unsqueeze(-2), (1, m.kernel_size[0]), dilation=(1, m.dilation[0]), padding=(0, m.padding[0]), stride=(1, m.stride[0]))
    else:
        p = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
    return p.transpose(1, 2)


def attach(model: nn.Module, ignore: Iterable[str] = ()) -> Attached:
    """Finds every trainable parameter's module (tied parameters by identity); raises
    :class:`UncoveredParameterError` for a trainable parameter it cannot cover unless ``ignore``
    names it. No hook is registered until :meth:`Attached.start`."""
    return Attached(model, ignore)


def causal_lm_token_mask(labels: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Token mask ``[N, T]`` of a causal LM whose loss shifts labels by one (HuggingFace): token t
    of sample n matters iff some later label ``labels[n, s > t]`` is not -100 (and, if given,
    ``attention_mask[n, t]`` is nonzero). Trailing padding therefore never contributes."""
    live = labels[:, 1:] != -100
    # any later label live: reverse cumulative OR
    later = torch.flip(torch.cummax(torch.flip(live.int(), [1]), 1).values, [1]).bool()
    mask = torch.cat([later, torch.zeros_like(later[:, :1])], 1)
    if attention_mask is not None:
        mask = mask & attention_mask.bool()
    return mask
