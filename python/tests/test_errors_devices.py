"""Error paths (right subclass, message naming the argument), device/stream selection with fake
CUDA arrays, and zero copy (same data pointer, no allocation of input size)."""

import tracemalloc

import numpy as np
import pytest
import torch

import ghostgrad as gg
from ghostgrad import _core, _native


def fac(rng, n=3, t=2, d_in=4, d_out=5):
    return gg.Factors(rng.standard_normal((n, t, d_in)).astype(np.float32), rng.standard_normal((n, t, d_out)).astype(np.float32))


def test_error_paths_name_the_argument(rng):
    tr, q = fac(rng), fac(rng, n=2)
    cases = [
        (gg.ShapeError, "query.x", lambda: gg.ghost_dot(tr, gg.Factors(np.zeros((2, 2, 3), np.float32), q.b))),
        (gg.DTypeError, "train.b", lambda: gg.ghost_dot(gg.Factors(tr.x, tr.b.astype(np.float64)), q)),
        (gg.DTypeError, "train.x", lambda: gg.ghost_dot(gg.Factors(tr.x.astype(np.float16), tr.b), q)),
        (gg.InvalidArgument, "not contiguous", lambda: gg.ghost_dot(gg.Factors(np.asfortranarray(tr.x), tr.b), q)),
        (gg.ShapeError, "out", lambda: gg.ghost_dot(tr, q, out=np.zeros((3, 3), np.float32))),
        (gg.DTypeError, "out", lambda: gg.ghost_dot(tr, q, out=np.zeros((3, 2), np.float64))),
        (gg.InvalidArgument, "form", lambda: gg.ghost_dot(tr, q, form="fast")),
        (gg.InvalidArgument, "backend", lambda: gg.ghost_dot(tr, q, backend="gpu")),
        (gg.InvalidArgument, "train.x", lambda: gg.ghost_dot(gg.Factors([1.0], tr.b), q)),
        (gg.ShapeError, "query.segments", lambda: gg.ghost_dot(tr, gg.Factors(q.x, q.b, segments=0))),
        (gg.InvalidArgument, "out", lambda: gg.ghost_dot(tr, q, out=np.zeros((3, 2), np.float32)[:, :].T.copy().T)),
    ]
    for cls, name, f in cases:
        with pytest.raises(cls) as e:
            f()
        assert name in str(e.value), (name, str(e.value))
        assert str(e.value).startswith("ghost_dot:")


def test_model_errors_name_use_and_caller_name(rng):
    n = 3
    x = rng.standard_normal((n, 2, 4)).astype(np.float32)
    b = rng.standard_normal((n, 2, 6)).astype(np.float32)
    ids = rng.integers(0, 10, (n, 2)).astype(np.int32)
    good = gg.LayerUse(gg.Linear(4, 6), "w", gg.Factors(x, b), gg.Factors(x, b), name="h.0.mlp")
    bad_b = gg.LayerUse(gg.Linear(4, 7), "w2", gg.Factors(x, b), gg.Factors(x, b), name="h.1.mlp")
    with pytest.raises(gg.ShapeError, match=r"uses\[1\] 'h.1.mlp': train.b"):
        gg.model_dot([good, bad_b])
    ids_bad = ids.copy()
    ids_bad[1, 1] = 10
    emb = gg.LayerUse(gg.Embedding(10, 6), "wte", gg.Factors(ids_bad, b), gg.Factors(ids, b))
    with pytest.raises(gg.InvalidArgument, match=r"uses\[1\]: train.x holds id 10 at flat row 3"):
        gg.model_dot([good, emb])
    with pytest.raises(gg.DTypeError, match=r"uses\[0\]: train.x"):
        gg.model_sqnorm([gg.LayerUse(gg.Embedding(10, 6), "wte", gg.Factors(ids.astype(np.float32), b))])
    with pytest.raises(gg.InvalidArgument, match=r"uses\[0\] 'h.0.mlp': query is missing"):
        gg.model_dot([gg.LayerUse(gg.Linear(4, 6), "w", gg.Factors(x, b), name="h.0.mlp")])
    # A core-level error (tie rule) comes back as its family, prefixed with the operation.
    with pytest.raises(gg.InvalidArgument, match="model_dot: .*cannot share a parameter"):
        gg.model_dot([good, gg.LayerUse(gg.Norm(6), "w", gg.Factors(b, b), gg.Factors(b, b))])


