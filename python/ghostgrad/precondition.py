"""Preconditioners of projected gradients (host, float64, Cholesky / eigendecompositions):
:class:`RawFisher` (damped ``F + λI``) and :class:`Kfac` (K-FAC, EK-FAC after
:meth:`Kfac.ekfac_correct`). Inputs are host f32 arrays ``[n, k]`` (rows ``ĝ_n``); outputs are
f32 arrays of the input's framework (numpy for numpy, torch for torch)."""

from __future__ import annotations

from typing import Any, Tuple

from . import errors
from . import _native
from ._core import Call

__all__ = ["RawFisher", "Kfac"]


def _host_rows(call: Call, a: Any, name: str, width: int = -1) -> Any:
    arr = call.arr(a, name, ("f32",))
    if arr.device[0] != 1:
        raise call.fail(errors.DeviceError, name, "must be a CPU array (the preconditioners run on the host)")
    if len(arr.shape) != 2 or (width >= 0 and arr.shape[1] != width):
        want = "[n, k]" if width < 0 else f"[n, {width}]"
        raise call.fail(errors.ShapeError, name, f"has shape {arr.shape}, expected {want}")
    return arr


def _square(call: Call, a: Any, name: str) -> Any:
    arr = _host_rows(call, a, name)
    if arr.shape[0] != arr.shape[1]:
        raise call.fail(errors.ShapeError, name, f"has shape {arr.shape}; expected a square [k, k]")
    return arr


class RawFisher:
    """Damped raw Fisher ``F + λI`` in projected space, ``F = (1/n) Σ_n ĝ_n ĝ_nᵀ``,
    ``λ = 0.1·trace(F)/k``, Cholesky-factored."""

    def __init__(self, native: Any, k: int):
        self._native, self.k = native, k

    @classmethod
    def fit(cls, grads: Any) -> "RawFisher":
        """From the projected training gradients ``grads`` f32 ``[n, k]``."""
        call = Call("RawFisher.fit")
        g = _host_rows(call, grads, "grads")
        return cls(_native.RawFisher.fit(g), g.shape[1])

    @classmethod
    def from_moments(cls, sum: Any, n: int) -> "RawFisher":
        """From an accumulated ``sum = Σ ĝ ĝᵀ`` (f32 ``[k, k]``, e.g. :func:`ghostgrad.projected_fisher`
        with ``scale = 1``) over ``n`` samples: ``F = sum / n``."""
        call = Call("RawFisher.from_moments")
        s = _square(call, sum, "sum")
        return cls(_native.RawFisher.from_sum(s, int(n)), s.shape[0])

    @property
    def damping(self) -> float:
        """``λ``."""
        return self._native.damping()

    def apply(self, grads: Any) -> Any:
        """``(F + λI)⁻¹ ĝ`` for every row of ``grads`` f32 ``[n, k]`` (computed in f64, rounded to f32)."""
        call = Call("RawFisher.apply")
        g = _host_rows(call, grads, "grads", self.k)
        out_obj, out_arr = call.out(None, "out", g.shape)
        self._native.apply(g, out_arr)
        return call.result(out_obj)


class Kfac:
    """K-FAC preconditioner of one parameter's projected gradients ``Ĝ ∈ R^{k_out × k_in}``
    (flattened row-major): ``Ĝ' = Q_out[(Q_outᵀ Ĝ Q_in) ⊘ (Λ_out Λ_inᵀ + λ)]Q_inᵀ``; after
    :meth:`ekfac_correct` / :meth:`set_ekfac_sum` the eigenbasis scale is the EK-FAC second moments."""

    def __init__(self, native: Any, k_in: int, k_out: int):
        self._native, self.k_in, self.k_out = native, k_in, k_out

    @classmethod
    def from_moments(cls, c_in: Any, c_out: Any) -> "Kfac":
        """From the covariances of :func:`ghostgrad.kfac_covariances` (``c_in [k_in, k_in]``,
        ``c_out [k_out, k_out]``; for :func:`ghostgrad.kfac_covariances_model`: ``c_cols``,
        ``c_rows``), eigendecomposed in f64; ``λ = 0.1·mean(Λ_out Λ_inᵀ)``."""
        call = Call("Kfac.from_moments")
        a = _square(call, c_in, "c_in")
        b = _square(call, c_out, "c_out")
        return cls(_native.Kfac.from_covariances(a, b), a.shape[0], b.shape[0])

    @classmethod
    def fit(cls, layer: Any, *, backend: str = "cpu") -> "Kfac":
        """Covariances of ``layer`` (a :class:`~ghostgrad.types.ProjectLayer` on host arrays) by
        :func:`ghostgrad.kfac_covariances`, then :meth:`from_moments`."""
        from .projection import kfac_covariances

        c_in, c_out = kfac_covariances(layer, backend=backend)
        return cls.from_moments(c_in, c_out)

    @property
    def damping(self) -> float:
        return self._native.damping()

    def eigenvalues(self) -> Tuple[Any, Any]:
        """``(Λ_in, Λ_out)`` as float64 numpy arrays, nondecreasing."""
        import numpy as np

        a, b = self._native.eigenvalues()
        return np.asarray(a), np.asarray(b)

    def eigenvectors(self) -> Tuple[Any, Any]:
        """``(Q_in [k_in, k_in], Q_out [k_out, k_out])`` f32 numpy arrays, eigenvectors as
        columns (the ``q_in``, ``q_out`` of :func:`ghostgrad.ekfac_eigen_correction`)."""
        import numpy as np

        qa, qb = self._native.eigenvectors()
        return (np.asarray(qa, np.float32).reshape(self.k_in, self.k_in), np.asarray(qb, np.float32).reshape(self.k_out, self.k_out))

    def ekfac_correct(self, grads: Any) -> None:
        """EK-FAC: the eigenbasis scale becomes ``(1/n) Σ_n (Q_outᵀ Ĝ_n Q_in)^{⊙2}`` from
        ``grads`` f32 ``[n, k_out·k_in]``."""
        call = Call("Kfac.ekfac_correct")
        self._native.ekfac_correct(_host_rows(call, grads, "grads", self.k_in * self.k_out))

    def set_ekfac_sum(self, sum: Any, n: int) -> None:
        """EK-FAC from an accumulated ``sum`` f32 ``[k_out, k_in]`` of
        :func:`ghostgrad.ekfac_eigen_correction` over ``n`` samples."""
        call = Call("Kfac.set_ekfac_sum")
        s = _host_rows(call, sum, "sum", self.k_in)
        if s.shape[0] != self.k_out:
            raise call.fail(errors.ShapeError, "sum", f"has shape {s.shape}, expected ({self.k_out}, {self.k_in})")
        self._native.set_ekfac_sum(s, int(n))

    def apply(self, grads: Any) -> Any:
        """The preconditioned rows of ``grads`` f32 ``[n, k_out·k_in]`` (f64 inside, rounded to f32)."""
        call = Call("Kfac.apply")
        g = _host_rows(call, grads, "grads", self.k_in * self.k_out)
        out_obj, out_arr = call.out(None, "out", g.shape)
        self._native.apply(g, out_arr)
        return call.result(out_obj)
