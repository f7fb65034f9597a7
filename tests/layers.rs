//! Model-level calls (`model_dot`, `model_gram`, `model_sqnorm`) on the CPU backends against
//! explicit per-sample gradients materialized by the test itself (tests/common/model.rs):
//! every layer kind alone and mixed, tied groups, ragged shapes, repeated ids, masks with NaN in
//! the masked rows, every input dtype, both embedding forms, NaN propagation, validation errors.

mod common;

use common::model::*;
use common::*;
use ghostgrad::{
    Accumulate, Context, DType, EmbeddingForm, GhgUse, GhostError, LayerKind, LayerUse, ModelForms, QuerySide, Segments,
    Tensor, UseQuery, UseTrain,
};
use proptest::prelude::*;

/// A result and its magnitude.
type Pair = (Vec<f64>, Vec<f64>);

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, max_shrink_iters: 16, ..ProptestConfig::default() }
}

/// Runs the three calls on `ctx` and compares with the explicit gradients.
fn check_all(ctx: &Context, m: &ModelData, forms: ModelForms, seed: u64) {
    let mut rng = rng(seed ^ 0x5eed);
    let e = expected(m);
    let uses = m.layer_uses();
    let tol = Tol::for_depth(m.depth());
    let n = m.n as u64;
    type Call = fn(&Context, u64, &[LayerUse<'_>], &mut ghostgrad::TensorMut<'_>, Accumulate, ModelForms) -> ghostgrad::Result<Vec<ghostgrad::TermChoice>>;
    let calls: [(&str, Call, &Pair); 3] = [
        ("model_dot", Context::model_dot, &e.dot),
        ("model_gram", Context::model_gram, &e.gram),
        ("model_sqnorm", Context::model_sqnorm, &e.sqnorm),
    ];
    for (what, call, (want, mag)) in calls {
        let nonzero_beta = rng_bool(&mut rng);
        let acc = random_acc(&mut rng, nonzero_beta);
        let old = initial_out(&mut rng, want.len(), acc);
        let mut out = old.clone();
        call(ctx, n, &uses, &mut (&mut out[..]).into(), acc, forms).unwrap_or_else(|e| panic!("{what}: {e}"));
        let mut want32 = old.clone();
        ghostgrad::cpu::apply_accumulate(&mut want32, want, acc);
        assert_close(&format!("{} {what}", ctx.describe()), &out, &want32, mag, &old, acc, tol);
    }
}

fn rng_bool(r: &mut TestRng) -> bool {
    use rand::Rng;
    r.random_bool(0.5)
}

fn embedding_forms() -> [ModelForms; 3] {
    [
        ModelForms::default(),
        ModelForms { embedding: Some(EmbeddingForm::MaskedGram), ..Default::default() },
        ModelForms { embedding: Some(EmbeddingForm::ScatterGather), ..Default::default() },
    ]
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn cpu_backends_match_explicit_gradients(mix in mix_strategy(), dt in 0usize..3, masked in any::<bool>(), seed in any::<u64>()) {
        let mut r = rng(seed);
        let m = ModelData::random(&mut r, mix, FLOAT_DTYPES[dt], masked);
        for forms in embedding_forms() {
            check_all(&Context::cpu(), &m, forms, seed);
        }
        check_all(&Context::cpu_reference(), &m, ModelForms::default(), seed);
    }
}

#[test]
fn every_kind_alone_and_the_tied_groups_on_fixed_seeds() {
    let all = Mix { linear: true, embedding: true, norm: true, tied: true };
    for (i, mix) in Mix::EACH_KIND_AND_TIED.into_iter().chain([all]).enumerate() {
        for seed in 0..6u64 {
            let mut r = rng(seed * 31 + i as u64);
            let m = ModelData::random(&mut r, mix, DType::F32, seed % 2 == 0);
            for forms in embedding_forms() {
                check_all(&Context::cpu(), &m, forms, seed);
            }
            check_all(&Context::cpu_reference(), &m, ModelForms::default(), seed);
        }
    }
}

#[test]
fn fast_path_is_bitwise_deterministic_across_thread_counts() {
    let mut r = rng(7);
    let m = ModelData::random(&mut r, Mix { linear: true, embedding: true, norm: true, tied: true }, DType::F32, true);
    let uses = m.layer_uses();
    let run = |threads: usize, forms: ModelForms| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut out = vec![0f32; m.n * m.v];
            Context::cpu().model_dot(m.n as u64, &uses, &mut (&mut out[..]).into(), Accumulate::overwrite(), forms).unwrap();
            out
        })
    };
    for forms in embedding_forms() {
        assert_bitwise_eq("model_dot 1 vs 3 threads", &run(1, forms), &run(3, forms));
    }
}

/// A NaN in a kept row reaches exactly the results that row's sample contributes to.
#[test]
fn nan_in_a_kept_row_propagates_to_its_sample_only() {
    for kind in 0..3 {
        let mut r = rng(11 + kind);
        let mix = Mix { linear: kind == 0, embedding: kind == 1, norm: kind == 2, tied: false };
        let mut m = ModelData::random(&mut r, mix, DType::F32, false);
        m.n = m.n.max(2);
        let mut r2 = rng(99 + kind);
        let pool = [0i32, 1, 2];
        m.uses = m
            .uses
            .iter()
            .map(|u| {
                let mut u2 = UseData::random(&mut r2, u.param, u.kind, m.n, m.v, DType::F32, false, &pool);
                u2.offsets = vec![0; m.v + 1];
                let q = u2.query.rows as i32;
                u2.offsets[m.v] = q;
                for k in 1..m.v {
                    u2.offsets[k] = q * k as i32 / m.v as i32;
                }
                u2
            })
            .collect();
        if let LayerKind::Embedding { vocab, .. } = m.uses[0].kind {
            assert!(vocab >= 3);
        }
        // Poison the first b element of sample 1's first token.
        let bw = m.uses[0].train.b.len() / (m.n * m.uses[0].t);
        let t0 = m.uses[0].t;
        m.uses[0].train.b.set(t0 * bw, f32::NAN);
        for ctx in [Context::cpu(), Context::cpu_reference()] {
            for forms in embedding_forms() {
                let uses = m.layer_uses();
                let mut out = vec![0f32; m.n];
                ctx.model_sqnorm(m.n as u64, &uses, &mut (&mut out[..]).into(), Accumulate::overwrite(), forms).unwrap();
                assert!(out[1].is_nan(), "{}: sample 1 must be NaN: {out:?}", ctx.describe());
                for (s, o) in out.iter().enumerate() {
                    if s != 1 {
                        assert!(o.is_finite(), "{}: sample {s} must stay finite: {out:?}", ctx.describe());
                    }
                }
            }
        }
    }
}

