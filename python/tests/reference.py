"""Float64 numpy reference for the tests: explicitly materialized per-sample gradients.

Every side is flat rows ``x [R, dx]`` (ids ``[R]`` for embeddings), ``b [R, db]``, an optional
0/1 ``mask [R]`` and row groups (training samples or query segments). A group's gradient is the
sum over its kept rows of the parameter's per-token gradient, flattened in a fixed storage layout;
tied uses add into the same parameter block.
"""

import numpy as np


def storage(kind):
    """(tag, rows, cols, bias length) of a parameter."""
    t = kind[0]
    if t == "linear":
        _, d_in, d_out, bias, layout = kind
        return (d_out, d_in) if layout == "out_in" else (d_in, d_out), (d_out if bias else 0)
    if t == "embedding":
        _, vocab, d = kind
        return (vocab, d), 0
    _, d, bias = kind
    return (d, 1), (d if bias else 0)


def token_grads(kind, x, b):
    """Per-row gradient, flattened: [R, rows*cols + bias]."""
    t = kind[0]
    r = b.shape[0]
    if t == "linear":
        _, d_in, d_out, bias, layout = kind
        w = np.einsum("ro,ri->roi", b, x) if layout == "out_in" else np.einsum("ri,ro->rio", x, b)
        parts = [w.reshape(r, -1)] + ([b] if bias else [])
    elif t == "embedding":
        _, vocab, d = kind
        w = np.zeros((r, vocab, d))
        w[np.arange(r), x.astype(np.int64)] = b
        parts = [w.reshape(r, -1)]
    else:
        _, d, bias = kind
        parts = [b * x] + ([b] if bias else [])
    return np.concatenate(parts, axis=1)


def group_grads(kind, x, b, mask, groups):
    """[G, P]: per group the sum of its kept rows' gradients (masked rows never read: NaN-safe)."""
    keep = np.ones(b.shape[0], bool) if mask is None else mask.astype(bool)
    xk = np.where(keep[:, None], x, 0) if x.ndim == 2 else np.where(keep, x, 0)
    bk = np.where(keep[:, None], b, 0)
    tg = token_grads(kind, xk.astype(np.float64), bk.astype(np.float64))
    return np.stack([tg[s:e].sum(0) for s, e in groups])


def sample_groups(n, t):
    return [(i * t, (i + 1) * t) for i in range(n)]


def model_grads(uses, side, groups_of):
    """uses: list of (param, kind, sides) with sides[side] = (x, b, mask) flat f64 or None.
    Returns [G, P_total] with tied uses summed into one block per parameter."""
    blocks, order = {}, []
    for param, kind, sides in uses:
        s = sides.get(side)
        if s is None:
            continue
        x, b, mask, groups = s
        g = group_grads(kind, x, b, mask, groups)
        if param not in blocks:
            blocks[param] = g
            order.append(param)
        else:
            blocks[param] = blocks[param] + g
    return np.concatenate([blocks[p] for p in order], axis=1), order, blocks


def rel_err(got, want):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.all(np.isfinite(got)), "non-finite output (NaN leaked or an element was not written)"
    den = np.linalg.norm(want)
    assert den > 0, "all-zero reference"
    return np.linalg.norm(got - want) / den
