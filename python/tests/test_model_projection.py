"""Model-level calls (tied embedding / LM head, Conv1D-layout Linear with bias, LayerNorm) and
projections / scores against the float64 reference of materialized per-sample gradients."""

import numpy as np
import pytest

import ghostgrad as gg
from conftest import cast, f64, mask_and_poison, to_numpy
from reference import model_grads, rel_err, sample_groups


def model(rng, fw, dt, n=4, t=5, vocab=11, d=6, h=7, v=3, l=2):
    """A tiny model's uses: wte (embedding, tied with the head), c_fc (in_out, bias), ln (norm)."""
    ids = rng.integers(0, vocab, (n, t)).astype(np.int32)
    qids = rng.integers(0, vocab, (v, l)).astype(np.int32)
    mk = (rng.random((n, t)) > 0.3).astype(np.uint8)
    mk[:, 0] = 1
    specs = [
        ("wte", gg.Embedding(vocab, d), ("embedding", vocab, d), None, d),
        ("c_fc", gg.Linear(d, h, bias=True, layout="in_out"), ("linear", d, h, True, "in_out"), d, h),
        ("ln", gg.Norm(d, bias=True), ("norm", d, True), d, d),
        ("wte", gg.Linear(d, vocab), ("linear", d, vocab, False, "out_in"), d, vocab),
    ]
    uses, ref = [], []
    for key, kind, rkind, dx, db in specs:
        sides = {}
        fs = []
        for side, (s, tt, idsx) in (("train", (n, t, ids)), ("query", (v, l, qids))):
            x = idsx if dx is None else rng.standard_normal((s, tt, dx)).astype(np.float32)
            b = rng.standard_normal((s, tt, db)).astype(np.float32)
            m = None
            if side == "train":
                m = mk
                keep = mk.astype(bool)
                b[~keep] = np.nan
                if dx is not None:
                    x[~keep] = np.nan
            xf = cast(x, fw, None if dx is None else dt)
            bf = cast(b, fw, dt)
            fs.append(gg.Factors(xf, bf, mask=None if m is None else cast(m, fw, None)))
            x64 = x.reshape(-1).astype(np.float64) if dx is None else f64(xf).reshape(-1, dx)
            sides[side] = (x64, f64(bf).reshape(-1, db), None if m is None else m.reshape(-1), sample_groups(s, tt))
        uses.append(gg.LayerUse(kind, key, fs[0], fs[1], name=key))
        ref.append((key, rkind, sides))
    g, order, blocks = model_grads(ref, "train", None)
    gq, _, _ = model_grads(ref, "query", None)
    return uses, g, gq, order, blocks


@pytest.mark.parametrize("fw,dt", [("numpy", "f32"), ("torch", "bf16"), ("torch", "f16"), ("jax", "f32")])
def test_model_dot_gram_sqnorm(rng, fw, dt):
    uses, g, gq, _, _ = model(rng, fw, dt)
    out, terms = gg.model_dot(uses)
    assert rel_err(to_numpy(out), g @ gq.T) < 3e-5
    assert all(isinstance(x, gg.TermChoice) for x in terms) and {x.param for x in terms} == {"wte", "c_fc", "ln"}
    gram, _ = gg.model_gram(uses)
    assert rel_err(to_numpy(gram), g @ g.T) < 3e-5
    sq, _ = gg.model_sqnorm(uses)
    assert rel_err(to_numpy(sq), (g * g).sum(1)) < 3e-5
    for ef in ("masked_gram", "scatter_gather"):
        out, _ = gg.model_dot(uses, embedding_form=ef)
        assert rel_err(to_numpy(out), g @ gq.T) < 3e-5, ef


def test_model_dot_interp_backend(rng):
    uses, g, gq, _, _ = model(rng, "numpy", "f32", n=2, t=3, vocab=5, d=4, h=3, v=2, l=2)
    out = np.full((2, 2), np.nan, np.float32)
    gg.model_dot(uses, out=out, backend="interp")
    assert rel_err(out, g @ gq.T) < 3e-5