def test_readonly_and_overlapping_outputs(rng):
    tr, q = fac(rng), fac(rng, n=2)
    out = np.zeros((3, 2), np.float32)
    out.setflags(write=False)
    with pytest.raises(gg.InvalidArgument, match="read-only"):
        gg.ghost_dot(tr, q, out=out)
    with pytest.raises(gg.InvalidArgument, match="overlaps"):
        gg.ghost_sqnorm(tr, out=tr.x.reshape(-1)[:3])


def test_zero_copy(rng):
    n, t, d_in, d_out = 64, 16, 256, 128
    a = rng.standard_normal((n, t, d_in)).astype(np.float32)
    b = rng.standard_normal((n, t, d_out)).astype(np.float32)
    out = np.empty(n, np.float32)
    gg.ghost_sqnorm(gg.Factors(a, b), out=out)  # warm the context
    tracemalloc.start()
    gg.ghost_sqnorm(gg.Factors(a, b), out=out, form="gram")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < a.nbytes // 8, f"python-side allocation of {peak} B during the call (input {a.nbytes} B)"
    ta = torch.from_numpy(a)
    assert _native.Array(ta, "a").ptr == ta.data_ptr()
    assert _native.Array(a, "a").ptr == a.ctypes.data
    tout = torch.empty(n)
    r, _ = gg.ghost_sqnorm(gg.Factors(ta, torch.from_numpy(b)), out=tout)
    assert r is tout


class FakeCuda:
    """A CUDA array as far as device selection can tell (no data)."""

    def __init__(self, dev=0):
        self.dev = dev

    def __dlpack_device__(self):
        return (2, self.dev)


def test_device_and_stream_selection(monkeypatch):
    made = []

    def factory(ordinal, stream):
        made.append((ordinal, stream))
        return ("ctx", ordinal, stream)

    monkeypatch.setattr(_core, "cuda_context_factory", factory)
    _core.clear_context_cache()
    c = _core.Call("op")
    c._device_of(FakeCuda(1), "a")
    assert c.ctx == ("ctx", 1, 0) and c.stream == 1  # legacy default: DLPack stream 1
    c2 = _core.Call("op", stream=12345)
    c2._device_of(FakeCuda(1), "a")
    assert c2.ctx == ("ctx", 1, 12345) and c2.stream == 12345

    class S:
        cuda_stream = 777

    c3 = _core.Call("op", stream=S())
    c3._device_of(FakeCuda(0), "a")
    assert c3.ctx == ("ctx", 0, 777)
    _core.Call("op")._device_of(FakeCuda(1), "a")
    assert made == [(1, 0), (1, 12345), (0, 777)]  # cached per (device, stream)
    with pytest.raises(gg.DeviceError, match="b is on device cuda:1 but a is on cuda:0"):
        c4 = _core.Call("op", stream=777)
        c4._device_of(FakeCuda(0), "a")
        c4._device_of(FakeCuda(1), "b")
    with pytest.raises(gg.DeviceError, match="a is on device cuda:0 but x is on cpu:0"):
        c5 = _core.Call("op")
        c5._device_of(np.zeros(1), "x")
        c5._device_of(FakeCuda(0), "a")
    with pytest.raises(gg.DeviceError, match="backend='reference' runs on host arrays only"):
        _core.Call("op", backend="reference")._device_of(FakeCuda(0), "a")
    with pytest.raises(gg.DeviceError, match="stream"):
        _core.Call("op", stream=5)._device_of(np.zeros(1), "a")

    class FakeTorch:
        class cuda:
            @staticmethod
            def current_stream(dev):
                return type("S", (), {"cuda_stream": 4242 + dev})()

    monkeypatch.setitem(__import__("sys").modules, "torch", FakeTorch)
    assert _core.current_stream("torch", 1) == 4243
    _core.clear_context_cache()


def test_import_with_numpy_only():
    import subprocess
    import sys

    code = "import sys; sys.modules['torch'] = None; sys.modules['jax'] = None; import numpy as np, ghostgrad as gg; " \
        "a = np.ones((2, 3, 4), np.float32); print(gg.ghost_sqnorm(gg.Factors(a, a)).out)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "144." in r.stdout  # G_n = 3·ones(4, 4)
