"""Model-level calls (every layer of a transformer at once): Linear (both weight layouts,
convolutions as unfolded patches), embedding, LayerNorm / RMSNorm, and tied parameters with
their cross terms, from the factors of one backward pass. See :mod:`ghostgrad.types` for what
to feed each :class:`~ghostgrad.types.LayerUse`.

* :func:`model_dot`: ``out[n, v] = beta·out + scale·Σ_params <G_n, Gq_v>``, ``[N, V]``;
* :func:`model_gram`: ``K[n, m] = Σ_params <G_n, G_m>``, ``[N, N]``;
* :func:`model_sqnorm`: ``‖G_n‖²`` over all parameters, ``[N]``;
* :func:`model_ghg`: In-Run Data Shapley, first + second order:
  ``φ_n = −η Σ_p <G^p_n, g_val^p> + (η²/2) Σ_p <G^p_n, (H_val v)^p>``, ``[N]``.

Every use's training side has the call's ``N`` samples; all query sides have the same number
of segments ``V``.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

from . import errors
from ._core import FLOATS, Call, label
from ._sides import Params, embedding_form_code, form_code, kind_tuple, query_tuple, side, widths
from .layers import Output
from .types import Embedding, GhgUse, LayerUse, Norm, TermChoice

__all__ = ["model_dot", "model_gram", "model_sqnorm", "model_ghg"]


def _use(call: Call, i: int, u: Any, n: Optional[int], params: Params, with_query: bool):
    if not isinstance(u, LayerUse):
        raise call.fail(errors.InvalidArgument, f"uses[{i}]", f"is a {type(u).__name__}; expected ghostgrad.LayerUse")
    pre = label(i, u.name)
    kind = kind_tuple(call, u.kind, f"{pre}.kind")
    dx, db = widths(u.kind)
    vocab = u.kind.vocab if isinstance(u.kind, Embedding) else None
    tr = side(call, u.train, f"{pre}: train", dx=dx, db=db, ids_vocab=vocab, samples=n)
    q = None
    if with_query:
        if u.train_only:
            if u.query is not None:
                raise call.fail(errors.InvalidArgument, f"{pre}: query", "is given but train_only=True")
            if isinstance(u.kind, Norm):
                raise call.fail(errors.InvalidArgument, f"{pre}: train_only", "is not possible for a norm use (a norm parameter needs every use's query)")
        elif u.query is None:
            raise call.fail(errors.InvalidArgument, f"{pre}: query", "is missing (model_dot needs a query side for every use; a use tied to uses that have one may be train_only=True)")
        else:
            qs = side(call, u.query, f"{pre}: query", dx=dx, db=db, ids_vocab=vocab, query=True)
            q = (qs, query_tuple(qs))
    qn = q[1] if q is not None else ("train_only" if u.train_only else None)
    native = (params.id(u.param), kind, tr.x, tr.b, tr.t, tr.mask, qn)
    return native, tr, (None if q is None else q[0])


def _uses(call: Call, uses: Sequence[LayerUse], with_query: bool):
    if not uses:
        raise call.fail(errors.ShapeError, "uses", "is empty")
    params = Params()
    native, n, v, v_from = [], None, None, ""
    for i, u in enumerate(uses):
        nu, tr, q = _use(call, i, u, n, params, with_query)
        n = tr.s if n is None else n
        if q is not None:
            if v is None:
                v, v_from = q.v, label(i, u.name)
            elif q.v != v:
                raise call.fail(errors.ShapeError, f"{label(i, u.name)}: query", f"has {q.v} segments but {v_from} has {v} (one V per call)")
        native.append(nu)
    if with_query:
        if v is None:
            raise call.fail(errors.InvalidArgument, "uses", "have no query side at all")
        tied = {u.param for u in uses if not u.train_only}
        for i, u in enumerate(uses):
            if u.train_only and u.param not in tied:
                raise call.fail(errors.InvalidArgument, f"{label(i, u.name)}: train_only", f"is set but no other use of param {u.param!r} has a query side")
    return native, params, n, v


def _terms(params: Params, terms: List[tuple]) -> List[TermChoice]:
    return [TermChoice(params.keys[p], (i, j), m) for p, i, j, m in terms]


def _model(op: str, uses, out, scale, beta, linear_form, embedding_form, backend, stream) -> Output:
    call = Call(op, backend, stream)
    native, params, n, v = _uses(call, uses, op == "model_dot")
    shape = {"model_dot": (n, v), "model_gram": (n, n), "model_sqnorm": (n,)}[op]
    out_obj, out_arr = call.out(out, "out", shape)
    terms = call.ctx.model(op, n, native, out_arr, float(scale), float(beta), form_code(call, linear_form, "linear_form"), embedding_form_code(call, embedding_form))
    return Output(call.result(out_obj), _terms(params, terms))


def model_dot(
    uses: Sequence[LayerUse],
    *,
    out: Any = None,
    scale: float = 1.0,
    beta: float = 0.0,
    linear_form: str = "auto",
    embedding_form: Optional[str] = None,
    backend: Optional[str] = None,
    stream: Any = None,
) -> Output:
    """Train × query inner products of whole-model per-sample gradients:
    ``out[n, v] = beta·out + scale·Σ_params <G_n, Gq_v>``, ``out`` f32 ``[N, V]``. Every use
    needs a query side, except ``train_only`` uses tied to uses that have one. Returns
    ``Output(out, [TermChoice])``."""
    return _model("model_dot", uses, out, scale, beta, linear_form, embedding_form, backend, stream)


def model_gram(
    uses: Sequence[LayerUse],
    *,
    out: Any = None,
    scale: float = 1.0,
    beta: float = 0.0,
    linear_form: str = "auto",
    embedding_form: Optional[str] = None,
    backend: Optional[str] = None,
    stream: Any = None,
) -> Output:
    """Pairwise train × train Gram matrix of whole-model per-sample gradients:
    ``K[n, m] = beta·K + scale·Σ_params <G_n, G_m>``, ``out`` f32 ``[N, N]`` (query sides ignored)."""
    return _model("model_gram", uses, out, scale, beta, linear_form, embedding_form, backend, stream)


def model_sqnorm(
    uses: Sequence[LayerUse],
    *,
    out: Any = None,
    scale: float = 1.0,
    beta: float = 0.0,
    linear_form: str = "auto",
    embedding_form: Optional[str] = None,
    backend: Optional[str] = None,
    stream: Any = None,
) -> Output:
    """Per-sample squared norms of whole-model gradients ``out[n] = beta·out + scale·‖G_n‖²``
    (tied parameters counted once with their cross terms), ``out`` f32 ``[N]``."""
    return _model("model_sqnorm", uses, out, scale, beta, linear_form, embedding_form, backend, stream)


def model_ghg(
    uses: Sequence[GhgUse],
    eta: float,
    *,
    out: Any = None,
    scale: float = 1.0,
    beta: float = 0.0,
    linear_form: str = "auto",
    embedding_form: Optional[str] = None,
    backend: Optional[str] = None,
    stream: Any = None,
) -> Output:
    """In-Run Data Shapley over a whole model, first + second order (MATH.md §2):
    ``out[n] = beta·out + scale·(−η Σ_p <G^p_n, g_val^p> + (η²/2) Σ_p <G^p_n, (H_val v)^p>)``,
    ``out`` f32 ``[N]``. ``η`` is the per-sample learning rate (``lr / batch`` for a mean loss).
    Each use's ``val`` is one segment (all validation rows). Returns ``Output(out, [TermChoice])``."""
    call = Call("model_ghg", backend, stream)
    if not uses:
        raise call.fail(errors.ShapeError, "uses", "is empty")
    params = Params()
    native, n = [], None
    for i, u in enumerate(uses):
        if not isinstance(u, GhgUse):
            raise call.fail(errors.InvalidArgument, f"uses[{i}]", f"is a {type(u).__name__}; expected ghostgrad.GhgUse")
        pre = label(i, u.name)
        kind = kind_tuple(call, u.kind, f"{pre}.kind")
        dx, db = widths(u.kind)
        vocab = u.kind.vocab if isinstance(u.kind, Embedding) else None
        tr = side(call, u.train, f"{pre}: train", dx=dx, db=db, ids_vocab=vocab, samples=n)
        n = tr.s if n is None else n
        val = side(call, u.val, f"{pre}: val", dx=dx, db=db, ids_vocab=vocab, query=True)
        if u.val.segments is None:
            val.seg, val.v = ("single",), 1
        if val.v != 1:
            raise call.fail(errors.InvalidArgument, f"{pre}: val.segments", f"gives {val.v} segments; model_ghg takes one validation segment (segments='single')")
        b_dot = call.arr(u.b_dot, f"{pre}: b_dot", FLOATS, val.b.shape)
        x_dot = None
        if u.x_dot is not None:
            if dx is None:
                raise call.fail(errors.InvalidArgument, f"{pre}: x_dot", "is given for an embedding (ids do not move with the weights)")
            x_dot = call.arr(u.x_dot, f"{pre}: x_dot", FLOATS, val.x.shape)
        native.append((params.id(u.param), kind, tr.x, tr.b, tr.t, tr.mask, query_tuple(val), x_dot, b_dot))
    out_obj, out_arr = call.out(out, "out", (n,))
    terms = call.ctx.model_ghg(n, native, float(eta), out_arr, float(scale), float(beta), form_code(call, linear_form, "linear_form"), embedding_form_code(call, embedding_form))
    return Output(call.result(out_obj), _terms(params, terms))