fn emb_use<'a>(param: u32, vocab: u64, d: u64, ids: &'a [i32], b: &'a [f32], q: Option<UseQuery<'a>>) -> LayerUse<'a> {
    LayerUse {
        param,
        kind: LayerKind::Embedding { vocab, d },
        train: UseTrain { x: ids.into(), b: b.into(), t: ids.len() as u64, mask: None },
        query: q.map_or(QuerySide::Absent, QuerySide::Factors),
    }
}

#[test]
fn validation_errors_are_typed() {
    let ctx = Context::cpu();
    let ids = [0i32, 3];
    let b = [1.0f32; 4];
    let mut out = [0f32; 1];
    let forms = ModelForms::default();
    // Id outside [0, vocab).
    let u = emb_use(0, 3, 2, &ids, &b, None);
    let err = ctx.model_sqnorm(1, &[u], &mut (&mut out[..]).into(), Accumulate::overwrite(), forms).unwrap_err();
    assert!(matches!(&err, GhostError::InvalidField { what, .. } if what == "uses[0].train.x"), "{err:?}");
    // Float ids.
    let fids = [0f32, 1.0];
    let mut u = emb_use(0, 3, 2, &ids, &b, None);
    u.train.x = Tensor::from(&fids[..]);
    let err = ctx.model_sqnorm(1, &[u], &mut (&mut out[..]).into(), Accumulate::overwrite(), forms).unwrap_err();
    assert!(matches!(err, GhostError::UnsupportedDtype { what: "x", .. }), "{err:?}");
    // Tied embedding and a Linear of another storage shape.
    let ids = [0i32, 1];
    let a = [1.0f32; 4];
    let lin = LayerUse {
        param: 0,
        kind: LayerKind::linear(2, 4, false),
        train: UseTrain { x: a[..].into(), b: [1.0f32; 8][..].into(), t: 2, mask: None },
        query: QuerySide::Absent,
    };
    let bb = [1.0f32; 8];
    let lin = LayerUse { train: UseTrain { b: bb[..].into(), ..lin.train }, ..lin };
    let err = ctx
        .model_sqnorm(1, &[emb_use(0, 3, 2, &ids, &b, None), lin], &mut (&mut out[..]).into(), Accumulate::overwrite(), forms)
        .unwrap_err();
    assert!(matches!(err, GhostError::InvalidArgument { what: "uses", .. }), "{err:?}");
    // Norm tied with an embedding.
    let xh = [1.0f32; 4];
    let norm = LayerUse {
        param: 0,
        kind: LayerKind::Norm { d: 2, has_bias: false },
        train: UseTrain { x: xh[..].into(), b: b[..].into(), t: 2, mask: None },
        query: QuerySide::Absent,
    };
    let err = ctx
        .model_sqnorm(1, &[emb_use(0, 3, 2, &ids, &b, None), norm], &mut (&mut out[..]).into(), Accumulate::overwrite(), forms)
        .unwrap_err();
    assert!(matches!(err, GhostError::InvalidArgument { what: "uses", .. }), "{err:?}");
    // model_dot without a query side.
    let err = ctx
        .model_dot(1, &[emb_use(0, 3, 2, &ids, &b, None)], &mut (&mut out[..]).into(), Accumulate::overwrite(), forms)
        .unwrap_err();
    assert!(matches!(&err, GhostError::InvalidField { what, .. } if what == "uses[0].query"), "{err:?}");
    // Different V across uses.
    let q1 = UseQuery { x: ids[..].into(), b: b[..].into(), q: 2, segments: Segments::Single, mask: None };
    let q2 = UseQuery { segments: Segments::Uniform(1), ..q1 };
    let mut out2 = [0f32; 2];
    let err = ctx
        .model_dot(
            1,
            &[emb_use(0, 3, 2, &ids, &b, Some(q1)), emb_use(1, 3, 2, &ids, &b, Some(q2))],
            &mut (&mut out2[..]).into(),
            Accumulate::overwrite(),
            forms,
        )
        .unwrap_err();
    assert!(matches!(err, GhostError::InvalidArgument { what: "segments", .. }), "{err:?}");
    // Wrong output length, zero N.
    let err = ctx.model_sqnorm(2, &[emb_use(0, 3, 2, &ids, &b, None)], &mut (&mut out[..]).into(), Accumulate::overwrite(), forms).unwrap_err();
    assert!(matches!(err, GhostError::LengthMismatch { .. }), "{err:?}");
    let err = ctx.model_sqnorm(0, &[emb_use(0, 3, 2, &ids, &b, None)], &mut (&mut out[..]).into(), Accumulate::overwrite(), forms).unwrap_err();
    assert!(matches!(err, GhostError::ZeroSize { what: "n" }), "{err:?}");
}

/// The cost model: one query row per segment makes the masked Gram cheaper; long segments
/// against many training tokens favour scatter/gather.
#[test]
fn embedding_form_follows_the_cost_model() {
    let ctx = Context::cpu();
    let d = 16u64;
    let forms = ModelForms::default();
    let method = |t: usize, q: usize, seg: Segments<'_>| {
        let ids: Vec<i32> = (0..t).map(|i| (i % 7) as i32).collect();
        let b = vec![0.5f32; t * d as usize];
        let qids: Vec<i32> = (0..q).map(|i| (i % 5) as i32).collect();
        let qb = vec![0.25f32; q * d as usize];
        let query = UseQuery { x: qids[..].into(), b: qb[..].into(), q: q as u64, segments: seg, mask: None };
        let u = emb_use(0, 10, d, &ids, &b, Some(query));
        let nv = match seg {
            Segments::Uniform(l) => (q as u64).div_ceil(l) as usize,
            _ => 1,
        };
        let mut out = vec![0f32; nv];
        ctx.model_dot(1, &[u], &mut (&mut out[..]).into(), Accumulate::overwrite(), forms).unwrap()[0].method.clone()
    };
    let m = method(64, 64, Segments::Uniform(1));
    assert!(m.contains("MaskedGram"), "{m}");
    let m = method(512, 512, Segments::Single);
    assert!(m.contains("ScatterGather"), "{m}");
}

/// The same properties on the CUDA kernels, executed by the PTX interpreter through the
/// production launch plans (memcheck, initcheck, shared and global racecheck on; several
/// schedule seeds; outputs poisoned with NaN when `beta = 0`).
#[cfg(feature = "interp")]
// ---------------------------------------------------------------------------------------------
// model_ghg: In-Run first + second order over mixed layer kinds

