"""Per-layer operations on the factors of Linear layers (MATH.md §1): ghost dot-products in the
Gram, dense-query or materialize form, train × train Gram matrices and squared norms.

Shapes (``S`` samples of ``T`` tokens; ``[S, d]`` means ``T = 1``)::

    train.x  [N, T, d_in]   layer inputs             (f32 | bf16 | f16)
    train.b  [N, T, d_out]  output gradients         (same dtype)
    mask     [N, T]         bool / uint8, nonzero = keep (a masked token is skipped, NaN there never leaks)
    query.x  [V, L, d_in], query.b [V, L, d_out]     one segment per leading index (see Factors.segments)

With ``bias=True`` the activations are augmented with a constant 1 (``a·a' + 1``). Every output
is f32 and written ``out = beta·out + scale·result`` (``beta = 0`` never reads ``out``).
"""

from __future__ import annotations

from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

from . import errors
from ._core import FLOATS, Call
from ._sides import form_code, query_tuple, side
from .types import DotLayer, Factors, FormChoice, FormCost

__all__ = ["Output", "ghost_dot", "ghost_dot_layers", "ghost_dot_dense", "factored_grad", "ghost_gram", "ghost_sqnorm"]


class Output(NamedTuple):
    """An output array and how ghostgrad computed it (a :class:`FormChoice`, or a list of
    :class:`FormChoice` / :class:`~ghostgrad.types.TermChoice`)."""

    out: Any
    choices: Any


def form_choice(t: tuple) -> FormChoice:
    form, forced, reason, costs = t
    return FormChoice(form, forced, reason, tuple(FormCost(*c) for c in costs))


def _train_tuple(sd) -> tuple:
    return (sd.dx, sd.db, sd.x, sd.b, sd.s, sd.t, sd.mask)


def ghost_dot(
    train: Factors,
    query: Factors,
    *,
    bias: bool = False,
    out: Any = None,
    scale: float = 1.0,
    beta: float = 0.0,
    form: str = "auto",
    backend: Optional[str] = None,
    stream: Any = None,
) -> Output:
    """Ghost dot-products of one Linear layer: ``out[n, v] = beta·out + scale·<G_n, Gq_v>``,
    ``G_n = Σ_t b_{n,t} a_{n,t}ᵀ``, ``Gq_v = Σ_{u∈v} bq_u aq_uᵀ``; ``out`` f32 ``[N, V]``.
    Returns ``Output(out, FormChoice)``; ``form`` forces ``"gram"``, ``"dense_query"`` or
    ``"materialize"`` (``"auto"``: the cheapest by the cost model)."""
    r = ghost_dot_layers([DotLayer(train, query, bias=bias, form=form)], out=out, scale=scale, beta=beta, backend=backend, stream=stream, _op="ghost_dot")
    return Output(r.out, r.choices[0])


def ghost_dot_layers(
    layers: Sequence[DotLayer],
    *,
    out: Any = None,
    scale: float = 1.0,
    beta: float = 0.0,
    backend: Optional[str] = None,
    stream: Any = None,
    _op: str = "ghost_dot_layers",
) -> Output:
    """Ghost dot-products summed over layers (same ``N`` and ``V``, any shapes and dtypes):
    ``out[n, v] = beta·out + scale·Σ_l <G^l_n, Gq^l_v>``, ``out`` f32 ``[N, V]``. On a GPU: one
    kernel per layer writing partial sums plus one finalize. Returns ``Output(out, [FormChoice])``."""
    call = Call(_op, backend, stream)
    if not layers:
        raise call.fail(errors.ShapeError, "layers", "is empty")
    native = []
    n = v = None
    for i, l in enumerate(layers):
        pre = "" if _op == "ghost_dot" else (f"layers[{i}] {l.name!r}." if l.name else f"layers[{i}].")
        tr = side(call, l.train, pre + "train", samples=n)
        q = side(call, l.query, pre + "query", dx=tr.dx, db=tr.db, query=True)
        if n is None:
            n, v = tr.s, q.v
        elif q.v != v:
            raise call.fail(errors.ShapeError, pre + "query", f"has {q.v} segments but layers[0] has {v} (one V per call)")
        native.append((_train_tuple(tr), query_tuple(q), bool(l.bias), form_code(call, l.form, pre + "form")))
    out_obj, out_arr = call.out(out, "out", (n, v))
    choices = call.ctx.ghost_dot_layers(native, out_arr, float(scale), float(beta))
    return Output(call.result(out_obj), [form_choice(c) for c in choices])


