"""ghostgrad's C ABI (include/ghostgrad.h) through ctypes, for the peers bench.

Only what the bench calls: a CPU context, ``gg_ghost_dot``, ``gg_ghost_dot_layers``,
``gg_ghost_sqnorm`` and ``gg_kron_project`` (dense P given), on contiguous f32 torch tensors
(host memory). Every call checks its status and raises with ``gg_last_error_message``.
"""

import ctypes as C
import os

import torch

F32, U8, I32 = 0, 3, 4
FORM_NAMES = {0: "gram", 1: "dense-query", 2: "materialize"}
# gg_form_request: AUTO = 0, forced form f = f + 1.
REQUEST = {"auto": 0, "gram": 1, "dense-query": 2, "materialize": 3}


class Shape(C.Structure):
    _fields_ = [("d_in", C.c_uint64), ("d_out", C.c_uint64), ("has_bias", C.c_uint32)]


class Tensor(C.Structure):
    _fields_ = [("ptr", C.c_void_p), ("len", C.c_uint64), ("dtype", C.c_uint32)]


class Train(C.Structure):
    _fields_ = [("a", Tensor), ("b", Tensor), ("n", C.c_uint64), ("t", C.c_uint64), ("mask", Tensor)]


class Segs(C.Structure):
    _fields_ = [("kind", C.c_uint32), ("uniform_len", C.c_uint64), ("offsets", Tensor)]


class Query(C.Structure):
    _fields_ = [("aq", Tensor), ("bq", Tensor), ("q", C.c_uint64), ("segments", Segs), ("mask", Tensor)]


class TensorMut(C.Structure):
    _fields_ = [("ptr", C.c_void_p), ("len", C.c_uint64)]


class FormChoice(C.Structure):
    _fields_ = [
        ("form", C.c_uint32),
        ("forced", C.c_uint32),
        ("est_seconds", C.c_double * 3),
        ("flops", C.c_double * 3),
        ("bytes", C.c_double * 3),
        ("extra_bytes", C.c_double * 3),
        ("fits", C.c_uint32 * 3),
    ]


class Layer(C.Structure):
    _fields_ = [("shape", Shape), ("train", Train), ("query", Query), ("form", C.c_uint32)]


class Projection(C.Structure):
    _fields_ = [
        ("k_i", C.c_uint64),
        ("k_o", C.c_uint64),
        ("kind", C.c_uint32),
        ("dist", C.c_uint32),
        ("seed", C.c_uint64),
        ("layer", C.c_uint32),
        ("p_in", Tensor),
        ("p_out", Tensor),
    ]


def _t(x):
    assert x.dtype == torch.float32 and x.is_contiguous()
    return Tensor(x.data_ptr(), x.numel(), F32)


def _out(x):
    assert x.dtype == torch.float32 and x.is_contiguous()
    return TensorMut(x.data_ptr(), x.numel())


class Ghostgrad:
    """A CPU context of libghostgrad.so (path: $GHOSTGRAD_LIB)."""

    def __init__(self, lib_path=None):
        path = lib_path or os.environ["GHOSTGRAD_LIB"]
        self.lib = C.CDLL(path)
        L = self.lib
        L.gg_last_error_message.restype = C.c_char_p
        L.gg_last_form_reason.restype = C.c_char_p
        L.gg_ghost_dot.argtypes = [C.c_void_p, Shape, C.POINTER(Train), C.POINTER(Query), TensorMut, C.c_float, C.c_float, C.c_uint32, C.POINTER(FormChoice)]
        L.gg_ghost_dot_layers.argtypes = [C.c_void_p, C.POINTER(Layer), C.c_size_t, TensorMut, C.c_float, C.c_float, C.POINTER(FormChoice)]
        L.gg_ghost_sqnorm.argtypes = [C.c_void_p, Shape, C.POINTER(Train), TensorMut, C.c_float, C.c_float, C.c_uint32, C.POINTER(FormChoice)]
        L.gg_kron_project.argtypes = [C.c_void_p, Shape, C.POINTER(Train), C.POINTER(Projection), TensorMut, C.c_uint64, C.c_uint64, C.c_float, C.c_float]
        self.ctx = C.c_void_p()
        self._check(L.gg_context_create_cpu(C.byref(self.ctx)))
        buf = C.create_string_buffer(256)
        L.gg_context_describe(self.ctx, buf, 256, None)
        self.description = buf.value.decode()

    def _check(self, status):
        if status != 0:
            raise RuntimeError(f"ghostgrad status {status}: {self.lib.gg_last_error_message().decode()}")

    def reason(self):
        return self.lib.gg_last_form_reason().decode()

    @staticmethod
    def _train(a, b, n, t):
        empty = Tensor(None, 0, U8)
        return Train(_t(a), _t(b), n, t, empty)

    @staticmethod
    def _query(aq, bq):
        empty = Tensor(None, 0, U8)
        return Query(_t(aq), _t(bq), aq.shape[0], Segs(0, 0, Tensor(None, 0, I32)), empty)

    def ghost_dot(self, a, b, aq, bq, out, form="auto"):
        """out[n] = <G_n, Gq> (one query segment). a [N, T, d_in], b [N, T, d_out]."""
        n, t, d_in = a.shape
        shape = Shape(d_in, b.shape[2], 0)
        tr, q, ch = self._train(a, b, n, t), self._query(aq, bq), FormChoice()
        self._check(self.lib.gg_ghost_dot(self.ctx, shape, C.byref(tr), C.byref(q), _out(out), 1.0, 0.0, REQUEST[form], C.byref(ch)))
        return FORM_NAMES[ch.form]

    def ghost_dot_layers(self, layers, out, form="auto"):
        """out[n] = Σ_l <G^l_n, Gq^l>; layers: list of (a, b, aq, bq)."""
        arr = (Layer * len(layers))()
        for i, (a, b, aq, bq) in enumerate(layers):
            n, t, d_in = a.shape
            arr[i] = Layer(Shape(d_in, b.shape[2], 0), self._train(a, b, n, t), self._query(aq, bq), REQUEST[form])
        chs = (FormChoice * len(layers))()
        self._check(self.lib.gg_ghost_dot_layers(self.ctx, arr, len(layers), _out(out), 1.0, 0.0, chs))
        return [FORM_NAMES[c.form] for c in chs]

    def ghost_sqnorm(self, a, b, out, form="auto"):
        n, t, d_in = a.shape
        shape = Shape(d_in, b.shape[2], 0)
        tr, ch = self._train(a, b, n, t), FormChoice()
        self._check(self.lib.gg_ghost_sqnorm(self.ctx, shape, C.byref(tr), _out(out), 1.0, 0.0, REQUEST[form], C.byref(ch)))
        return FORM_NAMES[ch.form]

    def kron_project(self, a, b, p_in, p_out, out):
        """out [N, k_o·k_i] = vec(P_out G_n P_inᵀ), dense P given."""
        n, t, d_in = a.shape
        k_i, k_o = p_in.shape[0], p_out.shape[0]
        shape = Shape(d_in, b.shape[2], 0)
        tr = self._train(a, b, n, t)
        pr = Projection(k_i, k_o, 1, 0, 0, 0, _t(p_in), _t(p_out))
        self._check(self.lib.gg_kron_project(self.ctx, shape, C.byref(tr), C.byref(pr), _out(out), 0, k_o * k_i, 1.0, 0.0))
