//! Model-level calls (`model_dot`, `model_gram`, `model_sqnorm`) on the CPU backends against
//! explicit per-sample gradients materialized by the test itself (tests/common/model.rs):
//! every layer kind alone and mixed, tied groups, ragged shapes, repeated ids, masks with NaN in
//! the masked rows, every input dtype, both embedding forms, NaN propagation, validation errors.

mod common;

use common::model::*;
use common::*;
use ghostgrad::{
    Accumulate, Context, DType, EmbeddingForm, GhostError, LayerKind, LayerUse, ModelForms, Segments, Tensor, UseQuery,
    UseTrain,
};
use proptest::prelude::*;

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
    let calls: [(&str, Call, &(Vec<f64>, Vec<f64>)); 3] = [
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
        let want32: Vec<f32> = want
            .iter()
            .zip(&old)
            .map(|(&w, &o)| ((if acc.beta == 0.0 { 0.0 } else { acc.beta as f64 * o as f64 }) + acc.scale as f64 * w) as f32)
            .collect();
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

fn mix_strategy() -> impl Strategy<Value = Mix> {
    any::<[bool; 4]>().prop_map(|[linear, embedding, norm, tied]| Mix { linear, embedding, norm: norm || !(linear || embedding || tied), tied })
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
    let mixes = [
        Mix { linear: true, embedding: false, norm: false, tied: false },
        Mix { linear: false, embedding: true, norm: false, tied: false },
        Mix { linear: false, embedding: false, norm: true, tied: false },
        Mix { linear: false, embedding: false, norm: false, tied: true },
        Mix { linear: true, embedding: true, norm: true, tied: true },
    ];
    for (i, mix) in mixes.into_iter().enumerate() {
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
        query: q,
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
    assert!(matches!(err, GhostError::InvalidArgument { what: "x", .. }), "{err:?}");
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
        query: None,
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
        query: None,
    };
    let err = ctx
        .model_sqnorm(1, &[emb_use(0, 3, 2, &ids, &b, None), norm], &mut (&mut out[..]).into(), Accumulate::overwrite(), forms)
        .unwrap_err();
    assert!(matches!(err, GhostError::InvalidArgument { what: "uses", .. }), "{err:?}");
    // model_dot without a query side.
    let err = ctx
        .model_dot(1, &[emb_use(0, 3, 2, &ids, &b, None)], &mut (&mut out[..]).into(), Accumulate::overwrite(), forms)
        .unwrap_err();
    assert!(matches!(err, GhostError::InvalidArgument { what: "query", .. }), "{err:?}");
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
