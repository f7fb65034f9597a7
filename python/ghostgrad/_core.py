"""What every operation does before and after the native call: import the arrays through DLPack
(zero copy), check that they agree on one device, pick the context for that device and stream,
allocate outputs in the caller's framework, and name the arguments in errors.

Device and stream selection (CUDA): the stream is the caller's ``stream=`` if given, else the
current stream of the framework the first array comes from (torch:
``torch.cuda.current_stream(device).cuda_stream``; CuPy: ``cupy.cuda.get_current_stream().ptr``),
else the legacy default stream. Contexts are cached per ``(device, stream)``; nothing is
synchronized.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import errors
from . import _native

FLOATS = ("f32", "bf16", "f16")
MASKS = ("u8", "bool")
IDS = ("i32", "i64") if getattr(_native, "SUPPORTS_I64", False) else ("i32",)

# DLPack device types.
DL_CPU = 1
DL_CUDA = 2

_BACKENDS = (None, "auto", "cpu", "reference", "interp", "cuda")

_lock = threading.Lock()
_host_contexts: Dict[str, Any] = {}
_cuda_contexts: Dict[Tuple[int, int], Any] = {}
#: How a CUDA context is made: (device ordinal, stream handle) -> native context. Tests replace it.
cuda_context_factory: Callable[[int, int], Any] = lambda ordinal, stream: _native.Context.cuda(ordinal, stream)


def framework_of(obj: Any) -> str:
    """``"torch"``, ``"numpy"``, ``"jax"``, ``"cupy"`` or the top-level module of the array's type."""
    mod = type(obj).__module__.split(".", 1)[0]
    if mod == "jaxlib":
        return "jax"
    return mod


def host_context(backend: Optional[str]) -> Any:
    key = "cpu" if backend in (None, "auto") else backend
    ctx = _host_contexts.get(key)
    if ctx is None:
        with _lock:
            ctx = _host_contexts.get(key)
            if ctx is None:
                make = {"cpu": _native.Context.cpu, "reference": _native.Context.reference, "interp": _native.Context.interp}[key]
                ctx = make()
                _host_contexts[key] = ctx
    return ctx


def cuda_context(ordinal: int, stream: int) -> Any:
    key = (ordinal, stream)
    ctx = _cuda_contexts.get(key)
    if ctx is None:
        with _lock:
            ctx = _cuda_contexts.get(key)
            if ctx is None:
                ctx = cuda_context_factory(ordinal, stream)
                _cuda_contexts[key] = ctx
    return ctx


def clear_context_cache() -> None:
    """Drops the cached contexts (their streams are the caller's; nothing is synchronized)."""
    with _lock:
        _host_contexts.clear()
        _cuda_contexts.clear()


def stream_handle(stream: Any) -> int:
    """A stream argument as a ``CUstream`` handle: an int, or an object with ``cuda_stream``
    (torch) or ``ptr`` (CuPy)."""
    for attr in ("cuda_stream", "ptr"):
        if hasattr(stream, attr):
            return int(getattr(stream, attr))
    return int(stream)


def current_stream(framework: str, ordinal: int) -> int:
    """The framework's current CUDA stream on ``ordinal`` (0 = the legacy default stream)."""
    if framework == "torch":
        torch = sys.modules.get("torch")
        if torch is not None:
            return int(torch.cuda.current_stream(ordinal).cuda_stream)
    if framework == "cupy":
        cupy = sys.modules.get("cupy")
        if cupy is not None:
            with cupy.cuda.Device(ordinal):
                return int(cupy.cuda.get_current_stream().ptr)
    return 0


def dlpack_stream(handle: int) -> int:
    """The ``stream=`` value of ``__dlpack__`` for a ``CUstream`` (DLPack: 1 = legacy default)."""
    return 1 if handle == 0 else handle


def label(i: int, name: Optional[str], what: str = "uses") -> str:
    return f"{what}[{i}] {name!r}" if name else f"{what}[{i}]"


