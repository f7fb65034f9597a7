"""The exceptions of ghostgrad: one ``Error`` hierarchy, one subclass per family of failures.

Every message names the argument as the caller spells it (``uses[3].query.b``), prefixed with
the operation and, where the caller gave one, the use's own ``name`` (e.g. a module path)::

    ghostgrad.ShapeError: model_dot: uses[3] 'transformer.h.0.mlp.c_fc': query.b has shape (7, 64), expected (7, 3072)

``what`` holds the argument's name, ``op`` the operation.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "Error",
    "InvalidArgument",
    "ShapeError",
    "DTypeError",
    "DeviceError",
    "KernelsNotBuilt",
    "CudaError",
    "OutOfMemory",
    "InternalError",
]


class Error(Exception):
    """Base class of every ghostgrad error."""

    def __init__(self, message: str, *, what: Optional[str] = None, op: Optional[str] = None):
        super().__init__(message)
        self.what = what
        self.op = op


class InvalidArgument(Error, ValueError):
    """An argument is wrong: a value out of range, inconsistent options, ids outside the vocabulary."""


class ShapeError(InvalidArgument):
    """An array has the wrong shape or length, a size is zero, or a size overflows the kernels' range."""


class DTypeError(InvalidArgument, TypeError):
    """An array has a dtype the operation does not take (or one that disagrees with another argument)."""


class DeviceError(Error):
    """Arrays on different devices, on a device type ghostgrad does not run on, or a stream mismatch."""


class KernelsNotBuilt(DeviceError):
    """A CUDA (or interpreter) context was requested from a build without the CUDA kernels (no nvcc at build time)."""


class CudaError(DeviceError):
    """The CUDA driver is missing or a driver call failed."""


class OutOfMemory(Error, MemoryError):
    """An allocation (host or device scratch) could not be made."""


class InternalError(Error):
    """A bug in ghostgrad (please report it)."""
