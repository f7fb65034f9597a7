//! The token-id contract of every operation that takes ids (issue 11, defects 1, 2 and 6), on
//! every backend (f64 reference, fast CPU, PTX interpreter through the production plans):
//!
//! * int64 ids (torch's default) give bitwise the result of the same ids in int32;
//! * a masked row's id is never read or checked: ids of −1, ≥ vocab and (int64) beyond the i32
//!   range at masked rows, whose factors hold NaN, give bitwise the result of valid ids there;
//! * a kept out-of-range id is a typed error naming the field on the host (int64 values beyond
//!   the i32 range included);
//! * `model_dot` takes a use without query factors only when it says so (`QuerySide::TrainOnly`):
//!   an absent query side is an error naming the use (`uses[3].query`).

mod common;

use common::model::*;
use common::model_dev::{dev_uses, runtime, upload_model};
use common::*;
use ghostgrad::runtime::interp::InterpRuntime;
use ghostgrad::{
    Accumulate, Context, DType, Distribution, EmbeddingForm, EmbeddingLayer, GhgUse, GhostError, LayerKind, LayerShape, LayerUse,
    ModelForms, OutColumns, ParamProjection, ProjectionKind, ProjectionSpec, QuerySide, Tensor, TensorMut, TokenFactors,
};
use rand::Rng;

/// How the ids of a model are presented.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ids {
    /// As drawn: int32, valid everywhere.
    Plain32,
    /// int64, the same values.
    Plain64,
    /// int32, masked rows' ids replaced by −1 and vocab + 3 (alternating).
    Poisoned32,
    /// int64, masked rows' ids replaced by values beyond the i32 range, −1 and vocab.
    Poisoned64,
}

const ALL_IDS: [Ids; 4] = [Ids::Plain32, Ids::Plain64, Ids::Poisoned32, Ids::Poisoned64];

fn present_side(s: &mut SideData, vocab: u64, how: Ids) {
    let XBuf::Ids(ids) = &s.x else { return };
    let masked = |r: usize| s.mask.as_ref().is_some_and(|m| m[r] == 0);
    let poison32 = [-1i32, vocab as i32 + 3];
    let poison64 = [i64::MIN, 1i64 << 40, -1, vocab as i64, i32::MAX as i64 + 1];
    s.x = match how {
        Ids::Plain32 => XBuf::Ids(ids.clone()),
        Ids::Plain64 => XBuf::Ids64(ids.iter().map(|&x| x as i64).collect()),
        Ids::Poisoned32 => XBuf::Ids(ids.iter().enumerate().map(|(r, &x)| if masked(r) { poison32[r % 2] } else { x }).collect()),
        Ids::Poisoned64 => XBuf::Ids64(ids.iter().enumerate().map(|(r, &x)| if masked(r) { poison64[r % 5] } else { x as i64 }).collect()),
    };
}

fn present(m: &ModelData, how: Ids) -> ModelData {
    let mut m = m.clone();
    for u in &mut m.uses {
        if let LayerKind::Embedding { vocab, .. } = u.kind {
            present_side(&mut u.train, vocab, how);
            present_side(&mut u.query, vocab, how);
        }
    }
    m
}

/// Masked rows among the ids of the model's embedding uses (the poisoned variants must differ).
fn masked_id_rows(m: &ModelData) -> usize {
    m.uses
        .iter()
        .filter(|u| matches!(u.kind, LayerKind::Embedding { .. }))
        .flat_map(|u| [&u.train, &u.query])
        .map(|s| s.mask.as_ref().map_or(0, |mk| mk.iter().filter(|&&x| x == 0).count()))
        .sum()
}