def test_kron_project_model_and_scores(rng):
    uses, g, gq, order, blocks = model(rng, "numpy", "f32")
    vocab, d, h = 11, 6, 7
    store = {"wte": (vocab, d), "c_fc": (d + 1, h), "ln": (d, 2)}
    params = [gg.ParamProjection(p, gg.Projection(k_in=2 if p == "ln" else 3, k_out=4, seed=7, layer=i)) for i, p in enumerate(order)]
    out, groups = gg.kron_project_model(uses, params)
    assert len(groups) == 3
    # Reference: P_rows G P_colsᵀ with the generated matrices, G in storage layout.
    want = []
    for pp in params:
        rows, cols = store[pp.param]
        gp = blocks[pp.param]
        w = gp[:, : rows * cols].reshape(-1, rows, cols) if pp.param != "c_fc" else None
        if pp.param == "c_fc":
            # in_out storage [d_in + bias, d_out]: W [d, h] rows then the bias row.
            w = np.concatenate([gp[:, : d * h].reshape(-1, d, h), gp[:, d * h :].reshape(-1, 1, h)], axis=1)
        if pp.param == "ln":
            w = np.stack([gp[:, :d], gp[:, d:]], axis=2)
        p_rows = gg.projection_matrix(pp.proj.k_out, rows, seed=7, layer=pp.proj.layer, which="out").astype(np.float64)
        p_cols = gg.projection_matrix(pp.proj.k_in, cols, seed=7, layer=pp.proj.layer, which="in").astype(np.float64)
        want.append(np.einsum("or,nrc,ic->noi", p_rows, w, p_cols).reshape(w.shape[0], -1))
    want = np.concatenate(want, axis=1)
    assert rel_err(out, want) < 3e-5
    test = rng.standard_normal((3, out.shape[1])).astype(np.float32)
    s = gg.influence_scores(test, out)
    assert rel_err(s, test.astype(np.float64) @ want.T) < 3e-5
    sg = gg.influence_scores_groups(test, out, groups)
    assert rel_err(sg.sum(0), test.astype(np.float64) @ want.T) < 3e-5
    f = gg.projected_fisher(out)
    assert rel_err(f, want.T @ want) < 3e-5
    rf = gg.RawFisher.fit(out)
    fm = want.T @ want / want.shape[0]
    lam = 0.1 * np.trace(fm) / fm.shape[0]
    assert rel_err(rf.apply(out), np.linalg.solve(fm + lam * np.eye(fm.shape[0]), want.T).T) < 1e-4


def test_accumulate_values(rng):
    vals = rng.standard_normal(50).astype(np.float32)
    ids = rng.integers(0, 7, 50).astype(np.int32)
    phi = rng.standard_normal(7)
    want = phi.copy()
    for v, i in zip(vals, ids):
        want[i] += float(v)
    gg.accumulate_values(vals, ids, phi)
    np.testing.assert_array_equal(phi, want)
    with pytest.raises(gg.InvalidArgument, match="ids holds id 9"):
        ids[3] = 9
        gg.accumulate_values(vals, ids, phi)


def test_int64_ids_and_train_only(rng):
    vocab, d, n, t = 9, 5, 3, 4
    ids = rng.integers(0, vocab, (n, t))
    b = rng.standard_normal((n, t, d)).astype(np.float32)
    h = rng.standard_normal((n, t, d)).astype(np.float32)
    gl = rng.standard_normal((n, t, vocab)).astype(np.float32)
    qh = rng.standard_normal((2, 3, d)).astype(np.float32)
    qg = rng.standard_normal((2, 3, vocab)).astype(np.float32)
    outs = []
    for idt in (np.int32, np.int64):
        for fw in ("numpy", "torch"):
            uses = [
                gg.LayerUse(gg.Embedding(vocab, d), "wte", gg.Factors(cast(ids.astype(idt), fw, None), cast(b, fw, "f32")), train_only=True),
                gg.LayerUse(gg.Linear(d, vocab), "wte", gg.Factors(cast(h, fw, "f32"), cast(gl, fw, "f32")), gg.Factors(cast(qh, fw, "f32"), cast(qg, fw, "f32"))),
            ]
            outs.append(to_numpy(gg.model_dot(uses).out))
    ref = [("wte", ("embedding", vocab, d), {"train": (ids.reshape(-1).astype(np.float64), b.reshape(-1, d).astype(np.float64), None, sample_groups(n, t))}),
           ("wte", ("linear", d, vocab, False, "out_in"), {"train": (h.reshape(-1, d).astype(np.float64), gl.reshape(-1, vocab).astype(np.float64), None, sample_groups(n, t)),
                                                         "query": (qh.reshape(-1, d).astype(np.float64), qg.reshape(-1, vocab).astype(np.float64), None, sample_groups(2, 3))})]
    g, _, _ = model_grads(ref, "train", None)
    gq, _, _ = model_grads(ref, "query", None)
    for o in outs:
        assert rel_err(o, g @ gq.T) < 3e-5
    bad = ids.copy()
    bad[2, 1] = vocab
    with pytest.raises(gg.InvalidArgument, match=r"uses\[0\]: train.x holds id 9 at flat row 9"):
        gg.model_sqnorm([gg.LayerUse(gg.Embedding(vocab, d), "wte", gg.Factors(bad, b))])
    mask = np.ones((n, t), np.uint8)
    mask[2, 1] = 0
    gg.model_sqnorm([gg.LayerUse(gg.Embedding(vocab, d), "wte", gg.Factors(bad, b, mask=mask))])  # masked ids are never read