/// A random model with one validation segment per use, and the derivatives of the validation
/// factors: `b_dot` for every use, `x_dot` for every non-embedding use (NaN in masked rows).
struct GhgProblem {
    m: ModelData,
    b_dot: Vec<Buf>,
    x_dot: Vec<Option<Buf>>,
}

fn ghg_problem(seed: u64, dtype: DType, masked: bool, tied_linear: bool) -> GhgProblem {
    let mut r = rng(seed);
    // Every other seed also carries the tied groups of tests/common/model.rs, among them an
    // embedding tied to an LM head (uses with and without ẋ in one parameter).
    let mix = Mix { linear: true, embedding: true, norm: true, tied: seed % 2 == 1 };
    let mut m = ModelData::random(&mut r, mix, dtype, masked);
    if tied_linear {
        // One Linear with bias applied twice (a tie where every use has an input derivative).
        let k = LayerKind::linear(1 + seed % 7, 2 + seed % 5, true);
        for _ in 0..2 {
            m.uses.push(UseData::random(&mut r, 50, k, m.n, 1, dtype, masked, &[0]));
        }
    }
    m.v = 1;
    for u in &mut m.uses {
        u.offsets = vec![0, u.query.rows as i32];
    }
    let mut b_dot = Vec::new();
    let mut x_dot = Vec::new();
    for u in &m.uses {
        let (q, bw) = (u.query.rows, u.query.b.len() / u.query.rows);
        let nan_masked = |mut b: Buf, w: usize| {
            if let Some(mk) = &u.query.mask {
                for row in (0..q).filter(|&row| mk[row] == 0) {
                    (0..w).for_each(|c| b.set(row * w + c, f32::NAN));
                }
            }
            b
        };
        b_dot.push(nan_masked(Buf::random(&mut r, dtype, q * bw), bw));
        x_dot.push(match (&u.kind, &u.query.x) {
            (LayerKind::Embedding { .. }, _) => None,
            (_, XBuf::Float(x)) => {
                let xw = x.len() / q;
                Some(nan_masked(Buf::random(&mut r, dtype, q * xw), xw))
            }
            _ => unreachable!(),
        });
    }
    GhgProblem { m, b_dot, x_dot }
}

/// `−η·<G_n, g_val> + (η²/2)·<G_n, H v>` from explicit gradients of three variants of the model
/// (queries (x_val, b_val), (x_val, ḃ) and, without bias, (ẋ, b_val)), and its magnitude.
fn ghg_expected(p: &GhgProblem, eta: f64) -> (Vec<f64>, Vec<f64>) {
    let mut m2 = p.m.clone();
    for (u, b) in m2.uses.iter_mut().zip(&p.b_dot) {
        u.query.b = b.clone();
    }
    let mut m3 = p.m.clone();
    m3.uses = p
        .m
        .uses
        .iter()
        .zip(&p.x_dot)
        .filter_map(|(u, x)| {
            // A parameter takes part if one of its uses has ẋ; a use without ẋ then adds its
            // training gradient and nothing on the query side (all its query rows masked here).
            let group_has = p.m.uses.iter().zip(&p.x_dot).any(|(w, xw)| w.param == u.param && xw.is_some());
            if !group_has {
                return None;
            }
            let mut u = u.clone();
            match x {
                Some(x) => u.query.x = XBuf::Float(x.clone()),
                None => u.query.mask = Some(vec![0; u.query.rows]),
            }
            u.kind = match u.kind {
                LayerKind::Linear { d_in, d_out, layout, .. } => LayerKind::Linear { d_in, d_out, has_bias: false, layout },
                LayerKind::Norm { d, .. } => LayerKind::Norm { d, has_bias: false },
                k => k,
            };
            Some(u)
        })
        .collect();
    let (e1, e2) = (expected(&p.m).dot, expected(&m2).dot);
    let e3 = if m3.uses.is_empty() { (vec![0.0; p.m.n], vec![0.0; p.m.n]) } else { expected(&m3).dot };
    let w1 = 0.5 * eta * eta;
    let want = (0..p.m.n).map(|i| -eta * e1.0[i] + w1 * (e2.0[i] + e3.0[i])).collect();
    let mag = (0..p.m.n).map(|i| eta * e1.1[i] + w1 * (e2.1[i] + e3.1[i])).collect();
    (want, mag)
}

fn ghg_uses<'a>(uses: &[LayerUse<'a>], b_dot: &[Tensor<'a>], x_dot: &[Option<Tensor<'a>>]) -> Vec<GhgUse<'a>> {
    uses.iter()
        .zip(b_dot.iter().zip(x_dot))
        .map(|(u, (b, x))| GhgUse { param: u.param, kind: u.kind, train: u.train, val: *u.query.factors().unwrap(), x_dot: *x, b_dot: *b })
        .collect()
}

fn check_ghg(ctx: &Context, p: &GhgProblem, seed: u64, run: &dyn Fn(&[f32], Accumulate, f32) -> Vec<f32>) {
    let mut r = rng(seed ^ 0x6e6);
    let eta = 0.05f32 + (seed % 5) as f32 * 0.1;
    let (want, mag) = ghg_expected(p, eta as f64);
    let nonzero_beta = rng_bool(&mut r);
    let acc = random_acc(&mut r, nonzero_beta);
    let old = initial_out(&mut r, want.len(), acc);
    let got = run(&old, acc, eta);
    let mut want32 = old.clone();
    ghostgrad::cpu::apply_accumulate(&mut want32, &want, acc);
    // Unchanged tolerance, a few more roundings than one model_dot: the reference runs three
    // passes each rounded into out; the fast CPU path and the GPU run two, whose combined query
    // b = fl(−η·b_val + (η²/2)·ḃ) adds one rounding per element, relative to
    // |η·b_val| + (η²/2)·|ḃ| — exactly the per-element magnitude `mag` sums (one more level of
    // depth, within the +8).
    assert_close(&format!("{} model_ghg", ctx.describe()), &got, &want32, &mag, &old, acc, Tol::for_depth(p.m.depth() + 8));
}