def ghost_dot_dense(
    train: Factors,
    m: Any,
    m_bias: Any = None,
    *,
    out: Any = None,
    scale: float = 1.0,
    beta: float = 0.0,
    backend: Optional[str] = None,
    stream: Any = None,
) -> Any:
    """Dense-query ghost dot-product with a caller-given ``M`` (f32 ``[d_out, d_in]``, and
    ``m_bias`` f32 ``[d_out]`` for a layer with bias):
    ``out[n] = beta·out + scale·Σ_t (b_{n,t}ᵀ M a_{n,t} + b_{n,t}·m_bias)``, ``out`` f32 ``[N]``."""
    call = Call("ghost_dot_dense", backend, stream)
    tr = side(call, train, "train")
    m_arr = call.arr(m, "m", ("f32",), (tr.db, tr.dx))
    mb = call.opt(m_bias, "m_bias", ("f32",), (tr.db,))
    out_obj, out_arr = call.out(out, "out", (tr.s,))
    call.ctx.ghost_dot_dense(_train_tuple(tr), m_arr, mb, out_arr, float(scale), float(beta))
    return call.result(out_obj)


def factored_grad(
    query: Factors,
    row_weights: Any = None,
    *,
    bias: bool = False,
    out: Any = None,
    out_bias: Any = None,
    scale: float = 1.0,
    beta: float = 0.0,
    backend: Optional[str] = None,
    stream: Any = None,
) -> Tuple[Any, Any]:
    """Factored weight gradient of every query segment:
    ``out[v] = beta·out[v] + scale·Σ_{u∈v} w_u bq_u aq_uᵀ``, ``out`` f32 ``[V, d_out, d_in]``; with
    ``bias``, ``out_bias`` f32 ``[V, d_out]`` receives ``Σ w_u bq_u``. ``row_weights`` f32 ``[Q]``
    (1 when absent). Returns ``(out, out_bias)`` (``out_bias`` is None without bias)."""
    call = Call("factored_grad", backend, stream)
    q = side(call, query, "query", query=True)
    w = call.opt(row_weights, "row_weights", ("f32",), (q.rows,))
    out_obj, out_arr = call.out(out, "out", (q.v, q.db, q.dx))
    ob_obj = ob_arr = None
    if bias:
        ob_obj, ob_arr = call.out(out_bias, "out_bias", (q.v, q.db))
    elif out_bias is not None:
        raise call.fail(errors.InvalidArgument, "out_bias", "is given but bias=False")
    call.ctx.factored_grad(q.dx, q.db, bool(bias), query_tuple(q), w, out_arr, ob_arr, float(scale), float(beta))
    return call.result(out_obj), (None if ob_obj is None else call.result(ob_obj))


def _train_only(op: str, train: Factors, bias: bool, out: Any, scale: float, beta: float, form: str, backend, stream, shape) -> Output:
    call = Call(op, backend, stream)
    tr = side(call, train, "train")
    out_obj, out_arr = call.out(out, "out", shape(tr.s))
    c = getattr(call.ctx, op)(_train_tuple(tr), bool(bias), out_arr, float(scale), float(beta), form_code(call, form))
    return Output(call.result(out_obj), form_choice(c))


def ghost_gram(
    train: Factors,
    *,
    bias: bool = False,
    out: Any = None,
    scale: float = 1.0,
    beta: float = 0.0,
    form: str = "auto",
    backend: Optional[str] = None,
    stream: Any = None,
) -> Output:
    """Pairwise train × train Gram matrix ``K[n, m] = beta·K + scale·<G_n, G_m>``, ``out`` f32
    ``[N, N]``. Returns ``Output(out, FormChoice)``."""
    return _train_only("ghost_gram", train, bias, out, scale, beta, form, backend, stream, lambda n: (n, n))


def ghost_sqnorm(
    train: Factors,
    *,
    bias: bool = False,
    out: Any = None,
    scale: float = 1.0,
    beta: float = 0.0,
    form: str = "auto",
    backend: Optional[str] = None,
    stream: Any = None,
) -> Output:
    """Per-sample squared gradient norms ``out[n] = beta·out + scale·‖G_n‖²``, ``out`` f32 ``[N]``
    (the diagonal of :func:`ghost_gram`; ghost clipping in DP-SGD). Returns ``Output(out, FormChoice)``."""
    return _train_only("ghost_sqnorm", train, bias, out, scale, beta, form, backend, stream, lambda n: (n,))