class Call:
    """One operation call: its arrays, device, stream, context and outputs."""

    __slots__ = ("op", "backend", "user_stream", "device", "first", "framework", "like", "stream", "ctx", "keep")

    def __init__(self, op: str, backend: Optional[str] = None, stream: Any = None):
        if backend not in _BACKENDS:
            raise errors.InvalidArgument(f"{op}: backend must be one of {_BACKENDS[1:]}, got {backend!r}", what="backend", op=op)
        self.op = op
        self.backend = backend
        self.user_stream = stream
        self.device: Optional[Tuple[int, int]] = None
        self.first = ""
        self.framework = ""
        self.like: Any = None
        self.stream: Optional[int] = None
        self.ctx: Any = None
        self.keep: List[Any] = []

    # -- errors ---------------------------------------------------------------------------
    def fail(self, cls: type, name: str, msg: str) -> errors.Error:
        return cls(f"{self.op}: {name} {msg}", what=name, op=self.op)

    # -- inputs ---------------------------------------------------------------------------
    def _device_of(self, obj: Any, name: str) -> Tuple[int, int]:
        try:
            dev = obj.__dlpack_device__()
        except AttributeError:
            raise self.fail(errors.InvalidArgument, name, f"is a {type(obj).__name__}, not an array that speaks DLPack (torch, numpy, JAX, CuPy)") from None
        dev = (int(dev[0]), int(dev[1]))
        if self.device is None:
            self._select(obj, name, dev)
        elif dev != self.device:
            raise self.fail(errors.DeviceError, name, f"is on device {describe_device(dev)} but {self.first} is on {describe_device(self.device)}")
        return dev

    def _select(self, obj: Any, name: str, dev: Tuple[int, int]) -> None:
        self.device, self.first, self.like, self.framework = dev, name, obj, framework_of(obj)
        if dev[0] == DL_CPU:
            if self.backend == "cuda":
                raise self.fail(errors.DeviceError, name, "is a CPU array but backend='cuda' was requested")
            if self.user_stream is not None:
                raise self.fail(errors.DeviceError, "stream", "was given but the arrays are on the CPU")
            self.ctx = host_context(self.backend)
        elif dev[0] == DL_CUDA:
            if self.backend not in (None, "auto", "cuda"):
                raise self.fail(errors.DeviceError, name, f"is a CUDA array; backend={self.backend!r} runs on host arrays only")
            handle = stream_handle(self.user_stream) if self.user_stream is not None else current_stream(self.framework, dev[1])
            self.stream = dlpack_stream(handle)
            self.ctx = cuda_context(dev[1], handle)
        else:
            raise self.fail(errors.DeviceError, name, f"is on device {describe_device(dev)}; ghostgrad runs on CPU and CUDA arrays")

    def arr(self, obj: Any, name: str, dtypes: Sequence[str], shape: Optional[Tuple[int, ...]] = None) -> Any:
        """Imports ``obj`` (zero copy) and checks its dtype and (if given) its shape."""
        self._device_of(obj, name)
        try:
            a = _native.Array(obj, name, self.stream)
        except errors.Error as e:
            raise type(e)(f"{self.op}: {e}", what=name, op=self.op) from None
        if a.dtype not in dtypes:
            raise self.fail(errors.DTypeError, name, f"has dtype {a.dtype}, expected {' or '.join(dtypes)}")
        if shape is not None and a.shape != shape:
            raise self.fail(errors.ShapeError, name, f"has shape {a.shape}, expected {shape}")
        return a

    def opt(self, obj: Any, name: str, dtypes: Sequence[str], shape: Optional[Tuple[int, ...]] = None) -> Any:
        return None if obj is None else self.arr(obj, name, dtypes, shape)

    # -- outputs --------------------------------------------------------------------------
    def out(self, out: Any, name: str, shape: Tuple[int, ...], dtype: str = "f32") -> Tuple[Any, Any]:
        """A caller-given output (checked: dtype, exact shape, contiguous, same device) or a new
        one in the framework and on the device of the first input. Returns ``(object, array)``."""
        if out is not None:
            if framework_of(out) == "jax":
                raise self.fail(errors.InvalidArgument, name, "is a JAX array: JAX arrays are immutable, so ghostgrad cannot write into them; leave out=None (a new JAX array is returned)")
            return out, self.arr(out, name, (dtype,), shape)
        obj = allocate(self.framework, self.like, shape, dtype, self)
        return obj, self.arr(obj, name, (dtype,), shape)

    def result(self, obj: Any) -> Any:
        """The output as the caller's framework sees it (JAX: a JAX array over the same memory)."""
        if self.framework == "jax":
            import jax.numpy as jnp

            return jnp.asarray(obj)
        return obj


def describe_device(dev: Tuple[int, int]) -> str:
    names = {1: "cpu", 2: "cuda", 3: "cuda_host", 4: "opencl", 7: "vulkan", 8: "metal", 10: "rocm", 13: "cuda_managed", 14: "oneapi"}
    return f"{names.get(dev[0], f'type {dev[0]}')}:{dev[1]}"


_NP_DTYPES = {"f32": "float32", "f64": "float64"}


def allocate(framework: str, like: Any, shape: Tuple[int, ...], dtype: str, call: Call) -> Any:
    """An uninitialized output in ``framework`` on ``like``'s device (never read when ``beta = 0``)."""
    if framework == "torch":
        import torch

        return torch.empty(shape, dtype=getattr(torch, _NP_DTYPES[dtype]), device=like.device)
    if framework == "cupy":
        import cupy

        with cupy.cuda.Device(call.device[1]):
            return cupy.empty(shape, dtype=_NP_DTYPES[dtype])
    if call.device is not None and call.device[0] != DL_CPU:
        raise call.fail(errors.DeviceError, "out", f"cannot be allocated for {framework} arrays on {describe_device(call.device)}: pass out= (a torch or CuPy array on that device)")
    import numpy as np

    # numpy, and JAX on the CPU (the result is handed back as a JAX array, see Call.result).
    return np.empty(shape, dtype=_NP_DTYPES[dtype])