proptest! {
    #![proptest_config(config(12))]
    #[test]
    fn model_ghg_matches_explicit_gradients_on_cpu(dt in 0usize..3, masked in any::<bool>(), tied in any::<bool>(), seed in any::<u64>()) {
        let p = ghg_problem(seed, FLOAT_DTYPES[dt], masked, tied);
        let uses = p.m.layer_uses();
        let b_dot: Vec<Tensor<'_>> = p.b_dot.iter().map(|b| b.tensor()).collect();
        let x_dot: Vec<Option<Tensor<'_>>> = p.x_dot.iter().map(|x| x.as_ref().map(|b| b.tensor())).collect();
        let gu = ghg_uses(&uses, &b_dot, &x_dot);
        for ctx in [Context::cpu(), Context::cpu_reference()] {
            check_ghg(&ctx, &p, seed, &|old, acc, eta| {
                let mut out = old.to_vec();
                ctx.model_ghg(p.m.n as u64, &gu, eta, &mut (&mut out[..]).into(), acc, ModelForms::default()).unwrap();
                out
            });
        }
    }
}

#[test]
fn model_ghg_checks_eta_and_model_dot_takes_query_less_tied_uses_only() {
    let p = ghg_problem(1, DType::F32, false, false);
    let uses = p.m.layer_uses();
    let b_dot: Vec<Tensor<'_>> = p.b_dot.iter().map(|b| b.tensor()).collect();
    let x_dot: Vec<Option<Tensor<'_>>> = p.x_dot.iter().map(|x| x.as_ref().map(|b| b.tensor())).collect();
    let gu = ghg_uses(&uses, &b_dot, &x_dot);
    let mut out = vec![0f32; p.m.n];
    let e = Context::cpu().model_ghg(p.m.n as u64, &gu, f32::NAN, &mut (&mut out[..]).into(), Accumulate::overwrite(), ModelForms::default()).unwrap_err();
    assert!(matches!(e, GhostError::InvalidArgument { what: "eta", .. }), "{e:?}");
    // model_dot: a use alone without a query side, or a tied norm use without one, is an error.
    let mut lone = uses.clone();
    lone[0].query = QuerySide::TrainOnly;
    let mut out = vec![0f32; p.m.n * p.m.v];
    let e = Context::cpu().model_dot(p.m.n as u64, &lone, &mut (&mut out[..]).into(), Accumulate::overwrite(), ModelForms::default()).unwrap_err();
    assert!(matches!(&e, GhostError::InvalidField { what, .. } if what == "uses[0].query"), "{e:?}");
    let shared_norm = p.m.uses.iter().enumerate().find(|(i, u)| {
        matches!(u.kind, LayerKind::Norm { .. }) && p.m.uses.iter().enumerate().any(|(j, w)| j != *i && w.param == u.param)
    });
    let (i, _) = shared_norm.expect("seed 1 has a shared norm");
    let mut tied_norm = uses.clone();
    tied_norm[i].query = QuerySide::TrainOnly;
    let e = Context::cpu().model_dot(p.m.n as u64, &tied_norm, &mut (&mut out[..]).into(), Accumulate::overwrite(), ModelForms::default()).unwrap_err();
    assert!(matches!(&e, GhostError::InvalidField { what, .. } if *what == format!("uses[{i}].query")), "{e:?}");
}

#[test]
fn an_f32_query_beside_bf16_training_factors_stays_an_error_of_the_public_calls() {
    // model_ghg feeds an f32 combined query to its own passes internally; the public model_dot
    // keeps requiring the training dtype on the query side, and model_ghg its b_dot.
    let p = ghg_problem(2, DType::BF16, false, false);
    let uses = p.m.layer_uses();
    let i = p.m.uses.iter().position(|u| matches!(u.kind, LayerKind::Linear { .. })).expect("a Linear use");
    let wide = Buf::F32((0..p.m.uses[i].query.b.len()).map(|k| p.m.uses[i].query.b.get(k) as f32).collect());
    for ctx in [Context::cpu(), Context::cpu_reference()] {
        let mut bad = uses.clone();
        bad[i].query = QuerySide::Factors(UseQuery { b: wide.tensor(), ..*bad[i].query.factors().unwrap() });
        let mut out = vec![f32::NAN; p.m.n];
        let e = ctx.model_dot(p.m.n as u64, &bad, &mut (&mut out[..]).into(), Accumulate::overwrite(), ModelForms::default()).unwrap_err();
        assert!(matches!(e, GhostError::DtypeMismatch { what: "query x" | "query b", .. }), "{e:?}");
        let mut b_dot: Vec<Tensor<'_>> = p.b_dot.iter().map(|b| b.tensor()).collect();
        b_dot[i] = wide.tensor();
        let x_dot: Vec<Option<Tensor<'_>>> = p.x_dot.iter().map(|x| x.as_ref().map(|b| b.tensor())).collect();
        let gu = ghg_uses(&uses, &b_dot, &x_dot);
        let e = ctx.model_ghg(p.m.n as u64, &gu, 0.3, &mut (&mut out[..]).into(), Accumulate::overwrite(), ModelForms::default()).unwrap_err();
        assert!(matches!(e, GhostError::DtypeMismatch { what: "query x" | "query b", .. }), "{e:?}");
        assert!(out.iter().all(|x| x.is_nan()), "nothing written on an error");
    }
}

mod gpu {
    use super::*;
    use common::model_dev::*;
    use ghostgrad::runtime::interp::{InterpBuffer, InterpRuntime};

    /// A [`GhgProblem`]'s factors on the interpreter.
    struct DevGhg {
        dev: Vec<DevUse>,
        b_dot: Vec<InterpBuffer>,
        x_dot: Vec<Option<InterpBuffer>>,
    }

    impl DevGhg {
        fn upload(rt: &InterpRuntime, p: &GhgProblem) -> Self {
            DevGhg {
                dev: upload_model(rt, &p.m),
                b_dot: p.b_dot.iter().map(|b| up_buf(rt, b)).collect(),
                x_dot: p.x_dot.iter().map(|x| x.as_ref().map(|b| up_buf(rt, b))).collect(),
            }
        }

