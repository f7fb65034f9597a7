"""Per-layer operations against the float64 reference of explicitly materialized gradients, on
numpy, torch and JAX CPU arrays, every dtype each framework has, ragged shapes, masks with NaN
in masked rows, bias, segments, beta accumulation and NaN-poisoned outputs."""

import numpy as np
import pytest

import ghostgrad as gg
from ghostgrad._core import framework_of
from conftest import DTYPES, cast, f64, mask_and_poison, to_numpy
from reference import group_grads, rel_err, sample_groups

CASES = [(fw, dt) for fw in DTYPES for dt in DTYPES[fw]]
TOL = {"f32": 2e-5, "bf16": 2e-5, "f16": 2e-5}


def lin(d_in, d_out, bias):
    return ("linear", d_in, d_out, bias, "out_in")


@pytest.mark.parametrize("fw,dt", CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_ghost_dot_all_forms(rng, fw, dt, bias):
    n, t, d_in, d_out, v, l = 5, 7, 13, 9, 3, 4
    a = rng.standard_normal((n, t, d_in)).astype(np.float32)
    b = rng.standard_normal((n, t, d_out)).astype(np.float32)
    m, a, b = mask_and_poison(rng, a, b, (n, t))
    aq = rng.standard_normal((v, l, d_in)).astype(np.float32)
    bq = rng.standard_normal((v, l, d_out)).astype(np.float32)
    train = gg.Factors(cast(a, fw, dt), cast(b, fw, dt), mask=cast(m, fw, None))
    query = gg.Factors(cast(aq, fw, dt), cast(bq, fw, dt))
    k = lin(d_in, d_out, bias)
    g = group_grads(k, f64(train.x).reshape(n * t, d_in), f64(train.b).reshape(n * t, d_out), m.reshape(-1), sample_groups(n, t))
    gq = group_grads(k, f64(query.x).reshape(v * l, d_in), f64(query.b).reshape(v * l, d_out), None, sample_groups(v, l))
    want = g @ gq.T
    for form in ("auto", "gram", "dense_query", "materialize"):
        out, choice = gg.ghost_dot(train, query, bias=bias, form=form)
        assert framework_of(out) == fw
        assert rel_err(to_numpy(out), want) < TOL[dt], form
        assert isinstance(choice, gg.FormChoice) and choice.form in ("gram", "dense_query", "materialize")
        assert choice.forced == (form != "auto") and (form == "auto" or choice.form == form)
        assert {c.form for c in choice.costs} == {"gram", "dense_query", "materialize"} and choice.reason


def test_ghost_dot_segments_beta_and_poisoned_out(rng):
    n, t, d_in, d_out, q = 4, 3, 6, 5, 11
    a = rng.standard_normal((n, t, d_in)).astype(np.float32)
    b = rng.standard_normal((n, t, d_out)).astype(np.float32)
    aq = rng.standard_normal((q, d_in)).astype(np.float32)
    bq = rng.standard_normal((q, d_out)).astype(np.float32)
    k = lin(d_in, d_out, False)
    g = group_grads(k, a.reshape(-1, d_in), b.reshape(-1, d_out), None, sample_groups(n, t))
    offsets = np.array([0, 2, 2, 7, 11], np.int32)
    for seg, groups in [("single", [(0, q)]), (4, [(0, 4), (4, 8), (8, 11)]), (offsets, [(0, 2), (2, 2), (2, 7), (7, 11)])]:
        if any(s == e for s, e in groups):
            gq = np.stack([np.zeros(g.shape[1]) if s == e else group_grads(k, aq[s:e], bq[s:e], None, [(0, e - s)])[0] for s, e in groups])
        else:
            gq = group_grads(k, aq, bq, None, groups)
        want = g @ gq.T
        out = np.full((n, len(groups)), np.nan, np.float32)
        r, _ = gg.ghost_dot(gg.Factors(a, b), gg.Factors(aq, bq, segments=seg), out=out)
        assert r is out
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        prev = rng.standard_normal(out.shape).astype(np.float32)
        out[:] = prev
        gg.ghost_dot(gg.Factors(a, b), gg.Factors(aq, bq, segments=seg), out=out, scale=0.5, beta=2.0)
        np.testing.assert_allclose(out, 2 * prev + 0.5 * want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_ghost_dot_layers_sums_layers(rng):
    n, v = 3, 2
    layers, want = [], 0
    for d_in, d_out, t, bias, dt in [(5, 4, 2, True, "bf16"), (7, 3, 5, False, "f32")]:
        a = rng.standard_normal((n, t, d_in)).astype(np.float32)
        b = rng.standard_normal((n, t, d_out)).astype(np.float32)
        aq = rng.standard_normal((v, 3, d_in)).astype(np.float32)
        bq = rng.standard_normal((v, 3, d_out)).astype(np.float32)
        tr, qu = gg.Factors(cast(a, "torch", dt), cast(b, "torch", dt)), gg.Factors(cast(aq, "torch", dt), cast(bq, "torch", dt))
        k = lin(d_in, d_out, bias)
        g = group_grads(k, f64(tr.x).reshape(-1, d_in), f64(tr.b).reshape(-1, d_out), None, sample_groups(n, t))
        gq = group_grads(k, f64(qu.x).reshape(-1, d_in), f64(qu.b).reshape(-1, d_out), None, sample_groups(v, 3))
        want = want + g @ gq.T
        layers.append(gg.DotLayer(tr, qu, bias=bias))
    out, choices = gg.ghost_dot_layers(layers)
    assert len(choices) == 2
    assert rel_err(out.numpy(), want) < 2e-5


@pytest.mark.parametrize("fw,dt", [("numpy", "f32"), ("torch", "bf16"), ("jax", "f32")])
def test_gram_sqnorm_dense_factored(rng, fw, dt):
    n, t, d_in, d_out = 6, 4, 7, 5
    a = rng.standard_normal((n, t, d_in)).astype(np.float32)
    b = rng.standard_normal((n, t, d_out)).astype(np.float32)
    mk, a, b = mask_and_poison(rng, a, b, (n, t))
    tr = gg.Factors(cast(a, fw, dt), cast(b, fw, dt), mask=cast(mk, fw, None))
    for bias in (False, True):
        k = lin(d_in, d_out, bias)
        g = group_grads(k, f64(tr.x).reshape(-1, d_in), f64(tr.b).reshape(-1, d_out), mk.reshape(-1), sample_groups(n, t))
        gram, _ = gg.ghost_gram(tr, bias=bias)
        assert rel_err(to_numpy(gram), g @ g.T) < 2e-5
        sq, _ = gg.ghost_sqnorm(tr, bias=bias)
        assert rel_err(to_numpy(sq), (g * g).sum(1)) < 2e-5
        m = rng.standard_normal((d_out, d_in)).astype(np.float32)
        mb = rng.standard_normal(d_out).astype(np.float32) if bias else None
        full = np.concatenate([m.reshape(-1)] + ([mb] if bias else []))
        dense = gg.ghost_dot_dense(tr, cast(m, fw, "f32"), None if mb is None else cast(mb, fw, "f32"))
        assert rel_err(to_numpy(dense), g @ full) < 2e-5
    # factored_grad: the query side's segment gradients with row weights.
    q = 9
    aq = rng.standard_normal((q, d_in)).astype(np.float32)
    bq = rng.standard_normal((q, d_out)).astype(np.float32)
    w = rng.standard_normal(q).astype(np.float32)
    mat, mbias = gg.factored_grad(gg.Factors(cast(aq, fw, dt), cast(bq, fw, dt), segments=4), cast(w, fw, "f32"), bias=True)
    aq64, bq64 = f64(cast(aq, fw, dt)), f64(cast(bq, fw, dt))
    want = np.stack([np.einsum("r,ro,ri->oi", w[s:e], bq64[s:e], aq64[s:e]) for s, e in [(0, 4), (4, 8), (8, 9)]])
    assert rel_err(to_numpy(mat), want) < 2e-5
    wantb = np.stack([np.einsum("r,ro->o", w[s:e], bq64[s:e]) for s, e in [(0, 4), (4, 8), (8, 9)]])
    assert rel_err(to_numpy(mbias), wantb) < 2e-5


def test_reference_and_interp_backends(rng):
    n, t, d_in, d_out = 3, 5, 6, 4
    a = rng.standard_normal((n, t, d_in)).astype(np.float32)
    b = rng.standard_normal((n, t, d_out)).astype(np.float32)
    mk, a, b = mask_and_poison(rng, a, b, (n, t))
    aq = rng.standard_normal((2, 3, d_in)).astype(np.float32)
    bq = rng.standard_normal((2, 3, d_out)).astype(np.float32)
    k = lin(d_in, d_out, True)
    g = group_grads(k, a.reshape(-1, d_in), b.reshape(-1, d_out), mk.reshape(-1), sample_groups(n, t))
    gq = group_grads(k, aq.reshape(-1, d_in), bq.reshape(-1, d_out), None, sample_groups(2, 3))
    for backend in ("reference", "interp"):
        if backend == "interp" and not gg.KERNELS_BUILT:
            pytest.fail("the wheel was built without kernels")
        out = np.full((n, 2), np.nan, np.float32)
        gg.ghost_dot(gg.Factors(a, b, mask=mk), gg.Factors(aq, bq), bias=True, out=out, backend=backend)
        assert rel_err(out, g @ gq.T) < 2e-5, backend
        sq, _ = gg.ghost_sqnorm(gg.Factors(a, b, mask=mk), bias=True, backend=backend)
        assert rel_err(sq, (g * g).sum(1)) < 2e-5, backend