/// A random model with embeddings (alone and tied to an LM head, two lookups of one table), masks
/// (masked rows' factors are NaN) and at least one masked id on each side.
fn model(seed: u64, dtype: DType) -> ModelData {
    let mut r = rng(seed);
    for _ in 0..100 {
        let mix = Mix { linear: r.random_bool(0.5), embedding: true, norm: r.random_bool(0.5), tied: true };
        let m = ModelData::random(&mut r, mix, dtype, true);
        let both_sides = m.uses.iter().filter(|u| matches!(u.kind, LayerKind::Embedding { .. })).any(|u| {
            let has = |s: &SideData| s.mask.as_ref().is_some_and(|mk| mk.contains(&0) && mk.iter().any(|&x| x != 0));
            has(&u.train) && has(&u.query)
        });
        if both_sides && masked_id_rows(&m) > 0 {
            return m;
        }
    }
    panic!("no model with masked ids for seed {seed}");
}

/// The four model-level calls of one model, each in both embedding forms, as f32 bits.
fn model_calls(ctx: &Context, m: &ModelData, uses: &[LayerUse<'_>], out: &mut dyn FnMut(usize) -> Output) -> Vec<Vec<u32>> {
    let n = m.n as u64;
    let mut res = Vec::new();
    for form in [EmbeddingForm::MaskedGram, EmbeddingForm::ScatterGather] {
        let forms = ModelForms { embedding: Some(form), ..Default::default() };
        let acc = Accumulate { scale: 0.75, beta: 0.0 };
        let mut o = out(m.n * m.v);
        ctx.model_dot(n, uses, &mut o.tensor(), acc, forms).unwrap_or_else(|e| panic!("model_dot: {e}"));
        res.push(o.bits());
        let mut o = out(m.n * m.n);
        ctx.model_gram(n, uses, &mut o.tensor(), acc, forms).unwrap_or_else(|e| panic!("model_gram: {e}"));
        res.push(o.bits());
        let mut o = out(m.n);
        ctx.model_sqnorm(n, uses, &mut o.tensor(), acc, forms).unwrap_or_else(|e| panic!("model_sqnorm: {e}"));
        res.push(o.bits());
        // In-Run Data Shapley: the query b doubles as ḃ; embedding inputs have no ẋ. The
        // validation side must be one segment: V = 1 models only.
        if m.v == 1 {
            let gu: Vec<GhgUse<'_>> = uses
                .iter()
                .map(|u| {
                    let val = *u.query.factors().expect("every use has query factors");
                    GhgUse { param: u.param, kind: u.kind, train: u.train, val, x_dot: None, b_dot: val.b }
                })
                .collect();
            let mut o = out(m.n);
            ctx.model_ghg(n, &gu, 0.3, &mut o.tensor(), acc, forms).unwrap_or_else(|e| panic!("model_ghg: {e}"));
            res.push(o.bits());
        }
    }
    res
}

/// An output buffer, NaN-poisoned, on the host or on the interpreter.
enum Output {
    Host(Vec<f32>),
    Dev(std::sync::Arc<InterpRuntime>, ghostgrad::runtime::interp::InterpBuffer),
}

impl Output {
    fn tensor(&mut self) -> TensorMut<'_> {
        match self {
            Output::Host(v) => (&mut v[..]).into(),
            Output::Dev(_, b) => b.view_mut().into(),
        }
    }
    fn bits(&self) -> Vec<u32> {
        let v = match self {
            Output::Host(v) => v.clone(),
            Output::Dev(rt, b) => rt.read_f32(b).unwrap(),
        };
        v.iter().map(|x| x.to_bits()).collect()
    }
}

fn host_out(len: usize) -> Output {
    Output::Host(vec![f32::NAN; len])
}

/// Every presentation of the ids gives the bits of the plain int32 ids, on each backend.
fn check_model_on_host(ctx: &Context, m: &ModelData) {
    let base = model_calls(ctx, m, &present(m, Ids::Plain32).layer_uses(), &mut host_out);
    assert!(base.iter().flatten().any(|&b| !f32::from_bits(b).is_nan()), "a model of only NaN");
    for how in ALL_IDS {
        let p = present(m, how);
        assert_eq!(model_calls(ctx, &p, &p.layer_uses(), &mut host_out), base, "{how:?}");
    }
}