        /// The device uses of `model_ghg`.
        fn uses<'a>(&'a self, p: &GhgProblem) -> Vec<GhgUse<'a>> {
            let uses = dev_uses(&p.m, &self.dev);
            let b_dot: Vec<Tensor<'a>> = self.b_dot.iter().map(|b| b.view().into()).collect();
            let x_dot: Vec<Option<Tensor<'a>>> = self.x_dot.iter().map(|x| x.as_ref().map(|b| b.view().into())).collect();
            ghg_uses(&uses, &b_dot, &x_dot)
        }
    }

    #[test]
    fn model_ghg_on_the_interpreter_matches_explicit_gradients() {
        for seed in 0..4u64 {
            let p = ghg_problem(seed, FLOAT_DTYPES[seed as usize % 3], seed % 2 == 0, seed % 3 != 0);
            let rt = runtime(seed);
            let ctx = Context::with_runtime(rt.clone());
            let dev = DevGhg::upload(&rt, &p);
            let gu = dev.uses(&p);
            check_ghg(&ctx, &p, seed, &|old, acc, eta| {
                let mut out = rt.upload(old, DType::F32).unwrap();
                ctx.model_ghg(p.m.n as u64, &gu, eta, &mut out.view_mut().into(), acc, ModelForms::default())
                    .unwrap_or_else(|e| panic!("interp model_ghg: {e}"));
                rt.read_f32(&out).unwrap()
            });
        }
    }

    /// model_ghg on the interpreter with `out` NaN-poisoned (`beta = 0`): the result and the
    /// kernels launched, in order.
    /// `model_ghg` of `p` on the interpreter with the launch plans of an `sm_version` device.
    fn run_ghg(p: &GhgProblem, sched: u64, eta: f32, forms: ModelForms, sm_version: u32) -> (Vec<f32>, Vec<String>) {
        let rt = runtime(sched);
        rt.set_sm_version(sm_version);
        let ctx = Context::with_runtime(rt.clone());
        let dev = DevGhg::upload(&rt, p);
        let gu = dev.uses(p);
        let mut out = rt.alloc_f32(p.m.n as u64, f32::NAN).unwrap();
        rt.take_records().unwrap();
        ctx.model_ghg(p.m.n as u64, &gu, eta, &mut out.view_mut().into(), Accumulate::overwrite(), forms)
            .unwrap_or_else(|e| panic!("interp model_ghg: {e}"));
        let names = rt.take_records().unwrap().into_iter().map(|r| r.plan.kernel).collect();
        (rt.read_f32(&out).unwrap(), names)
    }

    fn gram_forms(embedding: EmbeddingForm) -> ModelForms {
        use ghostgrad::{Form, FormRequest};
        ModelForms { linear: FormRequest::Force(Form::Gram), embedding: Some(embedding) }
    }

    #[test]
    fn model_ghg_on_the_gpu_is_two_model_passes_after_forming_the_combined_queries() {
        // Per use one ghg_query_<dt> (comb = −η·b_val + (η²/2)·ḃ, x_val widened for bf16 / f16
        // non-embedding uses), all before any pass; then the combined pass, then (ẋ, b_val).
        // Every Linear use has ẋ here, so each pass runs one Gram launch per Linear use (three
        // passes would run three), and every norm use one train + one query gradient per pass.
        for (seed, dt) in [(3u64, DType::BF16), (5, DType::F16), (7, DType::F32)] {
            let p = ghg_problem(seed, dt, seed == 3, true);
            let (got, names) = run_ghg(&p, seed, 0.3, gram_forms(EmbeddingForm::ScatterGather), 80);
            assert!(got.iter().all(|x| x.is_finite()), "{dt}: every output written: {got:?}");
            let sfx = dt.kernel_suffix();
            let nu = p.m.uses.len();
            assert!(names[..nu].iter().all(|k| *k == format!("ghg_query_{sfx}")), "{dt}: {names:?}");
            assert!(names[nu..].iter().all(|k| !k.starts_with("ghg_query")), "{dt}: {names:?}");
            let linear = p.m.uses.iter().filter(|u| matches!(u.kind, LayerKind::Linear { .. })).count();
            let norms = p.m.uses.iter().filter(|u| matches!(u.kind, LayerKind::Norm { .. })).count();
            assert!(linear > 0 && norms > 0, "seed {seed} has Linear and norm uses");
            let grams: Vec<&String> = names.iter().filter(|k| k.starts_with("ghost_dot_gram")).collect();
            let combined = if dt == DType::F32 { "ghost_dot_gram_f32".to_string() } else { format!("ghost_dot_gram_qf32_{sfx}") };
            let mut want = vec![&combined; linear];
            // The plain pass: bf16 / f16 factors on the interpreter's sm_80 run on tensor cores.
            let plain = if dt == DType::F32 { "ghost_dot_gram_f32".to_string() } else { format!("ghost_dot_gram_mma_{sfx}") };
            want.extend(std::iter::repeat_n(&plain, linear));
            assert_eq!(grams, want, "{dt}: two passes of Linear Gram terms");
            let norm_grads = names.iter().filter(|k| k.starts_with("norm_grad")).count();
            assert_eq!(norm_grads, 4 * norms, "{dt}: {names:?}");
            // The combined pass reads the query in f32 whatever the training dtype.
            let f32_norm_queries = names.iter().filter(|k| *k == "norm_grad_f32").count();
            assert_eq!(f32_norm_queries, if dt == DType::F32 { 4 * norms } else { norms }, "{dt}: {names:?}");
            if p.m.uses.iter().any(|u| matches!(u.kind, LayerKind::Embedding { .. })) {
                assert!(names.iter().any(|k| k == "embed_table_f32"), "{dt}: {names:?}");
            }
            if dt != DType::F32 {
                assert!(names.iter().any(|k| *k == format!("cross_gram_qf32_{sfx}")), "{dt}: tied cross terms read the f32 query: {names:?}");
            }
        }
    }

    /// The problem with every float factor widened to f32 (exact) and the same ids and masks.
    fn widened(p: &GhgProblem) -> GhgProblem {
        let widen = |b: &Buf| Buf::F32((0..b.len()).map(|i| b.get(i) as f32).collect());
        let mut w = GhgProblem { m: p.m.clone(), b_dot: p.b_dot.iter().map(widen).collect(), x_dot: p.x_dot.iter().map(|x| x.as_ref().map(widen)).collect() };
        for u in &mut w.m.uses {
            for side in [&mut u.train, &mut u.query] {
                side.b = widen(&side.b);
                if let XBuf::Float(x) = &side.x {
                    side.x = XBuf::Float(widen(x));
                }
            }
        }
        w
    }

    #[test]
    fn model_ghg_f32_query_kernels_equal_the_f32_kernels_on_widened_factors_bit_for_bit() {
        // bf16 / f16 training factors beside the f32 combined query (ghost_dot_gram_qf32_*,
        // cross_gram_qf32_*, embed_table_f32 and norm_grad_f32 on the widened x_val) give the
        // bits of the all-f32 call on the exactly widened factors: comb is formed from the same
        // values, and every kernel widens its tiles to f32 before the same arithmetic in the
        // same order. Forms are forced (the cost model weighs the element size). Masked rows
        // hold NaN in both calls; out starts NaN-poisoned. Both calls use sm_75 plans: there the
        // plain (ẋ, b_val) pass of bf16 / f16 factors runs the FMA Gram kernel too (on sm_80+ it
        // runs ghost_dot_gram_mma_*, a different summation order, checked against the reference
        // by the tests of tests/gpu_interp.rs).
        for (seed, dt) in [(1u64, DType::BF16), (3, DType::F16), (5, DType::BF16), (9, DType::F16)] {
            let p = ghg_problem(seed, dt, seed % 4 == 1, seed % 3 != 0);
            let w = widened(&p);
            for emb in [EmbeddingForm::MaskedGram, EmbeddingForm::ScatterGather] {
                let (got, names) = run_ghg(&p, seed, 0.45, gram_forms(emb), 75);
                let (want, _) = run_ghg(&w, seed + 1, 0.45, gram_forms(emb), 75);
                assert!(want.iter().all(|x| x.is_finite()), "{dt} {emb:?}: {want:?}");
                assert_bitwise_eq(&format!("{dt} {emb:?} vs widened f32"), &got, &want);
                let sfx = dt.kernel_suffix();
                assert!(names.iter().any(|k| *k == format!("ghost_dot_gram_qf32_{sfx}")), "{names:?}");
                assert!(names.iter().any(|k| *k == format!("cross_gram_qf32_{sfx}")), "{names:?}");
            }
        }
    }

    pub(super) fn check_gpu(m: &ModelData, forms: ModelForms, seed: u64, sched: u64) {
        let rt = runtime(sched);
        let ctx = Context::with_runtime(rt.clone());
        let dev = upload_model(&rt, m);
        let uses = dev_uses(m, &dev);
        let mut r = rng(seed ^ 0x9a9);
        let e = expected(m);
        let tol = Tol::for_depth(m.depth());
        let n = m.n as u64;
        type Call = fn(&Context, u64, &[LayerUse<'_>], &mut ghostgrad::TensorMut<'_>, Accumulate, ModelForms) -> ghostgrad::Result<Vec<ghostgrad::TermChoice>>;
        let calls: [(&str, Call, &Pair); 3] = [
            ("model_dot", Context::model_dot, &e.dot),
            ("model_gram", Context::model_gram, &e.gram),
            ("model_sqnorm", Context::model_sqnorm, &e.sqnorm),
        ];
        for (what, call, (want, mag)) in calls {
            let nonzero_beta = rng_bool(&mut r);
            let acc = random_acc(&mut r, nonzero_beta);
            let old = initial_out(&mut r, want.len(), acc);
            let mut out = rt.upload(&old, DType::F32).unwrap();
            call(&ctx, n, &uses, &mut out.view_mut().into(), acc, forms).unwrap_or_else(|e| panic!("{what}: {e}"));
            let got = rt.read_f32(&out).unwrap();
            let mut want32 = old.clone();
            ghostgrad::cpu::apply_accumulate(&mut want32, want, acc);
            assert_close(&format!("interp {what} {forms:?}"), &got, &want32, mag, &old, acc, tol);
        }
    }

    pub(super) fn check_gpu_pub(m: &ModelData, forms: ModelForms, seed: u64, sched: u64) {
        check_gpu(m, forms, seed, sched);
        let rt = runtime(sched);
        let ctx = Context::with_runtime(rt.clone());
        let dev = upload_model(&rt, m);
        let uses = dev_uses(m, &dev);
        let mut out = rt.alloc_f32((m.n * m.v) as u64, f32::NAN).unwrap();
        ctx.model_dot(m.n as u64, &uses, &mut out.view_mut().into(), Accumulate::overwrite(), forms).unwrap();
        // The workspace holds partial sums, the sort and the compact table: O(Q·d), not O(vocab·d).
        let vocab_d: u64 = m.uses.iter().map(|u| match u.kind {
            LayerKind::Embedding { vocab, d } => vocab * d * 4,
            _ => 0,
        }).max().unwrap_or(0);
        assert!(rt.workspace_bytes().unwrap() < vocab_d / 16, "workspace {} vs vocab·d·4 = {vocab_d}", rt.workspace_bytes().unwrap());
    }

    proptest! {
        #![proptest_config(config(12))]

        #[test]
        fn kernels_match_explicit_gradients(mix in mix_strategy(), dt in 0usize..3, masked in any::<bool>(), seed in any::<u64>(), sched in 0u64..4) {
            let mut r = rng(seed);
            let m = ModelData::random(&mut r, mix, FLOAT_DTYPES[dt], masked);
            for forms in embedding_forms() {
                check_gpu(&m, forms, seed, sched);
            }
        }
    }

    #[test]
    fn every_kind_alone_and_the_tied_groups_on_the_interpreter() {
        for (i, mix) in Mix::EACH_KIND_AND_TIED.into_iter().enumerate() {
            for seed in 0..2u64 {
                let mut r = rng(seed * 17 + i as u64);
                let m = ModelData::random(&mut r, mix, FLOAT_DTYPES[(seed as usize + i) % 3], seed == 0);
                for forms in embedding_forms() {
                    check_gpu(&m, forms, seed, seed + i as u64);
                }
            }
        }
    }

    /// Long sequences: token splits across CTAs and more than one 64-row tile in both directions.
    #[test]
    fn long_sequences_split_across_ctas() {
        let mut r = rng(5);
        let mut m = ModelData::random(&mut r, Mix { linear: false, embedding: true, norm: true, tied: false }, DType::F32, true);
        let pool: Vec<i32> = (0..5).collect();
        let v = m.v;
        m.n = 2;
        m.uses = m
            .uses
            .iter()
            .map(|u| {
                let mut u2 = UseData::random(&mut r, u.param, u.kind, 2, v, DType::F32, true, &pool);
                // Rebuild with T = 150 and Q = 140.
                let kind = u.kind;
                u2.t = 150;
                u2.train = UseData::random(&mut r, u.param, kind, 2 * 150, v, DType::F32, true, &pool).train;
                let big = UseData::random(&mut r, u.param, kind, 140, v, DType::F32, true, &pool);
                u2.query = SideData { rows: 140, ..big.train.clone() };
                u2.query.x = match &big.train.x {
                    XBuf::Ids(ids) => XBuf::Ids(ids[..140].to_vec()),
                    other => other.clone(),
                };
                u2
            })
            .collect();
        // Fix the buffers to the intended shapes (train: 2·150 rows, query: 140 rows).
        for u in &mut m.uses {
            let (xw, bw) = match u.kind {
                LayerKind::Embedding { d, .. } => (1, d as usize),
                LayerKind::Norm { d, .. } => (d as usize, d as usize),
                LayerKind::Linear { d_in, d_out, .. } => (d_in as usize, d_out as usize),
            };
            truncate(&mut u.train, 300, xw, bw);
            truncate(&mut u.query, 140, xw, bw);
            u.offsets = vec![0; v + 1];
            for k in 1..=v {
                u.offsets[k] = (140 * k / v) as i32;
            }
        }
        for forms in embedding_forms() {
            check_gpu(&m, forms, 5, 1);
        }
    }

    fn truncate(s: &mut SideData, rows: usize, xw: usize, bw: usize) {
        let cut = |b: &Buf, len: usize| match b {
            Buf::F32(v) => Buf::F32(v[..len].to_vec()),
            Buf::BF16(v) => Buf::BF16(v[..len].to_vec()),
            Buf::F16(v) => Buf::F16(v[..len].to_vec()),
        };
        s.rows = rows;
        s.b = cut(&s.b, rows * bw);
        s.x = match &s.x {
            XBuf::Ids(v) => XBuf::Ids(v[..rows].to_vec()),
            XBuf::Ids64(v) => XBuf::Ids64(v[..rows].to_vec()),
            XBuf::Float(b) => XBuf::Float(cut(b, rows * xw)),
        };
        s.mask = s.mask.as_ref().map(|m| m[..rows].to_vec());
    }

    #[test]
    fn results_are_bitwise_identical_across_schedule_seeds() {
        let mut r = rng(21);
        let m = ModelData::random(&mut r, Mix { linear: true, embedding: true, norm: true, tied: true }, DType::F32, true);
        let run = |sched: u64, forms: ModelForms| {
            let rt = runtime(sched);
            let ctx = Context::with_runtime(rt.clone());
            let dev = upload_model(&rt, &m);
            let uses = dev_uses(&m, &dev);
            let mut out = rt.alloc_f32((m.n * m.n) as u64, f32::NAN).unwrap();
            ctx.model_gram(m.n as u64, &uses, &mut out.view_mut().into(), Accumulate::overwrite(), forms).unwrap();
            rt.read_f32(&out).unwrap()
        };
        for forms in embedding_forms() {
            assert_bitwise_eq("model_gram seeds 0 vs 3", &run(0, forms), &run(3, forms));
        }
    }

    /// Device ids cannot be checked without a synchronization: an id outside [0, vocab) must
    /// turn the results it touches into NaN, in both embedding forms, and never read out of
    /// bounds (memcheck is on).
    #[test]
    fn out_of_range_device_ids_give_nan_not_garbage() {
        let rt = runtime(0);
        let ctx = Context::with_runtime(rt.clone());
        let (vocab, d, t) = (5u64, 3usize, 2usize);
        let ids = rt.upload(&[1i32, 7, 2, 2], DType::I32).unwrap(); // sample 0 holds id 7
        let b = rt.upload(&[0.5f32; 12], DType::F32).unwrap();
        let u = LayerUse {
            param: 0,
            kind: LayerKind::Embedding { vocab, d: d as u64 },
            train: UseTrain { x: ids.view().into(), b: b.view().into(), t: t as u64, mask: None },
            query: QuerySide::Absent,
        };
        for form in [EmbeddingForm::MaskedGram, EmbeddingForm::ScatterGather] {
            let mut out = rt.alloc_f32(2, 0.0).unwrap();
            let forms = ModelForms { embedding: Some(form), ..Default::default() };
            ctx.model_sqnorm(2, &[u], &mut out.view_mut().into(), Accumulate::overwrite(), forms).unwrap();
            let got = rt.read_f32(&out).unwrap();
            assert!(got[0].is_nan(), "{form:?}: {got:?}");
            // Sample 1: ids [2, 2], b rows of 0.5: ‖2·(0.5,0.5,0.5)‖² = 3.
            assert_eq!(got[1], 3.0, "{form:?}: {got:?}");
        }
    }
}

