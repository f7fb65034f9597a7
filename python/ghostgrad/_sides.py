"""Turning :class:`~ghostgrad.types.Factors` into the native call's arguments: shapes derived
from the arrays (and checked against each other and the layer kind), every argument named as
the caller spells it."""

from __future__ import annotations

from typing import Any, Dict, Hashable, List, Optional, Sequence, Tuple

from . import errors
from . import _native
from ._core import FLOATS, IDS, MASKS, Call
from .types import Embedding, Factors, LayerKind, Linear, Norm

_FORMS = {"auto": 0, "gram": 1, "dense_query": 2, "materialize": 3}
_EMB_FORMS = {None: 0, "auto": 0, "masked_gram": 1, "scatter_gather": 2}


def form_code(call: Call, form: str, name: str = "form") -> int:
    try:
        return _FORMS[form]
    except KeyError:
        raise call.fail(errors.InvalidArgument, name, f"must be one of {tuple(_FORMS)}, got {form!r}") from None


def embedding_form_code(call: Call, form: Optional[str]) -> int:
    try:
        return _EMB_FORMS[form]
    except KeyError:
        raise call.fail(errors.InvalidArgument, "embedding_form", f"must be None, 'masked_gram' or 'scatter_gather', got {form!r}") from None


def lead_dims(call: Call, b: Any, name: str) -> Tuple[int, int]:
    """``(S, T)`` of a side from its ``b``: ``[S, T, d]`` or ``[S, d]`` (``T = 1``)."""
    if len(b.shape) == 3:
        return b.shape[0], b.shape[1]
    if len(b.shape) == 2:
        return b.shape[0], 1
    raise call.fail(errors.ShapeError, name, f"has shape {b.shape}; expected [samples, tokens, d] or [samples, d]")


def kind_tuple(call: Call, kind: LayerKind, name: str) -> tuple:
    if isinstance(kind, Linear):
        if kind.layout not in ("out_in", "in_out"):
            raise call.fail(errors.InvalidArgument, f"{name}.layout", f"must be 'out_in' or 'in_out', got {kind.layout!r}")
        return ("linear", int(kind.d_in), int(kind.d_out), bool(kind.bias), 0 if kind.layout == "out_in" else 1)
    if isinstance(kind, Embedding):
        return ("embedding", int(kind.vocab), int(kind.d))
    if isinstance(kind, Norm):
        return ("norm", int(kind.d), bool(kind.bias))
    raise call.fail(errors.InvalidArgument, name, f"is a {type(kind).__name__}; expected Linear, Embedding or Norm")


def widths(kind: LayerKind) -> Tuple[Optional[int], int]:
    """Width of ``x`` (None for ids) and of ``b``."""
    if isinstance(kind, Linear):
        return kind.d_in, kind.d_out
    if isinstance(kind, Embedding):
        return None, kind.d
    return kind.d, kind.d


class Side:
    """One checked side: native arrays plus sizes."""

    __slots__ = ("x", "b", "mask", "s", "t", "dx", "db", "seg", "v")

    def __init__(self, x, b, mask, s, t, dx, db, seg=None, v=0):
        self.x, self.b, self.mask, self.s, self.t, self.dx, self.db, self.seg, self.v = x, b, mask, s, t, dx, db, seg, v

    @property
    def rows(self) -> int:
        return self.s * self.t