#[test]
fn model_calls_read_int64_ids_and_never_masked_ones_on_the_cpu() {
    for seed in 0..6 {
        let dtype = [DType::F32, DType::BF16, DType::F16][seed as usize % 3];
        let m = model(seed, dtype);
        check_model_on_host(&Context::cpu_reference(), &m);
        check_model_on_host(&Context::cpu(), &m);
    }
}

#[test]
fn model_calls_read_int64_ids_and_never_masked_ones_on_the_interpreter() {
    for seed in 0..2 {
        let dtype = [DType::F32, DType::BF16, DType::F16][seed as usize % 3];
        let m = model(100 + seed, dtype);
        let rt = runtime(seed);
        let ctx = Context::with_runtime(rt.clone());
        let mut dev_out = |len: usize| Output::Dev(rt.clone(), rt.alloc_f32(len as u64, f32::NAN).unwrap());
        let p0 = present(&m, Ids::Plain32);
        let d0 = upload_model(&rt, &p0);
        let base = model_calls(&ctx, &p0, &dev_uses(&p0, &d0), &mut dev_out);
        for how in [Ids::Plain64, Ids::Poisoned32, Ids::Poisoned64] {
            let p = present(&m, how);
            let d = upload_model(&rt, &p);
            assert_eq!(model_calls(&ctx, &p, &dev_uses(&p, &d), &mut dev_out), base, "seed {seed} {how:?}");
        }
    }
}

#[test]
fn kept_out_of_range_host_ids_name_the_use_and_field() {
    let m = model(7, DType::F32);
    let (ui, u) = m.uses.iter().enumerate().find(|(_, u)| matches!(u.kind, LayerKind::Embedding { .. })).unwrap();
    let LayerKind::Embedding { vocab, .. } = u.kind else { unreachable!() };
    let kept = |s: &SideData| (0..s.rows).find(|&r| s.mask.as_ref().map_or(true, |mk| mk[r] != 0)).unwrap();
    for (side, wide, bad) in [("train", false, -1i64), ("train", true, 1i64 << 33), ("query", false, vocab as i64), ("query", true, -(1i64 << 40))] {
        let mut p = present(&m, if wide { Ids::Plain64 } else { Ids::Plain32 });
        let s = if side == "train" { &mut p.uses[ui].train } else { &mut p.uses[ui].query };
        let r = kept(s);
        match &mut s.x {
            XBuf::Ids(v) => v[r] = bad as i32,
            XBuf::Ids64(v) => v[r] = bad,
            XBuf::Float(_) => unreachable!(),
        }
        let uses = p.layer_uses();
        for ctx in [Context::cpu_reference(), Context::cpu()] {
            let mut out = vec![0f32; p.n * p.v];
            let e = ctx.model_dot(p.n as u64, &uses, &mut (&mut out[..]).into(), Accumulate::overwrite(), ModelForms::default()).unwrap_err();
            let want = format!("uses[{ui}].{side}.x");
            assert!(matches!(&e, GhostError::InvalidField { what, .. } if *what == want), "{side} {wide}: {e:?}");
            assert!(e.to_string().contains(&bad.to_string()), "{e}");
            assert!(out.iter().all(|&x| x == 0.0), "nothing is written before an error");
        }
    }
}

