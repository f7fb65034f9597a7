"""The data that describes a call: layer kinds, factors, uses of parameters, projections, and the
choices ghostgrad reports back. Plain dataclasses; arrays are any DLPack-speaking array (torch,
numpy, JAX, CuPy), never copied.

Shapes: a training side of ``S`` samples of ``T`` tokens is ``x [S, T, d_x]``, ``b [S, T, d_b]``
(``[S, d]`` means ``T = 1``), ``mask [S, T]`` (or ``[S]``) of bool / uint8, nonzero = keep.
Embedding ids are ``[S, T]`` (or ``[S]``) int32 or int64. A query side has the same layout;
its segments (which query rows form query sample ``v``) default to one per leading index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Literal, Optional, Sequence, Tuple, Union

__all__ = [
    "Array",
    "Linear",
    "Embedding",
    "Norm",
    "LayerKind",
    "Factors",
    "LayerUse",
    "GhgUse",
    "DotLayer",
    "Projection",
    "ParamProjection",
    "ProjectLayer",
    "FormCost",
    "FormChoice",
    "TermChoice",
    "DvembReport",
    "Segments",
]

#: Any object with ``__dlpack__`` / ``__dlpack_device__`` (torch.Tensor, numpy.ndarray ≥ 1.22,
#: jax.Array, cupy.ndarray).
Array = Any

#: Query segments: ``None`` = one segment per leading index of ``x`` / ``b``; ``"single"`` = all
#: rows form one query; an ``int`` = consecutive runs of that many rows (the last may be
#: shorter); an int32 array ``offsets [V + 1]`` = segment ``v`` is rows ``offsets[v]:offsets[v+1]``.
Segments = Union[None, Literal["single"], int, Array]


@dataclass(frozen=True)
class Linear:
    """A linear layer ``y = x Wᵀ (+ β)`` (``layout="out_in"``: ``nn.Linear``, ``W [d_out, d_in]``,
    also convolutions on unfolded patches) or ``y = x W (+ β)`` (``layout="in_out"``: HF
    ``Conv1D``, ``W [d_in, d_out]``). Feed ``x`` = inputs ``[.., d_in]``, ``b = ∂loss/∂y [.., d_out]``.
    Per-sample gradient ``G = Σ_t b_t x_tᵀ`` (stored transposed for ``in_out``) and ``Σ_t b_t``."""

    d_in: int
    d_out: int
    bias: bool = False
    layout: Literal["out_in", "in_out"] = "out_in"


@dataclass(frozen=True)
class Embedding:
    """An embedding ``y = E[id]``, ``E [vocab, d]``. Feed ``x`` = token ids (int32 / int64,
    checked to lie in ``[0, vocab)`` on the host), ``b [.., d]``. ``G = Σ_t e_{id_t} b_tᵀ``."""

    vocab: int
    d: int


@dataclass(frozen=True)
class Norm:
    """LayerNorm / RMSNorm ``y = γ ⊙ x̂ + β``. Feed ``x`` = the normalized input ``x̂ [.., d]``
    (before ``γ, β``), ``b [.., d]``. ``g_γ = Σ_t b_t ⊙ x̂_t``, ``g_β = Σ_t b_t``."""

    d: int
    bias: bool = False


LayerKind = Union[Linear, Embedding, Norm]


@dataclass
class Factors:
    """One side's factors of one use: ``x`` (inputs, normalized inputs, or ids), ``b`` (output
    gradients), optional ``mask`` (nonzero = keep; a masked token is skipped: NaN there never
    leaks), and for a query side the ``segments`` (see :data:`Segments`)."""

    x: Array
    b: Array
    mask: Optional[Array] = None
    segments: Segments = None


@dataclass
class LayerUse:
    """One use of a parameter in a model-level call. Uses with equal ``param`` (any hashable key,
    e.g. the parameter's name) are one tied parameter, cross terms included.

    ``query`` is needed by :func:`ghostgrad.model_dot` (ignored by the train × train calls),
    except for a non-norm use tied to uses that have one (``train_only=True``: it adds its
    training gradient and nothing to the query side, e.g. the token embedding tied to the LM
    head). ``name`` (e.g. the module path) is quoted in error messages."""

    kind: LayerKind
    param: Hashable
    train: Factors
    query: Optional[Factors] = None
    train_only: bool = False
    name: Optional[str] = None


@dataclass
class GhgUse:
    """One use of :func:`ghostgrad.model_ghg` (In-Run Data Shapley, first + second order):
    training factors, the validation factors ``val`` (one segment: all rows form the validation
    batch's query), and their derivatives along the batch gradient: ``b_dot`` (same shape as
    ``val.b``) always, ``x_dot`` (same shape as ``val.x``) where the input moves with the
    weights (``None`` for embedding ids and for the model's input)."""

    kind: LayerKind
    param: Hashable
    train: Factors
    val: Factors
    b_dot: Array
    x_dot: Optional[Array] = None
    name: Optional[str] = None


@dataclass
class DotLayer:
    """One Linear layer of :func:`ghostgrad.ghost_dot_layers`."""

    train: Factors
    query: Factors
    bias: bool = False
    form: Literal["auto", "gram", "dense_query", "materialize"] = "auto"
    name: Optional[str] = None


@dataclass(frozen=True)
class Projection:
    """A Kronecker projection ``Ĝ = P_out G P_inᵀ`` of shape ``[k_out, k_in]``.

    Random (default): ``P_in`` / ``P_out`` generated from ``(seed, layer)`` by the counter-based
    generator, identically on every backend (never in memory), entries of variance ``1/k``.
    Dense: ``Projection.dense(p_in, p_out)`` with caller-given f32 ``p_in [k_in, cols]``,
    ``p_out [k_out, rows]``."""

    k_in: int
    k_out: int
    seed: int = 0
    layer: int = 0
    dist: Literal["gaussian", "rademacher"] = "gaussian"
    p_in: Optional[Array] = field(default=None, compare=False)
    p_out: Optional[Array] = field(default=None, compare=False)

    @staticmethod
    def dense(p_in: Array, p_out: Array) -> "Projection":
        """Caller-given matrices (f32, contiguous): ``p_in [k_in, ..]``, ``p_out [k_out, ..]``."""
        return Projection(k_in=int(p_in.shape[0]), k_out=int(p_out.shape[0]), p_in=p_in, p_out=p_out)

    @property
    def width(self) -> int:
        """``k_out · k_in``, the number of columns of ``ĝ``."""
        return self.k_in * self.k_out


@dataclass
class ParamProjection:
    """The projection of one parameter of :func:`ghostgrad.kron_project_model`: all uses with
    ``LayerUse.param == param`` get one block of ``proj.k_out · proj.k_in`` columns, projected in
    the parameter's storage layout ``[rows, cols]`` (``nn.Linear``: ``[d_out, d_in + bias]``,
    ``Conv1D``: ``[d_in + bias, d_out]``, embedding: ``[vocab, d]``, norm: ``[d, 1 + bias]``):
    ``P_out`` is ``P_rows``, ``P_in`` is ``P_cols``."""

    param: Hashable
    proj: Projection


@dataclass
class ProjectLayer:
    """One layer of :func:`ghostgrad.kron_project_layers` / :func:`ghostgrad.kfac_covariances`:
    ``kind`` is ``Linear`` (``layout="out_in"``) or ``Embedding``."""

    kind: LayerKind
    train: Factors
    proj: Projection
    name: Optional[str] = None


@dataclass(frozen=True)
class FormCost:
    """Modeled cost of one exact form for one layer (a model, not a measurement)."""

    form: str
    flops: float
    bytes: float
    extra_bytes: float
    est_seconds: float
    fits: bool


@dataclass(frozen=True)
class FormChoice:
    """The form used for a Linear layer (``"gram"``, ``"dense_query"`` or ``"materialize"``),
    whether it was forced, why, and the modeled cost of every form."""

    form: str
    forced: bool
    reason: str
    costs: Tuple[FormCost, ...]


@dataclass(frozen=True)
class TermChoice:
    """How one term of a model-level call was computed: the parameter key, the two uses (indices
    into the call's ``uses``; equal for a use's own term) and the method."""

    param: Hashable
    uses: Tuple[int, int]
    method: str


@dataclass(frozen=True)
class DvembReport:
    """What a DVEmb sweep did: per layer the step ranges of its blocks (latest first), the flops
    of the per-step recursion and the flops executed."""

    blocks: Tuple[Tuple[Tuple[int, int], ...], ...]
    recursion_flops: float
    executed_flops: float
