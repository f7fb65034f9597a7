"""In-Run Data Shapley (MATH.md §2) inside an ordinary PyTorch training loop.

Per optimizer step with SGD, training sample n gets the value

    value_n = −φ_n,   φ_n = Σ_p lr_p · ( −<Ĝ_n^p, g_val^p>  +  ½ <Ĝ_n^p, (H_val u)^p> ),
    u_p = lr_p · (grad_p + 2 λ_p w_p)

``φ_n`` (MATH.md §2, what ``ghostgrad.model_ghg`` returns) is sample n's share of the change of
the validation loss over the step, to second order; the value is its share of the *decrease*
(the In-Run paper's utility): positive = the sample helped, negative = it hurt.

where ``Ĝ_n^p`` is sample n's share of ``p.grad`` (the per-sample gradient of the loss the caller
back-propagated, whatever its reduction), ``grad_p`` the accumulated ``p.grad`` of the step,
``lr_p`` and ``λ_p`` (weight decay) those of p's parameter group, ``g_val`` the gradient and
``H_val`` the exact Hessian of the validation loss at the current weights. With one learning rate,
no weight decay and the loss ``L = c·Σ_n ℓ_n`` this is the formula of MATH §2 with the per-sample
``η = lr·c`` and ``v = Σ_j ∇ℓ_j``: the loss-scale conversion (sum, mean over samples, mean over
tokens, gradient accumulation over micro-batches) is implicit, because ``Ĝ_n`` is taken from the
same backward pass that fills ``p.grad``. Weight decay enters exactly: its displacement is a null
player of the step's game whose interaction with each sample is that sample's (hence the 2λw).

Exact for ``torch.optim.SGD`` without momentum (with or without weight decay, per-group learning
rates). Momentum, Nesterov, ``maximize`` and every other optimizer are refused with
:class:`UnsupportedOptimizerError`: their update of step t depends on earlier steps' gradients,
so a one-step value would be silently wrong.

How the pieces are computed (engine ``"torch"``): the validation gradient and its Hessian-vector
product along ``u`` are dense (one validation forward, its backward with ``create_graph`` and one
more backward: the double-backward HVP); the training side never materializes ``Ĝ_n``: each use
evaluates ``Σ_t b_tᵀ M a_t`` (the dense-query form of MATH §1) from the captured factors. The
validation rows run in a second pass after the training backward (they cannot ride in the
training batch: ``u`` needs the whole step's gradient first).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Optional

import torch

from .attach import Attached, Captured, Use, attach


class UnsupportedOptimizerError(ValueError):
    """An optimizer whose step is not plain SGD (momentum, Adam, ...)."""


def sgd_groups(optimizer) -> dict[int, tuple[float, float]]:
    """``id(param) -> (lr, weight_decay)`` of a plain-SGD optimizer; raises otherwise."""
    if not isinstance(optimizer, torch.optim.SGD):
        raise UnsupportedOptimizerError(
            f"optimizer: In-Run Data Shapley is exact only for torch.optim.SGD without momentum, got {type(optimizer).__name__}; "
            "refusing rather than returning SGD values for it")
    out = {}
    for i, g in enumerate(optimizer.param_groups):
        for key, bad in (("momentum", lambda v: v != 0), ("nesterov", bool), ("maximize", bool)):
            if bad(g.get(key, 0)):
                raise UnsupportedOptimizerError(
                    f"optimizer.param_groups[{i}]['{key}'] = {g.get(key)!r}: only momentum-free SGD is exact "
                    "(a step with momentum depends on earlier steps' gradients)")
        lr, wd = float(g["lr"]), float(g.get("weight_decay", 0.0))
        for p in g["params"]:
            out[id(p)] = (lr, wd)
    return out


def _flat_rows(cap: Captured, use: Use, dtype):
    """x, b as 2-D rows with masked rows zeroed (torch.where: NaN in them never leaks)."""
    x, b = cap.x, cap.b
    if b is None:
        raise RuntimeError(f"module '{use.name}': its output received no gradient in this micro-batch "
                           "(was loss.backward() called inside record()?)")
    n, t = b.shape[0], b.shape[1]
    b = b.reshape(n * t, -1).to(dtype)
    if use.kind == "embedding":
        x = x.reshape(n * t)
    else:
        x = x.reshape(n * t, -1).to(dtype)
    if cap.mask is not None:
        keep = cap.mask.reshape(n * t)
        b = torch.where(keep[:, None], b, torch.zeros((), dtype=dtype, device=b.device))
        if use.kind == "embedding":
            x = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
        else:
            x = torch.where(keep[:, None], x, torch.zeros((), dtype=dtype, device=x.device))
    return n, t, x, b


def dense_query_dot(use: Use, cap: Captured, mw: Optional[torch.Tensor], mb: Optional[torch.Tensor]) -> torch.Tensor:
    """``s[n, k] = <G_n, M_k>`` for one use and K dense queries in the parameter's own layout
    (``mw [K, *weight.shape]``, ``mb [K, *bias.shape]`` or None), from the factors:
    ``Σ_t b_tᵀ M a_t`` (Linear, conv), ``Σ_t a_tᵀ M b_t`` (Conv1D), ``Σ_t b_t·M[id_t]``
    (embedding), ``Σ_t (b_t ⊙ x̂_t)·m_γ + b_t·m_β`` (norm). Returns ``[N, K]`` in the query dtype."""
    dtype = mw.dtype if mw is not None else mb.dtype
    if use.kind == "conv":
        return _conv_query_dot(use, cap, mw, mb, dtype)
    n, t, x, b = _flat_rows(cap, use, dtype)
    k = (mw if mw is not None else mb).shape[0]
    rows = torch.zeros(n * t, k, dtype=dtype, device=b.device)
    if mw is not None:
        if use.kind == "linear":
            d_out = mw.shape[1]
            m = mw.reshape(k, d_out, -1)  # [K, d_out, d_in]
            y = x @ m.permute(2, 0, 1).reshape(m.shape[2], k * d_out)  # [rows, K·d_out]
            rows += (y.view(-1, k, d_out) * b[:, None, :]).sum(-1)
        elif use.kind == "linear_inout":
            d_out = mw.shape[2]
            y = x @ mw.permute(1, 0, 2).reshape(mw.shape[1], k * d_out)
            rows += (y.view(-1, k, d_out) * b[:, None, :]).sum(-1)
        elif use.kind == "embedding":
            g = mw.permute(1, 0, 2)[x]  # [rows, K, d]
            rows += (g * b[:, None, :]).sum(-1)
        else:  # norm: γ
            rows += (b * x) @ mw.reshape(k, -1).T
    if mb is not None:
        rows += b @ mb.reshape(k, -1).T
    return rows.view(n, t, k).sum(1)


def _conv_query_dot(use: Use, cap: Captured, mw, mb, dtype) -> torch.Tensor:
    """Convolution: ``<G_n, M> = Σ grad_out_n ⊙ conv(x_n, M)`` (no bias in the conv), the K
    query kernels stacked as K·C_out output channels: the same algebra as ``Σ_t b_tᵀ M a_t`` on
    unfolded patches without forming them."""
    m, x, b = use.module, cap.x.to(dtype), cap.b.to(dtype)
    if b is None:
        raise RuntimeError(f"module '{use.name}': its output received no gradient in this micro-batch")
    n, c_out = b.shape[0], b.shape[1]
    k = (mw if mw is not None else mb).shape[0]
    out = torch.zeros(n, k, dtype=dtype, device=b.device)
    bf = b.reshape(n, 1, c_out, -1)
    if mw is not None:
        w = mw.reshape(k * c_out, *mw.shape[2:])
        conv = torch.nn.functional.conv1d if isinstance(m, torch.nn.Conv1d) else torch.nn.functional.conv2d
        y = conv(x, w, None, m.stride, m.padding, m.dilation)
        out += (y.reshape(n, k, c_out, -1) * bf).sum((2, 3))
    if mb is not None:
        out += bf.sum(3)[:, 0] @ mb.reshape(k, -1).T
    return out


def _gram_dot(use: Use, cap: Captured, av: torch.Tensor, bv: torch.Tensor) -> torch.Tensor:
    """``s[n] = Σ_t Σ_u (a_t·a_u)(b_t·b_u)`` (two score matrices, MATH.md §1 Gram form); ``av``
    carries the bias column of ones when the layer has a bias."""
    n, t, x, b = _flat_rows(cap, use, av.dtype)
    if av.shape[1] == x.shape[1] + 1:
        x = torch.cat([x, torch.ones_like(x[:, :1])], 1)
        if cap.mask is not None:
            x[:, -1] = cap.mask.reshape(-1).to(x.dtype)
    return ((x @ av.T) * (b @ bv.T)).sum(1).view(n, t).sum(1)


class InRunShapley:
    """In-Run Data Shapley values of every training sample (share of the decrease of the
    validation loss; positive = helpful), accumulated in float64 by the caller's global sample
    ids (ids may repeat across epochs).

    ``values_first`` holds the first-order sums, ``values_second`` the second-order ones,
    ``values`` their sum. Use::

        shapley = InRunShapley(model, optimizer, num_samples=len(train_set))
        for ids, batch in loader:
            with shapley.record(ids, token_mask=batch["attention_mask"]):
                model(**batch).loss.backward()          # any reduction; micro-batches: repeat
            shapley.value_step(lambda: model(**val_batch).loss)
            optimizer.step(); optimizer.zero_grad()
    """

    def __init__(self, model: torch.nn.Module, optimizer=None, num_samples: int = 0, *, lr: Optional[float] = None,
                 second_order: bool = True, ignore: Iterable[str] = (), device=None, dtype=None, engine: str = "torch",
                 first_order_form: str = "auto"):
        if optimizer is None and lr is None:
            raise ValueError("optimizer: give a torch.optim.SGD optimizer, or lr= for a hand-written SGD step")
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        if engine not in ("torch", "ghostgrad"):
            raise ValueError(f"engine must be 'torch' or 'ghostgrad', got {engine!r}")
        self.engine = engine
        if first_order_form not in ("auto", "dense", "gram"):
            raise ValueError(f"first_order_form must be 'auto', 'dense' or 'gram', got {first_order_form!r}")
        self.first_order_form = first_order_form
        self.model = model
        self.optimizer = optimizer
        self.lr = lr
        if optimizer is not None:
            sgd_groups(optimizer)  # refuse early
        self.attached: Attached = attach(model, ignore)
        self.second_order = second_order
        first = self.attached.params[0].tensor if self.attached.params else None
        device = device if device is not None else (first.device if first is not None else "cpu")
        self.values_first = torch.zeros(num_samples, dtype=torch.float64, device=device)
        self.values_second = torch.zeros(num_samples, dtype=torch.float64, device=device)
        self.dtype = dtype  # query / arithmetic dtype; None = the parameter's (f32 for 16-bit ones)
        self._micro: list[tuple[torch.Tensor, dict]] = []
        self.last_step: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None

    @property
    def values(self) -> torch.Tensor:
        return self.values_first + self.values_second

    @contextlib.contextmanager
    def record(self, ids, token_mask: Optional[torch.Tensor] = None):
        """Captures the factors of one micro-batch's forward and backward. ``ids`` are the global
        sample ids of its rows (``[N]``); ``token_mask [N, T]`` marks the tokens that count (e.g.
        ``attention_mask``, or :func:`causal_lm_token_mask`); masked tokens contribute nothing."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.values_first.device).reshape(-1)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.values_first.numel()):
            raise ValueError(f"ids: values must lie in [0, {self.values_first.numel()}), got [{int(ids.min())}, {int(ids.max())}]")
        self.attached.start(token_mask, ids.numel())
        try:
            yield self
        finally:
            self.attached.stop()
        self._micro.append((ids, self.attached.take()))

    def _groups(self):
        if self.optimizer is not None:
            return sgd_groups(self.optimizer)
        return {id(p.tensor): (float(self.lr), 0.0) for p in self.attached.params}

    def queries(self, val_loss: Callable[[], torch.Tensor]):
        """Dense per-parameter queries ``M1 = lr·g_val`` and ``M2 = −½·lr·H_val u`` (None without
        second order), from one validation forward and the double-backward HVP."""
        params = [p.tensor for p in self.attached.params]
        groups = self._groups()
        lw = []
        for p in params:
            if id(p) not in groups:
                raise ValueError("optimizer: a covered parameter is in none of its param_groups")
            lw.append(groups[id(p)])
        self._val_caps = {}
        if not self.second_order:  # keep the validation factors too (for the Gram form)
            self.attached.start(None, None)
        try:
            loss = val_loss()
            g = torch.autograd.grad(loss, params, create_graph=self.second_order, allow_unused=True)
        finally:
            if not self.second_order:
                self.attached.stop()
                self._val_caps = self.attached.take()
        g = [torch.zeros_like(p) if gi is None else gi for p, gi in zip(params, g)]
        m1 = [lr * gi.detach() for (lr, _), gi in zip(lw, g)]  # value = −φ: +lr·<Ĝ, g_val>
        if not self.second_order:
            return m1, None
        u = []
        for p, (lr, wd) in zip(params, lw):
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            u.append(lr * (grad + 2 * wd * p.detach()) if wd else lr * grad)
        needs = [i for i, gi in enumerate(g) if gi.requires_grad]
        hu = [torch.zeros_like(p) for p in params]
        if needs:
            h = torch.autograd.grad([g[i] for i in needs], params, grad_outputs=[u[i] for i in needs], allow_unused=True)
            hu = [torch.zeros_like(p) if hi is None else hi for p, hi in zip(params, h)]
        m2 = [(-0.5 * lr) * hi.detach() for (lr, _), hi in zip(lw, hu)]  # −½·lr·<Ĝ, H_val u>
        return m1, m2

    def value_step(self, val_loss: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Values the samples recorded since the last call against ``val_loss()`` (a closure that
        runs the validation forward and returns a scalar loss) at the current weights; call it
        after the step's backward passes and before ``optimizer.step()``. Adds them to the
        accumulators and returns this step's ``[rows, 2]`` (first order, second order)."""
        if not self._micro:
            raise RuntimeError("value_step: nothing recorded since the last step (use `with shapley.record(ids): ...`)")
        if self.engine == "ghostgrad":
            return self._value_step_native(val_loss)
        m1, m2 = self.queries(val_loss)
        att = self.attached
        per_param = []
        for pi, p in enumerate(att.params):
            qs = [m1[pi]] if m2 is None else [m1[pi], m2[pi]]
            dt = self.dtype or (p.tensor.dtype if p.tensor.dtype in (torch.float32, torch.float64) else torch.float32)
            per_param.append(torch.stack([q.to(dt) for q in qs]))
        k = 1 if m2 is None else 2
        gram = self._gram_queries(per_param) if m2 is None and self.first_order_form != "dense" else {}
        all_ids, all_vals = [], []
        for ids, captured in self._micro:
            total = torch.zeros(ids.numel(), k, dtype=torch.float64, device=self.values_first.device)
            for ui, caps in captured.items():
                use = att.uses[ui]
                if use.weight.index in gram:
                    av, bv, lr = gram[use.weight.index]
                    for cap in caps:
                        total[:, 0] += lr * _gram_dot(use, cap, av, bv).to(torch.float64).to(total.device)
                    continue
                mw = per_param[use.weight.index]
                mb = per_param[use.bias.index] if use.bias is not None else None
                for cap in caps:
                    s = dense_query_dot(use, cap, mw, mb).to(torch.float64)
                    if s.shape[0] != ids.numel():
                        raise ValueError(f"ids: {ids.numel()} ids for a micro-batch of {s.shape[0]} samples (module '{use.name}')")
                    total += s.to(total.device)
            all_ids.append(ids)
            all_vals.append(total)
        self._micro = []
        return self._accumulate(torch.cat(all_ids), torch.cat(all_vals), k)

    def _gram_queries(self, per_param):
        """First order only: parameters whose uses are all Linear of one layout get the Gram
        form ``Σ_t Σ_u (a_t·a_u)(b_t·b_u)`` against the captured validation rows when it costs
        fewer flops than the dense query (``Q·(d_in + d_out) < d_in·d_out``, Q validation rows,
        with ``first_order_form='auto'``; always with ``'gram'``). ``{weight index: (A_val,
        B_val, lr)}``."""
        att, out = self.attached, {}
        groups = self._groups()
        for p in att.params:
            uses = p.uses
            if not uses or any(u.weight is not p for u in uses) or len({u.kind for u in uses}) != 1 \
                    or uses[0].kind not in ("linear", "linear_inout"):
                continue
            lr = groups[id(p.tensor)][0]
            if uses[0].bias is not None and (any(u.bias is not uses[0].bias for u in uses) or groups[id(uses[0].bias.tensor)][0] != lr):
                continue
            idx = [att.uses.index(u) for u in uses]
            caps = [c for i in idx for c in self._val_caps.get(i, []) if c.b is not None]
            if not caps:
                continue
            dt = per_param[p.index].dtype
            xs = [c.x.reshape(-1, c.x.shape[-1]).to(dt) for c in caps]
            bs = [c.b.reshape(-1, c.b.shape[-1]).to(dt) for c in caps]
            if uses[0].bias is not None:
                xs = [torch.cat([x, torch.ones_like(x[:, :1])], 1) for x in xs]
            av, bv = torch.cat(xs), torch.cat(bs)
            q, d_in, d_out = av.shape[0], av.shape[1], bv.shape[1]
            if self.first_order_form == "gram" or q * (d_in + d_out) < d_in * d_out:
                out[p.index] = (av, bv, lr)
        return out

    def _accumulate(self, ids, vals, k):
        self.values_first.index_add_(0, ids, vals[:, 0])
        if k == 2:
            self.values_second.index_add_(0, ids, vals[:, 1])
        else:
            vals = torch.cat([vals[:, :1], torch.zeros_like(vals[:, :1])], 1)
        self.last_step = (ids, vals[:, 0], vals[:, 1])
        return vals

    def _value_step_native(self, val_loss):
        """engine='ghostgrad': factored validation side + ghostgrad.model_dot / model_ghg."""
        from .native_engine import native_step
        from .valfactors import validation_factors

        groups = self._groups()
        lws = {groups[id(p.tensor)] for p in self.attached.params}
        lrs = {lr for lr, _ in lws}
        if len(lrs) != 1:
            raise ValueError(f"engine='ghostgrad' takes one learning rate for all covered parameters, got {sorted(lrs)}")
        lr = lrs.pop()
        v = []
        for p in self.attached.params:
            grad = p.tensor.grad if p.tensor.grad is not None else torch.zeros_like(p.tensor)
            wd = groups[id(p.tensor)][1]
            v.append((grad + 2 * wd * p.tensor.detach()) if wd else grad)
        _, _, vals = validation_factors(self.attached, val_loss, v)
        all_ids, all_vals = [], []
        for ids, captured in self._micro:
            first, second = native_step(self.attached, captured, vals, lr, self.second_order)
            all_ids.append(ids)
            all_vals.append(torch.stack([first, second], 1).to(torch.float64).to(self.values_first.device))
        self._micro = []
        return self._accumulate(torch.cat(all_ids), torch.cat(all_vals), 2 if self.second_order else 1)