#[test]
fn an_absent_query_side_is_an_error_naming_the_use_unless_train_only() {
    let m = model(3, DType::F32);
    let uses = m.layer_uses();
    // The embedding tied to the LM head (ModelData::random's tied groups): param of the first
    // embedding use that shares its parameter with a Linear use.
    let (ei, _) = uses
        .iter()
        .enumerate()
        .find(|(i, u)| {
            matches!(u.kind, LayerKind::Embedding { .. })
                && uses.iter().enumerate().any(|(j, w)| j != *i && w.param == u.param && matches!(w.kind, LayerKind::Linear { .. }))
        })
        .expect("tied embedding");
    let mut absent = uses.clone();
    absent[ei].query = QuerySide::Absent;
    let mut train_only = uses.clone();
    train_only[ei].query = QuerySide::TrainOnly;
    for ctx in [Context::cpu_reference(), Context::cpu()] {
        let mut out = vec![f32::NAN; m.n * m.v];
        let e = ctx.model_dot(m.n as u64, &absent, &mut (&mut out[..]).into(), Accumulate::overwrite(), ModelForms::default()).unwrap_err();
        let want = format!("uses[{ei}].query");
        assert!(matches!(&e, GhostError::InvalidField { what, .. } if *what == want), "{e:?}");
        assert!(e.to_string().contains("TrainOnly"), "the message says how to ask for a train-only use: {e}");
        assert!(out.iter().all(|x| x.is_nan()), "nothing is written before an error");
        // The explicit choice is accepted and is what it says: the full result minus the terms
        // whose query side is the embedding's (checked against the reference below).
        ctx.model_dot(m.n as u64, &train_only, &mut (&mut out[..]).into(), Accumulate::overwrite(), ModelForms::default()).unwrap();
        let want = ghostgrad::layers::reference::model_reference(m.n as u64, &train_only, ghostgrad::layers::reference::ModelOp::Dot, false).unwrap();
        let mag = ghostgrad::layers::reference::model_reference(m.n as u64, &train_only, ghostgrad::layers::reference::ModelOp::Dot, true).unwrap();
        for k in 0..out.len() {
            assert!((out[k] as f64 - want[k]).abs() <= 1e-5 * mag[k] + 1e-30, "[{k}] {} vs {}", out[k], want[k]);
        }
        // The train × train calls ignore the query side either way.
        let mut g1 = vec![f32::NAN; m.n * m.n];
        let mut g2 = vec![f32::NAN; m.n * m.n];
        ctx.model_gram(m.n as u64, &absent, &mut (&mut g1[..]).into(), Accumulate::overwrite(), ModelForms::default()).unwrap();
        ctx.model_gram(m.n as u64, &uses, &mut (&mut g2[..]).into(), Accumulate::overwrite(), ModelForms::default()).unwrap();
        assert_eq!(g1.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), g2.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    }
    // On the interpreter: the same error before any launch, and TrainOnly runs.
    let rt = runtime(0);
    let ctx = Context::with_runtime(rt.clone());
    let d = upload_model(&rt, &m);
    let mut dev = dev_uses(&m, &d);
    dev[ei].query = QuerySide::Absent;
    let mut out = rt.alloc_f32((m.n * m.v) as u64, f32::NAN).unwrap();
    let e = ctx.model_dot(m.n as u64, &dev, &mut out.view_mut().into(), Accumulate::overwrite(), ModelForms::default()).unwrap_err();
    assert!(matches!(&e, GhostError::InvalidField { what, .. } if *what == format!("uses[{ei}].query")), "{e:?}");
    assert!(rt.take_records().unwrap().is_empty(), "no launch before the error");
    dev[ei].query = QuerySide::TrainOnly;
    ctx.model_dot(m.n as u64, &dev, &mut out.view_mut().into(), Accumulate::overwrite(), ModelForms::default()).unwrap();
    let mut host = vec![f32::NAN; m.n * m.v];
    Context::cpu().model_dot(m.n as u64, &train_only, &mut (&mut host[..]).into(), Accumulate::overwrite(), ModelForms::default()).unwrap();
    let got = rt.read_f32(&out).unwrap();
    for k in 0..got.len() {
        assert!((got[k] - host[k]).abs() <= 1e-4 * host[k].abs().max(1.0), "[{k}] {} vs {}", got[k], host[k]);
    }
}

/// The single-layer and model-level projection calls that take ids.
struct Emb {
    n: usize,
    t: usize,
    vocab: u64,
    d: u64,
    ids: Vec<i32>,
    b: Buf,
    mask: Vec<u8>,
}