/// The documented Conv1D recipe for the dense-matrix operations: with the roles of `A` and `B`
/// swapped, `ghost_dot_dense` takes the `[d_in, d_out]` matrix as stored and `factored_grad`
/// produces it, equal to the `[d_out, d_in]` results transposed.
#[test]
fn conv1d_layout_by_swapping_roles_in_the_dense_operations() {
    use ghostgrad::{LayerShape, QueryFactors, TrainFactors};
    let mut r = rng(77);
    let (n, t, q, d_in, d_out) = (2usize, 5usize, 4usize, 7usize, 3usize);
    let g = |r: &mut TestRng, len: usize| -> Vec<f32> { (0..len).map(|_| nonzero_gaussian(r)).collect() };
    let (a, b, aq, bq) = (g(&mut r, n * t * d_in), g(&mut r, n * t * d_out), g(&mut r, q * d_in), g(&mut r, q * d_out));
    let m_in_out = g(&mut r, d_in * d_out); // as a Conv1D stores it: [d_in, d_out]
    let m_out_in: Vec<f32> = (0..d_out * d_in).map(|k| m_in_out[(k % d_in) * d_out + k / d_in]).collect();
    for ctx in [Context::cpu(), Context::cpu_reference()] {
        let shape = LayerShape::new(d_in as u64, d_out as u64);
        let train = TrainFactors { a: a[..].into(), b: b[..].into(), n: n as u64, t: t as u64, mask: None };
        let mut want = vec![0f32; n];
        ctx.ghost_dot_dense(&shape, &train, &m_out_in[..].into(), None, &mut (&mut want[..]).into(), Accumulate::overwrite()).unwrap();
        let swapped = LayerShape::new(d_out as u64, d_in as u64);
        let train_sw = TrainFactors { a: b[..].into(), b: a[..].into(), n: n as u64, t: t as u64, mask: None };
        let mut got = vec![0f32; n];
        ctx.ghost_dot_dense(&swapped, &train_sw, &m_in_out[..].into(), None, &mut (&mut got[..]).into(), Accumulate::overwrite()).unwrap();
        for (x, y) in got.iter().zip(&want) {
            assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{}: dense {got:?} vs {want:?}", ctx.describe());
        }
        let query = QueryFactors { aq: aq[..].into(), bq: bq[..].into(), q: q as u64, segments: Segments::Single, mask: None };
        let mut m1 = vec![0f32; d_out * d_in];
        ctx.factored_grad(&shape, &query, None, &mut (&mut m1[..]).into(), None, Accumulate::overwrite()).unwrap();
        let query_sw = QueryFactors { aq: bq[..].into(), bq: aq[..].into(), ..query };
        let mut m2 = vec![0f32; d_in * d_out];
        ctx.factored_grad(&swapped, &query_sw, None, &mut (&mut m2[..]).into(), None, Accumulate::overwrite()).unwrap();
        for i in 0..d_in {
            for o in 0..d_out {
                let (x, y) = (m2[i * d_out + o], m1[o * d_in + i]);
                assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{}: factored_grad [{i},{o}] {x} vs {y}", ctx.describe());
            }
        }
    }
}

