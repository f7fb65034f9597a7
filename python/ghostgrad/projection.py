"""LoGra projections of per-sample gradients (MATH.md §3), their second moments for the
preconditioners (§4), influence scores in the projected space, and data value embeddings (§5).

``Ĝ_n = P_out G_n P_inᵀ = Σ_t (P_out b_{n,t})(P_in a_{n,t})ᵀ ∈ R^{k_out × k_in}``, flattened
row-major (``ĝ_n[o·k_in + i] = Ĝ_n[o, i]``). With a bias, ``a`` is augmented with a trailing 1
(the last column of ``P_in`` projects ``Σ_t b_{n,t}``). Embedding layers gather columns of
``P_in`` by token id. Every output is f32, ``out = beta·out + scale·result``.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union

from . import errors
from ._core import FLOATS, IDS, Call, label
from ._sides import Params, kind_tuple, proj_tuple, side, widths
from .model import _use
from .types import DvembReport, Embedding, Factors, LayerUse, Linear, Norm, ParamProjection, ProjectLayer, Projection

__all__ = [
    "kron_project",
    "kron_project_embedding",
    "kron_project_layers",
    "kron_project_model",
    "projection_matrix",
    "kfac_covariances",
    "kfac_covariances_model",
    "projected_fisher",
    "ekfac_eigen_correction",
    "influence_scores",
    "influence_scores_groups",
    "dvemb_layers",
    "dvemb_scores",
    "accumulate_values",
]


def _layer(call: Call, i: Optional[int], l: ProjectLayer, n: Optional[int]):
    pre = "" if i is None else (label(i, l.name, "layers") + ".")
    if isinstance(l.kind, Linear):
        if l.kind.layout != "out_in":
            raise call.fail(errors.InvalidArgument, pre + "kind.layout", "must be 'out_in' here (use kron_project_model for Conv1D weights)")
        tr = side(call, l.train, pre + "train", dx=l.kind.d_in, db=l.kind.d_out, samples=n)
        proj = proj_tuple(call, l.proj, pre + "proj", rows=l.kind.d_out, cols=l.kind.d_in + int(l.kind.bias))
        return ("linear", tr.x, tr.b, tr.s, tr.t, tr.mask, bool(l.kind.bias), l.kind.d_in, l.kind.d_out, proj), tr, l.proj
    if isinstance(l.kind, Embedding):
        tr = side(call, l.train, pre + "train", dx=None, db=l.kind.d, ids_vocab=l.kind.vocab, samples=n)
        proj = proj_tuple(call, l.proj, pre + "proj", rows=l.kind.d, cols=l.kind.vocab)
        return ("embedding", tr.x, tr.b, tr.s, tr.t, tr.mask, False, l.kind.vocab, l.kind.d, proj), tr, l.proj
    raise call.fail(errors.InvalidArgument, pre + "kind", f"is a {type(l.kind).__name__}; expected Linear or Embedding (norms: kron_project_model)")


def kron_project(
    train: Factors,
    proj: Projection,
    *,
    bias: bool = False,
    out: Any = None,
    scale: float = 1.0,
    beta: float = 0.0,
    backend: Optional[str] = None,
    stream: Any = None,
) -> Any:
    """Projected per-sample gradients of one Linear layer: ``out[n] = beta·out + scale·vec(Ĝ_n)``,
    ``out`` f32 ``[N, k_out·k_in]``."""
    call = Call("kron_project", backend, stream)
    b = train.b
    d_in, d_out = int(train.x.shape[-1]), int(b.shape[-1])
    return _project(call, [ProjectLayer(Linear(d_in, d_out, bias), train, proj)], out, scale, beta, single=True)


def kron_project_embedding(
    ids: Any,
    b: Any,
    proj: Projection,
    *,
    vocab: int,
    mask: Any = None,
    out: Any = None,
    scale: float = 1.0,
    beta: float = 0.0,
    backend: Optional[str] = None,
    stream: Any = None,
) -> Any:
    """Projected per-sample gradients of an embedding layer from token ids ``ids [N, T]``
    (int32 / int64) and ``b [N, T, d]``: ``Ĝ_n = Σ_t (P_out b_{n,t})(P_in[:, id_{n,t}])ᵀ``,
    ``P_in ∈ R^{k_in × vocab}``; ``out`` f32 ``[N, k_out·k_in]``."""
    call = Call("kron_project_embedding", backend, stream)
    layer = ProjectLayer(Embedding(vocab, int(b.shape[-1])), Factors(ids, b, mask), proj)
    return _project(call, [layer], out, scale, beta, single=True)


def kron_project_layers(
    layers: Sequence[ProjectLayer],
    *,
    out: Any = None,
    scale: float = 1.0,
    beta: float = 0.0,
    backend: Optional[str] = None,
    stream: Any = None,
) -> Any:
    """Several layers (Linear ``out_in`` or Embedding, same ``N``) into one
    ``[N, Σ_l k_out^l·k_in^l]`` output, layer ``l`` at column offset ``Σ_{l'<l} k_out^{l'}·k_in^{l'}``."""
    return _project(Call("kron_project_layers", backend, stream), layers, out, scale, beta, single=False)


def _project(call: Call, layers, out, scale, beta, single: bool) -> Any:
    if not layers:
        raise call.fail(errors.ShapeError, "layers", "is empty")
    native, n, width = [], None, 0
    for i, l in enumerate(layers):
        nl, tr, p = _layer(call, None if single else i, l, n)
        n = tr.s if n is None else n
        width += p.width
        native.append(nl)
    out_obj, out_arr = call.out(out, "out", (n, width))
    call.ctx.kron_project_layers(native, out_arr, float(scale), float(beta))
    return call.result(out_obj)


def _storage(kind) -> Tuple[int, int]:
    if isinstance(kind, Linear):
        return (kind.d_out, kind.d_in + int(kind.bias)) if kind.layout == "out_in" else (kind.d_in + int(kind.bias), kind.d_out)
    if isinstance(kind, Embedding):
        return (kind.vocab, kind.d)
    return (kind.d, 1 + int(kind.bias))


def _model_params(call: Call, uses: Sequence[LayerUse], params: Sequence[ParamProjection]):
    if not uses:
        raise call.fail(errors.ShapeError, "uses", "is empty")
    keys = Params()
    native, n = [], None
    storage = {}
    for i, u in enumerate(uses):
        nu, tr, _ = _use(call, i, u, n, keys, with_query=False)
        n = tr.s if n is None else n
        storage.setdefault(u.param, _storage(u.kind))
        native.append(nu)
    nparams, seen = [], set()
    for j, pp in enumerate(params):
        if not isinstance(pp, ParamProjection):
            raise call.fail(errors.InvalidArgument, f"params[{j}]", f"is a {type(pp).__name__}; expected ghostgrad.ParamProjection")
        if pp.param not in storage:
            raise call.fail(errors.InvalidArgument, f"params[{j}].param", f"{pp.param!r} has no use")
        if pp.param in seen:
            raise call.fail(errors.InvalidArgument, f"params[{j}].param", f"{pp.param!r} appears twice")
        seen.add(pp.param)
        rows, cols = storage[pp.param]
        nparams.append((keys.id(pp.param), proj_tuple(call, pp.proj, f"params[{j}].proj", rows=rows, cols=cols)))
    missing = [k for k in storage if k not in seen]
    if missing:
        raise call.fail(errors.InvalidArgument, "params", f"has no projection for param {missing[0]!r}")
    return native, nparams, n


def kron_project_model(
    uses: Sequence[LayerUse],
    params: Sequence[ParamProjection],
    *,
    out: Any = None,
    scale: float = 1.0,
    beta: float = 0.0,
    backend: Optional[str] = None,
    stream: Any = None,
) -> Tuple[Any, List[Tuple[int, int]]]:
    """Projected per-sample gradients of every parameter of a model:
    ``out[n, offset_p + j] = beta·out + scale·ĝ^p_n[j]``, ``out`` f32 ``[N, Σ_p k_out^p·k_in^p]``
    with the blocks in ``params`` order; a tied parameter's uses are summed into one block.
    Returns ``(out, blocks)`` with ``blocks[p] = (offset, width)``, as
    :func:`influence_scores_groups` takes them. Query sides are ignored."""
    call = Call("kron_project_model", backend, stream)
    native, nparams, n = _model_params(call, uses, params)
    width = sum(p.proj.width for p in params)
    out_obj, out_arr = call.out(out, "out", (n, width))
    blocks = call.ctx.kron_project_model(n, native, nparams, out_arr, float(scale), float(beta))
    return call.result(out_obj), [tuple(b) for b in blocks]


def projection_matrix(
    k: int,
    d: int,
    *,
    seed: int = 0,
    layer: int = 0,
    which: str = "in",
    dist: str = "gaussian",
    like: Any = None,
    out: Any = None,
    backend: Optional[str] = None,
    stream: Any = None,
) -> Any:
    """The random matrix ``which`` (``"in"``: ``P_in``, ``"out"``: ``P_out``) of ``layer`` under
    ``seed``, ``k × d`` f32, bit-identical to what the projection kernels generate (for ``P_in``
    of a layer with bias pass ``d = d_in + 1``). Allocated like ``like`` (default numpy on the CPU)."""
    call = Call("projection_matrix", backend, stream)
    if which not in ("in", "out"):
        raise call.fail(errors.InvalidArgument, "which", f"must be 'in' or 'out', got {which!r}")
    if dist not in ("gaussian", "rademacher"):
        raise call.fail(errors.InvalidArgument, "dist", f"must be 'gaussian' or 'rademacher', got {dist!r}")
    if like is None and out is None:
        import numpy as np

        like = np.empty(0, np.float32)
    call._device_of(like if like is not None else out, "like")
    out_obj, out_arr = call.out(out, "out", (int(k), int(d)))
    call.ctx.projection_matrix(int(seed), int(layer), which, int(k), int(d), dist, out_arr)
    return call.result(out_obj)


def kfac_covariances(
    layer: ProjectLayer,
    *,
    c_in: Any = None,
    c_out: Any = None,
    scale: float = 1.0,
    beta: float = 0.0,
    backend: Optional[str] = None,
    stream: Any = None,
) -> Tuple[Any, Any]:
    """K-FAC factors of one layer over every kept token:
    ``c_in = beta·c_in + scale·Σ_{n,t} (P_in a)(P_in a)ᵀ`` (f32 ``[k_in, k_in]``, ``a`` augmented with
    1 for a bias, one-hot ids for an embedding) and ``c_out = ... Σ (P_out b)(P_out b)ᵀ``
    (f32 ``[k_out, k_out]``), exactly symmetric. Returns ``(c_in, c_out)``."""
    call = Call("kfac_covariances", backend, stream)
    nl, _, p = _layer(call, None, layer, None)
    a_obj, a_arr = call.out(c_in, "c_in", (p.k_in, p.k_in))
    b_obj, b_arr = call.out(c_out, "c_out", (p.k_out, p.k_out))
    call.ctx.kfac_covariances(nl, a_arr, b_arr, float(scale), float(beta))
    return call.result(a_obj), call.result(b_obj)


def kfac_covariances_model(
    uses: Sequence[LayerUse],
    params: Sequence[ParamProjection],
    *,
    scale: float = 1.0,
    beta: float = 0.0,
    c_rows: Optional[Sequence[Any]] = None,
    c_cols: Optional[Sequence[Any]] = None,
    backend: Optional[str] = None,
    stream: Any = None,
) -> Tuple[List[Any], List[Any]]:
    """K-FAC factors of each matrix parameter in its storage layout (tied uses' token
    statistics summed): ``c_rows[p]`` f32 ``[k_out, k_out]`` (``P_rows`` side), ``c_cols[p]``
    f32 ``[k_in, k_in]`` (``P_cols`` side). Fit with ``Kfac.from_moments(c_cols[p], c_rows[p])``.
    Norm parameters are not Kronecker-factored: an error."""
    call = Call("kfac_covariances_model", backend, stream)
    native, nparams, n = _model_params(call, uses, params)
    rows, cols = [], []
    for j, pp in enumerate(params):
        rows.append(call.out(None if c_rows is None else c_rows[j], f"c_rows[{j}]", (pp.proj.k_out, pp.proj.k_out)))
        cols.append(call.out(None if c_cols is None else c_cols[j], f"c_cols[{j}]", (pp.proj.k_in, pp.proj.k_in)))
    call.ctx.kfac_covariances_model(n, native, nparams, [r[1] for r in rows], [c[1] for c in cols], float(scale), float(beta))
    return [call.result(r[0]) for r in rows], [call.result(c[0]) for c in cols]


def _rows(call: Call, grads: Any, name: str = "grads") -> Any:
    g = call.arr(grads, name, ("f32",))
    if len(g.shape) != 2:
        raise call.fail(errors.ShapeError, name, f"has shape {g.shape}; expected [rows, row_stride]")
    return g


def projected_fisher(
    grads: Any,
    *,
    k: Optional[int] = None,
    offset: int = 0,
    out: Any = None,
    scale: float = 1.0,
    beta: float = 0.0,
    backend: Optional[str] = None,
    stream: Any = None,
) -> Any:
    """Raw projected Fisher (SYRK): ``out = beta·out + scale·Σ_r ĝ_r ĝ_rᵀ``, ``ĝ_r`` = columns
    ``offset : offset + k`` of row ``r`` of ``grads`` f32 ``[n, row_stride]`` (default: all
    columns); ``out`` f32 ``[k, k]``, exactly symmetric."""
    call = Call("projected_fisher", backend, stream)
    g = _rows(call, grads)
    k = g.shape[1] - offset if k is None else int(k)
    out_obj, out_arr = call.out(out, "out", (k, k))
    call.ctx.projected_fisher(g, g.shape[0], k, int(offset), g.shape[1], out_arr, float(scale), float(beta))
    return call.result(out_obj)


def ekfac_eigen_correction(
    grads: Any,
    q_out: Any,
    q_in: Any,
    *,
    offset: int = 0,
    out: Any = None,
    scale: float = 1.0,
    beta: float = 0.0,
    backend: Optional[str] = None,
    stream: Any = None,
) -> Any:
    """EK-FAC second moments in the Kronecker eigenbasis:
    ``out = beta·out + scale·Σ_r (Q_outᵀ Ĝ_r Q_in)^{⊙2}``, ``Ĝ_r`` the ``k_out × k_in`` matrix at
    columns ``offset ..`` of row ``r`` of ``grads`` f32 ``[n, row_stride]``; ``q_out`` f32
    ``[k_out, k_out]``, ``q_in`` f32 ``[k_in, k_in]`` (eigenvectors as columns, from
    ``Kfac.eigenvectors()``); ``out`` f32 ``[k_out, k_in]``."""
    call = Call("ekfac_eigen_correction", backend, stream)
    g = _rows(call, grads)
    qb = call.arr(q_out, "q_out", ("f32",))
    qa = call.arr(q_in, "q_in", ("f32",))
    k_o, k_i = qb.shape[0], qa.shape[0]
    for a, nm, kk in ((qb, "q_out", k_o), (qa, "q_in", k_i)):
        if a.shape != (kk, kk):
            raise call.fail(errors.ShapeError, nm, f"has shape {a.shape}; expected a square [k, k]")
    out_obj, out_arr = call.out(out, "out", (k_o, k_i))
    call.ctx.ekfac_eigen_correction(g, g.shape[0], k_o, k_i, int(offset), g.shape[1], qb, qa, out_arr, float(scale), float(beta))
    return call.result(out_obj)


_MODES = ("dot", "cosine", "l2")


def influence_scores(
    test: Any,
    train: Any,
    *,
    mode: str = "dot",
    train_self: Any = None,
    out: Any = None,
    scale: float = 1.0,
    beta: float = 0.0,
    backend: Optional[str] = None,
    stream: Any = None,
) -> Any:
    """Influence scores of a block of training rows: ``out[q, j] = beta·out +
    scale·f(Σ_c test[q, c]·train[j, c])``, ``f`` = identity (``"dot"``), ``S/√train_self[j]``
    (``"cosine"``) or ``S − ½·train_self[j]`` (``"l2"``); ``test`` f32 ``[n_test, k]``, ``train``
    f32 ``[n_block, k]``, ``train_self`` f32 ``[n_block]`` (cosine / l2 only); ``out`` f32
    ``[n_test, n_block]``."""
    call = Call("influence_scores", backend, stream)
    if mode not in _MODES:
        raise call.fail(errors.InvalidArgument, "mode", f"must be one of {_MODES}, got {mode!r}")
    te = _rows(call, test, "test")
    tr = call.arr(train, "train", ("f32",))
    if len(tr.shape) != 2 or tr.shape[1] != te.shape[1]:
        raise call.fail(errors.ShapeError, "train", f"has shape {tr.shape}, expected [n_block, {te.shape[1]}] (the width of test)")
    ts = call.opt(train_self, "train_self", ("f32",), (tr.shape[0],))
    out_obj, out_arr = call.out(out, "out", (te.shape[0], tr.shape[0]))
    call.ctx.influence_scores(te, tr, te.shape[0], tr.shape[0], te.shape[1], out_arr, mode, ts, float(scale), float(beta))
    return call.result(out_obj)


def influence_scores_groups(
    test: Any,
    train: Any,
    groups: Sequence[Tuple[int, int]],
    *,
    mode: str = "dot",
    train_self: Any = None,
    out: Any = None,
    scale: float = 1.0,
    beta: float = 0.0,
    backend: Optional[str] = None,
    stream: Any = None,
) -> Any:
    """Per-group partial influence scores, reading each group's columns ``(offset, width)`` of
    the rows in place: ``out[g, q, j] = beta·out + scale·f(Σ_{c ∈ group g} test[q, c]·train[j, c])``,
    ``out`` f32 ``[G, n_test, n_block]``, ``train_self`` f32 ``[G, n_block]`` (cosine / l2)."""
    call = Call("influence_scores_groups", backend, stream)
    if mode not in _MODES:
        raise call.fail(errors.InvalidArgument, "mode", f"must be one of {_MODES}, got {mode!r}")
    te = _rows(call, test, "test")
    tr = call.arr(train, "train", ("f32",))
    if len(tr.shape) != 2 or tr.shape[1] != te.shape[1]:
        raise call.fail(errors.ShapeError, "train", f"has shape {tr.shape}, expected [n_block, {te.shape[1]}] (the width of test)")
    gs = [(int(o), int(w)) for o, w in groups]
    ts = call.opt(train_self, "train_self", ("f32",), (len(gs), tr.shape[0]))
    out_obj, out_arr = call.out(out, "out", (len(gs), te.shape[0], tr.shape[0]))
    call.ctx.influence_scores_groups(te, tr, te.shape[0], tr.shape[0], te.shape[1], gs, out_arr, mode, ts, float(scale), float(beta))
    return call.result(out_obj)


def dvemb_layers(
    grads: Any,
    layers: Sequence[Tuple[int, int, Any]],
    rows: Sequence[int],
    etas: Sequence[float],
    *,
    loss: str = "mean",
    blocking: Union[str, int] = "auto",
    e_out: Any = None,
    backend: Optional[str] = None,
    stream: Any = None,
) -> Tuple[Any, DvembReport]:
    """Data value embeddings, reverse sweep (MATH.md §5) of several layers over several steps:
    for each layer ``(offset, k, m)`` (columns ``offset : offset + k`` of ``grads`` f32
    ``[R, row_stride]``, ``R = Σ rows``, rows in forward step order; ``m`` f32 ``[k, k]``, updated
    in place), for every step ``t`` from the last down to the first,
    ``E_t = η_t (G_t − G_t Mᵀ)`` into ``e_out``'s rows of step ``t``, then ``M ← M + c_t E_tᵀ G_t``
    (``c_t`` = 1 for ``loss="sum"``, ``1/rows_t`` for ``"mean"``). ``blocking``: ``"auto"``,
    ``"per_step"`` or the rows per block. Returns ``(e_out, DvembReport)``."""
    call = Call("dvemb_layers", backend, stream)
    g = _rows(call, grads)
    if loss not in ("mean", "sum"):
        raise call.fail(errors.InvalidArgument, "loss", f"must be 'mean' or 'sum', got {loss!r}")
    if isinstance(blocking, str):
        if blocking not in ("auto", "per_step"):
            raise call.fail(errors.InvalidArgument, "blocking", f"must be 'auto', 'per_step' or an int, got {blocking!r}")
        blk = -1 if blocking == "auto" else 0
    else:
        blk = int(blocking)
        if blk <= 0:
            raise call.fail(errors.ShapeError, "blocking", f"must be at least 1 row per block (got {blk})")
    nl = []
    for i, (off, k, m) in enumerate(layers):
        nl.append((int(off), int(k), call.arr(m, f"layers[{i}].m", ("f32", "f64"), (int(k), int(k)))))
    out_obj, out_arr = call.out(e_out, "e_out", g.shape)
    blocks, rec, exe = call.ctx.dvemb_layers(g, g.shape[1], nl, [int(r) for r in rows], [float(e) for e in etas], loss, out_arr, blk)
    rep = DvembReport(tuple(tuple(tuple(r) for r in b) for b in blocks), rec, exe)
    return call.result(out_obj), rep


def dvemb_scores(
    test: Any,
    e: Any,
    *,
    out: Any = None,
    scale: float = 1.0,
    beta: float = 0.0,
    backend: Optional[str] = None,
    stream: Any = None,
) -> Any:
    """DVEmb scores ``out[q, r] = beta·out + scale·<test[q], e[r]>``: ``test`` f32
    ``[n_test, width]``, ``e`` f32 ``[n_rows, width]`` (the ``e_out`` of :func:`dvemb_layers`);
    ``out`` f32 ``[n_test, n_rows]``."""
    return influence_scores(test, e, out=out, scale=scale, beta=beta, backend=backend, stream=stream)


def accumulate_values(values: Any, ids: Any, phi: Any, *, backend: Optional[str] = None, stream: Any = None) -> Any:
    """Float64 value accumulation ``phi[ids[k]] += values[k]`` in ``k`` order (ids may repeat;
    the sequential float64 sum, bit for bit on every backend): ``values`` f32 ``[N]``, ``ids``
    int32 ``[N]``, ``phi`` f64 ``[num_ids]`` (updated in place and returned)."""
    call = Call("accumulate_values", backend, stream)
    v = call.arr(values, "values", ("f32",))
    if len(v.shape) != 1:
        raise call.fail(errors.ShapeError, "values", f"has shape {v.shape}; expected [N]")
    i = call.arr(ids, "ids", IDS, v.shape)
    if framework_is_jax(phi):
        raise call.fail(errors.InvalidArgument, "phi", "is a JAX array: JAX arrays are immutable, so ghostgrad cannot accumulate into them")
    p = call.arr(phi, "phi", ("f64",))
    if len(p.shape) != 1:
        raise call.fail(errors.ShapeError, "phi", f"has shape {p.shape}; expected [num_ids]")
    if p.device[0] == 1:
        from . import _native

        bad = _native.first_bad_id(i, None, p.shape[0])
        if bad is not None:
            raise call.fail(errors.InvalidArgument, "ids", f"holds id {bad[1]} at row {bad[0]}, outside [0, num_ids = {p.shape[0]})")
    call.ctx.accumulate_values(v, i, p)
    return phi


def framework_is_jax(obj: Any) -> bool:
    from ._core import framework_of

    return framework_of(obj) == "jax"