impl Emb {
    fn random(seed: u64, dtype: DType) -> Emb {
        let mut r = rng(seed);
        let (n, t) = (r.random_range(1..4), r.random_range(2..40));
        let (vocab, d) = (r.random_range(3..90u64), r.random_range(1..30u64));
        let mut mask = random_mask(&mut r, n * t, 0.3);
        mask[0] = 0;
        mask[n * t - 1] = 1;
        let ids: Vec<i32> = (0..n * t).map(|_| r.random_range(0..vocab as i32)).collect();
        let mut b = Buf::random(&mut r, dtype, n * t * d as usize);
        for row in (0..n * t).filter(|&row| mask[row] == 0) {
            for k in 0..d as usize {
                b.set(row * d as usize + k, f32::NAN);
            }
        }
        Emb { n, t, vocab, d, ids, b, mask }
    }

    fn side(&self, how: Ids) -> SideData {
        let mut s = SideData { x: XBuf::Ids(self.ids.clone()), b: self.b.clone(), rows: self.n * self.t, mask: Some(self.mask.clone()) };
        present_side(&mut s, self.vocab, how);
        s
    }
}

fn spec(k_i: u64, k_o: u64, layer: u32) -> ProjectionSpec<'static> {
    ProjectionSpec { k_i, k_o, kind: ProjectionKind::Random { seed: 11, layer, dist: Distribution::Gaussian } }
}

/// `kron_project_embedding`, `kfac_covariances` of the embedding layer, `kron_project_model` and
/// `kfac_covariances_model` of an embedding tied to an LM head, as f32 bits; `x`, `b`, `mask`
/// are the embedding's factors on the context's side, `head` the LM head's (x, b).
#[allow(clippy::too_many_arguments)]
fn projection_calls(
    ctx: &Context,
    e: &Emb,
    x: Tensor<'_>,
    b: Tensor<'_>,
    mask: Tensor<'_>,
    head: (Tensor<'_>, Tensor<'_>),
    out: &mut dyn FnMut(usize) -> Output,
) -> Vec<Vec<u32>> {
    let (n, t) = (e.n as u64, e.t as u64);
    let acc = Accumulate { scale: 1.25, beta: 0.0 };
    let shape = LayerShape::new(e.vocab, e.d);
    let train = TokenFactors { ids: x, b, n, t, mask: Some(mask) };
    let (k_i, k_o) = (5, 4);
    let mut res = Vec::new();
    let mut o = out(e.n * 20);
    ctx.kron_project_embedding(&shape, &train, &spec(k_i, k_o, 0), &mut o.tensor(), OutColumns { offset: 0, row_stride: 20 }, acc).unwrap();
    res.push(o.bits());
    let layer = EmbeddingLayer { shape, train, proj: spec(k_i, k_o, 0) };
    let (mut ca, mut cb) = (out(25), out(16));
    ctx.kfac_covariances(layer, &mut ca.tensor(), &mut cb.tensor(), acc).unwrap();
    res.push(ca.bits());
    res.push(cb.bits());
    let emb = LayerUse {
        param: 0,
        kind: LayerKind::Embedding { vocab: e.vocab, d: e.d },
        train: ghostgrad::UseTrain { x, b, t, mask: Some(mask) },
        query: QuerySide::Absent,
    };
    let lm = LayerUse {
        param: 0,
        kind: LayerKind::linear(e.d, e.vocab, false),
        train: ghostgrad::UseTrain { x: head.0, b: head.1, t, mask: Some(mask) },
        query: QuerySide::Absent,
    };
    let params = [ParamProjection { param: 0, proj: spec(3, 6, 1) }];
    let mut o = out(e.n * 18);
    ctx.kron_project_model(n, &[emb, lm], &params, &mut o.tensor(), acc).unwrap();
    res.push(o.bits());
    let (mut cr, mut cc) = (out(36), out(9));
    ctx.kfac_covariances_model(n, &[emb, lm], &params, &mut [cr.tensor()], &mut [cc.tensor()], acc).unwrap();
    res.push(cr.bits());
    res.push(cc.bits());
    res
}

