import numpy as np
import pytest

torch = pytest.importorskip("torch")


def frameworks():
    return ["numpy", "torch", "jax"]


DTYPES = {
    "numpy": ["f32", "f16"],
    "torch": ["f32", "bf16", "f16"],
    "jax": ["f32", "bf16"],
}


def cast(a, fw, dtype):
    """A numpy array as `fw`'s array of `dtype` (or ids/masks as their own dtype)."""
    if fw == "numpy":
        return np.ascontiguousarray(a.astype({"f32": np.float32, "f16": np.float16}.get(dtype, a.dtype)))
    if fw == "torch":
        t = torch.from_numpy(np.ascontiguousarray(a))
        if dtype in ("f32", "bf16", "f16"):
            t = t.to({"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype])
        return t.contiguous()
    import jax.numpy as jnp

    j = jnp.asarray(a)
    if dtype in ("f32", "bf16", "f16"):
        j = j.astype({"f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16}[dtype])
    return j


def f64(a):
    """Exact float64 numpy copy of any framework's array (ids keep their values)."""
    if isinstance(a, np.ndarray):
        return a.astype(np.float64)
    if type(a).__module__.startswith("torch"):
        return a.detach().to(torch.float64).numpy()
    return np.asarray(a.astype("float32")).astype(np.float64)


def to_numpy(a):
    if type(a).__module__.startswith("torch"):
        return a.detach().numpy()
    return np.asarray(a)


@pytest.fixture
def rng(request):
    # A fresh stream per test, reproducible by test name.
    return np.random.default_rng(abs(hash(request.node.name)) % (2**32))


def mask_and_poison(rng, x, b, shape):
    """A random 0/1 mask of `shape` (first row of every sample kept) and NaN in the masked rows."""
    m = (rng.random(shape) > 0.3).astype(np.uint8)
    m.reshape(m.shape[0], -1)[:, 0] = 1
    keep = m.astype(bool)
    x = x.copy()
    b = b.copy()
    if x.dtype.kind == "f":
        x[~keep] = np.nan
    b[~keep] = np.nan
    return m, x, b