def side(
    call: Call,
    f: Factors,
    name: str,
    dx: Optional[int] = -1,
    db: Optional[int] = None,
    *,
    ids_vocab: Optional[int] = None,
    query: bool = False,
    samples: Optional[int] = None,
) -> Side:
    """Checks one side. ``dx = -1``: the width of ``x`` is taken from the array (the layer's
    ``d_in``); ``None``: ``x`` holds ids. ``db = None``: from the array."""
    if not isinstance(f, Factors):
        raise call.fail(errors.InvalidArgument, name, f"is a {type(f).__name__}; expected ghostgrad.Factors(x, b, mask=None)")
    bname, xname = f"{name}.b", f"{name}.x"
    b = call.arr(f.b, bname, FLOATS)
    s, t = lead_dims(call, b, bname)
    if db is None:
        db = b.shape[-1]
    lead = b.shape[:-1]
    if b.shape[-1] != db:
        raise call.fail(errors.ShapeError, bname, f"has shape {b.shape}, expected {lead + (db,)} (last dim = the layer's output width {db})")
    if samples is not None and s != samples:
        raise call.fail(errors.ShapeError, bname, f"has {s} samples (shape {b.shape}), but the call has N = {samples}")
    mask = None
    if f.mask is not None:
        mask = call.arr(f.mask, f"{name}.mask", MASKS)
        if mask.shape not in (lead, (s * t,)):
            raise call.fail(errors.ShapeError, f"{name}.mask", f"has shape {mask.shape}, expected {lead}")
    if dx is None:
        x = call.arr(f.x, xname, IDS, lead)
        if ids_vocab is not None and x.device[0] == 1:
            # Kept ids only (a masked token's id is never read).
            bad = _native.first_bad_id(x, mask, ids_vocab)
            if bad is not None:
                row, value = bad
                raise call.fail(errors.InvalidArgument, xname, f"holds id {value} at flat row {row}, outside [0, vocab = {ids_vocab})")
    else:
        x = call.arr(f.x, xname, FLOATS)
        want = lead + ((x.shape[-1] if dx == -1 else dx),)
        if x.shape != want:
            raise call.fail(errors.ShapeError, xname, f"has shape {x.shape}, expected {want}")
        if x.dtype != b.dtype:
            raise call.fail(errors.DTypeError, xname, f"has dtype {x.dtype} but {bname} has {b.dtype} (one dtype per side)")
        dx = x.shape[-1]
    out = Side(x, b, mask, s, t, dx or 0, db)
    if query:
        out.seg, out.v = segments(call, f.segments, f"{name}.segments", s, t)
    elif f.segments is not None:
        raise call.fail(errors.InvalidArgument, f"{name}.segments", "is given on a training side (segments are for query sides)")
    return out


def segments(call: Call, seg: Any, name: str, s: int, t: int) -> Tuple[tuple, int]:
    """Native segments and the number of segments ``V``."""
    q = s * t
    if seg is None:
        return ("uniform", t), s
    if isinstance(seg, str):
        if seg != "single":
            raise call.fail(errors.InvalidArgument, name, f"must be None, 'single', an int or an int32 offsets array, got {seg!r}")
        return ("single",), 1
    if isinstance(seg, int) and not isinstance(seg, bool):
        if seg <= 0:
            raise call.fail(errors.ShapeError, name, f"must be at least 1 (got {seg})")
        return ("uniform", seg), -(-q // seg)
    off = call.arr(seg, name, ("i32",))
    if len(off.shape) != 1 or off.shape[0] < 2:
        raise call.fail(errors.ShapeError, name, f"has shape {off.shape}; expected offsets [V + 1] with V >= 1")
    return ("offsets", off), off.shape[0] - 1


def query_tuple(sd: Side) -> tuple:
    return (sd.x, sd.b, sd.rows, sd.seg, sd.mask)


class Params:
    """Parameter keys (any hashable) ↔ the native u32 ids, in first-appearance order."""

    def __init__(self) -> None:
        self.ids: Dict[Hashable, int] = {}
        self.keys: List[Hashable] = []

    def id(self, key: Hashable) -> int:
        i = self.ids.get(key)
        if i is None:
            i = self.ids[key] = len(self.keys)
            self.keys.append(key)
        return i


def proj_tuple(call: Call, p: Any, name: str, rows: Optional[int] = None, cols: Optional[int] = None) -> tuple:
    """Native projection ``(k_in, k_out, kind)``; dense matrices checked against ``[k_out, rows]``
    and ``[k_in, cols]`` where those are known."""
    from .types import Projection

    if not isinstance(p, Projection):
        raise call.fail(errors.InvalidArgument, name, f"is a {type(p).__name__}; expected ghostgrad.Projection")
    if p.p_in is not None or p.p_out is not None:
        if p.p_in is None or p.p_out is None:
            raise call.fail(errors.InvalidArgument, name, "needs both p_in and p_out (use Projection.dense(p_in, p_out))")
        p_in = call.arr(p.p_in, f"{name}.p_in", ("f32",), None if cols is None else (p.k_in, cols))
        p_out = call.arr(p.p_out, f"{name}.p_out", ("f32",), None if rows is None else (p.k_out, rows))
        return (int(p.k_in), int(p.k_out), ("dense", p_in, p_out))
    if p.dist not in ("gaussian", "rademacher"):
        raise call.fail(errors.InvalidArgument, f"{name}.dist", f"must be 'gaussian' or 'rademacher', got {p.dist!r}")
    return (int(p.k_in), int(p.k_out), ("random", int(p.seed), int(p.layer), p.dist))