#[test]
fn projections_read_int64_ids_and_never_masked_ones_on_every_backend() {
    for seed in 0..3 {
        let dtype = [DType::F32, DType::BF16, DType::F16][seed as usize % 3];
        let e = Emb::random(seed, dtype);
        let mut r = rng(seed + 50);
        let rows = e.n * e.t;
        let hx = Buf::random(&mut r, dtype, rows * e.d as usize);
        let hb = Buf::random(&mut r, dtype, rows * e.vocab as usize);
        for ctx in [Context::cpu_reference(), Context::cpu()] {
            let run = |how: Ids| {
                let s = e.side(how);
                projection_calls(&ctx, &e, s.x.tensor(), s.b.tensor(), Tensor::from(&e.mask[..]), (hx.tensor(), hb.tensor()), &mut host_out)
            };
            let base = run(Ids::Plain32);
            for res in &base {
                assert!(res.iter().all(|&x| !f32::from_bits(x).is_nan()), "seed {seed}: masked NaN leaked");
            }
            for how in ALL_IDS {
                assert_eq!(run(how), base, "seed {seed} {how:?}");
            }
        }
        let rt = runtime(seed);
        let ctx = Context::with_runtime(rt.clone());
        let mut dev_out = |len: usize| Output::Dev(rt.clone(), rt.alloc_f32(len as u64, f32::NAN).unwrap());
        let up = |b: &Buf| common::model_dev::up_buf(&rt, b);
        let (dhx, dhb, db) = (up(&hx), up(&hb), up(&e.b));
        let dmask = rt.upload(&e.mask, DType::U8).unwrap();
        let mut base = None;
        for how in ALL_IDS {
            let dx = common::model_dev::up_x(&rt, &e.side(how).x);
            let res = projection_calls(&ctx, &e, dx.view().into(), db.view().into(), dmask.view().into(), (dhx.view().into(), dhb.view().into()), &mut dev_out);
            match &base {
                None => base = Some(res),
                Some(b) => assert_eq!(&res, b, "interpreter seed {seed} {how:?}"),
            }
        }
    }
}

#[test]
fn kept_out_of_range_host_ids_of_the_projections_are_typed_errors() {
    let e = Emb::random(4, DType::F32);
    let kept = (0..e.n * e.t).find(|&r| e.mask[r] != 0).unwrap();
    for bad in [-1i64, e.vocab as i64, 1i64 << 35, i64::MIN] {
        let mut ids64: Vec<i64> = e.ids.iter().map(|&x| x as i64).collect();
        ids64[kept] = bad;
        let shape = LayerShape::new(e.vocab, e.d);
        let train = TokenFactors { ids: Tensor::from(&ids64[..]), b: e.b.tensor(), n: e.n as u64, t: e.t as u64, mask: Some(Tensor::from(&e.mask[..])) };
        for ctx in [Context::cpu_reference(), Context::cpu()] {
            let mut out = vec![f32::NAN; e.n * 20];
            let err = ctx
                .kron_project_embedding(&shape, &train, &spec(5, 4, 0), &mut (&mut out[..]).into(), OutColumns { offset: 0, row_stride: 20 }, Accumulate::overwrite())
                .unwrap_err();
            assert!(matches!(&err, GhostError::InvalidField { what, .. } if what == "ids"), "{err:?}");
            assert!(err.to_string().contains(&bad.to_string()), "{err}");
            assert!(out.iter().all(|x| x.is_nan()));
            let (mut ca, mut cb) = (vec![f32::NAN; 25], vec![f32::NAN; 16]);
            let layer = EmbeddingLayer { shape, train, proj: spec(5, 4, 0) };
            let err = ctx.kfac_covariances(layer, &mut (&mut ca[..]).into(), &mut (&mut cb[..]).into(), Accumulate::overwrite()).unwrap_err();
            assert!(matches!(&err, GhostError::InvalidField { what, .. } if what == "ids"), "{err:?}");
        }
    }
}