/// A 2-D convolution fed as the documented Linear: `x` = unfolded patches
/// `[N·H_out·W_out, C_in·k_h·k_w]` (column `(c·k_h + i)·k_w + j`, as `F.unfold`), `b` =
/// output gradients `[N·H_out·W_out, C_out]`, weight `W.view(C_out, -1)`. The results equal dot
/// products of per-sample gradients computed by the convolution formula directly.
#[test]
fn convolution_through_unfolded_patches() {
    let (n, cin, cout, h, w, kh, kw) = (3usize, 2usize, 3usize, 5usize, 4usize, 2usize, 3usize);
    let (ho, wo) = (h - kh + 1, w - kw + 1);
    let mut r = rng(8);
    let x: Vec<f32> = (0..n * cin * h * w).map(|_| nonzero_gaussian(&mut r)).collect(); // [N, C_in, H, W]
    let gout: Vec<f32> = (0..n * cout * ho * wo).map(|_| nonzero_gaussian(&mut r)).collect(); // [N, C_out, H_out, W_out]
    // Per-sample dW [C_out, C_in, k_h, k_w] and db [C_out] by the convolution formula.
    let grads: Vec<Vec<f64>> = (0..n)
        .map(|s| {
            let mut g = vec![0.0f64; cout * cin * kh * kw + cout];
            for co in 0..cout {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let go = gout[((s * cout + co) * ho + oy) * wo + ox] as f64;
                        g[cout * cin * kh * kw + co] += go;
                        for c in 0..cin {
                            for i in 0..kh {
                                for j in 0..kw {
                                    g[((co * cin + c) * kh + i) * kw + j] += go * x[((s * cin + c) * h + oy + i) * w + ox + j] as f64;
                                }
                            }
                        }
                    }
                }
            }
            g
        })
        .collect();
    // Unfold.
    let t = ho * wo;
    let k = cin * kh * kw;
    let mut patches = vec![0f32; n * t * k];
    let mut b = vec![0f32; n * t * cout];
    for s in 0..n {
        for oy in 0..ho {
            for ox in 0..wo {
                let row = s * t + oy * wo + ox;
                for c in 0..cin {
                    for i in 0..kh {
                        for j in 0..kw {
                            patches[row * k + (c * kh + i) * kw + j] = x[((s * cin + c) * h + oy + i) * w + ox + j];
                        }
                    }
                }
                for co in 0..cout {
                    b[row * cout + co] = gout[((s * cout + co) * ho + oy) * wo + ox];
                }
            }
        }
    }
    let u = LayerUse {
        param: 0,
        kind: LayerKind::linear(k as u64, cout as u64, true),
        train: UseTrain { x: patches[..].into(), b: b[..].into(), t: t as u64, mask: None },
        query: QuerySide::Absent,
    };
    for ctx in [Context::cpu(), Context::cpu_reference()] {
        let mut gram = vec![0f32; n * n];
        ctx.model_gram(n as u64, &[u], &mut (&mut gram[..]).into(), Accumulate::overwrite(), ModelForms::default()).unwrap();
        for a in 0..n {
            for c in 0..n {
                let want: f64 = grads[a].iter().zip(&grads[c]).map(|(p, q)| p * q).sum();
                let mag: f64 = grads[a].iter().zip(&grads[c]).map(|(p, q)| (p * q).abs()).sum();
                let got = gram[a * n + c] as f64;
                assert!((got - want).abs() <= 1e-5 * mag.max(want.abs()) * 10.0, "{}: K[{a},{c}] {got} vs {want}", ctx.describe());
            }
        }
    }
}

/// A 256k vocabulary (ids spread over the whole range, repeated): both embedding forms on the
/// CPU backends and the interpreter equal the explicit gradients; nothing of size `vocab·d` is
/// needed by the fast path or the kernels (the interpreter's workspace would show it: it is
/// checked to stay below the size of the query).
/// Query segments longer than a 256-row block and blocks straddling several segments (the GPU
/// sort of the scatter/gather form reads each block's segments in 256-key tiles): ragged
/// offsets with an empty segment, one segment of all rows, and uniform segments; repeated ids,
/// masked rows holding NaN. Every backend and both embedding forms against explicit gradients.
#[test]
fn long_query_segments_of_an_embedding() {
    let mut r = rng(41);
    let pool: Vec<i32> = vec![3, 3, 9, 17, 0, 9, 21];
    let kind = LayerKind::Embedding { vocab: 24, d: 5 };
    let q = 700usize;
    for (v, offsets) in [(5usize, vec![0, 5, 305, 305, 306, 700]), (1, vec![0, 700]), (3, vec![0, 300, 600, 700])] {
        let mut u = UseData::random(&mut r, 0, kind, 2, v, DType::F32, true, &pool);
        u.query = side(&mut r, &kind, q, DType::F32, true, &pool);
        u.offsets = offsets;
        let m = ModelData { n: 2, v, uses: vec![u] };
        for forms in embedding_forms() {
            check_all(&Context::cpu(), &m, forms, 5);
        }
        check_all(&Context::cpu_reference(), &m, ModelForms::default(), 5);
        #[cfg(feature = "interp")]
        for forms in embedding_forms() {
            gpu::check_gpu(&m, forms, 5, v as u64);
        }
    }
}

#[test]
fn large_vocabulary_embedding() {
    let mut r = rng(31);
    let vocab = 262_144u64;
    let pool: Vec<i32> = vec![0, 7, 131_071, 262_143, 99_999];
    let kind = LayerKind::Embedding { vocab, d: 8 };
    let m = ModelData { n: 2, v: 2, uses: vec![UseData::random(&mut r, 0, kind, 2, 2, DType::F32, true, &pool)] };
    for forms in embedding_forms() {
        check_all(&Context::cpu(), &m, forms, 3);
    }
    check_all(&Context::cpu_reference(), &m, ModelForms::default(), 3);
    #[cfg(feature = "interp")]
    for forms in embedding_forms() {
        gpu::check_gpu_pub(&m, forms, 3, 0);
    }
}
